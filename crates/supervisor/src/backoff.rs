//! How long to wait before restarting a process that exited.

use std::time::Duration;

const INITIAL: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(30);
/// A process that ran this long is considered healthy, so its next crash starts over at
/// `INITIAL` instead of being punished for crashes long ago.
const RESET_AFTER: Duration = Duration::from_secs(30);

/// Exponential backoff: 100 ms, 200 ms, 400 ms … up to 30 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: INITIAL }
    }
}

impl Backoff {
    /// The delay before the next start, given how long the last run lasted.
    pub(crate) fn delay_after(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= RESET_AFTER {
            self.next = INITIAL;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets_after_a_long_run() {
        let mut backoff = Backoff::default();
        let quick = Duration::from_millis(5);
        let delays: Vec<u64> = (0..11)
            .map(|_| backoff.delay_after(quick).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
        assert_eq!(
            backoff.delay_after(Duration::from_secs(29)),
            Duration::from_secs(30)
        );
        assert_eq!(
            backoff.delay_after(Duration::from_secs(30)),
            Duration::from_millis(100)
        );
        assert_eq!(backoff.delay_after(quick), Duration::from_millis(200));
    }
}
