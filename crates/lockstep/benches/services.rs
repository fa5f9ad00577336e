//! Requests per second through the edge to the services sample app, each answered with a
//! PostgreSQL read (`GET /notes`), on the 3-node production cluster (its replicas streaming,
//! reads through the primary) beside the same app on the 1-node staging environment, in the
//! same run; and the same app's answer that reads no service, for what the read costs. Run with
//! `cargo bench -p lockstep --bench services`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Platform, Project};

const CLIENTS: usize = 8;
const DURATION: Duration = Duration::from_secs(10);

struct Load {
    requests: usize,
    errors: usize,
    latencies: Vec<Duration>,
}

/// `CLIENTS` clients, each with its own connection, asking `path` of `host` on the edge for
/// `DURATION`.
async fn load(edge: u16, host: &str, path: &str) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (stop, url, host) = (
            stop.clone(),
            format!("http://127.0.0.1:{edge}{path}"),
            host.to_owned(),
        );
        clients.spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let (mut latencies, mut errors) = (Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = http.get(&url).header("host", &host).send().await;
                match answer {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        latencies.push(started.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    tokio::time::sleep(DURATION).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Load {
        requests: 0,
        errors: 0,
        latencies: Vec::new(),
    };
    while let Some(joined) = clients.join_next().await {
        let (latencies, errors) = joined.unwrap();
        all.requests += latencies.len();
        all.errors += errors;
        all.latencies.extend(latencies);
    }
    all.latencies.sort();
    all
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let platform = Platform::start().await;
    let project = Project::example("services-app");
    for branch in ["production", "staging"] {
        let pushed = platform.push(&project, &format!("HEAD:{branch}"));
        assert!(pushed.status.success(), "{}", support::text(&pushed));
    }
    let client = reqwest::Client::new();
    for (host, i) in [("localhost", 0), ("staging.localhost", 1)] {
        for n in 0..20 {
            let url = format!(
                "http://127.0.0.1:{}/notes?body=note%20{i}%20{n}",
                platform.edge
            );
            let answer = client.post(url).header("host", host).send().await.unwrap();
            assert!(answer.status().is_success());
        }
    }
    let cases = [
        (
            "production, 3 nodes",
            "localhost",
            "/notes",
            "one PostgreSQL read",
        ),
        (
            "staging, 1 node",
            "staging.localhost",
            "/notes",
            "one PostgreSQL read",
        ),
        ("production, 3 nodes", "localhost", "/", "no service"),
        ("staging, 1 node", "staging.localhost", "/", "no service"),
    ];
    let mut rows = Vec::new();
    for (environment, host, path, what) in cases {
        let result = load(platform.edge, host, path).await;
        println!(
            "  {environment} {path}: {} requests, {} errors",
            result.requests, result.errors
        );
        rows.push((environment, path, what, result));
    }
    println!();
    println!(
        "the services sample app through the edge, {CLIENTS} clients for {} s each (`Cache-Control: no-store`: every request reaches the app)",
        DURATION.as_secs()
    );
    println!();
    println!("| environment | request | per request | requests/s | p50 | p99 | errors |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for (environment, path, what, result) in &rows {
        println!(
            "| {environment} | GET {path} | {what} | {:.0} | {:.1} ms | {:.1} ms | {} |",
            result.requests as f64 / DURATION.as_secs_f64(),
            percentile(&result.latencies, 0.5),
            percentile(&result.latencies, 0.99),
            result.errors
        );
    }
}
