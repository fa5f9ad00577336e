//! The processes `up` runs beside itself, as a service manager would on real hosts: the five
//! agents and the edge. Each is started by `up`, or adopted when an earlier `up` left it running,
//! and restarted when it dies; each outlives a crash of `up`, so that nodes and the edge keep
//! serving while the controller comes back.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What a daemon is: the `lockstep` subcommand that runs it, and how `up` asks it whether it is
/// ready.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Agent,
    Edge,
}

impl Kind {
    /// The subcommand, and the stem of the files it keeps in its folder (`agent.log`,
    /// `agent.pid`).
    fn command(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Edge => "edge",
        }
    }

    /// A route of its API that answers once it serves.
    pub fn ready_path(self) -> &'static str {
        match self {
            Kind::Agent => "/v1/instances",
            Kind::Edge => "/v1/environments",
        }
    }
}

/// How `up` asks a daemon whether it serves: a client that may call it (the controller's
/// certificate for an agent, the edge's token for the edge) and the URL of its ready route.
#[derive(Clone)]
pub(super) struct Probe {
    pub http: reqwest::Client,
    pub url: String,
}

pub(super) struct Daemon {
    /// `production-1`, `edge`.
    pub name: String,
    pub kind: Kind,
    /// Where it answers `up` and the controller.
    pub port: u16,
    /// Its data folder, log and pid file.
    pub dir: PathBuf,
    /// Its arguments after the subcommand.
    pub args: Vec<OsString>,
    /// Variables of its environment at start, beside `up`'s own.
    pub env: Vec<(String, String)>,
    probe: Probe,
    child: Option<Child>,
}

impl Daemon {
    pub fn new(
        kind: Kind,
        name: &str,
        port: u16,
        dir: PathBuf,
        args: Vec<OsString>,
        env: Vec<(String, String)>,
        probe: Probe,
    ) -> Daemon {
        Daemon {
            name: name.to_owned(),
            kind,
            port,
            dir,
            args,
            env,
            probe,
            child: None,
        }
    }

    /// "the agent of production-1", "the edge".
    fn describe(&self) -> String {
        match self.kind {
            Kind::Agent => format!("the agent of {}", self.name),
            Kind::Edge => "the edge".into(),
        }
    }

    fn file(&self, extension: &str) -> PathBuf {
        self.dir
            .join(format!("{}.{extension}", self.kind.command()))
    }

    fn log_path(&self) -> PathBuf {
        self.file("log")
    }

    /// Its arguments as one string of bytes, NUL-separated, as kept in its `.args` file.
    fn args_bytes(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        self.args
            .join(std::ffi::OsStr::new("\0"))
            .as_bytes()
            .to_vec()
    }

    /// Whether the daemon running now was started with the arguments this `up` gives.
    fn runs_with_these_args(&self) -> bool {
        std::fs::read(self.file("args")).is_ok_and(|saved| saved == self.args_bytes())
    }

    fn spawn(&mut self, binary: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        std::fs::write(self.file("args"), self.args_bytes())
            .with_context(|| format!("cannot write in {}", self.dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(binary);
        command
            .arg("--data-dir")
            .arg(&self.dir)
            .arg(self.kind.command())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: Ctrl-C in the terminal reaches `up` alone, which stops the
        // daemons in order; and a daemon outlives a crash of `up`, as on a separate host.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.describe()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Its process: ours, or the one an earlier `up` started (from its pid file).
    fn pid(&self) -> Option<nix::unistd::Pid> {
        match &self.child {
            Some(child) => Some(nix::unistd::Pid::from_raw(child.id() as i32)),
            None => std::fs::read_to_string(self.file("pid"))
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

    fn answers(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// Waits until it answers, as long as it shows progress: a node loading many releases takes
    /// its time, and writes its log meanwhile.
    async fn wait_until_answering(&mut self) -> anyhow::Result<()> {
        const PATIENCE: Duration = Duration::from_secs(30);
        let log = self.log_path();
        let log_size = || std::fs::metadata(&log).map_or(0, |m| m.len());
        let mut last_size = log_size();
        let mut deadline = Instant::now() + PATIENCE;
        let what = self.describe();
        loop {
            let size = log_size();
            if size != last_size {
                last_size = size;
                deadline = Instant::now() + PATIENCE;
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                if port_held_elsewhere(self.port) {
                    return Err(PortTaken {
                        daemon: self.name.clone(),
                        port: self.port,
                    }
                    .into());
                }
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let last_words = said.lines().last().unwrap_or("nothing");
                bail!(
                    "{what} exited ({status}): {last_words}; see {}",
                    log.display()
                );
            }
            let answer = self.probe.http.get(&self.probe.url).send().await;
            match answer {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => bail!(
                    "something else answers on port {} ({}); stop it or use another data directory",
                    self.port,
                    response.status()
                ),
                Err(_) if Instant::now() > deadline => bail!(
                    "{what} did not answer on port {} and wrote nothing in {} s; see {}",
                    self.port,
                    PATIENCE.as_secs(),
                    log.display()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// SIGTERM, then SIGKILL once `deadline` passed; waits for it to end.
    fn stop(&mut self, deadline: Instant) {
        while self.running() {
            if Instant::now() > deadline {
                tracing::warn!(name = %self.name, "did not stop; killing it");
                if let Some(pid) = self.pid() {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait();
        }
    }
}

/// A daemon `up` started exited because another process listens on its port: ports are found
/// free, then bound by the daemon later, and something else may take one in between.
#[derive(Debug)]
pub(super) struct PortTaken {
    /// `production-1`, `edge`.
    pub daemon: String,
    pub port: u16,
}

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another process took port {} before {} could listen on it",
            self.port, self.daemon
        )
    }
}

impl std::error::Error for PortTaken {}

/// Whether something listens on loopback `port` (a daemon that just exited no longer does).
fn port_held_elsewhere(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
}

#[derive(Default)]
pub(super) struct Daemons {
    daemons: Vec<Daemon>,
}

impl Daemons {
    /// Adopts `daemon` when it already answers on its port with the same arguments; restarts it
    /// when it runs with others (another `--edge-listen`, `--pass-env`); or starts it.
    pub fn start(&mut self, binary: &Path, mut daemon: Daemon) -> anyhow::Result<()> {
        let kind = daemon.kind.command();
        if daemon.answers() && daemon.runs_with_these_args() {
            tracing::info!(name = %daemon.name, port = daemon.port, "adopting the {kind} already running");
        } else {
            if daemon.answers() {
                tracing::info!(name = %daemon.name, "restarting the {kind} already running: it has other arguments");
                if let Some(pid) = daemon.pid() {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
                daemon.stop(Instant::now() + Duration::from_secs(30));
            }
            daemon.spawn(binary)?;
        }
        self.daemons.push(daemon);
        Ok(())
    }

    /// Starts `daemon` in place of the one of the same name, which has exited.
    pub fn replace(&mut self, binary: &Path, mut daemon: Daemon) -> anyhow::Result<()> {
        daemon.spawn(binary)?;
        match self.daemons.iter_mut().find(|d| d.name == daemon.name) {
            Some(exited) => *exited = daemon,
            None => self.daemons.push(daemon),
        }
        Ok(())
    }

    pub async fn wait_until_answering(&mut self) -> anyhow::Result<()> {
        for daemon in &mut self.daemons {
            daemon.wait_until_answering().await?;
        }
        Ok(())
    }

    /// Restarts daemons that died.
    pub async fn keep_alive(&mut self, binary: &Path) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for daemon in &mut self.daemons {
                let alive = match daemon.child.as_mut() {
                    Some(child) => matches!(child.try_wait(), Ok(None)),
                    None => daemon.answers(),
                };
                if !alive {
                    tracing::warn!(name = %daemon.name, "{} died; restarting it", daemon.kind.command());
                    if let Err(error) = daemon.spawn(binary) {
                        tracing::error!(name = %daemon.name, %error, "cannot restart it");
                    }
                }
            }
        }
    }

    /// SIGTERM lets each daemon finish (an agent stops its app's processes and services);
    /// SIGKILL one that takes more than 30 s. One at a time, the first node last, as an
    /// operator stops a cluster: a Galera cluster stopped whole starts again only on the member
    /// that left last, and members leaving at once leave none marked so.
    pub fn stop(&mut self) {
        for daemon in self.daemons.iter_mut().rev() {
            if let Some(pid) = daemon.pid() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            daemon.stop(Instant::now() + Duration::from_secs(30));
        }
    }
}
