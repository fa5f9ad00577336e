//! Long-running processes (web, workers): started, restarted whenever they exit, stopped.
//!
//! Each process is driven by one task that owns its process group; `stop` asks that task to
//! end and waits for it to say it is done. The task does not hold the `Supervisor`, so when
//! the last `Supervisor` handle is dropped the stop channels close and every task ends its
//! process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::backoff::Backoff;
use crate::error::{SupervisorError, check_name};
use crate::group::describe_exit;
use crate::logs::{LogLimits, LogWriter, SharedLog, log_path};
use crate::sandbox::{Sandbox, SandboxInit};
use crate::spawn::{CommandSpec, Spawned, finish_output, spawn};

/// A long-running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Unique among the supervisor's processes ("web", "worker-queue"); also the log's name.
    pub name: String,
    /// Run with `/bin/sh -c`, in `/app` of its sandbox.
    pub command: String,
    pub sandbox: Sandbox,
    /// The whole environment: nothing of the agent's own environment is passed on.
    pub env: BTreeMap<String, String>,
    /// stdout and stderr go to `log_dir/<name>.log`, rotated.
    pub log_dir: PathBuf,
    /// How long after SIGTERM the group gets SIGKILL.
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    /// It exited (or could not be started) and waits to be started again.
    BackingOff,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessStatus {
    pub name: String,
    pub state: ProcessState,
    /// The pid of the shell running the command, while running; also its process group id.
    pub pid: Option<u32>,
    /// How many times it was started again after exiting.
    pub restarts: u32,
    /// How the last run ended ("exited with code 1", "killed by signal 9 (SIGKILL)",
    /// "failed to start: …").
    pub last_exit: Option<String>,
    /// When it entered its current state.
    pub since: DateTime<Utc>,
}

/// Runs, restarts and stops long-running processes. Cheap to clone; clones share the
/// processes.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    log_limits: LogLimits,
    init: SandboxInit,
    /// Shared with the process tasks, which keep the statuses up to date.
    table: Arc<Mutex<BTreeMap<String, Slot>>>,
    /// Not shared with the tasks: dropping it is what tells them to stop.
    controls: Mutex<BTreeMap<String, Control>>,
    /// Serialises start and stop of one name, so that two calls cannot both start it.
    name_locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_id: AtomicU64,
}

/// A status and the incarnation (`id`) it belongs to.
struct Slot {
    id: u64,
    status: ProcessStatus,
}

struct Control {
    id: u64,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    /// Shared with the task: wakes it from a backoff.
    hurry: Arc<Notify>,
}

impl Supervisor {
    /// A supervisor whose processes' sandboxes start with `init`.
    pub fn new(log_limits: LogLimits, init: SandboxInit) -> Supervisor {
        Supervisor {
            inner: Arc::new(Inner {
                log_limits,
                init,
                table: Arc::default(),
                controls: Mutex::default(),
                name_locks: Mutex::default(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Starts a long-running process, restarted with exponential backoff (100 ms doubling up
    /// to 30 s, back to 100 ms once a run lasted 30 s) whenever it exits. A process of the same
    /// name that is already running is stopped first.
    ///
    /// Errors when the name is unusable, the log cannot be opened, or the first start fails
    /// (a missing `dir`, for example); later start failures are retried with backoff and shown
    /// in [`ProcessStatus::last_exit`].
    pub async fn start(&self, spec: ProcessSpec) -> Result<(), SupervisorError> {
        check_name(&spec.name)?;
        let name_lock = self.name_lock(&spec.name);
        let _serial = name_lock.lock().await;
        self.stop_locked(&spec.name).await;

        let log = LogWriter::open(&spec.log_dir, &spec.name, self.inner.log_limits)
            .await
            .map_err(|source| SupervisorError::Log {
                path: log_path(&spec.log_dir, &spec.name),
                source,
            })?
            .shared();
        let spawned =
            spawn(&command_spec(&spec, &self.inner.init), log.clone()).map_err(|source| {
                SupervisorError::Spawn {
                    name: spec.name.clone(),
                    source,
                }
            })?;

        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let pid = spawned.group.pid();
        lock(&self.inner.table).insert(
            spec.name.clone(),
            Slot {
                id,
                status: ProcessStatus {
                    name: spec.name.clone(),
                    state: ProcessState::Running,
                    pid: Some(pid),
                    restarts: 0,
                    last_exit: None,
                    since: Utc::now(),
                },
            },
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let hurry = Arc::new(Notify::new());
        lock(&self.inner.controls).insert(
            spec.name.clone(),
            Control {
                id,
                stop: stop_tx,
                done: done_rx,
                hurry: hurry.clone(),
            },
        );
        tracing::info!(process = %spec.name, pid, "process started");
        let task = Task {
            id,
            spec,
            init: self.inner.init.clone(),
            log,
            table: self.inner.table.clone(),
            stop: stop_rx,
            hurry,
        };
        tokio::spawn(async move {
            task.supervise(spawned).await;
            // Sent last: `stop` returns on it, and the group is gone by then.
            let _ = done_tx.send(true);
        });
        Ok(())
    }

    /// Stops one process: no more restarts, SIGTERM to its whole process group, SIGKILL to the
    /// group after its `stop_grace`; returns once the process and its group are gone. No-op if
    /// no process of that name runs. The process's status stays, as `Stopped`, until
    /// [`Supervisor::forget`] or a new start.
    pub async fn stop(&self, name: &str) {
        let name_lock = self.name_lock(name);
        let _serial = name_lock.lock().await;
        self.stop_locked(name).await;
    }

    /// Stops every process, all at once.
    pub async fn stop_all(&self) {
        let names: Vec<String> = lock(&self.inner.controls).keys().cloned().collect();
        let mut stops = tokio::task::JoinSet::new();
        for name in names {
            let this = self.clone();
            // Spawned so that all graces run concurrently, and so that a stop goes through
            // even if this call is abandoned.
            stops.spawn(async move { this.stop(&name).await });
        }
        while stops.join_next().await.is_some() {}
    }

    /// Restarts a process waiting out its backoff now: someone waits for it (a node about to
    /// open). No-op for a process that runs or is unknown.
    pub fn restart_now(&self, name: &str) {
        if let Some(control) = lock(&self.inner.controls).get(name) {
            control.hurry.notify_waiters();
        }
    }

    /// Every known process's status, sorted by name.
    pub fn status(&self) -> Vec<ProcessStatus> {
        lock(&self.inner.table)
            .values()
            .map(|slot| slot.status.clone())
            .collect()
    }

    /// Removes a stopped process from [`Supervisor::status`]; returns whether it did. A
    /// running process is not touched.
    pub fn forget(&self, name: &str) -> bool {
        let controls = lock(&self.inner.controls);
        let mut table = lock(&self.inner.table);
        let stopped = !controls.contains_key(name)
            && table
                .get(name)
                .is_some_and(|slot| slot.status.state == ProcessState::Stopped);
        if stopped {
            table.remove(name);
        }
        stopped
    }

    fn name_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.name_locks)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Stops `name`; the caller holds its name lock.
    async fn stop_locked(&self, name: &str) {
        let (id, mut done) = {
            let controls = lock(&self.inner.controls);
            let Some(control) = controls.get(name) else {
                return;
            };
            control.stop.send_replace(true);
            (control.id, control.done.clone())
        };
        tracing::info!(process = name, "stopping process");
        // An error means the task is gone without saying so (it panicked): its group was
        // killed when it was dropped.
        let _ = done.wait_for(|done| *done).await;
        // Removed only now: if this call is abandoned midway, the next stop still finds the
        // control and waits for the task.
        let mut controls = lock(&self.inner.controls);
        if controls.get(name).is_some_and(|c| c.id == id) {
            controls.remove(name);
        }
    }
}

fn command_spec<'a>(spec: &'a ProcessSpec, init: &'a SandboxInit) -> CommandSpec<'a> {
    CommandSpec {
        command: &spec.command,
        sandbox: &spec.sandbox,
        env: &spec.env,
        init,
    }
}

/// The task driving one process from its start to its stop.
struct Task {
    id: u64,
    spec: ProcessSpec,
    init: SandboxInit,
    log: SharedLog,
    table: Arc<Mutex<BTreeMap<String, Slot>>>,
    stop: watch::Receiver<bool>,
    hurry: Arc<Notify>,
}

impl Task {
    async fn supervise(mut self, mut current: Spawned) {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            let exited = tokio::select! {
                status = current.group.wait() => Some(status),
                () = stop_requested(&mut self.stop) => None,
            };
            let Some(status) = exited else {
                current.group.terminate(self.spec.stop_grace).await;
                finish_output(current.output).await;
                let exit = current.group.exit_status().map(describe_exit);
                tracing::info!(process = %self.spec.name, exit = exit.as_deref().unwrap_or("unknown"), "process stopped");
                self.update(|s| {
                    s.state = ProcessState::Stopped;
                    s.pid = None;
                    if exit.is_some() {
                        s.last_exit = exit;
                    }
                });
                return;
            };
            let exit = match status {
                Ok(status) => describe_exit(status),
                Err(e) => format!("could not be waited for: {e}"),
            };
            // Whatever the shell left behind in its group must not run beside the next
            // incarnation (holding its port, doing its work twice).
            current.group.terminate(self.spec.stop_grace).await;
            finish_output(current.output).await;

            let mut delay = backoff.delay_after(started.elapsed());
            tracing::warn!(process = %self.spec.name, %exit, delay_ms = delay.as_millis() as u64, "process exited; restarting after backoff");
            self.update(|s| {
                s.state = ProcessState::BackingOff;
                s.pid = None;
                s.last_exit = Some(exit);
            });
            current = loop {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.hurry.notified() => {}
                    () = stop_requested(&mut self.stop) => {
                        tracing::info!(process = %self.spec.name, "process stopped while backing off");
                        self.update(|s| s.state = ProcessState::Stopped);
                        return;
                    }
                }
                match spawn(&command_spec(&self.spec, &self.init), self.log.clone()) {
                    Ok(spawned) => break spawned,
                    Err(e) => {
                        delay = backoff.delay_after(Duration::ZERO);
                        tracing::error!(process = %self.spec.name, error = %e, delay_ms = delay.as_millis() as u64, "process could not be started; retrying after backoff");
                        self.update(|s| s.last_exit = Some(format!("failed to start: {e}")));
                    }
                }
            };
            let pid = current.group.pid();
            tracing::info!(process = %self.spec.name, pid, "process restarted");
            self.update(|s| {
                s.state = ProcessState::Running;
                s.pid = Some(pid);
                s.restarts += 1;
            });
        }
    }

    /// Changes this incarnation's status (never a later one's), stamping `since` when the
    /// state changes.
    fn update(&self, change: impl FnOnce(&mut ProcessStatus)) {
        let mut table = lock(&self.table);
        if let Some(slot) = table.get_mut(&self.spec.name).filter(|s| s.id == self.id) {
            let before = slot.status.state;
            change(&mut slot.status);
            if slot.status.state != before {
                slot.status.since = Utc::now();
            }
        }
    }
}

/// Resolves once a stop was asked for, or once nobody can ask any more (every `Supervisor`
/// handle dropped), which must end the process just the same.
pub(crate) async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data
/// consistent, so a panic elsewhere is no reason to stop supervising.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
