//! `lockstep agent`: the node daemon.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use lockstep_agent::{Agent, AgentOptions, OperatorEnv, SandboxInit};

#[derive(Args)]
pub struct AgentArgs {
    /// Address of the API the controller talks to.
    #[arg(long, default_value = "127.0.0.1:7701")]
    listen: SocketAddr,
    /// File holding the bearer token callers must present.
    #[arg(long)]
    token_file: PathBuf,
    /// Pass this variable of the agent's environment to every app process too (CA and proxy
    /// settings are passed already).
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
}

pub fn run(args: AgentArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let token = super::read_token_file(&args.token_file)?;
    let operator = OperatorEnv::from_process(&args.pass_env);
    let init = SandboxInit {
        program: std::env::current_exe().context("cannot find the lockstep binary")?,
        args: vec!["sandbox-init".into()],
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let agent = Agent::load(AgentOptions {
            data_dir: data_dir.to_owned(),
            token,
            operator,
            init,
            router_address: args.listen.ip(),
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
