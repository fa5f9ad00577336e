//! Nodes on hosts of their own: each production node's agent in a network namespace with its
//! own address, the controller in the test's namespace, images pulled and routers reached over
//! the bridge between them. Each test is a row of the fault matrix in docs/RELIABILITY.md: a
//! fault injected at a point of a deployment, then I1 (no two releases served), I2 (the hook
//! once), and a consistent end once the fault heals, with the time it took. Root only.

mod support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_controller::{Controller, ControllerOptions, NodeSpec, Topology};
use support::netns::Network;
use support::*;

const ADMIN: &str = "admin-token-0123456789abcdef";
const AGENT_PORT: u16 = 7000;

/// A `lockstep agent` in a namespace, killed when dropped.
struct HostAgent(Child);

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three production nodes on hosts of their own, and a controller in front of them. Fields drop
/// in order: the agents before their network.
struct Cluster {
    _agents: Vec<HostAgent>,
    api: String,
    git: String,
    http: reqwest::Client,
    data: tempfile::TempDir,
    network: Network,
}

impl Cluster {
    async fn start() -> Option<Cluster> {
        Self::start_with_delay(None).await
    }

    /// A cluster whose every link between the controller and a node (both ways: the
    /// controller's requests, the agents' image pulls and calls back) takes `delay` longer.
    async fn start_with_delay(delay: Option<Duration>) -> Option<Cluster> {
        let network = Network::create(3)?;
        let data = tempfile::tempdir().unwrap();
        let token_file = data.path().join("agent-token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let mut agents = Vec::new();
        for (index, host) in network.hosts.iter().enumerate() {
            let child = network
                .command(index, lockstep_binary().to_str().unwrap())
                .arg("--data-dir")
                .arg(data.path().join(format!("agent-{index}")))
                .args([
                    "agent",
                    "--listen",
                    &format!("{}:{AGENT_PORT}", host.address),
                ])
                .arg("--token-file")
                .arg(&token_file)
                .env("LOCKSTEP_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            agents.push(HostAgent(child));
        }
        let http = reqwest::Client::new();
        for host in &network.hosts {
            let url = format!("http://{}:{AGENT_PORT}/v1/instances", host.address);
            eventually(Duration::from_secs(30), "the agent to answer", || async {
                http.get(&url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            })
            .await;
        }
        let listener = tokio::net::TcpListener::bind((network.gateway(), 0))
            .await
            .unwrap();
        let mut controller_address = listener.local_addr().unwrap();
        let mut agent_addresses: Vec<std::net::SocketAddr> = network
            .hosts
            .iter()
            .map(|host| (host.address, AGENT_PORT).into())
            .collect();
        if let Some(delay) = delay {
            controller_address = network.delay_from_gateway(controller_address, delay).await;
            for (index, address) in agent_addresses.iter_mut().enumerate() {
                *address = network.delay_to(index, AGENT_PORT, delay);
            }
        }
        let api = format!("http://{controller_address}");
        let node = |index: usize| NodeSpec {
            name: format!("production-{}", index + 1),
            agent_url: format!("http://{}", agent_addresses[index]),
        };
        let controller = Controller::open(ControllerOptions {
            data_dir: data.path().join("controller"),
            project: "shop".into(),
            domain: "localhost".into(),
            admin_token: ADMIN.into(),
            agent_token: TOKEN.into(),
            public_url: api.clone(),
            lockstep_binary: lockstep_binary(),
            topology: Topology {
                production: vec![node(0), node(1), node(2)],
                staging: vec![],
                development: node(0),
            },
            edge: None,
            operator: Default::default(),
        })
        .unwrap();
        tokio::spawn(Arc::clone(&controller).serve(listener, std::future::pending()));
        let git = format!(
            "{}/git/shop.git",
            api.replacen("http://", &format!("http://u:{ADMIN}@"), 1)
        );
        Some(Cluster {
            _agents: agents,
            api,
            git,
            http,
            data,
            network,
        })
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}/api/v1{path}", self.api))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn push(&self, project: &Project) -> std::process::Output {
        push(project.path(), &self.git)
    }

    /// Each production node's router (none while production serves nothing).
    async fn routers(&self) -> Vec<String> {
        let status = self.get("/status").await;
        let production = status["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "production")
            .unwrap()
            .clone();
        production["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["router"].as_str().map(str::to_owned))
            .collect()
    }

    /// `GET /` on node `index`'s router from its own host (reachable during a partition):
    /// the status and the release that answered.
    fn release_on_host(&self, index: usize, router: &str) -> (u16, String) {
        let output = self
            .network
            .command(index, "curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "5"])
            .arg(format!("{router}/"))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&output.stdout).into_owned();
        let status = head
            .lines()
            .next()
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let release = head
            .lines()
            .find_map(|line| line.strip_prefix("x-release: "))
            .unwrap_or_default()
            .trim()
            .to_owned();
        (status, release)
    }

    /// Waits until every node serves `release`, asked from each node's own host; how long it
    /// took.
    async fn until_every_node_serves(&self, release: &str) -> Duration {
        let started = Instant::now();
        eventually(
            Duration::from_secs(120),
            "production to serve a release",
            || async { self.routers().await.len() == self.network.hosts.len() },
        )
        .await;
        let routers = self.routers().await;
        for (index, router) in routers.iter().enumerate() {
            eventually(
                Duration::from_secs(120),
                "every node to serve the release",
                || async { self.release_on_host(index, router) == (200, release.to_owned()) },
            )
            .await;
        }
        started.elapsed()
    }

    fn deploy_hook_runs(&self, deployment: &str) -> usize {
        std::fs::read_to_string(
            self.data
                .path()
                .join("controller/storage/production/storage/hooks.log"),
        )
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["hook"] == "deploy" && r["deployment"] == deployment)
        .count()
    }

    /// The newest push.
    async fn latest_push(&self) -> serde_json::Value {
        self.get("/activities?limit=50")
            .await
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["type"] == "push")
            .cloned()
            .unwrap_or_default()
    }
}

fn push(project: &Path, remote: &str) -> std::process::Output {
    std::process::Command::new("git")
        .arg("-C")
        .arg(project)
        .args(["push", "--porcelain", remote, "HEAD:production"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partitioned_during_the_deploy_hook_stays_closed_and_catches_up_once_healed() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let project = Project::with_slow_deploy_hook(3);
    let pushed = cluster.push(&project);
    assert!(pushed.status.success(), "{}", text(&pushed));
    cluster.until_every_node_serves(&tree_of(&project)).await;

    project.new_version("v2");
    let v2 = tree_of(&project);
    let (path, remote) = (project.path().to_owned(), cluster.git.clone());
    let pusher = std::thread::spawn(move || push(&path, &remote));
    eventually(
        Duration::from_secs(60),
        "the deploy hook to run",
        || async {
            let push = cluster.latest_push().await;
            push["phases"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "deploy_hook" && p["ended_at"].is_null())
        },
    )
    .await;
    cluster.network.partition(2);
    let pushed = pusher.join().unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed));
    let deployment = cluster.latest_push().await;
    let id = deployment["id"].as_str().unwrap();
    assert_eq!(cluster.deploy_hook_runs(id), 1, "I2: the hook ran once");

    // I1: the nodes that took part serve the new release; the partitioned one, closed since
    // the close phase, serves nothing.
    let routers = cluster.routers().await;
    for (index, router) in routers.iter().enumerate().take(2) {
        assert_eq!(cluster.release_on_host(index, router), (200, v2.clone()));
    }
    assert_eq!(cluster.release_on_host(2, &routers[2]).0, 503);

    cluster.network.heal(2);
    let healed = cluster.until_every_node_serves(&v2).await;
    eprintln!("consistent {healed:?} after the partition healed");
    assert_eq!(cluster.deploy_hook_runs(id), 1, "I2: the hook ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partitioned_before_stage_aborts_the_deployment_and_nothing_changes() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let project = Project::sample();
    let pushed = cluster.push(&project);
    assert!(pushed.status.success(), "{}", text(&pushed));
    let v1 = tree_of(&project);
    cluster.until_every_node_serves(&v1).await;

    cluster.network.partition(2);
    project.new_version("v2");
    let pushed = cluster.push(&project);
    assert!(!pushed.status.success(), "{}", text(&pushed));
    let deployment = cluster.latest_push().await;
    assert_eq!(deployment["result"], "failure");
    let phases = Platform::phase_names(&deployment);
    assert!(!phases.contains(&"close".to_owned()), "{phases:?}");

    // I5: nothing changed anywhere, the partitioned node included.
    let routers = cluster.routers().await;
    for (index, router) in routers.iter().enumerate() {
        assert_eq!(cluster.release_on_host(index, router), (200, v1.clone()));
    }
    cluster.network.heal(2);
    let healed = cluster.until_every_node_serves(&v1).await;
    eprintln!("consistent {healed:?} after the partition healed");
}

impl Cluster {
    /// Waits until a push newer than `earlier` (an activity id) has begun `phase`.
    async fn until_phase_begins(&self, earlier: &str, phase: &str) {
        eventually(Duration::from_secs(60), "the phase to begin", || async {
            let push = self.latest_push().await;
            push["id"] != earlier
                && push["phases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == phase)
        })
        .await;
    }

    /// Pushes `project` in the background, joined for its output; and the id of the push
    /// before it.
    async fn push_in_background(
        &self,
        project: &Project,
    ) -> (std::thread::JoinHandle<std::process::Output>, String) {
        let earlier = self.latest_push().await["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (path, remote) = (project.path().to_owned(), self.git.clone());
        (std::thread::spawn(move || push(&path, &remote)), earlier)
    }

    /// The log of the newest push.
    async fn latest_push_log(&self) -> String {
        let id = self.latest_push().await["id"].as_str().unwrap().to_owned();
        self.http
            .get(format!("{}/api/v1/activities/{id}/log", self.api))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn agent_pid(&self, index: usize) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self._agents[index].0.id() as i32)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partitioned_while_it_drains_aborts_the_deployment_and_the_others_reopen() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let project = Project::sample();
    assert!(cluster.push(&project).status.success());
    let v1 = tree_of(&project);
    cluster.until_every_node_serves(&v1).await;
    let routers = cluster.routers().await;

    // A slow request on production-3 keeps its close draining while the partition comes.
    let mut slow = cluster
        .network
        .command(2, "curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "30"])
        .arg(format!("{}/slow?ms=6000", routers[2]))
        .spawn()
        .unwrap();
    project.new_version("v2");
    let (pusher, earlier) = cluster.push_in_background(&project).await;
    cluster.until_phase_begins(&earlier, "close").await;
    cluster.network.partition(2);
    let pushed = pusher.join().unwrap();
    let _ = slow.wait();
    let log = cluster.latest_push_log().await;
    assert!(!pushed.status.success(), "{log}");
    assert!(log.contains("Deployment aborted"), "{log}");
    // I5: the nodes that answered reopened at the old release; production-3, which closed by
    // itself once its request ended, never served the new one.
    for (index, router) in routers.iter().enumerate().take(2) {
        assert_eq!(cluster.release_on_host(index, router), (200, v1.clone()));
    }
    assert_ne!(cluster.release_on_host(2, &routers[2]).1, tree_of(&project));
    cluster.network.heal(2);
    let healed = cluster.until_every_node_serves(&v1).await;
    eprintln!("consistent {healed:?} after the partition healed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partitioned_after_open_serves_the_new_release_and_the_deployment_completes() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let project = Project::sample();
    assert!(cluster.push(&project).status.success());
    cluster.until_every_node_serves(&tree_of(&project)).await;

    project.new_version("v2");
    let v2 = tree_of(&project);
    let (pusher, earlier) = cluster.push_in_background(&project).await;
    cluster.until_phase_begins(&earlier, "post_deploy").await;
    cluster.network.partition(2);
    let pushed = pusher.join().unwrap();
    assert!(
        pushed.status.success(),
        "{}",
        cluster.latest_push_log().await
    );
    let routers = cluster.routers().await;
    for (index, router) in routers.iter().enumerate() {
        assert_eq!(cluster.release_on_host(index, router), (200, v2.clone()));
    }
    cluster.network.heal(2);
    let healed = cluster.until_every_node_serves(&v2).await;
    eprintln!("consistent {healed:?} after the partition healed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_cut_off_from_every_node_past_close_leaves_them_closed_until_it_returns() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let project = Project::with_slow_deploy_hook(3);
    assert!(cluster.push(&project).status.success());
    let v1 = tree_of(&project);
    cluster.until_every_node_serves(&v1).await;
    let routers = cluster.routers().await;

    project.new_version("v2");
    let (pusher, earlier) = cluster.push_in_background(&project).await;
    cluster.until_phase_begins(&earlier, "deploy_hook").await;
    for index in 0..3 {
        cluster.network.partition(index);
    }
    let pushed = pusher.join().unwrap();
    let id = cluster.latest_push().await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // I1: every node closed at the close phase; none opened while cut off.
    for (index, router) in routers.iter().enumerate() {
        assert_eq!(cluster.release_on_host(index, router).0, 503, "{router}");
    }
    assert!(
        !pushed.status.success(),
        "{}",
        cluster.latest_push_log().await
    );
    for index in 0..3 {
        cluster.network.heal(index);
    }
    // Every node was lost past close: the environment stays closed, serving nothing, until an
    // operator rolls back (a redeploy says so) or pushes again.
    let operator = |action: &'static str| {
        cluster
            .http
            .post(format!(
                "{}/api/v1/environments/production/{action}",
                cluster.api
            ))
            .bearer_auth(ADMIN)
            .send()
    };
    let healed = Instant::now();
    let redeploy = operator("deploy").await.unwrap();
    assert_eq!(redeploy.status(), 409);
    let said = redeploy.text().await.unwrap();
    assert!(said.contains("lockstep rollback production"), "{said}");
    assert!(operator("rollback").await.unwrap().status().is_success());
    cluster.until_every_node_serves(&v1).await;
    eprintln!("consistent {:?} after the rollback", healed.elapsed());
    assert_eq!(cluster.deploy_hook_runs(&id), 1, "I2: the hook ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_paused_longer_than_the_drain_timeout_is_waited_for_and_nothing_serves_twice() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let project = Project::sample();
    assert!(cluster.push(&project).status.success());
    cluster.until_every_node_serves(&tree_of(&project)).await;

    project.new_version("v2");
    let v2 = tree_of(&project);
    let (pusher, earlier) = cluster.push_in_background(&project).await;
    cluster.until_phase_begins(&earlier, "quiesce").await;
    let paused = cluster.agent_pid(2);
    nix::sys::signal::kill(paused, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // Longer than the drain timeout (10 s): a live host's kernel keeps its connections.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let during = cluster.latest_push().await;
    assert!(during["result"].is_null(), "it waited: {during}");
    nix::sys::signal::kill(paused, nix::sys::signal::Signal::SIGCONT).unwrap();
    let pushed = pusher.join().unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed));
    let healed = cluster.until_every_node_serves(&v2).await;
    eprintln!("consistent {healed:?} after the agent resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_over_slow_lossy_links_completes_and_nothing_serves_twice() {
    let delay = Duration::from_millis(200);
    let Some(cluster) = Cluster::start_with_delay(Some(delay)).await else {
        return;
    };
    let project = Project::sample();
    assert!(cluster.push(&project).status.success());
    cluster.until_every_node_serves(&tree_of(&project)).await;

    for index in 0..3 {
        cluster.network.lose(index, 5);
    }
    project.new_version("v2");
    let v2 = tree_of(&project);
    let started = Instant::now();
    let pushed = cluster.push(&project);
    assert!(
        pushed.status.success(),
        "{}",
        cluster.latest_push_log().await
    );
    let deployed = started.elapsed();
    let deployment = cluster.latest_push().await;
    let id = deployment["id"].as_str().unwrap();
    assert_eq!(cluster.deploy_hook_runs(id), 1, "I2: the hook ran once");
    let routers = cluster.routers().await;
    for (index, router) in routers.iter().enumerate() {
        assert_eq!(cluster.release_on_host(index, router), (200, v2.clone()));
    }
    eprintln!(
        "pushed and deployed in {deployed:?} with {delay:?} each way and 5% loss; phases: {}",
        deployment["phases"]
    );
}
