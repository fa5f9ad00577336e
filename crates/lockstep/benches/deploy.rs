//! The closed window of a production deploy on the local 3-node cluster: the time from the
//! first close to the last open, the deploy hook's own time inside it, and their difference,
//! the procedure's overhead. Run with `cargo bench -p lockstep --bench deploy`.
//!
//! The peer is Platform.sh's own figure for Dedicated Gen 2 (30 to 90 s of closed site per
//! deploy): no Platform.sh cluster runs on this machine, so it is quoted, not measured.

#[path = "../tests/support/mod.rs"]
mod support;

use support::{Platform, Project};

const DEPLOYS: usize = 5;

fn millis_between(start: &str, end: &str) -> f64 {
    let start = chrono::DateTime::parse_from_rfc3339(start).expect("RFC 3339");
    let end = chrono::DateTime::parse_from_rfc3339(end).expect("RFC 3339");
    (end - start).num_microseconds().expect("short") as f64 / 1000.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let platform = Platform::start().await;
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
        let phase = |name: &str| {
            activity["phases"]
                .as_array()
                .expect("phases")
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("no {name} phase in {activity}"))
                .clone()
        };
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
    let window = median(windows.clone());
    let hook = median(hooks.clone());
    println!();
    println!("production deploy of the sample app, 3 nodes, median of {DEPLOYS} deploys");
    println!();
    println!("| measure | lockstep | Platform.sh DG2 (quoted) |");
    println!("|---|---:|---:|");
    println!("| closed window (first close to last open) | {window:.0} ms | 30000 to 90000 ms |");
    println!("| deploy hook's own time | {hook:.0} ms | |");
    println!(
        "| procedure overhead (window - hook) | {:.0} ms | |",
        window - hook
    );
    println!();
    println!(
        "each deploy: windows {windows:.0?} ms, hooks {hooks:.0?} ms; goal: overhead under 300 ms"
    );
}
