//! Test support: real origin processes (tests/origin.py) and an edge on ephemeral ports.

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use lockstep_edge::{
    Edge, EdgeOptions, EnvironmentRoute, EnvironmentView, GateCommand, GateState, NodeState,
};
use lockstep_proto::Generation;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The certificate authority of these tests' edges and of the controller calling them.
pub fn authority() -> &'static lockstep_transport::Authority {
    static AUTHORITY: std::sync::OnceLock<(tempfile::TempDir, lockstep_transport::Authority)> =
        std::sync::OnceLock::new();
    &AUTHORITY
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let authority =
                lockstep_transport::Authority::load_or_create(dir.path(), "edge tests").unwrap();
            (dir, authority)
        })
        .1
}

/// An edge's identity from [`authority`], with the folder it is kept in once renewed.
pub fn edge_identity() -> (
    tempfile::TempDir,
    Arc<lockstep_transport::RenewableIdentity>,
) {
    let dir = tempfile::tempdir().unwrap();
    let identity = authority()
        .identity_for(
            &lockstep_transport::Peer::Edge("test".into()),
            &["127.0.0.1".into()],
        )
        .unwrap();
    let identity =
        lockstep_transport::RenewableIdentity::new(identity, dir.path().to_owned()).unwrap();
    (dir, Arc::new(identity))
}

/// A client with a certificate of [`authority`] for `peer`.
pub fn client_as(peer: lockstep_transport::Peer) -> reqwest::Client {
    let identity = authority()
        .identity_for(&peer, &["127.0.0.1".into()])
        .unwrap();
    lockstep_transport::http_client(&identity).unwrap()
}

/// A node router stand-in, in its own process.
pub struct Origin {
    _child: Child,
    _stdin: ChildStdin,
    pub port: u16,
    admin: String,
    http: reqwest::Client,
}

impl Origin {
    pub async fn start() -> Origin {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/origin.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the test origin");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the origin starts in time")
            .expect("the origin prints")
            .expect("a READY line");
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("READY"), "{line}");
        let port = words.next().unwrap().parse().unwrap();
        let admin_port: u16 = words.next().unwrap().parse().unwrap();
        Origin {
            _child: child,
            _stdin: stdin,
            port,
            admin: format!("http://127.0.0.1:{admin_port}"),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes the mode, gate or generation (see origin.py).
    pub async fn set(&self, change: Value) {
        let response = self
            .http
            .post(format!("{}/mode", self.admin))
            .json(&change)
            .send()
            .await
            .expect("origin admin answers");
        assert!(response.status().is_success());
    }

    pub async fn mode(&self, mode: &str) {
        self.set(json!({ "mode": mode })).await;
    }

    pub async fn gate(&self, gate: &str) {
        self.set(json!({ "gate": gate })).await;
    }

    /// App requests seen for a path.
    pub async fn count(&self, path: &str) -> u64 {
        let counts: Value = self.get_json("/counts").await;
        counts.get(path).and_then(Value::as_u64).unwrap_or(0)
    }

    /// App requests seen for every path.
    pub async fn total(&self) -> u64 {
        let counts: Value = self.get_json("/counts").await;
        counts
            .as_object()
            .unwrap()
            .values()
            .filter_map(Value::as_u64)
            .sum()
    }

    /// Every app request seen, in arrival order.
    pub async fn log(&self) -> Vec<Value> {
        self.get_json::<Value>("/log")
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    pub async fn reset(&self) {
        self.post("/reset").await;
    }

    /// Lets a response waiting on `wait=NAME` finish.
    pub async fn release(&self, name: &str) {
        self.post(&format!("/release/{name}")).await;
    }

    async fn post(&self, path: &str) {
        self.http
            .post(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("origin admin answers");
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.http
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("origin admin answers")
            .json()
            .await
            .expect("origin admin JSON")
    }
}

/// An edge serving on ephemeral ports, shut down on drop.
pub struct TestEdge {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// For public requests.
    pub http: reqwest::Client,
    /// For the admin API, as the controller.
    pub admin_http: reqwest::Client,
    _identity_dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

pub fn options() -> EdgeOptions {
    EdgeOptions {
        domain: "localhost".into(),
        cache_bytes: 8 << 20,
        origin_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        health_interval: Duration::from_millis(100),
        saved_routes: None,
    }
}

/// A route to these origins for `localhost`, with default settings.
pub fn route(origins: &[&Origin]) -> EnvironmentRoute {
    EnvironmentRoute::new(
        vec!["localhost".into()],
        origins.iter().map(|o| o.url()).collect(),
    )
}

impl TestEdge {
    pub async fn start() -> TestEdge {
        TestEdge::start_with(options()).await
    }

    pub async fn start_with(options: EdgeOptions) -> TestEdge {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        let (identity_dir, identity) = edge_identity();
        let edge: Arc<Edge> = Edge::with_identity(options, identity).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(edge.serve(public, Some(admin), async move {
            let _ = stopped.await;
        }));
        TestEdge {
            public: public_addr,
            admin: admin_addr,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(8)
                .build()
                .unwrap(),
            admin_http: client_as(lockstep_transport::Peer::Controller),
            _identity_dir: identity_dir,
            _stop: stop,
        }
    }

    /// Starts an edge with one environment, `main` at `localhost`, over these origins, and
    /// waits until the health checks found them open.
    pub async fn with(origins: &[&Origin], edit: impl FnOnce(&mut EnvironmentRoute)) -> TestEdge {
        let edge = TestEdge::start().await;
        let mut route = route(origins);
        edit(&mut route);
        edge.put("main", &route).await;
        edge.wait_nodes("main", NodeState::Open).await;
        edge
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.admin)
    }

    pub async fn put(&self, env: &str, route: &EnvironmentRoute) -> EnvironmentView {
        let response = self
            .admin_http
            .put(self.admin_url(&format!("/v1/environments/{env}")))
            .json(route)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
        response.json().await.unwrap()
    }

    pub async fn gate(&self, env: &str, state: GateState, generation: Option<Generation>) {
        let response = self
            .admin_http
            .post(self.admin_url(&format!("/v1/environments/{env}/gate")))
            .json(&GateCommand { state, generation })
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    pub async fn view(&self, env: &str) -> EnvironmentView {
        self.admin_http
            .get(self.admin_url(&format!("/v1/environments/{env}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until every node of `env` is in `state`.
    pub async fn wait_nodes(&self, env: &str, state: NodeState) {
        eventually(&format!("every node of {env} {state:?}"), || async {
            self.view(env).await.nodes.iter().all(|n| n.state == state)
        })
        .await;
    }

    /// Waits until `count` requests are held for `env`.
    pub async fn wait_held(&self, env: &str, count: u64) {
        eventually(&format!("{count} requests held"), || async {
            self.view(env).await.held >= count
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        self.admin_http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A public request to `path` at `host`.
    pub fn request(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{}{path}", self.public))
            .header(reqwest::header::HOST, host)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, "localhost", path)
    }

    /// GETs `path` at `localhost`: status, cache result, body.
    pub async fn fetch(&self, path: &str) -> Fetched {
        Fetched::from(self.get(path).send().await.unwrap()).await
    }
}

/// The parts of an answer tests look at.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub cache: String,
    pub age: Option<u64>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Fetched {
    pub async fn from(response: reqwest::Response) -> Fetched {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let cache = headers
            .get("x-lockstep-cache")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let age = headers
            .get("age")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        let body = response.text().await.unwrap();
        Fetched {
            status,
            cache,
            age,
            headers,
            body,
        }
    }
}

/// Polls `check` until it holds, for at most 10 s (for state no event announces).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of a metric's samples whose line contains every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split(['{', ' '])
                .next()
                .is_some_and(|metric| metric == name)
        })
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Lets time pass for freshness and grace timers (not synchronisation: the cache's clock).
pub async fn let_time_pass(duration: Duration) {
    tokio::time::sleep(duration).await;
}
