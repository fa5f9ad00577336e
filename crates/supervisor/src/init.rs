//! The first process inside the sandbox of a long-running process or a cron run (PID 1 of its
//! PID namespace): it starts `/bin/sh -c COMMAND` and reaps every process of the sandbox
//! (orphans come to PID 1).
//!
//! Why: a stop sends SIGTERM to this init first, then to every other process in the sandbox.
//! The shell running the command dies of it at once, while the program it started
//! (`python3 worker.py`) takes its grace to finish its job. Were the shell the sandbox's first
//! process, its death would end the sandbox and kill the program mid-job. So once this init
//! has been told to stop, it lasts until every process of the sandbox has ended (or the grace
//! is over and the whole sandbox gets SIGKILL). When the command ends on its own instead (a
//! crash), it exits at once, and what the command left dies with the sandbox.
//!
//! Its arguments: `[--user UID:GID] COMMAND`. With `--user` (Lockstep runs as root), it stays
//! root inside, holding only the two capabilities bubblewrap gives it (to change user, not to
//! signal or read anything), and runs the command as that user with `no_new_privs`: as root it
//! keeps the parent-death signal bubblewrap set up, which a change of user would clear, so it
//! dies with bubblewrap. It exits with the command's status, or 128 + the signal that killed
//! it, as shells report it.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::sandbox::RunAs;

/// Runs with the arguments described above; returns the code to exit with.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    let parsed = match args.as_slice() {
        [flag, user, command] if flag == "--user" => parse_user(user).map(|u| (Some(u), command)),
        [command] => Some((None, command)),
        _ => None,
    };
    let Some((user, command)) = parsed else {
        eprintln!("lockstep sandbox init: expected [--user UID:GID] COMMAND");
        return 2;
    };
    match supervise(command, user) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("lockstep sandbox init: {error}");
            127
        }
    }
}

fn parse_user(text: &OsStr) -> Option<RunAs> {
    let (uid, gid) = text.to_str()?.split_once(':')?;
    Some(RunAs {
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
    })
}

fn supervise(command: &OsStr, user: Option<RunAs>) -> Result<i32, std::io::Error> {
    // Dies with bubblewrap outside, and the sandbox with it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    let mut signals = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        signals.add(signal);
    }
    // Started before the signals are blocked, since a child keeps its parent's mask. Reaped by
    // `reap` below, with every orphan of the sandbox.
    let mut shell = std::process::Command::new("/bin/sh");
    shell.arg("-c").arg(command);
    if let Some(user) = user {
        // Kept by everything the command starts: no setuid program gives privileges back.
        nix::sys::prctl::set_no_new_privs()?;
        // The standard library clears the supplementary groups too when root changes user.
        shell.uid(user.uid).gid(user.gid);
    }
    #[allow(clippy::zombie_processes)]
    let child = shell.spawn()?;
    let main = Pid::from_raw(child.id() as i32);
    // From here on the signals are read from a signalfd.
    signals.thread_block()?;
    let inbox = SignalFd::new(&signals)?;
    let mut status = None;
    let mut stopping = false;
    // The command may have ended before its SIGCHLD could be read.
    if reap(main, &mut status)? {
        return Ok(status.unwrap_or(1));
    }
    loop {
        let Some(info) = inbox.read_signal()? else {
            continue;
        };
        if info.ssi_signo == Signal::SIGCHLD as u32 {
            if reap(main, &mut status)? {
                return Ok(status.unwrap_or(1));
            }
        } else {
            stopping = true;
        }
        if let (Some(code), false) = (status, stopping) {
            return Ok(code);
        }
    }
}

/// Reaps every child that has ended, noting the command's status; true once none is left.
fn reap(main: Pid, status: &mut Option<i32>) -> Result<bool, std::io::Error> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => *status = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == main => {
                *status = Some(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) => return Ok(false),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return Ok(true),
            Err(error) => return Err(error.into()),
        }
    }
}
