//! `Deployment`: takes events, returns commands. It ties together the journal state
//! (`progress`), the decision table (`course`) and the round of requests in flight (`round`).
//!
//! Every decision is taken from the journal state alone, and every record is applied to it as
//! it is appended, so `resume` rebuilds a deployment that decides exactly as the original would
//! have. Only the requests in flight are lost in a restart; the machine asks for them again.

use crate::activity_log;
use crate::course::{self, Next};
use crate::progress::Progress;
use crate::round::{Happening, RequestIds, Round};
use crate::timing::timeout_ms;
use crate::work::{NodeResult, Work, hook_name};
use crate::{
    Command, EdgeGate, Event, HookKind, NodeFailure, NodeName, Outcome, Phase, Plan, Record,
    Release, RequestId,
};

#[derive(Debug)]
pub struct Deployment {
    progress: Progress,
    /// The work in flight; `None` once finished.
    round: Option<Round>,
    ids: RequestIds,
}

#[derive(Debug, thiserror::Error)]
#[error("the journal cannot be replayed: {0}")]
pub struct JournalError(pub String);

impl Deployment {
    /// Starts a deployment. The first command journals `Started`; the first requests stage the
    /// image on every node.
    pub fn start(plan: Plan) -> (Deployment, Vec<Command>) {
        let mut deployment = Deployment::new(Progress::new(plan.clone()));
        let mut out = vec![
            Command::Append(Record::Started { plan: plan.clone() }),
            Command::Log(activity_log::introduction(&plan)),
        ];
        deployment.advance(&mut out);
        (deployment, out)
    }

    /// Rebuilds a deployment from its journal after a controller restart, and asks again for
    /// the (idempotent) requests of the work in progress. A finished journal gives a finished
    /// deployment and no command.
    pub fn resume(journal: &[Record]) -> Result<(Deployment, Vec<Command>), JournalError> {
        let progress = Progress::from_journal(journal).map_err(JournalError)?;
        let mut deployment = Deployment::new(progress);
        if deployment.outcome().is_some() {
            return Ok((deployment, Vec::new()));
        }
        let mut out = vec![Command::Log(activity_log::resuming(&deployment.progress))];
        deployment.advance(&mut out);
        // The edge may have lost what it was told (it restarted meanwhile): told again, unless
        // what the machine did just now told it.
        let told = out
            .iter()
            .any(|command| matches!(command, Command::Edge(_)));
        if let Some(edge) = deployment.edge_now().filter(|_| !told) {
            out.push(Command::Edge(edge));
        }
        Ok((deployment, out))
    }

    /// Takes in the answer to a request. Answers the machine no longer waits for (late,
    /// duplicated, unknown id, or after the end) give no command.
    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        let (id, answer) = match event {
            Event::Reply { id, result } => (id, result),
            // Like no answer at all: unknown whether it happened.
            Event::Timeout { id } => (id, Err(NodeFailure::Unreachable)),
        };
        let Some(round) = self.round.as_mut() else {
            return Vec::new();
        };
        let Some(happenings) = round.answer(id, &answer, &mut self.ids) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        self.emit(happenings, &mut out);
        if self.round.as_ref().is_some_and(Round::is_complete) {
            let round = self.round.take().expect("checked just above");
            self.conclude(&round, &mut out);
            self.advance(&mut out);
        }
        out
    }

    /// `Some` once the deployment finished (its `Finished` record is among the commands given).
    pub fn outcome(&self) -> Option<&Outcome> {
        self.progress.finished.as_ref()
    }

    /// The phase in progress; `None` before the first, between two, while an abort restarts the
    /// previous release's background work, and after the end.
    pub fn phase(&self) -> Option<Phase> {
        self.progress.in_progress()
    }

    pub fn plan(&self) -> &Plan {
        &self.progress.plan
    }

    /// The nodes lost so far, in cluster order. They stay closed until they catch up.
    pub fn lost_nodes(&self) -> Vec<NodeName> {
        self.progress.lost_nodes()
    }

    /// Whether the machine waits for an answer to this request.
    pub fn is_waiting_for(&self, id: RequestId) -> bool {
        self.round.as_ref().is_some_and(|r| r.is_waiting_for(id))
    }

    fn new(progress: Progress) -> Deployment {
        Deployment {
            progress,
            round: None,
            ids: RequestIds::default(),
        }
    }

    /// Follows the course until requests are in flight or the deployment finished.
    fn advance(&mut self, out: &mut Vec<Command>) {
        while self.progress.finished.is_none() {
            match course::next(&self.progress) {
                Next::EndPhase(phase) => self.append(out, Record::PhaseEnded { phase }),
                Next::Finish => self.finish(out),
                Next::Run(work) => {
                    let round = self.begin(work, out);
                    if !round.is_complete() {
                        self.round = Some(round);
                        return;
                    }
                    // Nobody to ask (every target lost): the work ends at once.
                    self.conclude(&round, out);
                }
            }
        }
    }

    fn begin(&mut self, work: Work, out: &mut Vec<Command>) -> Round {
        if let Work::Phase(phase) = work
            && !self.progress.started(phase)
        {
            self.append(out, Record::PhaseStarted { phase });
        }
        if work == Work::Phase(Phase::DeployHook) && self.progress.hook_node.is_none() {
            // Journaled before the hook is asked for: a restart asks this node again, and never
            // another one (I2).
            if let Some(node) = self.progress.remaining_nodes().into_iter().next() {
                self.append(out, Record::HookNode { node });
            }
        }
        let targets = work.targets(&self.progress);
        let steps = work.steps(&self.progress.plan);
        out.push(Command::Log(activity_log::beginning(
            work,
            &self.progress.plan,
            &targets,
        )));
        let (round, happenings) = Round::start(work, targets, &steps, &mut self.ids);
        self.emit(happenings, out);
        round
    }

    fn emit(&mut self, happenings: Vec<Happening>, out: &mut Vec<Command>) {
        for happening in happenings {
            match happening {
                Happening::Send { id, node, request } => out.push(Command::Send {
                    id,
                    node,
                    timeout_ms: timeout_ms(&request),
                    request,
                }),
                Happening::Retry {
                    node,
                    request,
                    failed_tries,
                    reopening,
                } => out.push(Command::Log(activity_log::retry(
                    &node,
                    &request,
                    failed_tries,
                    reopening,
                ))),
                Happening::Warning { node, text } => {
                    out.push(Command::Log(format!("{node} {text}")));
                }
                Happening::Lost { node, why } => {
                    let line = activity_log::lost(&node, &why, self.progress.past_close());
                    self.append(out, Record::NodeLost { node });
                    out.push(Command::Log(line));
                }
            }
        }
    }

    /// Journals what a finished round decided.
    fn conclude(&mut self, round: &Round, out: &mut Vec<Command>) {
        let Work::Phase(phase) = round.work() else {
            // The restore after an abort: the previous release serves again everywhere, and
            // the `Serving` record that says so opens the edge again.
            self.finish(out);
            return;
        };
        self.record_hook_outcomes(phase, round, out);
        // The failure goes first: a restart that finds it with the phase not ended ends the
        // phase and follows the failure's course, instead of running the phase again.
        if let Some(reason) = self.failure_of(phase, round) {
            let before_close = matches!(phase, Phase::Stage | Phase::Quiesce | Phase::Close);
            out.push(Command::Log(activity_log::failure(
                &self.progress.plan,
                &reason,
                before_close,
            )));
            self.append(out, Record::Failure { reason });
        }
        self.append(out, Record::PhaseEnded { phase });
    }

    fn record_hook_outcomes(&mut self, phase: Phase, round: &Round, out: &mut Vec<Command>) {
        let hook = match phase {
            Phase::DeployHook => HookKind::Deploy,
            Phase::PostDeploy => HookKind::PostDeploy,
            _ => return,
        };
        for (node, result) in round.results() {
            if let NodeResult::Hook {
                succeeded,
                detail,
                output,
            } = result
            {
                out.push(Command::Log(activity_log::hook_outcome(
                    hook_name(hook),
                    node,
                    *succeeded,
                    detail.as_deref(),
                )));
                // A failure says why in the hook's own words.
                if !*succeeded {
                    for line in output {
                        out.push(Command::Log(format!("  {line}")));
                    }
                }
                let succeeded = *succeeded;
                self.append(out, Record::HookOutcome { hook, succeeded });
            }
        }
    }

    /// The failure that changes the course, if this round ended in one.
    fn failure_of(&self, phase: Phase, round: &Round) -> Option<String> {
        match phase {
            Phase::Stage | Phase::Quiesce | Phase::Close => {
                let failed = round.results().find_map(|(node, result)| match result {
                    NodeResult::Failed(why) | NodeResult::Lost(why) => {
                        Some(format!("{node} {why}"))
                    }
                    _ => None,
                });
                // A node lost before a restart is no target any more, but still aborts.
                failed.or_else(|| {
                    let lost = self.progress.lost_nodes();
                    (!lost.is_empty()).then(|| format!("lost {}", lost.join(", ")))
                })
            }
            Phase::Swap => round.results().find_map(|(node, result)| match result {
                NodeResult::Failed(why) => Some(format!("the new release failed on {node}: {why}")),
                _ => None,
            }),
            Phase::ReplaceData => round.results().find_map(|(node, result)| match result {
                NodeResult::Failed(why) | NodeResult::Lost(why) => Some(format!("{node} {why}")),
                _ => None,
            }),
            Phase::DeployHook => {
                let node = self.progress.hook_node.as_deref().unwrap_or("no node");
                match self.progress.deploy_hook_succeeded {
                    Some(true) => None,
                    Some(false) => {
                        let detail = round.results().find_map(|(_, result)| match result {
                            NodeResult::Hook {
                                detail: Some(detail),
                                ..
                            } => Some(format!(" ({detail})")),
                            _ => None,
                        });
                        Some(format!(
                            "the deploy hook failed on {node}{}",
                            detail.unwrap_or_default()
                        ))
                    }
                    None => Some(format!(
                        "{node} was lost while the deploy hook ran; its outcome is unknown, \
                         and the hook never runs on another node"
                    )),
                }
            }
            Phase::Open | Phase::PostDeploy | Phase::Rollback => None,
        }
    }

    fn finish(&mut self, out: &mut Vec<Command>) {
        let (release, outcome) = course::ending(&self.progress);
        if self.progress.serving.is_none() && self.progress.plan.changes_the_environment() {
            self.append(out, Record::Serving { release });
        }
        out.push(Command::Log(activity_log::ending(&outcome)));
        self.append(out, Record::Finished { outcome });
        self.round = None;
    }

    /// Journals a record and applies it to the state in the same step. The edge is told as soon
    /// as a record changes what it should do: decided from the journal state alone, the gate is
    /// the same for a machine resumed after any record.
    fn append(&mut self, out: &mut Vec<Command>, record: Record) {
        let edge_before = self.edge_now();
        let applied = self.progress.apply(&record);
        debug_assert!(
            applied.is_ok(),
            "the machine wrote a bad record: {applied:?}"
        );
        out.push(Command::Append(record));
        if let Some(edge) = self
            .edge_now()
            .filter(|edge| edge_before.as_ref() != Some(edge))
        {
            out.push(Command::Edge(edge));
        }
    }

    /// What the edge should be doing now, from the journal: closed from the start of close,
    /// then open at the release the nodes opened at once they did; `None` before close.
    fn edge_now(&self) -> Option<EdgeGate> {
        let progress = &self.progress;
        if !progress.plan.changes_the_environment() || !progress.started(Phase::Close) {
            return None;
        }
        Some(self.reopened_at().map_or(EdgeGate::Closed, EdgeGate::Open))
    }

    /// The release the nodes opened at since they closed, if they did: none while every node
    /// is lost, which leaves the environment closed.
    fn reopened_at(&self) -> Option<Release> {
        let progress = &self.progress;
        if progress.remaining_nodes().is_empty() {
            None
        } else if progress.ended(Phase::Rollback) {
            progress.plan.previous.clone()
        } else if progress.ended(Phase::Open) {
            Some(progress.plan.target())
        } else {
            // The restore after an abort in close is no phase: the `Serving` record written
            // once it reopened the nodes is all the journal keeps of its end.
            progress.serving.clone().flatten()
        }
    }
}
