//! The main paths, request by request: a scripted driver answers every request in the order
//! sent, and the tests read the exact commands, journal and requests.

use std::collections::VecDeque;

use lockstep_deploy::{
    Command, Deployment, EdgeGate, Event, HookFailurePolicy, HookKind, NodeFailure, Outcome, Phase,
    Plan, PlanKind, Record, Reply, Request, RequestId,
};
use lockstep_proto::Generation;

use crate::sim::world::{
    NEW_GENERATION, NEW_IMAGE, PREVIOUS_GENERATION, PREVIOUS_IMAGE, Scenario, new_release,
    previous_release,
};

/// What the scripted agent answers.
enum Answer {
    Reply(Result<Reply, NodeFailure>),
    Timeout,
}

fn fine(_node: &str, request: &Request) -> Answer {
    match request {
        Request::RunHook { .. } => Answer::Reply(Ok(Reply::Hook {
            succeeded: true,
            output: Vec::new(),
        })),
        _ => Answer::Reply(Ok(Reply::Done)),
    }
}

fn refused(why: &str) -> Answer {
    Answer::Reply(Err(NodeFailure::Refused(why.into())))
}

fn hook(succeeded: bool) -> Answer {
    Answer::Reply(Ok(Reply::Hook {
        succeeded,
        output: Vec::new(),
    }))
}

struct Driver {
    machine: Deployment,
    commands: Vec<Command>,
    queue: VecDeque<(RequestId, String, Request)>,
}

impl Driver {
    fn start(plan: Plan) -> Driver {
        let (machine, commands) = Deployment::start(plan);
        Driver::with(machine, commands)
    }

    fn resume(journal: &[Record]) -> Driver {
        let (machine, commands) = Deployment::resume(journal).expect("the journal replays");
        Driver::with(machine, commands)
    }

    fn with(machine: Deployment, commands: Vec<Command>) -> Driver {
        let mut driver = Driver {
            machine,
            commands: Vec::new(),
            queue: VecDeque::new(),
        };
        driver.take(commands);
        driver
    }

    fn take(&mut self, commands: Vec<Command>) {
        for command in commands {
            if let Command::Send {
                id, node, request, ..
            } = &command
            {
                self.queue.push_back((*id, node.clone(), request.clone()));
            }
            self.commands.push(command);
        }
    }

    /// Answers requests in the order sent until `stop` holds or nothing is waiting.
    fn run_until(
        &mut self,
        stop: impl Fn(&Driver) -> bool,
        mut answer: impl FnMut(&str, &Request) -> Answer,
    ) {
        while !stop(self) {
            let Some((id, node, request)) = self.queue.pop_front() else {
                return;
            };
            let event = match answer(&node, &request) {
                Answer::Reply(result) => Event::Reply { id, result },
                Answer::Timeout => Event::Timeout { id },
            };
            let commands = self.machine.handle(event);
            self.take(commands);
        }
    }

    fn run(&mut self, answer: impl FnMut(&str, &Request) -> Answer) {
        self.run_until(|_| false, answer);
    }

    fn journal(&self) -> Vec<Record> {
        self.commands
            .iter()
            .filter_map(|c| match c {
                Command::Append(record) => Some(record.clone()),
                _ => None,
            })
            .collect()
    }

    fn sends(&self) -> Vec<(String, Request)> {
        self.commands
            .iter()
            .filter_map(|c| match c {
                Command::Send { node, request, .. } => Some((node.clone(), request.clone())),
                _ => None,
            })
            .collect()
    }

    fn logs(&self) -> Vec<String> {
        self.commands
            .iter()
            .filter_map(|c| match c {
                Command::Log(line) => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    fn outcome(&self) -> Outcome {
        self.machine
            .outcome()
            .cloned()
            .expect("the deployment finished")
    }
}

fn plan(nodes: usize) -> Plan {
    Scenario::healthy(nodes).plan()
}

fn plan_with(policy: HookFailurePolicy) -> Plan {
    Plan {
        on_hook_failure: policy,
        ..plan(3)
    }
}

fn first_deployment(nodes: usize) -> Plan {
    Plan {
        previous: None,
        ..plan(nodes)
    }
}

fn node(i: usize) -> String {
    format!("production-{i}")
}

fn started(phase: Phase) -> Record {
    Record::PhaseStarted { phase }
}

fn ended(phase: Phase) -> Record {
    Record::PhaseEnded { phase }
}

fn render(command: &Command) -> String {
    match command {
        Command::Append(record) => format!("append {record:?}"),
        Command::Send {
            id,
            node,
            request,
            timeout_ms,
        } => format!("send #{} {node} {request:?} within {timeout_ms} ms", id.0),
        Command::Log(line) => format!("log {line}"),
        Command::Edge(gate) => format!("edge {gate:?}"),
    }
}

fn is_failure(record: &Record) -> bool {
    matches!(record, Record::Failure { .. })
}

fn edge_gates(driver: &Driver) -> Vec<EdgeGate> {
    driver
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::Edge(gate) => Some(gate.clone()),
            _ => None,
        })
        .collect()
}

fn requests_to(driver: &Driver, wanted: impl Fn(&Request) -> bool) -> Vec<String> {
    driver
        .sends()
        .into_iter()
        .filter(|(_, r)| wanted(r))
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn data_is_replaced_once_while_every_node_is_closed_and_a_failure_keeps_it_closed() {
    let with_data = Plan {
        data: Some("backup a000007".into()),
        ..plan(3)
    };
    let mut driver = Driver::start(with_data.clone());
    driver.run(fine);
    let lines: Vec<String> = driver.commands.iter().map(render).collect();
    let position = |wanted: &str| {
        lines
            .iter()
            .position(|line| line.starts_with(wanted))
            .unwrap_or_else(|| panic!("no {wanted:?} in {lines:#?}"))
    };
    let replaced = position("send #10 production-1 ReplaceData");
    assert!(position("append PhaseEnded { phase: Close }") < replaced);
    assert!(replaced < position("append PhaseStarted { phase: Swap }"));
    assert_eq!(
        requests_to(&driver, |r| matches!(r, Request::ReplaceData { .. })),
        ["production-1"],
        "once, on one node"
    );

    let mut failing = Driver::start(with_data);
    failing.run(|node, request| match request {
        Request::ReplaceData { .. } => refused("the backup's file is missing"),
        _ => fine(node, request),
    });
    let journal = failing.journal();
    assert!(
        journal.iter().any(|r| matches!(
            r,
            Record::Finished {
                outcome: Outcome::StayedClosed { .. }
            }
        )),
        "{journal:#?}"
    );
    assert!(requests_to(&failing, |r| matches!(r, Request::Swap { .. })).is_empty());
    assert!(requests_to(&failing, |r| matches!(r, Request::Open { .. })).is_empty());
}

#[test]
fn a_release_of_several_apps_is_named_by_each_of_its_images() {
    let several = Plan {
        image: "9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7+0123456789abcdef0123456789abcdef".into(),
        ..plan(3)
    };
    let mut driver = Driver::start(several);
    driver.run(fine);
    let lines: Vec<String> = driver.commands.iter().map(render).collect();
    assert!(
        lines.contains(
            &"log Switching 3 nodes to images 9f2c41d0e8b7+0123456789ab (generation 9)".into()
        ),
        "{lines:#?}"
    );
    assert!(
        lines.contains(
            &"send #1 production-1 Stage { image: \"9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7+0123456789abcdef0123456789abcdef\" } within 900000 ms".into()
        ),
        "the release goes to the nodes whole: {lines:#?}"
    );
}

#[test]
fn a_three_node_deployment_runs_every_phase_in_order() {
    let mut driver = Driver::start(plan(3));
    driver.run(fine);
    let commands: Vec<String> = driver.commands.iter().map(render).collect();
    let expected = [
        "append Started { plan: Plan { deployment: \"dep-42\", nodes: [\"production-1\", \"production-2\", \"production-3\"], image: \"9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7\", generation: Generation(9), previous: Some(Release { image: \"1a2b3c4d5e6f708192a3b4c5d6e7f809\", generation: Generation(6) }), on_hook_failure: Rollback, data: None, kind: Deployment } }",
        "log Deploying image 9f2c41d0e8b7 at generation 9 to 3 nodes (production-1, production-2, production-3); replacing image 1a2b3c4d5e6f (generation 6)",
        "append PhaseStarted { phase: Stage }",
        "log Staging image 9f2c41d0e8b7 on 3 nodes",
        "send #1 production-1 Stage { image: \"9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7\" } within 900000 ms",
        "send #2 production-2 Stage { image: \"9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7\" } within 900000 ms",
        "send #3 production-3 Stage { image: \"9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7\" } within 900000 ms",
        "append PhaseEnded { phase: Stage }",
        "append PhaseStarted { phase: Quiesce }",
        "log Stopping crons and workers on 3 nodes",
        "send #4 production-1 Quiesce within 300000 ms",
        "send #5 production-2 Quiesce within 300000 ms",
        "send #6 production-3 Quiesce within 300000 ms",
        "append PhaseEnded { phase: Quiesce }",
        "append PhaseStarted { phase: Close }",
        "edge Closed",
        "log Closing 3 nodes to requests",
        "send #7 production-1 Close within 120000 ms",
        "send #8 production-2 Close within 120000 ms",
        "send #9 production-3 Close within 120000 ms",
        "append PhaseEnded { phase: Close }",
        "append PhaseStarted { phase: Swap }",
        "log Switching 3 nodes to image 9f2c41d0e8b7 (generation 9)",
        "send #10 production-1 Swap { image: \"9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7\", generation: Generation(9) } within 300000 ms",
        "send #11 production-2 Swap { image: \"9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7\", generation: Generation(9) } within 300000 ms",
        "send #12 production-3 Swap { image: \"9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7\", generation: Generation(9) } within 300000 ms",
        "append PhaseEnded { phase: Swap }",
        "append PhaseStarted { phase: DeployHook }",
        "append HookNode { node: \"production-1\" }",
        "log Running the deploy hook on production-1",
        "send #13 production-1 RunHook { hook: Deploy } within 86700000 ms",
        "log The deploy hook succeeded on production-1",
        "append HookOutcome { hook: Deploy, succeeded: true }",
        "append PhaseEnded { phase: DeployHook }",
        "append PhaseStarted { phase: Open }",
        "log Opening 3 nodes at generation 9, then starting crons and workers",
        "send #14 production-1 Open { generation: Generation(9) } within 30000 ms",
        "send #15 production-2 Open { generation: Generation(9) } within 30000 ms",
        "send #16 production-3 Open { generation: Generation(9) } within 30000 ms",
        "send #17 production-1 StartBackground { generation: Generation(9) } within 120000 ms",
        "send #18 production-2 StartBackground { generation: Generation(9) } within 120000 ms",
        "send #19 production-3 StartBackground { generation: Generation(9) } within 120000 ms",
        "append PhaseEnded { phase: Open }",
        "edge Open(Release { image: \"9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7\", generation: Generation(9) })",
        "append PhaseStarted { phase: PostDeploy }",
        "log Running the post_deploy hook on production-1",
        "send #20 production-1 RunHook { hook: PostDeploy } within 86700000 ms",
        "log The post_deploy hook succeeded on production-1",
        "append HookOutcome { hook: PostDeploy, succeeded: true }",
        "append PhaseEnded { phase: PostDeploy }",
        "append Serving { release: Some(Release { image: \"9f2c41d0e8b7a6c5d4e3f2a1b0c9d8e7\", generation: Generation(9) }) }",
        "log Deployment completed",
        "append Finished { outcome: Completed { lost_nodes: [] } }",
    ];
    assert_eq!(commands, expected);
    assert_eq!(driver.machine.phase(), None);
    assert!(driver.outcome().succeeded());
}

#[test]
fn the_phase_in_progress_is_reported() {
    let mut driver = Driver::start(plan(2));
    assert_eq!(driver.machine.phase(), Some(Phase::Stage));
    driver.run_until(|d| d.machine.phase() == Some(Phase::DeployHook), fine);
    assert_eq!(driver.machine.phase(), Some(Phase::DeployHook));
    assert_eq!(driver.queue.len(), 1, "only the hook node is asked");
}

#[test]
fn a_stage_failure_aborts_before_anything_stops() {
    let mut driver = Driver::start(plan(3));
    driver.run(|node, request| match request {
        Request::Stage { .. } if node == "production-3" => refused("no space left"),
        _ => fine(node, request),
    });
    assert!(matches!(driver.outcome(), Outcome::Aborted { ref reason }
        if reason.contains("production-3 could not stage image 9f2c41d0e8b7") && reason.contains("no space left")));
    let stopping =
        |r: &Request| matches!(r, Request::Quiesce | Request::Close | Request::Swap { .. });
    assert!(requests_to(&driver, stopping).is_empty());
    let journal = driver.journal();
    assert_eq!(
        journal[journal.len() - 2],
        Record::Serving {
            release: Some(previous_release())
        }
    );
}

#[test]
fn a_quiesce_failure_aborts_and_restarts_the_background_work() {
    let mut driver = Driver::start(plan(3));
    driver.run(|node, request| match request {
        Request::Quiesce if node == "production-2" => refused("busy"),
        _ => fine(node, request),
    });
    let journal = driver.journal();
    let tail: Vec<&Record> = journal.iter().skip(3).collect();
    assert_eq!(tail[0], &started(Phase::Quiesce));
    assert!(is_failure(tail[1]));
    assert_eq!(tail[2], &ended(Phase::Quiesce));
    assert_eq!(
        tail[3],
        &Record::Serving {
            release: Some(previous_release())
        }
    );
    assert!(matches!(driver.outcome(), Outcome::Aborted { .. }));
    // Every node gets the previous release's background work back (the open is a no-op on
    // nodes that never closed), and nothing closes or swaps.
    let restarted = requests_to(&driver, |r| {
        *r == Request::StartBackground {
            generation: PREVIOUS_GENERATION,
        }
    });
    assert_eq!(restarted, [node(1), node(2), node(3)]);
    assert!(
        requests_to(&driver, |r| matches!(
            r,
            Request::Close | Request::Swap { .. }
        ))
        .is_empty()
    );
    assert!(
        driver
            .logs()
            .iter()
            .any(|l| l.starts_with("Aborting before close: production-2"))
    );
}

#[test]
fn a_node_that_never_confirms_close_aborts_and_the_others_reopen() {
    // Unconfirmed means it may still serve the previous release: opening the new one on the
    // others would serve two releases at once (I1).
    let mut driver = Driver::start(plan(3));
    driver.run(|node, request| match request {
        Request::Close if node == "production-3" => Answer::Timeout,
        _ => fine(node, request),
    });
    assert!(matches!(driver.outcome(), Outcome::Aborted { ref reason }
        if reason == "production-3 did not answer to close after 3 tries"));
    assert_eq!(requests_to(&driver, |r| *r == Request::Close).len(), 5);
    let reopened = requests_to(&driver, |r| {
        *r == Request::Open {
            generation: PREVIOUS_GENERATION,
        }
    });
    assert_eq!(reopened, [node(1), node(2)]);
    assert!(
        driver
            .journal()
            .contains(&Record::NodeLost { node: node(3) })
    );
    assert!(requests_to(&driver, |r| matches!(r, Request::Swap { .. })).is_empty());
    // The edge closed with the nodes, and opens again once they did, at what they serve.
    assert_eq!(
        edge_gates(&driver),
        [EdgeGate::Closed, EdgeGate::Open(previous_release())]
    );
}

#[test]
fn every_node_lost_in_close_aborts_and_leaves_the_edge_closed() {
    let mut driver = Driver::start(plan(2));
    driver.run(|node, request| match request {
        Request::Close => Answer::Timeout,
        _ => fine(node, request),
    });
    assert!(matches!(driver.outcome(), Outcome::Aborted { .. }));
    assert!(requests_to(&driver, |r| matches!(r, Request::Open { .. })).is_empty());
    assert_eq!(edge_gates(&driver), [EdgeGate::Closed]);
}

#[test]
fn resuming_an_abort_in_close_after_its_restore_keeps_the_edge_open() {
    let mut first = Driver::start(plan(2));
    first.run(|node, request| match request {
        Request::Close if node == "production-2" => Answer::Timeout,
        _ => fine(node, request),
    });
    let whole = first.journal();
    let serving = whole
        .iter()
        .position(|r| matches!(r, Record::Serving { .. }))
        .expect("a serving record");
    // The controller crashed after the restore reopened production-1, before `Finished`.
    let resumed = Driver::resume(&whole[..=serving]);
    assert_eq!(resumed.outcome(), first.outcome());
    assert!(resumed.sends().is_empty());
    assert_eq!(edge_gates(&resumed), [EdgeGate::Open(previous_release())]);
}

#[test]
fn a_node_lost_after_close_stays_closed_and_the_others_complete() {
    let mut driver = Driver::start(plan(3));
    driver.run(|node, request| match request {
        Request::Swap { .. } if node == "production-2" => Answer::Timeout,
        _ => fine(node, request),
    });
    assert_eq!(
        driver.outcome(),
        Outcome::Completed {
            lost_nodes: vec![node(2)]
        }
    );
    assert_eq!(
        requests_to(&driver, |r| matches!(r, Request::Swap { .. })),
        [node(1), node(2), node(3), node(2), node(2)]
    );
    assert_eq!(
        requests_to(&driver, |r| matches!(r, Request::Open { .. })),
        [node(1), node(3)]
    );
    let logs = driver.logs();
    assert!(logs.contains(
        &"production-2 did not answer to switch to image 9f2c41d0e8b7 (generation 9) (try 1 of 3); asking again"
            .to_string()
    ));
    assert!(logs.contains(
        &"production-2 did not answer to switch to image 9f2c41d0e8b7 (generation 9) after 3 tries; it stays closed and will catch up"
            .to_string()
    ));
}

#[test]
fn a_lost_first_node_moves_the_deploy_hook_to_the_next() {
    let mut driver = Driver::start(plan(3));
    driver.run(|node, request| match request {
        Request::Swap { .. } if node == "production-1" => refused("the image is not staged"),
        _ => fine(node, request),
    });
    assert!(
        driver
            .journal()
            .contains(&Record::HookNode { node: node(2) })
    );
    assert_eq!(
        driver.outcome(),
        Outcome::Completed {
            lost_nodes: vec![node(1)]
        }
    );
}

#[test]
fn a_node_whose_web_process_died_before_open_is_lost() {
    let mut driver = Driver::start(plan(3));
    driver.run(|node, request| match request {
        Request::Open { .. } if node == "production-3" => refused("the web process is not running"),
        _ => fine(node, request),
    });
    assert_eq!(
        driver.outcome(),
        Outcome::Completed {
            lost_nodes: vec![node(3)]
        }
    );
    assert_eq!(
        requests_to(&driver, |r| matches!(r, Request::StartBackground { .. })),
        [node(1), node(2)]
    );
}

#[test]
fn a_node_that_restarted_after_opening_is_opened_again() {
    let mut driver = Driver::start(plan(2));
    let mut refusals = 0;
    driver.run(|node, request| match request {
        Request::StartBackground { .. } if node == "production-2" && refusals == 0 => {
            refusals += 1;
            refused("not open at generation 9")
        }
        _ => fine(node, request),
    });
    assert_eq!(driver.outcome(), Outcome::Completed { lost_nodes: vec![] });
    assert_eq!(
        requests_to(&driver, |r| matches!(r, Request::Open { .. })),
        [node(1), node(2), node(2)]
    );
}

#[test]
fn every_node_lost_after_close_leaves_the_environment_closed() {
    let mut driver = Driver::start(plan(2));
    driver.run(|node, request| match request {
        Request::Swap { .. } => Answer::Reply(Err(NodeFailure::Unreachable)),
        _ => fine(node, request),
    });
    assert!(
        matches!(driver.outcome(), Outcome::StayedClosed { ref reason }
        if reason == "every node was lost after close")
    );
    assert!(
        driver
            .journal()
            .contains(&Record::Serving { release: None })
    );
}

fn failing_deploy_hook(node: &str, request: &Request) -> Answer {
    match request {
        Request::RunHook {
            hook: HookKind::Deploy,
        } => hook(false),
        _ => fine(node, request),
    }
}

#[test]
fn a_failed_deploy_hook_rolls_back_to_the_previous_release_at_its_generation() {
    let mut driver = Driver::start(plan_with(HookFailurePolicy::Rollback));
    driver.run(failing_deploy_hook);
    assert_eq!(
        driver.outcome(),
        Outcome::RolledBack {
            reason: "the deploy hook failed on production-1".into(),
            lost_nodes: vec![]
        }
    );
    let journal = driver.journal();
    let from_hook: Vec<Record> = journal
        .iter()
        .skip_while(|r| **r != started(Phase::DeployHook))
        .cloned()
        .collect();
    assert_eq!(
        from_hook,
        [
            started(Phase::DeployHook),
            Record::HookNode { node: node(1) },
            Record::HookOutcome {
                hook: HookKind::Deploy,
                succeeded: false
            },
            Record::Failure {
                reason: "the deploy hook failed on production-1".into()
            },
            ended(Phase::DeployHook),
            started(Phase::Rollback),
            ended(Phase::Rollback),
            Record::Serving {
                release: Some(previous_release())
            },
            Record::Finished {
                outcome: driver.outcome()
            },
        ]
    );
    let swap_back = Request::Swap {
        image: PREVIOUS_IMAGE.into(),
        generation: PREVIOUS_GENERATION,
    };
    assert_eq!(
        requests_to(&driver, |r| *r == swap_back),
        [node(1), node(2), node(3)]
    );
    let reopen = Request::Open {
        generation: PREVIOUS_GENERATION,
    };
    assert_eq!(
        requests_to(&driver, |r| *r == reopen),
        [node(1), node(2), node(3)]
    );
    assert!(
        requests_to(&driver, |r| *r
            == Request::Open {
                generation: NEW_GENERATION
            })
        .is_empty()
    );
}

#[test]
fn a_failed_deploy_hook_opens_anyway_under_policy_open() {
    let mut driver = Driver::start(plan_with(HookFailurePolicy::Open));
    driver.run(failing_deploy_hook);
    assert_eq!(
        driver.outcome(),
        Outcome::OpenedDespiteHookFailure {
            reason: "the deploy hook failed on production-1".into(),
            lost_nodes: vec![]
        }
    );
    let open = Request::Open {
        generation: NEW_GENERATION,
    };
    assert_eq!(
        requests_to(&driver, |r| *r == open),
        [node(1), node(2), node(3)]
    );
    // As on Platform.sh, post_deploy still runs once the site is open.
    let post_deploy = Request::RunHook {
        hook: HookKind::PostDeploy,
    };
    assert_eq!(requests_to(&driver, |r| *r == post_deploy), [node(1)]);
    assert!(driver.journal().contains(&Record::Serving {
        release: Some(new_release())
    }));
}

#[test]
fn a_failed_deploy_hook_stays_closed_under_policy_stay_closed() {
    let mut driver = Driver::start(plan_with(HookFailurePolicy::StayClosed));
    driver.run(failing_deploy_hook);
    assert_eq!(
        driver.outcome(),
        Outcome::StayedClosed {
            reason: "the deploy hook failed on production-1".into()
        }
    );
    assert!(requests_to(&driver, |r| matches!(r, Request::Open { .. })).is_empty());
    assert!(
        driver
            .journal()
            .contains(&Record::Serving { release: None })
    );
}

#[test]
fn a_failed_first_deploy_hook_has_nothing_to_roll_back_to() {
    let mut driver = Driver::start(first_deployment(2));
    driver.run(failing_deploy_hook);
    assert!(
        matches!(driver.outcome(), Outcome::StayedClosed { ref reason }
        if reason.ends_with("there is no previous release to roll back to"))
    );
    assert!(
        requests_to(&driver, |r| matches!(
            r,
            Request::Open { .. }
                | Request::Swap {
                    generation: Generation(6),
                    ..
                }
        ))
        .is_empty()
    );
}

#[test]
fn a_hook_node_lost_mid_hook_is_never_replaced() {
    let mut driver = Driver::start(plan(3));
    driver.run(|node, request| match request {
        Request::RunHook { .. } => Answer::Timeout,
        _ => fine(node, request),
    });
    let hook_requests = requests_to(&driver, |r| matches!(r, Request::RunHook { .. }));
    assert_eq!(hook_requests, [node(1), node(1), node(1)]);
    assert!(
        matches!(driver.outcome(), Outcome::RolledBack { ref reason, ref lost_nodes }
        if reason.contains("its outcome is unknown") && *lost_nodes == [node(1)])
    );
    // The lost hook node is not rolled back: it stays closed.
    let swap_back = |r: &Request| matches!(r, Request::Swap { generation, .. } if *generation == PREVIOUS_GENERATION);
    assert_eq!(requests_to(&driver, swap_back), [node(2), node(3)]);
}

#[test]
fn a_release_that_never_starts_rolls_back_whatever_the_hook_policy() {
    let mut driver = Driver::start(plan_with(HookFailurePolicy::Open));
    driver.run(|node, request| match request {
        Request::Swap {
            generation: NEW_GENERATION,
            ..
        } if node == "production-2" => Answer::Reply(Err(NodeFailure::Failed(
            "the web process never listened".into(),
        ))),
        _ => fine(node, request),
    });
    assert!(
        matches!(driver.outcome(), Outcome::RolledBack { ref reason, .. }
        if reason.starts_with("the new release failed on production-2"))
    );
    assert!(requests_to(&driver, |r| matches!(r, Request::RunHook { .. })).is_empty());
}

#[test]
fn a_failed_post_deploy_hook_is_only_logged() {
    let mut driver = Driver::start(plan(2));
    driver.run(|node, request| match request {
        Request::RunHook {
            hook: HookKind::PostDeploy,
        } => hook(false),
        _ => fine(node, request),
    });
    assert_eq!(driver.outcome(), Outcome::Completed { lost_nodes: vec![] });
    assert!(driver.logs().contains(
        &"The post_deploy hook failed on production-1; the new release serves anyway".to_string()
    ));
}

#[test]
fn a_failed_hook_says_why_in_its_own_words_and_a_succeeded_one_says_nothing() {
    let answered = |succeeded: bool| {
        move |node: &str, request: &Request| match request {
            Request::RunHook {
                hook: HookKind::Deploy,
            } => Answer::Reply(Ok(Reply::Hook {
                succeeded,
                output: vec![
                    "Running migrations".into(),
                    "relation \"notes\" exists".into(),
                ],
            })),
            _ => fine(node, request),
        }
    };
    let mut failed = Driver::start(plan(2));
    failed.run(answered(false));
    let logs = failed.logs();
    let outcome = logs
        .iter()
        .position(|l| l == "The deploy hook failed on production-1")
        .expect("the outcome is logged");
    assert_eq!(logs[outcome + 1], "  Running migrations");
    assert_eq!(logs[outcome + 2], "  relation \"notes\" exists");
    let mut succeeded = Driver::start(plan(2));
    succeeded.run(answered(true));
    assert!(
        !succeeded
            .logs()
            .iter()
            .any(|l| l.contains("Running migrations"))
    );
}

#[test]
fn late_duplicated_and_unknown_answers_are_ignored() {
    let mut driver = Driver::start(plan(2));
    let (first, _, _) = driver.queue.pop_front().expect("stage was sent");
    let done = || Event::Reply {
        id: first,
        result: Ok(Reply::Done),
    };
    assert!(driver.machine.is_waiting_for(first));
    assert!(
        driver.machine.handle(done()).is_empty(),
        "production-2 still stages"
    );
    assert!(!driver.machine.is_waiting_for(first));
    assert!(driver.machine.handle(done()).is_empty(), "a duplicate");
    assert!(
        driver
            .machine
            .handle(Event::Timeout { id: first })
            .is_empty(),
        "a late timeout"
    );
    let unknown = Event::Timeout { id: RequestId(999) };
    assert!(driver.machine.handle(unknown).is_empty(), "an unknown id");
    driver.run(fine);
    assert_eq!(driver.outcome(), Outcome::Completed { lost_nodes: vec![] });
    assert_eq!(
        requests_to(&driver, |r| matches!(r, Request::Stage { .. })).len(),
        2
    );
    assert!(driver.machine.handle(done()).is_empty(), "after the end");
}

/// Cuts the journal of a healthy deployment at the first record where `cut` holds (a controller
/// crash right after that record was appended), and resumes a new machine from it.
fn resume_where(cut: impl Fn(&[Record]) -> bool) -> (Vec<Record>, Driver) {
    let mut first = Driver::start(plan(3));
    first.run(fine);
    let whole = first.journal();
    let length = (1..=whole.len())
        .find(|&n| cut(&whole[..n]))
        .expect("the cut point is in the journal");
    let journal = whole[..length].to_vec();
    let resumed = Driver::resume(&journal);
    (journal, resumed)
}

fn ends_with(record: Record) -> impl Fn(&[Record]) -> bool {
    move |journal| journal.last() == Some(&record)
}

#[test]
fn resuming_after_stage_goes_on_with_quiesce() {
    let (_, mut resumed) = resume_where(ends_with(ended(Phase::Stage)));
    assert!(
        matches!(&resumed.commands[0], Command::Log(l) if l.starts_with("The controller restarted"))
    );
    assert_eq!(
        resumed.commands[1],
        Command::Append(started(Phase::Quiesce))
    );
    assert_eq!(
        requests_to(&resumed, |r| *r == Request::Quiesce),
        [node(1), node(2), node(3)]
    );
    resumed.run(fine);
    assert_eq!(resumed.outcome(), Outcome::Completed { lost_nodes: vec![] });
}

#[test]
fn resuming_after_close_goes_on_with_the_swap() {
    let (_, mut resumed) = resume_where(ends_with(ended(Phase::Close)));
    assert_eq!(resumed.commands[1], Command::Append(started(Phase::Swap)));
    assert!(requests_to(&resumed, |r| matches!(r, Request::Close)).is_empty());
    resumed.run(fine);
    assert_eq!(resumed.outcome(), Outcome::Completed { lost_nodes: vec![] });
}

#[test]
fn resuming_mid_phase_asks_again_without_starting_the_phase_again() {
    let (_, resumed) = resume_where(ends_with(started(Phase::Swap)));
    assert!(resumed.journal().is_empty());
    assert_eq!(resumed.machine.phase(), Some(Phase::Swap));
    assert_eq!(
        requests_to(&resumed, |r| matches!(r, Request::Swap { .. })),
        [node(1), node(2), node(3)]
    );
}

#[test]
fn resuming_during_the_deploy_hook_asks_the_same_node_for_its_outcome() {
    let (journal, mut resumed) = resume_where(ends_with(Record::HookNode { node: node(1) }));
    assert!(
        resumed.journal().is_empty(),
        "no second hook node is chosen"
    );
    assert_eq!(
        resumed.sends(),
        [(
            node(1),
            Request::RunHook {
                hook: HookKind::Deploy
            }
        )]
    );
    // The node answers with the outcome it stored for this deployment.
    resumed.run(fine);
    assert_eq!(resumed.outcome(), Outcome::Completed { lost_nodes: vec![] });
    let whole: Vec<Record> = journal.into_iter().chain(resumed.journal()).collect();
    assert!(
        Deployment::resume(&whole).is_ok(),
        "the joined journal replays"
    );
}

#[test]
fn resuming_before_the_hook_node_is_journaled_chooses_it_then() {
    let (_, resumed) = resume_where(ends_with(started(Phase::DeployHook)));
    assert_eq!(resumed.journal(), [Record::HookNode { node: node(1) }]);
}

#[test]
fn resuming_when_the_hook_node_was_lost_applies_the_policy_without_the_hook() {
    let (mut journal, _) = resume_where(ends_with(Record::HookNode { node: node(1) }));
    journal.push(Record::NodeLost { node: node(1) });
    let mut resumed = Driver::resume(&journal);
    resumed.run(fine);
    assert!(requests_to(&resumed, |r| matches!(r, Request::RunHook { .. })).is_empty());
    assert!(
        matches!(resumed.outcome(), Outcome::RolledBack { ref reason, .. }
        if reason.contains("outcome is unknown"))
    );
}

#[test]
fn resuming_after_open_goes_on_with_post_deploy() {
    let (_, mut resumed) = resume_where(ends_with(ended(Phase::Open)));
    assert_eq!(
        resumed.commands[1],
        Command::Append(started(Phase::PostDeploy))
    );
    resumed.run(fine);
    assert_eq!(resumed.outcome(), Outcome::Completed { lost_nodes: vec![] });
}

#[test]
fn resuming_between_serving_and_finished_only_finishes() {
    let (_, resumed) = resume_where(|j| matches!(j.last(), Some(Record::Serving { .. })));
    assert_eq!(
        resumed.journal(),
        [Record::Finished {
            outcome: Outcome::Completed { lost_nodes: vec![] }
        }]
    );
    assert!(resumed.sends().is_empty());
}

#[test]
fn resuming_an_abort_restores_the_background_work_again() {
    let mut first = Driver::start(plan(2));
    first.run(|node, request| match request {
        Request::Quiesce if node == "production-1" => refused("busy"),
        _ => fine(node, request),
    });
    let whole = first.journal();
    let failure = whole.iter().position(is_failure).expect("a failure");
    let mut resumed = Driver::resume(&whole[..=failure]);
    assert_eq!(resumed.commands[1], Command::Append(ended(Phase::Quiesce)));
    resumed.run(fine);
    assert_eq!(resumed.outcome(), first.outcome());
    assert_eq!(
        requests_to(&resumed, |r| matches!(r, Request::StartBackground { .. })),
        [node(1), node(2)]
    );
}

#[test]
fn resuming_a_rollback_after_some_nodes_reopened_finishes_it() {
    let mut first = Driver::start(plan(2));
    first.run(failing_deploy_hook);
    let whole = first.journal();
    let rollback = whole
        .iter()
        .position(|r| *r == started(Phase::Rollback))
        .expect("a rollback");
    let mut resumed = Driver::resume(&whole[..=rollback]);
    // production-1 is already back and open: it refuses the swap, and the open settles it.
    resumed.run(|node, request| match request {
        Request::Swap { .. } if node == "production-1" => refused("open at generation 6"),
        _ => fine(node, request),
    });
    assert_eq!(resumed.outcome(), first.outcome());
    assert_eq!(
        requests_to(&resumed, |r| matches!(r, Request::Open { .. })),
        [node(1), node(2)]
    );
}

#[test]
fn a_node_that_cannot_go_back_to_the_previous_release_is_lost() {
    let mut driver = Driver::start(plan(2));
    driver.run(|node, request| match request {
        Request::Swap {
            generation: Generation(6),
            ..
        } if node == "production-2" => refused("the image is not staged"),
        Request::Open {
            generation: Generation(6),
        } if node == "production-2" => refused("the active release is at generation 9"),
        _ => failing_deploy_hook(node, request),
    });
    assert!(
        matches!(driver.outcome(), Outcome::RolledBack { ref lost_nodes, .. }
        if *lost_nodes == [node(2)])
    );
}

#[test]
fn a_finished_journal_resumes_finished() {
    let mut driver = Driver::start(plan(1));
    driver.run(fine);
    let (machine, commands) = Deployment::resume(&driver.journal()).unwrap();
    assert!(commands.is_empty());
    assert_eq!(machine.outcome(), Some(&driver.outcome()));
}

#[test]
fn a_plan_without_nodes_or_with_a_node_twice_aborts_at_once() {
    for nodes in [vec![], vec![node(1), node(2), node(1)]] {
        let plan = Plan { nodes, ..plan(1) };
        let driver = Driver::start(plan);
        assert!(driver.sends().is_empty());
        assert!(matches!(driver.outcome(), Outcome::Aborted { ref reason }
            if reason.starts_with("the plan names")));
        let resumed = Driver::resume(&driver.journal()[..1]);
        assert_eq!(resumed.outcome(), driver.outcome());
    }
}

#[test]
fn a_journal_the_machine_could_not_have_written_is_refused() {
    let mut driver = Driver::start(plan(2));
    driver.run(fine);
    let journal = driver.journal();
    let cases: Vec<(Vec<Record>, &str)> = vec![
        (vec![], "does not begin with a `started` record"),
        (
            journal[1..].to_vec(),
            "does not begin with a `started` record",
        ),
        (
            [journal.clone(), vec![ended(Phase::Open)]].concat(),
            "a record follows `finished`",
        ),
        (
            [
                journal[..12].to_vec(),
                vec![Record::HookNode { node: node(2) }],
            ]
            .concat(),
            "the deploy hook node changes from production-1 to production-2",
        ),
        (
            [
                journal[..2].to_vec(),
                vec![Record::NodeLost {
                    node: "elsewhere".into(),
                }],
            ]
            .concat(),
            "elsewhere is not a node of the plan",
        ),
    ];
    for (journal, problem) in cases {
        let error = Deployment::resume(&journal).expect_err("refused");
        assert!(
            error.to_string().contains(problem),
            "{error} should say {problem}"
        );
    }
}

#[test]
fn the_journal_round_trips_through_json() {
    let mut driver = Driver::start(plan_with(HookFailurePolicy::Rollback));
    driver.run(failing_deploy_hook);
    let journal = driver.journal();
    let json = serde_json::to_string(&journal).unwrap();
    assert!(
        json.contains(r#"{"record":"failure","reason":"the deploy hook failed on production-1"}"#)
    );
    let back: Vec<Record> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, journal);
}

#[test]
fn the_plan_and_lost_nodes_are_visible() {
    let mut driver = Driver::start(plan(2));
    assert_eq!(driver.machine.plan().image, NEW_IMAGE);
    driver.run(|node, request| match request {
        Request::Open { .. } if node == "production-2" => refused("no web process"),
        _ => fine(node, request),
    });
    assert_eq!(driver.machine.lost_nodes(), [node(2)]);
}

/// production-2 brought back to the release the environment serves (the previous one of the
/// scenarios), at its generation.
fn catch_up() -> Plan {
    let serving = previous_release();
    Plan {
        deployment: "catch-up-7".into(),
        nodes: vec![node(2)],
        image: serving.image,
        generation: serving.generation,
        previous: None,
        kind: PlanKind::CatchUp,
        ..plan(3)
    }
}

#[test]
fn a_catch_up_opens_its_node_at_the_serving_release_without_hooks_and_leaves_the_edge_alone() {
    let mut driver = Driver::start(catch_up());
    driver.run(fine);
    assert_eq!(
        driver.sends(),
        [
            Request::Stage {
                image: PREVIOUS_IMAGE.into()
            },
            Request::Quiesce,
            Request::Close,
            Request::Swap {
                image: PREVIOUS_IMAGE.into(),
                generation: PREVIOUS_GENERATION
            },
            Request::Open {
                generation: PREVIOUS_GENERATION
            },
            Request::StartBackground {
                generation: PREVIOUS_GENERATION
            },
        ]
        .map(|request| (node(2), request))
    );
    assert!(matches!(driver.outcome(), Outcome::Completed { .. }));
    assert!(
        !driver
            .commands
            .iter()
            .any(|c| matches!(c, Command::Edge(_))),
        "the other nodes serve: the edge's gate stays as it is"
    );
    assert!(
        !driver
            .journal()
            .iter()
            .any(|r| matches!(r, Record::Serving { .. })),
        "what the environment serves does not change"
    );
    assert!(driver.logs()[0].starts_with("Catching up production-2 to image "));
}

#[test]
fn a_catch_up_whose_swap_fails_leaves_its_node_closed_and_the_environment_as_it_was() {
    let mut driver = Driver::start(catch_up());
    driver.run(|node, request| match request {
        Request::Swap { .. } => Answer::Reply(Err(NodeFailure::Failed("no web process".into()))),
        _ => fine(node, request),
    });
    let Outcome::NotCaughtUp { reason } = driver.outcome() else {
        panic!("{:?}", driver.outcome());
    };
    assert!(reason.contains("no web process"), "{reason}");
    assert!(
        !driver
            .sends()
            .iter()
            .any(|(_, r)| matches!(r, Request::Open { .. })),
        "the node is never opened"
    );
    assert!(
        !driver
            .commands
            .iter()
            .any(|c| matches!(c, Command::Edge(_)))
    );
    assert!(
        !driver
            .journal()
            .iter()
            .any(|r| matches!(r, Record::Serving { .. }))
    );
    let resumed = Driver::resume(&driver.journal());
    assert_eq!(resumed.outcome(), driver.outcome());
}
