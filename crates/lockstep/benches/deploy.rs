//! The closed window of a production deploy on the local 3-node cluster: the time from the
//! first close to the last open, the deploy hook's own time inside it, and their difference,
//! the procedure's overhead. Run with `cargo bench -p lockstep --bench deploy`.
//!
//! Peers: another release of Lockstep measured in the same run when `LOCKSTEP_BASELINE` names
//! its `lockstep` binary (the release before the sandbox, say: see the README), and
//! Platform.sh's own figure for Dedicated Gen 2 (30 to 90 s of closed site per deploy), quoted,
//! since no Platform.sh cluster runs on this machine.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;

use support::{Platform, Project, median, millis_between, phase_of};

const DEPLOYS: usize = 5;

/// Median closed window and deploy hook time of `DEPLOYS` redeploys, on a platform run by
/// `binary`.
async fn measure(binary: PathBuf) -> (f64, f64) {
    let platform = Platform::start_with(binary).await;
    let project = Project::sample();
    let pushed = platform.push(&project, "HEAD:production");
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    let mut windows = Vec::new();
    let mut hooks = Vec::new();
    for _ in 0..DEPLOYS {
        let deployed = platform.cli(&["deploy", "production"]);
        assert!(
            deployed.status.success(),
            "{}",
            String::from_utf8_lossy(&deployed.stdout)
        );
        let activities: serde_json::Value = serde_json::from_slice(
            &platform
                .cli(&["activity", "list", "--json", "--limit", "1"])
                .stdout,
        )
        .expect("activity list");
        let activity = &activities[0];
        let phase = |name: &str| phase_of(activity, name);
        let window = millis_between(
            phase("close")["started_at"].as_str().expect("close start"),
            phase("open")["ended_at"].as_str().expect("open end"),
        );
        let id = activity["id"].as_str().expect("id");
        let hook = platform
            .storage("production", "hooks.log")
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["hook"] == "deploy" && r["deployment"] == id)
            .map(|r| {
                (r["t_end"].as_f64().expect("t_end") - r["t_start"].as_f64().expect("t_start"))
                    * 1000.0
            })
            .expect("the deploy hook's record");
        windows.push(window);
        hooks.push(hook);
    }
    println!("  windows {windows:.0?} ms, hooks {hooks:.0?} ms");
    (median(windows), median(hooks))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut rows = Vec::new();
    println!("this tree:");
    rows.push((
        "lockstep (this tree)".to_owned(),
        measure(support::lockstep_binary()).await,
    ));
    if let Some(baseline) = std::env::var_os("LOCKSTEP_BASELINE") {
        let baseline = PathBuf::from(baseline);
        println!("baseline {}:", baseline.display());
        rows.push((
            format!("baseline ({})", baseline.display()),
            measure(baseline).await,
        ));
    }
    println!();
    println!("production deploy of the sample app, 3 nodes, median of {DEPLOYS} deploys");
    println!();
    println!(
        "| release | closed window (first close to last open) | deploy hook | procedure overhead |"
    );
    println!("|---|---:|---:|---:|");
    for (release, (window, hook)) in &rows {
        println!(
            "| {release} | {window:.0} ms | {hook:.0} ms | {:.0} ms |",
            window - hook
        );
    }
    println!("| Platform.sh DG2 (quoted) | 30000 to 90000 ms | | |");
    println!();
    println!("goal: overhead under 300 ms");
}
