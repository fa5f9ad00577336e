//! What each piece of work asks of a node, and what each answer means in it.

use lockstep_proto::Generation;

use crate::activity_log::release;
use crate::progress::Progress;
use crate::timing::TRIES;
use crate::{HookKind, NodeFailure, Phase, Plan, Reply, Request};

/// A round of requests: one phase, or the restore that ends an abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    Phase(Phase),
    /// After a failure before close: every node gets the previous release's background work
    /// back, and any node that closed opens again. The previous release never stopped serving.
    Restore,
}

/// The meaning of one answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The step is done: go on with the node's next step.
    Done,
    /// The step is done but something deserves a line in the log.
    DoneWithWarning(String),
    /// Unknown whether it happened: ask again while tries remain.
    NoAnswer,
    /// The node is no longer open at the generation (it restarted since it opened): open it
    /// again, then retry.
    Reopen,
    /// The node's part in this round ends with this result.
    Settled(NodeResult),
}

/// How one node's part in a round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeResult {
    Done,
    Hook {
        succeeded: bool,
        detail: Option<String>,
        /// The last lines of the hook's output.
        output: Vec<String>,
    },
    /// The node answered that it could not do it (before close: the deployment aborts; in the
    /// swap: the new release does not start).
    Failed(String),
    /// The node cannot take part any more; it stays closed until it catches up.
    Lost(String),
}

impl Work {
    /// The nodes asked, in cluster order. `DeployHook` needs `Progress::hook_node` chosen first.
    pub fn targets(self, progress: &Progress) -> Vec<String> {
        let remaining = progress.remaining_nodes();
        match self {
            Work::Phase(Phase::DeployHook) => progress
                .hook_node
                .iter()
                .filter(|node| !progress.is_lost(node))
                .cloned()
                .collect(),
            Work::Phase(Phase::PostDeploy | Phase::ReplaceData) => {
                remaining.into_iter().take(1).collect()
            }
            _ => remaining,
        }
    }

    /// The requests every target node is asked, one after the other.
    pub fn steps(self, plan: &Plan) -> Vec<Request> {
        let new_generation = plan.generation;
        match self {
            Work::Phase(Phase::Stage) => vec![Request::Stage {
                image: plan.image.clone(),
            }],
            Work::Phase(Phase::Quiesce) => vec![Request::Quiesce],
            Work::Phase(Phase::Close) => vec![Request::Close],
            Work::Phase(Phase::Swap) => vec![Request::Swap {
                image: plan.image.clone(),
                generation: new_generation,
            }],
            Work::Phase(Phase::ReplaceData) => vec![Request::ReplaceData {
                source: plan.data.clone().unwrap_or_default(),
            }],
            Work::Phase(Phase::DeployHook) => vec![Request::RunHook {
                hook: HookKind::Deploy,
            }],
            Work::Phase(Phase::Open) => open_at(new_generation),
            Work::Phase(Phase::PostDeploy) => vec![Request::RunHook {
                hook: HookKind::PostDeploy,
            }],
            Work::Phase(Phase::Rollback) => {
                let mut steps = Vec::new();
                if let Some(previous) = &plan.previous {
                    // The previous release comes back at its own generation: a generation names
                    // exactly one release, so a node still holding the new release can never
                    // open beside the nodes rolled back (I1).
                    steps.push(Request::Swap {
                        image: previous.image.clone(),
                        generation: previous.generation,
                    });
                    steps.extend(open_at(previous.generation));
                }
                steps
            }
            Work::Restore => plan
                .previous
                .as_ref()
                .map(|previous| open_at(previous.generation))
                .unwrap_or_default(),
        }
    }

    /// What happens when a node never answers, after every try.
    pub fn when_silent(self, request: &Request) -> NodeResult {
        match self {
            // Only the post_deploy hook's failure is harmless: it is logged, the node serves on.
            Work::Phase(Phase::PostDeploy) => NodeResult::Hook {
                succeeded: false,
                detail: Some("no answer".into()),
                output: Vec::new(),
            },
            _ => NodeResult::Lost(format!(
                "did not answer to {} after {TRIES} tries",
                action(request)
            )),
        }
    }

    pub fn judge(self, request: &Request, answer: &Result<Reply, NodeFailure>) -> Verdict {
        let why = match answer {
            Err(NodeFailure::Unreachable) => return Verdict::NoAnswer,
            Ok(reply) => return judge_reply(request, reply),
            Err(NodeFailure::Refused(why)) => format!("refused: {why}"),
            Err(NodeFailure::Failed(why)) => format!("failed: {why}"),
        };
        let refused = matches!(answer, Err(NodeFailure::Refused(_)));
        let problem = format!("could not {} ({why})", action(request));
        match request {
            Request::Stage { .. }
            | Request::Quiesce
            | Request::Close
            | Request::ReplaceData { .. } => Verdict::Settled(NodeResult::Failed(problem)),
            // A web process that never listened is the new release failing; a refusal (image
            // missing, node open) is about this node only.
            Request::Swap { .. } if self == Work::Phase(Phase::Swap) && !refused => {
                Verdict::Settled(NodeResult::Failed(problem))
            }
            // Refused in a rollback: after a restart of the controller, the node may already
            // be back and open at the previous generation. The open that follows tells: it
            // succeeds only if the previous release is active there.
            Request::Swap { .. } if self == Work::Phase(Phase::Rollback) && refused => {
                Verdict::Done
            }
            Request::Swap { .. } | Request::Open { .. } => {
                Verdict::Settled(NodeResult::Lost(problem))
            }
            Request::RunHook { .. } => Verdict::Settled(NodeResult::Hook {
                succeeded: false,
                detail: Some(why),
                output: Vec::new(),
            }),
            // Refused: the node is not open at the generation any more, so it restarted.
            Request::StartBackground { .. } if refused => Verdict::Reopen,
            // The node serves; its workers may come back under the agent's supervision.
            Request::StartBackground { .. } => Verdict::DoneWithWarning(problem),
        }
    }
}

fn open_at(generation: Generation) -> Vec<Request> {
    vec![
        Request::Open { generation },
        Request::StartBackground { generation },
    ]
}

fn judge_reply(request: &Request, reply: &Reply) -> Verdict {
    match (request, reply) {
        (Request::RunHook { .. }, Reply::Hook { succeeded, output }) => {
            Verdict::Settled(NodeResult::Hook {
                succeeded: *succeeded,
                detail: None,
                output: output.clone(),
            })
        }
        // An outcome never guessed (I2): an answer without one counts as a failure.
        (Request::RunHook { .. }, Reply::Done) => Verdict::Settled(NodeResult::Hook {
            succeeded: false,
            detail: Some("the agent answered without the hook's outcome".into()),
            output: Vec::new(),
        }),
        _ => Verdict::Done,
    }
}

/// The request as a verb phrase for the activity log.
pub(crate) fn action(request: &Request) -> String {
    match request {
        Request::Stage { image } => format!("stage {}", release(image)),
        Request::Quiesce => "stop crons and workers".into(),
        Request::Close => "close".into(),
        Request::Swap { image, generation } => {
            format!("switch to {} (generation {generation})", release(image))
        }
        Request::ReplaceData { source } => format!("replace the data with {source}"),
        Request::RunHook { hook } => format!("run the {} hook", hook_name(*hook)),
        Request::Open { generation } => format!("open at generation {generation}"),
        Request::StartBackground { .. } => "start crons and workers".into(),
    }
}

pub(crate) fn hook_name(hook: HookKind) -> &'static str {
    match hook {
        HookKind::Deploy => "deploy",
        HookKind::PostDeploy => "post_deploy",
    }
}
