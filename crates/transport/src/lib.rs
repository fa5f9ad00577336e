//! Mutual TLS between Lockstep's roles (SPEC section 11).
//!
//! Owns: the project's certificate authority (`Authority`), each role's identity (its key and
//! the certificate the authority issued it, `Identity`), the server side that serves an axum
//! router only to peers holding such a certificate and tells the handlers who they are (`Peer`),
//! and the one HTTP client every call between hosts makes (mutual TLS, HTTPS only, the
//! `liveness` settings); a host's enrolment with a join token, the renewal of a role's
//! certificate while it serves, and the refusal of revoked ones (removed hosts').
//! Must never: accept a peer whose certificate the project's authority did not issue, let the
//! subject or names a certificate request asks for into a certificate (the authority decides
//! them), or leave a private key readable by anyone but its owner.

mod authority;
mod client;
mod enrolment;
mod identity;
pub mod liveness;
mod renewal;
mod revocation;
mod server;

pub use authority::{Authority, CERTIFICATE_LIFETIME, fingerprint_of};
pub use client::{client_config, http_client};
pub use enrolment::{announce, enrol, peer_of_pool};
pub use identity::{CertificateRequest, Identity, certificate_expiry};
pub use renewal::RenewableIdentity;
pub use server::{PeerCertificate, ServerIdentity, handshake, serve};

/// Who is at the other end of a connection: the role its certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    Controller,
    /// An enrolled edge, by name.
    Edge(String),
    /// An enrolled node's agent, by node name.
    Node(String),
}

impl Peer {
    /// The certificate's common name that says this role.
    pub fn common_name(&self) -> String {
        match self {
            Peer::Controller => "controller".into(),
            Peer::Edge(name) => format!("edge:{name}"),
            Peer::Node(name) => format!("node:{name}"),
        }
    }

    pub fn from_common_name(name: &str) -> Option<Peer> {
        if name == "controller" {
            return Some(Peer::Controller);
        }
        let (role, named) = name
            .split_once(':')
            .filter(|(_, named)| !named.is_empty())?;
        match role {
            "edge" => Some(Peer::Edge(named.to_owned())),
            "node" => Some(Peer::Node(named.to_owned())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.common_name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {detail}")]
    Certificate { what: String, detail: String },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot set up TLS: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("cannot make the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot enrol with the controller at {controller}: {reason}")]
    Enrol { controller: String, reason: String },
    /// A request refused as it stands; nothing changed.
    #[error("{0}")]
    Refused(String),
}

impl TransportError {
    fn certificate(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> TransportError {
        let what = what.into();
        move |error| TransportError::Certificate {
            what,
            detail: error.to_string(),
        }
    }
}

/// The one crypto provider every configuration uses, named so that no process-wide default
/// has to be chosen.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[cfg(test)]
mod tests {
    use super::Peer;

    #[test]
    fn a_role_reads_back_from_its_common_name() {
        for peer in [
            Peer::Controller,
            Peer::Edge("edge-1".into()),
            Peer::Node("db-2".into()),
        ] {
            assert_eq!(Peer::from_common_name(&peer.common_name()), Some(peer));
        }
        assert_eq!(Peer::from_common_name("node:"), None);
        assert_eq!(Peer::from_common_name("edge"), None);
        assert_eq!(Peer::from_common_name("admin"), None);
    }
}
