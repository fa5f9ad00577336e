//! What the edge knows of an environment's gate and of each of its node routers, every app's,
//! and the choice of a router for a request.
//!
//! The controller's word comes first: closed is closed, for every app. While the controller
//! says open, the routers' own answers count: a router that answered `x-lockstep-gate: closed`
//! is left out until a health check finds it open, one that refused a connection is left out
//! until one finds it up, and when every router of an app is closed the environment is closed
//! for that app's requests. Only routers open at the newest generation seen among their app's
//! are chosen, so two releases of an app never serve side by side through the edge.
//!
//! Each app's requests go to its own routers only, and their state is computed over those alone:
//! an app whose routers are down fails while another serves, rather than reaching the wrong app.
//!
//! A message from the controller can be lost: when the controller said closed and a router is
//! then seen open at a generation newer than any seen before the close, the environment opens
//! (only the controller opens nodes, and it names the generation).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::watch;

use lockstep_proto::Generation;
use lockstep_proto::edge::{EffectiveState, EnvironmentRoute, GateState, NodeState, NodeView};

/// The `Retry-After` a closed environment's clients get when no node said otherwise.
pub(crate) const DEFAULT_RETRY_AFTER_SECS: u64 = 5;

/// What a node told the edge, by a health check or by an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Open(Option<Generation>),
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
    generation: Option<Generation>,
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
    closed_mark: Option<Generation>,
    /// Every router of every app, once each.
    nodes: Vec<Node>,
    /// The first app's routers (the route's `nodes`).
    first: Vec<String>,
    /// Every app's routers by name (the route's `app_nodes`).
    apps: BTreeMap<String, Vec<String>>,
    generation: Option<Generation>,
    retry_after: Option<u64>,
    /// `overall()`, kept current by `Gate::update`.
    effective: EffectiveState,
}

impl Inner {
    /// Takes a route's routers, keeping what was learned of those that stay.
    fn set_routers(&mut self, route: &EnvironmentRoute) {
        let mut old: Vec<Node> = std::mem::take(&mut self.nodes);
        for url in route.nodes.iter().chain(route.app_nodes.values().flatten()) {
            if self.nodes.iter().any(|n| &n.url == url) {
                continue;
            }
            self.nodes
                .push(match old.iter().position(|n| &n.url == url) {
                    Some(i) => old.swap_remove(i),
                    None => Node::new(url.clone()),
                });
        }
        self.first = route.nodes.clone();
        self.apps = route.app_nodes.clone();
    }

    /// The routers of an app (`None`: the first app); none for an app the route does not name.
    fn routers<'a>(
        &'a self,
        app: Option<&str>,
    ) -> impl Iterator<Item = &'a Node> + Clone + use<'a> {
        let urls: &[String] = match app {
            None => &self.first,
            Some(app) => self.apps.get(app).map_or(&[], Vec::as_slice),
        };
        self.nodes.iter().filter(move |n| urls.contains(&n.url))
    }

    /// The state of an app's routers.
    fn state<'a>(&self, routers: impl Iterator<Item = &'a Node> + Clone) -> EffectiveState {
        if self.controller == GateState::Closed {
            return EffectiveState::Closed;
        }
        let newest = newest_open(routers.clone());
        if routers.clone().any(|n| eligible(n, newest)) {
            EffectiveState::Open
        } else if routers.into_iter().any(|n| n.state == NodeState::Closed) {
            EffectiveState::Closed
        } else {
            EffectiveState::Down
        }
    }

    /// The environment's state: open while some app's requests may be sent, else closed while
    /// some app's are closed.
    fn overall(&self) -> EffectiveState {
        let apps = std::iter::once(None).chain(self.apps.keys().map(|app| Some(app.as_str())));
        let mut overall = EffectiveState::Down;
        for app in apps {
            match self.state(self.routers(app)) {
                EffectiveState::Open => return EffectiveState::Open,
                EffectiveState::Closed => overall = EffectiveState::Closed,
                EffectiveState::Down => {}
            }
        }
        overall
    }
}

/// The newest generation one of `routers` is open at.
fn newest_open<'a>(routers: impl Iterator<Item = &'a Node>) -> Option<Generation> {
    routers
        .filter(|n| n.state == NodeState::Open)
        .filter_map(|n| n.generation)
        .max()
}

/// Whether a router may be sent requests, `newest` being the newest generation open among its
/// app's routers.
fn eligible(node: &Node, newest: Option<Generation>) -> bool {
    match node.state {
        NodeState::Unknown => true,
        NodeState::Open => match (node.generation, newest) {
            (Some(mine), Some(newest)) => mine == newest,
            _ => true,
        },
        NodeState::Closed | NodeState::Down => false,
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
    /// Sent whenever something an app's state depends on changed.
    news: watch::Sender<()>,
}

impl Gate {
    /// The gate of a route's routers, as the route's `gate` says.
    pub(crate) fn new(environment: &str, route: &EnvironmentRoute) -> Gate {
        let mut inner = Inner {
            controller: route.gate,
            closed_mark: None,
            nodes: Vec::new(),
            first: Vec::new(),
            apps: BTreeMap::new(),
            generation: None,
            retry_after: None,
            effective: EffectiveState::Down,
        };
        inner.set_routers(route);
        inner.effective = inner.overall();
        Gate {
            environment: environment.to_owned(),
            inner: Mutex::new(inner),
            next: AtomicUsize::new(0),
            news: watch::Sender::new(()),
        }
    }

    /// Applies a change, which says whether it changed anything a state depends on (a router's
    /// state or generation, the routers, the controller's word); if so, tells the watchers.
    fn update(&self, change: impl FnOnce(&mut Inner) -> bool) {
        let mut inner = self.inner.lock().expect("gate lock");
        if !change(&mut inner) {
            return;
        }
        let now = inner.overall();
        let before = std::mem::replace(&mut inner.effective, now);
        drop(inner);
        if before != now {
            tracing::info!(environment = %self.environment, from = ?before, to = ?now, "environment state changed");
        }
        self.news.send_replace(());
    }

    /// Replaces the routers, keeping what was learned of those that stay.
    pub(crate) fn set_routers(&self, route: &EnvironmentRoute) {
        self.update(|inner| {
            inner.set_routers(route);
            true
        });
    }

    /// The controller's word.
    pub(crate) fn command(&self, state: GateState, generation: Option<Generation>) {
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
            true
        });
    }

    /// Records what a node said: in an answer, or (with the time it started) to a health
    /// check. A check that started before the node's last answer is older news, and ignored.
    pub(crate) fn learn(&self, url: &str, answer: Answer, check_started: Option<Instant>) {
        self.update(|inner| {
            let Some(index) = inner.nodes.iter().position(|n| n.url == url) else {
                return false;
            };
            let now = Instant::now();
            if let Some(started) = check_started {
                let node = &mut inner.nodes[index];
                node.checked_at = Some(now);
                if node.learned_at.is_some_and(|learned| learned > started) {
                    return false;
                }
            }
            let controller = inner.controller;
            if let Answer::Open(Some(generation)) = answer {
                inner.generation = inner.generation.max(Some(generation));
                if inner.controller == GateState::Closed {
                    match inner.closed_mark {
                        Some(mark) if generation > mark => {
                            tracing::warn!(
                                environment = %self.environment, node = url, generation = generation.0,
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
            let before = (node.state, node.generation);
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
            if before.0 != node.state {
                tracing::info!(environment = %self.environment, node = url, from = ?before.0, to = ?node.state, "node state changed");
            }
            before != (node.state, node.generation) || controller != inner.controller
        });
    }

    /// The environment's state: open while some app's requests may be sent.
    pub(crate) fn effective(&self) -> EffectiveState {
        self.inner.lock().expect("gate lock").effective
    }

    /// The environment's state for the requests of an app (`None`: the first app).
    pub(crate) fn state(&self, app: Option<&str>) -> EffectiveState {
        let inner = self.inner.lock().expect("gate lock");
        inner.state(inner.routers(app))
    }

    /// Changes whenever an app's state may have changed.
    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.news.subscribe()
    }

    pub(crate) fn controller(&self) -> GateState {
        self.inner.lock().expect("gate lock").controller
    }

    /// The newest generation a node was seen (or said to be) open at.
    pub(crate) fn generation(&self) -> Option<Generation> {
        self.inner.lock().expect("gate lock").generation
    }

    pub(crate) fn retry_after(&self) -> u64 {
        self.inner
            .lock()
            .expect("gate lock")
            .retry_after
            .unwrap_or(DEFAULT_RETRY_AFTER_SECS)
    }

    /// Every router of every app.
    pub(crate) fn node_urls(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("gate lock");
        inner.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// Chooses the next router of `app` (`None`: the first app), round robin, among those not
    /// `tried` yet: open routers first, then routers that looked down (they may be back), and,
    /// with `any`, closed ones last.
    pub(crate) fn pick(&self, app: Option<&str>, tried: &[String], any: bool) -> Option<Target> {
        let inner = self.inner.lock().expect("gate lock");
        let routers = inner.routers(app);
        let newest = newest_open(routers.clone());
        let untried = |n: &&Node| !tried.contains(&n.url);
        let mut candidates: Vec<&Node> = routers
            .clone()
            .filter(|n| eligible(n, newest))
            .filter(untried)
            .collect();
        if candidates.is_empty() {
            candidates = routers
                .clone()
                .filter(|n| n.state == NodeState::Down)
                .filter(untried)
                .collect();
        }
        if candidates.is_empty() && any {
            candidates = routers.filter(untried).collect();
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
                app: inner
                    .apps
                    .iter()
                    .find(|(_, urls)| urls.contains(&n.url))
                    .map(|(app, _)| app.clone()),
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

    fn urls(nodes: &[&str]) -> Vec<String> {
        nodes.iter().map(|s| s.to_string()).collect()
    }

    fn gate(nodes: &[&str]) -> Gate {
        Gate::new("e", &EnvironmentRoute::new(Vec::new(), urls(nodes)))
    }

    #[test]
    fn closed_nodes_are_skipped_until_checked_open() {
        let g = gate(&["a", "b"]);
        g.learn("a", Answer::Closed { retry_after: None }, None);
        for _ in 0..4 {
            assert_eq!(g.pick(None, &[], false).unwrap().url, "b");
        }
        g.learn(
            "b",
            Answer::Closed {
                retry_after: Some(3),
            },
            None,
        );
        assert_eq!(g.effective(), EffectiveState::Closed);
        assert!(g.pick(None, &[], false).is_none());
        assert_eq!(g.retry_after(), 3);
        g.learn("a", Answer::Open(Some(Generation(1))), Some(Instant::now()));
        assert_eq!(g.effective(), EffectiveState::Open);
    }

    #[test]
    fn only_the_newest_generation_serves() {
        let g = gate(&["a", "b"]);
        g.learn("a", Answer::Open(Some(Generation(1))), Some(Instant::now()));
        g.learn("b", Answer::Open(Some(Generation(2))), Some(Instant::now()));
        for _ in 0..4 {
            assert_eq!(g.pick(None, &[], false).unwrap().url, "b");
        }
    }

    #[test]
    fn down_nodes_are_a_last_resort() {
        let g = gate(&["a", "b"]);
        g.learn("a", Answer::Down("refused".into()), None);
        assert_eq!(g.pick(None, &[], false).unwrap().url, "b");
        assert_eq!(g.pick(None, &["b".into()], false).unwrap().url, "a");
        g.learn("b", Answer::Down("refused".into()), None);
        assert_eq!(g.effective(), EffectiveState::Down);
    }

    #[test]
    fn each_app_is_picked_and_judged_among_its_own_routers() {
        let mut route = EnvironmentRoute::new(Vec::new(), urls(&["a1", "a2"]));
        route.app_nodes = BTreeMap::from([
            ("app".to_owned(), urls(&["a1", "a2"])),
            ("api".to_owned(), urls(&["p1"])),
        ]);
        let g = Gate::new("e", &route);
        assert_eq!(g.node_urls(), ["a1", "a2", "p1"]);
        let apps: Vec<(String, Option<String>)> =
            g.view().into_iter().map(|n| (n.url, n.app)).collect();
        assert_eq!(
            apps,
            [
                ("a1".to_owned(), Some("app".to_owned())),
                ("a2".to_owned(), Some("app".to_owned())),
                ("p1".to_owned(), Some("api".to_owned())),
            ]
        );
        for _ in 0..4 {
            assert_eq!(g.pick(Some("api"), &[], false).unwrap().url, "p1");
            assert_ne!(g.pick(Some("app"), &[], false).unwrap().url, "p1");
            assert_ne!(g.pick(None, &[], false).unwrap().url, "p1");
        }
        assert!(g.pick(Some("web"), &[], true).is_none());

        // The api's router down: its requests find the environment down, never app's routers.
        let mut news = g.subscribe();
        g.learn("p1", Answer::Down("refused".into()), None);
        assert!(news.has_changed().unwrap());
        news.mark_unchanged();
        g.learn("p1", Answer::Down("refused again".into()), None);
        assert!(
            !news.has_changed().unwrap(),
            "nothing a state depends on changed"
        );
        assert_eq!(g.state(Some("api")), EffectiveState::Down);
        assert_eq!(g.state(Some("app")), EffectiveState::Open);
        assert_eq!(g.effective(), EffectiveState::Open);
        assert_eq!(g.pick(Some("api"), &[], false).unwrap().url, "p1");
        assert!(g.pick(Some("api"), &["p1".into()], true).is_none());

        // The app's routers closed: closed for its requests alone.
        g.learn(
            "p1",
            Answer::Open(Some(Generation(1))),
            Some(Instant::now()),
        );
        for url in ["a1", "a2"] {
            g.learn(url, Answer::Closed { retry_after: None }, None);
        }
        assert!(news.has_changed().unwrap());
        assert_eq!(g.state(Some("app")), EffectiveState::Closed);
        assert_eq!(g.state(None), EffectiveState::Closed);
        assert_eq!(g.state(Some("api")), EffectiveState::Open);
        assert!(g.pick(Some("app"), &[], false).is_none());

        // The newest generation is each app's own: api's older one still serves it.
        g.learn(
            "a1",
            Answer::Open(Some(Generation(2))),
            Some(Instant::now()),
        );
        assert_eq!(g.pick(Some("app"), &[], false).unwrap().url, "a1");
        assert_eq!(g.pick(Some("api"), &[], false).unwrap().url, "p1");
        g.command(GateState::Closed, None);
        assert_eq!(g.state(Some("api")), EffectiveState::Closed);
    }

    #[test]
    fn the_controller_closes_and_a_newer_generation_opens() {
        let g = gate(&["a"]);
        g.learn("a", Answer::Open(Some(Generation(4))), Some(Instant::now()));
        g.command(GateState::Closed, None);
        assert_eq!(g.effective(), EffectiveState::Closed);
        g.learn("a", Answer::Open(Some(Generation(4))), Some(Instant::now()));
        assert_eq!(g.effective(), EffectiveState::Closed);
        g.learn("a", Answer::Open(Some(Generation(5))), Some(Instant::now()));
        assert_eq!(g.effective(), EffectiveState::Open);
        assert_eq!(g.generation(), Some(Generation(5)));
    }
}
