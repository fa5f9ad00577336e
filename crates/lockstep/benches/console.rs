//! How fast the console's pages come back with 200 environments and 5 000 activities, beside
//! the same bytes served as a file by Python's `http.server`, and the API's JSON of the same
//! data, in the same run. The controller runs in this process on a store seeded through SQLite
//! (the rows a project of that size has; its nodes are addresses nothing answers, so the
//! pages are read from the store alone, as they are built to be). Run with
//! `cargo bench -p lockstep --bench console`.
//!
//! Goal (the issue's): every page under 50 ms.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_controller::{Controller, ControllerOptions};

const ENVIRONMENTS: usize = 200;
const ACTIVITIES: usize = 5_000;
const REQUESTS: usize = 50;
const GOAL_MS: f64 = 50.0;
const ADMIN: &str = "admin-token-0123456789abcdef";
const IMAGE: &str = "3a223f18088d5d0f7323d69bc64520e221ada55ef2019077d1d8197575f8659d";

const PHASES: [&str; 8] = [
    "build",
    "stage",
    "quiesce",
    "close",
    "swap",
    "deploy_hook",
    "open",
    "post_deploy",
];

fn environment_name(index: usize) -> String {
    match index {
        0 => "production".into(),
        1 => "staging".into(),
        _ => format!("feature-{index:03}"),
    }
}

/// The rows of a project with `ENVIRONMENTS` environments (a tree: staging under production,
/// each feature branch under production or an earlier feature) and `ACTIVITIES` pushes with
/// their phases and logs.
fn seed(database: &std::path::Path) {
    let mut db = rusqlite::Connection::open(database).unwrap();
    let tx = db.transaction().unwrap();
    let release = serde_json::json!({ "image": IMAGE, "generation": 7 }).to_string();
    for index in 0..ENVIRONMENTS {
        let name = environment_name(index);
        let (kind, parent) = match index {
            0 => ("production", None),
            1 => ("staging", Some("production".to_owned())),
            _ if index % 4 == 0 => ("development", Some(environment_name(index / 2))),
            _ => ("development", Some("production".to_owned())),
        };
        tx.execute(
            // The controller made production and staging when it opened: they are replaced.
            "INSERT OR REPLACE INTO environments (name, kind, branch, parent, generation, serving, previous, settings, created_at, uid)
             VALUES (?1, ?2, ?1, ?3, 7, ?4, ?4, '{}', '2026-12-01T10:00:00.000Z', ?5)",
            rusqlite::params![name, kind, parent, release, 80_001 + index as i64],
        )
        .unwrap();
        let nodes = if index == 0 { 3 } else { 1 };
        for node in 0..nodes {
            tx.execute(
                "INSERT INTO nodes (environment, name, position, agent_url, router_port) VALUES (?1, ?2, ?3, 'https://127.0.0.1:9', 30000)",
                rusqlite::params![name, format!("{kind}-{}", node + 1), node],
            )
            .unwrap();
        }
    }
    let log: String = (0..40)
        .map(|line| format!("  build.py: line {line} of the build's output, as a hook prints it\n"))
        .collect();
    for index in 0..ACTIVITIES {
        let at = |ms: usize| {
            let second = 1_700_000_000 + index * 60;
            chrono::DateTime::from_timestamp(
                (second + ms / 1000) as i64,
                (ms % 1000 * 1_000_000) as u32,
            )
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let phases: Vec<serde_json::Value> = PHASES
            .iter()
            .enumerate()
            .map(|(i, phase)| {
                serde_json::json!({ "name": phase, "started_at": at(i * 300), "ended_at": at(i * 300 + 250) })
            })
            .collect();
        tx.execute(
            "INSERT INTO activities (id, seq, kind, environment, state, result, description, image, created_at, completed_at, phases, log)
             VALUES (?1, ?2, 'push', ?3, 'complete', 'success', ?4, ?5, ?6, ?7, ?8, ?9)",
            rusqlite::params![
                format!("a{:06}", index + 1),
                index as i64 + 1,
                environment_name(index % ENVIRONMENTS),
                format!("Push of {index:07x} to {}", environment_name(index % ENVIRONMENTS)),
                IMAGE,
                at(0),
                at(PHASES.len() * 300),
                serde_json::Value::from(phases).to_string(),
                log,
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// The median and 95th percentile of `REQUESTS` sequential GETs (after five to warm up), in
/// milliseconds, and the last body.
async fn time_gets(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (f64, f64, String) {
    let get = || async {
        let mut request = client.get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.text().await.unwrap()
    };
    for _ in 0..5 {
        get().await;
    }
    let mut times = Vec::with_capacity(REQUESTS);
    let mut body = String::new();
    for _ in 0..REQUESTS {
        let started = Instant::now();
        body = get().await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[REQUESTS / 2], times[REQUESTS * 95 / 100], body)
}

/// Python's static file server on `dir`, stopped when dropped.
struct StaticServer(Child);

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let data = tempfile::tempdir().unwrap();
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let (api, cluster) = (bind().await, bind().await);
    let api_url = format!("http://{}", api.local_addr().unwrap());
    let controller = Controller::open(ControllerOptions {
        data_dir: data.path().join("controller"),
        project: "shop".into(),
        domain: "localhost".into(),
        admin_token: ADMIN.into(),
        public_url: api_url.clone(),
        cluster_url: format!("https://{}", cluster.local_addr().unwrap()),
        lockstep_binary: support::lockstep_binary(),
        operator: Default::default(),
        shared_storage: Default::default(),
    })
    .unwrap();
    seed(&data.path().join("controller/lockstep.db"));
    tokio::spawn(Arc::clone(&controller).serve(
        api,
        cluster,
        std::future::ready(()),
        std::future::pending(),
    ));

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = client
        .post(format!("{api_url}/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN}"))
        .send()
        .await
        .unwrap();
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let as_browser = [("cookie", cookie.as_str())];
    let bearer = format!("Bearer {ADMIN}");
    let as_api = [("authorization", bearer.as_str())];

    println!(
        "{ENVIRONMENTS} environments, {ACTIVITIES} activities; each row the median and 95th percentile of {REQUESTS} sequential requests on loopback\n"
    );
    println!("| page | median | p95 | bytes |");
    println!("|---|---:|---:|---:|");
    let pages = [
        ("environment tree `/`", "/".to_owned()),
        (
            "activity feed `/activities` (100 newest)",
            "/activities".to_owned(),
        ),
        (
            "an activity `/activities/ID` (timeline, log)",
            format!("/activities/a{ACTIVITIES:06}"),
        ),
        ("production's page", "/environments/production".to_owned()),
        (
            "a feature branch's page",
            "/environments/feature-100".to_owned(),
        ),
        ("project variables `/variables`", "/variables".to_owned()),
    ];
    let mut worst: f64 = 0.0;
    let mut tree = String::new();
    for (what, path) in &pages {
        let (median, p95, body) =
            time_gets(&client, &format!("{api_url}{path}"), &as_browser).await;
        worst = worst.max(median);
        if path == "/" {
            tree = body.clone();
        }
        println!(
            "| Lockstep console: {what} | {median:.1} ms | {p95:.1} ms | {} |",
            body.len()
        );
    }
    for (what, path) in [
        ("environments (JSON)", "/api/v1/environments"),
        ("100 activities (JSON)", "/api/v1/activities?limit=100"),
    ] {
        let (median, p95, body) = time_gets(&client, &format!("{api_url}{path}"), &as_api).await;
        println!(
            "| Lockstep API: {what} | {median:.1} ms | {p95:.1} ms | {} |",
            body.len()
        );
    }

    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("tree.html"), &tree).unwrap();
    let port = support::free_port();
    let _python = StaticServer(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .arg("--directory")
            .arg(files.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let file_url = format!("http://127.0.0.1:{port}/tree.html");
    support::eventually(Duration::from_secs(10), "python's http.server", || async {
        reqwest::get(&file_url).await.is_ok()
    })
    .await;
    let (median, p95, body) = time_gets(&client, &file_url, &[]).await;
    println!(
        "| Python `http.server`: the tree page's bytes as a file | {median:.1} ms | {p95:.1} ms | {} |",
        body.len()
    );
    println!();
    let verdict = if worst < GOAL_MS { "met" } else { "NOT met" };
    println!(
        "goal: every console page under {GOAL_MS} ms: slowest median {worst:.1} ms, {verdict}"
    );
}
