//! The closed window of a production deploy as the cluster grows: 3, 10 and 30 nodes, each on
//! a host of its own (a network namespace, `tests/support/hosts.rs`), every link between the
//! controller and a node 50 ms slower each way. The state machine asks every node at once, so
//! the phases that only talk to the nodes (close, open) should stay flat as nodes are added; a
//! procedure that asked them one after the other would grow by a round trip per node and phase.
//! The swap starts every node's web process, and here all the nodes share this machine's two
//! cores: that phase grows with the CPU they compete for, which separate hosts would not share.
//! Run as root with `cargo bench -p lockstep --bench fanout`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::hosts::Cluster;
use support::{Project, median, millis_between, phase_of};

const SIZES: [usize; 3] = [3, 10, 30];
const DELAY: Duration = Duration::from_millis(50);
const DEPLOYS: usize = 3;

/// The phases timed, besides the whole closed window.
const PHASES: [&str; 4] = ["close", "swap", "deploy_hook", "open"];

/// Median closed window (first close to last open), deploy hook time, and each of `PHASES`, of
/// `DEPLOYS` redeploys on a cluster of `nodes` nodes; None without root.
async fn measure(nodes: usize) -> Option<(f64, f64, Vec<f64>)> {
    let cluster = Cluster::start(nodes, Some(DELAY)).await?;
    let project = Project::sample();
    let pushed = cluster.push(&project);
    assert!(pushed.status.success(), "{}", support::text(&pushed));
    cluster
        .until_every_node_serves(&support::tree_of(&project))
        .await;
    let (mut windows, mut hooks) = (Vec::new(), Vec::new());
    let mut phases = vec![Vec::new(); PHASES.len()];
    for _ in 0..DEPLOYS {
        let started: serde_json::Value = cluster.production("deploy").await.json().await.unwrap();
        let id = started["id"].as_str().unwrap().to_owned();
        let path = format!("/activities/{id}");
        support::eventually(Duration::from_secs(300), "the deploy to end", || async {
            cluster.get(&path).await["state"] == "complete"
        })
        .await;
        let activity = cluster.get(&path).await;
        assert_eq!(activity["result"], "success", "{activity}");
        let phase = |name: &str| phase_of(&activity, name);
        windows.push(millis_between(
            phase("close")["started_at"].as_str().unwrap(),
            phase("open")["ended_at"].as_str().unwrap(),
        ));
        hooks.push(cluster.deploy_hook_millis(&id));
        for (name, times) in PHASES.iter().zip(&mut phases) {
            let phase = phase(name);
            times.push(millis_between(
                phase["started_at"].as_str().unwrap(),
                phase["ended_at"].as_str().unwrap(),
            ));
        }
    }
    println!("  {nodes} nodes: windows {windows:.0?} ms, hooks {hooks:.0?} ms");
    Some((
        median(windows),
        median(hooks),
        phases.into_iter().map(median).collect(),
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut rows = Vec::new();
    for nodes in SIZES {
        let Some(row) = measure(nodes).await else {
            return;
        };
        rows.push((nodes, row));
    }
    println!();
    println!(
        "production redeploys of the sample app, {} ms more per link each way, median of {DEPLOYS}",
        DELAY.as_millis()
    );
    println!();
    println!(
        "| nodes | closed window | deploy hook | procedure overhead | {} |",
        PHASES.join(" | ")
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (nodes, (window, hook, phases)) in &rows {
        let phases: Vec<String> = phases.iter().map(|t| format!("{t:.0} ms")).collect();
        println!(
            "| {nodes} | {window:.0} ms | {hook:.0} ms | {:.0} ms | {} |",
            window - hook,
            phases.join(" | ")
        );
    }
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    println!();
    println!(
        "from {} to {} nodes: overhead {:.2}x, close phase {:.2}x, open phase {:.2}x",
        first.0,
        last.0,
        (last.1.0 - last.1.1) / (first.1.0 - first.1.1),
        last.1.2[0] / first.1.2[0],
        last.1.2[3] / first.1.2[3],
    );
}
