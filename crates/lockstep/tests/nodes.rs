//! The node registry end to end, through `lockstep up`: a host enrolling with the token
//! `lockstep node add` printed, joining production and catching up to its release; the token
//! spent; a removed node's certificate refused; the refusals that keep environments served; a
//! second edge fed by the controller as the first, refused by the routers once removed.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// A `lockstep agent` started by hand on a host, as an operator would; stopped when dropped.
struct HostAgent {
    child: Child,
    data_dir: tempfile::TempDir,
    port: u16,
}

impl HostAgent {
    fn start(platform: &Platform, join_token: &str) -> HostAgent {
        let data_dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = agent_command(
            Command::new(lockstep_binary()),
            data_dir.path(),
            &format!("127.0.0.1:{port}"),
        )
        .args(["--join", &platform.api])
        .env("LOCKSTEP_JOIN_TOKEN", join_token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        HostAgent {
            child,
            data_dir,
            port,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn identity(&self) -> lockstep_transport::Identity {
        lockstep_transport::Identity::load(&lockstep_agent::identity_dir(self.data_dir.path()))
            .unwrap()
            .expect("the host enrolled")
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// SIGTERM, and waits for the process to end.
fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn node_list(platform: &Platform) -> Vec<serde_json::Value> {
    let output = platform.cli(&["node", "list", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn listed<'a>(nodes: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    nodes
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {nodes:?}"))
}

/// `lockstep node add`'s join token, from the command it prints.
fn join_token(platform: &Platform, name: &str, pool: &str) -> String {
    let output = platform.cli(&["node", "add", name, "--pool", pool]);
    assert!(output.status.success(), "{}", text(&output));
    text(&output)
        .split_whitespace()
        .find_map(|word| word.strip_prefix("LOCKSTEP_JOIN_TOKEN="))
        .expect("the join command is printed")
        .to_owned()
}

async fn production_nodes(platform: &Platform) -> Vec<String> {
    platform.environment_status("production").await["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_enrols_once_with_its_token_joins_production_and_is_refused_once_removed() {
    let platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let tree = tree_of(&project);

    // `up`'s five nodes and its edge enrolled as any host does, each in its pool.
    let nodes = node_list(&platform);
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    for (name, pool) in [
        ("production-1", "production"),
        ("staging-1", "staging"),
        ("development-1", "development"),
        ("edge", "edge"),
    ] {
        let node = listed(&nodes, name);
        assert_eq!(node["pool"], pool);
        assert!(node["agent_url"].as_str().unwrap().starts_with("https://"));
        assert!(node["certificate_expires"].is_string(), "{node}");
    }
    assert_eq!(
        listed(&nodes, "production-1")["environments"],
        serde_json::json!(["production"])
    );

    // Nodes are the operator's: a project admin's token manages none.
    let admin = platform.add_user("lead@example.com", &["--project-admin"]);
    let refused = reqwest::Client::new()
        .get(format!("{}/api/v1/nodes", platform.api))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // A new host joins production with its token, and catches up to what production serves.
    let token = join_token(&platform, "production-4", "production");
    let host = HostAgent::start(&platform, &token);
    eventually(
        Duration::from_secs(60),
        "production-4 to join production",
        || async {
            production_nodes(&platform)
                .await
                .contains(&"production-4".to_owned())
        },
    )
    .await;
    eventually(
        Duration::from_secs(120),
        "production-4 to serve production's release",
        || async {
            let production = platform.environment_status("production").await;
            let router = production["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == "production-4")
                .and_then(|n| n["router"].as_str().map(str::to_owned));
            match router {
                Some(router) => release_of(&router).await == (200, Some(tree.clone())),
                None => false,
            }
        },
    )
    .await;

    // The token is spent: a second host with it is refused, and says why.
    let mut second = HostAgent::start(&platform, &token);
    let status = second.child.wait().unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(second.child.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert!(!status.success());
    assert!(said.contains("unknown, spent or expired"), "{said}");

    // A token whose authority is not the controller's: the host refuses what it is given.
    let token = join_token(&platform, "production-5", "production");
    let forged = format!(
        "lsjoin-{}-{}",
        "0".repeat(64),
        token.rsplit('-').next().unwrap()
    );
    let mut misled = HostAgent::start(&platform, &forged);
    assert!(!misled.child.wait().unwrap().success());
    let mut said = String::new();
    std::io::Read::read_to_string(misled.child.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert!(said.contains("not the one the join token names"), "{said}");
    assert!(
        platform
            .cli(&["node", "remove", "production-5"])
            .status
            .success()
    );

    // Removed: out of production, its agent told to drop production, its certificate refused.
    let image = platform.get("/environments/production").await["serving"]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    let cluster = format!("https://127.0.0.1:{}", platform.layout()["cluster_port"]);
    let pull_frames = |identity: lockstep_transport::Identity| {
        let url = format!("{cluster}/v1/images/{image}/frames");
        async move {
            lockstep_transport::http_client(&identity)
                .unwrap()
                .get(url)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(pull_frames(host.identity()).await, 200);
    let removed = platform.cli(&["node", "remove", "production-4"]);
    assert!(removed.status.success(), "{}", text(&removed));
    assert_eq!(
        production_nodes(&platform).await,
        ["production-1", "production-2", "production-3"]
    );
    assert_eq!(pull_frames(host.identity()).await, 403);
    let held: Vec<String> = client_as(&platform.authority(), lockstep_transport::Peer::Controller)
        .get(format!("{}/v1/instances", host.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(held.is_empty(), "the removed node still holds {held:?}");

    // An environment that serves keeps a node; one with none refuses pushes, saying how.
    for node in ["production-2", "production-3"] {
        assert!(platform.cli(&["node", "remove", node]).status.success());
    }
    assert_refused(
        &platform.cli(&["node", "remove", "production-1"]),
        "last node of production, which serves",
    );
    assert_eq!(
        release_of(&platform.routers("production").await[0]).await,
        (200, Some(tree))
    );
    assert_refused(
        &platform.cli(&["node", "remove", "nowhere"]),
        "no node nowhere",
    );
    assert!(
        platform
            .cli(&["node", "remove", "development-1"])
            .status
            .success()
    );
    let pushed = platform.push(&project, "HEAD:feature");
    assert!(!pushed.status.success());
    assert!(
        text(&pushed).contains("feature has no node yet")
            && text(&pushed).contains("lockstep node add"),
        "{}",
        text(&pushed)
    );
}

/// A `lockstep edge` started by hand on a host; stopped when dropped.
struct HostEdge {
    child: Child,
    public: u16,
    _data_dir: tempfile::TempDir,
}

impl Drop for HostEdge {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_edge_serves_and_closes_with_the_first_and_once_removed_every_router_refuses_it() {
    let platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let first = tree_of(&project);

    let token = join_token(&platform, "edge-2", "edge");
    let data_dir = tempfile::tempdir().unwrap();
    let (public, admin) = (free_port(), free_port());
    let child = Command::new(lockstep_binary())
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["edge", "--listen", &format!("127.0.0.1:{public}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--controller", &platform.api])
        .env("LOCKSTEP_JOIN_TOKEN", &token)
        .env("LOCKSTEP_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let edge = HostEdge {
        child,
        public,
        _data_dir: data_dir,
    };
    let release_at = |port: u16| async move {
        let answer = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", "localhost")
            .send()
            .await;
        match answer {
            Ok(response) => response
                .headers()
                .get("x-release")
                .map(|v| v.to_str().unwrap().to_owned()),
            Err(_) => None,
        }
    };
    eventually(
        Duration::from_secs(60),
        "the second edge to serve production",
        || async { release_at(edge.public).await == Some(first.clone()) },
    )
    .await;
    assert_eq!(listed(&node_list(&platform), "edge-2")["pool"], "edge");

    // A deployment goes through both edges: each serves the new release once it opened.
    std::fs::write(project.path().join("second.txt"), "2").unwrap();
    project.commit("second");
    assert!(platform.push(&project, "HEAD:production").status.success());
    let second = tree_of(&project);
    for port in [platform.edge, edge.public] {
        eventually(
            Duration::from_secs(30),
            "each edge to serve the new release",
            || async { release_at(port).await == Some(second.clone()) },
        )
        .await;
    }

    // Removed, the edge is refused by every router although its certificate has not expired:
    // on the connection it holds open, and in the handshake of a new one.
    let identity = lockstep_transport::Identity::load(&edge._data_dir.path().join("tls"))
        .unwrap()
        .expect("the edge enrolled");
    let router = platform.routers("production").await[0].clone();
    let held = lockstep_transport::http_client(&identity).unwrap();
    let status_for = |client: reqwest::Client| {
        let url = format!("{router}/");
        async move { client.get(&url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(status_for(held.clone()).await.unwrap(), 200);
    assert!(platform.cli(&["node", "remove", "edge-2"]).status.success());
    eventually(
        Duration::from_secs(30),
        "the routers to refuse the removed edge",
        || async {
            status_for(held.clone())
                .await
                .is_ok_and(|status| status == 403)
        },
    )
    .await;
    let fresh = lockstep_transport::http_client(&identity).unwrap();
    assert!(status_for(fresh).await.is_err(), "refused in the handshake");
    assert_eq!(status_for(router_client()).await.unwrap(), 200);
    assert_eq!(release_at(platform.edge).await, Some(second));
}
