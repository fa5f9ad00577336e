//! The cluster deploy procedure of SPEC section 3, as a state machine without I/O.
//!
//! Owns: every decision of a deployment: which node is asked what and when, when a phase ends,
//! which node runs the deploy hook, what a failure or a lost node means, what is journaled, and
//! how a deployment resumes from its journal after the controller restarts.
//! Must never: perform I/O, read a clock, spawn, or block. Time reaches it only as `Timeout`
//! events; the controller's orchestrator carries out its commands and feeds back the answers.
//!
//! The contract with the orchestrator:
//! - Commands are carried out in order. `Append` must be durable before any later command of the
//!   same batch is carried out: the journal is what `Deployment::resume` rebuilds from (I4).
//! - Every `Send` gets exactly one answer event back, `Reply` or `Timeout`, naming its id. A
//!   reply to an id the machine no longer waits for (late, duplicated) is ignored.
//! - Every request to an agent is idempotent for its deployment and generation, so the machine
//!   may send one again after a timeout or a restart.
//! - A request takes effect on its node, if at all, before the machine hears about it: reporting
//!   `Timeout` means the orchestrator abandoned the request (closed its connection), and an agent
//!   handles an instance's requests in the order they arrive. The machine never has two requests
//!   in flight to one node, so each node sees them in the order decided.
//! - `Unreachable` counts as one failed try, like `Timeout`, and the machine asks again at once:
//!   report it only once the node stayed unreachable for a while (retry the connection with a
//!   short backoff within `timeout_ms`), or a node restarting for a few seconds is lost.
//!
//! Two decisions shape the rest (details in `course` and `work`):
//! - The point of no return is every node having confirmed close. A node that fails or stays
//!   silent before that, in the close phase too, aborts the deployment: it may still serve the
//!   old release, so opening the new one elsewhere could serve two releases at once (I1).
//! - A rollback reopens the previous release at its own generation: a generation always names
//!   one release, so a lost node still holding the new release can never open beside it.

use lockstep_proto::Generation;
use serde::{Deserialize, Serialize};

mod activity_log;
mod course;
mod machine;
mod progress;
mod round;
mod timing;
mod work;

pub use machine::{Deployment, JournalError};

pub type NodeName = String;

/// What to do when the deploy hook fails (environment setting `on_hook_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookFailurePolicy {
    /// Swap every node back to the previous release and reopen; the activity fails.
    Rollback,
    /// Open with the new release anyway (Platform.sh's behaviour); the activity fails.
    Open,
    /// Stay closed until an operator deploys or rolls back.
    StayClosed,
}

/// A release as the environment serves it: an image at a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub image: String,
    pub generation: Generation,
}

/// What a plan changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanKind {
    /// A release for the environment: every phase; the edge follows the nodes' gates.
    #[default]
    Deployment,
    /// A node that missed deployments, or came back closed, brought to the release its
    /// environment serves, at that release's generation: staged, quiesced, closed, switched
    /// and opened, without hooks. What the environment serves, its other nodes and the edge
    /// stay as they are; a failure leaves the node closed, to be tried again later.
    CatchUp,
}

/// Everything a deployment needs to know when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub deployment: String,
    /// The environment's nodes in cluster order. The deploy hook runs on the first node that
    /// completed the swap.
    pub nodes: Vec<NodeName>,
    pub image: String,
    /// The generation the new release opens at: greater than every generation used before.
    pub generation: Generation,
    /// What the environment serves now; `None` for its first deployment.
    pub previous: Option<Release>,
    pub on_hook_failure: HookFailurePolicy,
    /// Data to put in place of the environment's while every node is closed (a backup
    /// restored, another environment's data synced), named as the orchestrator understands it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default)]
    pub kind: PlanKind,
}

impl Plan {
    /// Whether the plan changes what the environment serves, and with it the edge's gate.
    pub fn changes_the_environment(&self) -> bool {
        self.kind == PlanKind::Deployment
    }

    /// The release the deployment puts in place.
    pub fn target(&self) -> Release {
        Release {
            image: self.image.clone(),
            generation: self.generation,
        }
    }
}

/// The phases of SPEC section 3 after the build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Stage,
    Quiesce,
    Close,
    /// Replacing the environment's data (`Plan::data`), once, while every node is closed.
    ReplaceData,
    Swap,
    DeployHook,
    Open,
    PostDeploy,
    /// Swapping back to the previous release after a failure past close.
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    Deploy,
    PostDeploy,
}

/// What to ask one node. The orchestrator adds the deployment id, and the runtime inputs for a
/// swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Stage {
        image: String,
    },
    Quiesce,
    Close,
    Swap {
        image: String,
        generation: Generation,
    },
    /// Puts `source` (`Plan::data`) in place of the environment's data; asked of one node.
    ReplaceData {
        source: String,
    },
    /// Runs the hook, or returns its stored outcome if it already ran for this deployment.
    RunHook {
        hook: HookKind,
    },
    Open {
        generation: Generation,
    },
    StartBackground {
        generation: Generation,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// A node's successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    /// The hook's outcome; `false` also for a hook interrupted by an agent restart.
    Hook {
        succeeded: bool,
        /// The last lines of its output, said in the activity's log when it failed.
        #[serde(default)]
        output: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeFailure {
    /// No answer: connection refused or broken. The request may be sent again.
    Unreachable,
    /// The node refused the command in its present state; nothing changed there.
    Refused(String),
    /// The node tried and failed (a web process that never listened, a corrupt image).
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Reply {
        id: RequestId,
        result: Result<Reply, NodeFailure>,
    },
    /// The orchestrator's deadline for this request passed without an answer.
    Timeout { id: RequestId },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Append to the deployment's journal, durably, before carrying out what follows.
    Append(Record),
    /// Ask a node; answer with an event naming `id` within `timeout_ms`.
    Send {
        id: RequestId,
        node: NodeName,
        request: Request,
        timeout_ms: u64,
    },
    /// A line for the activity log.
    Log(String),
    /// Tell the edge in front of the environment, before carrying out what follows.
    Edge(EdgeGate),
}

/// What the edge does with the environment's visitors: the machine decides it with the
/// nodes' gates, so that the edge never sends visitors to a closed node nor holds them in front
/// of an open one for longer than it takes to say so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EdgeGate {
    /// The nodes are about to close: anonymous visitors are served from cache, the others held.
    Closed,
    /// The nodes are open at this release: visitors go to them.
    Open(Release),
}

/// How a deployment ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// The new release serves on every node that was not lost.
    Completed { lost_nodes: Vec<NodeName> },
    /// A failure before close: the old release never stopped serving (I5).
    Aborted { reason: String },
    /// The deploy hook failed and the policy was `open`: the new release serves.
    OpenedDespiteHookFailure {
        reason: String,
        lost_nodes: Vec<NodeName>,
    },
    /// A failure past close: the previous release serves again.
    RolledBack {
        reason: String,
        lost_nodes: Vec<NodeName>,
    },
    /// The environment is closed and waits for an operator.
    StayedClosed { reason: String },
    /// A catch-up that did not bring its node to the release: the node stays closed, and the
    /// environment serves on its other nodes.
    NotCaughtUp { reason: String },
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Completed { .. })
    }
}

/// The journal: enough to rebuild a deployment's state after a restart of the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Started {
        plan: Plan,
    },
    PhaseStarted {
        phase: Phase,
    },
    PhaseEnded {
        phase: Phase,
    },
    /// A node that cannot take part any more; it stays closed until it catches up.
    NodeLost {
        node: NodeName,
    },
    /// Chosen before the hook is asked for, so a restart asks the same node (I2).
    HookNode {
        node: NodeName,
    },
    HookOutcome {
        hook: HookKind,
        succeeded: bool,
    },
    /// A failure that changes the deployment's course, journaled before the course changes, so
    /// a restart follows the same course: before every node is closed the deployment aborts;
    /// past close the swap-failure or hook-failure policy applies.
    Failure {
        reason: String,
    },
    /// What the environment serves when the deployment ends (`None`: it stays closed).
    Serving {
        release: Option<Release>,
    },
    Finished {
        outcome: Outcome,
    },
}
