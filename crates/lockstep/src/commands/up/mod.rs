//! `lockstep up`: the embedded default on one machine. The controller in this process; five
//! agents and the caching edge each an OS process of its own with its own data folder and port:
//! three production nodes, one staging node, one development node. The nodes enrol as nodes on
//! other hosts do (SPEC section 11): `up` places each in its pool and gives its agent the join
//! token, and the agent joins through the controller's API.
//!
//! Code map: `layout` (tokens and ports kept between runs), `daemons` (the agents' and the
//! edge's processes).

mod daemons;
mod layout;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use lockstep_controller::{Controller, ControllerOptions};
use lockstep_proto::nodes::Pool;
use serde::{Deserialize, Serialize};

use daemons::{Daemon, Daemons, Kind, PortTaken, Probe};
use layout::{Layout, write_private};

#[derive(Args)]
pub struct UpArgs {
    /// Address of the controller: API, git and dashboard.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// The project's name, in its git remote and `PLATFORM_PROJECT`.
    #[arg(long, default_value = "shop")]
    project: String,
    /// Address of the caching edge: production at `localhost`, others at `ENV.localhost`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    edge_listen: SocketAddr,
    /// Memory the edge may use for its cache, in megabytes.
    #[arg(long, default_value_t = 256)]
    edge_cache_mb: u64,
    /// Pass this variable of your environment to every build and app too (CA and proxy
    /// settings are passed already).
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
    /// The folder a pool's nodes share for `source: storage` mounts (NFS or similar), mounted at
    /// this path on each of its nodes and on this host; pools without one use a folder in the
    /// data folder, which only nodes on this host share.
    #[arg(long = "shared-storage", value_name = "POOL=PATH", value_parser = pool_folder)]
    shared_storage: Vec<(Pool, PathBuf)>,
}

fn pool_folder(given: &str) -> Result<(Pool, PathBuf), String> {
    let (pool, path) = given
        .split_once('=')
        .ok_or_else(|| format!("`{given}` is not POOL=PATH, as in production=/mnt/production"))?;
    Ok((pool.parse()?, PathBuf::from(path)))
}

const NODES: [(&str, Pool); 5] = [
    ("production-1", Pool::Production),
    ("production-2", Pool::Production),
    ("production-3", Pool::Production),
    ("staging-1", Pool::Staging),
    ("development-1", Pool::Development),
];
/// The edge's name in the registry.
const EDGE: &str = "edge";

/// What users and tools read to find the running platform (SPEC section 7).
#[derive(Serialize, Deserialize)]
pub struct Endpoints {
    pub api: String,
    pub git: String,
    pub edge: Option<String>,
    pub token: String,
}

pub fn run(args: UpArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    lockstep_supervisor::check_installed()?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    // Tokens, keys and the state database are in here: Lockstep's user alone may enter.
    std::fs::set_permissions(
        data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| format!("cannot make {} private", data_dir.display()))?;
    let operator = lockstep_supervisor::OperatorEnv::from_process(&args.pass_env);
    let mut layout = Layout::load(data_dir)?;
    let binary = std::env::current_exe().context("cannot find the lockstep binary")?;
    let public_url = format!("http://{}", args.listen);
    let controller = Controller::open(ControllerOptions {
        data_dir: data_dir.join("controller"),
        project: args.project.clone(),
        domain: "localhost".into(),
        admin_token: layout.admin_token.clone(),
        public_url: public_url.clone(),
        cluster_url: format!("https://127.0.0.1:{}", layout.cluster_port),
        lockstep_binary: binary.clone(),
        operator,
        shared_storage: args.shared_storage.iter().cloned().collect(),
    })
    .context("cannot start the controller")?;
    // A node or edge whose host has not joined yet gets a join token, as `lockstep node add`
    // gives.
    let join_token = |name: &str, pool: Pool, identity_dir: &Path| -> anyhow::Result<_> {
        Ok(match identity_dir.join("key.pem").exists() {
            true => None,
            false => Some(controller.add_node(name, pool)?.join_token),
        })
    };
    let mut join_tokens = Vec::new();
    for (node, pool) in NODES {
        let identity_dir = lockstep_agent::identity_dir(&agent_dir(data_dir, node));
        join_tokens.push(join_token(node, pool, &identity_dir)?);
    }
    join_tokens.push(join_token(EDGE, Pool::Edge, &data_dir.join("edge/tls"))?);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let listen = |address: SocketAddr| async move {
            tokio::net::TcpListener::bind(address).await.with_context(|| {
                format!("cannot listen on {address}; is another Lockstep running? (--listen picks another address)")
            })
        };
        let api = listen(args.listen).await?;
        let cluster = listen(SocketAddr::from(([127, 0, 0, 1], layout.cluster_port))).await?;
        let (nodes_started, started) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(controller.clone().serve(
            api,
            cluster,
            async move {
                let _ = started.await;
            },
            crate::shutdown_signal(),
        ));
        let probe = controller.http_client();
        let mut daemons =
            start_daemons_answering(&args, data_dir, &binary, &mut layout, &join_tokens, &probe)
                .await?;
        let _ = nodes_started.send(());
        let endpoints = Endpoints {
            api: public_url.clone(),
            git: controller.git_remote(),
            edge: Some(edge_url(args.edge_listen, None)),
            token: layout.admin_token.clone(),
        };
        write_private(&data_dir.join("endpoints.json"), &serde_json::to_string_pretty(&endpoints)?)?;
        print_banner(&endpoints, data_dir, &binary, args.edge_listen);
        let result = tokio::select! {
            result = serving => result.context("the controller stopped")?.context("the controller failed"),
            () = daemons.keep_alive(&binary) => unreachable!("keep_alive never ends"),
        };
        println!("Stopping the nodes and the edge...");
        daemons.stop();
        result
    });
    result?;
    println!("Lockstep stopped. `lockstep up` with the same data directory brings it back.");
    Ok(ExitCode::SUCCESS)
}

/// A daemon's join token, in its environment rather than its arguments: the token is a secret,
/// and the arguments say whether a running daemon can be adopted.
fn join_env(token: &Option<String>) -> Vec<(String, String)> {
    token
        .iter()
        .map(|token| ("LOCKSTEP_JOIN_TOKEN".to_owned(), token.clone()))
        .collect()
}

fn agent_dir(data_dir: &Path, node: &str) -> std::path::PathBuf {
    data_dir.join("agents").join(node)
}

/// Starts (or adopts) the five agents and the edge, and waits until each answers; one whose
/// port another process took meanwhile moves to another port and starts again.
async fn start_daemons_answering(
    args: &UpArgs,
    data_dir: &Path,
    binary: &Path,
    layout: &mut Layout,
    join_tokens: &[Option<String>],
    probe: &reqwest::Client,
) -> anyhow::Result<Daemons> {
    const TRIES: usize = 3;
    let mut daemons = Daemons::default();
    for daemon in daemons_of(args, data_dir, layout, join_tokens, probe)? {
        daemons.start(binary, daemon)?;
    }
    let mut tries = 1;
    loop {
        let Err(error) = daemons.wait_until_answering().await else {
            return Ok(daemons);
        };
        match error.downcast_ref::<PortTaken>() {
            Some(taken) if tries < TRIES => {
                layout.move_to_free_port(data_dir, &taken.daemon)?;
                let moved = daemons_of(args, data_dir, layout, join_tokens, probe)?
                    .into_iter()
                    .find(|daemon| daemon.name == taken.daemon)
                    .expect("the daemon that moved is in the layout");
                daemons.replace(binary, moved)?;
                tries += 1;
            }
            _ => {
                daemons.stop();
                return Err(error);
            }
        }
    }
}

/// The five agents and the edge, as the layout places them.
fn daemons_of(
    args: &UpArgs,
    data_dir: &Path,
    layout: &Layout,
    join_tokens: &[Option<String>],
    probe: &reqwest::Client,
) -> anyhow::Result<Vec<Daemon>> {
    let pass_env = args
        .pass_env
        .iter()
        .flat_map(|name| [OsString::from("--pass-env"), name.into()]);
    let mut daemons = Vec::new();
    for (((node, _), port), token) in NODES.iter().zip(&layout.agent_ports).zip(join_tokens) {
        let mut agent_args = vec![
            OsString::from("--listen"),
            format!("127.0.0.1:{port}").into(),
            "--join".into(),
            format!("http://{}", args.listen).into(),
        ];
        agent_args.extend(pass_env.clone());
        daemons.push(Daemon::new(
            Kind::Agent,
            node,
            *port,
            agent_dir(data_dir, node),
            agent_args,
            join_env(token),
            Probe {
                http: probe.clone(),
                url: format!("https://127.0.0.1:{port}{}", Kind::Agent.ready_path()),
            },
        ));
    }
    let edge_args = vec![
        OsString::from("--listen"),
        args.edge_listen.to_string().into(),
        "--admin-listen".into(),
        format!("127.0.0.1:{}", layout.edge_admin_port).into(),
        "--controller".into(),
        format!("http://{}", args.listen).into(),
        "--cache-mb".into(),
        args.edge_cache_mb.to_string().into(),
    ];
    daemons.push(Daemon::new(
        Kind::Edge,
        "edge",
        layout.edge_admin_port,
        data_dir.join("edge"),
        edge_args,
        join_env(&join_tokens[NODES.len()]),
        Probe {
            http: probe.clone(),
            url: format!(
                "https://127.0.0.1:{}{}",
                layout.edge_admin_port,
                Kind::Edge.ready_path()
            ),
        },
    ));
    Ok(daemons)
}

fn print_banner(endpoints: &Endpoints, data_dir: &Path, binary: &Path, edge: SocketAddr) {
    println!("Lockstep is running: 3 production nodes, 1 staging node, 1 development node.");
    println!();
    println!("  production   {}", edge_url(edge, None));
    println!("  staging      {}", edge_url(edge, Some("staging")));
    println!("  git remote   {}", endpoints.git);
    println!("  console      {}/ (sign in with the token)", endpoints.api);
    println!("  API          {}", endpoints.api);
    println!("  token        {}", endpoints.token);
    println!("  data         {}", data_dir.display());
    println!();
    if nix::unistd::geteuid().is_root() {
        println!(
            "Every build and app runs sandboxed, as its environment's own user (uid 70001 and up)."
        );
    } else {
        println!(
            "Every build and app runs sandboxed. Lockstep runs as uid {}, so every environment's\napps run as that one user; run it as root for one user per environment.",
            nix::unistd::geteuid()
        );
    }
    println!();
    println!("Git takes any user name with the token as the password; or let lockstep answer");
    println!("for you, in your project:");
    println!();
    println!(
        "  git config credential.helper '!{} --data-dir {} credential'",
        binary.display(),
        data_dir.display()
    );
    println!("  git remote add lockstep {}", endpoints.git);
    println!("  git push lockstep HEAD:production");
    println!();
    println!(
        "The CLI finds this instance through {}/endpoints.json.",
        data_dir.display()
    );
    println!("Press Ctrl-C to stop.");
}

/// An environment's address on the edge: browsers resolve `*.localhost` to loopback.
fn edge_url(edge: SocketAddr, environment: Option<&str>) -> String {
    let host = match environment {
        Some(env) => format!("{env}.localhost"),
        None => "localhost".into(),
    };
    format!("http://{host}:{}/", edge.port())
}
