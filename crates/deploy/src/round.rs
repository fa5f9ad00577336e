//! One round of requests: every target node walks through the work's steps, one request at a
//! time, with a bounded number of tries. A node never has two requests of the machine in flight,
//! so its agent sees them in the order the machine decided.

use std::collections::BTreeMap;

use crate::timing::TRIES;
use crate::work::{NodeResult, Verdict, Work};
use crate::{NodeFailure, NodeName, Reply, Request, RequestId};

/// Hands out request ids, unique within one `Deployment`.
#[derive(Debug, Default)]
pub(crate) struct RequestIds(u64);

impl RequestIds {
    fn next(&mut self) -> RequestId {
        self.0 += 1;
        RequestId(self.0)
    }
}

/// What the machine must turn into commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Happening {
    Send {
        id: RequestId,
        node: NodeName,
        request: Request,
    },
    /// A try went unanswered (or the node closed again); the `Send` that follows asks again.
    Retry {
        node: NodeName,
        request: Request,
        failed_tries: u32,
        reopening: bool,
    },
    Warning {
        node: NodeName,
        text: String,
    },
    /// To journal at once: a lost node is never asked again, even after a restart.
    Lost {
        node: NodeName,
        why: String,
    },
}

#[derive(Debug)]
pub(crate) struct Round {
    work: Work,
    nodes: Vec<NodeWork>,
    waiting: BTreeMap<RequestId, usize>,
}

#[derive(Debug)]
struct NodeWork {
    node: NodeName,
    steps: Vec<Request>,
    step: usize,
    failed_tries: u32,
    result: Option<NodeResult>,
}

impl Round {
    pub fn start(
        work: Work,
        targets: Vec<NodeName>,
        steps: &[Request],
        ids: &mut RequestIds,
    ) -> (Round, Vec<Happening>) {
        let nodes = targets
            .into_iter()
            .map(|node| NodeWork {
                node,
                steps: steps.to_vec(),
                step: 0,
                failed_tries: 0,
                result: None,
            })
            .collect();
        let mut round = Round {
            work,
            nodes,
            waiting: BTreeMap::new(),
        };
        let mut happenings = Vec::new();
        for index in 0..round.nodes.len() {
            round.ask(index, ids, &mut happenings);
        }
        (round, happenings)
    }

    pub fn work(&self) -> Work {
        self.work
    }

    pub fn is_waiting_for(&self, id: RequestId) -> bool {
        self.waiting.contains_key(&id)
    }

    pub fn is_complete(&self) -> bool {
        self.nodes.iter().all(|n| n.result.is_some())
    }

    /// How each node's part ended, in cluster order; complete once `is_complete`.
    pub fn results(&self) -> impl Iterator<Item = (&NodeName, &NodeResult)> {
        self.nodes
            .iter()
            .filter_map(|n| n.result.as_ref().map(|result| (&n.node, result)))
    }

    /// Takes in an answer. `None`: the round does not wait for this id (late, duplicated or
    /// unknown), and nothing happens.
    pub fn answer(
        &mut self,
        id: RequestId,
        answer: &Result<Reply, NodeFailure>,
        ids: &mut RequestIds,
    ) -> Option<Vec<Happening>> {
        let index = self.waiting.remove(&id)?;
        let mut happenings = Vec::new();
        let node = &mut self.nodes[index];
        let request = node.steps[node.step].clone();
        match self.work.judge(&request, answer) {
            Verdict::Done => self.step_done(index, ids, &mut happenings),
            Verdict::DoneWithWarning(text) => {
                let node = self.nodes[index].node.clone();
                happenings.push(Happening::Warning { node, text });
                self.step_done(index, ids, &mut happenings);
            }
            Verdict::NoAnswer => self.setback(index, request, None, ids, &mut happenings),
            Verdict::Reopen => {
                let open_step = node
                    .steps
                    .iter()
                    .position(|r| matches!(r, Request::Open { .. }));
                self.setback(index, request, open_step, ids, &mut happenings);
            }
            Verdict::Settled(result) => self.settle(index, result, &mut happenings),
        }
        Some(happenings)
    }

    fn step_done(&mut self, index: usize, ids: &mut RequestIds, out: &mut Vec<Happening>) {
        let node = &mut self.nodes[index];
        node.step += 1;
        self.ask(index, ids, out);
    }

    /// A try that did not get the step done: ask again (from `restart_at` if given) while
    /// tries remain, else the node's part ends as the work says a silent node's does.
    fn setback(
        &mut self,
        index: usize,
        request: Request,
        restart_at: Option<usize>,
        ids: &mut RequestIds,
        out: &mut Vec<Happening>,
    ) {
        let node = &mut self.nodes[index];
        node.failed_tries += 1;
        if node.failed_tries >= TRIES {
            let result = self.work.when_silent(&request);
            self.settle(index, result, out);
            return;
        }
        if let Some(step) = restart_at {
            node.step = step;
        }
        out.push(Happening::Retry {
            node: node.node.clone(),
            request,
            failed_tries: node.failed_tries,
            reopening: restart_at.is_some(),
        });
        self.ask(index, ids, out);
    }

    /// Sends the node's current step, or ends its part when no step is left.
    fn ask(&mut self, index: usize, ids: &mut RequestIds, out: &mut Vec<Happening>) {
        let node = &mut self.nodes[index];
        let Some(request) = node.steps.get(node.step) else {
            node.result = Some(NodeResult::Done);
            return;
        };
        let id = ids.next();
        self.waiting.insert(id, index);
        out.push(Happening::Send {
            id,
            node: node.node.clone(),
            request: request.clone(),
        });
    }

    fn settle(&mut self, index: usize, result: NodeResult, out: &mut Vec<Happening>) {
        let node = &mut self.nodes[index];
        if let NodeResult::Lost(why) = &result {
            out.push(Happening::Lost {
                node: node.node.clone(),
                why: why.clone(),
            });
        }
        node.result = Some(result);
    }
}
