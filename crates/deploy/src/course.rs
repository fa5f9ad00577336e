//! The decision table of SPEC section 3: given what the journal says, what comes next, and how
//! the deployment ends. Pure functions of `Progress`, so a live deployment and one resumed from
//! its journal take the same decisions.

use std::collections::BTreeSet;

use crate::progress::{Failure, Progress};
use crate::work::Work;
use crate::{HookFailurePolicy, Outcome, Phase, Plan, PlanKind, Release};

/// The phases of a deployment that goes well, in order; replacing its data only when the plan
/// brings some.
fn forward(plan: &Plan) -> Vec<Phase> {
    if plan.kind == PlanKind::CatchUp {
        return vec![
            Phase::Stage,
            Phase::Quiesce,
            Phase::Close,
            Phase::Swap,
            Phase::Open,
        ];
    }
    let mut phases = vec![Phase::Stage, Phase::Quiesce, Phase::Close];
    if plan.data.is_some() {
        phases.push(Phase::ReplaceData);
    }
    phases.extend([
        Phase::Swap,
        Phase::DeployHook,
        Phase::Open,
        Phase::PostDeploy,
    ]);
    phases
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Ask the nodes for this work; after a restart, ask again for the work in progress.
    Run(Work),
    /// The phase in progress ended in a failure already journaled: journal its end.
    EndPhase(Phase),
    /// Journal what serves and how the deployment ended.
    Finish,
}

/// What a failure past close leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Response {
    RollBack,
    OpenAnyway,
    StayClosed,
}

pub(crate) fn next(progress: &Progress) -> Next {
    if progress.serving.is_some() || plan_problem(&progress.plan).is_some() {
        return Next::Finish;
    }
    if let Some(phase) = progress.in_progress() {
        return match &progress.failure {
            Some(failure) if failure.phase == phase => Next::EndPhase(phase),
            _ => Next::Run(Work::Phase(phase)),
        };
    }
    match &progress.failure {
        Some(failure) if failure.before_close() => {
            // Restarting the crons and workers of the nodes quiesced (and reopening any node
            // closed) is idempotent, so after a restart it simply runs again.
            if progress.plan.previous.is_some() {
                Next::Run(Work::Restore)
            } else {
                Next::Finish
            }
        }
        _ if progress.past_close() && progress.remaining_nodes().is_empty() => Next::Finish,
        None => next_forward(progress),
        Some(failure) => match response(progress, failure) {
            Response::RollBack if !progress.ended(Phase::Rollback) => {
                Next::Run(Work::Phase(Phase::Rollback))
            }
            Response::RollBack | Response::StayClosed => Next::Finish,
            Response::OpenAnyway => next_forward(progress),
        },
    }
}

/// A plan the machine cannot carry out is aborted before any node is asked anything.
fn plan_problem(plan: &Plan) -> Option<String> {
    if plan.nodes.is_empty() {
        return Some("the plan names no node".into());
    }
    let mut seen = BTreeSet::new();
    plan.nodes
        .iter()
        .find(|node| !seen.insert(*node))
        .map(|node| format!("the plan names {node} twice"))
}

fn next_forward(progress: &Progress) -> Next {
    forward(&progress.plan)
        .into_iter()
        .find(|phase| !progress.ended(*phase))
        .map_or(Next::Finish, |phase| Next::Run(Work::Phase(phase)))
}

fn response(progress: &Progress, failure: &Failure) -> Response {
    // A release that never started gives nothing to open: only the policies that do not open
    // it apply, whatever `on_hook_failure` says.
    // Data replaced in part (or not yet sanitized) is never served: the environment stays
    // closed until an operator restores or deploys it, whatever the hook policy.
    let wanted = if failure.phase == Phase::ReplaceData {
        Response::StayClosed
    } else if failure.phase == Phase::Swap {
        Response::RollBack
    } else {
        match progress.plan.on_hook_failure {
            HookFailurePolicy::Rollback => Response::RollBack,
            HookFailurePolicy::Open => Response::OpenAnyway,
            HookFailurePolicy::StayClosed => Response::StayClosed,
        }
    };
    if wanted == Response::RollBack && progress.plan.previous.is_none() {
        Response::StayClosed
    } else {
        wanted
    }
}

/// What serves at the end (the `Serving` record) and the outcome, once `next` says `Finish`.
pub(crate) fn ending(progress: &Progress) -> (Option<Release>, Outcome) {
    let plan = &progress.plan;
    let new_release = Release {
        image: plan.image.clone(),
        generation: plan.generation,
    };
    if let Some(reason) = plan_problem(plan) {
        return (plan.previous.clone(), Outcome::Aborted { reason });
    }
    let lost_nodes = progress.lost_nodes();
    let failure = progress.failure.as_ref();
    if plan.kind == PlanKind::CatchUp {
        let reason = match failure {
            Some(failure) => failure.reason.clone(),
            None if progress.remaining_nodes().is_empty() => "the node was lost".to_string(),
            None => return (Some(new_release), Outcome::Completed { lost_nodes }),
        };
        return (None, Outcome::NotCaughtUp { reason });
    }
    if let Some(failure) = failure.filter(|f| f.before_close()) {
        let reason = failure.reason.clone();
        return (plan.previous.clone(), Outcome::Aborted { reason });
    }
    if progress.remaining_nodes().is_empty() {
        let reason = match failure {
            Some(failure) => format!("{}; then every node was lost", failure.reason),
            None => "every node was lost after close".to_string(),
        };
        return (None, Outcome::StayedClosed { reason });
    }
    let Some(failure) = failure else {
        return (Some(new_release), Outcome::Completed { lost_nodes });
    };
    let reason = failure.reason.clone();
    match response(progress, failure) {
        Response::RollBack => (
            plan.previous.clone(),
            Outcome::RolledBack { reason, lost_nodes },
        ),
        Response::OpenAnyway => (
            Some(new_release),
            Outcome::OpenedDespiteHookFailure { reason, lost_nodes },
        ),
        Response::StayClosed => {
            let reason = match plan.on_hook_failure {
                _ if failure.phase == Phase::ReplaceData => {
                    format!("{reason}; its data may be replaced in part, so it stays closed")
                }
                HookFailurePolicy::StayClosed if failure.phase == Phase::DeployHook => reason,
                _ => format!("{reason}; there is no previous release to roll back to"),
            };
            (None, Outcome::StayedClosed { reason })
        }
    }
}
