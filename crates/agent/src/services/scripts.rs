//! An engine's scripts (making a data folder, making users, asking how a replica follows), run
//! to their end in the service's sandbox, with only the variables they need.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_supervisor::{Cancel, HookSpec, Sandbox};

use crate::error::AgentError;

/// A script that has not ended by then is ended.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// As [`SCRIPT_TIMEOUT`], for a script that streams a snapshot.
const STREAM_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where a script's output goes.
pub(super) enum Output {
    /// Appended to the service's log.
    Log(PathBuf),
    /// Back to the caller alone.
    Return,
}

/// What a script reads as its standard input, and where its standard output goes instead of
/// its lines: a snapshot, streamed.
#[derive(Default)]
pub(super) struct Data {
    pub input: Option<OwnedFd>,
    pub output: Option<OwnedFd>,
}

/// Runs `script`, the `step` of service `service`, to its end in `sandbox` with exactly `env`;
/// its output lines.
pub(super) async fn run(
    service: &str,
    step: &str,
    script: &str,
    sandbox: &Sandbox,
    env: BTreeMap<String, String>,
    output: Output,
) -> Result<Vec<String>, AgentError> {
    run_with_data(service, step, script, sandbox, env, output, Data::default()).await
}

/// [`run`], with `data` as the script's input or output; the script's ends of `data` close
/// when it has ended.
pub(super) async fn run_with_data(
    service: &str,
    step: &str,
    script: &str,
    sandbox: &Sandbox,
    env: BTreeMap<String, String>,
    output: Output,
    data: Data,
) -> Result<Vec<String>, AgentError> {
    let spec = HookSpec {
        script: script.to_owned(),
        sandbox: sandbox.clone(),
        env,
        // A snapshot streams as fast as its reader takes it: a gigabyte's may take a while.
        timeout: if data.input.is_some() || data.output.is_some() {
            STREAM_TIMEOUT
        } else {
            SCRIPT_TIMEOUT
        },
        cancel: Cancel::default(),
        stdin: data.input,
        stdout: data.output,
    };
    let (service, step) = (service.to_owned(), step.to_owned());
    let what = step.clone();
    tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let outcome = lockstep_supervisor::run_hook(&spec, &mut |line| lines.push(line.to_owned()));
        // The data's other end sees its end now, not when the task is gone.
        drop(spec);
        if let Output::Log(log) = &output {
            append_lines(log, &lines);
        }
        let last = lines[lines.len().saturating_sub(10)..].join("\n");
        outcome.map(|_| lines).map_err(|failure| {
            AgentError::Refused(format!(
                "the {step} step of service {service} failed: {failure}. Its last output:\n{last}"
            ))
        })
    })
    .await
    .map_err(|error| {
        AgentError::Refused(format!("the {what} step of a service panicked: {error}"))
    })?
}

/// The environment a service's server and scripts start from.
pub(super) fn service_env() -> BTreeMap<String, String> {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", lockstep_supervisor::APP_ROOT),
        ("USER", lockstep_supervisor::APP_USER),
        ("LANG", "C.UTF-8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn append_lines(log: &Path, lines: &[String]) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        for line in lines {
            let _ = writeln!(file, "{line}");
        }
    }
}
