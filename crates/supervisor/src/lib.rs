//! Runs pushed code, always in its [`Sandbox`]: an app release's web process and workers
//! (long-running, restarted whenever they exit) through [`Supervisor`], cron tasks (on a
//! schedule, or on demand) through [`CronRunner`], and commands run to their end (build and
//! deploy hooks, `lockstep ssh`) through [`run_hook`].
//!
//! This crate owns the sandbox, starting, restarting and stopping those processes, capturing
//! their output into rotated log files, and keeping a durable record of every cron run.
//!
//! What it must never do:
//! - run pushed code outside its sandbox, or as root;
//! - leave a process, or anything that process started, running after [`Supervisor::stop`],
//!   [`Supervisor::stop_all`] or [`CronRunner::stop`] returns (the deploy's "nothing runs in
//!   the closed window" invariant rests on this);
//! - start a cron run after [`CronRunner::stop`] was called, until [`CronRunner::start`] is
//!   called again;
//! - run two runs of one cron at once.
//!
//! Every command runs as `/bin/sh -c <command>` in a sandbox whose first process leads a
//! process group of its own, so that signals reach everything it started; a process that
//! leaves the group on purpose (`setsid`) still dies with the sandbox's PID namespace.

mod backoff;
mod cron;
mod error;
mod folders;
mod group;
mod hook;
pub mod init;
mod logs;
mod operator_env;
mod ports;
mod process;
mod runs;
mod runtimes;
mod sandbox;
mod schedule;
mod spawn;

pub use cron::{CronRunner, CronSpec};
pub use error::SupervisorError;
pub use folders::{copy_tree, ensure_folder, give_tree, tree_bytes};
pub use hook::{Cancel, HookFailure, HookSpec, run_hook};
pub use logs::{LogLimits, read_log};
pub use operator_env::OperatorEnv;
pub use ports::{free_listen_port, free_listen_ports};
pub use process::{ProcessSpec, ProcessState, ProcessStatus, Supervisor};
pub use runs::{CronOutcome, CronRun};
pub use runtimes::{HostRuntimes, Runtime, RuntimeError, resolve as resolve_runtime};
pub use sandbox::{
    APP_ROOT, APP_USER, RUNTIME_BIN, RunAs, Sandbox, SandboxError, SandboxInit, app_env, app_path,
    check_installed, end_leftovers, give_folder,
};
pub use schedule::{check_schedule, next_run};
