//! `lockstep agent`: the node daemon. A host enrols once, with `--join` and the token
//! `lockstep node add` printed; later starts find the node's identity in the data directory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use lockstep_agent::{Agent, AgentOptions, OperatorEnv, SandboxInit};

#[derive(Args)]
pub struct AgentArgs {
    /// Address of the API the controller calls (mutual TLS): this host's address, which the
    /// node's certificate names.
    #[arg(long, default_value = "127.0.0.1:7701")]
    listen: SocketAddr,
    /// Where the controller reaches the agent, when not at `--listen` (a proxy or a NAT in
    /// between); the node's certificate names this address.
    #[arg(long, value_name = "ADDRESS:PORT")]
    advertise: Option<SocketAddr>,
    /// The controller's API URL: where the host enrols, and tells where the agent listens at
    /// each start.
    #[arg(long, value_name = "URL")]
    join: Option<String>,
    /// The join token of `lockstep node add`, needed the first time only.
    #[arg(
        long,
        env = "LOCKSTEP_JOIN_TOKEN",
        hide_env_values = true,
        requires = "join"
    )]
    join_token: Option<String>,
    /// Pass this variable of the agent's environment to every app process too (CA and proxy
    /// settings are passed already).
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
}

pub fn run(args: AgentArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let agent_url = super::reached_at(args.listen, args.advertise, "agent")?;
    let operator = OperatorEnv::from_process(&args.pass_env);
    let init = SandboxInit {
        program: std::env::current_exe().context("cannot find the lockstep binary")?,
        args: vec!["sandbox-init".into()],
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        super::enrol_once(
            &lockstep_agent::identity_dir(data_dir),
            args.join.as_deref(),
            args.join_token.as_deref(),
            &agent_url,
        )
        .await?;
        let agent = Agent::load(AgentOptions {
            data_dir: data_dir.to_owned(),
            operator,
            init,
            router_address: args.listen.ip(),
        })
        .await
        .with_context(|| format!("cannot start the agent in {}", data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        // `lockstep up` finds agents it did not start (after its own crash) through this file.
        let pid_file = data_dir.join("agent.pid");
        std::fs::write(&pid_file, std::process::id().to_string())
            .with_context(|| format!("cannot write {}", pid_file.display()))?;
        tracing::info!(address = %args.listen, data_dir = %data_dir.display(), "agent listening");
        let announcing = tokio::spawn(lockstep_transport::announce(
            lockstep_agent::identity_dir(data_dir),
            args.join.clone(),
            agent_url,
        ));
        let served = agent.serve(listener, crate::shutdown_signal()).await;
        announcing.abort();
        served.context("the agent's API failed")?;
        tracing::info!("agent stopped");
        Ok(ExitCode::SUCCESS)
    })
}
