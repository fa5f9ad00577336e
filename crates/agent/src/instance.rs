//! One environment's instance on this node: its releases, processes, crons, hooks and gate.
//!
//! Commands are serialised by the state lock; each is idempotent for its deployment and
//! generation. The gate opens only on `open` with the generation of the active release (I1); it
//! is closed whenever the agent starts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lockstep_config::SocketFamily;
use lockstep_image::{ImageId, ImageInfo};
use lockstep_proto::agent::{
    ActiveRelease, Closed, CronRunInfo, DiskUse, ExecOutcome, ExecRequest, Gate, HookKind,
    HookOutcome, HookRequest, HookState, InstanceConfig, InstanceStatus, NodeUser, ProcessInfo,
    ProcessState, RuntimeInputs, ServiceClientRequest, ServiceReplication, ServiceSpec,
    ServiceStatus, StageRequest, Staged, Step, SwapRequest, instance_name,
};
use lockstep_supervisor::{
    Cancel, CronOutcome, CronRunner, CronSpec, HookFailure, HookSpec, LogLimits, ProcessSpec,
    ProcessState as SupervisedState, RunAs, Sandbox, Supervisor, app_path,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

mod rehearsal;

use crate::NodeContext;
use crate::error::AgentError;
use crate::hooks::HookStore;
use crate::locations::Served;
use crate::relationships::AppEndpoint;
use crate::release::{MountRoots, ReadyMount, Releases};
use crate::router::{GateControl, NodeRouter, Upstream};
use crate::runtime_env::{RuntimeContext, config_json, runtime_env, sourcing_environment_file};
use crate::services::{Services, Snapshot, Wait};

/// Releases kept besides the active one, for rollback.
const KEPT_RELEASES: usize = 3;
const WEB: &str = "web";
/// Platform.sh gives workers 15 s between SIGTERM and SIGKILL; the web process gets the same.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Platform.sh sets no limit on deploy hooks; this only guards against one that hangs forever.
const HOOK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const HOOK_OUTPUT_LINES: usize = 40;
/// How long a `lockstep ssh` command may run, and how much of its output comes back.
const EXEC_TIMEOUT: Duration = Duration::from_secs(600);
const EXEC_OUTPUT_BYTES: usize = 1024 * 1024;
/// A web process that exits this many times before it accepts connections fails the swap at
/// once: it will not do better in the rest of the start timeout.
const WEB_START_ATTEMPTS: u32 = 3;
/// Where a web process on a unix socket listens, inside its sandbox (`$SOCKET`).
const SOCKET_INSIDE: &str = "/run/app.sock";
/// PHP-FPM's configuration, written for each start of a PHP app's web process.
const PHP_FPM_CONFIG_INSIDE: &str = "/run/php-fpm.conf";

/// Sees a running hook's outcome once it is stored.
type HookWatch = watch::Receiver<Option<HookOutcome>>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Active {
    release: ActiveRelease,
    runtime: RuntimeInputs,
}

/// What survives a restart of the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    config: InstanceConfig,
    /// Where edges reach the router (mutual TLS, on the node's address).
    router_port: u16,
    /// Where the other apps of this node reach the router (plain HTTP, on loopback); 0 in
    /// states from before it.
    #[serde(default)]
    local_port: u16,
    active: Option<Active>,
    /// Staged images, oldest first.
    releases: Vec<ImageId>,
    background_stopped: bool,
}

pub struct Instance {
    dir: PathBuf,
    state: Mutex<Persisted>,
    gate: Arc<GateControl>,
    releases: Releases,
    hooks: HookStore,
    supervisor: Supervisor,
    crons: CronRunner,
    /// The environment's, shared with the instances of its other apps.
    services: Arc<Services>,
    context: Arc<NodeContext>,
    router_task: tokio::task::JoinHandle<()>,
    /// Hooks running now, by deployment and hook, so a repeated request waits for the outcome.
    running_hooks: std::sync::Mutex<HashMap<(String, HookKind), HookWatch>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.router_task.abort();
    }
}

/// A deploy or post_deploy hook of `deployment`, as it runs in `sandbox` with `env`.
fn hook_spec(
    script: &str,
    sandbox: Sandbox,
    mut env: BTreeMap<String, String>,
    deployment: &str,
) -> HookSpec {
    env.insert("LOCKSTEP_DEPLOYMENT".into(), deployment.to_owned());
    HookSpec {
        script: sourcing_environment_file(script),
        sandbox,
        env,
        timeout: HOOK_TIMEOUT,
        cancel: Cancel::default(),
        stdin: None,
        stdout: None,
    }
}

/// What a release's sandbox and environment are made of.
struct RuntimeParts<'a> {
    id: &'a ImageId,
    info: &'a ImageInfo,
    inputs: &'a RuntimeInputs,
    mounts: MountRoots,
    services: BTreeMap<String, crate::services::Reachable>,
    /// Where the sandbox's own folders (its `/tmp` and `/run`) are.
    home: &'a Path,
    /// Where the web process listens, given to hooks, workers and crons.
    upstream: Option<Upstream>,
}

/// The file in an instance's folder that says it is one.
pub const STATE_FILE: &str = "state.json";

impl Instance {
    /// Creates an instance, or loads the one already on disk.
    pub async fn load(
        dir: PathBuf,
        config: Option<InstanceConfig>,
        context: Arc<NodeContext>,
    ) -> Result<Arc<Instance>, AgentError> {
        let state_path = dir.join(STATE_FILE);
        let existing: Option<Persisted> = lockstep_durable::read_json(&state_path)
            .map_err(AgentError::io(format!("read {}", state_path.display())))?;
        let mut state = match (existing, config) {
            (Some(mut state), Some(config)) => {
                check_router_port(&state, &config)?;
                state.config = config;
                state
            }
            (Some(state), None) => state,
            (None, Some(config)) => Persisted {
                router_port: config.router_port,
                local_port: 0,
                config,
                active: None,
                releases: Vec::new(),
                background_stopped: true,
            },
            (None, None) => return Err(AgentError::UnknownInstance(dir.display().to_string())),
        };
        let releases = Releases::new(&dir);
        let hooks = HookStore::new(&dir);
        releases
            .create_dirs()
            .and_then(|()| hooks.create_dir())
            .and_then(|()| std::fs::create_dir_all(dir.join("logs")))
            .map_err(AgentError::io(format!("create {}", dir.display())))?;
        hooks.mark_interrupted()?;

        if state.router_port == 0 {
            // Kept for the instance's life: the edge routes to it across restarts.
            state.router_port = free_port()?;
        }
        let listener = TcpListener::bind((context.router_address, state.router_port))
            .await
            .map_err(AgentError::io(format!(
                "listen on router port {}",
                state.router_port
            )))?;
        state.router_port = listener
            .local_addr()
            .map_err(AgentError::io("read the router address"))?
            .port();
        if state.local_port == 0 {
            state.local_port = free_port()?;
        }
        let local_listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, state.local_port))
            .await
            .map_err(AgentError::io(format!(
                "listen on local router port {}",
                state.local_port
            )))?;
        // Nothing runs in the background after a restart until the controller says so.
        state.background_stopped = true;
        lockstep_durable::write_json(&state_path, &state)
            .map_err(AgentError::io(format!("write {}", state_path.display())))?;

        let context_tls = context.router_tls.clone();
        let gate = GateControl::new(state.config.gate.clone());
        let router = NodeRouter::new(
            gate.clone(),
            state.config.environment.clone(),
            context.metrics.clone(),
        );
        let router_task = tokio::spawn(async move {
            tokio::join!(
                router.clone().serve(listener, Some(context_tls)),
                router.serve(local_listener, None)
            );
        });
        let log_dir = dir.join("logs");
        let environment_dir = dir.with_file_name(&state.config.environment);
        let services = context.environment_services(&state.config.environment, &environment_dir)?;
        context.set_local_router_port(
            &instance_name(&state.config.environment, state.config.app.as_deref()),
            state.local_port,
        );
        let instance = Arc::new(Instance {
            supervisor: Supervisor::new(LogLimits::default(), context.init.clone()),
            crons: CronRunner::new(
                dir.join("cron-runs.jsonl"),
                log_dir.clone(),
                LogLimits::default(),
                context.init.clone(),
            ),
            services,
            dir,
            state: Mutex::new(state),
            gate,
            releases,
            hooks,
            context,
            router_task,
            running_hooks: Default::default(),
        });
        instance.restart_services_after_load();
        Ok(instance)
    }

    /// Services run whatever the gate: after a restart they start again at once, in the
    /// background, since a clustered member may wait for the others (which start with their
    /// own agents) before it listens.
    fn restart_services_after_load(self: &Arc<Self>) {
        let specs = self.services.declared();
        if specs.is_empty() {
            return;
        }
        let instance = self.clone();
        tokio::spawn(async move {
            if let Err(error) = instance.start_services(specs, Wait::No).await {
                tracing::warn!(%error, "the services did not start again after a restart");
            }
        });
    }

    /// Makes this node run the environment's services as `specs` say (SPEC section 10), and
    /// answers once they accept connections.
    pub async fn ensure_services(
        &self,
        specs: Vec<ServiceSpec>,
    ) -> Result<Vec<ServiceStatus>, AgentError> {
        self.start_services(specs, Wait::UntilReady).await
    }

    /// A snapshot of the environment's service `name`, whose primary is on this node.
    pub async fn snapshot_service(&self, name: &str) -> Result<Snapshot, AgentError> {
        let user = self.current_user().await?;
        self.services.snapshot(name, user).await
    }

    /// Replaces the data of the environment's service `name` with another's snapshot.
    pub async fn restore_service<S, E>(
        &self,
        name: &str,
        snapshot: S,
    ) -> Result<Vec<ServiceStatus>, AgentError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let user = self.current_user().await?;
        self.services.restore(name, user, snapshot).await
    }

    /// Stops this node's replica of service `name` and removes its data, before its
    /// primary's is replaced.
    pub async fn discard_replica(&self, name: &str) -> Result<Vec<ServiceStatus>, AgentError> {
        let user = self.current_user().await?;
        self.services.discard_replica(name, user).await
    }

    /// Starts this node's server of service `name` unless it runs (a discarded replica's
    /// data made again from its primary's).
    pub async fn start_service(&self, name: &str) -> Result<Vec<ServiceStatus>, AgentError> {
        let user = self.current_user().await?;
        self.services.start(name, user).await
    }

    /// How each replica on this node follows its primary.
    pub async fn service_replication(&self) -> Result<Vec<ServiceReplication>, AgentError> {
        let user = self.current_user().await?;
        Ok(self.services.replication(user).await)
    }

    async fn start_services(
        &self,
        specs: Vec<ServiceSpec>,
        wait: Wait,
    ) -> Result<Vec<ServiceStatus>, AgentError> {
        let user = self.current_user().await?;
        self.services.ensure(specs, user, wait).await
    }

    /// After a restart the active release's web process starts again, behind the closed gate,
    /// so that an open at the right generation can follow at once. The agent starts them once
    /// every instance is loaded: a web process learns where the other apps of its project
    /// answer when it starts.
    pub async fn restart_web_after_load(&self) {
        let state = self.state.lock().await;
        let Some(active) = state.active.clone() else {
            return;
        };
        if let Err(error) = self.start_web(&state, &active).await {
            tracing::warn!(%error, "the active release's web process did not start after a restart");
        }
    }

    pub async fn configure(&self, config: InstanceConfig) -> Result<InstanceStatus, AgentError> {
        let mut state = self.state.lock().await;
        check_router_port(&state, &config)?;
        self.gate.set_settings(config.gate.clone());
        state.config = config;
        self.persist(&state)?;
        drop(state);
        Ok(self.status().await)
    }

    pub async fn stage(&self, id: &ImageId, request: &StageRequest) -> Result<Staged, AgentError> {
        let pulled = self
            .releases
            .stage(id, &self.context.images, &request.source)
            .await?;
        let mut state = self.state.lock().await;
        // A release whose runtime this node cannot run is refused now, while the old one still
        // serves, rather than in the closed window.
        let info = self.releases.info(id)?;
        self.context
            .runtime(&info.app().runtime, state.config.strict_runtimes)?;
        self.mount_roots(&state).check_shared(&info.app().mounts)?;
        if !state.releases.contains(id) {
            state.releases.push(id.clone());
            self.prune(&mut state);
            self.persist(&state)?;
        }
        if let Some(pulled) = pulled {
            self.context.metrics.image_pulled(pulled);
        }
        Ok(Staged {
            image: id.clone(),
            already_staged: pulled.is_none(),
            fetched_bytes: pulled.map_or(0, |p| p.fetched),
            reused_bytes: pulled.map_or(0, |p| p.reused),
        })
    }

    /// Stops crons and workers: from here on nothing runs in the background (I3).
    pub async fn quiesce(&self, _step: &Step) -> Result<(), AgentError> {
        let mut state = self.state.lock().await;
        self.stop_background(&state).await;
        state.background_stopped = true;
        self.persist(&state)
    }

    pub async fn close(&self, _step: &Step) -> Result<Closed, AgentError> {
        let _state = self.state.lock().await;
        let abandoned_requests = self.gate.close().await;
        Ok(Closed { abandoned_requests })
    }

    pub async fn swap(&self, request: &SwapRequest) -> Result<InstanceStatus, AgentError> {
        let mut state = self.state.lock().await;
        if let Gate::Open { generation } = self.gate.state() {
            return Err(AgentError::Refused(format!(
                "the instance is open at generation {generation}; close it before a swap"
            )));
        }
        let id = &request.image;
        // A generation names one release, whichever deployment asks for it (a catch-up asks
        // for the one a node runs already when it only came back closed).
        let already = state.active.as_ref().is_some_and(|a| {
            a.release.image == request.image && a.release.generation == request.step.generation
        });
        if already && self.gate.serving() {
            drop(state);
            return Ok(self.status().await);
        }
        if !self.releases.is_staged(id) {
            return Err(AgentError::Refused(format!(
                "image {} is not staged on this node; stage it first",
                id.short()
            )));
        }
        self.gate.set_upstream(None);
        self.gate.set_served(None);
        self.supervisor.stop(WEB).await;
        self.stop_background(&state).await;
        state.background_stopped = true;
        let info = self.releases.info(id)?;
        // Checked before anything changes: a release that cannot run here leaves the old one.
        self.context
            .runtime(&info.app().runtime, state.config.strict_runtimes)?;
        self.ready_mounts(&state, id, &info)?;
        self.releases.switch_current(id)?;
        let active = Active {
            release: ActiveRelease {
                image: request.image.clone(),
                generation: request.step.generation,
                deployment: request.step.deployment.clone(),
                activated_at: Utc::now(),
            },
            runtime: request.runtime.clone(),
        };
        // Recorded before the process starts: after a crash the agent knows what it was running.
        state.active = Some(active.clone());
        self.prune(&mut state);
        self.persist(&state)?;
        // The new release's `access.ssh` decides who may come in.
        self.write_authorized_keys(&state, &self.users())?;
        self.start_web(&state, &active).await?;
        drop(state);
        Ok(self.status().await)
    }

    /// Runs a hook of the active release once per deployment (I2); asked again, returns the
    /// stored outcome without running anything, waiting for it if the hook still runs.
    ///
    /// The hook runs in a task of its own: a caller that goes away (a controller that crashed)
    /// does not cut it short, and its outcome is stored whatever happens to the request.
    pub async fn run_hook(
        self: &Arc<Self>,
        request: &HookRequest,
    ) -> Result<HookOutcome, AgentError> {
        check_plain_name(&request.step.deployment, "deployment id")?;
        let key = (request.step.deployment.clone(), request.hook);
        let mut finished = {
            let state = self.state.lock().await;
            match self.hooks.get(&request.step.deployment, request.hook)? {
                Some(outcome) if outcome.state != HookState::Running => return Ok(outcome),
                Some(outcome) => match self.running_hooks.lock().expect("hooks lock").get(&key) {
                    Some(running) => running.clone(),
                    // Running on disk but not here: only possible before `mark_interrupted`.
                    None => return Ok(outcome),
                },
                None => self.start_hook(&state, request)?,
            }
        };
        let outcome = finished
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AgentError::Refused("the hook's task ended without an outcome".into()))?
            .clone()
            .expect("waited for an outcome");
        Ok(outcome)
    }

    /// Records the hook as running and starts it; the receiver sees its outcome.
    fn start_hook(
        self: &Arc<Self>,
        state: &Persisted,
        request: &HookRequest,
    ) -> Result<HookWatch, AgentError> {
        let Some(active) = state.active.clone() else {
            return Err(AgentError::Refused(
                "no release is active on this node".into(),
            ));
        };
        let info = self.releases.info(&active.release.image)?;
        let script = match request.hook {
            HookKind::Deploy => info.app().hooks.deploy.clone(),
            HookKind::PostDeploy => info.app().hooks.post_deploy.clone(),
        };
        let mut outcome = HookOutcome {
            deployment: request.step.deployment.clone(),
            hook: request.hook,
            image: active.release.image.clone(),
            state: HookState::Running,
            exit_code: None,
            started_at: Utc::now(),
            ended_at: None,
            output: Vec::new(),
        };
        let (sender, receiver) = watch::channel(None);
        let Some(script) = script.filter(|s| !s.trim().is_empty()) else {
            outcome.state = HookState::Succeeded;
            outcome.exit_code = Some(0);
            outcome.ended_at = Some(Utc::now());
            self.hooks.put(&outcome)?;
            sender.send_replace(Some(outcome));
            return Ok(receiver);
        };
        let (sandbox, env) = self.runtime(state, &active, &info)?;
        let spec = hook_spec(&script, sandbox, env, &request.step.deployment);
        // Written before the hook starts: if the agent dies now, the hook counts as run.
        self.hooks.put(&outcome)?;
        let log_path = self
            .dir
            .join("logs")
            .join(format!("hook-{}.log", request.hook.as_str()));
        let key = (request.step.deployment.clone(), request.hook);
        self.running_hooks
            .lock()
            .expect("hooks lock")
            .insert(key.clone(), receiver.clone());
        let instance = self.clone();
        tokio::spawn(async move {
            // On a blocking thread of its own: the thread lives until the hook ends, as the
            // sandbox, which dies with the thread that started it, must.
            let result = tokio::task::spawn_blocking(move || {
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log_path)
                    .ok();
                lockstep_supervisor::run_hook(&spec, &mut |line| {
                    if let Some(log) = log.as_mut() {
                        let _ = std::io::Write::write_all(log, format!("{line}\n").as_bytes());
                    }
                })
            })
            .await
            .expect("hook task does not panic");
            outcome.ended_at = Some(Utc::now());
            match result {
                Ok(_) => {
                    outcome.state = HookState::Succeeded;
                    outcome.exit_code = Some(0);
                }
                Err(failure) => {
                    outcome.state = HookState::Failed;
                    if let HookFailure::Exited { status, .. } = &failure {
                        outcome.exit_code = status.code();
                    }
                    let lines = failure.last_lines();
                    let skip = lines.len().saturating_sub(HOOK_OUTPUT_LINES);
                    outcome.output = lines[skip..].to_vec();
                    outcome.output.push(failure.to_string());
                }
            }
            if let Err(error) = instance.hooks.put(&outcome) {
                tracing::error!(%error, "cannot store a hook outcome");
            }
            instance
                .running_hooks
                .lock()
                .expect("hooks lock")
                .remove(&key);
            sender.send_replace(Some(outcome));
        });
        Ok(receiver)
    }

    pub fn hook_outcome(
        &self,
        deployment: &str,
        hook: HookKind,
    ) -> Result<Option<HookOutcome>, AgentError> {
        check_plain_name(deployment, "deployment id")?;
        self.hooks.get(deployment, hook)
    }

    /// Takes the project's users with their role on this environment's type, and lets in, by
    /// their SSH keys, those whose role the app's `access.ssh` allows (contributor by default).
    pub async fn set_users(&self, users: Vec<NodeUser>) -> Result<(), AgentError> {
        let state = self.state.lock().await;
        let path = self.dir.join("users.json");
        lockstep_durable::write_json(&path, &users)
            .map_err(AgentError::io(format!("write {}", path.display())))?;
        self.write_authorized_keys(&state, &users)
    }

    fn users(&self) -> Vec<NodeUser> {
        lockstep_durable::read_json(&self.dir.join("users.json"))
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn write_authorized_keys(
        &self,
        state: &Persisted,
        users: &[NodeUser],
    ) -> Result<(), AgentError> {
        let least = state
            .active
            .as_ref()
            .and_then(|a| self.releases.info(&a.release.image).ok())
            .map_or(lockstep_config::Role::Contributor, |info| {
                info.app().access.ssh
            });
        let rank = |role: &str| match role {
            "admin" => 2,
            "contributor" => 1,
            _ => 0,
        };
        let needed = match least {
            lockstep_config::Role::Admin => 2,
            lockstep_config::Role::Contributor => 1,
            lockstep_config::Role::Viewer => 0,
        };
        let mut lines = String::from(
            "# Written by Lockstep from the project's users; changes are overwritten.\n",
        );
        for user in users.iter().filter(|u| rank(&u.role) >= needed) {
            for key in &user.ssh_keys {
                lines.push_str(&format!("{} lockstep:{}\n", key.trim(), user.name));
            }
        }
        // The node's, not the app's: outside every sandbox, readable by the agent's user only.
        let keys_path = self.dir.join("ssh/authorized_keys");
        lockstep_durable::replace_private(&keys_path, lines.as_bytes(), None)
            .map_err(AgentError::io(format!("write {}", keys_path.display())))
    }

    /// Runs a command in the active release's runtime environment, as the app's user.
    pub async fn exec(&self, request: &ExecRequest) -> Result<ExecOutcome, AgentError> {
        tracing::info!(user = %request.user, command = %request.command, "running a command for a user");
        let command = sourcing_environment_file(&request.command);
        self.run_in_runtime(|_| Ok((command, Default::default())))
            .await
    }

    /// A service's client through one of the app's relationships (`lockstep sql`, `redis`).
    pub async fn service_client(
        &self,
        request: &ServiceClientRequest,
    ) -> Result<ExecOutcome, AgentError> {
        tracing::info!(user = %request.user, relationship = ?request.relationship, "running a service client for a user");
        let services = self.services.reachable();
        self.run_in_runtime(|info| {
            crate::service_client::command(&info.app().relationships, &services, request)
        })
        .await
    }

    /// Runs the script `make` gives for the active release, with the extra variables it
    /// gives, in the app's runtime environment, to its end.
    async fn run_in_runtime(
        &self,
        make: impl FnOnce(&ImageInfo) -> Result<(String, BTreeMap<String, String>), AgentError>,
    ) -> Result<ExecOutcome, AgentError> {
        let state = self.state.lock().await;
        let Some(active) = state.active.clone() else {
            return Err(AgentError::Refused(
                "no release is active on this node".into(),
            ));
        };
        let info = self.releases.info(&active.release.image)?;
        let (script, extra) = make(&info)?;
        let (sandbox, mut env) = self.runtime(&state, &active, &info)?;
        env.extend(extra);
        let spec = HookSpec {
            script,
            sandbox,
            env,
            timeout: EXEC_TIMEOUT,
            cancel: Cancel::default(),
            stdin: None,
            stdout: None,
        };
        drop(state);
        let result = tokio::task::spawn_blocking(move || {
            let mut output = String::new();
            let result = lockstep_supervisor::run_hook(&spec, &mut |line| {
                if output.len() < EXEC_OUTPUT_BYTES {
                    output.push_str(line);
                    output.push('\n');
                }
            });
            (result, output)
        })
        .await
        .expect("exec task does not panic");
        let (result, output) = result;
        let exit_code = match result {
            Ok(_) => Some(0),
            Err(HookFailure::Exited { status, .. }) => status.code(),
            Err(_) => None,
        };
        Ok(ExecOutcome { exit_code, output })
    }

    /// Opens the gate at `generation`, which must be the active release's.
    pub async fn open(&self, step: &Step) -> Result<(), AgentError> {
        let state = self.state.lock().await;
        let Some(active) = &state.active else {
            return Err(AgentError::Refused(
                "no release is active on this node; swap first".into(),
            ));
        };
        if active.release.generation != step.generation {
            return Err(AgentError::Refused(format!(
                "the active release is at generation {}, not {}; it cannot open at {}",
                active.release.generation, step.generation, step.generation
            )));
        }
        if !self.gate.serving() {
            return Err(AgentError::Refused(
                "the web process of the active release is not running".into(),
            ));
        }
        // The web process listened at swap, but may have exited since: one that reads what its
        // deploy hook puts in a mount (Next.js's build, moved there by the hook) fails until
        // the hook ran. It opens only once it listens again, without waiting out its backoff.
        if let Some(upstream) = self.gate.upstream() {
            self.supervisor.restart_now(WEB);
            let timeout = Duration::from_millis(state.config.gate.start_timeout_ms);
            if let Some(reason) = self.wait_for_web(&upstream, timeout).await {
                return Err(self.web_did_not_start(reason));
            }
        }
        self.gate.open(step.generation);
        Ok(())
    }

    /// Starts workers, and crons on the cron node, once the instance is open at `generation`.
    pub async fn start_background(&self, step: &Step) -> Result<(), AgentError> {
        let mut state = self.state.lock().await;
        if self.gate.state()
            != (Gate::Open {
                generation: step.generation,
            })
        {
            return Err(AgentError::Refused(format!(
                "background work starts only while open at generation {}",
                step.generation
            )));
        }
        let Some(active) = state.active.clone() else {
            return Err(AgentError::Refused(
                "no release is active on this node".into(),
            ));
        };
        if !state.background_stopped {
            return Ok(());
        }
        let info = self.releases.info(&active.release.image)?;
        let (sandbox, env) = self.runtime(&state, &active, &info)?;
        for (name, worker) in &info.app().workers {
            self.supervisor
                .start(self.process_spec(
                    &format!("worker-{name}"),
                    &worker.start,
                    sandbox.clone(),
                    env.clone(),
                ))
                .await?;
        }
        if state.config.cron_node {
            let crons = info
                .app()
                .crons
                .iter()
                .map(|(name, cron)| CronSpec {
                    name: name.clone(),
                    schedule: cron.spec.clone(),
                    start: sourcing_environment_file(&cron.start),
                    stop: cron.stop.as_deref().map(sourcing_environment_file),
                    timeout: Duration::from_secs(cron.timeout_secs),
                    shutdown_timeout: Duration::from_secs(cron.shutdown_timeout_secs),
                })
                .collect();
            self.crons.start(crons, sandbox, env);
        }
        state.background_stopped = false;
        self.persist(&state)
    }

    /// Runs a cron now, on the cron node, while background work runs.
    pub async fn run_cron(&self, name: &str) -> Result<(), AgentError> {
        let state = self.state.lock().await;
        if state.background_stopped || !state.config.cron_node {
            return Err(AgentError::Refused(
                "crons run only on the cron node while the instance is open".into(),
            ));
        }
        Ok(self.crons.run_now(name).await?)
    }

    pub fn log(&self, process: &str, max_bytes: u64) -> Result<String, AgentError> {
        check_plain_name(process, "process name")?;
        lockstep_supervisor::read_log(&self.dir.join("logs"), process, max_bytes)
            .map_err(AgentError::io(format!("read the log of {process}")))
    }

    pub async fn status(&self) -> InstanceStatus {
        let state = self.state.lock().await;
        let processes = self
            .supervisor
            .status()
            .into_iter()
            .map(|p| ProcessInfo {
                name: p.name,
                state: match p.state {
                    lockstep_supervisor::ProcessState::Running => ProcessState::Running,
                    lockstep_supervisor::ProcessState::BackingOff => ProcessState::BackingOff,
                    lockstep_supervisor::ProcessState::Stopped => ProcessState::Stopped,
                },
                pid: p.pid,
                restarts: p.restarts,
                last_exit: p.last_exit,
                since: p.since,
            })
            .collect();
        let cron_runs = self
            .crons
            .recent_runs(20)
            .into_iter()
            .map(|run| {
                let (outcome, exit_code) = match &run.outcome {
                    None => (None, None),
                    Some(CronOutcome::Succeeded) => (Some("succeeded"), Some(0)),
                    Some(CronOutcome::Failed { code, .. }) => (Some("failed"), *code),
                    Some(CronOutcome::TimedOut) => (Some("timed_out"), None),
                    Some(CronOutcome::Stopped) => (Some("stopped"), None),
                };
                CronRunInfo {
                    name: run.name,
                    started_at: run.started_at,
                    ended_at: run.ended_at,
                    outcome: outcome.map(str::to_owned),
                    exit_code,
                }
            })
            .collect();
        InstanceStatus {
            environment: state.config.environment.clone(),
            node: state.config.node.clone(),
            router_port: state.router_port,
            gate: self.gate.state(),
            active: state.active.as_ref().map(|a| a.release.clone()),
            releases: state.releases.clone(),
            background_stopped: state.background_stopped,
            processes,
            cron_runs,
            hooks: self.hooks.all(),
            disk: DiskUse {
                releases_bytes: lockstep_supervisor::tree_bytes(&self.dir.join("releases")),
                mounts_bytes: lockstep_supervisor::tree_bytes(&self.dir.join("mounts")),
            },
            services: self.services.status(),
        }
    }

    async fn stop_background(&self, state: &Persisted) {
        self.crons.stop().await;
        let workers: Vec<String> = self
            .supervisor
            .status()
            .into_iter()
            .map(|p| p.name)
            .filter(|name| name.starts_with("worker-"))
            .collect();
        for worker in workers {
            self.supervisor.stop(&worker).await;
        }
        tracing::info!(environment = %state.config.environment, "background work stopped");
    }

    async fn start_web(&self, state: &Persisted, active: &Active) -> Result<(), AgentError> {
        let id = &active.release.image;
        let info = self.releases.info(id)?;
        let app_dir = self.releases.app_dir(id);
        let mounts = self.ready_mounts(state, id, &info)?;
        let served = Served::new(app_dir, mounts, &info.app().web);
        // A PHP app without a start command is served by PHP-FPM, as on Platform.sh.
        let php_fpm = info.app().web.start.is_none() && info.app().language() == "php";
        let served = if php_fpm {
            served.running_php()
        } else {
            served
        };
        let Some(start) = info.app().web.start.clone().or_else(|| {
            php_fpm.then(|| {
                format!(
                    "exec php-fpm --nodaemonize --force-stderr --fpm-config {PHP_FPM_CONFIG_INSIDE}"
                )
            })
        }) else {
            // A static site: its locations only serve files (the config check makes sure), so
            // the router answers every request itself and no web process runs.
            if served.passes_to_app() {
                return Err(AgentError::Refused(
                    "this app passes requests to the app but has no `web.commands.start`".into(),
                ));
            }
            self.gate.set_upstream(None);
            self.gate.set_served(Some(served));
            return Ok(());
        };
        let (sandbox, mut env) = self.runtime(state, active, &info)?;
        let upstream = match info.app().web.socket_family {
            _ if php_fpm => {
                let socket = sandbox.run.join("app.sock");
                remove_stale_socket(&socket)?;
                let config = crate::php::fpm_config(SOCKET_INSIDE, &info.app().variables);
                lockstep_durable::replace_private(
                    &sandbox.run.join("php-fpm.conf"),
                    config.as_bytes(),
                    Some((sandbox.user.uid, sandbox.user.gid)),
                )
                .map_err(AgentError::io("write PHP-FPM's configuration"))?;
                Upstream::FastCgi(socket)
            }
            SocketFamily::Tcp => {
                let port = free_port()?;
                env.insert("PORT".into(), port.to_string());
                Upstream::Port(port)
            }
            SocketFamily::Unix => {
                let socket = sandbox.run.join("app.sock");
                remove_stale_socket(&socket)?;
                env.insert("SOCKET".into(), SOCKET_INSIDE.into());
                Upstream::Socket(socket)
            }
        };
        self.supervisor
            .start(self.process_spec(WEB, &start, sandbox, env))
            .await?;
        let timeout = Duration::from_millis(state.config.gate.start_timeout_ms);
        let failure = match self.wait_for_web(&upstream, timeout).await {
            None => {
                self.gate.set_upstream(Some(upstream));
                self.gate.set_served(Some(served));
                return Ok(());
            }
            Some(failure) => failure,
        };
        self.supervisor.stop(WEB).await;
        Err(self.web_did_not_start(failure))
    }

    /// Why the web process is not serving, with the end of its log.
    fn web_did_not_start(&self, reason: String) -> AgentError {
        let output =
            lockstep_supervisor::read_log(&self.dir.join("logs"), WEB, 4096).unwrap_or_default();
        AgentError::WebDidNotStart { reason, output }
    }

    /// Waits until the web process accepts connections; says why it did not otherwise: it
    /// exited again and again, or the start timeout passed.
    async fn wait_for_web(&self, upstream: &Upstream, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let web_status = || self.supervisor.status().into_iter().find(|p| p.name == WEB);
        // Exits before this wait do not count against it.
        let restarts_before = web_status().map_or(0, |web| web.restarts);
        loop {
            let listening = match upstream {
                Upstream::Port(port) => tokio::net::TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .is_ok(),
                Upstream::Socket(path) | Upstream::FastCgi(path) => {
                    tokio::net::UnixStream::connect(path).await.is_ok()
                }
            };
            if listening {
                return None;
            }
            let exits = |web: &lockstep_supervisor::ProcessStatus| {
                web.restarts.saturating_sub(restarts_before) + 1
            };
            if let Some(web) = web_status().filter(|web| exits(web) >= WEB_START_ATTEMPTS)
                && web.state == SupervisedState::BackingOff
            {
                return Some(format!(
                    "exited {} times before it accepted connections (last: {})",
                    exits(&web),
                    web.last_exit.as_deref().unwrap_or("unknown")
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                let what = match upstream {
                    Upstream::Port(port) => format!("on port {port}"),
                    Upstream::Socket(_) | Upstream::FastCgi(_) => format!("on {SOCKET_INSIDE}"),
                };
                return Some(format!(
                    "did not accept connections {what} within {} s (web_start_timeout)",
                    timeout.as_secs()
                ));
            }
            // Short: every step of this wait is part of the closed window of a deploy.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`Instance::user`], as the instance's state says now.
    async fn current_user(&self) -> Result<RunAs, AgentError> {
        let state = self.state.lock().await;
        self.user(&state)
    }

    /// The user the environment's code runs as on this node: its own when the agent is root,
    /// the agent's own user otherwise.
    fn user(&self, state: &Persisted) -> Result<RunAs, AgentError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(RunAs::current());
        }
        match state.config.user {
            Some(user) if user.uid != 0 => Ok(RunAs {
                uid: user.uid,
                gid: user.gid,
            }),
            _ => Err(AgentError::Refused(format!(
                "environment {} has no user of its own, and this agent runs as root: configure the instance with one",
                state.config.environment
            ))),
        }
    }

    /// The mounts of release `id`, ready on this node.
    fn ready_mounts(
        &self,
        state: &Persisted,
        id: &ImageId,
        info: &ImageInfo,
    ) -> Result<Vec<ReadyMount>, AgentError> {
        self.mount_roots(state).prepare(
            &self.releases.app_dir(id),
            &info.app().mounts,
            self.user(state)?,
        )
    }

    /// What the active release's processes run in, and with: their sandbox and environment.
    /// Writes `/run/config.json` on the way.
    fn runtime(
        &self,
        state: &Persisted,
        active: &Active,
        info: &ImageInfo,
    ) -> Result<(Sandbox, std::collections::BTreeMap<String, String>), AgentError> {
        self.runtime_of(
            state,
            &RuntimeParts {
                id: &active.release.image,
                info,
                inputs: &active.runtime,
                mounts: self.mount_roots(state),
                services: self.services.reachable(),
                home: &self.dir,
                upstream: self.gate.upstream(),
            },
        )
    }

    /// The sandbox and environment of release `parts.id` made of `parts`.
    fn runtime_of(
        &self,
        state: &Persisted,
        parts: &RuntimeParts<'_>,
    ) -> Result<(Sandbox, std::collections::BTreeMap<String, String>), AgentError> {
        let (id, info) = (parts.id, parts.info);
        let user = self.user(state)?;
        let runtime = self
            .context
            .runtime(&info.app().runtime, state.config.strict_runtimes)?;
        let mut sandbox = Sandbox::prepare(
            self.releases.app_dir(id),
            parts.home,
            user,
            self.context.sandbox_owner.clone(),
        )
        .map_err(AgentError::io("prepare the sandbox's folders"))?;
        let mounts = parts
            .mounts
            .prepare(&self.releases.app_dir(id), &info.app().mounts, user)?;
        for mount in mounts {
            let inside = app_path(&mount.path.to_string_lossy())?;
            sandbox.mounts.push((inside, mount.host));
        }
        sandbox.runtime = runtime.commands;
        sandbox.host_files = self.context.operator.files.clone();
        let relationships = crate::relationships::platform_relationships(
            &info.app().relationships,
            &parts.services,
            &self.other_apps(state, info),
            &crate::runtime_env::cluster(&state.config),
        );
        let context = RuntimeContext {
            config: &state.config,
            image: info,
            inputs: parts.inputs,
            relationships: &relationships,
            operator: &self.context.operator,
        };
        let mut env = runtime_env(&context);
        // Hooks, workers, crons and `lockstep ssh` reach the web process where it listens;
        // the web process gets its own before it starts.
        match &parts.upstream {
            Some(Upstream::Port(port)) => {
                env.insert("PORT".into(), port.to_string());
            }
            Some(Upstream::Socket(_) | Upstream::FastCgi(_)) => {
                env.insert("SOCKET".into(), SOCKET_INSIDE.into());
            }
            None => {}
        }
        let config = config_json(&context, &env, user);
        // The app may write its /run; the file is replaced, never written through a link.
        lockstep_durable::replace_private(
            &sandbox.run.join("config.json"),
            config.to_string().as_bytes(),
            Some((user.uid, user.gid)),
        )
        .map_err(AgentError::io("write /run/config.json"))?;
        Ok((sandbox, env))
    }

    /// Where the project's other apps answer on this node: their instances' routers, on
    /// loopback.
    fn other_apps(
        &self,
        state: &Persisted,
        info: &ImageInfo,
    ) -> std::collections::BTreeMap<String, AppEndpoint> {
        info.config
            .apps
            .iter()
            .filter(|app| app.name != info.app().name)
            .filter_map(|app| {
                let instance = instance_name(&state.config.environment, Some(&app.name));
                let port = self.context.local_router_port(&instance)?;
                let endpoint = AppEndpoint {
                    address: std::net::Ipv4Addr::LOCALHOST.into(),
                    port,
                    runtime: app.runtime.clone(),
                };
                Some((app.name.clone(), endpoint))
            })
            .collect()
    }

    fn process_spec(
        &self,
        name: &str,
        command: &str,
        sandbox: Sandbox,
        env: std::collections::BTreeMap<String, String>,
    ) -> ProcessSpec {
        ProcessSpec {
            name: name.to_owned(),
            command: sourcing_environment_file(command),
            sandbox,
            env,
            log_dir: self.dir.join("logs"),
            stop_grace: STOP_GRACE,
        }
    }

    fn mount_roots(&self, state: &Persisted) -> MountRoots {
        MountRoots {
            local: self.dir.join("mounts/local"),
            tmp: self.dir.join("mounts/tmp"),
            storage: state.config.storage_dir.clone(),
            shared_storage: state.config.shared_storage.clone(),
        }
    }

    /// Keeps the active release and the newest others, up to `KEPT_RELEASES`.
    fn prune(&self, state: &mut Persisted) {
        let active = state.active.as_ref().map(|a| a.release.image.clone());
        let mut others: Vec<ImageId> = state
            .releases
            .iter()
            .filter(|r| Some(*r) != active.as_ref())
            .cloned()
            .collect();
        let excess = others.len().saturating_sub(KEPT_RELEASES);
        others.drain(..excess);
        let mut keep = others;
        if let Some(active) = active {
            keep.push(active);
        }
        state.releases.retain(|r| keep.contains(r));
        self.releases.prune(&keep);
    }

    fn persist(&self, state: &Persisted) -> Result<(), AgentError> {
        let path = self.dir.join("state.json");
        lockstep_durable::write_json(&path, state)
            .map_err(AgentError::io(format!("write {}", path.display())))
    }

    pub async fn shutdown(&self) {
        self.gate.close().await;
        self.crons.stop().await;
        self.supervisor.stop_all().await;
        self.services.stop_all().await;
    }

    /// The environment this instance runs an app of.
    pub async fn environment(&self) -> String {
        self.state.lock().await.config.environment.clone()
    }

    /// Stops everything of the instance, its router too, and removes its folder: releases,
    /// mounts, logs, and (with the environment's last instance) the services' data.
    pub async fn remove(&self) -> Result<(), AgentError> {
        self.shutdown().await;
        self.router_task.abort();
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(AgentError::io(format!("remove {}", self.dir.display()))(
                error,
            )),
        }
    }
}

fn check_router_port(state: &Persisted, config: &InstanceConfig) -> Result<(), AgentError> {
    if config.router_port != 0 && config.router_port != state.router_port {
        return Err(AgentError::Refused(format!(
            "the router of this instance listens on port {}; it cannot move to {}",
            state.router_port, config.router_port
        )));
    }
    Ok(())
}

/// Deployment ids, process and service names become file names: letters, digits, `-` and `_`
/// only. `what` names the kind of name in the message.
pub fn check_plain_name(name: &str, what: &str) -> Result<(), AgentError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(AgentError::BadRequest(format!("`{name}` is not a {what}")))
    }
}

/// A socket left by the previous release would look like a listener.
fn remove_stale_socket(socket: &Path) -> Result<(), AgentError> {
    match std::fs::remove_file(socket) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(AgentError::io(format!("remove {}", socket.display()))(
            error,
        )),
    }
}

fn free_port() -> Result<u16, AgentError> {
    lockstep_supervisor::free_listen_port().map_err(AgentError::io("find a free port"))
}
