//! The cron runner with real commands: runs, records, refusals, timeouts and the quiesce.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Fixture, env, init, running_with, wait_for, wait_for_file, wait_for_text, within};
use lockstep_supervisor::{CronOutcome, CronRun, CronRunner, CronSpec, LogLimits, SupervisorError};

impl Fixture {
    fn runs_file(&self) -> PathBuf {
        self.home.path().join("state/cron-runs.jsonl")
    }

    fn runner(&self) -> CronRunner {
        CronRunner::new(
            self.runs_file(),
            self.logs.clone(),
            LogLimits::default(),
            init(),
        )
    }

    /// A runner with these crons started.
    fn started(&self, crons: Vec<CronSpec>) -> CronRunner {
        let runner = self.runner();
        runner.start(crons, self.sandbox.clone(), env());
        runner
    }
}

fn cron(name: &str, start: &str) -> CronSpec {
    CronSpec {
        name: name.into(),
        schedule: "* * * * *".into(),
        start: start.into(),
        stop: None,
        timeout: Duration::from_secs(30),
        shutdown_timeout: Duration::from_secs(5),
    }
}

/// Waits for the newest run of `name` to have ended, and returns it.
async fn ended_run(runner: &CronRunner, name: &str) -> CronRun {
    wait_for(&format!("a run of {name} to end"), 5, || {
        runner
            .recent_runs(10)
            .into_iter()
            .find(|r| r.name == name)
            .filter(|r| r.outcome.is_some() && !runner.is_running())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_runs_the_cron_records_it_and_logs_its_output() {
    let fx = Fixture::new();
    let mut spec = cron("report", "echo \"hello from $(pwd) with $GREETING\"");
    spec.timeout = Duration::from_secs(10);
    let runner = fx.runner();
    let mut vars = env();
    vars.insert("GREETING".into(), "hi".into());
    runner.start(vec![spec], fx.sandbox.clone(), vars);

    runner.run_now("report").await.unwrap();
    let run = ended_run(&runner, "report").await;
    assert_eq!(run.outcome, Some(CronOutcome::Succeeded));
    assert!(run.ended_at.unwrap() >= run.started_at);

    let log = wait_for_text(&fx.log("cron-report"), "ended").await;
    assert!(log.contains("hello from /app with hi\n"), "{log}");

    // The runs file has the run's start, then its end.
    let lines: Vec<CronRun> = std::fs::read_to_string(fx.runs_file())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].outcome, None);
    assert_eq!(lines[1], run);

    // A new runner (the agent restarted) reads it back.
    let reborn = fx.runner();
    assert_eq!(reborn.recent_runs(10), vec![run]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_now_is_refused_while_the_first_runs() {
    let fx = Fixture::new();
    let runner = fx.started(vec![cron(
        "slow",
        "echo run >> runs; while [ ! -e go ]; do sleep 0.02; done",
    )]);
    runner.run_now("slow").await.unwrap();
    assert!(runner.is_running());
    let second = runner.run_now("slow").await;
    assert!(
        matches!(second, Err(SupervisorError::CronBusy(ref n)) if n == "slow"),
        "{second:?}"
    );

    std::fs::write(fx.path("go"), "").unwrap();
    let first = ended_run(&runner, "slow").await;
    assert_eq!(first.outcome, Some(CronOutcome::Succeeded));
    assert_eq!(
        std::fs::read_to_string(fx.path("runs")).unwrap(),
        "run\n",
        "the refused run ran anyway"
    );
    // Once the first has ended, the cron can run again.
    runner.run_now("slow").await.unwrap();
    wait_for("the second run to end", 5, || {
        (runner.recent_runs(10).len() == 2 && !runner.is_running()).then_some(())
    })
    .await;
    assert_eq!(
        runner.recent_runs(1)[0].outcome,
        Some(CronOutcome::Succeeded)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_record_their_exit_code_or_signal() {
    let fx = Fixture::new();
    let runner = fx.started(vec![cron("fails", "exit 7"), cron("dies", "kill -9 $$")]);
    runner.run_now("fails").await.unwrap();
    assert_eq!(
        ended_run(&runner, "fails").await.outcome,
        Some(CronOutcome::Failed {
            code: Some(7),
            signal: None
        })
    );
    runner.run_now("dies").await.unwrap();
    assert_eq!(
        ended_run(&runner, "dies").await.outcome,
        Some(CronOutcome::Failed {
            code: None,
            signal: Some(9)
        })
    );
    assert!(matches!(
        runner.run_now("absent").await,
        Err(SupervisorError::UnknownCron(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_is_terminated_with_its_group() {
    let fx = Fixture::new();
    let mut spec = cron(
        "long",
        // The child says when it ignores TERM.
        "sh -c 'trap \"\" TERM; echo ready > child.ready; exec sleep 1011' & wait",
    );
    spec.timeout = Duration::from_millis(300);
    spec.shutdown_timeout = Duration::from_millis(200);
    let runner = fx.started(vec![spec]);

    let started = Instant::now();
    runner.run_now("long").await.unwrap();
    wait_for_file(&fx.path("child.ready")).await;
    // The child execs its sleep just after saying so.
    wait_for("the child's sleep", 5, || {
        (running_with("sleep 1011").len() == 1).then_some(())
    })
    .await;
    let run = ended_run(&runner, "long").await;
    assert_eq!(run.outcome, Some(CronOutcome::TimedOut));
    // The timeout, then the grace the TERM-ignoring child used up.
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        running_with("sleep 1011").is_empty(),
        "a child of the timed-out run survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_runs_the_stop_command_then_terms_then_kills() {
    let fx = Fixture::new();
    let mut spec = cron(
        "drupal",
        "trap 'echo term >> events' TERM; echo ready > ready; while :; do sleep 0.05; done",
    );
    spec.stop = Some("echo stop >> events".into());
    spec.shutdown_timeout = Duration::from_millis(300);
    let runner = fx.started(vec![spec]);
    runner.run_now("drupal").await.unwrap();
    wait_for_file(&fx.path("ready")).await;

    let started = Instant::now();
    within("stop", 5, runner.stop()).await;
    // The run survived its TERM, so stop waited for the SIGKILL.
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(running_with("sleep 0.05").is_empty());
    assert!(!runner.is_running());
    assert_eq!(
        std::fs::read_to_string(fx.path("events")).unwrap(),
        "stop\nterm\n"
    );
    assert_eq!(runner.recent_runs(1)[0].outcome, Some(CronOutcome::Stopped));
    // The record is in the file by the time stop returns.
    let last_line = std::fs::read_to_string(fx.runs_file()).unwrap();
    let last: CronRun = serde_json::from_str(last_line.lines().last().unwrap()).unwrap();
    assert_eq!(last.outcome, Some(CronOutcome::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_stop_nothing_runs_until_start() {
    let fx = Fixture::new();
    let runner = fx.started(vec![cron("task", "echo ran >> ran")]);
    within("stop", 5, runner.stop()).await;
    assert!(matches!(
        runner.run_now("task").await,
        Err(SupervisorError::CronStopped)
    ));
    assert!(!fx.path("ran").exists());
    assert!(runner.recent_runs(10).is_empty());

    runner.start(
        vec![cron("task", "echo ran >> ran")],
        fx.sandbox.clone(),
        env(),
    );
    runner.run_now("task").await.unwrap();
    wait_for_file(&fx.path("ran")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_lets_a_run_that_exits_on_term_end_quickly() {
    let fx = Fixture::new();
    let mut spec = cron("polite", "echo ready > ready; sleep 1012 & wait");
    spec.shutdown_timeout = Duration::from_secs(5);
    let runner = fx.started(vec![spec]);
    runner.run_now("polite").await.unwrap();
    wait_for_file(&fx.path("ready")).await;
    let started = Instant::now();
    within("stop", 5, runner.stop()).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(running_with("sleep 1012").is_empty());
    assert_eq!(runner.recent_runs(1)[0].outcome, Some(CronOutcome::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_minute_is_accepted_and_bad_crons_are_left_out() {
    let fx = Fixture::new();
    let good = cron("every-minute", "echo ok > ok");
    let mut bad = cron("bad", "true");
    bad.schedule = "not a schedule".into();
    let mut escaping = cron("../x", "true");
    escaping.schedule = "*/5 * * * *".into();
    assert!(good.check().is_ok());
    assert!(matches!(bad.check(), Err(SupervisorError::Schedule { .. })));
    assert!(matches!(
        escaping.check(),
        Err(SupervisorError::InvalidName { .. })
    ));

    let runner = fx.started(vec![good, bad, escaping]);
    runner.run_now("every-minute").await.unwrap();
    wait_for_file(&fx.path("ok")).await;
    assert!(matches!(
        runner.run_now("bad").await,
        Err(SupervisorError::UnknownCron(_))
    ));
    within("stop", 5, runner.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_start_is_an_error_and_a_failed_record() {
    let fx = Fixture::new();
    let runner = fx.runner();
    let mut sandbox = fx.sandbox.clone();
    sandbox.app = fx.path("missing");
    runner.start(vec![cron("nowhere", "true")], sandbox, env());
    let result = runner.run_now("nowhere").await;
    assert!(
        matches!(result, Err(SupervisorError::Spawn { .. })),
        "{result:?}"
    );
    assert!(!runner.is_running());
    assert_eq!(
        runner.recent_runs(1)[0].outcome,
        Some(CronOutcome::Failed {
            code: None,
            signal: None
        })
    );
    // The place is free again.
    assert!(matches!(
        runner.run_now("nowhere").await,
        Err(SupervisorError::Spawn { .. })
    ));
}
