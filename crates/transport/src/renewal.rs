//! A role's identity while it serves: the certificate it presents and calls with, replaced by a
//! renewed one when the controller asks (a fresh key's request, then the certificate issued
//! for it) with no restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use lockstep_proto::nodes::RenewalRequest;

use crate::{CertificateRequest, Identity, Peer, ServerIdentity, TransportError, http_client};

pub struct RenewableIdentity {
    dir: PathBuf,
    server: Arc<ServerIdentity>,
    current: RwLock<(Identity, reqwest::Client)>,
    /// The key of the last renewal request, until its certificate comes.
    pending: Mutex<Option<CertificateRequest>>,
}

impl RenewableIdentity {
    /// The identity kept in `dir`; `None` when there is none yet.
    pub fn load(dir: PathBuf) -> Result<Option<RenewableIdentity>, TransportError> {
        match Identity::load(&dir)? {
            Some(identity) => Ok(Some(RenewableIdentity::new(identity, dir)?)),
            None => Ok(None),
        }
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
