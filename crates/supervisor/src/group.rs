//! A process group led by a child of ours, a sandbox's first process: waiting for it, and
//! ending all of it.

use std::collections::HashSet;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::Child;

/// How long to wait for a group to vanish after SIGKILL before giving up on it. SIGKILL cannot
/// be caught, but a process stuck in uninterruptible I/O only dies once that I/O ends, and a
/// stop must return eventually.
const AFTER_KILL: Duration = Duration::from_secs(10);

/// A child started with `process_group(0)`, so its pid is also its group's id.
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    child: Child,
    pid: u32,
    pgid: Pid,
    status: Option<ExitStatus>,
    /// Set once the group is known to be empty; until then dropping this kills the group.
    gone: bool,
}

impl ProcessGroup {
    pub(crate) fn new(child: Child) -> io::Result<Self> {
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the child exited before its pid was read"))?;
        let pgid = Pid::from_raw(
            i32::try_from(pid).map_err(|_| io::Error::other("pid does not fit in pid_t"))?,
        );
        Ok(ProcessGroup {
            child,
            pid,
            pgid,
            status: None,
            gone: false,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The leader's exit status, once it has been waited for.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Waits for the leader (the shell) to exit. Cancel-safe.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.status = Some(status);
        Ok(status)
    }

    /// Ends the whole group: SIGTERM to the sandboxed processes, then SIGKILL to the whole group
    /// if anything is left after `grace`. Returns
    /// once the leader has been reaped and no process of the group is running (or, in the
    /// worst case, [`AFTER_KILL`] after the SIGKILL). Nothing is signalled if the group is
    /// already empty.
    pub(crate) async fn terminate(&mut self, grace: Duration) {
        if self.gone {
            return;
        }
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status);
        }
        if self.status.is_some() && !group_has_live_members(self.pgid) {
            self.gone = true;
            return;
        }
        // A sandbox still starting has nothing inside to signal yet (bubblewrap has not started
        // its init): whatever starts during the grace is told too, so that a stop right after a
        // start does not last the whole grace.
        let mut signalled = HashSet::new();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            self.signal_sandboxed(Signal::SIGTERM, &mut signalled);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let look_again = left.min(Duration::from_millis(100));
            if tokio::time::timeout(look_again, self.wait_gone())
                .await
                .is_ok()
            {
                return;
            }
        }
        tracing::info!(
            pgid = self.pid,
            grace_ms = grace.as_millis() as u64,
            "process group still running after SIGTERM; sending SIGKILL"
        );
        self.signal(Signal::SIGKILL);
        if tokio::time::timeout(AFTER_KILL, self.wait_gone())
            .await
            .is_err()
        {
            tracing::error!(
                pgid = self.pid,
                "process group still has running processes {} s after SIGKILL",
                AFTER_KILL.as_secs()
            );
        }
    }

    /// Signals the processes inside the sandbox, never bubblewrap outside it (the leader),
    /// whose death would end them all at once with no grace. The first process inside (the
    /// leader's child: the sandbox's init) is signalled first, so that it knows a stop has begun
    /// before the command's shell dies of it.
    /// Processes in `signalled` are left alone; those signalled now join it.
    fn signal_sandboxed(&self, signal: Signal, signalled: &mut HashSet<i32>) {
        let leader = self.pgid.as_raw();
        let mut members: Vec<Member> = group_members(self.pgid)
            .into_iter()
            .filter(|member| member.pid != leader && signalled.insert(member.pid))
            .collect();
        members.sort_by_key(|member| member.ppid != leader);
        for member in members {
            match kill(Pid::from_raw(member.pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    tracing::warn!(pid = member.pid, %signal, error = %e, "signalling a process failed")
                }
            }
        }
    }

    fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = self.pid, %signal, error = %e, "signalling a process group failed")
            }
        }
    }

    /// Reaps the leader, then waits until no process of the group runs.
    async fn wait_gone(&mut self) {
        if let Err(e) = self.wait().await {
            tracing::warn!(pid = self.pid, error = %e, "waiting for a process failed");
        }
        // Nothing notifies us when the last member of a group exits (they are not our
        // children), so look, often at first and then less often.
        let mut interval = Duration::from_millis(5);
        while group_has_live_members(self.pgid) {
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_millis(100));
        }
        self.gone = true;
    }
}

impl Drop for ProcessGroup {
    /// A group dropped without being ended (its task aborted, the runtime shutting down) must
    /// not keep running unsupervised.
    fn drop(&mut self) {
        if !self.gone {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Whether any process of group `pgid` is still running.
///
/// kill(2) also counts zombies, and an orphaned child of the command is reparented to PID 1
/// (or a subreaper): if that never reaps, the zombie would hold the group "alive" forever.
/// So when kill(2) finds the group, /proc says whether any member is more than a zombie.
fn group_has_live_members(pgid: Pid) -> bool {
    // Any other answer (EPERM: a member we may not signal) means the group exists.
    if let Err(Errno::ESRCH) = killpg(pgid, None) {
        return false;
    }
    if std::fs::metadata("/proc/self/stat").is_err() {
        return true;
    }
    !group_members(pgid).is_empty()
}

/// A running process, as /proc tells it.
#[derive(Debug, PartialEq, Eq)]
struct Member {
    pid: i32,
    ppid: i32,
}

/// The processes of group `pgid` that are more than zombies.
fn group_members(pgid: Pid) -> Vec<Member> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            // A process may exit between listing and reading; it is then not running.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, ppid, pgrp) = parse_stat(&stat)?;
            (pgrp == pgid.as_raw() && state != 'Z' && state != 'X').then_some(Member { pid, ppid })
        })
        .collect()
}

/// The state letter, parent and process group of a `/proc/<pid>/stat` line. The command name,
/// in parentheses, may itself contain spaces and parentheses, so parsing starts after the last
/// `)`.
fn parse_stat(stat: &str) -> Option<(char, i32, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// How a sandboxed command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Code(i32),
    Signal(i32),
}

/// How the command in a sandbox ended, from the sandbox's exit status. bubblewrap exits with
/// 128 + N when the command was killed by signal N, as shells report it, so such codes count
/// as signals; a sandbox killed itself (SIGKILL after a grace) reports its own signal.
pub(crate) fn ended(status: ExitStatus) -> Option<Ended> {
    match (status.code(), status.signal()) {
        (Some(code), _) if (129..=192).contains(&code) => Some(Ended::Signal(code - 128)),
        (Some(code), _) => Some(Ended::Code(code)),
        (None, Some(signal)) => Some(Ended::Signal(signal)),
        (None, None) => None,
    }
}

/// Describes how a process ended, for statuses and logs: "exited with code 1",
/// "killed by signal 9 (SIGKILL)".
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    match ended(status) {
        Some(Ended::Code(code)) => format!("exited with code {code}"),
        Some(Ended::Signal(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("killed by signal {signal} ({name})"),
            Err(_) => format!("killed by signal {signal}"),
        },
        None => format!("ended: {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_awkward_command_names() {
        assert_eq!(
            parse_stat("123 (sleep) S 1 120 120 0 -1"),
            Some(('S', 1, 120))
        );
        assert_eq!(
            parse_stat("123 (a) b (c) Z 9 77 77 0 -1"),
            Some(('Z', 9, 77))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn describes_exits() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with code 3"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(143 << 8)),
            "killed by signal 15 (SIGTERM)"
        );
    }
}
