//! The controller crashes at every possible point of a run (before each command the orchestrator
//! carries out, so also between an `Append` and the `Send` it guards), resumes from the journal,
//! and must reach the same outcome with every invariant intact.

use lockstep_deploy::{HookFailurePolicy, HookKind};

use crate::sim::node::NodeFaults;
use crate::sim::world::{Chaos, NEW_IMAGE, Scenario, run};

fn crash_once_everywhere(scenario: &Scenario) {
    let clean = run(scenario, Chaos::calm(7));
    let expected = clean.outcome().cloned();
    for point in 0..clean.commands_carried_out {
        let chaos = Chaos {
            controller_crash_before: vec![point],
            ..Chaos::calm(point as u64)
        };
        let crashed = run(scenario, chaos);
        assert_eq!(
            crashed.controller_restarts, 1,
            "crash before command {point}"
        );
        assert_eq!(
            crashed.outcome().cloned(),
            expected,
            "crash before command {point}"
        );
    }
}

fn with_fault(nodes: usize, node: usize, fault: NodeFaults) -> Scenario {
    let mut faults = vec![NodeFaults::default(); nodes];
    faults[node] = fault;
    Scenario {
        faults,
        ..Scenario::healthy(nodes)
    }
}

fn failing_deploy_hook() -> NodeFaults {
    NodeFaults {
        failing_hooks: [HookKind::Deploy].into(),
        ..NodeFaults::default()
    }
}

#[test]
fn a_healthy_deployment_survives_a_crash_anywhere() {
    crash_once_everywhere(&Scenario::healthy(3));
}

#[test]
fn a_first_deployment_survives_a_crash_anywhere() {
    crash_once_everywhere(&Scenario {
        with_previous: false,
        ..Scenario::healthy(2)
    });
}

#[test]
fn every_hook_failure_policy_survives_a_crash_anywhere() {
    for policy in [
        HookFailurePolicy::Rollback,
        HookFailurePolicy::Open,
        HookFailurePolicy::StayClosed,
    ] {
        crash_once_everywhere(&Scenario {
            policy,
            ..with_fault(3, 0, failing_deploy_hook())
        });
    }
}

#[test]
fn a_swap_failure_survives_a_crash_anywhere() {
    let broken = NodeFaults {
        broken_web: [NEW_IMAGE.to_string()].into(),
        ..NodeFaults::default()
    };
    crash_once_everywhere(&with_fault(3, 1, broken));
}

#[test]
fn an_abort_survives_a_crash_anywhere() {
    let refuses = NodeFaults {
        refuses_stage: true,
        ..NodeFaults::default()
    };
    crash_once_everywhere(&with_fault(3, 2, refuses));
}

#[test]
fn a_healthy_deployment_survives_two_crashes() {
    let scenario = Scenario::healthy(3);
    let clean = run(&scenario, Chaos::calm(7));
    for first in 0..clean.commands_carried_out {
        for gap in [0, 1, 2, 3, 5, 8, 13] {
            let chaos = Chaos {
                controller_crash_before: vec![first, first + gap],
                ..Chaos::calm(first as u64)
            };
            let crashed = run(&scenario, chaos);
            assert_eq!(
                crashed.outcome(),
                clean.outcome(),
                "crashes at {first} and {}",
                first + gap
            );
        }
    }
}
