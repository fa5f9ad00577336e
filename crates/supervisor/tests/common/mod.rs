//! Helpers shared by the integration tests: a sandbox in a temporary folder, waiting for
//! events with a deadline, and asking whether a process still runs.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lockstep_supervisor::{RunAs, Sandbox, SandboxInit, give_folder};
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// A sandbox whose `/app` is a temporary folder that the code may write, run by the test
/// user (`nobody` when the tests run as root).
pub struct Fixture {
    pub home: tempfile::TempDir,
    pub sandbox: Sandbox,
    pub logs: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let home = tempfile::tempdir().unwrap();
        let user = RunAs::unprivileged();
        let app = home.path().join("app");
        give_folder(&app, user).unwrap();
        let mut sandbox = Sandbox::prepare(app, home.path(), user, owner()).unwrap();
        sandbox.app_writable = true;
        let logs = home.path().join("logs");
        Fixture {
            home,
            sandbox,
            logs,
        }
    }

    /// A file of the app folder, as the host sees it.
    pub fn path(&self, file: &str) -> PathBuf {
        self.sandbox.app.join(file)
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }
}

/// The sandbox's init, as this crate builds it.
pub fn init() -> SandboxInit {
    SandboxInit {
        program: env!("CARGO_BIN_EXE_lockstep-sandbox-init").into(),
        args: Vec::new(),
    }
}

/// A sandbox owner of its own for each fixture, so that ending one test's leftovers never
/// touches another test's sandboxes.
pub fn owner() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("supervisor-test-{}-{n}", std::process::id())
}

/// The host's pid of the process that sees itself as `inner` in the sandbox led by `leader`
/// (scripts write `$$`, which is their pid inside the sandbox's PID namespace).
pub fn host_pid(leader: u32, inner: i32) -> i32 {
    let entries = std::fs::read_dir("/proc").unwrap();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let seen_inside = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|ids| ids.split_whitespace().last()?.parse::<i32>().ok());
        if seen_inside == Some(inner) && pid != inner && descends_from(pid, leader as i32) {
            return pid;
        }
    }
    panic!("no process {inner} in the sandbox of {leader}");
}

/// Host pids of running processes whose command line is `command` (tests give their processes
/// unique arguments: `sleep 1003`).
pub fn running_with(command: &str) -> Vec<i32> {
    let entries = std::fs::read_dir("/proc").unwrap();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let words: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .map(|w| String::from_utf8_lossy(w).into_owned())
                    .collect();
                words.join(" ").trim_end() == command
            })
        })
        .filter(|pid| running(*pid))
        .collect()
}

fn descends_from(mut pid: i32, ancestor: i32) -> bool {
    while pid > 1 {
        if pid == ancestor {
            return true;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return false;
        };
        pid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
    }
    false
}

/// A minimal environment: commands need PATH to find `sleep`, `id`, `env`.
pub fn env() -> BTreeMap<String, String> {
    BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())])
}

/// Polls `check` until it gives a value, failing the test after `secs` seconds.
pub async fn wait_for<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `path` holds at least one complete line, and returns its content.
pub async fn wait_for_file(path: &Path) -> String {
    wait_for(&format!("{}", path.display()), 5, || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|text| text.ends_with('\n'))
    })
    .await
}

/// Waits for a file holding a pid, as the test scripts write them (`echo $$ > file`).
pub async fn wait_for_pid(path: &Path) -> i32 {
    wait_for_file(path)
        .await
        .trim()
        .parse()
        .expect("the file holds a pid")
}

/// Waits until the file holds `needle`, returning the whole content.
pub async fn wait_for_text(path: &Path, needle: &str) -> String {
    wait_for(&format!("{needle:?} in {}", path.display()), 5, || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|text| text.contains(needle))
    })
    .await
}

/// Whether `pid` is a running process. kill(pid, 0) also succeeds on a zombie, and an orphan
/// whose reaper (PID 1 on this kind of machine) never reaps stays one forever: a zombie runs
/// nothing, so it counts as gone.
pub fn running(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').map_or(0, |i| i + 1)..]
            .split_whitespace()
            .next()
            .unwrap_or("");
        state != "Z" && state != "X"
    })
}

/// Bounds a future so that a missing feature (a stop that never returns) fails the test.
pub async fn within<T>(what: &str, secs: u64, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {secs} s"))
}
