pub mod agent;
pub mod build;
pub mod config;
pub mod credential;
pub mod edge;
pub mod git_hook;
pub mod node;
pub mod ops;
pub mod up;

/// The URL where the controller reaches a role listening at `listen`, or at `advertise` when a
/// proxy or a NAT is in between: its certificate names this address.
pub fn reached_at(
    listen: std::net::SocketAddr,
    advertise: Option<std::net::SocketAddr>,
    role: &str,
) -> anyhow::Result<String> {
    let address = advertise.unwrap_or(listen);
    if address.ip().is_unspecified() {
        anyhow::bail!(
            "{address} does not say where the controller reaches this {role}: listen on the host's own address, or give it with --advertise"
        );
    }
    Ok(format!("https://{address}"))
}

/// Enrols the host once: with the controller at `controller` and `join_token`, unless
/// `identity_dir` holds an identity already.
pub async fn enrol_once(
    identity_dir: &std::path::Path,
    controller: Option<&str>,
    join_token: Option<&str>,
    url: &str,
) -> anyhow::Result<()> {
    let enrolled = identity_dir.join("key.pem").exists();
    match (controller, join_token) {
        (Some(controller), Some(token)) if !enrolled => {
            let token: lockstep_proto::nodes::JoinToken =
                token.parse().map_err(anyhow::Error::msg)?;
            let joined = lockstep_transport::enrol(identity_dir, controller, &token, url).await?;
            tracing::info!(name = %joined.node, pool = %joined.pool, "enrolled");
        }
        (_, Some(_)) => tracing::info!("already enrolled; the join token is not needed"),
        _ => {}
    }
    Ok(())
}
