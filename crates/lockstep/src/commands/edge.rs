//! `lockstep edge`: the caching edge as a process of its own. `up` runs it this way, so that
//! the edge keeps serving while the controller restarts; on other hosts it runs apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use lockstep_edge::{Edge, EdgeOptions};

#[derive(Args)]
pub struct EdgeArgs {
    /// Address of the public port, for every environment.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the admin API the controller talks to.
    #[arg(long, default_value = "127.0.0.1:7702")]
    admin_listen: SocketAddr,
    /// File holding the bearer token of the admin API.
    #[arg(long)]
    token_file: PathBuf,
    /// `ENV.DOMAIN` is environment ENV; `DOMAIN` is production.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Memory the cache may use, in megabytes.
    #[arg(long, default_value_t = 256)]
    cache_mb: u64,
}

/// The routes the controller gave, kept in `data_dir` across restarts.
pub fn run(args: EdgeArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let token = super::read_token_file(&args.token_file)?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let public = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let admin = tokio::net::TcpListener::bind(args.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
        let edge = Edge::new(EdgeOptions {
            domain: args.domain,
            admin_token: token,
            cache_bytes: args.cache_mb * 1024 * 1024,
            saved_routes: Some(data_dir.join("routes.json")),
            ..EdgeOptions::default()
        });
        // `lockstep up` finds an edge it did not start (after its own crash) through this file.
        let pid_file = data_dir.join("edge.pid");
        std::fs::write(&pid_file, std::process::id().to_string())
            .with_context(|| format!("cannot write {}", pid_file.display()))?;
        edge.serve(public, admin, crate::shutdown_signal())
            .await
            .context("the edge failed")?;
        Ok(ExitCode::SUCCESS)
    })
}
