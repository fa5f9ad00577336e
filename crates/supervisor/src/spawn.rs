//! Starting one command: `/bin/sh -c`, exact environment, own process group, dropped
//! privileges, output into a pipe that a task copies into a log.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::process::Stdio;

use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::group::ProcessGroup;
use crate::logs::{SharedLog, pump};

/// The user and group a command runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// What to run, and where and as whom.
pub(crate) struct CommandSpec<'a> {
    pub command: &'a str,
    pub dir: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    pub run_as: Option<RunAs>,
}

/// A started command: its process group, and the task copying its output into its log. The
/// task ends once every process holding the pipe has exited.
pub(crate) struct Spawned {
    pub group: ProcessGroup,
    pub output: JoinHandle<()>,
}

pub(crate) fn spawn(spec: &CommandSpec<'_>, log: SharedLog) -> io::Result<Spawned> {
    // One pipe for both stdout and stderr keeps their lines in the order they were written.
    let (writer, reader) = pipe::pipe()?;
    let stdout = writer.into_blocking_fd()?;
    let stderr = stdout.try_clone()?;

    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(spec.command)
        .env_clear()
        .envs(spec.env)
        .current_dir(spec.dir)
        // Its own group, so that a signal to the group reaches everything the command
        // started, and so that a Ctrl-C aimed at the agent's terminal does not reach it.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if let Some(run_as) = spec.run_as {
        // std calls setgroups(0) before setuid when it sets a uid without explicit groups (and
        // the caller may), so the child keeps no supplementary group of the agent's (root's).
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let child = command.spawn()?;
    // The command holds our copies of the pipe's write end; they must be closed for the
    // reader to see end-of-file once the child's group is gone.
    drop(command);
    let group = ProcessGroup::new(child)?;
    let output = tokio::spawn(pump(reader, log));
    Ok(Spawned { group, output })
}

/// Waits a little for an output task to copy what is left in its pipe.
///
/// Once the group is gone the pipe is closed and this is quick. A process that left the group
/// (`setsid`) may still hold the pipe; the task is then left to finish on its own rather
/// than blocking a stop.
pub(crate) async fn finish_output(output: JoinHandle<()>) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), output).await;
}
