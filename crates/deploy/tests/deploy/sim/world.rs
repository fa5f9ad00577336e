//! The simulated world: nodes, the network between them and the controller, and an orchestrator
//! that carries out the machine's commands the way the controller's does.
//!
//! The network model, and why it is the right one for HTTP:
//! - requests and answers may be delayed and reordered (across nodes and with each other), and
//!   dropped; answers may be duplicated;
//! - a request takes effect on its node, if at all, before the machine hears about it (answer or
//!   timeout): when the orchestrator gives up on a request it has closed the connection, and an
//!   agent handles a node's requests in the order they arrived. So requests are never
//!   duplicated by the network, and a request never takes effect after a later one to the same
//!   node.
//!
//! A controller crash drops the machine, every answer in flight and every request not yet
//! delivered (each of those either reached its node just before the crash or never does), then
//! resumes from the journal written so far.

use std::collections::{BTreeMap, BTreeSet};

use lockstep_deploy::{
    Command, Deployment, EdgeGate, Event, HookFailurePolicy, HookKind, NodeFailure, Plan, PlanKind,
    Record, Release, Reply, Request, RequestId,
};
use lockstep_proto::Generation;

use super::checks;
use super::node::{Handling, NodeFaults, SimNode};
use super::rng::Rng;

pub const NEW_IMAGE: &str = "9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7";
pub const PREVIOUS_IMAGE: &str = "1a2b3c4d5e6f708192a3b4c5d6e7f809";
pub const NEW_GENERATION: Generation = Generation(9);
pub const PREVIOUS_GENERATION: Generation = Generation(6);
/// More steps than any run with bounded faults needs: reaching it means the machine stalled.
const STEP_LIMIT: usize = 100_000;

/// The cluster and what will go wrong on its nodes.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub nodes: usize,
    pub with_previous: bool,
    pub policy: HookFailurePolicy,
    /// Per node, in cluster order; missing entries mean no fault.
    pub faults: Vec<NodeFaults>,
}

impl Scenario {
    pub fn healthy(nodes: usize) -> Scenario {
        Scenario {
            nodes,
            with_previous: true,
            policy: HookFailurePolicy::Rollback,
            faults: Vec::new(),
        }
    }

    pub fn plan(&self) -> Plan {
        Plan {
            deployment: "dep-42".into(),
            nodes: (1..=self.nodes)
                .map(|i| format!("production-{i}"))
                .collect(),
            image: NEW_IMAGE.into(),
            generation: NEW_GENERATION,
            previous: self.with_previous.then(previous_release),
            on_hook_failure: self.policy,
            data: None,
            kind: PlanKind::Deployment,
        }
    }
}

pub fn previous_release() -> Release {
    Release {
        image: PREVIOUS_IMAGE.into(),
        generation: PREVIOUS_GENERATION,
    }
}

pub fn new_release() -> Release {
    Release {
        image: NEW_IMAGE.into(),
        generation: NEW_GENERATION,
    }
}

/// How hostile the network, the nodes and the controller are.
#[derive(Debug, Clone, Default)]
pub struct Chaos {
    pub seed: u64,
    pub drop_percent: u32,
    pub duplicate_percent: u32,
    /// Budgets: how many crashes may still happen at random.
    pub node_crashes: u32,
    pub controller_crashes: u32,
    /// Weight of a random crash among the other things that may happen next (10 for a
    /// delivery).
    pub crash_weight: u32,
    /// Weight of a deadline passing while the answer is still on its way.
    pub early_timeout_weight: u32,
    /// Crash the controller just before carrying out the commands with these numbers (counted
    /// over the whole run, from 0).
    pub controller_crash_before: Vec<usize>,
}

impl Chaos {
    /// Nothing is lost or duplicated and nothing crashes; only the order of deliveries varies.
    pub fn calm(seed: u64) -> Chaos {
        Chaos {
            seed,
            ..Chaos::default()
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    DeliverRequest(usize),
    DeliverAnswer(usize),
    Timeout(RequestId),
    FinishHook(usize, HookKind),
    CrashNode(usize),
    RestartNode(usize),
    CrashController,
}

#[derive(Debug)]
pub struct World {
    pub plan: Plan,
    pub nodes: Vec<SimNode>,
    pub journal: Vec<Record>,
    pub log: Vec<String>,
    pub controller_restarts: u32,
    /// Every generation any node ever served, with its image (I1 across time).
    pub served_generations: BTreeMap<Generation, String>,
    /// How many commands the orchestrators carried out.
    pub commands_carried_out: usize,
    /// What the edge was told last: it outlives the controller's crashes. Open at the previous
    /// release before the deployment, as an environment that serves is.
    pub edge: Option<EdgeGate>,
    machine: Deployment,
    requests: Vec<(RequestId, usize, Request)>,
    answers: Vec<(RequestId, Result<Reply, NodeFailure>)>,
    waiting_for_hooks: Vec<(usize, RequestId, HookKind)>,
    running_hooks: BTreeSet<(usize, HookKind)>,
    /// The current orchestrator's requests, and those it answered (one event each, unless the
    /// network duplicates the answer).
    sent: BTreeSet<RequestId>,
    answered: BTreeSet<RequestId>,
    rng: Rng,
    chaos: Chaos,
}

/// Runs a deployment to its end, checking the invariants after every step and at the end.
pub fn run(scenario: &Scenario, chaos: Chaos) -> World {
    let plan = scenario.plan();
    let previous = plan.previous.clone();
    let nodes = plan
        .nodes
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let faults = scenario.faults.get(i).cloned().unwrap_or_default();
            SimNode::new(name.clone(), plan.previous.as_ref(), faults)
        })
        .collect();
    let (machine, commands) = Deployment::start(plan.clone());
    let mut world = World {
        plan,
        nodes,
        journal: Vec::new(),
        log: Vec::new(),
        controller_restarts: 0,
        served_generations: BTreeMap::new(),
        edge: previous.map(EdgeGate::Open),
        commands_carried_out: 0,
        machine,
        requests: Vec::new(),
        answers: Vec::new(),
        waiting_for_hooks: Vec::new(),
        running_hooks: BTreeSet::new(),
        sent: BTreeSet::new(),
        answered: BTreeSet::new(),
        rng: Rng::new(chaos.seed),
        chaos,
    };
    checks::at_every_instant(&mut world);
    world.carry_out(commands);
    let mut steps = 0;
    while !world.is_done() {
        steps += 1;
        assert!(steps < STEP_LIMIT, "the deployment made no progress");
        world.step();
        checks::at_every_instant(&mut world);
    }
    checks::at_the_end(&world);
    world
}

impl World {
    pub fn outcome(&self) -> Option<&lockstep_deploy::Outcome> {
        self.machine.outcome()
    }

    fn is_done(&self) -> bool {
        self.machine.outcome().is_some()
            && self.requests.is_empty()
            && self.answers.is_empty()
            && self.running_hooks.is_empty()
    }

    fn step(&mut self) {
        let action = self.choose();
        match action {
            Action::DeliverRequest(index) => {
                let (id, node, request) = self.requests.swap_remove(index);
                if !self.rng.percent(self.chaos.drop_percent) {
                    self.deliver_request(id, node, &request, true);
                }
            }
            Action::DeliverAnswer(index) => {
                let (id, result) = self.answers.swap_remove(index);
                if self.rng.percent(self.chaos.drop_percent) {
                    return;
                }
                if self.rng.percent(self.chaos.duplicate_percent) {
                    self.answers.push((id, result.clone()));
                }
                self.answered.insert(id);
                self.feed(Event::Reply { id, result });
            }
            Action::Timeout(id) => {
                self.answered.insert(id);
                self.feed(Event::Timeout { id });
            }
            Action::FinishHook(node, hook) => self.finish_hook(node, hook),
            Action::CrashNode(node) => {
                self.chaos.node_crashes -= 1;
                self.crash_node(node);
            }
            Action::RestartNode(node) => self.nodes[node].restart(),
            Action::CrashController => {
                self.chaos.controller_crashes -= 1;
                self.crash_controller();
            }
        }
    }

    /// Picks what happens next, weighted so that faults stay rarer than progress.
    fn choose(&mut self) -> Action {
        let mut options: Vec<(Action, u32)> = Vec::new();
        for index in 0..self.requests.len() {
            options.push((Action::DeliverRequest(index), 10));
        }
        for index in 0..self.answers.len() {
            options.push((Action::DeliverAnswer(index), 10));
        }
        for &id in &self.sent {
            if self.answered.contains(&id) || self.requests.iter().any(|r| r.0 == id) {
                continue;
            }
            // A deadline passing while an answer is still coming is a race worth trying now and
            // then; when nothing will ever answer, the deadline is the only way on.
            let coming = self.answers.iter().any(|a| a.0 == id)
                || self.waiting_for_hooks.iter().any(|w| w.1 == id);
            let weight = if coming {
                self.chaos.early_timeout_weight
            } else {
                10
            };
            if weight > 0 {
                options.push((Action::Timeout(id), weight));
            }
        }
        for &(node, hook) in &self.running_hooks {
            options.push((Action::FinishHook(node, hook), 5));
        }
        for (index, node) in self.nodes.iter().enumerate() {
            if !node.up {
                options.push((Action::RestartNode(index), 4));
            } else if self.chaos.node_crashes > 0 && self.chaos.crash_weight > 0 {
                options.push((Action::CrashNode(index), self.chaos.crash_weight));
            }
        }
        if self.chaos.controller_crashes > 0
            && self.chaos.crash_weight > 0
            && self.machine.outcome().is_none()
        {
            options.push((Action::CrashController, self.chaos.crash_weight));
        }
        let total: u32 = options.iter().map(|o| o.1).sum();
        assert!(total > 0, "nothing can happen, yet the run is not done");
        let mut pick = self.rng.below(total as usize) as u32;
        for (action, weight) in options {
            if pick < weight {
                return action;
            }
            pick -= weight;
        }
        unreachable!("the pick is below the total weight")
    }

    /// The orchestrator: carries out commands in order, each `Append` durable before the next.
    fn carry_out(&mut self, commands: Vec<Command>) {
        for command in commands {
            if self.controller_crashes_now() {
                self.crash_controller();
                return;
            }
            self.commands_carried_out += 1;
            match command {
                Command::Append(record) => self.journal.push(record),
                Command::Send {
                    id,
                    node,
                    request,
                    timeout_ms,
                } => {
                    assert!(timeout_ms > 0, "a request without a deadline");
                    let index = self.node_index(&node);
                    assert!(self.sent.insert(id), "request id {id:?} used twice");
                    self.requests.push((id, index, request));
                }
                Command::Log(line) => self.log.push(line),
                Command::Edge(gate) => self.edge = Some(gate),
            }
        }
    }

    fn controller_crashes_now(&mut self) -> bool {
        let number = self.commands_carried_out;
        if let Some(at) = self
            .chaos
            .controller_crash_before
            .iter()
            .position(|&n| n == number)
        {
            self.chaos.controller_crash_before.swap_remove(at);
            return true;
        }
        if self.chaos.controller_crashes > 0
            && self.chaos.crash_weight > 0
            && self.rng.below(200) < self.chaos.crash_weight as usize
        {
            self.chaos.controller_crashes -= 1;
            return true;
        }
        false
    }

    fn feed(&mut self, event: Event) {
        let finished_before = self.machine.outcome().is_some();
        let commands = self.machine.handle(event);
        if finished_before {
            assert!(commands.is_empty(), "a finished deployment still commands");
        }
        self.carry_out(commands);
    }

    fn deliver_request(&mut self, id: RequestId, node: usize, request: &Request, answer: bool) {
        match self.nodes[node].receive(&self.plan.deployment, request) {
            Handling::Answer(result) if answer => self.answers.push((id, result)),
            Handling::Answer(_) => {}
            Handling::WaitsForHook(hook) => {
                self.running_hooks.insert((node, hook));
                if answer {
                    self.waiting_for_hooks.push((node, id, hook));
                }
            }
        }
    }

    fn finish_hook(&mut self, node: usize, hook: HookKind) {
        self.running_hooks.remove(&(node, hook));
        let Some(reply) = self.nodes[node].finish_hook(&self.plan.deployment, hook) else {
            return;
        };
        let (done, still): (Vec<_>, Vec<_>) = self
            .waiting_for_hooks
            .drain(..)
            .partition(|w| w.0 == node && w.2 == hook);
        self.waiting_for_hooks = still;
        for (_, id, _) in done {
            self.answers.push((id, Ok(reply.clone())));
        }
    }

    fn crash_node(&mut self, node: usize) {
        self.nodes[node].crash();
        self.running_hooks.retain(|h| h.0 != node);
        // The connections of the requests waiting on the node break.
        let (broken, still): (Vec<_>, Vec<_>) =
            self.waiting_for_hooks.drain(..).partition(|w| w.0 == node);
        self.waiting_for_hooks = still;
        for (_, id, _) in broken {
            self.answers.push((id, Err(NodeFailure::Unreachable)));
        }
    }

    fn crash_controller(&mut self) {
        self.controller_restarts += 1;
        for (id, node, request) in std::mem::take(&mut self.requests) {
            if self.rng.percent(50) {
                self.deliver_request(id, node, &request, false);
            }
        }
        self.answers.clear();
        self.waiting_for_hooks.clear();
        self.sent.clear();
        self.answered.clear();
        let (machine, commands) = if self.journal.is_empty() {
            // Not even `Started` is durable: the controller starts the deployment again.
            Deployment::start(self.plan.clone())
        } else {
            Deployment::resume(&self.journal).expect("the machine's own journal replays")
        };
        self.machine = machine;
        self.carry_out(commands);
    }

    fn node_index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("the machine asked unknown node {name}"))
    }
}
