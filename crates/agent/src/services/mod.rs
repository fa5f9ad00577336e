//! An environment's services on this node (SPEC section 10): each engine's server supervised
//! like an app process, in a sandbox of its own as the environment's user, with its data in
//! `services/<name>/data` (its `/app`); and, on every node, the service's endpoint, which the
//! app's relationship names and which forwards to the primary wherever it runs.
//!
//! Services do not take part in the deploy procedure: they start before the first deployment
//! that declares them and keep running through every closed window, since the deploy hook uses
//! them. A service the configuration no longer declares is stopped; its data stays.
//!
//! Code map: `engine` (what differs between PostgreSQL, MariaDB and Redis), `scripts` (an
//! engine's scripts run in the service's sandbox), `endpoint` (the forwarding port and who may
//! connect to it).

mod endpoint;
mod engine;
mod scripts;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_proto::agent::{
    ProcessState, ServiceEndpoints, ServiceReplication, ServiceRole, ServiceSpec, ServiceStatus,
};
use lockstep_supervisor::{
    LogLimits, ProcessSpec, ProcessState as SupervisedState, RunAs, Sandbox, Supervisor,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::NodeContext;
use crate::error::AgentError;
use endpoint::{Endpoint, Target};
use engine::{Shape, engine};
use scripts::{Output, service_env};

/// How long a server may take to accept connections and take its user and database.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// A database gets time to write its buffers out before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(60);
/// A server that exits this many times before it is ready will not do better.
const START_ATTEMPTS: u32 = 3;

/// What survives a restart of the agent: the services and the ports each one keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    services: BTreeMap<String, Kept>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    /// `None` once the configuration no longer declares it: stopped, its data kept.
    spec: Option<ServiceSpec>,
    /// Where the engine listens when it runs on this node.
    port: u16,
    /// Where the node's apps reach it.
    endpoint_port: u16,
    /// A clustered engine's own ports (Galera: members, incremental and full state
    /// transfers), given once it is clustered.
    #[serde(default)]
    cluster_ports: Vec<u16>,
}

/// A server started by this run of the agent.
struct Running {
    /// What it was started as.
    spec: ServiceSpec,
    /// Whether its user and database were made since.
    provisioned: bool,
}

/// Whether [`Services::ensure`] answers once every server accepts connections (a deploy
/// needs them), or as soon as each is started (an agent starting again must answer at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    UntilReady,
    No,
}

/// How much of a snapshot is read or written at once: a file's default 4 KiB made a gigabyte's
/// trip take seconds more than the disk does.
const STREAM_CHUNK: usize = 1 << 20;

/// A consistent snapshot of a service's data, streamed from its script as it writes it.
pub struct Snapshot {
    data: tokio::net::unix::pipe::Receiver,
    taken: tokio::task::JoinHandle<Result<Vec<String>, AgentError>>,
}

impl Snapshot {
    /// The snapshot's bytes; the stream ends in an error if its script failed, so that no
    /// reader takes a part for the whole.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
        use futures_util::StreamExt;
        let taken = self.taken;
        let end = futures_util::stream::once(async move {
            match taken.await {
                Ok(Ok(_)) => None,
                Ok(Err(error)) => Some(Err(std::io::Error::other(error.to_string()))),
                Err(error) => Some(Err(std::io::Error::other(error.to_string()))),
            }
        })
        .filter_map(std::future::ready);
        tokio_util::io::ReaderStream::with_capacity(self.data, STREAM_CHUNK).chain(end)
    }
}

/// What the app's runtime needs of a service for its relationships.
pub struct Reachable {
    pub spec: ServiceSpec,
    pub endpoint_port: u16,
}

pub struct Services {
    dir: PathBuf,
    log_dir: PathBuf,
    context: Arc<NodeContext>,
    supervisor: Supervisor,
    /// One [`Services::ensure`] at a time.
    ensuring: Mutex<()>,
    kept: std::sync::Mutex<Persisted>,
    endpoints: std::sync::Mutex<BTreeMap<String, Endpoint>>,
    /// Each server started by this run of the agent.
    running: std::sync::Mutex<BTreeMap<String, Running>>,
    /// Each service's data size and when it was measured: walking a database's folder at every
    /// status the controller asks for was most of an idle agent's work.
    measured: std::sync::Mutex<BTreeMap<String, (Instant, u64)>>,
}

/// How old a service's data size in its status may be.
const USAGE_FRESHNESS: Duration = Duration::from_secs(60);

impl Services {
    /// The services kept in `dir`; nothing runs until [`Services::ensure`].
    pub fn load(
        dir: PathBuf,
        log_dir: PathBuf,
        context: Arc<NodeContext>,
    ) -> Result<Services, AgentError> {
        let path = dir.join("services.json");
        let kept = lockstep_durable::read_json(&path)
            .map_err(AgentError::io(format!("read {}", path.display())))?
            .unwrap_or_default();
        Ok(Services {
            supervisor: Supervisor::new(LogLimits::default(), context.init.clone()),
            dir,
            log_dir,
            context,
            ensuring: Mutex::new(()),
            kept: std::sync::Mutex::new(kept),
            endpoints: Default::default(),
            running: Default::default(),
            measured: Default::default(),
        })
    }

    /// The specs in force, to start again after a restart of the agent.
    pub fn declared(&self) -> Vec<ServiceSpec> {
        self.kept()
            .services
            .values()
            .filter_map(|kept| kept.spec.clone())
            .collect()
    }

    /// Makes this node run `specs` and nothing else, and answers once each accepts
    /// connections: a primary here is started (its data folder made the first time) and its
    /// user and database made; a primary elsewhere is reached through the endpoint.
    pub async fn ensure(
        &self,
        specs: Vec<ServiceSpec>,
        user: RunAs,
        wait: Wait,
    ) -> Result<Vec<ServiceStatus>, AgentError> {
        let _one_at_a_time = self.ensuring.lock().await;
        let (entries, removed) = self.record(&specs)?;
        for name in removed {
            tracing::info!(service = %name, "the configuration no longer declares it: stopped, its data kept");
            self.stop_server(&name).await;
            self.endpoints.lock().expect("endpoints lock").remove(&name);
        }
        for entry in &entries {
            let spec = self.open_endpoint_of(entry, user).await?;
            match &spec.role {
                ServiceRole::Primary { .. } | ServiceRole::Replica { .. } => {
                    self.run_server(spec, entry, user, wait).await?
                }
                ServiceRole::Remote { .. } => self.stop_server(&spec.name).await,
            }
        }
        Ok(self.status())
    }

    /// Starts `specs`, primaries with no replica, each from a snapshot of another's data
    /// instead of an empty data folder: a scratch copy of them.
    pub async fn start_from_snapshots(
        &self,
        snapshots: Vec<(ServiceSpec, Snapshot)>,
        user: RunAs,
    ) -> Result<(), AgentError> {
        let _one_at_a_time = self.ensuring.lock().await;
        let specs: Vec<ServiceSpec> = snapshots.iter().map(|(spec, _)| spec.clone()).collect();
        let (entries, _) = self.record(&specs)?;
        for entry in &entries {
            self.open_endpoint_of(entry, user).await?;
        }
        let restores = snapshots.into_iter().map(|(spec, snapshot)| async move {
            self.restore_data(&spec.name, user, Box::pin(snapshot.into_stream()))
                .await
        });
        for restored in futures_util::future::join_all(restores).await {
            restored?;
        }
        Ok(())
    }

    /// Opens the endpoint of a service in force; its spec.
    async fn open_endpoint_of<'a>(
        &self,
        entry: &'a Kept,
        user: RunAs,
    ) -> Result<&'a ServiceSpec, AgentError> {
        let spec = entry
            .spec
            .as_ref()
            .expect("a declared service has its spec");
        self.open_endpoint(spec, entry, user).await?;
        Ok(spec)
    }

    /// Records `specs` as the services in force, each with its ports (new ones for a new
    /// service); answers what each is now, and the services no longer declared.
    fn record(&self, specs: &[ServiceSpec]) -> Result<(Vec<Kept>, Vec<String>), AgentError> {
        let mut names = Vec::new();
        for spec in specs {
            crate::instance::check_plain_name(&spec.name, "service name")?;
            check_addresses(&spec.role)?;
            check_endpoints(&spec.endpoints)?;
            names.push(spec.name.clone());
        }
        let (entries, removed) = {
            let mut kept = self.kept();
            let taken: Vec<u16> = kept
                .services
                .values()
                .flat_map(|k| {
                    [k.port, k.endpoint_port]
                        .into_iter()
                        .chain(k.cluster_ports.clone())
                })
                .collect();
            let missing = specs
                .iter()
                .filter(|spec| !kept.services.contains_key(&spec.name))
                .count();
            let fresh_ports = lockstep_supervisor::free_listen_ports(missing * 2, &taken)
                .map_err(AgentError::io("find ports for the services"))?;
            let mut fresh = fresh_ports.clone().into_iter();
            let mut taken: Vec<u16> = taken.into_iter().chain(fresh_ports).collect();
            let mut entries = Vec::new();
            for spec in specs {
                let entry = kept
                    .services
                    .entry(spec.name.clone())
                    .or_insert_with(|| Kept {
                        spec: None,
                        port: fresh.next().expect("a port per new service"),
                        endpoint_port: fresh.next().expect("an endpoint port per new service"),
                        cluster_ports: Vec::new(),
                    });
                // A cluster's member list is replaced by another, never forgotten: with none, a
                // member would start a cluster of its own.
                let mut spec = spec.clone();
                let known = entry
                    .spec
                    .clone()
                    .and_then(|mut old| old.role.members_mut().map(std::mem::take));
                if let (Some(known), Some(new)) = (known, spec.role.members_mut())
                    && new.is_empty()
                {
                    *new = known;
                }
                entry.spec = Some(spec.clone());
                let clustered = engine(spec.engine).clusters()
                    && matches!(
                        spec.role,
                        ServiceRole::Primary { replicas: 1.., .. } | ServiceRole::Replica { .. }
                    );
                if clustered && entry.cluster_ports.is_empty() {
                    entry.cluster_ports = lockstep_supervisor::free_listen_ports(3, &taken)
                        .map_err(AgentError::io("find ports for a service's cluster"))?;
                    taken.extend(&entry.cluster_ports);
                }
                entries.push(entry.clone());
            }
            let removed: Vec<String> = kept
                .services
                .iter_mut()
                .filter(|(name, k)| k.spec.is_some() && !names.contains(name))
                .map(|(name, k)| {
                    k.spec = None;
                    name.clone()
                })
                .collect();
            self.save(&kept)?;
            (entries, removed)
        };
        Ok((entries, removed))
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        let kept = self.kept().clone();
        self.status_of(&kept)
    }

    /// A consistent snapshot of service `name`, the primary on this node, taken while it
    /// serves (SPEC section 10), streamed as it is taken: for an environment cloned from this
    /// one, a backup, a rehearsal.
    pub async fn snapshot(&self, name: &str, user: RunAs) -> Result<Snapshot, AgentError> {
        let (spec, kept) = self.primary_here(name)?;
        let programs = self.programs(&spec)?;
        let sandbox = self.sandbox(name, user)?;
        let (data, output) =
            std::io::pipe().map_err(AgentError::io("make a pipe for the snapshot"))?;
        let data = tokio::net::unix::pipe::Receiver::from_owned_fd(data.into())
            .map_err(AgentError::io("read the snapshot"))?;
        let mut env = service_env();
        env.insert("SERVICE_PASSWORD".into(), spec.password.clone());
        let script = engine(spec.engine).snapshot_script(&programs, kept.port);
        let (name, log) = (name.to_owned(), self.log_output(name));
        let taken = tokio::spawn(async move {
            let output = scripts::Data {
                input: None,
                output: Some(output.into()),
            };
            scripts::run_with_data(&name, "snapshot", &script, &sandbox, env, log, output).await
        });
        Ok(Snapshot { data, taken })
    }

    /// Replaces the data of service `name`, the primary on this node, with `snapshot`
    /// (another environment's, from [`Services::snapshot`]): unpacked beside the data while it
    /// arrives, then the server stops, the unpacked data takes the old one's place, and the
    /// server starts again and gets this environment's users and passwords. Its replicas must
    /// be discarded first ([`Services::discard_replica`]): they follow a history that is no
    /// longer their primary's.
    pub async fn restore<S, E>(
        &self,
        name: &str,
        user: RunAs,
        snapshot: S,
    ) -> Result<Vec<ServiceStatus>, AgentError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let _one_at_a_time = self.ensuring.lock().await;
        self.restore_data(name, user, snapshot).await?;
        Ok(self.status())
    }

    /// [`Services::restore`], for a caller that holds `ensuring`.
    async fn restore_data<S, E>(
        &self,
        name: &str,
        user: RunAs,
        mut snapshot: S,
    ) -> Result<(), AgentError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let (spec, kept) = self.primary_here(name)?;
        let programs = self.programs(&spec)?;
        self.data_folder(name, user)?;
        let sandbox = self.sandbox(name, user)?;
        let engine = engine(spec.engine);
        let (input, feed) =
            std::io::pipe().map_err(AgentError::io("make a pipe for the snapshot"))?;
        let mut feed = tokio::net::unix::pipe::Sender::from_owned_fd(feed.into())
            .map_err(AgentError::io("pass the snapshot on"))?;
        let script = engine.unpack_script(&programs);
        let unpack = scripts::run_with_data(
            name,
            "unpack",
            &script,
            &sandbox,
            service_env(),
            self.log_output(name),
            scripts::Data {
                input: Some(input.into()),
                output: None,
            },
        );
        let fed = async move {
            while let Some(chunk) = snapshot.next().await {
                let chunk = chunk
                    .map_err(|e| AgentError::BadRequest(format!("the snapshot broke off: {e}")))?;
                feed.write_all(&chunk)
                    .await
                    .map_err(AgentError::io("pass the snapshot on"))?;
            }
            // The script sees the snapshot's end once `feed` is gone.
            Ok::<_, AgentError>(())
        };
        let (unpacked, fed) = tokio::join!(unpack, fed);
        // A snapshot that broke off may look whole to the script; a script that failed stops
        // reading, and says why better than the broken pipe does.
        if let Err(broke @ AgentError::BadRequest(_)) = fed {
            return Err(broke);
        }
        unpacked?;
        fed?;
        self.stop_server(name).await;
        scripts::run(
            name,
            "swap",
            engine.swap_script(),
            &sandbox,
            service_env(),
            self.log_output(name),
        )
        .await?;
        self.run_server(&spec, &kept, user, Wait::UntilReady).await
    }

    /// Stops this node's replica of service `name` and removes its data, before its primary's
    /// data is replaced; the server stays stopped until [`Services::start`] makes it again as a
    /// copy of the new data. All of a cluster's replicas are discarded before its primary
    /// starts with new data, or a member could rejoin the old cluster.
    pub async fn discard_replica(
        &self,
        name: &str,
        user: RunAs,
    ) -> Result<Vec<ServiceStatus>, AgentError> {
        let _one_at_a_time = self.ensuring.lock().await;
        let (spec, _) = self.kept_here(name, "replica", |role| {
            matches!(role, ServiceRole::Replica { .. })
        })?;
        self.stop_server(name).await;
        scripts::run(
            name,
            "discard",
            engine(spec.engine).discard_script(),
            &self.sandbox(name, user)?,
            service_env(),
            self.log_output(name),
        )
        .await?;
        Ok(self.status())
    }

    /// Starts this node's server of service `name` as its spec says, unless it runs; answers
    /// once it accepts connections (a discarded replica's data made again from its primary's).
    pub async fn start(&self, name: &str, user: RunAs) -> Result<Vec<ServiceStatus>, AgentError> {
        let _one_at_a_time = self.ensuring.lock().await;
        let (spec, kept) = self.kept_here(name, "server", |role| {
            !matches!(role, ServiceRole::Remote { .. })
        })?;
        self.run_server(&spec, &kept, user, Wait::UntilReady)
            .await?;
        Ok(self.status())
    }

    /// The spec of service `name` and what this node keeps of it, when it is the primary here.
    fn primary_here(&self, name: &str) -> Result<(ServiceSpec, Kept), AgentError> {
        self.kept_here(name, "primary", |role| {
            matches!(role, ServiceRole::Primary { .. })
        })
    }

    /// The spec of service `name` and what this node keeps of it, when its role here is
    /// `what` (`wanted`).
    fn kept_here(
        &self,
        name: &str,
        what: &str,
        wanted: impl Fn(&ServiceRole) -> bool,
    ) -> Result<(ServiceSpec, Kept), AgentError> {
        let kept = self.kept().services.get(name).cloned();
        match kept.as_ref().and_then(|kept| kept.spec.clone()) {
            Some(spec) if wanted(&spec.role) => Ok((spec, kept.expect("matched"))),
            _ => Err(AgentError::Refused(format!(
                "service {name} has no {what} on this node"
            ))),
        }
    }

    fn programs(&self, spec: &ServiceSpec) -> Result<engine::Programs, AgentError> {
        Ok(self
            .context
            .runtime(
                &format!("{}:{}", spec.engine.as_str(), version(spec)),
                false,
            )?
            .commands)
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Persisted> {
        self.kept.lock().expect("services lock")
    }

    /// The services apps may have relationships to, by name.
    pub fn reachable(&self) -> BTreeMap<String, Reachable> {
        self.kept()
            .services
            .iter()
            .filter_map(|(name, kept)| {
                Some((
                    name.clone(),
                    Reachable {
                        spec: kept.spec.clone()?,
                        endpoint_port: kept.endpoint_port,
                    },
                ))
            })
            .collect()
    }

    /// Stops every server (the agent is stopping); data stays.
    pub async fn stop_all(&self) {
        self.supervisor.stop_all().await;
        self.running.lock().expect("running lock").clear();
    }

    fn save(&self, kept: &Persisted) -> Result<(), AgentError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(AgentError::io(format!("create {}", self.dir.display())))?;
        let path = self.dir.join("services.json");
        lockstep_durable::write_json(&path, kept)
            .map_err(AgentError::io(format!("write {}", path.display())))
    }

    async fn open_endpoint(
        &self,
        spec: &ServiceSpec,
        kept: &Kept,
        user: RunAs,
    ) -> Result<(), AgentError> {
        let address = match &spec.role {
            ServiceRole::Primary { .. } => format!("127.0.0.1:{}", kept.port),
            ServiceRole::Replica { primary, .. } | ServiceRole::Remote { primary } => {
                primary.clone()
            }
        };
        let target = Target {
            address,
            login: engine(spec.engine).endpoint_login(&spec.password),
        };
        let open = self
            .endpoints
            .lock()
            .expect("endpoints lock")
            .contains_key(&spec.name);
        if !open {
            let allowed = vec![user.uid, 0];
            let endpoint = Endpoint::listen(kept.endpoint_port, allowed)
                .await
                .map_err(AgentError::io(format!(
                    "listen on port {} for service {}",
                    kept.endpoint_port, spec.name
                )))?;
            self.endpoints
                .lock()
                .expect("endpoints lock")
                .insert(spec.name.clone(), endpoint);
        }
        if let Some(endpoint) = self
            .endpoints
            .lock()
            .expect("endpoints lock")
            .get(&spec.name)
        {
            endpoint.point_at(target);
        }
        Ok(())
    }

    /// Starts this node's server of `spec` (a primary, or a replica following one) unless it
    /// runs already as `spec` says.
    async fn run_server(
        &self,
        spec: &ServiceSpec,
        kept: &Kept,
        user: RunAs,
        wait: Wait,
    ) -> Result<(), AgentError> {
        let port = kept.port;
        let data = self.data_folder(&spec.name, user)?;
        let engine = engine(spec.engine);
        // Written even for a server that runs on: it reads them when it starts again.
        let server = engine::Server {
            name: &spec.name,
            port,
            cluster_ports: &kept.cluster_ports,
            password: &spec.password,
            persistent: spec.persistent,
            role: &spec.role,
            address: self.context.router_address,
        };
        for (name, text) in engine.config_files(&server) {
            lockstep_durable::replace_private(
                &data.join(name),
                text.as_bytes(),
                Some((user.uid, user.gid)),
            )
            .map_err(AgentError::io(format!(
                "write {name} of service {}",
                spec.name
            )))?;
        }
        // A new member list is no reason to restart a server, only where it rejoins next time;
        // nor is a promotion, which the server takes in place (a Redis replica's data is in its
        // memory alone).
        let without_role_details = |spec: &ServiceSpec| {
            let mut spec = spec.clone();
            spec.endpoints = Default::default();
            spec.role = match spec.role {
                ServiceRole::Primary { .. } | ServiceRole::Replica { .. } if engine.clusters() => {
                    ServiceRole::Primary {
                        replicas: 0,
                        cluster: Vec::new(),
                    }
                }
                ServiceRole::Primary { replicas, .. } => ServiceRole::Primary {
                    replicas,
                    cluster: Vec::new(),
                },
                ServiceRole::Replica { primary, .. } => ServiceRole::Replica {
                    primary,
                    cluster: Vec::new(),
                },
                remote => remote,
            };
            spec
        };
        let promoted = |running: &Running| {
            matches!(running.spec.role, ServiceRole::Replica { .. })
                && matches!(spec.role, ServiceRole::Primary { .. })
        };
        let already = {
            let mut running = self.running.lock().expect("running lock");
            match running.get_mut(&spec.name) {
                Some(server) if promoted(server) => {
                    server.spec = spec.clone();
                    server.provisioned = false;
                    true
                }
                Some(server) => {
                    let same = without_role_details(&server.spec) == without_role_details(spec);
                    if same {
                        // New endpoints or privileges are made on the running server.
                        if server.spec.endpoints != spec.endpoints {
                            server.provisioned = false;
                        }
                        server.spec = spec.clone();
                    }
                    same
                }
                None => false,
            }
        };
        let server_state = self
            .supervisor
            .status()
            .into_iter()
            .find(|p| p.name == process_name(&spec.name))
            .map(|p| p.state);
        let runtime = self.context.runtime(
            &format!("{}:{}", spec.engine.as_str(), version(spec)),
            false,
        )?;
        let programs = runtime.commands.clone();
        let sandbox = self.sandbox(&spec.name, user)?;
        let env = service_env();
        let mut with_password = env.clone();
        with_password.insert("SERVICE_PASSWORD".into(), spec.password.clone());
        let endpoints = endpoints_of(spec);
        for (index, name) in endpoints.endpoints.keys().enumerate() {
            with_password.insert(
                engine::endpoint_password_variable(index),
                endpoint_password(spec, name),
            );
        }
        let restarts_before = if already && server_state != Some(SupervisedState::Stopped) {
            self.restarts(&spec.name)
        } else {
            if let Some(warning) = runtime.warning() {
                tracing::warn!(service = %spec.name, "{warning}");
            }
            // Its data folder may be set aside and made again.
            self.stop_server(&spec.name).await;
            if let Some(script) = engine.init_script(&programs, &spec.role) {
                scripts::run(
                    &spec.name,
                    "init",
                    &script,
                    &sandbox,
                    with_password.clone(),
                    self.log_output(&spec.name),
                )
                .await?;
            }
            self.supervisor
                .start(ProcessSpec {
                    name: process_name(&spec.name),
                    command: engine.start_script(&programs, &server),
                    sandbox: sandbox.clone(),
                    env: env.clone(),
                    log_dir: self.log_dir.clone(),
                    stop_grace: STOP_GRACE,
                })
                .await?;
            self.running.lock().expect("running lock").insert(
                spec.name.clone(),
                Running {
                    spec: spec.clone(),
                    provisioned: false,
                },
            );
            0
        };
        if wait == Wait::No {
            return Ok(());
        }
        self.wait_until_listening(&spec.name, port, restarts_before)
            .await?;
        let provisioned = self
            .running
            .lock()
            .expect("running lock")
            .get(&spec.name)
            .is_some_and(|running| running.provisioned);
        let replicas = match spec.role {
            ServiceRole::Primary { replicas, .. } => Some(replicas),
            _ => None,
        };
        if let Some(script) = replicas
            .filter(|_| !provisioned)
            .and_then(|replicas| engine.provision_script(&programs, port, replicas, &endpoints))
        {
            // A server that listens may still be recovering: the script is tried until it
            // takes, within the same patience.
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                let provision = scripts::run(
                    &spec.name,
                    "provision",
                    &script,
                    &sandbox,
                    with_password.clone(),
                    self.log_output(&spec.name),
                );
                match provision.await {
                    Ok(_) => break,
                    Err(error) if Instant::now() > deadline => return Err(error),
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
            if let Some(running) = self
                .running
                .lock()
                .expect("running lock")
                .get_mut(&spec.name)
            {
                running.provisioned = true;
            }
        }
        tracing::info!(service = %spec.name, port, version = %runtime.version, "service ready");
        Ok(())
    }

    fn restarts(&self, name: &str) -> u32 {
        self.supervisor
            .status()
            .into_iter()
            .find(|p| p.name == process_name(name))
            .map_or(0, |p| p.restarts)
    }

    /// Waits until the server listens; gives up (and stops it) once it exited
    /// [`START_ATTEMPTS`] times more than `restarts_before`, or after [`READY_TIMEOUT`].
    async fn wait_until_listening(
        &self,
        name: &str,
        port: u16,
        restarts_before: u32,
    ) -> Result<(), AgentError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            let restarts = self.restarts(name).saturating_sub(restarts_before);
            let gave_up = if restarts >= START_ATTEMPTS {
                Some(format!("exited {restarts} times"))
            } else if Instant::now() > deadline {
                Some(format!(
                    "did not listen within {} s",
                    READY_TIMEOUT.as_secs()
                ))
            } else {
                None
            };
            if let Some(reason) = gave_up {
                self.stop_server(name).await;
                let output =
                    lockstep_supervisor::read_log(&self.log_dir, &process_name(name), 4096)
                        .unwrap_or_default();
                return Err(AgentError::Refused(format!(
                    "service {name} {reason}. Its last output:\n{output}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes service `name`'s folder and its data folder, given to `user`; the data folder.
    fn data_folder(&self, name: &str, user: RunAs) -> Result<PathBuf, AgentError> {
        let folder = self.dir.join(name);
        let data = folder.join("data");
        lockstep_supervisor::give_folder(&folder, user)
            .and_then(|()| lockstep_supervisor::give_folder(&data, user))
            .map_err(AgentError::io(format!("make the folder of service {name}")))?;
        Ok(data)
    }

    /// The sandbox of service `name`'s server and scripts: its data folder at `/app`,
    /// writable.
    fn sandbox(&self, name: &str, user: RunAs) -> Result<Sandbox, AgentError> {
        let folder = self.dir.join(name);
        let mut sandbox = Sandbox::prepare(
            folder.join("data"),
            &folder,
            user,
            self.context.sandbox_owner.clone(),
        )
        .map_err(AgentError::io("prepare the service's sandbox"))?;
        sandbox.app_writable = true;
        Ok(sandbox)
    }

    /// How each replica on this node follows its primary, asked of its server.
    pub async fn replication(&self, user: RunAs) -> Vec<ServiceReplication> {
        let replicas: Vec<(ServiceSpec, u16)> = self
            .kept()
            .services
            .values()
            .filter_map(|kept| {
                let spec = kept.spec.clone()?;
                matches!(spec.role, ServiceRole::Replica { .. }).then_some((spec, kept.port))
            })
            .collect();
        let mut answers = Vec::new();
        for (spec, port) in replicas {
            let said = match (
                self.sandbox(&spec.name, user),
                self.context.runtime(
                    &format!("{}:{}", spec.engine.as_str(), version(&spec)),
                    false,
                ),
            ) {
                (Ok(sandbox), Ok(runtime)) => {
                    let script = engine(spec.engine).replication_script(&runtime.commands, port);
                    let mut env = service_env();
                    env.insert("SERVICE_PASSWORD".into(), spec.password.clone());
                    scripts::run(
                        &spec.name,
                        "replication",
                        &script,
                        &sandbox,
                        env,
                        Output::Return,
                    )
                    .await
                    .unwrap_or_default()
                }
                _ => Vec::new(),
            };
            let mut words = said
                .first()
                .map(String::as_str)
                .unwrap_or("")
                .split_whitespace();
            answers.push(ServiceReplication {
                name: spec.name.clone(),
                state: words.next().unwrap_or("unknown").to_owned(),
                lag_bytes: words.next().and_then(|lag| lag.parse().ok()),
                received: words.next().and_then(|received| received.parse().ok()),
            });
        }
        answers
    }

    /// The service's log, for the output of its scripts.
    fn log_output(&self, name: &str) -> Output {
        Output::Log(self.log_dir.join(format!("{}.log", process_name(name))))
    }

    async fn stop_server(&self, name: &str) {
        self.supervisor.stop(&process_name(name)).await;
        self.supervisor.forget(&process_name(name));
        self.running.lock().expect("running lock").remove(name);
    }

    /// The size of service `name`'s data, measured at most [`USAGE_FRESHNESS`] ago.
    fn data_bytes(&self, name: &str) -> u64 {
        let mut measured = self.measured.lock().expect("measured lock");
        match measured.get(name) {
            Some((at, bytes)) if at.elapsed() < USAGE_FRESHNESS => *bytes,
            _ => {
                let bytes = lockstep_supervisor::tree_bytes(&self.dir.join(name).join("data"));
                measured.insert(name.to_owned(), (Instant::now(), bytes));
                bytes
            }
        }
    }

    fn status_of(&self, kept: &Persisted) -> Vec<ServiceStatus> {
        let processes = self.supervisor.status();
        kept.services
            .iter()
            .filter_map(|(name, k)| {
                let spec = k.spec.as_ref()?;
                let process = processes
                    .iter()
                    .find(|p| p.name == process_name(name))
                    .map(|p| match p.state {
                        SupervisedState::Running => ProcessState::Running,
                        SupervisedState::BackingOff => ProcessState::BackingOff,
                        SupervisedState::Stopped => ProcessState::Stopped,
                    });
                let here = !matches!(spec.role, ServiceRole::Remote { .. });
                Some(ServiceStatus {
                    name: name.clone(),
                    engine: spec.engine,
                    role: spec.role.clone(),
                    port: if here { k.port } else { 0 },
                    endpoint_port: k.endpoint_port,
                    cluster_port: k.cluster_ports.first().copied().unwrap_or(0),
                    process,
                    data_bytes: self.data_bytes(name),
                    disk_mb: spec.disk_mb,
                })
            })
            .collect()
    }
}

/// The addresses in `role` go into the engine's scripts and files: each must be a plain
/// `host:port`.
fn check_addresses(role: &ServiceRole) -> Result<(), AgentError> {
    let (primary, members) = match role {
        ServiceRole::Primary { cluster, .. } => (None, cluster.as_slice()),
        ServiceRole::Replica { primary, cluster } => (Some(primary), cluster.as_slice()),
        ServiceRole::Remote { primary } => (Some(primary), &[][..]),
    };
    for address in primary.into_iter().chain(members) {
        let plain = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
                && port.parse::<u16>().is_ok()
        });
        if !plain {
            return Err(AgentError::BadRequest(format!(
                "`{address}` is not a service address (host:port)"
            )));
        }
    }
    Ok(())
}

/// Database, endpoint and extension names go into the engines' SQL as they are (quoted, so
/// an extension's may hold `-`).
fn check_endpoints(endpoints: &ServiceEndpoints) -> Result<(), AgentError> {
    let identifiers = endpoints
        .databases
        .iter()
        .chain(endpoints.endpoints.keys())
        .chain(endpoints.endpoints.values().map(|e| &e.username))
        .chain(
            endpoints
                .endpoints
                .values()
                .flat_map(|e| e.privileges.keys()),
        )
        .map(|name| (name, false));
    let extensions = endpoints.extensions.iter().map(|name| (name, true));
    for (name, hyphen) in identifiers.chain(extensions) {
        let plain = name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || (hyphen && c == '-'));
        if !plain {
            return Err(AgentError::BadRequest(format!(
                "`{name}` is not a database, endpoint or extension name"
            )));
        }
    }
    Ok(())
}

/// The databases and endpoints of `spec`: the engine's default ones when it names none.
fn endpoints_of(spec: &ServiceSpec) -> ServiceEndpoints {
    if spec.endpoints.endpoints.is_empty() {
        ServiceEndpoints::default_for(spec.engine)
    } else {
        spec.endpoints.clone()
    }
}

/// The password of endpoint `name`: the service's own for its default endpoint, and one
/// derived from it for each other, so that an app given a read-only endpoint cannot log in as
/// another.
fn endpoint_password(spec: &ServiceSpec, name: &str) -> String {
    if name == spec.engine.default_endpoint() {
        return spec.password.clone();
    }
    let key = blake3::derive_key(
        "lockstep 2026-12 service endpoint password",
        format!("{}\n{name}", spec.password).as_bytes(),
    );
    key[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a relationship to `spec` through `endpoint` (its default one when `None`) gives an
/// app; `None` when the service has no such endpoint.
pub struct Connection {
    pub scheme: &'static str,
    /// The endpoint's name (Platform.sh's `rel`).
    pub rel: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database it opens.
    pub path: Option<String>,
    pub query: serde_json::Value,
}

pub fn connection(spec: &ServiceSpec, endpoint: Option<&str>) -> Option<Connection> {
    let name = endpoint.unwrap_or(spec.engine.default_endpoint());
    let endpoints = endpoints_of(spec);
    let found = endpoints.endpoints.get(name)?;
    let Shape {
        scheme,
        logs_in,
        query,
    } = engine(spec.engine).relationship();
    Some(Connection {
        scheme,
        rel: name.to_owned(),
        username: logs_in.then(|| found.username.clone()),
        password: logs_in.then(|| endpoint_password(spec, name)),
        path: found.default_database.clone().filter(|_| logs_in),
        query,
    })
}

/// The supervisor's name for a service's server, and its log's: `service-NAME`.
pub fn process_name(service: &str) -> String {
    format!("service-{service}")
}

/// The version `type` asks for (`postgresql:15` → `15`).
fn version(spec: &ServiceSpec) -> &str {
    spec.service_type.split_once(':').map_or("", |(_, v)| v)
}
