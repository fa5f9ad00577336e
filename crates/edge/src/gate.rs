//! What the edge knows of an environment's gate and of each of its nodes, and the choice of a
//! node for a request.
//!
//! The controller's word comes first: closed is closed. While the controller says open, the
//! nodes' own answers count: a node that answered `x-lockstep-gate: closed` is left out until a
//! health check finds it open, one that refused a connection is left out until one finds it up,
//! and when every node is closed the environment is closed. Only nodes open at the newest
//! generation seen are chosen, so two releases never serve side by side through the edge.
//!
//! A message from the controller can be lost: when the controller said closed and a node is
//! then seen open at a generation newer than any seen before the close, the environment opens
//! (only the controller opens nodes, and it names the generation).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::watch;

use crate::wire::{EffectiveState, GateState, NodeState, NodeView};

/// The `Retry-After` a closed environment's clients get when no node said otherwise.
pub(crate) const DEFAULT_RETRY_AFTER_SECS: u64 = 5;

/// What a node told the edge, by a health check or by an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Open(Option<u64>),
    Closed {
        retry_after: Option<u64>,
    },
    /// It answered, without saying anything of its gate.
    Answered,
    Down(String),
}

#[derive(Debug)]
struct Node {
    url: String,
    state: NodeState,
    generation: Option<u64>,
    checked_at: Option<Instant>,
    /// When an answer or a check last changed what is known of the node.
    learned_at: Option<Instant>,
    last_error: Option<String>,
}

impl Node {
    fn new(url: String) -> Node {
        Node {
            url,
            state: NodeState::Unknown,
            generation: None,
            checked_at: None,
            learned_at: None,
            last_error: None,
        }
    }
}

#[derive(Debug)]
struct Inner {
    controller: GateState,
    /// While the controller says closed: the newest generation seen before, which a node must
    /// exceed to open the environment on its own word.
    closed_mark: Option<u64>,
    nodes: Vec<Node>,
    generation: Option<u64>,
    retry_after: Option<u64>,
}

impl Inner {
    fn newest_open(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeState::Open)
            .filter_map(|n| n.generation)
            .max()
    }

    fn eligible(&self, node: &Node) -> bool {
        match node.state {
            NodeState::Unknown => true,
            NodeState::Open => match (node.generation, self.newest_open()) {
                (Some(mine), Some(newest)) => mine == newest,
                _ => true,
            },
            NodeState::Closed | NodeState::Down => false,
        }
    }

    fn effective(&self) -> EffectiveState {
        if self.controller == GateState::Closed {
            EffectiveState::Closed
        } else if self.nodes.iter().any(|n| self.eligible(n)) {
            EffectiveState::Open
        } else if self.nodes.iter().any(|n| n.state == NodeState::Closed) {
            EffectiveState::Closed
        } else {
            EffectiveState::Down
        }
    }
}

/// A node chosen for one attempt.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub url: String,
}

pub(crate) struct Gate {
    environment: String,
    inner: Mutex<Inner>,
    next: AtomicUsize,
    effective: watch::Sender<EffectiveState>,
}

impl Gate {
    pub(crate) fn new(environment: &str, controller: GateState, nodes: &[String]) -> Gate {
        let inner = Inner {
            controller,
            closed_mark: None,
            nodes: nodes.iter().cloned().map(Node::new).collect(),
            generation: None,
            retry_after: None,
        };
        let (effective, _) = watch::channel(inner.effective());
        Gate {
            environment: environment.to_owned(),
            inner: Mutex::new(inner),
            next: AtomicUsize::new(0),
            effective,
        }
    }

    /// Applies a change, then tells watchers if the effective state changed.
    fn update<T>(&self, change: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().expect("gate lock");
        let result = change(&mut inner);
        let now = inner.effective();
        drop(inner);
        self.effective.send_if_modified(|current| {
            if *current == now {
                return false;
            }
            tracing::info!(environment = %self.environment, from = ?*current, to = ?now, "environment state changed");
            *current = now;
            true
        });
        result
    }

    /// Replaces the node list, keeping what was learned of nodes that stay.
    pub(crate) fn set_nodes(&self, urls: &[String]) {
        self.update(|inner| {
            let mut old: Vec<Node> = std::mem::take(&mut inner.nodes);
            inner.nodes = urls
                .iter()
                .map(|url| match old.iter().position(|n| &n.url == url) {
                    Some(i) => old.swap_remove(i),
                    None => Node::new(url.clone()),
                })
                .collect();
        });
    }

    /// The controller's word.
    pub(crate) fn command(&self, state: GateState, generation: Option<u64>) {
        self.update(|inner| {
            if let Some(generation) = generation {
                inner.generation = inner.generation.max(Some(generation));
            }
            match state {
                GateState::Closed => {
                    if inner.controller != GateState::Closed {
                        inner.closed_mark = inner.generation;
                    }
                }
                GateState::Open => {
                    // The controller opened the nodes: what they said while closed is old news.
                    let now = Instant::now();
                    for node in &mut inner.nodes {
                        if node.state == NodeState::Closed {
                            node.state = NodeState::Unknown;
                            node.learned_at = Some(now);
                        }
                    }
                    inner.closed_mark = None;
                }
            }
            inner.controller = state;
        });
    }

    /// Records what a node said: in an answer, or (with the time it started) to a health
    /// check. A check that started before the node's last answer is older news, and ignored.
    pub(crate) fn learn(&self, url: &str, answer: Answer, check_started: Option<Instant>) {
        self.update(|inner| {
            let Some(index) = inner.nodes.iter().position(|n| n.url == url) else {
                return;
            };
            let now = Instant::now();
            if let Some(started) = check_started {
                let node = &mut inner.nodes[index];
                node.checked_at = Some(now);
                if node.learned_at.is_some_and(|learned| learned > started) {
                    return;
                }
            }
            if let Answer::Open(Some(generation)) = answer {
                inner.generation = inner.generation.max(Some(generation));
                if inner.controller == GateState::Closed {
                    match inner.closed_mark {
                        Some(mark) if generation > mark => {
                            tracing::warn!(
                                environment = %self.environment, node = url, generation,
                                "a node is open at a newer generation: opening without word from the controller"
                            );
                            inner.controller = GateState::Open;
                            inner.closed_mark = None;
                        }
                        Some(_) => {}
                        None => inner.closed_mark = Some(generation),
                    }
                }
            }
            if let Answer::Closed {
                retry_after: Some(seconds),
            } = answer
            {
                inner.retry_after = Some(seconds);
            }
            let node = &mut inner.nodes[index];
            node.learned_at = Some(now);
            let before = node.state;
            match answer {
                Answer::Open(generation) => {
                    node.state = NodeState::Open;
                    node.generation = generation.or(node.generation);
                    node.last_error = None;
                }
                Answer::Closed { .. } => {
                    node.state = NodeState::Closed;
                    node.last_error = None;
                }
                Answer::Answered => {
                    if node.state == NodeState::Down {
                        node.state = NodeState::Unknown;
                    }
                    node.last_error = None;
                }
                Answer::Down(error) => {
                    node.state = NodeState::Down;
                    node.last_error = Some(error);
                }
            }
            if before != node.state {
                tracing::info!(environment = %self.environment, node = url, from = ?before, to = ?node.state, "node state changed");
            }
        });
    }

    pub(crate) fn effective(&self) -> EffectiveState {
        *self.effective.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<EffectiveState> {
        self.effective.subscribe()
    }

    pub(crate) fn controller(&self) -> GateState {
        self.inner.lock().expect("gate lock").controller
    }

    /// The newest generation a node was seen (or said to be) open at.
    pub(crate) fn generation(&self) -> Option<u64> {
        self.inner.lock().expect("gate lock").generation
    }

    pub(crate) fn retry_after(&self) -> u64 {
        self.inner
            .lock()
            .expect("gate lock")
            .retry_after
            .unwrap_or(DEFAULT_RETRY_AFTER_SECS)
    }

    pub(crate) fn node_urls(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("gate lock");
        inner.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// Chooses the next node, round robin, among those not `tried` yet: open nodes first, then
    /// nodes that looked down (they may be back), and, with `any`, closed ones last.
    pub(crate) fn pick(&self, tried: &[String], any: bool) -> Option<Target> {
        let inner = self.inner.lock().expect("gate lock");
        let untried = |n: &&Node| !tried.contains(&n.url);
        let mut candidates: Vec<&Node> = inner
            .nodes
            .iter()
            .filter(|n| inner.eligible(n))
            .filter(untried)
            .collect();
        if candidates.is_empty() {
            candidates = inner
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Down)
                .filter(untried)
                .collect();
        }
        if candidates.is_empty() && any {
            candidates = inner.nodes.iter().filter(untried).collect();
        }
        if candidates.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Some(Target {
            url: candidates[turn].url.clone(),
        })
    }

    pub(crate) fn view(&self) -> Vec<NodeView> {
        let inner = self.inner.lock().expect("gate lock");
        let now = Instant::now();
        inner
            .nodes
            .iter()
            .map(|n| NodeView {
                url: n.url.clone(),
                state: n.state,
                generation: n.generation,
                checked_ms_ago: n.checked_at.map(|at| {
                    u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX)
                }),
                last_error: n.last_error.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(nodes: &[&str]) -> Gate {
        let nodes: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        Gate::new("e", GateState::Open, &nodes)
    }

    #[test]
    fn closed_nodes_are_skipped_until_checked_open() {
        let g = gate(&["a", "b"]);
        g.learn("a", Answer::Closed { retry_after: None }, None);
        for _ in 0..4 {
            assert_eq!(g.pick(&[], false).unwrap().url, "b");
        }
        g.learn(
            "b",
            Answer::Closed {
                retry_after: Some(3),
            },
            None,
        );
        assert_eq!(g.effective(), EffectiveState::Closed);
        assert!(g.pick(&[], false).is_none());
        assert_eq!(g.retry_after(), 3);
        g.learn("a", Answer::Open(Some(1)), Some(Instant::now()));
        assert_eq!(g.effective(), EffectiveState::Open);
    }

    #[test]
    fn only_the_newest_generation_serves() {
        let g = gate(&["a", "b"]);
        g.learn("a", Answer::Open(Some(1)), Some(Instant::now()));
        g.learn("b", Answer::Open(Some(2)), Some(Instant::now()));
        for _ in 0..4 {
            assert_eq!(g.pick(&[], false).unwrap().url, "b");
        }
    }

    #[test]
    fn down_nodes_are_a_last_resort() {
        let g = gate(&["a", "b"]);
        g.learn("a", Answer::Down("refused".into()), None);
        assert_eq!(g.pick(&[], false).unwrap().url, "b");
        assert_eq!(g.pick(&["b".into()], false).unwrap().url, "a");
        g.learn("b", Answer::Down("refused".into()), None);
        assert_eq!(g.effective(), EffectiveState::Down);
    }

    #[test]
    fn the_controller_closes_and_a_newer_generation_opens() {
        let g = gate(&["a"]);
        g.learn("a", Answer::Open(Some(4)), Some(Instant::now()));
        g.command(GateState::Closed, None);
        assert_eq!(g.effective(), EffectiveState::Closed);
        g.learn("a", Answer::Open(Some(4)), Some(Instant::now()));
        assert_eq!(g.effective(), EffectiveState::Closed);
        g.learn("a", Answer::Open(Some(5)), Some(Instant::now()));
        assert_eq!(g.effective(), EffectiveState::Open);
        assert_eq!(g.generation(), Some(5));
    }
}
