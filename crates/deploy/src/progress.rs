//! What the journal says about a deployment: the durable half of its state.
//!
//! The machine applies every record it appends here in the same step, and `resume` folds the
//! journal through the same `apply`. Decisions are taken from this state only (see `course`), so a
//! deployment resumed after a controller restart stands exactly where the original stood; only
//! the requests in flight are lost, and the machine sends them again.

use std::collections::BTreeSet;

use crate::{HookKind, NodeName, Outcome, Phase, Plan, Record, Release};

/// A journaled failure and the phase it happened in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub phase: Phase,
    pub reason: String,
}

impl Failure {
    /// Before every node confirmed close, the old release may still serve somewhere: the only
    /// safe course is to abort (I1, I5).
    pub fn before_close(&self) -> bool {
        matches!(self.phase, Phase::Stage | Phase::Quiesce | Phase::Close)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub plan: Plan,
    /// Phases in the order they started.
    started: Vec<Phase>,
    ended: BTreeSet<Phase>,
    lost: BTreeSet<NodeName>,
    pub hook_node: Option<NodeName>,
    pub deploy_hook_succeeded: Option<bool>,
    pub failure: Option<Failure>,
    /// `Some` once the `Serving` record is written: what the environment serves at the end.
    pub serving: Option<Option<Release>>,
    pub finished: Option<Outcome>,
}

impl Progress {
    pub fn new(plan: Plan) -> Progress {
        Progress {
            plan,
            started: Vec::new(),
            ended: BTreeSet::new(),
            lost: BTreeSet::new(),
            hook_node: None,
            deploy_hook_succeeded: None,
            failure: None,
            serving: None,
            finished: None,
        }
    }

    /// Rebuilds the state from a journal, refusing one this machine could not have written.
    pub fn from_journal(journal: &[Record]) -> Result<Progress, String> {
        let Some((Record::Started { plan }, rest)) = journal.split_first() else {
            return Err("it does not begin with a `started` record".into());
        };
        let mut progress = Progress::new(plan.clone());
        for (index, record) in rest.iter().enumerate() {
            progress
                .apply(record)
                .map_err(|problem| format!("record {}: {problem}", index + 2))?;
        }
        Ok(progress)
    }

    pub fn apply(&mut self, record: &Record) -> Result<(), String> {
        if self.finished.is_some() {
            return Err("a record follows `finished`".into());
        }
        match record {
            Record::Started { .. } => return Err("a second `started` record".into()),
            Record::PhaseStarted { phase } => {
                if self.started(*phase) {
                    return Err(format!("phase {phase:?} starts twice"));
                }
                if let Some(running) = self.in_progress() {
                    return Err(format!("phase {phase:?} starts while {running:?} runs"));
                }
                self.started.push(*phase);
            }
            Record::PhaseEnded { phase } => {
                if self.in_progress() != Some(*phase) {
                    return Err(format!("phase {phase:?} ends but it is not in progress"));
                }
                self.ended.insert(*phase);
            }
            Record::NodeLost { node } => {
                self.check_node(node)?;
                self.lost.insert(node.clone());
            }
            Record::HookNode { node } => {
                self.check_node(node)?;
                match &self.hook_node {
                    Some(chosen) if chosen != node => {
                        return Err(format!(
                            "the deploy hook node changes from {chosen} to {node} (I2)"
                        ));
                    }
                    _ => self.hook_node = Some(node.clone()),
                }
            }
            Record::HookOutcome { hook, succeeded } => {
                if *hook == HookKind::Deploy {
                    self.deploy_hook_succeeded = Some(*succeeded);
                }
            }
            Record::Failure { reason } => {
                let Some(phase) = self.started.last().copied() else {
                    return Err("a failure before any phase".into());
                };
                // Only the first failure decides the course; later ones cannot change it.
                if self.failure.is_none() {
                    self.failure = Some(Failure {
                        phase,
                        reason: reason.clone(),
                    });
                }
            }
            Record::Serving { release } => self.serving = Some(release.clone()),
            Record::Finished { outcome } => self.finished = Some(outcome.clone()),
        }
        Ok(())
    }

    fn check_node(&self, node: &NodeName) -> Result<(), String> {
        if self.plan.nodes.contains(node) {
            Ok(())
        } else {
            Err(format!("{node} is not a node of the plan"))
        }
    }

    pub fn started(&self, phase: Phase) -> bool {
        self.started.contains(&phase)
    }

    pub fn ended(&self, phase: Phase) -> bool {
        self.ended.contains(&phase)
    }

    /// The phase started and not yet ended, if any.
    pub fn in_progress(&self) -> Option<Phase> {
        self.started
            .last()
            .copied()
            .filter(|phase| !self.ended(*phase))
    }

    /// Every node confirmed close: from here on the old release serves nowhere.
    pub fn past_close(&self) -> bool {
        self.ended(Phase::Close) && self.failure.as_ref().is_none_or(|f| !f.before_close())
    }

    pub fn is_lost(&self, node: &str) -> bool {
        self.lost.contains(node)
    }

    /// The nodes still taking part, in cluster order.
    pub fn remaining_nodes(&self) -> Vec<NodeName> {
        self.nodes_where(|node| !self.is_lost(node))
    }

    /// The lost nodes, in cluster order.
    pub fn lost_nodes(&self) -> Vec<NodeName> {
        self.nodes_where(|node| self.is_lost(node))
    }

    fn nodes_where(&self, keep: impl Fn(&str) -> bool) -> Vec<NodeName> {
        self.plan
            .nodes
            .iter()
            .filter(|node| keep(node))
            .cloned()
            .collect()
    }
}
