//! `lockstep up`: the embedded default on one machine. A controller, and five agents, each its
//! own OS process with its own data folder and port: three production nodes, one staging node,
//! one development node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use lockstep_controller::{Controller, ControllerOptions, EdgeContact, NodeSpec, Topology};
use lockstep_edge::{Edge, EdgeOptions};
use serde::{Deserialize, Serialize};

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
}

const NODES: [&str; 5] = [
    "production-1",
    "production-2",
    "production-3",
    "staging-1",
    "development-1",
];

/// What `up` keeps between runs so that it comes back the same: tokens and agent ports.
#[derive(Serialize, Deserialize)]
struct Layout {
    admin_token: String,
    agent_token: String,
    edge_token: String,
    agent_ports: Vec<u16>,
}

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
    let layout = load_layout(data_dir)?;
    let binary = std::env::current_exe().context("cannot find the lockstep binary")?;
    let token_file = data_dir.join("agent-token");
    write_private(&token_file, &layout.agent_token)?;
    let mut agents = Agents::default();
    for (node, port) in NODES.iter().zip(&layout.agent_ports) {
        agents.start(&binary, data_dir, node, *port, &token_file, &args.pass_env)?;
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        agents.wait_until_answering(&layout.agent_token).await?;
        let url = |i: usize| format!("http://127.0.0.1:{}", layout.agent_ports[i]);
        let node = |i: usize| NodeSpec {
            name: NODES[i].into(),
            agent_url: url(i),
        };
        let public_url = format!("http://{}", args.listen);
        let edge = Edge::new(EdgeOptions {
            domain: "localhost".into(),
            admin_token: layout.edge_token.clone(),
            cache_bytes: args.edge_cache_mb * 1024 * 1024,
            ..EdgeOptions::default()
        });
        let edge_public = tokio::net::TcpListener::bind(args.edge_listen)
            .await
            .with_context(|| format!("cannot listen on {} for the edge; --edge-listen picks another address", args.edge_listen))?;
        let edge_admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen for the edge's admin API")?;
        let edge_admin_url = format!("http://{}", edge_admin.local_addr()?);
        let (stop_edge, edge_stopped) = tokio::sync::oneshot::channel::<()>();
        let edge_task = tokio::spawn(edge.serve(edge_public, edge_admin, async move {
            let _ = edge_stopped.await;
        }));
        let controller = Controller::open(ControllerOptions {
            data_dir: data_dir.join("controller"),
            project: args.project.clone(),
            domain: "localhost".into(),
            admin_token: layout.admin_token.clone(),
            agent_token: layout.agent_token.clone(),
            public_url: public_url.clone(),
            lockstep_binary: binary.clone(),
            topology: Topology {
                production: vec![node(0), node(1), node(2)],
                staging: vec![node(3)],
                development: node(4),
            },
            edge: Some(EdgeContact {
                admin_url: edge_admin_url,
                token: layout.edge_token.clone(),
            }),
            operator,
        })
        .context("cannot start the controller")?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}; is another Lockstep running? (--listen picks another address)", args.listen))?;
        let endpoints = Endpoints {
            api: public_url.clone(),
            git: controller.git_remote(),
            edge: Some(edge_url(args.edge_listen, None)),
            token: layout.admin_token.clone(),
        };
        write_private(&data_dir.join("endpoints.json"), &serde_json::to_string_pretty(&endpoints)?)?;
        print_banner(&endpoints, data_dir, &binary, args.edge_listen);
        let served = tokio::select! {
            result = controller.serve(listener, crate::shutdown_signal()) => result.context("the controller failed"),
            () = agents.keep_alive(&binary, &token_file, &args.pass_env) => unreachable!("keep_alive never ends"),
        };
        let _ = stop_edge.send(());
        let _ = edge_task.await;
        served
    });
    println!("Stopping the nodes...");
    agents.stop();
    result?;
    println!("Lockstep stopped. `lockstep up` with the same data directory brings it back.");
    Ok(ExitCode::SUCCESS)
}

fn print_banner(endpoints: &Endpoints, data_dir: &Path, binary: &Path, edge: SocketAddr) {
    println!("Lockstep is running: 3 production nodes, 1 staging node, 1 development node.");
    println!();
    println!("  production   {}", edge_url(edge, None));
    println!("  staging      {}", edge_url(edge, Some("staging")));
    println!("  git remote   {}", endpoints.git);
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

/// The layout of an earlier `up` in `data_dir`, repaired if it needs to be, or a new one.
fn load_layout(data_dir: &Path) -> anyhow::Result<Layout> {
    let path = data_dir.join("up.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut layout: Layout = serde_json::from_str(&text)
            .with_context(|| format!("{} is unreadable", path.display()))?;
        if repair_ports(&mut layout.agent_ports)? {
            tracing::warn!(ports = ?layout.agent_ports, "the agents' ports were repaired: two nodes had one port, or a node had none");
            write_private(&path, &serde_json::to_string_pretty(&layout)?)?;
        }
        return Ok(layout);
    }
    let layout = Layout {
        admin_token: random_token()?,
        agent_token: random_token()?,
        edge_token: random_token()?,
        agent_ports: free_ports(NODES.len(), &[])?,
    };
    write_private(&path, &serde_json::to_string_pretty(&layout)?)?;
    Ok(layout)
}

/// Gives every node a port of its own: a port a node shares with an earlier one, and a missing
/// one, get free ports. Whether it changed anything.
fn repair_ports(ports: &mut Vec<u16>) -> anyhow::Result<bool> {
    let mut seen = Vec::new();
    let mut broken = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        if *port == 0 || seen.contains(port) {
            broken.push(index);
        } else {
            seen.push(*port);
        }
    }
    let missing = NODES.len().saturating_sub(ports.len());
    if broken.is_empty() && missing == 0 {
        return Ok(false);
    }
    let mut fresh = free_ports(broken.len() + missing, &seen)?.into_iter();
    for index in broken {
        ports[index] = fresh.next().expect("one fresh port per broken one");
    }
    ports.extend(fresh);
    ports.truncate(NODES.len());
    Ok(true)
}

/// Writes a file readable by its owner only, whole or not at all: tools read `endpoints.json`
/// while `up` starts, and must never see it half written.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let staging = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)
        .with_context(|| format!("cannot write {}", staging.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&staging, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `count` ports free now, all different and none of `taken`: bound together, so that the
/// system cannot hand out one of them twice.
fn free_ports(count: usize, taken: &[u16]) -> anyhow::Result<Vec<u16>> {
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < count {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if !taken.contains(&port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    Ok(ports)
}

/// The five agents: started by `up`, or adopted when a previous `up` left them running, and
/// restarted when one dies.
#[derive(Default)]
struct Agents {
    nodes: Vec<AgentNode>,
}

struct AgentNode {
    name: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Agents {
    fn start(
        &mut self,
        binary: &Path,
        data_dir: &Path,
        node: &str,
        port: u16,
        token_file: &Path,
        pass_env: &[String],
    ) -> anyhow::Result<()> {
        let dir: PathBuf = data_dir.join("agents").join(node);
        std::fs::create_dir_all(&dir)?;
        let mut agent = AgentNode {
            name: node.to_owned(),
            port,
            dir,
            child: None,
        };
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            tracing::info!(node, port, "adopting the agent already running");
        } else {
            agent.spawn(binary, token_file, pass_env)?;
        }
        self.nodes.push(agent);
        Ok(())
    }

    /// Waits for every agent to answer, as long as each shows progress: a node loading many
    /// releases takes its time, and writes its log meanwhile.
    async fn wait_until_answering(&mut self, token: &str) -> anyhow::Result<()> {
        const PATIENCE: Duration = Duration::from_secs(30);
        let http = reqwest::Client::new();
        for agent in &mut self.nodes {
            let log = agent.dir.join("agent.log");
            let log_size = || std::fs::metadata(&log).map_or(0, |m| m.len());
            let mut last_size = log_size();
            let mut deadline = Instant::now() + PATIENCE;
            loop {
                let size = log_size();
                if size != last_size {
                    last_size = size;
                    deadline = Instant::now() + PATIENCE;
                }
                if let Some(child) = agent.child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    bail!(
                        "the agent of {} exited ({status}); see {}/agent.log",
                        agent.name,
                        agent.dir.display()
                    );
                }
                let answer = http
                    .get(format!("http://127.0.0.1:{}/v1/instances", agent.port))
                    .bearer_auth(token)
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status().is_success() => break,
                    Ok(response) => bail!(
                        "something else answers on port {} ({}); stop it or use another data directory",
                        agent.port,
                        response.status()
                    ),
                    Err(_) if Instant::now() > deadline => {
                        bail!(
                            "the agent of {} did not answer on port {} and wrote nothing in {} s; see {}",
                            agent.name,
                            agent.port,
                            PATIENCE.as_secs(),
                            log.display()
                        )
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        Ok(())
    }

    /// Restarts agents that died, as a service manager would on a real host.
    async fn keep_alive(&mut self, binary: &Path, token_file: &Path, pass_env: &[String]) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for agent in &mut self.nodes {
                let alive = match agent.child.as_mut() {
                    Some(child) => matches!(child.try_wait(), Ok(None)),
                    None => std::net::TcpStream::connect(("127.0.0.1", agent.port)).is_ok(),
                };
                if !alive {
                    tracing::warn!(node = %agent.name, "agent died; restarting it");
                    if let Err(error) = agent.spawn(binary, token_file, pass_env) {
                        tracing::error!(node = %agent.name, %error, "cannot restart the agent");
                    }
                }
            }
        }
    }

    /// SIGTERM lets each agent stop its app's processes; SIGKILL whatever remains after 30 s.
    fn stop(&mut self) {
        for agent in &self.nodes {
            if let Some(pid) = agent.pid() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for agent in &mut self.nodes {
            while agent.running() {
                if Instant::now() > deadline {
                    tracing::warn!(node = %agent.name, "agent did not stop; killing it");
                    if let Some(pid) = agent.pid() {
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(child) = agent.child.as_mut() {
                let _ = child.wait();
            }
        }
    }
}

impl AgentNode {
    fn spawn(
        &mut self,
        binary: &Path,
        token_file: &Path,
        pass_env: &[String],
    ) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let mut command = Command::new(binary);
        command
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["agent", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--token-file")
            .arg(token_file)
            .args(
                pass_env
                    .iter()
                    .flat_map(|name| ["--pass-env", name.as_str()]),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: Ctrl-C in the terminal reaches `up` alone, which stops the
        // agents in order; and an agent outlives a crash of `up`, as on a separate host.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start the agent of {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// The agent's process: ours, or the one an earlier `up` started (from its pid file).
    fn pid(&self) -> Option<nix::unistd::Pid> {
        match &self.child {
            Some(child) => Some(nix::unistd::Pid::from_raw(child.id() as i32)),
            None => std::fs::read_to_string(self.dir.join("agent.pid"))
                .ok()
                .and_then(|pid| pid.trim().parse().ok())
                .map(nix::unistd::Pid::from_raw),
        }
    }

    fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => self
                .pid()
                .is_some_and(|pid| nix::sys::signal::kill(pid, None).is_ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_missing_agent_ports_get_free_ones_of_their_own() {
        let mut ports = vec![5, 5, 0, 7];
        assert!(repair_ports(&mut ports).unwrap());
        assert_eq!(ports.len(), NODES.len());
        assert_eq!((ports[0], ports[3]), (5, 7), "sound ports stay");
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), NODES.len(), "{ports:?}");
        assert!(!ports.contains(&0), "{ports:?}");
    }

    #[test]
    fn sound_agent_ports_are_left_alone() {
        let mut ports = vec![11, 12, 13, 14, 15];
        assert!(!repair_ports(&mut ports).unwrap());
        assert_eq!(ports, [11, 12, 13, 14, 15]);
    }
}
