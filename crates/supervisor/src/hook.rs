//! Running a command to its end in its sandbox: build hooks, deploy hooks, `lockstep ssh`.
//! Its output is streamed line by line, and its whole sandbox is killed at the timeout, on
//! cancel, or when it ends, so nothing it started outlives it.
//!
//! Runs on the calling thread, which it blocks: the sandbox dies with the thread that started
//! it (`--die-with-parent`), so that thread must live until the command ends.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::process::lock;
use crate::sandbox::Sandbox;

/// Lines of output kept for the failure report; the rest was streamed as it came.
const KEPT_LINES: usize = 40;
/// A line longer than this is cut, so a hook printing without newlines cannot exhaust memory.
const MAX_LINE_BYTES: usize = 16 * 1024;

pub struct HookSpec {
    /// Run with `/bin/sh -c` in `/app` of the sandbox.
    pub script: String,
    pub sandbox: Sandbox,
    /// The whole environment: the hook inherits nothing else.
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Lets another thread end the hook before its end.
    pub cancel: Cancel,
    /// What it reads as its standard input (none when `None`), and where its standard output
    /// goes instead of its lines (a stream of data; its standard error still gives the lines).
    /// The spec keeps its own copies until it is dropped.
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
}

/// Ends a running hook from elsewhere (`lockstep activity cancel`). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<Mutex<CancelState>>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: bool,
    /// The hook's sandbox while it runs.
    group: Option<Pid>,
}

impl Cancel {
    /// Kills the hook's sandbox if it runs, and keeps it from starting if it does not yet.
    pub fn cancel(&self) {
        let mut state = lock(&self.0);
        state.cancelled = true;
        if let Some(group) = state.group {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        lock(&self.0).cancelled
    }

    /// Records the running group; kills it at once if a cancel came first.
    fn running(&self, group: Option<Pid>) {
        let mut state = lock(&self.0);
        state.group = group;
        if let (true, Some(group)) = (state.cancelled, group) {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookFailure {
    #[error("cannot start the hook: {0}")]
    Spawn(std::io::Error),
    #[error("the hook was cancelled")]
    Cancelled { last_lines: Vec<String> },
    #[error("the hook failed with {status}")]
    Exited {
        status: ExitStatus,
        last_lines: Vec<String>,
    },
    #[error("the hook was stopped after its timeout of {} s", timeout.as_secs())]
    TimedOut {
        timeout: Duration,
        last_lines: Vec<String>,
    },
}

impl HookFailure {
    pub fn last_lines(&self) -> &[String] {
        match self {
            HookFailure::Spawn(_) => &[],
            HookFailure::Exited { last_lines, .. }
            | HookFailure::TimedOut { last_lines, .. }
            | HookFailure::Cancelled { last_lines } => last_lines,
        }
    }
}

enum Event {
    Line(String),
    OutputClosed,
    Exited(std::io::Result<ExitStatus>),
}

/// Runs `spec.script` in its sandbox, its stdout (unless `spec.stdout` takes it) and stderr
/// merged and passed to `on_line`; returns how long it ran.
pub fn run_hook(spec: &HookSpec, on_line: &mut dyn FnMut(&str)) -> Result<Duration, HookFailure> {
    let started = Instant::now();
    if spec.cancel.is_cancelled() {
        return Err(HookFailure::Cancelled {
            last_lines: Vec::new(),
        });
    }
    let (reader, writer) = std::io::pipe().map_err(HookFailure::Spawn)?;
    let mut command = spec
        .sandbox
        .command(&spec.script, &spec.env)
        .map_err(|e| HookFailure::Spawn(e.into()))?;
    let stdout = match &spec.stdout {
        Some(data) => Stdio::from(data.try_clone().map_err(HookFailure::Spawn)?),
        None => Stdio::from(writer.try_clone().map_err(HookFailure::Spawn)?),
    };
    command.stdout(stdout).stderr(writer);
    if let Some(input) = &spec.stdin {
        command.stdin(input.try_clone().map_err(HookFailure::Spawn)?);
    }
    let mut child = command.spawn().map_err(HookFailure::Spawn)?;
    // Our copies of the pipe's write end must go, or the reader would never see its end.
    drop(command);
    let group = Pid::from_raw(child.id() as i32);
    spec.cancel.running(Some(group));

    let (events, inbox) = mpsc::channel();
    let line_events = events.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match (&mut reader)
                .take(MAX_LINE_BYTES as u64)
                .read_until(b'\n', &mut buffer)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer);
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    if line_events.send(Event::Line(line)).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = line_events.send(Event::OutputClosed);
    });
    std::thread::spawn(move || {
        let _ = events.send(Event::Exited(child.wait()));
    });

    let deadline = started + spec.timeout;
    let mut last_lines = VecDeque::with_capacity(KEPT_LINES);
    let mut status = None;
    let mut output_open = true;
    let mut timed_out = false;
    while status.is_none() || output_open {
        let event = if timed_out || status.is_some() {
            inbox.recv().ok()
        } else {
            match inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(event) => Some(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    let _ = killpg(group, Signal::SIGKILL);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            }
        };
        match event {
            Some(Event::Line(line)) => {
                on_line(&line);
                if last_lines.len() == KEPT_LINES {
                    last_lines.pop_front();
                }
                last_lines.push_back(line);
            }
            Some(Event::OutputClosed) => output_open = false,
            Some(Event::Exited(result)) => {
                // Whatever the hook left running in the background goes with it.
                let _ = killpg(group, Signal::SIGKILL);
                status = Some(result.map_err(HookFailure::Spawn)?);
            }
            None => break,
        }
    }
    spec.cancel.running(None);
    let last_lines = Vec::from(last_lines);
    if spec.cancel.is_cancelled() {
        return Err(HookFailure::Cancelled { last_lines });
    }
    if timed_out {
        return Err(HookFailure::TimedOut {
            timeout: spec.timeout,
            last_lines,
        });
    }
    match status {
        Some(status) if status.success() => Ok(started.elapsed()),
        Some(status) => Err(HookFailure::Exited { status, last_lines }),
        None => Err(HookFailure::Spawn(std::io::Error::other(
            "the hook vanished",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(home: &tempfile::TempDir, script: &str, timeout: Duration) -> HookSpec {
        let sandbox = crate::sandbox::writable_test_sandbox(home.path());
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), "/usr/bin:/bin".into());
        env.insert("GREETING".into(), "hi".into());
        HookSpec {
            script: script.into(),
            sandbox,
            env,
            timeout,
            cancel: Cancel::default(),
            stdin: None,
            stdout: None,
        }
    }

    #[test]
    fn streams_both_outputs_in_order_and_sees_only_its_environment() {
        let home = tempfile::tempdir().unwrap();
        let mut lines = Vec::new();
        let script = "echo one; echo two >&2; echo \"$GREETING ${HOME:-unset} $(pwd)\"";
        run_hook(&spec(&home, script, Duration::from_secs(30)), &mut |l| {
            lines.push(l.to_owned())
        })
        .expect("hook succeeds");
        assert_eq!(lines, ["one", "two", "hi unset /app"]);
    }

    #[test]
    fn a_hook_reads_its_input_and_writes_its_data_apart_from_its_lines() {
        use std::io::Write;
        let home = tempfile::tempdir().unwrap();
        let (input_reader, mut input) = std::io::pipe().unwrap();
        let (mut output, output_writer) = std::io::pipe().unwrap();
        let mut spec = spec(
            &home,
            "tr a-z A-Z; echo done; echo said >&2",
            Duration::from_secs(30),
        );
        spec.stdin = Some(input_reader.into());
        spec.stdout = Some(output_writer.into());
        input.write_all(b"snapshot").unwrap();
        drop(input);
        let mut lines = Vec::new();
        run_hook(&spec, &mut |l| lines.push(l.to_owned())).expect("hook succeeds");
        drop(spec);
        let mut data = String::new();
        output.read_to_string(&mut data).unwrap();
        assert_eq!(data, "SNAPSHOTdone\n");
        assert_eq!(lines, ["said"]);
    }

    #[test]
    fn a_failing_hook_reports_its_status_and_last_lines() {
        let home = tempfile::tempdir().unwrap();
        let failure = run_hook(
            &spec(&home, "echo broken; exit 3", Duration::from_secs(30)),
            &mut |_| {},
        )
        .expect_err("hook fails");
        assert!(matches!(&failure, HookFailure::Exited { status, .. } if status.code() == Some(3)));
        assert_eq!(failure.last_lines(), ["broken"]);
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let home = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let failure = run_hook(
            &spec(
                &home,
                "echo started; sleep 30 & sleep 30",
                Duration::from_millis(500),
            ),
            &mut |_| {},
        )
        .expect_err("hook times out");
        assert!(matches!(failure, HookFailure::TimedOut { .. }));
        assert_eq!(failure.last_lines(), ["started"]);
        // The background sleep held the pipe open too: returning at all proves it was killed.
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn background_processes_do_not_outlive_a_successful_hook() {
        let home = tempfile::tempdir().unwrap();
        // Even one that left the hook's process group: the sandbox's PID namespace ends with
        // the hook.
        let outcome = run_hook(
            &spec(
                &home,
                "setsid sleep 30 & sleep 30 & echo done",
                Duration::from_secs(30),
            ),
            &mut |_| {},
        );
        assert!(outcome.is_ok());
    }

    #[test]
    fn a_cancelled_hook_ends_at_once_and_says_so() {
        let home = tempfile::tempdir().unwrap();
        let spec = spec(&home, "echo started; sleep 30", Duration::from_secs(60));
        let cancel = spec.cancel.clone();
        let started = Instant::now();
        let failure = run_hook(&spec, &mut |line| {
            if line == "started" {
                cancel.cancel();
            }
        })
        .expect_err("hook is cancelled");
        assert!(
            matches!(failure, HookFailure::Cancelled { .. }),
            "{failure}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        // A cancelled hook never starts again.
        let again = run_hook(&spec, &mut |_| {}).expect_err("still cancelled");
        assert!(matches!(again, HookFailure::Cancelled { .. }));
    }
}
