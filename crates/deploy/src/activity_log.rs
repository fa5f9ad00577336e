//! The lines a user reads in the activity log: what happens, on which nodes, and what a failure
//! means for the site.

use crate::progress::Progress;
use crate::timing::TRIES;
use crate::work::{Work, action};
use crate::{NodeName, Outcome, Phase, Plan, PlanKind, Request};

/// A release as the log names it: `image 9f2c41d0e8b7`, or for a project with several apps
/// (whose release id joins its images' ids with `+`) `images 9f2c41d0e8b7+1a2b3c4d5e6f`; each
/// id by its first 12 characters, as the CLI shows it.
pub(crate) fn release(release: &str) -> String {
    let ids: Vec<String> = release
        .split('+')
        .map(|id| id.chars().take(12).collect())
        .collect();
    let noun = if ids.len() == 1 { "image" } else { "images" };
    format!("{noun} {}", ids.join("+"))
}

fn nodes(count: usize) -> String {
    if count == 1 {
        "1 node".into()
    } else {
        format!("{count} nodes")
    }
}

pub(crate) fn introduction(plan: &Plan) -> String {
    if plan.kind == PlanKind::CatchUp {
        return format!(
            "Catching up {} to {} at generation {}, which the environment serves",
            plan.nodes.join(", "),
            release(&plan.image),
            plan.generation,
        );
    }
    let replacing = match &plan.previous {
        Some(previous) => format!(
            "replacing {} (generation {})",
            release(&previous.image),
            previous.generation
        ),
        None => "the environment's first deployment".into(),
    };
    format!(
        "Deploying {} at generation {} to {} ({}); {replacing}",
        release(&plan.image),
        plan.generation,
        nodes(plan.nodes.len()),
        plan.nodes.join(", "),
    )
}

pub(crate) fn resuming(progress: &Progress) -> String {
    match progress.in_progress() {
        Some(phase) => format!(
            "The controller restarted; resuming deployment {} in phase {}",
            progress.plan.deployment,
            phase_name(phase)
        ),
        None => format!(
            "The controller restarted; resuming deployment {}",
            progress.plan.deployment
        ),
    }
}

pub(crate) fn beginning(work: Work, plan: &Plan, targets: &[NodeName]) -> String {
    let image = release(&plan.image);
    let generation = plan.generation;
    let count = nodes(targets.len());
    let first = targets.first().map_or("no node", String::as_str);
    let previous = plan.previous.as_ref().map_or_else(String::new, |p| {
        format!("{} (generation {})", release(&p.image), p.generation)
    });
    match work {
        Work::Phase(Phase::Stage) => format!("Staging {image} on {count}"),
        Work::Phase(Phase::Quiesce) => format!("Stopping crons and workers on {count}"),
        Work::Phase(Phase::Close) => format!("Closing {count} to requests"),
        Work::Phase(Phase::ReplaceData) => format!(
            "Replacing the data with {} while every node is closed",
            plan.data.as_deref().unwrap_or("nothing")
        ),
        Work::Phase(Phase::Swap) => {
            format!("Switching {count} to {image} (generation {generation})")
        }
        Work::Phase(Phase::DeployHook) => format!("Running the deploy hook on {first}"),
        Work::Phase(Phase::Open) => {
            format!("Opening {count} at generation {generation}, then starting crons and workers")
        }
        Work::Phase(Phase::PostDeploy) => format!("Running the post_deploy hook on {first}"),
        Work::Phase(Phase::Rollback) => format!("Rolling {count} back to {previous}"),
        Work::Restore => format!(
            "Restarting crons and workers of {previous} on {count}; it kept serving throughout"
        ),
    }
}

pub(crate) fn retry(node: &str, request: &Request, failed_tries: u32, reopening: bool) -> String {
    if reopening {
        format!(
            "{node} closed again before its crons and workers started (it restarted); \
             opening it again (try {failed_tries} of {TRIES})"
        )
    } else {
        format!(
            "{node} did not answer to {} (try {failed_tries} of {TRIES}); asking again",
            action(request)
        )
    }
}

pub(crate) fn lost(node: &str, why: &str, past_close: bool) -> String {
    if past_close {
        format!("{node} {why}; it stays closed and will catch up")
    } else {
        format!("{node} {why}")
    }
}

pub(crate) fn hook_outcome(
    hook: &str,
    node: &str,
    succeeded: bool,
    detail: Option<&str>,
) -> String {
    let detail = detail.map_or_else(String::new, |d| format!(" ({d})"));
    if succeeded {
        format!("The {hook} hook succeeded on {node}")
    } else if hook == "post_deploy" {
        format!("The post_deploy hook failed on {node}{detail}; the new release serves anyway")
    } else {
        format!("The {hook} hook failed on {node}{detail}")
    }
}

pub(crate) fn failure(plan: &Plan, reason: &str, before_close: bool) -> String {
    if plan.kind == PlanKind::CatchUp {
        format!("The catch-up failed: {reason}")
    } else if before_close {
        format!("Aborting before close: {reason}. The previous release keeps serving")
    } else {
        format!("The deployment failed past close: {reason}")
    }
}

/// A reason without the output it quotes (`... Its last output:` and the lines after), which
/// the failure's own line said already.
fn summary(reason: &str) -> &str {
    let before_output = reason.split(". Its last output:").next().unwrap_or(reason);
    before_output.lines().next().unwrap_or(before_output)
}

pub(crate) fn ending(outcome: &Outcome) -> String {
    let lost = |lost_nodes: &[NodeName]| match lost_nodes {
        [] => String::new(),
        [node] => format!("; {node} stays closed until it catches up"),
        nodes => format!("; {} stay closed until they catch up", nodes.join(", ")),
    };
    match outcome {
        Outcome::Completed { lost_nodes } => format!("Deployment completed{}", lost(lost_nodes)),
        Outcome::Aborted { reason } => format!("Deployment aborted: {}", summary(reason)),
        Outcome::OpenedDespiteHookFailure { reason, lost_nodes } => format!(
            "Deployment failed, opened with the new release anyway: {}{}",
            summary(reason),
            lost(lost_nodes)
        ),
        Outcome::RolledBack { reason, lost_nodes } => format!(
            "Deployment failed and was rolled back: {}{}",
            summary(reason),
            lost(lost_nodes)
        ),
        Outcome::NotCaughtUp { reason } => format!(
            "Catch-up failed: {}; the node stays closed and is tried again later",
            summary(reason)
        ),
        Outcome::StayedClosed { reason } => format!(
            "Deployment failed; the environment stays closed until an operator deploys or rolls back: {}",
            summary(reason)
        ),
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Stage => "stage",
        Phase::Quiesce => "quiesce",
        Phase::Close => "close",
        Phase::ReplaceData => "data replacement",
        Phase::Swap => "swap",
        Phase::DeployHook => "deploy hook",
        Phase::Open => "open",
        Phase::PostDeploy => "post_deploy",
        Phase::Rollback => "rollback",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ending_names_the_failure_without_quoting_its_output_again() {
        let reason = "node production-1 failed: the web process exited 3 times; nothing opened. Its last output:\nTraceback\nError: no module";
        let plan = Plan {
            deployment: "dep-1".into(),
            nodes: vec!["production-1".into()],
            image: "9f2c41d0e8b7".into(),
            generation: lockstep_proto::Generation(2),
            previous: None,
            on_hook_failure: crate::HookFailurePolicy::Rollback,
            data: None,
            kind: PlanKind::Deployment,
        };
        let ending = ending(&Outcome::RolledBack {
            reason: reason.into(),
            lost_nodes: Vec::new(),
        });
        assert_eq!(
            ending,
            "Deployment failed and was rolled back: node production-1 failed: the web process exited 3 times; nothing opened"
        );
        assert!(
            failure(&plan, reason, false).contains("Error: no module"),
            "said once, with the failure"
        );
    }
}
