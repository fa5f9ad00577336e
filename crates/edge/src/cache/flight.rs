//! Request coalescing: one origin fetch per cache key at a time.
//!
//! The first request for a key leads: it fetches and stores. The others wait for the leader's
//! outcome, then look the key up again. A leader that goes away without an outcome (its client
//! hung up) counts as abandoned, and a waiter takes its place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// How a leader's fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response was stored under the key.
    Stored,
    /// The response could not be stored: waiters should fetch for themselves.
    Uncacheable,
    /// The origin failed (5xx, refused, timed out): waiters may serve stale.
    Failed,
    /// The leader went away, or waited too long.
    Abandoned,
}

type Slot = watch::Receiver<Option<Outcome>>;

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Slot>>,
}

pub(crate) enum Join {
    Leader(Leader),
    Waiter(Slot),
}

/// The right to fetch a key. Dropping it without `finish` tells the waiters it was abandoned.
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: String,
    sender: Option<watch::Sender<Option<Outcome>>>,
}

impl Flights {
    /// Leads the fetch of `key`, or waits for the one under way.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut map = self.map.lock().expect("flights lock");
        if let Some(slot) = map.get(key) {
            return Join::Waiter(slot.clone());
        }
        let (sender, receiver) = watch::channel(None);
        map.insert(key.to_owned(), receiver);
        Join::Leader(Leader {
            flights: self.clone(),
            key: key.to_owned(),
            sender: Some(sender),
        })
    }

    #[cfg(test)]
    fn busy(&self, key: &str) -> bool {
        self.map.lock().expect("flights lock").contains_key(key)
    }
}

impl Leader {
    /// Ends the fetch. Call after storing, so that a waiter's lookup finds the response.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(sender) = self.sender.take() {
            self.flights
                .map
                .lock()
                .expect("flights lock")
                .remove(&self.key);
            let _ = sender.send(Some(outcome));
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.end(Outcome::Abandoned);
    }
}

/// Waits for the leader's outcome, at most `limit`.
pub(crate) async fn wait(mut slot: Slot, limit: Duration) -> Outcome {
    match tokio::time::timeout(limit, slot.wait_for(Option::is_some)).await {
        Ok(Ok(outcome)) => outcome.unwrap_or(Outcome::Abandoned),
        Ok(Err(_)) | Err(_) => Outcome::Abandoned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_per_key_and_waiters_learn_its_outcome() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(leader) = flights.join("k") else {
            panic!("first leads")
        };
        let Join::Waiter(slot) = flights.join("k") else {
            panic!("second waits")
        };
        assert!(matches!(flights.join("other"), Join::Leader(_)));
        let waiter = tokio::spawn(wait(slot, Duration::from_secs(5)));
        leader.finish(Outcome::Stored);
        assert_eq!(waiter.await.unwrap(), Outcome::Stored);
        assert!(!flights.busy("k"));
    }

    #[tokio::test]
    async fn a_dropped_leader_is_abandoned() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(leader) = flights.join("k") else {
            panic!("first leads")
        };
        let Join::Waiter(slot) = flights.join("k") else {
            panic!("second waits")
        };
        drop(leader);
        assert_eq!(wait(slot, Duration::from_secs(5)).await, Outcome::Abandoned);
        assert!(matches!(flights.join("k"), Join::Leader(_)));
    }
}
