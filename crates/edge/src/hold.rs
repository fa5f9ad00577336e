//! Requests held while an environment is closed, released in arrival order when it opens.
//!
//! One releaser task per environment hands out turns, oldest request first, and waits for each
//! released request to start its origin request (or give up) before the next, so the nodes see
//! the requests in the order the edge received them. While requests wait, newcomers for the same
//! app queue behind them even if the environment is open. The order is kept per app: a request
//! whose app is open goes before older ones waiting for another app's routers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

/// How long the releaser waits for a released request to start before releasing the next.
const START_LIMIT: Duration = Duration::from_millis(500);

/// A released request's turn: dropping it (once the request has started) lets the next go.
pub(crate) struct Turn(#[allow(dead_code)] oneshot::Sender<()>);

pub(crate) enum Held {
    Released(Turn),
    TimedOut,
}

struct Waiter {
    id: u64,
    /// The app whose routers the request goes to (`None`: the first app's).
    app: Option<String>,
    turn: oneshot::Sender<Turn>,
}

#[derive(Default)]
struct Queue {
    next_id: u64,
    waiting: VecDeque<Waiter>,
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
        queue.waiting.retain(|w| w.id != self.id);
    }
}

impl HoldQueue {
    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().expect("hold lock").waiting.len()
    }

    /// Whether requests for `app` wait now.
    pub(crate) fn waiting(&self, app: Option<&str>) -> bool {
        let queue = self.queue.lock().expect("hold lock");
        queue.waiting.iter().any(|w| w.app.as_deref() == app)
    }

    /// Waits for a turn for a request to `app`, until `deadline`.
    pub(crate) async fn wait(&self, app: Option<&str>, deadline: Instant) -> Held {
        let (sender, receiver) = oneshot::channel();
        let id = {
            let mut queue = self.queue.lock().expect("hold lock");
            let id = queue.next_id;
            queue.next_id += 1;
            queue.waiting.push_back(Waiter {
                id,
                app: app.map(str::to_owned),
                turn: sender,
            });
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

    /// Takes the oldest request whose app is `open`.
    fn pop_open(&self, open: impl Fn(Option<&str>) -> bool) -> Option<oneshot::Sender<Turn>> {
        let mut queue = self.queue.lock().expect("hold lock");
        let index = {
            let mut shut: Vec<Option<&str>> = Vec::new();
            queue.waiting.iter().position(|w| {
                let app = w.app.as_deref();
                if shut.contains(&app) {
                    return false;
                }
                let is_open = open(app);
                if !is_open {
                    shut.push(app);
                }
                is_open
            })?
        };
        queue.waiting.remove(index).map(|w| w.turn)
    }

    /// Releases waiting requests in order whenever their app is `open`, looking again at each
    /// `news`. Runs until aborted.
    pub(crate) async fn release(
        &self,
        mut news: watch::Receiver<()>,
        open: impl Fn(Option<&str>) -> bool,
    ) {
        loop {
            news.mark_unchanged();
            let Some(waiter) = self.pop_open(&open) else {
                tokio::select! {
                    changed = news.changed() => if changed.is_err() { return },
                    () = self.pushed.notified() => {}
                }
                continue;
            };
            let (started, has_started) = oneshot::channel();
            if waiter.send(Turn(started)).is_ok() {
                let _ = tokio::time::timeout(START_LIMIT, has_started).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    /// A releaser over a queue, with the apps it finds open.
    struct Releaser {
        open: Arc<Mutex<HashSet<Option<String>>>>,
        news: watch::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Releaser {
        fn start(queue: &Arc<HoldQueue>) -> Releaser {
            let open: Arc<Mutex<HashSet<Option<String>>>> = Arc::default();
            let (news, receiver) = watch::channel(());
            let task = tokio::spawn({
                let queue = queue.clone();
                let open = open.clone();
                async move {
                    queue
                        .release(receiver, |app| {
                            open.lock().unwrap().contains(&app.map(str::to_owned))
                        })
                        .await
                }
            });
            Releaser { open, news, task }
        }

        fn open(&self, app: Option<&str>) {
            self.open.lock().unwrap().insert(app.map(str::to_owned));
            self.news.send_replace(());
        }
    }

    /// Queues one request for each app, in order; each reports its index when released.
    async fn hold(
        queue: &Arc<HoldQueue>,
        apps: &[Option<&str>],
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<usize>,
        Vec<tokio::task::JoinHandle<()>>,
    ) {
        let (order_tx, order_rx) = tokio::sync::mpsc::unbounded_channel();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut waiters = Vec::new();
        for (i, app) in apps.iter().enumerate() {
            let waiting = queue.clone();
            let order = order_tx.clone();
            let app = app.map(str::to_owned);
            waiters.push(tokio::spawn(async move {
                if let Held::Released(turn) = waiting.wait(app.as_deref(), deadline).await {
                    order.send(i).unwrap();
                    drop(turn);
                }
            }));
            while queue.len() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        (order_rx, waiters)
    }

    #[tokio::test]
    async fn requests_are_released_in_arrival_order_when_open() {
        let queue = Arc::new(HoldQueue::default());
        let releaser = Releaser::start(&queue);
        let (mut order_rx, waiters) = hold(&queue, &[None; 5]).await;
        assert!(queue.waiting(None));
        releaser.open(None);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let mut order = Vec::new();
        while let Ok(i) = order_rx.try_recv() {
            order.push(i);
        }
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        releaser.task.abort();
    }

    #[tokio::test]
    async fn an_open_apps_requests_go_before_those_waiting_for_another_app() {
        let queue = Arc::new(HoldQueue::default());
        let releaser = Releaser::start(&queue);
        let apps = [Some("api"), Some("app"), Some("api"), Some("app")];
        let (mut order_rx, mut waiters) = hold(&queue, &apps).await;
        assert!(queue.waiting(Some("api")) && !queue.waiting(None));
        releaser.open(Some("app"));
        for waiter in [waiters.remove(3), waiters.remove(1)] {
            waiter.await.unwrap();
        }
        assert_eq!(order_rx.recv().await, Some(1));
        assert_eq!(order_rx.recv().await, Some(3));
        assert_eq!(queue.len(), 2, "api's requests still wait");
        assert!(queue.waiting(Some("api")) && !queue.waiting(Some("app")));
        releaser.open(Some("api"));
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(order_rx.recv().await, Some(0));
        assert_eq!(order_rx.recv().await, Some(2));
        releaser.task.abort();
    }

    #[tokio::test]
    async fn a_request_times_out_and_leaves_the_queue() {
        let queue = HoldQueue::default();
        let held = queue
            .wait(None, Instant::now() + Duration::from_millis(20))
            .await;
        assert!(matches!(held, Held::TimedOut));
        assert_eq!(queue.len(), 0);
    }
}
