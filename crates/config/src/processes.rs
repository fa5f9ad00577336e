//! `workers` and `crons` in `.platform.app.yaml`: the app's processes besides the web one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cron_spec;
use crate::decode::{self, Keys};
use crate::diagnostic::FileReport;
use crate::yaml::Node;

/// Platform.sh's limit, and the default when a cron does not set one.
pub const MAX_CRON_TIMEOUT_SECS: u64 = 86_400;
pub const DEFAULT_CRON_SHUTDOWN_TIMEOUT_SECS: u64 = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub start: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cron {
    pub spec: String,
    pub start: String,
    pub stop: Option<String>,
    pub shutdown_timeout_secs: u64,
    pub timeout_secs: u64,
}

const COMMAND_KEYS: Keys = Keys::only(&["start"]);
const WORKER_KEYS: Keys = Keys {
    supported: &["commands"],
    ignored: &["size", "resources", "disk"],
    unsupported: &[
        (
            "mounts",
            "workers share the app's mounts on Lockstep; declare mounts at the top level",
        ),
        (
            "relationships",
            "workers share the app's relationships on Lockstep; declare them at the top level",
        ),
        (
            "variables",
            "workers share the app's variables on Lockstep; declare them at the top level",
        ),
    ],
};
const CRON_KEYS: Keys = Keys::only(&["spec", "commands", "shutdown_timeout", "timeout"]);
const CRON_COMMAND_KEYS: Keys = Keys::only(&["start", "stop"]);

pub(crate) fn read_workers(
    report: &mut FileReport<'_>,
    node: &Node,
) -> Option<BTreeMap<String, Worker>> {
    let mut workers = BTreeMap::new();
    let mut ok = true;
    for (name, body) in decode::mapping(report, node, "workers")? {
        ok &= decode::check_name(report, name, "worker");
        let path = format!("workers.{}", name.name);
        let help = "a worker needs a command, such as `commands: {start: python3 worker.py}`";
        let worker = decode::fields(report, body, &path, &WORKER_KEYS);
        let commands_path = format!("{path}.commands");
        let start = decode::section(report, &worker, &path, "commands", &COMMAND_KEYS, help)
            .and_then(|commands| decode::required(report, &commands, &commands_path, "start", help))
            .and_then(|n| decode::text(report, n, &format!("{commands_path}.start")));
        match start {
            Some(start) => {
                workers.insert(name.name.clone(), Worker { start });
            }
            None => ok = false,
        }
    }
    ok.then_some(workers)
}

pub(crate) fn read_crons(
    report: &mut FileReport<'_>,
    node: &Node,
) -> Option<BTreeMap<String, Cron>> {
    let mut crons = BTreeMap::new();
    let mut ok = true;
    for (name, body) in decode::mapping(report, node, "crons")? {
        ok &= decode::check_name(report, name, "cron");
        match read_cron(report, body, &format!("crons.{}", name.name)) {
            Some(cron) => {
                crons.insert(name.name.clone(), cron);
            }
            None => ok = false,
        }
    }
    ok.then_some(crons)
}

fn read_cron(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<Cron> {
    let cron = decode::fields(report, node, path, &CRON_KEYS);
    let spec = decode::required(
        report,
        &cron,
        path,
        "spec",
        "for example `spec: \"*/5 * * * *\"`",
    )
    .and_then(|n| read_spec(report, n, &format!("{path}.spec")));
    let commands_path = format!("{path}.commands");
    let help = "a cron needs a command, such as `commands: {start: python3 cron.py}`";
    let commands = decode::section(report, &cron, path, "commands", &CRON_COMMAND_KEYS, help);
    let start = commands.as_ref().and_then(|commands| {
        decode::required(report, commands, &commands_path, "start", help)
            .and_then(|n| decode::text(report, n, &format!("{commands_path}.start")))
    });
    let stop = match &commands {
        None => None,
        Some(commands) => commands.read_opt("stop", |n| {
            decode::text(report, n, &format!("{commands_path}.stop"))
        }),
    };
    let mut seconds = |key: &str, min: i64, default: u64| {
        cron.read_or(key, default, |n| {
            let range = min..=MAX_CRON_TIMEOUT_SECS as i64;
            decode::integer(report, n, &format!("{path}.{key}"), range, "seconds").map(|s| s as u64)
        })
    };
    let shutdown_timeout_secs = seconds("shutdown_timeout", 0, DEFAULT_CRON_SHUTDOWN_TIMEOUT_SECS);
    let timeout_secs = seconds("timeout", 1, MAX_CRON_TIMEOUT_SECS);
    Some(Cron {
        spec: spec?,
        start: start?,
        stop: stop?,
        shutdown_timeout_secs: shutdown_timeout_secs?,
        timeout_secs: timeout_secs?,
    })
}

fn read_spec(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<String> {
    let spec = decode::text(report, node, path)?;
    if let Err(problem) = cron_spec::check(&spec) {
        report.error(
            node.span,
            format!("`{path}` is not a valid cron spec: {}", problem.what),
            Some(problem.help),
        );
        return None;
    }
    Some(spec)
}
