//! A role's identity: its private key, the certificate the project's authority issued for it,
//! and the authority's certificate, which is every peer's root of trust. Kept as three PEM
//! files in a folder of the role's own.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Peer, TransportError};

const CA_FILE: &str = "ca.pem";
const CERTIFICATE_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

#[derive(Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub certificate_pem: String,
    pub key_pem: String,
}

/// A fresh key and the request that asks the authority to certify it; the key never leaves
/// the host that made it.
pub struct CertificateRequest {
    pub key_pem: String,
    pub csr_pem: String,
}

impl CertificateRequest {
    pub fn new() -> Result<CertificateRequest, TransportError> {
        let key = rcgen::KeyPair::generate().map_err(TransportError::certificate("make a key"))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(TransportError::certificate("make a certificate request"))?;
        Ok(CertificateRequest {
            key_pem: key.serialize_pem(),
            csr_pem: csr,
        })
    }

    /// The identity made of this request's key and the certificate issued for it.
    pub fn into_identity(self, ca_pem: String, certificate_pem: String) -> Identity {
        Identity {
            ca_pem,
            certificate_pem,
            key_pem: self.key_pem,
        }
    }
}

impl Identity {
    /// The identity kept in `dir`, or `None` when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Identity>, TransportError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TransportError::Io {
                action: "read",
                path,
                source,
            })
        };
        if !dir.join(KEY_FILE).exists() {
            return Ok(None);
        }
        let identity = Identity {
            ca_pem: read(CA_FILE)?,
            certificate_pem: read(CERTIFICATE_FILE)?,
            key_pem: read(KEY_FILE)?,
        };
        identity.peer()?;
        Ok(Some(identity))
    }

    /// Writes the identity into `dir`, the key readable by its owner only.
    pub fn save(&self, dir: &Path) -> Result<(), TransportError> {
        write_whole(dir, CA_FILE, &self.ca_pem, 0o644)?;
        write_whole(dir, CERTIFICATE_FILE, &self.certificate_pem, 0o644)?;
        write_whole(dir, KEY_FILE, &self.key_pem, 0o600)
    }

    /// The role this identity's certificate names.
    pub fn peer(&self) -> Result<Peer, TransportError> {
        let der = self.certificate_der()?;
        peer_of(&der).ok_or_else(|| TransportError::Certificate {
            what: "the certificate".into(),
            detail: "names no Lockstep role".into(),
        })
    }

    /// The certificate's fingerprint (`fingerprint_of`).
    pub fn certificate_fingerprint(&self) -> Result<String, TransportError> {
        Ok(crate::authority::fingerprint_of_der(
            &self.certificate_der()?,
        ))
    }

    /// When the certificate stops being valid.
    pub fn expires_at(&self) -> Result<SystemTime, TransportError> {
        certificate_expiry(&self.certificate_pem)
    }

    pub(crate) fn certificate_der(&self) -> Result<CertificateDer<'static>, TransportError> {
        CertificateDer::from_pem_slice(self.certificate_pem.as_bytes()).map_err(|e| {
            TransportError::Certificate {
                what: "the certificate".into(),
                detail: e.to_string(),
            }
        })
    }

    pub(crate) fn ca_der(&self) -> Result<CertificateDer<'static>, TransportError> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(|e| {
            TransportError::Certificate {
                what: "the authority's certificate".into(),
                detail: e.to_string(),
            }
        })
    }

    pub(crate) fn key_der(&self) -> Result<PrivateKeyDer<'static>, TransportError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| {
            TransportError::Certificate {
                what: "the private key".into(),
                detail: e.to_string(),
            }
        })
    }

    /// The authority's certificate as the one root a peer's chain may end in.
    pub(crate) fn roots(&self) -> Result<rustls::RootCertStore, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()?)?;
        Ok(roots)
    }
}

/// When the certificate in `certificate_pem` stops being valid.
pub fn certificate_expiry(certificate_pem: &str) -> Result<SystemTime, TransportError> {
    let unreadable = |detail: String| TransportError::Certificate {
        what: "the certificate".into(),
        detail,
    };
    let der = CertificateDer::from_pem_slice(certificate_pem.as_bytes())
        .map_err(|e| unreadable(e.to_string()))?;
    let (_, certificate) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| unreadable(e.to_string()))?;
    let seconds = certificate.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64))
}

/// Writes `dir/name` with `mode`, renamed into place whole so that a crash leaves the old file
/// or the new one.
pub(crate) fn write_whole(
    dir: &Path,
    name: &str,
    content: &str,
    mode: u32,
) -> Result<(), TransportError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| TransportError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let (path, partial) = (dir.join(name), dir.join(format!(".{name}.partial")));
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&partial)
        .map_err(io("write", &partial))?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("write", &partial))?;
    std::fs::rename(&partial, &path).map_err(io("write", &path))
}

/// The role a certificate's common name says.
pub(crate) fn peer_of(der: &CertificateDer<'_>) -> Option<Peer> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate.subject().iter_common_name().next()?;
    Peer::from_common_name(name.as_str().ok()?)
}
