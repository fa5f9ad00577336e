//! What a redeploy after a one-file change moves to the nodes: the bytes each production node's
//! agent fetched from the controller for the new image, against the image's size (what every
//! stage sent before agents pulled by frames), beside rsync's delta transfer of the same change
//! between two copies of the project's tree, in the same run. Run with
//! `cargo bench -p lockstep --bench pull`.
//!
//! Goal (the issue's): under 5% of the image.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;

use support::{Platform, Project};

/// Files of dependencies in the app: about 120 MB of text.
const DEPENDENCIES: usize = 20_000;
const GOAL_PERCENT: f64 = 5.0;

/// Bytes fetched by each production node's agent so far.
async fn fetched_by_production_nodes(platform: &Platform) -> Vec<u64> {
    let layout = platform.layout();
    let mut fetched = Vec::new();
    for port in &layout["agent_ports"].as_array().unwrap()[..3] {
        fetched.push(
            platform
                .agent_counter(
                    port.as_u64().unwrap(),
                    "lockstep_agent_image_bytes_fetched_total",
                )
                .await,
        );
    }
    fetched
}

async fn serving_image_bytes(platform: &Platform) -> u64 {
    let image = platform.get("/environments/production").await["serving"]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = platform
        .data_dir
        .join(format!("controller/build/images/{image}.tar.zst"));
    std::fs::metadata(&path).unwrap().len()
}

/// Bytes rsync sends to bring `to` up to `from`, in its delta mode.
fn rsync_sent(from: &std::path::Path, to: &std::path::Path) -> u64 {
    let output = Command::new("rsync")
        .args(["-a", "--no-whole-file", "--exclude=.git", "--stats"])
        .arg(format!("{}/", from.display()))
        .arg(to)
        .output()
        .unwrap();
    assert!(output.status.success(), "rsync failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("Total bytes sent: "))
        .map(|sent| sent.replace(',', "").trim().parse().unwrap())
        .unwrap()
}

#[tokio::main]
async fn main() {
    let platform = Platform::start().await;
    let project = Project::sample();
    project.write_dependencies(DEPENDENCIES);
    project.commit("dependencies");
    let copy = tempfile::tempdir().unwrap();
    rsync_sent(project.path(), copy.path());
    assert!(platform.push(&project, "HEAD:production").status.success());
    let before = fetched_by_production_nodes(&platform).await;

    let changed = project.path().join("vendor/package-500/module_10007.py");
    let mut text = std::fs::read_to_string(&changed).unwrap();
    text.push_str("added = 1\n");
    std::fs::write(&changed, text).unwrap();
    project.commit("one file changed");
    assert!(platform.push(&project, "HEAD:production").status.success());
    let after = fetched_by_production_nodes(&platform).await;
    let image = serving_image_bytes(&platform).await;
    let rsync = rsync_sent(project.path(), copy.path());

    let percent = |bytes: u64| bytes as f64 * 100.0 / image as f64;
    println!("a one-file change to an app of {DEPENDENCIES} dependency files; image {image} bytes");
    println!();
    println!("| node | fetched (bytes) | of the image |");
    println!("|---|---:|---:|");
    let mut worst = 0.0f64;
    for (node, (before, after)) in before.iter().zip(&after).enumerate() {
        let fetched = after - before;
        worst = worst.max(percent(fetched));
        println!(
            "| production-{} | {fetched} | {:.2}% |",
            node + 1,
            percent(fetched)
        );
    }
    println!("| before pulls (the whole image) | {image} | 100.00% |");
    println!(
        "| rsync --no-whole-file, tree to tree | {rsync} | {:.2}% |",
        percent(rsync)
    );
    println!();
    println!(
        "worst node: {worst:.2}% of the image ({}; goal under {GOAL_PERCENT}%)",
        if worst < GOAL_PERCENT {
            "met"
        } else {
            "missed"
        }
    );
}
