//! Runs an app release's processes on a node: the web process and workers (long-running,
//! restarted whenever they exit) through [`Supervisor`], and cron tasks (on a schedule, or on
//! demand) through [`CronRunner`].
//!
//! This crate owns starting, restarting and stopping those processes, capturing their output
//! into rotated log files, and keeping a durable record of every cron run.
//!
//! What it must never do:
//! - leave a process, or anything that process started in its process group, running after
//!   [`Supervisor::stop`], [`Supervisor::stop_all`] or [`CronRunner::stop`] returns (the deploy's
//!   "nothing runs in the closed window" invariant rests on this);
//! - start a cron run after [`CronRunner::stop`] was called, until [`CronRunner::start`] is
//!   called again;
//! - run two runs of one cron at once.
//!
//! Every command runs as `/bin/sh -c <command>` in its own process group, so that signals reach
//! everything it started; a process that leaves its group on purpose (`setsid`) escapes this,
//! which only a cgroup could prevent.

mod backoff;
mod cron;
mod error;
mod group;
mod logs;
mod process;
mod runs;
mod schedule;
mod spawn;

pub use cron::{CronRunner, CronSpec};
pub use error::SupervisorError;
pub use logs::{LogLimits, read_log};
pub use process::{ProcessSpec, ProcessState, ProcessStatus, Supervisor};
pub use runs::{CronOutcome, CronRun};
pub use schedule::{check_schedule, next_run};
pub use spawn::RunAs;
