//! `lockstep agent`: the node daemon.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use lockstep_agent::{Agent, AgentOptions, RunAs};

#[derive(Args)]
pub struct AgentArgs {
    /// Address of the API the controller talks to.
    #[arg(long, default_value = "127.0.0.1:7701")]
    listen: SocketAddr,
    /// File holding the bearer token callers must present.
    #[arg(long)]
    token_file: PathBuf,
    /// User the app's processes run as when the agent runs as root [default: nobody].
    #[arg(long, conflicts_with = "same_user")]
    run_as: Option<String>,
    /// Run the app's processes as the agent's own user, even as root.
    #[arg(long)]
    same_user: bool,
}

pub fn run(args: AgentArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let token = super::read_token_file(&args.token_file)?;
    let run_as = resolve_run_as(&args)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let agent = Agent::load(AgentOptions {
            data_dir: data_dir.to_owned(),
            token,
            run_as,
        })
        .await
        .with_context(|| format!("cannot load the agent's state from {}", data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        // `lockstep up` finds agents it did not start (after its own crash) through this file.
        let pid_file = data_dir.join("agent.pid");
        std::fs::write(&pid_file, std::process::id().to_string())
            .with_context(|| format!("cannot write {}", pid_file.display()))?;
        tracing::info!(address = %args.listen, data_dir = %data_dir.display(), "agent listening");
        agent
            .serve(listener, crate::shutdown_signal())
            .await
            .context("the agent's API failed")?;
        tracing::info!("agent stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// As root, app processes drop to an unprivileged user unless told otherwise.
fn resolve_run_as(args: &AgentArgs) -> anyhow::Result<Option<RunAs>> {
    if args.same_user || !nix::unistd::Uid::effective().is_root() {
        if let Some(user) = &args.run_as {
            bail!("--run-as {user} needs the agent to run as root");
        }
        return Ok(None);
    }
    let name = args.run_as.as_deref().unwrap_or("nobody");
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("cannot look up user {name}"))?
        .with_context(|| {
            format!("there is no user {name}; create it or pick another with --run-as")
        })?;
    Ok(Some(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}
