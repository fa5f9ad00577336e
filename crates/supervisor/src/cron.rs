//! Cron tasks: scheduled (and on-demand) runs, at most one per cron at a time, and a quiesce
//! that ends every run and lets no new one start.
//!
//! A run is reserved in `State::active` under the state lock before anything else happens,
//! and its process is spawned under that same lock after checking that no stop came
//! meanwhile. So a run either exists before `stop` takes the lock (and `stop` ends it) or is
//! refused; and two runs of one cron can never both pass the reservation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{SupervisorError, check_name};
use crate::logs::{LogLimits, LogWriter, SharedLog, log_path};
use crate::process::{lock, stop_requested};
use crate::runs::{CronOutcome, CronRun, History, RunFile};
use crate::sandbox::{Sandbox, SandboxInit};
use crate::schedule::{Schedule, check_schedule, sleep_until};
use crate::spawn::{CommandSpec, Spawned, finish_output, spawn};

/// One cron of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSpec {
    /// Unique among the crons; its log is `cron-<name>.log`.
    pub name: String,
    /// 5-field cron schedule, in UTC.
    pub schedule: String,
    /// The command of a run, with `/bin/sh -c`.
    pub start: String,
    /// Run (with `/bin/sh -c`) when a running run is stopped, before it is signalled.
    pub stop: Option<String>,
    /// A run still going after this is terminated, with outcome `TimedOut`.
    pub timeout: Duration,
    /// How long a stopped or timed-out run has between SIGTERM and SIGKILL (and how long its
    /// `stop` command may take).
    pub shutdown_timeout: Duration,
}

impl CronSpec {
    /// Whether [`CronRunner::start`] would accept this cron.
    pub fn check(&self) -> Result<(), SupervisorError> {
        check_name(&self.name)?;
        check_schedule(&self.schedule)
    }
}

/// Schedules and runs an app's crons. Cheap to clone; clones share the crons.
#[derive(Clone)]
pub struct CronRunner {
    inner: Arc<Inner>,
}

struct Inner {
    log_dir: PathBuf,
    log_limits: LogLimits,
    init: SandboxInit,
    runs: RunFile,
    state: Mutex<State>,
    /// How many runs are reserved or in progress; `stop` waits for it to reach 0.
    active_count: watch::Sender<usize>,
}

struct State {
    stopped: bool,
    /// Bumped by every `start`, so that a scheduler of an earlier set cannot start a run.
    generation: u64,
    set: Arc<CronSet>,
    schedulers: Vec<JoinHandle<()>>,
    /// Runs in progress, with the sender that asks them to stop.
    active: BTreeMap<String, watch::Sender<bool>>,
    history: History,
    /// One writer per cron log, shared by its runs and its stop commands.
    logs: BTreeMap<String, SharedLog>,
}

/// The crons of one `start`, and how they run.
#[derive(Default)]
struct CronSet {
    crons: BTreeMap<String, CronSpec>,
    sandbox: Option<Sandbox>,
    env: BTreeMap<String, String>,
}

impl CronRunner {
    /// `runs_file` is a JSON-lines file to which every run is appended (when it starts, and
    /// again when it ends); the history it holds is read now, so it survives restarts. Cron
    /// output goes to `log_dir/cron-<name>.log`.
    /// Each run's sandbox starts with `init`.
    pub fn new(
        runs_file: PathBuf,
        log_dir: PathBuf,
        log_limits: LogLimits,
        init: SandboxInit,
    ) -> CronRunner {
        let history = History::load(&runs_file);
        CronRunner {
            inner: Arc::new(Inner {
                log_dir,
                log_limits,
                init,
                runs: RunFile::new(runs_file),
                state: Mutex::new(State {
                    stopped: false,
                    generation: 0,
                    set: Arc::default(),
                    schedulers: Vec::new(),
                    active: BTreeMap::new(),
                    history,
                    logs: BTreeMap::new(),
                }),
                active_count: watch::Sender::new(0),
            }),
        }
    }

    /// Starts scheduling these crons, replacing any earlier set (runs already going continue
    /// to their end). Each run is `/bin/sh -c <start>` in `sandbox` with exactly `env`.
    ///
    /// A cron with an unusable name or schedule is left out, with an error logged; check them
    /// first with [`CronSpec::check`]. Must be called within a Tokio runtime.
    pub fn start(&self, crons: Vec<CronSpec>, sandbox: Sandbox, env: BTreeMap<String, String>) {
        let mut scheduled = Vec::new();
        for cron in crons {
            let parsed = check_name(&cron.name).and_then(|()| Schedule::parse(&cron.schedule));
            match parsed {
                Ok(schedule) => scheduled.push((cron, schedule)),
                Err(e) => {
                    tracing::error!(cron = %cron.name, error = %e, "cron left out of the schedule")
                }
            }
        }
        self.start_scheduled(scheduled, sandbox, env);
    }

    fn start_scheduled(
        &self,
        crons: Vec<(CronSpec, Schedule)>,
        sandbox: Sandbox,
        env: BTreeMap<String, String>,
    ) {
        let mut set = CronSet {
            crons: BTreeMap::new(),
            sandbox: Some(sandbox),
            env,
        };
        let mut schedules = Vec::new();
        for (cron, schedule) in crons {
            if set.crons.contains_key(&cron.name) {
                tracing::error!(cron = %cron.name, "two crons have this name; the later one is left out");
                continue;
            }
            schedules.push((cron.name.clone(), schedule));
            set.crons.insert(cron.name.clone(), cron);
        }
        let old = {
            let mut state = lock(&self.inner.state);
            state.generation += 1;
            state.stopped = false;
            state.set = Arc::new(set);
            let generation = state.generation;
            let fresh = schedules
                .into_iter()
                .map(|(name, schedule)| {
                    let inner = Arc::downgrade(&self.inner);
                    tokio::spawn(schedule_loop(inner, generation, name, schedule))
                })
                .collect();
            std::mem::replace(&mut state.schedulers, fresh)
        };
        for scheduler in &old {
            scheduler.abort();
        }
        tracing::info!(
            crons = lock(&self.inner.state).set.crons.len(),
            "cron scheduling started"
        );
    }

    /// Runs one cron now, unless a run of it is in progress (`CronBusy`), crons are stopped
    /// (`CronStopped`) or no cron has that name (`UnknownCron`). Returns once the run's
    /// process has started, not when it ends.
    pub async fn run_now(&self, name: &str) -> Result<(), SupervisorError> {
        launch(&self.inner, name, None, "manual").await
    }

    /// Quiesces: from the moment this is called no new run starts; each running run gets its
    /// `stop` command (if any, for up to its `shutdown_timeout`), then SIGTERM to its process
    /// group, then SIGKILL after its `shutdown_timeout`. Returns when no run is left.
    /// Scheduling stays off until [`CronRunner::start`] is called again.
    pub async fn stop(&self) {
        let mut count = self.inner.active_count.subscribe();
        let schedulers = {
            let mut state = lock(&self.inner.state);
            state.stopped = true;
            if !state.active.is_empty() {
                tracing::info!(runs = state.active.len(), "stopping running crons");
            }
            for stop in state.active.values() {
                stop.send_replace(true);
            }
            std::mem::take(&mut state.schedulers)
        };
        for scheduler in &schedulers {
            scheduler.abort();
        }
        let _ = count.wait_for(|active| *active == 0).await;
    }

    /// Whether any run is in progress.
    pub fn is_running(&self) -> bool {
        !lock(&self.inner.state).active.is_empty()
    }

    /// The newest `limit` runs, newest first: those of this process and those read from the
    /// runs file. A run with no `ended_at` that is not running now was cut short by an agent
    /// restart.
    pub fn recent_runs(&self, limit: usize) -> Vec<CronRun> {
        lock(&self.inner.state).history.newest(limit)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Schedulers only hold a weak reference, but one asleep until next month would linger.
        for scheduler in &lock(&self.state).schedulers {
            scheduler.abort();
        }
    }
}

async fn schedule_loop(inner: Weak<Inner>, generation: u64, name: String, schedule: Schedule) {
    let mut after = Utc::now();
    loop {
        let next = match schedule.next_after(after) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(cron = %name, error = %e, "no next run time; cron unscheduled");
                return;
            }
        };
        tracing::debug!(cron = %name, %next, "next cron run");
        sleep_until(next).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match launch(&inner, &name, Some(generation), "schedule").await {
            Ok(()) => {}
            Err(SupervisorError::CronBusy(_)) => {
                tracing::info!(cron = %name, "previous run still going; this scheduled run is skipped");
            }
            Err(SupervisorError::CronStopped) => return,
            Err(e) => tracing::error!(cron = %name, error = %e, "scheduled cron run did not start"),
        }
        // From now if the run (or the machine) was late, so that missed runs do not all
        // start at once.
        after = next.max(Utc::now());
    }
}

/// A run's place in `State::active`. Dropping it (the run ended, or starting it was abandoned
/// or failed) frees the place.
struct Reservation {
    inner: Arc<Inner>,
    name: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        state.active.remove(&self.name);
        self.inner.active_count.send_replace(state.active.len());
    }
}

/// Starts a run of `name`. `generation` is the scheduler's, for scheduled runs.
async fn launch(
    inner: &Arc<Inner>,
    name: &str,
    generation: Option<u64>,
    trigger: &'static str,
) -> Result<(), SupervisorError> {
    let (spec, set, stop, log) = {
        let mut state = lock(&inner.state);
        if state.stopped || generation.is_some_and(|g| g != state.generation) {
            return Err(SupervisorError::CronStopped);
        }
        let spec = state
            .set
            .crons
            .get(name)
            .cloned()
            .ok_or_else(|| SupervisorError::UnknownCron(name.to_owned()))?;
        if state.active.contains_key(name) {
            return Err(SupervisorError::CronBusy(name.to_owned()));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        state.active.insert(name.to_owned(), stop_tx);
        inner.active_count.send_replace(state.active.len());
        (
            spec,
            state.set.clone(),
            stop_rx,
            state.logs.get(name).cloned(),
        )
    };
    let reservation = Reservation {
        inner: inner.clone(),
        name: name.to_owned(),
    };

    let log = match log {
        Some(log) => log,
        None => {
            let log_name = format!("cron-{name}");
            let log = LogWriter::open(&inner.log_dir, &log_name, inner.log_limits)
                .await
                .map_err(|source| SupervisorError::Log {
                    path: log_path(&inner.log_dir, &log_name),
                    source,
                })?
                .shared();
            lock(&inner.state)
                .logs
                .entry(name.to_owned())
                .or_insert(log)
                .clone()
        }
    };
    write_marker(&log, &format!("cron {name} starting ({trigger})")).await;

    let Some(sandbox) = &set.sandbox else {
        return Err(SupervisorError::UnknownCron(name.to_owned()));
    };
    let command = CommandSpec {
        command: &spec.start,
        sandbox,
        env: &set.env,
        init: &inner.init,
    };
    let started_at = Utc::now();
    let spawned = {
        let mut state = lock(&inner.state);
        // A stop that came while the log was opened wins: nothing may start after it.
        if *stop.borrow() {
            None
        } else {
            let spawned = spawn(&command, log.clone());
            if spawned.is_ok() {
                state.history.record(CronRun {
                    name: name.to_owned(),
                    started_at,
                    ended_at: None,
                    outcome: None,
                });
            }
            Some(spawned)
        }
    };
    let spawned = match spawned {
        None => {
            drop(reservation);
            write_marker(&log, &format!("cron {name} not started: crons stopped")).await;
            return Err(SupervisorError::CronStopped);
        }
        Some(Err(source)) => {
            tracing::error!(cron = name, error = %source, "cron run could not be started");
            write_marker(&log, &format!("cron {name} could not be started: {source}")).await;
            let failed = CronRun {
                name: name.to_owned(),
                started_at,
                ended_at: Some(started_at),
                outcome: Some(CronOutcome::Failed {
                    code: None,
                    signal: None,
                }),
            };
            lock(&inner.state).history.record(failed.clone());
            append_record(inner, &failed).await;
            drop(reservation);
            return Err(SupervisorError::Spawn {
                name: name.to_owned(),
                source,
            });
        }
        Some(Ok(spawned)) => spawned,
    };
    tracing::info!(
        cron = name,
        pid = spawned.group.pid(),
        trigger,
        "cron run started"
    );
    let run = Run {
        reservation,
        spec,
        set,
        log,
        started_at,
        stop,
    };
    tokio::spawn(run.drive(spawned));
    Ok(())
}

/// One run, from its start to its record.
struct Run {
    /// Held until the run is recorded, so that `stop` and `is_running` wait for the record.
    reservation: Reservation,
    spec: CronSpec,
    set: Arc<CronSet>,
    log: SharedLog,
    started_at: DateTime<Utc>,
    stop: watch::Receiver<bool>,
}

impl Run {
    async fn drive(mut self, spawned: Spawned) {
        let inner = self.reservation.inner.clone();
        let name = self.spec.name.clone();
        let Spawned { mut group, output } = spawned;
        // Written here, before the end can be, because the later line of a run wins.
        append_record(
            &inner,
            &CronRun {
                name: name.clone(),
                started_at: self.started_at,
                ended_at: None,
                outcome: None,
            },
        )
        .await;

        let grace = self.spec.shutdown_timeout;
        let outcome = tokio::select! {
            status = group.wait() => CronOutcome::from_exit(&status),
            () = tokio::time::sleep(self.spec.timeout) => {
                tracing::warn!(cron = %name, timeout_s = self.spec.timeout.as_secs_f64(), "cron run timed out; terminating it");
                group.terminate(grace).await;
                CronOutcome::TimedOut
            }
            () = stop_requested(&mut self.stop) => {
                self.run_stop_command(&inner).await;
                group.terminate(grace).await;
                CronOutcome::Stopped
            }
        };
        // What the command left running in its group must not outlive the run: it would
        // overlap the next run, and `stop` could no longer reach it.
        group.terminate(grace).await;
        finish_output(output).await;

        let ended_at = Utc::now();
        tracing::info!(cron = %name, %outcome, "cron run ended");
        write_marker(&self.log, &format!("cron {name} ended: {outcome}")).await;
        let record = CronRun {
            name,
            started_at: self.started_at,
            ended_at: Some(ended_at),
            outcome: Some(outcome),
        };
        lock(&inner.state).history.record(record.clone());
        append_record(&inner, &record).await;
        // `self.reservation` is dropped here: the run is over.
    }

    /// Runs the cron's `stop` command, for at most its `shutdown_timeout`.
    async fn run_stop_command(&self, inner: &Inner) {
        let (Some(command), Some(sandbox)) = (&self.spec.stop, &self.set.sandbox) else {
            return;
        };
        let name = &self.spec.name;
        tracing::info!(cron = %name, "running the cron's stop command");
        let command = CommandSpec {
            command,
            sandbox,
            env: &self.set.env,
            init: &inner.init,
        };
        let Spawned { mut group, output } = match spawn(&command, self.log.clone()) {
            Ok(spawned) => spawned,
            Err(e) => {
                tracing::warn!(cron = %name, error = %e, "the cron's stop command could not be started");
                return;
            }
        };
        match tokio::time::timeout(self.spec.shutdown_timeout, group.wait()).await {
            Ok(Ok(status)) if !status.success() => {
                tracing::warn!(cron = %name, exit = %crate::group::describe_exit(status), "the cron's stop command failed");
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(cron = %name, "the cron's stop command outlasted shutdown_timeout; killing it");
            }
        }
        // Its time is up: no grace for the stop command itself.
        group.terminate(Duration::ZERO).await;
        finish_output(output).await;
    }
}

async fn append_record(inner: &Inner, run: &CronRun) {
    let history = || lock(&inner.state).history.snapshot();
    if let Err(e) = inner.runs.append(run, history).await {
        tracing::warn!(path = %inner.runs.path().display(), error = %e, "cannot record a cron run in the runs file");
    }
}

/// A line of ours in a cron log, so that a reader can tell runs apart.
async fn write_marker(log: &SharedLog, text: &str) {
    let line = format!(
        "--- {} {text} ---\n",
        Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let mut log = log.lock().await;
    if let Err(e) = log.write(line.as_bytes()).await {
        tracing::warn!(log = %log.path().display(), error = %e, "writing a log failed");
    }
}

#[cfg(test)]
mod tests {
    //! Scheduling, with schedules firing every few tens of milliseconds instead of every
    //! minute.

    use super::*;
    use std::path::Path;
    use std::time::Instant;

    fn spec(name: &str, start: &str) -> CronSpec {
        CronSpec {
            name: name.into(),
            schedule: "* * * * *".into(),
            start: start.into(),
            stop: None,
            timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(2),
        }
    }

    fn env() -> BTreeMap<String, String> {
        BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())])
    }

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scheduled_runs_never_overlap_and_stop_ends_scheduling() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = crate::sandbox::writable_test_sandbox(dir.path());
        let work = sandbox.app.clone();
        let runner = CronRunner::new(
            dir.path().join("runs.jsonl"),
            dir.path().join("logs"),
            LogLimits::default(),
            crate::sandbox::passthrough_init(),
        );
        // Each run lasts 150 ms, and the schedule fires every 20 ms: most ticks find a run
        // going. A second concurrent run would see the `busy` file.
        let script = "if [ -e busy ]; then echo overlap >> overlaps; fi; touch busy; \
                      echo run >> runs; sleep 0.15; rm busy";
        runner.start_scheduled(
            vec![(
                spec("tick", script),
                Schedule::Every(Duration::from_millis(20)),
            )],
            sandbox.clone(),
            env(),
        );
        let runs = work.join("runs");
        wait_until("three scheduled runs", || lines(&runs) >= 3).await;

        runner.stop().await;
        assert!(!runner.is_running());
        let after_stop = lines(&runs);
        // Several ticks pass; waiting is the only way to see that nothing happens.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            lines(&runs),
            after_stop,
            "a scheduled run started after stop"
        );
        assert!(
            !work.join("overlaps").exists(),
            "two runs of one cron overlapped"
        );
        // 3+ runs of 150 ms over a few hundred ms of 20 ms ticks: overlapping ticks were skipped.
        let records = runner.recent_runs(100);
        assert!(records.iter().all(|r| r.outcome.is_some()));
        assert!(records.len() >= 3);

        // start() turns scheduling back on.
        runner.start_scheduled(
            vec![(
                spec("tick", script),
                Schedule::Every(Duration::from_millis(20)),
            )],
            sandbox,
            env(),
        );
        wait_until("a run after restarting", || lines(&runs) > after_stop).await;
        runner.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replacing_the_set_stops_the_old_schedules() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = crate::sandbox::writable_test_sandbox(dir.path());
        let runner = CronRunner::new(
            dir.path().join("runs.jsonl"),
            dir.path().join("logs"),
            LogLimits::default(),
            crate::sandbox::passthrough_init(),
        );
        let old = sandbox.app.join("old");
        runner.start_scheduled(
            vec![(
                spec("a", "echo x >> old"),
                Schedule::Every(Duration::from_millis(20)),
            )],
            sandbox.clone(),
            env(),
        );
        wait_until("a run of the old set", || lines(&old) >= 1).await;
        runner.start_scheduled(Vec::new(), sandbox, env());
        wait_until("the old set's last run to end", || !runner.is_running()).await;
        let count = lines(&old);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(lines(&old), count, "a replaced schedule kept running");
        assert!(matches!(
            runner.run_now("a").await,
            Err(SupervisorError::UnknownCron(_))
        ));
    }
}
