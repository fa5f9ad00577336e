//! A role's identity while it serves: the certificate it presents and calls with, replaced by a
//! renewed one when the controller asks (a fresh key's request, then the certificate issued
//! for it) with no restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use lockstep_proto::nodes::{RenewalRequest, RevokedCertificates};

use crate::{CertificateRequest, Identity, Peer, ServerIdentity, TransportError, http_client};

/// The certificates refused last, kept beside the identity.
const REVOKED: &str = "revoked.json";

pub struct RenewableIdentity {
    dir: PathBuf,
    server: Arc<ServerIdentity>,
    current: RwLock<(Identity, reqwest::Client)>,
    /// The key of the last renewal request, until its certificate comes.
    pending: Mutex<Option<CertificateRequest>>,
}

impl RenewableIdentity {
    /// The identity kept in `dir`; `None` when there is none yet.
    /// The certificates it refused last (`revoke`) are refused again.
    pub fn load(dir: PathBuf) -> Result<Option<RenewableIdentity>, TransportError> {
        let Some(identity) = Identity::load(&dir)? else {
            return Ok(None);
        };
        let renewable = RenewableIdentity::new(identity, dir)?;
        let path = renewable.dir.join(REVOKED);
        match std::fs::read(&path) {
            Ok(kept) => {
                let revoked: RevokedCertificates =
                    serde_json::from_slice(&kept).map_err(|error| TransportError::Certificate {
                        what: format!("the revoked certificates in {}", path.display()),
                        detail: error.to_string(),
                    })?;
                renewable.server.refuse(revoked.fingerprints);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TransportError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        }
        Ok(Some(renewable))
    }

    /// `identity`, kept in `dir` once renewed.
    pub fn new(identity: Identity, dir: PathBuf) -> Result<RenewableIdentity, TransportError> {
        let client = http_client(&identity)?;
        Ok(RenewableIdentity {
            server: ServerIdentity::new(&identity)?,
            current: RwLock::new((identity, client)),
            pending: Mutex::new(None),
            dir,
        })
    }

    pub fn peer(&self) -> Result<Peer, TransportError> {
        self.current.read().expect("identity lock").0.peer()
    }

    pub fn server(&self) -> Arc<ServerIdentity> {
        self.server.clone()
    }

    /// The client of calls to other roles, with the current certificate.
    pub fn client(&self) -> reqwest::Client {
        self.current.read().expect("identity lock").1.clone()
    }

    /// Refuses `revoked` from now on, and again after a restart.
    pub fn revoke(&self, revoked: RevokedCertificates) -> Result<(), TransportError> {
        let json = serde_json::to_string(&revoked).expect("fingerprints serialize");
        crate::identity::write_whole(&self.dir, REVOKED, &json, 0o600)?;
        self.server.refuse(revoked.fingerprints);
        Ok(())
    }

    /// A fresh key and its certificate request; the key waits for its certificate.
    pub fn renewal_request(&self) -> Result<RenewalRequest, TransportError> {
        let request = CertificateRequest::new()?;
        let csr = request.csr_pem.clone();
        *self.pending.lock().expect("pending lock") = Some(request);
        Ok(RenewalRequest { csr })
    }

    /// Serves and calls with `certificate` from now on; refused unless it is for the key of the
    /// last renewal request and names this role again.
    pub fn install(&self, certificate: String) -> Result<(), TransportError> {
        let mut pending = self.pending.lock().expect("pending lock");
        let Some(request) = pending.as_ref() else {
            return Err(TransportError::Refused(
                "no certificate was asked for: POST /v1/certificate-request first".into(),
            ));
        };
        let mut current = self.current.write().expect("identity lock");
        let renewed = Identity {
            ca_pem: current.0.ca_pem.clone(),
            certificate_pem: certificate,
            key_pem: request.key_pem.clone(),
        };
        if renewed.peer()? != current.0.peer()? {
            return Err(TransportError::Refused(
                "the certificate names another role".into(),
            ));
        }
        // Refused unless the certificate is for the pending key.
        self.server.replace(&renewed)?;
        let client = http_client(&renewed)?;
        renewed.save(&self.dir)?;
        tracing::info!(expires = ?renewed.expires_at()?, "certificate renewed");
        *current = (renewed, client);
        *pending = None;
        Ok(())
    }
}
