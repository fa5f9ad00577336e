//! One environment's instance on this node: its releases, processes, crons, hooks and gate.
//!
//! Commands are serialised by the state lock; each is idempotent for its deployment and
//! generation. The gate opens only on `open` with the generation of the active release (I1); it
//! is closed whenever the agent starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lockstep_image::{HookSpec, ImageId, ImageInfo};
use lockstep_proto::agent::{
    ActiveRelease, Closed, CronRunInfo, DiskUse, ExecOutcome, ExecRequest, Gate, HookKind,
    HookOutcome, HookRequest, HookState, InstanceConfig, InstanceStatus, NodeUser, ProcessInfo,
    ProcessState, RuntimeInputs, Staged, Step, SwapRequest,
};
use lockstep_supervisor::{
    CronOutcome, CronRunner, CronSpec, LogLimits, ProcessSpec, RunAs, Supervisor,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

use crate::durable;
use crate::error::AgentError;
use crate::hooks::HookStore;
use crate::locations::Served;
use crate::metrics::Metrics;
use crate::release::{MountRoots, Releases, disk_use, link_mounts};
use crate::router::{GateControl, NodeRouter};
use crate::runtime_env::{RuntimeContext, runtime_env};

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
    router_port: u16,
    active: Option<Active>,
    /// Staged images, oldest first.
    releases: Vec<String>,
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
    run_as: Option<RunAs>,
    router_task: tokio::task::JoinHandle<()>,
    /// Hooks running now, by deployment and hook, so a repeated request waits for the outcome.
    running_hooks: std::sync::Mutex<HashMap<(String, HookKind), HookWatch>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.router_task.abort();
    }
}

impl Instance {
    /// Creates an instance, or loads the one already on disk.
    pub async fn load(
        dir: PathBuf,
        config: Option<InstanceConfig>,
        run_as: Option<RunAs>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Instance>, AgentError> {
        let state_path = dir.join("state.json");
        let existing: Option<Persisted> = durable::read_json(&state_path)
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

        let listener = TcpListener::bind(("127.0.0.1", state.router_port))
            .await
            .map_err(AgentError::io(format!(
                "listen on router port {}",
                state.router_port
            )))?;
        state.router_port = listener
            .local_addr()
            .map_err(AgentError::io("read the router address"))?
            .port();
        // Nothing runs in the background after a restart until the controller says so.
        state.background_stopped = true;
        durable::write_json(&state_path, &state)
            .map_err(AgentError::io(format!("write {}", state_path.display())))?;

        let gate = GateControl::new(state.config.gate.clone());
        let router = NodeRouter::new(gate.clone(), state.config.environment.clone(), metrics);
        let router_task = tokio::spawn(router.serve(listener));
        let log_dir = dir.join("logs");
        let instance = Arc::new(Instance {
            supervisor: Supervisor::new(LogLimits::default()),
            crons: CronRunner::new(
                dir.join("cron-runs.jsonl"),
                log_dir,
                run_as,
                LogLimits::default(),
            ),
            dir,
            state: Mutex::new(state),
            gate,
            releases,
            hooks,
            run_as,
            router_task,
            running_hooks: Default::default(),
        });
        instance.restart_web_after_load().await;
        Ok(instance)
    }

    /// After a restart the active release's web process starts again, behind the closed gate,
    /// so that an open at the right generation can follow at once.
    async fn restart_web_after_load(&self) {
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

    pub async fn stage<S, E>(&self, image: &str, body: S) -> Result<Staged, AgentError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let id: ImageId = image.parse()?;
        let unpacked = self.releases.stage(&id, body).await?;
        let mut state = self.state.lock().await;
        if !state.releases.contains(&id.to_string()) {
            state.releases.push(id.to_string());
            self.prune(&mut state);
            self.persist(&state)?;
        }
        Ok(Staged {
            image: id.to_string(),
            already_staged: !unpacked,
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
        let id: ImageId = request.image.parse()?;
        let already = state.active.as_ref().is_some_and(|a| {
            a.release.image == request.image
                && a.release.generation == request.step.generation
                && a.release.deployment == request.step.deployment
        });
        if already && self.gate.serving() {
            drop(state);
            return Ok(self.status().await);
        }
        if !self.releases.is_staged(&id) {
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
        let info = self.releases.info(&id)?;
        link_mounts(
            &self.releases.app_dir(&id),
            &info.config.app.mounts,
            &self.mount_roots(&state),
        )?;
        self.releases.switch_current(&id)?;
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
        check_deployment_id(&request.step.deployment)?;
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
        let id: ImageId = active.release.image.parse()?;
        let info = self.releases.info(&id)?;
        let script = match request.hook {
            HookKind::Deploy => info.config.app.hooks.deploy.clone(),
            HookKind::PostDeploy => info.config.app.hooks.post_deploy.clone(),
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
        // Written before the hook starts: if the agent dies now, the hook counts as run.
        self.hooks.put(&outcome)?;
        let mut env = self.env_for(state, &active, &info);
        env.insert(
            "LOCKSTEP_DEPLOYMENT".into(),
            request.step.deployment.clone(),
        );
        let spec = HookSpec {
            script,
            dir: self.releases.app_dir(&id),
            env,
            timeout: HOOK_TIMEOUT,
            run_as: self.run_as.as_ref().map(|r| (r.uid, r.gid)),
        };
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
            let result = tokio::task::spawn_blocking(move || {
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log_path)
                    .ok();
                lockstep_image::run_hook(&spec, &mut |line| {
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
                    if let lockstep_image::HookFailure::Exited { status, .. } = &failure {
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
        check_deployment_id(deployment)?;
        self.hooks.get(deployment, hook)
    }

    /// Takes the project's users with their role on this environment's type, and lets in, by
    /// their SSH keys, those whose role the app's `access.ssh` allows (contributor by default).
    pub async fn set_users(&self, users: Vec<NodeUser>) -> Result<(), AgentError> {
        let state = self.state.lock().await;
        let path = self.dir.join("users.json");
        durable::write_json(&path, &users)
            .map_err(AgentError::io(format!("write {}", path.display())))?;
        self.write_authorized_keys(&state, &users)
    }

    fn users(&self) -> Vec<NodeUser> {
        durable::read_json(&self.dir.join("users.json"))
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
            .and_then(|a| a.release.image.parse::<ImageId>().ok())
            .and_then(|id| self.releases.info(&id).ok())
            .map_or(lockstep_config::Role::Contributor, |info| {
                info.config.app.access.ssh
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
        let ssh_dir = self.dir.join("home/.ssh");
        std::fs::create_dir_all(&ssh_dir)
            .map_err(AgentError::io(format!("create {}", ssh_dir.display())))?;
        let keys_path = ssh_dir.join("authorized_keys");
        std::fs::write(&keys_path, lines)
            .map_err(AgentError::io(format!("write {}", keys_path.display())))?;
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [
            (&self.dir.join("home"), 0o755),
            (&ssh_dir, 0o700),
            (&keys_path, 0o600),
        ] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
                AgentError::io(format!("set permissions on {}", path.display())),
            )?;
            if let Some(run_as) = &self.run_as {
                nix::unistd::chown(
                    path.as_path(),
                    Some(run_as.uid.into()),
                    Some(run_as.gid.into()),
                )
                .map_err(|e| AgentError::Io {
                    action: format!("give {} to the app user", path.display()),
                    source: e.into(),
                })?;
            }
        }
        Ok(())
    }

    /// Runs a command in the active release's runtime environment, as the app's user.
    pub async fn exec(&self, request: &ExecRequest) -> Result<ExecOutcome, AgentError> {
        let state = self.state.lock().await;
        let Some(active) = state.active.clone() else {
            return Err(AgentError::Refused(
                "no release is active on this node".into(),
            ));
        };
        let id: ImageId = active.release.image.parse()?;
        let info = self.releases.info(&id)?;
        let spec = HookSpec {
            script: request.command.clone(),
            dir: self.releases.app_dir(&id),
            env: self.env_for(&state, &active, &info),
            timeout: EXEC_TIMEOUT,
            run_as: self.run_as.as_ref().map(|r| (r.uid, r.gid)),
        };
        drop(state);
        tracing::info!(user = %request.user, command = %request.command, "running a command for a user");
        let result = tokio::task::spawn_blocking(move || {
            let mut output = String::new();
            let result = lockstep_image::run_hook(&spec, &mut |line| {
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
            Err(lockstep_image::HookFailure::Exited { status, .. }) => status.code(),
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
        let id: ImageId = active.release.image.parse()?;
        let info = self.releases.info(&id)?;
        let env = self.env_for(&state, &active, &info);
        let app_dir = self.releases.app_dir(&id);
        for (name, worker) in &info.config.app.workers {
            self.supervisor
                .start(self.process_spec(
                    &format!("worker-{name}"),
                    &worker.start,
                    &app_dir,
                    env.clone(),
                ))
                .await?;
        }
        if state.config.cron_node {
            let crons = info
                .config
                .app
                .crons
                .iter()
                .map(|(name, cron)| CronSpec {
                    name: name.clone(),
                    schedule: cron.spec.clone(),
                    start: cron.start.clone(),
                    stop: cron.stop.clone(),
                    timeout: Duration::from_secs(cron.timeout_secs),
                    shutdown_timeout: Duration::from_secs(cron.shutdown_timeout_secs),
                })
                .collect();
            self.crons.start(crons, app_dir, env);
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
        let valid = !process.is_empty()
            && process
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(AgentError::BadRequest(format!(
                "`{process}` is not a process name"
            )));
        }
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
                releases_bytes: disk_use(&self.dir.join("releases")),
                mounts_bytes: disk_use(&self.dir.join("mounts")),
            },
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
        let id: ImageId = active.release.image.parse()?;
        let info = self.releases.info(&id)?;
        let app_dir = self.releases.app_dir(&id);
        let served = Served::new(app_dir.clone(), &info.config.app.web);
        let Some(start) = info.config.app.web.start.clone() else {
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
        let port = free_port()?;
        let mut env = self.env_for(state, active, &info);
        env.insert("PORT".into(), port.to_string());
        self.supervisor
            .start(self.process_spec(WEB, &start, &app_dir, env))
            .await?;
        let timeout = Duration::from_millis(state.config.gate.start_timeout_ms);
        if wait_for_listener(port, timeout).await {
            self.gate.set_upstream(Some(port));
            self.gate.set_served(Some(served));
            return Ok(());
        }
        self.supervisor.stop(WEB).await;
        let output =
            lockstep_supervisor::read_log(&self.dir.join("logs"), WEB, 4096).unwrap_or_default();
        Err(AgentError::WebDidNotStart {
            port,
            seconds: timeout.as_secs(),
            output,
        })
    }

    fn env_for(
        &self,
        state: &Persisted,
        active: &Active,
        info: &ImageInfo,
    ) -> std::collections::BTreeMap<String, String> {
        let id = active
            .release
            .image
            .parse::<ImageId>()
            .expect("active image ids are valid");
        let app_dir = self.releases.app_dir(&id);
        let home = self.dir.join("home");
        let _ = std::fs::create_dir_all(&home);
        if let Some(run_as) = &self.run_as {
            let _ = nix::unistd::chown(&home, Some(run_as.uid.into()), Some(run_as.gid.into()));
        }
        runtime_env(&RuntimeContext {
            config: &state.config,
            image: info,
            app_dir: &app_dir,
            home: &home,
            inputs: &active.runtime,
        })
    }

    fn process_spec(
        &self,
        name: &str,
        command: &str,
        app_dir: &Path,
        env: std::collections::BTreeMap<String, String>,
    ) -> ProcessSpec {
        ProcessSpec {
            name: name.to_owned(),
            command: command.to_owned(),
            dir: app_dir.to_owned(),
            env,
            log_dir: self.dir.join("logs"),
            run_as: self.run_as,
            stop_grace: STOP_GRACE,
        }
    }

    fn mount_roots(&self, state: &Persisted) -> MountRoots {
        MountRoots {
            local: self.dir.join("mounts/local"),
            tmp: self.dir.join("mounts/tmp"),
            storage: state.config.storage_dir.clone(),
            owner: self.run_as.as_ref().map(|r| (r.uid, r.gid)),
        }
    }

    /// Keeps the active release and the newest others, up to `KEPT_RELEASES`.
    fn prune(&self, state: &mut Persisted) {
        let active = state.active.as_ref().map(|a| a.release.image.clone());
        let mut others: Vec<String> = state
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
        durable::write_json(&path, state)
            .map_err(AgentError::io(format!("write {}", path.display())))
    }

    pub async fn shutdown(&self) {
        self.gate.close().await;
        self.crons.stop().await;
        self.supervisor.stop_all().await;
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

/// Deployment ids become file names: letters, digits, `-` and `_` only.
pub fn check_deployment_id(id: &str) -> Result<(), AgentError> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(AgentError::BadRequest(format!(
            "`{id}` is not a deployment id"
        )))
    }
}

fn free_port() -> Result<u16, AgentError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(AgentError::io("find a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(AgentError::io("find a free port"))?
        .port())
}

/// Whether something accepts connections on the port before the timeout.
async fn wait_for_listener(port: u16, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        // Short: every step of this wait is part of the closed window of a deploy.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
