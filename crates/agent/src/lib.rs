//! The node agent: the only thing that touches a node's app processes.
//!
//! Owns: for each app instance of an environment on the node, its staged releases, the active
//! one, its processes and crons (each in its sandbox, as the environment's user), its hook
//! outcomes, and its node router with the gate; each environment's services, their snapshots,
//! and the scratch copies a rehearsal runs against.
//! Must never: open a gate without a generation from the controller, or at any generation but
//! the active release's (I1); run a hook twice for one deployment (I2); run a cron or a worker
//! between quiesce and start of background work (I3); answer anyone but the controller (mutual
//! TLS); run pushed code outside its sandbox, as root, or as another environment's
//! user.

mod api;
mod error;
mod fastcgi;
mod hooks;
mod instance;
mod locations;
mod metrics;
mod php;
mod pull;
mod relationships;
mod release;
mod router;
mod runtime_env;
mod service_client;
mod services;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lockstep_proto::agent::{InstanceConfig, InstanceStatus, instance_name};
pub use lockstep_supervisor::{OperatorEnv, SandboxInit};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

pub use error::AgentError;
/// The folder of the node's identity (`lockstep_transport::enrol`), in the agent's data folder.
pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}
use instance::Instance;
use metrics::Metrics;
use services::Services;

pub struct AgentOptions {
    /// Holds the node's identity (`tls/`, from `enrol`) and everything else the agent keeps.
    pub data_dir: PathBuf,
    /// The operator's CA and proxy settings, passed to every app process.
    pub operator: OperatorEnv,
    /// The first process of every long-running process's sandbox.
    pub init: SandboxInit,
    /// Where the node's routers listen: the address the agent listens on, which the edge
    /// reaches from its own host.
    pub router_address: std::net::IpAddr,
}

/// What every instance of the node shares.
pub(crate) struct NodeContext {
    pub metrics: Arc<Metrics>,
    pub router_address: std::net::IpAddr,
    /// Pulls images from the controller with this node's certificate.
    pub images: pull::ImagePuller,
    /// The node's certificate for its routers, which serve edges alone on the node's address.
    pub router_tls: router::EdgeTls,
    pub operator: OperatorEnv,
    pub init: SandboxInit,
    /// Names this agent's sandboxes, so that the next run of it finds what this one left.
    pub sandbox_owner: String,
    /// Runtimes resolved so far, by `type` and strictness: resolving may run the language's
    /// program, which the closed window of a deploy should not wait for.
    runtimes: std::sync::Mutex<BTreeMap<(String, bool), lockstep_supervisor::Runtime>>,
    /// Each environment's services, shared by the instances of its apps.
    services: std::sync::Mutex<BTreeMap<String, Arc<Services>>>,
    /// Each instance's local router port (plain HTTP on loopback), by instance name: where
    /// another app of its environment reaches it (an `app:http` relationship).
    local_router_ports: std::sync::Mutex<BTreeMap<String, u16>>,
}

impl NodeContext {
    /// The services of `environment`, loaded from `environment_dir` (`instances/<env>`) the
    /// first time an instance of it asks.
    pub fn environment_services(
        self: &Arc<Self>,
        environment: &str,
        environment_dir: &Path,
    ) -> Result<Arc<Services>, AgentError> {
        let mut services = self.services.lock().expect("services lock");
        if let Some(found) = services.get(environment) {
            return Ok(found.clone());
        }
        let log_dir = environment_dir.join("logs");
        std::fs::create_dir_all(&log_dir)
            .map_err(AgentError::io(format!("create {}", log_dir.display())))?;
        let loaded = Arc::new(Services::load(
            environment_dir.join("services"),
            log_dir,
            self.clone(),
        )?);
        services.insert(environment.to_owned(), loaded.clone());
        Ok(loaded)
    }

    /// Forgets a removed environment's services and its instances' routers.
    fn forget_environment(&self, environment: &str, instances: &[String]) {
        self.services
            .lock()
            .expect("services lock")
            .remove(environment);
        let mut ports = self.local_router_ports.lock().expect("router ports lock");
        for instance in instances {
            ports.remove(instance);
        }
    }

    pub fn set_local_router_port(&self, instance: &str, port: u16) {
        self.local_router_ports
            .lock()
            .expect("router ports lock")
            .insert(instance.to_owned(), port);
    }

    pub fn local_router_port(&self, instance: &str) -> Option<u16> {
        self.local_router_ports
            .lock()
            .expect("router ports lock")
            .get(instance)
            .copied()
    }

    /// The runtime `type` resolves to on this node; a substitute is said in the agent's log.
    pub fn runtime(
        &self,
        runtime: &str,
        strict: bool,
    ) -> Result<lockstep_supervisor::Runtime, lockstep_supervisor::RuntimeError> {
        let key = (runtime.to_owned(), strict);
        if let Some(found) = self.runtimes.lock().expect("runtimes lock").get(&key) {
            return Ok(found.clone());
        }
        let found = lockstep_supervisor::resolve_runtime(runtime, strict)?;
        if let Some(warning) = found.warning() {
            tracing::warn!("{warning}");
        }
        self.runtimes
            .lock()
            .expect("runtimes lock")
            .insert(key, found.clone());
        Ok(found)
    }
}

pub struct Agent {
    data_dir: PathBuf,
    identity: Arc<lockstep_transport::RenewableIdentity>,
    instances: Mutex<BTreeMap<String, Arc<Instance>>>,
    context: Arc<NodeContext>,
}

impl Agent {
    /// Ends whatever app process an earlier run of this agent left, then loads every instance
    /// found in the data directory. Each comes up closed.
    pub async fn load(options: AgentOptions) -> Result<Arc<Agent>, AgentError> {
        lockstep_supervisor::check_installed()?;
        let dir = identity_dir(&options.data_dir);
        let identity = lockstep_transport::RenewableIdentity::load(dir.clone())?
            .filter(|identity| matches!(identity.peer(), Ok(lockstep_transport::Peer::Node(_))))
            .ok_or(AgentError::NotEnrolled(dir))?;
        let identity = Arc::new(identity);
        let instances_dir = options.data_dir.join("instances");
        std::fs::create_dir_all(&instances_dir).map_err(AgentError::io(format!(
            "create {}",
            instances_dir.display()
        )))?;
        let canonical = options
            .data_dir
            .canonicalize()
            .map_err(AgentError::io(format!(
                "find {}",
                options.data_dir.display()
            )))?;
        let sandbox_owner = format!("agent:{}", canonical.display());
        let ended = lockstep_supervisor::end_leftovers(&sandbox_owner);
        if ended > 0 {
            tracing::warn!(
                ended,
                "ended app processes an earlier run of this agent left"
            );
        }
        let agent = Arc::new(Agent {
            data_dir: options.data_dir,
            instances: Mutex::new(BTreeMap::new()),
            identity: identity.clone(),
            context: Arc::new(NodeContext {
                metrics: Arc::new(Metrics::new()),
                router_address: options.router_address,
                router_tls: router::EdgeTls {
                    acceptor: identity.server().acceptor()?,
                    identity: identity.server(),
                },
                images: pull::ImagePuller::new(identity),
                operator: options.operator,
                init: options.init,
                sandbox_owner,
                runtimes: Default::default(),
                services: Default::default(),
                local_router_ports: Default::default(),
            }),
        });
        let entries = std::fs::read_dir(&instances_dir)
            .map_err(AgentError::io(format!("read {}", instances_dir.display())))?;
        let mut instances = agent.instances.lock().await;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // The folder of an environment with several apps holds only its services.
            if !entry.path().join(instance::STATE_FILE).exists() {
                continue;
            }
            let instance = Instance::load(entry.path(), None, agent.context.clone()).await?;
            tracing::info!(instance = %name, "instance loaded, closed");
            instances.insert(name, instance);
        }
        for instance in instances.values() {
            instance.restart_web_after_load().await;
        }
        drop(instances);
        Ok(agent)
    }

    /// Serves the API on `listener` until `shutdown` completes, then stops every instance.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        lockstep_transport::serve(
            listener,
            self.identity.server(),
            api::router(self.clone()),
            shutdown,
        )
        .await?;
        for instance in self.instances.lock().await.values() {
            instance.shutdown().await;
        }
        Ok(())
    }

    async fn instance_names(&self) -> Vec<String> {
        self.instances.lock().await.keys().cloned().collect()
    }

    async fn instance(&self, name: &str) -> Result<Arc<Instance>, AgentError> {
        self.instances
            .lock()
            .await
            .get(name)
            .cloned()
            .ok_or_else(|| AgentError::UnknownInstance(name.to_owned()))
    }

    async fn configure(
        &self,
        name: &str,
        config: InstanceConfig,
    ) -> Result<InstanceStatus, AgentError> {
        check_instance_name(name)?;
        let configured = instance_name(&config.environment, config.app.as_deref());
        if configured != name {
            return Err(AgentError::BadRequest(format!(
                "the configuration is for instance `{configured}`, not `{name}`"
            )));
        }
        let mut instances = self.instances.lock().await;
        if let Some(instance) = instances.get(name) {
            let instance = instance.clone();
            drop(instances);
            return instance.configure(config).await;
        }
        let dir = self.instance_dir(name);
        let instance = Instance::load(dir, Some(config), self.context.clone()).await?;
        instances.insert(name.to_owned(), instance.clone());
        drop(instances);
        Ok(instance.status().await)
    }

    /// Removes every instance of `environment` on this node, and its services with their
    /// data; the instances removed (none is no error: a repeated delete changes nothing).
    async fn delete_environment(&self, environment: &str) -> Result<Vec<String>, AgentError> {
        check_instance_name(environment)?;
        let mut instances = self.instances.lock().await;
        let mut names = Vec::new();
        for (name, instance) in instances.iter() {
            if instance.environment().await == environment {
                names.push(name.clone());
            }
        }
        let removed: Vec<Arc<Instance>> = names
            .iter()
            .filter_map(|name| instances.remove(name))
            .collect();
        drop(instances);
        for instance in removed {
            instance.remove().await?;
        }
        self.context.forget_environment(environment, &names);
        let folder = self.instance_dir(environment);
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(AgentError::io(format!("remove {}", folder.display()))(
                    error,
                ));
            }
        }
        tracing::info!(environment, instances = ?names, "environment removed");
        Ok(names)
    }

    fn instance_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("instances").join(name)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// Instance names become folder names: an environment's name (at most 63 characters), with
/// `--` and its app's name (at most 64) when the project has several apps.
fn check_instance_name(name: &str) -> Result<(), AgentError> {
    let valid = !name.is_empty()
        && name.len() <= 63 + 2 + 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(AgentError::BadRequest(format!(
            "`{name}` is not an environment name"
        )))
    }
}
