//! The errors this crate reports to its caller.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Names become file names (`<name>.log`), so they must not reach outside the log folder.
    #[error("{name:?} cannot be used as a process or cron name: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("cannot open the log file {}: {source}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: io::Error,
    },

    #[error("invalid cron schedule {schedule:?}: {source}")]
    Schedule {
        schedule: String,
        #[source]
        source: croner::errors::CronError,
    },

    #[error("no cron named {0:?} is scheduled")]
    UnknownCron(String),

    #[error("cron {0:?} is already running")]
    CronBusy(String),

    #[error("crons are stopped until they are started again")]
    CronStopped,
}

/// Checks that a process or cron name is usable as a file name inside the log folder.
pub(crate) fn check_name(name: &str) -> Result<(), SupervisorError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "it names a folder"
    } else if name.contains('/') {
        "it contains `/`"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(SupervisorError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_that_would_escape_the_log_folder_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["web", "worker-queue", "drupal_cron", "a.b"] {
            assert!(check_name(good).is_ok(), "{good:?} was refused");
        }
    }
}
