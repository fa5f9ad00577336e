//! When a cron runs next.

use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;

use crate::error::SupervisorError;

/// Checks a 5-field cron schedule (UTC), as [`crate::CronRunner::start`] will parse it.
pub fn check_schedule(schedule: &str) -> Result<(), SupervisorError> {
    parse(schedule).map(|_| ())
}

/// Parses the way the config crate validates, so that a schedule accepted at build time is
/// one the scheduler runs.
fn parse(schedule: &str) -> Result<Cron, SupervisorError> {
    schedule
        .parse::<Cron>()
        .map_err(|source| SupervisorError::Schedule {
            schedule: schedule.to_owned(),
            source,
        })
}

/// The first time strictly after `after` at which `schedule` fires.
pub fn next_run(schedule: &str, after: DateTime<Utc>) -> Result<DateTime<Utc>, SupervisorError> {
    next_after(&parse(schedule)?, schedule, after)
}

fn next_after(
    cron: &Cron,
    text: &str,
    after: DateTime<Utc>,
) -> Result<DateTime<Utc>, SupervisorError> {
    cron.find_next_occurrence(&after, false)
        .map_err(|source| SupervisorError::Schedule {
            schedule: text.to_owned(),
            source,
        })
}

/// A parsed schedule as the scheduler loop uses it.
#[derive(Debug, Clone)]
pub(crate) enum Schedule {
    Cron {
        cron: Box<Cron>,
        text: String,
    },
    /// Fires every period; lets tests watch scheduling without waiting a minute.
    #[cfg(test)]
    Every(Duration),
}

impl Schedule {
    pub(crate) fn parse(text: &str) -> Result<Self, SupervisorError> {
        Ok(Schedule::Cron {
            cron: Box::new(parse(text)?),
            text: text.to_owned(),
        })
    }

    pub(crate) fn next_after(
        &self,
        after: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, SupervisorError> {
        match self {
            Schedule::Cron { cron, text } => next_after(cron, text, after),
            #[cfg(test)]
            Schedule::Every(period) => Ok(after + *period),
        }
    }
}

/// Sleeps until the wall clock reads `when`.
///
/// Tokio's timers follow the monotonic clock, which drifts from the wall clock (NTP steps,
/// suspend), so the remaining time is measured again after every sleep instead of trusting
/// one long one.
pub(crate) async fn sleep_until(when: DateTime<Utc>) {
    loop {
        let Ok(left) = (when - Utc::now()).to_std() else {
            return;
        };
        if left.is_zero() {
            return;
        }
        // Re-checking hourly bounds the drift a long sleep can accumulate.
        tokio::time::sleep(left.min(Duration::from_secs(3600))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 14, h, m, s).unwrap()
    }

    #[test]
    fn every_minute_fires_at_the_next_whole_minute() {
        assert_eq!(next_run("* * * * *", at(12, 0, 0)).unwrap(), at(12, 1, 0));
        assert_eq!(next_run("* * * * *", at(12, 0, 30)).unwrap(), at(12, 1, 0));
        let almost = at(12, 0, 59) + chrono::Duration::milliseconds(999);
        assert_eq!(next_run("* * * * *", almost).unwrap(), at(12, 1, 0));
    }

    #[test]
    fn steps_hours_and_days_of_week() {
        assert_eq!(
            next_run("*/19 * * * *", at(12, 39, 0)).unwrap(),
            at(12, 57, 0)
        );
        assert_eq!(
            next_run("*/19 * * * *", at(12, 57, 0)).unwrap(),
            at(13, 0, 0)
        );
        assert_eq!(
            next_run("30 2 * * *", at(12, 0, 0)).unwrap(),
            at(2, 30, 0) + chrono::Duration::days(1)
        );
        // 2025-03-14 is a Friday; the next Monday is the 17th.
        assert_eq!(
            next_run("0 0 * * 1", at(12, 0, 0)).unwrap(),
            Utc.with_ymd_and_hms(2025, 3, 17, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn invalid_schedules_are_errors() {
        for bad in ["", "not a cron", "61 * * * *", "* * * *"] {
            assert!(
                matches!(check_schedule(bad), Err(SupervisorError::Schedule { .. })),
                "{bad:?} was accepted"
            );
        }
    }
}
