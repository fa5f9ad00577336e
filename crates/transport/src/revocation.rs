//! Certificates refused before they expire: those of hosts removed from the project. The
//! controller tells every node the list (`RenewableIdentity::revoke`), and the server side
//! refuses them in the handshake, as if the authority had not issued them.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::authority::fingerprint_of_der;

/// The fingerprints (`fingerprint_of`) of the certificates refused now.
#[derive(Debug, Default)]
pub(crate) struct Revoked(RwLock<BTreeSet<String>>);

impl Revoked {
    pub(crate) fn replace(&self, fingerprints: BTreeSet<String>) {
        *self.0.write().expect("revocation lock") = fingerprints;
    }

    pub(crate) fn contains(&self, fingerprint: &str) -> bool {
        self.0
            .read()
            .expect("revocation lock")
            .contains(fingerprint)
    }
}

/// The authority's verifier, refusing the revoked certificates too.
#[derive(Debug)]
pub(crate) struct RevocationCheck {
    pub(crate) issued: Arc<dyn ClientCertVerifier>,
    pub(crate) revoked: Arc<Revoked>,
}

impl ClientCertVerifier for RevocationCheck {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.issued.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .issued
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.contains(&fingerprint_of_der(end_entity)) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.issued
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.issued
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.issued.supported_verify_schemes()
    }
}
