//! Helpers shared by the integration tests: waiting for events with a deadline, and asking
//! whether a process still runs.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;

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
