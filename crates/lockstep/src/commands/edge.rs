//! `lockstep edge`: the caching edge as a process of its own. `up` runs it this way, so that
//! the edge keeps serving while the controller restarts; on other hosts it runs apart, several
//! at once. Like a node, it enrols once with `--controller` and the token `lockstep node add
//! NAME --pool edge` printed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use lockstep_edge::{Edge, EdgeOptions};
use lockstep_transport::{Peer, RenewableIdentity};

#[derive(Args)]
pub struct EdgeArgs {
    /// Address of the public port, for every environment.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the admin API the controller calls (mutual TLS): this host's address, which
    /// the edge's certificate names.
    #[arg(long, default_value = "127.0.0.1:7702")]
    admin_listen: SocketAddr,
    /// Where the controller reaches the admin API, when not at `--admin-listen`.
    #[arg(long, value_name = "ADDRESS:PORT")]
    advertise: Option<SocketAddr>,
    /// The controller's API URL: where the host enrols, and tells where the edge listens at
    /// each start.
    #[arg(long, value_name = "URL")]
    controller: Option<String>,
    /// The join token of `lockstep node add NAME --pool edge`, needed the first time only.
    #[arg(
        long,
        env = "LOCKSTEP_JOIN_TOKEN",
        hide_env_values = true,
        requires = "controller"
    )]
    join_token: Option<String>,
    /// `ENV.DOMAIN` is environment ENV; `DOMAIN` is production.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Memory the cache may use, in megabytes.
    #[arg(long, default_value_t = 256)]
    cache_mb: u64,
}

/// The routes the controller gave are kept in `data_dir` across restarts, with the edge's
/// identity.
pub fn run(args: EdgeArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let admin_url = super::reached_at(args.admin_listen, args.advertise, "edge")?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let identity_dir = data_dir.join("tls");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        super::enrol_once(
            &identity_dir,
            args.controller.as_deref(),
            args.join_token.as_deref(),
            &admin_url,
        )
        .await?;
        let identity = RenewableIdentity::load(identity_dir.clone())?
            .filter(|identity| matches!(identity.peer(), Ok(Peer::Edge(_))))
            .with_context(|| {
                format!(
                    "this edge is not enrolled ({} holds no edge certificate): start it with `--controller URL` and the join token of `lockstep node add NAME --pool edge` in LOCKSTEP_JOIN_TOKEN",
                    identity_dir.display()
                )
            })?;
        let public = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let admin = tokio::net::TcpListener::bind(args.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
        let options = EdgeOptions {
            domain: args.domain,
            cache_bytes: args.cache_mb * 1024 * 1024,
            saved_routes: Some(data_dir.join("routes.json")),
            ..EdgeOptions::default()
        };
        let edge = Edge::with_identity(options, Arc::new(identity))?;
        // `lockstep up` finds an edge it did not start (after its own crash) through this file.
        let pid_file = data_dir.join("edge.pid");
        std::fs::write(&pid_file, std::process::id().to_string())
            .with_context(|| format!("cannot write {}", pid_file.display()))?;
        let announcing = tokio::spawn(lockstep_transport::announce(
            identity_dir,
            args.controller.clone(),
            admin_url,
        ));
        let served = edge
            .serve(public, Some(admin), crate::shutdown_signal())
            .await;
        announcing.abort();
        served.context("the edge failed")?;
        Ok(ExitCode::SUCCESS)
    })
}
