//! Requests held while an environment is closed, released in arrival order when it opens.
//!
//! One releaser task per environment hands out turns, oldest request first, and waits for each
//! released request to start its origin request (or give up) before the next, so the nodes see
//! the requests in the order the edge received them. While requests wait, newcomers queue behind
//! them even if the environment is open.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crate::wire::EffectiveState;

/// How long the releaser waits for a released request to start before releasing the next.
const START_LIMIT: Duration = Duration::from_millis(500);

/// A released request's turn: dropping it (once the request has started) lets the next go.
pub(crate) struct Turn(#[allow(dead_code)] oneshot::Sender<()>);

pub(crate) enum Held {
    Released(Turn),
    TimedOut,
}

#[derive(Default)]
struct Queue {
    next_id: u64,
    waiting: VecDeque<(u64, oneshot::Sender<Turn>)>,
}

#[derive(Default)]
pub(crate) struct HoldQueue {
    queue: Mutex<Queue>,
    pushed: Notify,
}

/// Takes a request out of the queue when it stops waiting for any reason.
struct Leave<'a> {
    queue: &'a HoldQueue,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut queue = self.queue.queue.lock().expect("hold lock");
        queue.waiting.retain(|(id, _)| *id != self.id);
    }
}

impl HoldQueue {
    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().expect("hold lock").waiting.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for a turn, until `deadline`.
    pub(crate) async fn wait(&self, deadline: Instant) -> Held {
        let (sender, receiver) = oneshot::channel();
        let id = {
            let mut queue = self.queue.lock().expect("hold lock");
            let id = queue.next_id;
            queue.next_id += 1;
            queue.waiting.push_back((id, sender));
            id
        };
        let _leave = Leave { queue: self, id };
        self.pushed.notify_one();
        tokio::select! {
            turn = receiver => match turn {
                Ok(turn) => Held::Released(turn),
                // The releaser stopped: the environment is gone.
                Err(_) => Held::TimedOut,
            },
            () = tokio::time::sleep_until(deadline) => Held::TimedOut,
        }
    }

    /// Lets every waiting request go without a turn: the environment is gone.
    pub(crate) fn clear(&self) {
        self.queue.lock().expect("hold lock").waiting.clear();
    }

    fn pop(&self) -> Option<oneshot::Sender<Turn>> {
        let mut queue = self.queue.lock().expect("hold lock");
        queue.waiting.pop_front().map(|(_, sender)| sender)
    }

    /// Releases waiting requests in order whenever the environment is open. Runs until aborted.
    pub(crate) async fn release(&self, mut state: watch::Receiver<EffectiveState>) {
        loop {
            let open = *state.borrow_and_update() == EffectiveState::Open;
            if !open || self.is_empty() {
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { return },
                    () = self.pushed.notified() => {}
                }
                continue;
            }
            let Some(waiter) = self.pop() else { continue };
            let (started, has_started) = oneshot::channel();
            if waiter.send(Turn(started)).is_ok() {
                let _ = tokio::time::timeout(START_LIMIT, has_started).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn requests_are_released_in_arrival_order_when_open() {
        let queue = Arc::new(HoldQueue::default());
        let (state, receiver) = watch::channel(EffectiveState::Closed);
        let releaser = tokio::spawn({
            let queue = queue.clone();
            async move { queue.release(receiver).await }
        });
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut waiters = Vec::new();
        for i in 0..5 {
            let waiting = queue.clone();
            let order = order_tx.clone();
            waiters.push(tokio::spawn(async move {
                if let Held::Released(turn) = waiting.wait(deadline).await {
                    order.send(i).unwrap();
                    drop(turn);
                }
            }));
            while queue.len() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        state.send(EffectiveState::Open).unwrap();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let mut order = Vec::new();
        while let Ok(i) = order_rx.try_recv() {
            order.push(i);
        }
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        releaser.abort();
    }

    #[tokio::test]
    async fn a_request_times_out_and_leaves_the_queue() {
        let queue = HoldQueue::default();
        let held = queue.wait(Instant::now() + Duration::from_millis(20)).await;
        assert!(matches!(held, Held::TimedOut));
        assert!(queue.is_empty());
    }
}
