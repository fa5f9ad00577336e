//! What an idle node costs: the CPU its agent uses over a minute in which nothing happens, on
//! a node running two development environments of the services sample app (each with its
//! PostgreSQL, MariaDB and Redis) and on a production node, beside an idle PostgreSQL server
//! (its postmaster and background processes) on the same machine in the same minute. The
//! controller asks each node for its instances' status every two seconds meanwhile, as it does
//! to catch returning nodes up. Run with `cargo bench -p lockstep --bench idle`.
//!
//! Goal (the issue's): an idle agent with two environments under 0.5% of a core.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::{Platform, Project};

/// How long the nodes are left alone before, so that nothing still starting is counted.
const WARM_UP: Duration = Duration::from_secs(15);
const WINDOW: Duration = Duration::from_secs(60);
const GOAL_PERCENT: f64 = 0.5;

/// Field `i` of `/proc/PID/stat` after the command's name (0 is the state), as a number.
fn stat_field(pid: u32, i: usize) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command's name, which may hold spaces, is in parentheses.
    let after = &stat[stat.rfind(')').map_or(0, |end| end + 2)..];
    after
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User and system CPU time of `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    stat_field(pid, 11) + stat_field(pid, 12)
}

fn pids(args: &[&str]) -> Vec<u32> {
    let output = Command::new("pgrep").args(args).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

fn clock_ticks_per_second() -> f64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

#[tokio::main]
async fn main() {
    let platform = Platform::start().await;
    let project = Project::example("services-app");
    for branch in ["production", "feature", "other"] {
        let pushed = platform.push(&project, &format!("HEAD:{branch}"));
        assert!(pushed.status.success(), "{}", support::text(&pushed));
    }
    tokio::time::sleep(WARM_UP).await;

    let agents = [
        ("agent of development-1 (2 environments)", "development-1"),
        ("agent of production-1 (1 environment)", "production-1"),
    ];
    let agent_pids: Vec<u32> = agents
        .iter()
        .map(|(_, node)| platform.agent_pid(node) as u32)
        .collect();
    // Every PostgreSQL process on the machine, and how many servers they make up: one
    // postmaster each, whose parent is no PostgreSQL process.
    let postgres = pids(&["-x", "postgres"]);
    let servers = postgres
        .iter()
        .filter(|pid| !postgres.contains(&(stat_field(**pid, 1) as u32)))
        .count()
        .max(1);
    let before_agents: Vec<u64> = agent_pids.iter().map(|pid| cpu_ticks(*pid)).collect();
    let before_postgres: u64 = postgres.iter().map(|pid| cpu_ticks(*pid)).sum();
    tokio::time::sleep(WINDOW).await;
    let after_postgres: u64 = postgres.iter().map(|pid| cpu_ticks(*pid)).sum();

    let ticks = clock_ticks_per_second();
    let percent = |used: u64| used as f64 / ticks / WINDOW.as_secs_f64() * 100.0;
    println!();
    println!(
        "idle for {} s after {} s:",
        WINDOW.as_secs(),
        WARM_UP.as_secs()
    );
    println!();
    println!("| process | CPU time | of a core |");
    println!("|---|---:|---:|");
    let mut agent_percents = Vec::new();
    for (i, (label, _)) in agents.iter().enumerate() {
        let used = cpu_ticks(agent_pids[i]) - before_agents[i];
        agent_percents.push(percent(used));
        println!(
            "| {label} | {:.2} s | {:.2}% |",
            used as f64 / ticks,
            percent(used)
        );
    }
    let per_server = (after_postgres - before_postgres) / servers as u64;
    println!(
        "| an idle PostgreSQL 15 server (mean of the {servers} running) | {:.2} s | {:.2}% |",
        per_server as f64 / ticks,
        percent(per_server)
    );
    println!();
    let worst = agent_percents[0];
    println!(
        "goal: an idle agent with two environments under {GOAL_PERCENT}% of a core: {worst:.2}%, {}",
        if worst < GOAL_PERCENT {
            "met"
        } else {
            "MISSED"
        }
    );
}
