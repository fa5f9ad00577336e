//! Running a shell hook with a given environment: its output streamed line by line, its whole
//! process group killed at the timeout or when it ends, so nothing it started outlives it.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Lines of output kept for the failure report; the rest was streamed as it came.
const KEPT_LINES: usize = 40;
/// A line longer than this is cut, so a hook printing without newlines cannot exhaust memory.
const MAX_LINE_BYTES: usize = 16 * 1024;

pub struct HookSpec {
    pub script: String,
    pub dir: PathBuf,
    /// The whole environment: the hook inherits nothing else.
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Run as this uid and gid (std clears the supplementary groups when root drops them).
    pub run_as: Option<(u32, u32)>,
}

#[derive(Debug)]
pub struct HookOutcome {
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HookFailure {
    #[error("cannot start the hook: {0}")]
    Spawn(std::io::Error),
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
            HookFailure::Exited { last_lines, .. } | HookFailure::TimedOut { last_lines, .. } => {
                last_lines
            }
        }
    }
}

enum Event {
    Line(String),
    OutputClosed,
    Exited(std::io::Result<ExitStatus>),
}

/// Runs `spec.script` with `sh -c`, its stdout and stderr merged and passed to `on_line`.
pub fn run_hook(
    spec: &HookSpec,
    on_line: &mut dyn FnMut(&str),
) -> Result<HookOutcome, HookFailure> {
    let started = Instant::now();
    let (reader, writer) = std::io::pipe().map_err(HookFailure::Spawn)?;
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&spec.script)
        .current_dir(&spec.dir)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(HookFailure::Spawn)?)
        .stderr(writer);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    if let Some((uid, gid)) = spec.run_as {
        std::os::unix::process::CommandExt::uid(&mut command, uid);
        std::os::unix::process::CommandExt::gid(&mut command, gid);
    }
    let mut child = command.spawn().map_err(HookFailure::Spawn)?;
    // Our copies of the pipe's write end must go, or the reader would never see its end.
    drop(command);
    let group = Pid::from_raw(child.id() as i32);

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
    let last_lines = Vec::from(last_lines);
    if timed_out {
        return Err(HookFailure::TimedOut {
            timeout: spec.timeout,
            last_lines,
        });
    }
    match status {
        Some(status) if status.success() => Ok(HookOutcome {
            duration: started.elapsed(),
        }),
        Some(status) => Err(HookFailure::Exited { status, last_lines }),
        None => Err(HookFailure::Spawn(std::io::Error::other(
            "the hook vanished",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str, timeout: Duration) -> HookSpec {
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), "/usr/bin:/bin".into());
        env.insert("GREETING".into(), "hi".into());
        HookSpec {
            script: script.into(),
            dir: std::env::temp_dir(),
            env,
            timeout,
            run_as: None,
        }
    }

    #[test]
    fn streams_both_outputs_in_order_and_sees_only_its_environment() {
        let mut lines = Vec::new();
        let script = "echo one; echo two >&2; echo \"$GREETING ${HOME:-unset}\"";
        run_hook(&spec(script, Duration::from_secs(30)), &mut |l| {
            lines.push(l.to_owned())
        })
        .expect("hook succeeds");
        assert_eq!(lines, ["one", "two", "hi unset"]);
    }

    #[test]
    fn a_failing_hook_reports_its_status_and_last_lines() {
        let failure = run_hook(
            &spec("echo broken; exit 3", Duration::from_secs(30)),
            &mut |_| {},
        )
        .expect_err("hook fails");
        assert!(matches!(&failure, HookFailure::Exited { status, .. } if status.code() == Some(3)));
        assert_eq!(failure.last_lines(), ["broken"]);
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let started = Instant::now();
        let failure = run_hook(
            &spec(
                "echo started; sleep 30 & sleep 30",
                Duration::from_millis(300),
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
        let outcome = run_hook(
            &spec("sleep 30 & echo done", Duration::from_secs(30)),
            &mut |_| {},
        );
        assert!(outcome.is_ok());
    }
}
