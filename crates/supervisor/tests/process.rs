//! The supervisor with real processes in their sandboxes: environment, output, restarts,
//! stops, rotation, the user.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Fixture, env, host_pid, init, running, wait_for, wait_for_file, wait_for_pid, wait_for_text,
    within,
};
use lockstep_supervisor::{
    LogLimits, ProcessSpec, ProcessState, ProcessStatus, Supervisor, SupervisorError, read_log,
};

impl Fixture {
    fn spec(&self, name: &str, command: &str) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            command: command.into(),
            sandbox: self.sandbox.clone(),
            env: env(),
            log_dir: self.logs.clone(),
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// The host pid of a process of `name` that wrote its `$$` into `file`.
async fn pid_of(fx: &Fixture, supervisor: &Supervisor, name: &str, file: &str) -> i32 {
    let inner = wait_for_pid(&fx.path(file)).await;
    let leader = status_of(supervisor, name).pid.expect("running");
    host_pid(leader, inner)
}

fn status_of(supervisor: &Supervisor, name: &str) -> ProcessStatus {
    supervisor
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no status for {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_with_exactly_the_given_env_and_dir_and_logs_its_output() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    let mut spec = fx.spec(
        "web",
        "echo BEGIN; env; echo END; echo \"cwd=$(pwd)\"; echo oops >&2; exec sleep 1000",
    );
    spec.env.insert("FOO".into(), "bar baz".into());
    spec.env.insert("EMPTY".into(), String::new());
    // The test runs with cargo's variables set; none of them may reach the child.
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    supervisor.start(spec.clone()).await.unwrap();

    let log = wait_for_text(&fx.log("web"), "oops\n").await;
    let env_lines: BTreeSet<&str> = log
        .split("BEGIN\n")
        .nth(1)
        .and_then(|rest| rest.split("END\n").next())
        .expect("env output between markers")
        .lines()
        // dash exports PWD itself.
        .filter(|line| !line.starts_with("PWD="))
        .collect();
    let expected: BTreeSet<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(env_lines, expected);
    assert!(log.contains("cwd=/app\n"), "{log}");

    let status = status_of(&supervisor, "web");
    assert_eq!(status.state, ProcessState::Running);
    assert!(running(status.pid.unwrap() as i32));
    assert_eq!(status.restarts, 0);

    within("stop", 5, supervisor.stop("web")).await;
    let status = status_of(&supervisor, "web");
    assert_eq!(status.state, ProcessState::Stopped);
    assert_eq!(status.pid, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_process_is_restarted_with_backoff() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    let started = Instant::now();
    supervisor
        .start(fx.spec(
            "worker-crash",
            "cat /proc/sys/kernel/random/uuid >> starts; exit 3",
        ))
        .await
        .unwrap();

    let mut saw_backing_off = false;
    let status = wait_for("three restarts", 5, || {
        let status = status_of(&supervisor, "worker-crash");
        saw_backing_off |= status.state == ProcessState::BackingOff;
        (status.restarts >= 3).then_some(status)
    })
    .await;
    let elapsed = started.elapsed();
    // 100 + 200 + 400 ms of backoff before the third restart; without backoff it would take
    // a few milliseconds and the count would race far ahead.
    assert!(elapsed >= Duration::from_millis(700), "{elapsed:?}");
    assert!(status.restarts <= 4, "{status:?}");
    assert!(saw_backing_off);
    assert_eq!(status.last_exit.as_deref(), Some("exited with code 3"));

    let starts = wait_for_file(&fx.path("starts")).await;
    let starts: Vec<&str> = starts.lines().collect();
    let distinct: BTreeSet<&str> = starts.iter().copied().collect();
    assert!(starts.len() >= 3, "{starts:?}");
    assert_eq!(distinct.len(), starts.len(), "every start is a new process");

    within("stop", 5, supervisor.stop("worker-crash")).await;
    assert_eq!(
        status_of(&supervisor, "worker-crash").state,
        ProcessState::Stopped
    );
    // No restart after stop: the list of starts stops growing.
    let count = std::fs::read_to_string(fx.path("starts"))
        .unwrap()
        .lines()
        .count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = std::fs::read_to_string(fx.path("starts"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(count, after, "the process was started again after stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_now_cuts_a_backoff_short() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    // Crashes until its file is there, as a web process whose files a deploy hook writes.
    supervisor
        .start(fx.spec(
            "web",
            "test -e ready || exit 3; echo $$ > started; exec sleep 1000",
        ))
        .await
        .unwrap();
    // 100 + 200 + 400 + 800 + 1600 ms: the next wait is 3.2 s.
    wait_for("five restarts", 10, || {
        let status = status_of(&supervisor, "web");
        (status.restarts >= 5 && status.state == ProcessState::BackingOff).then_some(())
    })
    .await;
    std::fs::write(fx.path("ready"), "").unwrap();
    supervisor.restart_now("web");
    // Sooner than the backoff would have restarted it.
    wait_for("the restart", 3, || {
        let status = status_of(&supervisor, "web");
        (status.state == ProcessState::Running && status.restarts == 6).then_some(())
    })
    .await;
    wait_for_pid(&fx.path("started")).await;
    within("stop", 5, supervisor.stop("web")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_a_start_does_not_wait_out_the_grace() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    let mut spec = fx.spec("web", "exec sleep 1000");
    spec.stop_grace = Duration::from_secs(30);
    supervisor.start(spec).await.unwrap();
    // The sandbox is still starting: nothing inside it to signal yet.
    within("stop", 10, supervisor.stop("web")).await;
    assert_eq!(status_of(&supervisor, "web").state, ProcessState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_sigterm_and_lets_the_process_exit_cleanly() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    supervisor
        .start(fx.spec(
            "web",
            // Short foreground sleeps rather than `sleep 1000 &`: a child caught between fork
            // and exec while the TERM arrives loses it (it still has the shell's handler),
            // and would then hold the group until the SIGKILL.
            "trap 'echo clean > terminated; exit 0' TERM; echo $$ > pid; \
             while :; do sleep 0.05; done",
        ))
        .await
        .unwrap();
    let pid = pid_of(&fx, &supervisor, "web", "pid").await;

    let started = Instant::now();
    within("stop", 5, supervisor.stop("web")).await;
    // Well inside the 5 s grace: the TERM was enough.
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        std::fs::read_to_string(fx.path("terminated")).unwrap(),
        "clean\n"
    );
    assert!(!running(pid));
    let status = status_of(&supervisor, "web");
    assert_eq!(status.state, ProcessState::Stopped);
    assert_eq!(status.last_exit.as_deref(), Some("exited with code 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    let mut spec = fx.spec("stubborn", "trap '' TERM; echo $$ > pid; sleep 1000 & wait");
    spec.stop_grace = Duration::from_millis(300);
    supervisor.start(spec).await.unwrap();
    let pid = pid_of(&fx, &supervisor, "stubborn", "pid").await;

    let started = Instant::now();
    within("stop", 5, supervisor.stop("stubborn")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!running(pid));
    let status = status_of(&supervisor, "stubborn");
    assert_eq!(
        status.last_exit.as_deref(),
        Some("killed by signal 9 (SIGKILL)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_the_shell_are_gone_after_stop() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    // One child dies of the TERM; the other ignores it and outlives the shell, so only a
    // SIGKILL to the whole group ends it.
    let mut spec = fx.spec(
        "web",
        // The stubborn child writes its pid itself, once it ignores TERM.
        "sleep 1000 & echo $! > plain.pid; \
         sh -c 'trap \"\" TERM; echo $$ > stubborn.pid; exec sleep 1000' & \
         wait",
    );
    spec.stop_grace = Duration::from_millis(300);
    supervisor.start(spec).await.unwrap();
    let plain = pid_of(&fx, &supervisor, "web", "plain.pid").await;
    let stubborn = pid_of(&fx, &supervisor, "web", "stubborn.pid").await;
    assert!(running(plain) && running(stubborn));

    let started = Instant::now();
    within("stop", 5, supervisor.stop("web")).await;
    assert!(!running(plain), "the background child survived stop");
    assert!(!running(stubborn), "the TERM-ignoring child survived stop");
    // The shell itself died of the TERM: the wait was for the stubborn child.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_started_by_the_shell_gets_its_grace_when_the_shell_dies_at_once() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    // The command's shell dies of the TERM at once; the worker it started finishes its job
    // first, as a queue worker would.
    let worker = "trap 'sleep 0.5; echo finished > done; exit 0' TERM; \
                  echo ready > ready; while :; do sleep 0.05; done";
    supervisor
        .start(fx.spec("worker-queue", &format!("sh -c \"{worker}\"")))
        .await
        .unwrap();
    wait_for_file(&fx.path("ready")).await;
    within("stop", 5, supervisor.stop("worker-queue")).await;
    assert_eq!(
        std::fs::read_to_string(fx.path("done")).unwrap(),
        "finished\n",
        "the worker was cut short"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_crashed_process_are_ended_before_it_restarts() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    let mut spec = fx.spec(
        "worker",
        "if [ ! -e once ]; then touch once; sleep 1000 & echo $! > orphan.pid; \
         until [ -e go ]; do sleep 0.01; done; exit 1; fi; \
         echo again > restarted; exec sleep 1000",
    );
    spec.stop_grace = Duration::from_millis(300);
    supervisor.start(spec).await.unwrap();
    let orphan = pid_of(&fx, &supervisor, "worker", "orphan.pid").await;
    std::fs::write(fx.path("go"), "").unwrap();
    wait_for_file(&fx.path("restarted")).await;
    assert!(!running(orphan), "a child of the crashed run kept running");
    within("stop", 5, supervisor.stop("worker")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_at_max_bytes_keeping_keep_files() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(
        LogLimits {
            max_bytes: 1000,
            keep: 2,
        },
        init(),
    );
    // 50 lines of 100 bytes: five full files, then DONE in a sixth.
    supervisor
        .start(fx.spec(
            "web",
            "i=0; while [ $i -lt 50 ]; do printf '%099d\\n' $i; i=$((i+1)); done; \
             echo DONE; exec sleep 1000",
        ))
        .await
        .unwrap();
    wait_for_text(&fx.log("web"), "DONE\n").await;

    let read = |suffix: &str| std::fs::read_to_string(fx.logs.join(format!("web.log{suffix}")));
    assert_eq!(read("").unwrap(), "DONE\n");
    let newest = read(".1").unwrap();
    let older = read(".2").unwrap();
    assert_eq!(newest.len(), 1000);
    assert_eq!(older.len(), 1000);
    assert_eq!(newest.lines().next().unwrap(), format!("{:099}", 40));
    assert_eq!(older.lines().next().unwrap(), format!("{:099}", 30));
    assert!(read(".3").is_err(), "more than `keep` rotated files");
    assert_eq!(read_log(&fx.logs, "web", 3).unwrap(), "NE\n");
    assert_eq!(read_log(&fx.logs, "absent", 100).unwrap(), "");

    within("stop", 5, supervisor.stop("web")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_runs_as_the_sandbox_user_with_no_other_group() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: dropping privileges needs root");
        return;
    }
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    let spec = fx.spec(
        "web",
        "echo \"caps=$(grep CapEff /proc/self/status | cut -f2) \
         nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)\"; \
         echo \"uid=$(id -u) groups=$(id -G) name=$(id -un)\"; exec sleep 1000",
    );
    supervisor.start(spec).await.unwrap();

    let log = wait_for_text(&fx.log("web"), "groups=").await;
    let line = log.lines().find(|l| l.starts_with("uid=")).unwrap();
    assert!(line.starts_with("uid=65534 "), "{line}");
    assert!(line.ends_with(" name=web"), "{line}");
    // No capability, and no way back to any through a setuid program.
    assert!(log.contains("caps=0000000000000000 nnp=1\n"), "{log}");
    let groups: Vec<&str> = line
        .split("groups=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .take_while(|word| !word.starts_with("name="))
        .collect();
    assert_eq!(groups, ["65534"], "{line}");
    // The agent owns the log; the child only ever had the pipe.
    assert_eq!(std::fs::metadata(fx.log("web")).unwrap().uid(), 0);

    within("stop", 5, supervisor.stop("web")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_running_name_replaces_it() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    supervisor
        .start(fx.spec("web", "echo $$ > first.pid; exec sleep 1000"))
        .await
        .unwrap();
    let first = pid_of(&fx, &supervisor, "web", "first.pid").await;
    within(
        "restart",
        5,
        supervisor.start(fx.spec("web", "echo $$ > second.pid; exec sleep 1000")),
    )
    .await
    .unwrap();
    assert!(!running(first), "the old process survived its replacement");
    let second = pid_of(&fx, &supervisor, "web", "second.pid").await;
    let status = status_of(&supervisor, "web");
    assert!(running(second));
    assert_ne!(status.pid, None);
    assert_eq!(status.restarts, 0);
    assert_eq!(supervisor.status().len(), 1);
    within("stop", 5, supervisor.stop_all()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_all_stops_everything_concurrently() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    let mut pids = BTreeMap::new();
    for name in ["web", "worker-a", "worker-b"] {
        let mut spec = fx.spec(
            name,
            &format!("trap '' TERM; echo $$ > {name}.pid; sleep 1000 & wait"),
        );
        spec.stop_grace = Duration::from_millis(400);
        supervisor.start(spec).await.unwrap();
        pids.insert(
            name,
            pid_of(&fx, &supervisor, name, &format!("{name}.pid")).await,
        );
    }
    let names: Vec<String> = supervisor.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["web", "worker-a", "worker-b"], "sorted by name");

    let started = Instant::now();
    within("stop_all", 5, supervisor.stop_all()).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400));
    // One after the other would take 1.2 s.
    assert!(elapsed < Duration::from_millis(1100), "{elapsed:?}");
    for (name, pid) in pids {
        assert!(!running(pid), "{name} survived stop_all");
        assert_eq!(status_of(&supervisor, name).state, ProcessState::Stopped);
    }
    // Stopping what is not running does nothing.
    within("stop", 1, supervisor.stop("web")).await;
    within("stop", 1, supervisor.stop("never-started")).await;
    assert!(supervisor.forget("web"));
    assert!(!supervisor.forget("web"));
    assert_eq!(supervisor.status().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_reports_unusable_names_and_unstartable_commands() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    let bad_name = supervisor.start(fx.spec("../web", "true")).await;
    assert!(matches!(bad_name, Err(SupervisorError::InvalidName { .. })));

    let mut spec = fx.spec("web", "true");
    spec.sandbox.app = Path::new("/nonexistent/app").to_owned();
    let missing_dir = supervisor.start(spec).await;
    assert!(
        matches!(missing_dir, Err(SupervisorError::Spawn { .. })),
        "{missing_dir:?}"
    );
    assert!(supervisor.status().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_supervisor_ends_its_processes() {
    let fx = Fixture::new();
    let supervisor = Supervisor::new(LogLimits::default(), init());
    let mut spec = fx.spec("web", "echo $$ > pid; exec sleep 1000");
    spec.stop_grace = Duration::from_millis(200);
    supervisor.start(spec).await.unwrap();
    let pid = pid_of(&fx, &supervisor, "web", "pid").await;
    drop(supervisor);
    wait_for("the process to end", 5, || (!running(pid)).then_some(())).await;
}
