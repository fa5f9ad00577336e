//! The HTTP client of every call between hosts.

use std::sync::Arc;

use crate::{Identity, TransportError, liveness};

/// TLS that presents `identity`'s certificate and trusts only servers whose certificate the
/// same authority issued for the address called.
pub fn client_config(identity: &Identity) -> Result<rustls::ClientConfig, TransportError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(Arc::new(identity.roots()?))
            .with_client_auth_cert(vec![identity.certificate_der()?], identity.key_der()?)?,
    )
}

/// A client with `identity`'s TLS (`client_config`) that never speaks plain HTTP.
pub fn http_client(identity: &Identity) -> Result<reqwest::Client, TransportError> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(identity)?)
        .https_only(true)
        .connect_timeout(liveness::CONNECT_TIMEOUT)
        .tcp_keepalive(liveness::KEEPALIVE_IDLE)
        .tcp_keepalive_interval(liveness::KEEPALIVE_INTERVAL)
        .tcp_keepalive_retries(liveness::KEEPALIVE_RETRIES)
        .tcp_user_timeout(liveness::USER_TIMEOUT)
        .build()?)
}
