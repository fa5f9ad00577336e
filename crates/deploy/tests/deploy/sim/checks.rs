//! The invariants of SPEC section 3, checked against the simulated nodes and the journal.

use std::collections::BTreeSet;

use lockstep_deploy::{EdgeGate, HookKind, Outcome, Phase, Record, Release, Request};

use super::node::SimNode;
use super::world::{World, new_release};

/// I1, I2 and I3, after every step of the world.
pub fn at_every_instant(world: &mut World) {
    one_release_serves(world);
    the_edge_sends_visitors_only_to_the_release_that_serves(world);
    nothing_runs_in_the_closed_window(&world.nodes);
    deploy_hook_started_at_most_once(world);
}

/// I1: every open node serves the same release, and a generation always names the same image.
fn one_release_serves(world: &mut World) {
    let mut serving: Vec<Release> = Vec::new();
    for node in &world.nodes {
        let Some(release) = node.serves() else {
            continue;
        };
        let active = node
            .active
            .as_ref()
            .expect("an open node has an active release");
        assert_eq!(
            active.generation, release.generation,
            "I1: {} is open at a generation that is not its active release's",
            node.name
        );
        assert!(
            node.web_running,
            "I1: {} is open without a web process",
            node.name
        );
        let image = world
            .served_generations
            .entry(release.generation)
            .or_insert_with(|| release.image.clone());
        assert_eq!(
            *image, release.image,
            "I1: generation {} served two images",
            release.generation
        );
        if !serving.contains(&release) {
            serving.push(release);
        }
    }
    assert!(
        serving.len() <= 1,
        "I1: two releases serve at once: {serving:?}"
    );
}

/// The edge is open at a release only while every open node serves that one (I1 seen from
/// the visitors' side).
fn the_edge_sends_visitors_only_to_the_release_that_serves(world: &World) {
    let Some(EdgeGate::Open(release)) = &world.edge else {
        return;
    };
    for node in &world.nodes {
        if let Some(serving) = node.serves() {
            assert_eq!(
                &serving, release,
                "the edge is open at generation {} while {} serves generation {}",
                release.generation, node.name, serving.generation
            );
        }
    }
}

/// I3: no worker or cron runs on a node between its quiesce and its open.
fn nothing_runs_in_the_closed_window(nodes: &[SimNode]) {
    for node in nodes {
        assert!(
            !(node.in_closed_window && node.background_running),
            "I3: background work runs on {} in its closed window",
            node.name
        );
    }
}

/// I2: the deploy hook started at most once, on the node the journal chose.
fn deploy_hook_started_at_most_once(world: &World) {
    let deployment = &world.plan.deployment;
    let started_on: Vec<&str> = world
        .nodes
        .iter()
        .flat_map(|node| {
            node.hook_starts
                .iter()
                .filter(|(d, hook)| d == deployment && *hook == HookKind::Deploy)
                .map(|_| node.name.as_str())
        })
        .collect();
    assert!(
        started_on.len() <= 1,
        "I2: the deploy hook started {} times: {started_on:?}",
        started_on.len()
    );
    let chosen: BTreeSet<&str> = world
        .journal
        .iter()
        .filter_map(|r| match r {
            Record::HookNode { node } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        chosen.len() <= 1,
        "I2: the journal names hook nodes {chosen:?}"
    );
    if let Some(node) = started_on.first() {
        assert!(
            chosen.contains(node),
            "I2: the hook ran on {node}, not on the journaled node {chosen:?}"
        );
    }
}

/// I4 and I5: the deployment finished, and the nodes agree with its outcome and journal.
pub fn at_the_end(world: &World) {
    let outcome = world.outcome().expect("I4: the deployment finished");
    let journal = &world.journal;
    let n = journal.len();
    assert!(
        matches!(&journal[n - 1], Record::Finished { outcome: o } if o == outcome),
        "I4: the journal ends with the outcome"
    );
    let Record::Serving { release: serving } = &journal[n - 2] else {
        panic!("I4: `Serving` comes right before `Finished`");
    };
    let lost = lost_nodes(journal);
    let previous = world.plan.previous.clone();
    // The edge ends where the nodes do: open at what serves, closed if nothing does.
    let edge_at_the_end = match outcome {
        Outcome::Completed { .. } | Outcome::OpenedDespiteHookFailure { .. } => {
            Some(EdgeGate::Open(new_release()))
        }
        Outcome::RolledBack { .. } => previous.clone().map(EdgeGate::Open),
        // Every node lost in close leaves nothing reopened to send visitors to.
        Outcome::Aborted { .. }
            if lost.len() == world.nodes.len() && failure_phase(journal) == Some(Phase::Close) =>
        {
            Some(EdgeGate::Closed)
        }
        Outcome::Aborted { .. } => match &previous {
            Some(previous) => Some(EdgeGate::Open(previous.clone())),
            None => world.edge.clone(),
        },
        Outcome::StayedClosed { .. } => Some(EdgeGate::Closed),
        Outcome::NotCaughtUp { .. } => unreachable!("the simulation runs deployments"),
    };
    assert_eq!(
        world.edge, edge_at_the_end,
        "the edge at the end of {outcome:?}"
    );
    match outcome {
        Outcome::Completed { lost_nodes }
        | Outcome::OpenedDespiteHookFailure { lost_nodes, .. } => {
            assert_eq!(*lost_nodes, lost, "I4: the outcome lists the lost nodes");
            assert_eq!(*serving, Some(new_release()));
            expect_serving(world, &lost, &new_release());
            if matches!(outcome, Outcome::Completed { .. }) {
                let succeeded = journal.iter().any(|r| {
                    *r == Record::HookOutcome {
                        hook: HookKind::Deploy,
                        succeeded: true,
                    }
                });
                assert!(succeeded, "I4: completed without a successful deploy hook");
            }
        }
        Outcome::RolledBack { lost_nodes, .. } => {
            assert_eq!(*lost_nodes, lost, "I4: the outcome lists the lost nodes");
            let previous = previous.expect("a rollback has a release to go back to");
            assert_eq!(*serving, Some(previous.clone()));
            expect_serving(world, &lost, &previous);
        }
        Outcome::Aborted { .. } => {
            assert_eq!(*serving, previous);
            early_failures_cost_nothing(world);
            match &previous {
                Some(previous) => expect_serving(world, &lost, previous),
                None => expect_all_closed(world, &[]),
            }
        }
        Outcome::NotCaughtUp { .. } => unreachable!("the simulation runs deployments"),
        Outcome::StayedClosed { .. } => {
            assert_eq!(*serving, None);
            expect_all_closed(world, &lost);
            // A node lost while it opened may have opened all the same (its answers were lost);
            // any other open node would be one that never closed.
            for node in &world.nodes {
                if let Some(release) = node.serves() {
                    let opened = Request::Open {
                        generation: release.generation,
                    };
                    assert!(
                        node.applied.contains(&opened),
                        "I4: {} stayed open through a deployment that stayed closed",
                        node.name
                    );
                }
            }
        }
    }
}

/// Every node not lost runs `release`, and is open at its generation with its background
/// running, unless a restart since it opened closed it (then only its active release counts).
fn expect_serving(world: &World, lost: &[String], release: &Release) {
    for node in world.nodes.iter().filter(|n| !lost.contains(&n.name)) {
        assert_eq!(
            node.active.as_ref(),
            Some(release),
            "I4: {} runs the wrong release",
            node.name
        );
        if node.should_be_open() {
            assert_eq!(
                node.serves().as_ref(),
                Some(release),
                "I4: {} is not open",
                node.name
            );
            assert!(
                node.background_running,
                "I4: {} has no background work",
                node.name
            );
        }
    }
}

fn expect_all_closed(world: &World, except: &[String]) {
    for node in world.nodes.iter().filter(|n| !except.contains(&n.name)) {
        assert_eq!(node.serves(), None, "I4: {} is open", node.name);
    }
}

/// I5: an abort never swapped a node, and a failure before close closed no node.
fn early_failures_cost_nothing(world: &World) {
    let swapped = |request: &Request| matches!(request, Request::Swap { .. });
    let closed = |request: &Request| matches!(request, Request::Close);
    for node in &world.nodes {
        assert!(
            !node.applied.iter().any(swapped),
            "I5: {} swapped in an aborted deployment",
            node.name
        );
        if failure_phase(&world.journal) != Some(Phase::Close) {
            assert!(
                !node.applied.iter().any(closed),
                "I5: {} closed though the failure came before close",
                node.name
            );
        }
    }
}

/// The phase in progress when the `Failure` record was written.
pub fn failure_phase(journal: &[Record]) -> Option<Phase> {
    let mut phase = None;
    for record in journal {
        match record {
            Record::PhaseStarted { phase: p } => phase = Some(*p),
            Record::Failure { .. } => return phase,
            _ => {}
        }
    }
    None
}

pub fn lost_nodes(journal: &[Record]) -> Vec<String> {
    let mut lost: Vec<String> = Vec::new();
    for record in journal {
        if let Record::NodeLost { node } = record
            && !lost.contains(node)
        {
            lost.push(node.clone());
        }
    }
    // In cluster order, as the outcome lists them (node names sort in cluster order here).
    lost.sort();
    lost
}
