//! A production cluster on hosts of its own: each node's agent in a network namespace with its
//! own address (`netns`), the controller in the test's namespace, images pulled and routers
//! reached over the bridge between them. For the multi-host tests and the benchmark across
//! namespaces. Root only.

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_controller::{Controller, ControllerOptions};
use lockstep_proto::nodes::Pool;

use super::netns::Network;
use super::{Project, agent_command, eventually, lockstep_binary};

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
pub struct Cluster {
    _agents: Vec<HostAgent>,
    pub api: String,
    pub git: String,
    pub http: reqwest::Client,
    data: tempfile::TempDir,
    pub network: Network,
}

impl Cluster {
    /// A production cluster of `nodes` nodes, each link between the controller and a node
    /// (both ways: the controller's requests, the agents' image pulls) `delay` longer if asked;
    /// None (said on stderr) when this process may not make namespaces.
    pub async fn start(nodes: usize, delay: Option<Duration>) -> Option<Cluster> {
        let network = Network::create(nodes)?;
        let data = tempfile::tempdir().unwrap();
        let listen = || async {
            tokio::net::TcpListener::bind((network.gateway(), 0))
                .await
                .unwrap()
        };
        let (api_listener, cluster_listener) = (listen().await, listen().await);
        let mut api_address = api_listener.local_addr().unwrap();
        let mut cluster_address = cluster_listener.local_addr().unwrap();
        let mut agent_addresses: Vec<std::net::SocketAddr> = network
            .hosts
            .iter()
            .map(|host| (host.address, AGENT_PORT).into())
            .collect();
        if let Some(delay) = delay {
            api_address = network.delay_from_gateway(api_address, delay).await;
            cluster_address = network.delay_from_gateway(cluster_address, delay).await;
            for (index, address) in agent_addresses.iter_mut().enumerate() {
                *address = network.delay_to(index, AGENT_PORT, delay);
            }
        }
        let api = format!("http://{api_address}");
        super::seed_test_authority(&data.path().join("controller"));
        // The production pool's shared folder, as an operator's NFS mount would be: the same
        // path on every host, since the namespaces share one filesystem.
        let shared_storage = data.path().join("shared-production");
        std::fs::create_dir(&shared_storage).unwrap();
        let controller = Controller::open(ControllerOptions {
            data_dir: data.path().join("controller"),
            project: "shop".into(),
            domain: "localhost".into(),
            admin_token: ADMIN.into(),
            public_url: api.clone(),
            cluster_url: format!("https://{cluster_address}"),
            lockstep_binary: lockstep_binary(),
            operator: Default::default(),
            shared_storage: [(Pool::Production, shared_storage)].into(),
        })
        .unwrap();
        tokio::spawn(Arc::clone(&controller).serve(
            api_listener,
            cluster_listener,
            std::future::ready(()),
            std::future::pending(),
        ));
        // Each host enrols as an operator's would: a join token from `node add`, given to
        // `lockstep agent --join` on the host.
        let mut agents = Vec::new();
        for (index, host) in network.hosts.iter().enumerate() {
            let token = controller
                .add_node(&format!("production-{}", index + 1), Pool::Production)
                .unwrap()
                .join_token;
            let child = agent_command(
                network.command(index, lockstep_binary().to_str().unwrap()),
                &data.path().join(format!("agent-{index}")),
                &format!("{}:{AGENT_PORT}", host.address),
            )
            .args([
                "--join",
                &api,
                "--advertise",
                &agent_addresses[index].to_string(),
            ])
            .env("LOCKSTEP_JOIN_TOKEN", token)
            .spawn()
            .unwrap();
            agents.push(HostAgent(child));
        }
        let http = reqwest::Client::new();
        let as_controller = controller.http_client();
        for address in &agent_addresses {
            let url = format!("https://{address}/v1/instances");
            eventually(
                Duration::from_secs(30),
                "the agent to enrol and answer",
                || async {
                    as_controller
                        .get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                },
            )
            .await;
        }
        let git = format!(
            "{}/git/shop.git",
            api.replacen("http://", &format!("http://u:{ADMIN}@"), 1)
        );
        let cluster = Cluster {
            _agents: agents,
            api,
            git,
            http,
            data,
            network,
        };
        eventually(
            Duration::from_secs(30),
            "production to have its nodes",
            || async {
                cluster.get("/environments/production").await["nodes"]
                    .as_array()
                    .is_some_and(|placed| placed.len() == nodes)
            },
        )
        .await;
        Some(cluster)
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
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

    pub fn push(&self, project: &Project) -> std::process::Output {
        push(project.path(), &self.git)
    }

    /// Each production node's router, in the order of their hosts (nodes are placed in the
    /// order they enrolled); none while production serves nothing.
    pub async fn routers(&self) -> Vec<String> {
        let status = self.get("/status").await;
        let production = status["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "production")
            .unwrap()
            .clone();
        let mut routers: Vec<String> = production["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["router"].as_str().map(str::to_owned))
            .collect();
        let host_index = |router: &String| {
            self.network
                .hosts
                .iter()
                .position(|host| router.contains(&format!("//{}:", host.address)))
        };
        routers.sort_by_key(host_index);
        routers
    }

    /// `GET /` on node `index`'s router from its own host (reachable during a partition):
    /// the status and the release that answered.
    pub fn release_on_host(&self, index: usize, router: &str) -> (u16, String) {
        let output = self
            .curl(index)
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

    /// `curl` on host `index`, as an edge: the only caller a router serves.
    pub fn curl(&self, index: usize) -> std::process::Command {
        let mut curl = self.network.command(index, "curl");
        curl.args([
            "--cert", "cert.pem", "--key", "key.pem", "--cacert", "ca.pem",
        ])
        .current_dir(super::router_identity_files());
        curl
    }

    /// Waits until every node serves `release`, asked from each node's own host; how long it
    /// took.
    pub async fn until_every_node_serves(&self, release: &str) -> Duration {
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

    /// The production pool's shared folder (`--shared-storage production=`).
    pub fn shared_storage(&self) -> std::path::PathBuf {
        self.data.path().join("shared-production")
    }

    /// The controller's own storage folder, which pools without a shared folder use.
    pub fn controller_storage(&self) -> std::path::PathBuf {
        self.data.path().join("controller/storage")
    }

    /// What the agent on host `index` keeps of production's services (`services.json`).
    pub fn kept_services(&self, index: usize) -> serde_json::Value {
        let path = self.data.path().join(format!(
            "agent-{index}/instances/production/services/services.json"
        ));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    pub fn deploy_hook_runs(&self, deployment: &str) -> usize {
        self.hook_records()
            .iter()
            .filter(|r| r["hook"] == "deploy" && r["deployment"] == deployment)
            .count()
    }

    /// `POST /api/v1/environments/production/{action}` as the admin: `deploy`, `rollback`.
    pub async fn production(&self, action: &str) -> reqwest::Response {
        self.http
            .post(format!(
                "{}/api/v1/environments/production/{action}",
                self.api
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
    }

    /// How long the deploy hook of `deployment` ran, in milliseconds, as it recorded.
    pub fn deploy_hook_millis(&self, deployment: &str) -> f64 {
        self.hook_records()
            .iter()
            .find(|r| r["hook"] == "deploy" && r["deployment"] == deployment)
            .map(|r| (r["t_end"].as_f64().unwrap() - r["t_start"].as_f64().unwrap()) * 1000.0)
            .expect("the deploy hook's record")
    }

    fn hook_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.shared_storage().join("production/storage/hooks.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The newest push.
    pub async fn latest_push(&self) -> serde_json::Value {
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

pub fn push(project: &Path, remote: &str) -> std::process::Output {
    std::process::Command::new("git")
        .arg("-C")
        .arg(project)
        .args(["push", "--porcelain", remote, "HEAD:production"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap()
}

impl Cluster {
    /// Waits until a push newer than `earlier` (an activity id) has begun `phase`.
    pub async fn until_phase_begins(&self, earlier: &str, phase: &str) {
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
    pub async fn push_in_background(
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
    pub async fn latest_push_log(&self) -> String {
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

    pub fn agent_pid(&self, index: usize) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self._agents[index].0.id() as i32)
    }
}
