//! Property tests: random clusters and random fault schedules (lost, delayed, reordered and
//! duplicated messages; nodes crashing and coming back; the controller crashing at random points,
//! also in the middle of a batch of commands). The simulation checks I1–I3 after every step and
//! I4–I5 at the end; here the properties add what the outcome must be.

use lockstep_deploy::{HookFailurePolicy, HookKind, Outcome};
use proptest::prelude::*;

use crate::sim::node::NodeFaults;
use crate::sim::world::{Chaos, NEW_IMAGE, Scenario, run};

fn policy() -> impl Strategy<Value = HookFailurePolicy> {
    prop_oneof![
        Just(HookFailurePolicy::Rollback),
        Just(HookFailurePolicy::Open),
        Just(HookFailurePolicy::StayClosed),
    ]
}

fn node_faults() -> impl Strategy<Value = NodeFaults> {
    (
        prop::bool::weighted(0.08),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(broken_web, refuses_stage, deploy_fails, post_deploy_fails)| {
                let mut failing_hooks = std::collections::BTreeSet::new();
                if deploy_fails {
                    failing_hooks.insert(HookKind::Deploy);
                }
                if post_deploy_fails {
                    failing_hooks.insert(HookKind::PostDeploy);
                }
                NodeFaults {
                    broken_web: broken_web
                        .then(|| NEW_IMAGE.to_string())
                        .into_iter()
                        .collect(),
                    refuses_stage,
                    failing_hooks,
                }
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..=4).prop_flat_map(|nodes| {
        (
            prop::bool::weighted(0.8),
            policy(),
            prop::collection::vec(node_faults(), nodes),
        )
            .prop_map(move |(with_previous, policy, faults)| Scenario {
                nodes,
                with_previous,
                policy,
                faults,
            })
    })
}

fn chaos() -> impl Strategy<Value = Chaos> {
    (
        any::<u64>(),
        prop_oneof![2 => Just(0u32), 1 => 1u32..=25],
        prop_oneof![1 => Just(0u32), 1 => 1u32..=30],
        0u32..=3,
        0u32..=4,
        1u32..=6,
        0u32..=2,
    )
        .prop_map(
            |(seed, drop, duplicate, node_crashes, controller_crashes, crash, early_timeout)| {
                Chaos {
                    seed,
                    drop_percent: drop,
                    duplicate_percent: duplicate,
                    node_crashes,
                    controller_crashes,
                    crash_weight: crash,
                    early_timeout_weight: early_timeout,
                    controller_crash_before: Vec::new(),
                }
            },
        )
}

/// What a run without network trouble or crashes must end with: the decision table of SPEC
/// section 3, independent of the order the answers arrive in.
fn expected_outcome(scenario: &Scenario) -> &'static str {
    let any = |fault: fn(&NodeFaults) -> bool| scenario.faults.iter().any(fault);
    if any(|f| f.refuses_stage) {
        return "aborted";
    }
    if any(|f| !f.broken_web.is_empty()) {
        return if scenario.with_previous {
            "rolled_back"
        } else {
            "stayed_closed"
        };
    }
    // The deploy hook runs on the first node.
    if scenario.faults[0].failing_hooks.contains(&HookKind::Deploy) {
        return match scenario.policy {
            HookFailurePolicy::Rollback if scenario.with_previous => "rolled_back",
            HookFailurePolicy::Open => "opened_despite_hook_failure",
            _ => "stayed_closed",
        };
    }
    "completed"
}

fn kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Completed { .. } => "completed",
        Outcome::Aborted { .. } => "aborted",
        Outcome::OpenedDespiteHookFailure { .. } => "opened_despite_hook_failure",
        Outcome::RolledBack { .. } => "rolled_back",
        Outcome::StayedClosed { .. } => "stayed_closed",
        Outcome::NotCaughtUp { .. } => "not_caught_up",
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// I1–I5 hold under any fault schedule, and the run always ends (I4).
    #[test]
    fn the_invariants_hold_under_any_fault_schedule(scenario in scenario(), chaos in chaos()) {
        let world = run(&scenario, chaos);
        prop_assert!(world.outcome().is_some());
    }

    /// Without network faults or crashes, only the nodes' own faults decide the outcome, and no
    /// node is lost.
    #[test]
    fn the_outcome_follows_the_decision_table(scenario in scenario(), seed in any::<u64>()) {
        let world = run(&scenario, Chaos::calm(seed));
        let outcome = world.outcome().expect("finished");
        prop_assert_eq!(kind(outcome), expected_outcome(&scenario));
        let lost = crate::sim::checks::lost_nodes(&world.journal);
        prop_assert!(lost.is_empty(), "lost {:?}", lost);
    }

    /// Controller crashes alone (the nodes and the network behave) never change the outcome.
    #[test]
    fn controller_crashes_never_change_the_outcome(
        scenario in scenario(),
        seed in any::<u64>(),
        crashes in 1u32..=5,
    ) {
        let calm = run(&scenario, Chaos::calm(seed));
        let chaos = Chaos { controller_crashes: crashes, crash_weight: 6, ..Chaos::calm(seed) };
        let crashed = run(&scenario, chaos);
        prop_assert_eq!(crashed.outcome(), calm.outcome());
    }
}

/// Found by `the_invariants_hold_under_any_fault_schedule`: a node lost in close aborts the
/// deployment, and the controller crashes once the restore reopened the others at the previous
/// release. The resumed machine must leave the edge open at that release.
#[test]
fn a_controller_crash_after_the_restore_of_an_abort_in_close_leaves_the_edge_open() {
    let scenario = Scenario {
        nodes: 2,
        with_previous: true,
        policy: HookFailurePolicy::Rollback,
        faults: vec![NodeFaults::default(); 2],
    };
    let chaos = Chaos {
        seed: 3348486444843066473,
        drop_percent: 0,
        duplicate_percent: 0,
        node_crashes: 1,
        controller_crashes: 1,
        crash_weight: 2,
        early_timeout_weight: 2,
        controller_crash_before: Vec::new(),
    };
    let world = run(&scenario, chaos);
    assert!(matches!(world.outcome(), Some(Outcome::Aborted { .. })));
    assert_eq!(world.controller_restarts, 1);
}

/// The fault schedules are worth something only if they reach every outcome and every kind of
/// trouble: this samples the same strategies and counts.
#[test]
fn the_fault_schedules_reach_every_outcome_and_every_fault() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeMap;

    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..1500 {
        let scenario = scenario().new_tree(&mut runner).unwrap().current();
        let chaos = chaos().new_tree(&mut runner).unwrap().current();
        let world = run(&scenario, chaos);
        *seen.entry(kind(world.outcome().unwrap())).or_default() += 1;
        let mut note = |what: &'static str, happened: bool| {
            if happened {
                *seen.entry(what).or_default() += 1;
            }
        };
        note("controller restarted", world.controller_restarts > 0);
        note("node restarted", world.nodes.iter().any(|n| n.epoch > 0));
        note(
            "node lost",
            !crate::sim::checks::lost_nodes(&world.journal).is_empty(),
        );
        note(
            "request asked again",
            world.log.iter().any(|l| l.contains("asking again")),
        );
        note(
            "reopened after a restart",
            world.log.iter().any(|l| l.contains("opening it again")),
        );
        note(
            "deploy hook interrupted",
            world.nodes.iter().any(|n| {
                n.hooks
                    .values()
                    .any(|s| *s == crate::sim::node::HookState::Interrupted)
            }),
        );
    }
    println!("{seen:#?}");
    for wanted in [
        "completed",
        "aborted",
        "rolled_back",
        "opened_despite_hook_failure",
        "stayed_closed",
        "controller restarted",
        "node restarted",
        "node lost",
        "request asked again",
        "reopened after a restart",
        "deploy hook interrupted",
    ] {
        assert!(
            seen.get(wanted).copied().unwrap_or(0) >= 3,
            "rarely or never {wanted}: {seen:?}"
        );
    }
}
