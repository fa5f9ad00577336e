//! Starting one command in its sandbox, with output into a pipe that a task copies into a log.

use std::collections::BTreeMap;
use std::io;

use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::group::ProcessGroup;
use crate::logs::{SharedLog, pump};
use crate::sandbox::{Sandbox, SandboxInit};

/// What to run, and in which sandbox, under which init.
pub(crate) struct CommandSpec<'a> {
    pub command: &'a str,
    pub sandbox: &'a Sandbox,
    pub env: &'a BTreeMap<String, String>,
    pub init: &'a SandboxInit,
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

    let mut command = spec
        .sandbox
        .command_with_init(spec.command, spec.env, spec.init)?;
    command.stdout(stdout).stderr(stderr);
    let mut command = Command::from(command);
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
