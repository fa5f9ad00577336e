//! The project's certificate authority: a key the controller keeps, and every certificate a
//! role holds is signed by it.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::identity::write_whole;
use crate::{CertificateRequest, Identity, Peer, TransportError};

/// How long a role's certificate is valid; it asks for a new one with a third of it left.
pub const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
const AUTHORITY_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Clocks of hosts differ a little: a certificate is valid from a moment before it was made.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Authority {
    /// The authority kept in `dir`, made on first use.
    pub fn load_or_create(dir: &Path, project: &str) -> Result<Authority, TransportError> {
        let (certificate, key) = (dir.join(CA_FILE), dir.join(CA_KEY_FILE));
        if key.exists() {
            let read = |path: &Path| {
                std::fs::read_to_string(path).map_err(|source| TransportError::Io {
                    action: "read",
                    path: path.to_owned(),
                    source,
                })
            };
            let ca_pem = read(&certificate)?;
            let key = KeyPair::from_pem(&read(&key)?)
                .map_err(TransportError::certificate("the authority's key"))?;
            let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)
                .map_err(TransportError::certificate("the authority's certificate"))?;
            return Ok(Authority { issuer, ca_pem });
        }
        let key = KeyPair::generate().map_err(TransportError::certificate("make a key"))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Lockstep project {project}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (params.not_before, params.not_after) = validity(AUTHORITY_LIFETIME);
        let ca_pem = params
            .self_signed(&key)
            .map_err(TransportError::certificate(
                "make the authority's certificate",
            ))?
            .pem();
        // The key last: its file is what says the authority exists.
        write_whole(dir, CA_FILE, &ca_pem, 0o644)?;
        write_whole(dir, CA_KEY_FILE, &key.serialize_pem(), 0o600)?;
        let issuer = Issuer::new(params, key);
        Ok(Authority { issuer, ca_pem })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// What a joining host checks the authority it is given against.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.ca_pem).expect("the authority's own certificate reads")
    }

    /// A certificate for `peer`, reachable at `addresses` (IP addresses or host names), for the
    /// key of `csr_pem`. Only the request's key is taken: the names are the authority's.
    pub fn issue(
        &self,
        csr_pem: &str,
        peer: &Peer,
        addresses: &[String],
    ) -> Result<String, TransportError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(TransportError::certificate("the certificate request"))?;
        let mut params = CertificateParams::new(addresses.to_vec())
            .map_err(TransportError::certificate("the certificate's addresses"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, peer.common_name());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        (params.not_before, params.not_after) = validity(CERTIFICATE_LIFETIME);
        params.use_authority_key_identifier_extension = true;
        Ok(params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(TransportError::certificate("sign the certificate"))?
            .pem())
    }

    /// A whole identity for a role the authority's own host runs (the controller, an edge
    /// beside it): key made here, certificate issued at once.
    pub fn identity_for(
        &self,
        peer: &Peer,
        addresses: &[String],
    ) -> Result<Identity, TransportError> {
        let request = CertificateRequest::new()?;
        let certificate = self.issue(&request.csr_pem, peer, addresses)?;
        Ok(request.into_identity(self.ca_pem.clone(), certificate))
    }
}

/// A certificate's fingerprint: the blake3 of its DER bytes, as `PeerCertificate` has it.
pub fn fingerprint_of(pem: &str) -> Result<String, TransportError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        TransportError::Certificate {
            what: "a certificate".into(),
            detail: e.to_string(),
        }
    })?;
    Ok(fingerprint_of_der(&der))
}

pub(crate) fn fingerprint_of_der(der: &CertificateDer<'_>) -> String {
    blake3::hash(der).to_hex().to_string()
}

fn validity(lifetime: Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now - CLOCK_SKEW, now + lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_the_role_the_authority_chose_not_the_one_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::load_or_create(dir.path(), "p").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        asked
            .distinguished_name
            .push(DnType::CommonName, "controller");
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let certificate = authority
            .issue(&csr, &Peer::Node("n1".into()), &["10.0.0.5".into()])
            .unwrap();
        let identity = Identity {
            ca_pem: authority.ca_pem().to_owned(),
            certificate_pem: certificate,
            key_pem: key.serialize_pem(),
        };
        assert_eq!(identity.peer().unwrap(), Peer::Node("n1".into()));
        let der = identity.certificate_der().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let names = format!("{:?}", parsed.subject_alternative_name().unwrap());
        assert!(
            names.contains("10.0.0.5") || names.contains("[10, 0, 0, 5]"),
            "{names}"
        );
        assert!(!names.contains("evil"), "{names}");
        let left = identity
            .expires_at()
            .unwrap()
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left > CERTIFICATE_LIFETIME * 2 / 3, "{left:?}");
    }

    #[test]
    fn the_authority_is_the_same_after_loading_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let first = Authority::load_or_create(dir.path(), "p").unwrap();
        let again = Authority::load_or_create(dir.path(), "p").unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the authority's key is private");
    }
}
