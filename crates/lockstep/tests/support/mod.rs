//! What the end-to-end tests share: the sample app as a git project, images built from it, and a
//! real `lockstep agent` process with a client for its API.

#![allow(dead_code)] // Each test file uses its own part of this module.

pub mod hosts;
pub mod netns;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_proto::agent::{
    AppUser, EnvironmentType, GateSettings, HookKind, HookOutcome, HookRequest, InstanceConfig,
    InstanceStatus, RuntimeInputs, Step, SwapRequest,
};
use lockstep_proto::{Generation, ImageId};

pub fn sample_app() -> PathBuf {
    example_dir("app")
}

/// `examples/NAME` of the repository.
pub fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// A git repository holding a copy of the sample app, as a user's project would.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn sample() -> Project {
        Self::example("app")
    }

    /// A copy of `examples/NAME`, committed.
    pub fn example(name: &str) -> Project {
        let project = Project {
            dir: tempfile::tempdir().unwrap(),
        };
        let status = Command::new("cp")
            .arg("-r")
            .arg(example_dir(name).join("."))
            .arg(project.path())
            .status()
            .unwrap();
        assert!(status.success());
        project.git(&["init", "-q", "-b", "main"]);
        project.commit("sample app");
        project
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            message,
        ]);
    }

    /// The sample app with a deploy hook that sleeps `seconds` (a long migration), committed.
    pub fn with_slow_deploy_hook(seconds: u32) -> Project {
        let project = Project::sample();
        let config = project.path().join(".platform.app.yaml");
        let original = std::fs::read_to_string(&config).unwrap();
        let slow = format!("    DEPLOY_HOOK_SLEEP: \"{seconds}\"\n    GREETING:");
        std::fs::write(&config, original.replace("    GREETING:", &slow)).unwrap();
        project.commit("a slow deploy hook");
        project
    }

    /// Writes `count` files of app dependencies under `vendor/package-N/module_I.py`, twenty
    /// to a package, each different and about 6 KB: an image of many frames.
    pub fn write_dependencies(&self, count: usize) {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for index in 0..count {
            let dir = self.path().join(format!("vendor/package-{}", index / 20));
            std::fs::create_dir_all(&dir).unwrap();
            let mut text = String::new();
            for line in 0..300 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(&format!("value_{line} = {}\n", state % 1_000_000));
            }
            std::fs::write(dir.join(format!("module_{index}.py")), text).unwrap();
        }
    }

    /// Commits a change that gives a new tree, hence a new release.
    pub fn new_version(&self, label: &str) {
        std::fs::write(self.path().join("VERSION"), label).unwrap();
        self.commit(label);
    }

    pub fn git(&self, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }
}

pub struct BuiltImage {
    pub id: ImageId,
    pub path: PathBuf,
    pub tree_id: String,
}

impl BuiltImage {
    /// The image store it is in (`STORE/images/ID.tar.zst`).
    pub fn store(&self) -> PathBuf {
        self.path.ancestors().nth(2).unwrap().to_owned()
    }
}

static TEST_AUTHORITY: std::sync::OnceLock<(tempfile::TempDir, lockstep_transport::Authority)> =
    std::sync::OnceLock::new();

/// The certificate authority of the tests' agents and platforms, made once per test process.
pub fn test_authority() -> &'static lockstep_transport::Authority {
    &test_authority_kept().1
}

fn test_authority_kept() -> &'static (tempfile::TempDir, lockstep_transport::Authority) {
    TEST_AUTHORITY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let authority = lockstep_transport::Authority::load_or_create(dir.path(), "test").unwrap();
        (dir, authority)
    })
}

/// Makes [`test_authority`] the project's authority of the controller that will keep its state
/// in `controller_dir`, so that [`router_client`] reaches its nodes' routers.
pub fn seed_test_authority(controller_dir: &Path) {
    let to = controller_dir.join("authority");
    std::fs::create_dir_all(&to).unwrap();
    for file in ["ca.pem", "ca.key"] {
        std::fs::copy(test_authority_kept().0.path().join(file), to.join(file)).unwrap();
    }
}

/// A client of node routers, as an edge of [`test_authority`].
pub fn router_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            client_as(
                test_authority(),
                lockstep_transport::Peer::Edge("tests".into()),
            )
        })
        .clone()
}

/// The router client's certificate, key and authority as files (`cert.pem`, `key.pem`,
/// `ca.pem`), for `curl` in a namespace.
pub fn router_identity_files() -> &'static Path {
    static FILES: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    FILES
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            test_authority()
                .identity_for(&lockstep_transport::Peer::Edge("tests".into()), &[])
                .unwrap()
                .save(dir.path())
                .unwrap();
            dir
        })
        .path()
}

/// A client with a certificate of `authority` for `peer`: what the agents and the cluster port
/// take from the controller, or from a node.
pub fn client_as(
    authority: &lockstep_transport::Authority,
    peer: lockstep_transport::Peer,
) -> reqwest::Client {
    let identity = authority
        .identity_for(&peer, &["127.0.0.1".into()])
        .unwrap();
    lockstep_transport::http_client(&identity).unwrap()
}

/// Serves the image store at `store` on loopback as the controller's cluster port serves its
/// own, with a certificate of [`test_authority`]; its URL.
pub async fn serve_images(store: &Path) -> String {
    let store = lockstep_image::ImageStore::open(store).unwrap();
    let routes = lockstep_controller::image_routes(store);
    let identity = test_authority()
        .identity_for(&lockstep_transport::Peer::Controller, &["127.0.0.1".into()])
        .unwrap();
    let server = lockstep_transport::ServerIdentity::new(&identity).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(lockstep_transport::serve(
        listener,
        server,
        routes,
        std::future::pending(),
    ));
    url
}

/// Builds the project's HEAD with the library builder into `store`.
pub fn build_image(project: &Project, store: &Path) -> BuiltImage {
    let builder = lockstep_image::Builder::new(store).unwrap();
    let variables = Default::default();
    let operator = lockstep_supervisor::OperatorEnv::default();
    let request = lockstep_image::BuildRequest {
        repo: project.path(),
        git_ref: "HEAD",
        project: "shop",
        project_entropy: "build-entropy-of-shop",
        cache: "main",
        variables: &variables,
        timeout: Duration::from_secs(120),
        git_env: &[],
        user: lockstep_supervisor::RunAs::unprivileged(),
        strict_runtimes: false,
        operator: &operator,
        cancel: Default::default(),
    };
    let outcome = builder.build(&request, &mut |_| {}).unwrap();
    let manifest = outcome.images.into_iter().next().unwrap();
    BuiltImage {
        path: builder.store().image_path(&manifest.id),
        id: manifest.id,
        tree_id: manifest.info.tree_id,
    }
}

/// The phase `name` of an activity as the API gives it.
pub fn phase_of(activity: &serde_json::Value, name: &str) -> serde_json::Value {
    activity["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} phase in {activity}"))
        .clone()
}

/// Milliseconds from one RFC 3339 time to another.
pub fn millis_between(start: &str, end: &str) -> f64 {
    let start = chrono::DateTime::parse_from_rfc3339(start).expect("RFC 3339");
    let end = chrono::DateTime::parse_from_rfc3339(end).expect("RFC 3339");
    (end - start).num_microseconds().expect("short") as f64 / 1000.0
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it holds or `timeout` passes: for state that no event announces.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real `lockstep agent` process, enrolled with [`test_authority`] as node `test-node`.
pub struct AgentProcess {
    child: Child,
    pub data_dir: PathBuf,
    pub port: u16,
}

impl AgentProcess {
    pub async fn start(data_dir: &Path) -> AgentProcess {
        Self::start_on(data_dir, free_port()).await
    }

    pub async fn start_on(data_dir: &Path, port: u16) -> AgentProcess {
        let identity_dir = lockstep_agent::identity_dir(data_dir);
        if lockstep_transport::Identity::load(&identity_dir)
            .unwrap()
            .is_none()
        {
            test_authority()
                .identity_for(
                    &lockstep_transport::Peer::Node("test-node".into()),
                    &["127.0.0.1".into()],
                )
                .unwrap()
                .save(&identity_dir)
                .unwrap();
        }
        let child = agent_command(
            Command::new(lockstep_binary()),
            data_dir,
            &format!("127.0.0.1:{port}"),
        )
        .spawn()
        .unwrap();
        let agent = AgentProcess {
            child,
            data_dir: data_dir.to_owned(),
            port,
        };
        let client = agent.client();
        eventually(Duration::from_secs(30), "the agent to answer", || async {
            client
                .http
                .get(client.url("/v1/instances"))
                .send()
                .await
                .is_ok()
        })
        .await;
        agent
    }

    /// A client calling as the controller.
    pub fn client(&self) -> AgentClient {
        AgentClient {
            http: client_as(test_authority(), lockstep_transport::Peer::Controller),
            base: format!("https://127.0.0.1:{}", self.port),
        }
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SIGTERM lets the agent stop the app's processes; then make sure it is gone.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

pub struct AgentClient {
    pub http: reqwest::Client,
    pub base: String,
}

/// An answer of the agent: status and body, for tests that check refusals too.
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Answer {
    pub fn ok(self) -> serde_json::Value {
        assert!(
            (200..300).contains(&self.status),
            "{}: {}",
            self.status,
            self.body
        );
        self.body
    }
}

impl AgentClient {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Answer { status, body }
    }

    pub async fn configure(&self, config: &InstanceConfig) -> InstanceStatus {
        let path = format!("/v1/instances/{}", config.environment);
        let body = self
            .send(self.http.put(self.url(&path)).json(config))
            .await
            .ok();
        serde_json::from_value(body).unwrap()
    }

    pub async fn status(&self, env: &str) -> InstanceStatus {
        let body = self
            .send(self.http.get(self.url(&format!("/v1/instances/{env}"))))
            .await
            .ok();
        serde_json::from_value(body).unwrap()
    }

    /// Stages image `image`, which the agent pulls from the image store at `store`.
    pub async fn stage_from(&self, env: &str, image: &ImageId, store: &Path) -> Answer {
        let path = format!("/v1/instances/{env}/images/{image}");
        let request = lockstep_proto::agent::StageRequest {
            source: serve_images(store).await,
        };
        self.send(self.http.put(self.url(&path)).json(&request))
            .await
    }

    pub async fn stage(&self, env: &str, image: &BuiltImage) -> Answer {
        self.stage_from(env, &image.id, &image.store()).await
    }

    pub async fn step(
        &self,
        env: &str,
        command: &str,
        deployment: &str,
        generation: Generation,
    ) -> Answer {
        let step = Step {
            deployment: deployment.into(),
            generation,
        };
        let path = format!("/v1/instances/{env}/{command}");
        self.send(self.http.post(self.url(&path)).json(&step)).await
    }

    pub async fn swap(
        &self,
        env: &str,
        deployment: &str,
        generation: Generation,
        image: &ImageId,
        runtime: RuntimeInputs,
    ) -> Answer {
        let request = SwapRequest {
            step: Step {
                deployment: deployment.into(),
                generation,
            },
            image: image.clone(),
            runtime,
        };
        let path = format!("/v1/instances/{env}/swap");
        self.send(self.http.post(self.url(&path)).json(&request))
            .await
    }

    pub async fn hook(
        &self,
        env: &str,
        deployment: &str,
        generation: Generation,
        hook: HookKind,
    ) -> HookOutcome {
        let request = HookRequest {
            step: Step {
                deployment: deployment.into(),
                generation,
            },
            hook,
        };
        let path = format!("/v1/instances/{env}/hooks");
        let body = self
            .send(self.http.post(self.url(&path)).json(&request))
            .await
            .ok();
        serde_json::from_value(body).unwrap()
    }

    /// The whole procedure of SPEC section 3 on this one node, from stage to background work.
    pub async fn deploy(
        &self,
        env: &str,
        image: &BuiltImage,
        deployment: &str,
        generation: Generation,
        runtime: RuntimeInputs,
    ) {
        self.stage(env, image).await.ok();
        self.step(env, "quiesce", deployment, generation).await.ok();
        self.step(env, "close", deployment, generation).await.ok();
        self.swap(env, deployment, generation, &image.id, runtime)
            .await
            .ok();
        self.hook(env, deployment, generation, HookKind::Deploy)
            .await;
        self.step(env, "open", deployment, generation).await.ok();
        self.step(env, "background", deployment, generation)
            .await
            .ok();
    }
}

pub fn instance_config(env: &str, storage: &Path) -> InstanceConfig {
    InstanceConfig {
        project: "shop".into(),
        environment: env.into(),
        branch: env.into(),
        environment_type: EnvironmentType::Production,
        node: "production-1".into(),
        cluster: None,
        router_port: 0,
        storage_dir: storage.to_owned(),
        shared_storage: None,
        cron_node: true,
        gate: GateSettings {
            start_timeout_ms: 20_000,
            ..GateSettings::default()
        },
        user: Some(APP_USER),
        strict_runtimes: false,
        project_entropy: "entropy-of-shop".into(),
        app: None,
    }
}

/// The user the tests' instances run as, when the agent runs as root.
pub const APP_USER: AppUser = AppUser {
    uid: 70999,
    gid: 70999,
};

/// `GET path` on a node router: status, the `X-Release` header and the body.
pub async fn get_router(
    port: u16,
    path: &str,
) -> (u16, Option<String>, reqwest::header::HeaderMap) {
    let response = router_client()
        .get(format!("https://127.0.0.1:{port}{path}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let release = headers
        .get("x-release")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, release, headers)
}

/// A real `lockstep up`: controller and five agents, on free ports.
pub struct Platform {
    child: Child,
    /// The `lockstep` binary that runs it, and that its CLI calls use.
    binary: PathBuf,
    /// The temporary folder everything of this platform is in.
    _root: tempfile::TempDir,
    /// Where `up` keeps its state: in `_root`, or the default under a `HOME` in it.
    pub data_dir: PathBuf,
    /// `Some` when `up` runs with no `--data-dir`, as the README says, with this `HOME`.
    home: Option<PathBuf>,
    pub api: String,
    pub git: String,
    pub token: String,
    pub listen: u16,
    /// The caching edge's port: production is `localhost`, others `ENV.localhost`.
    pub edge: u16,
}

impl Platform {
    /// `up` with `--data-dir`, a private temporary folder.
    pub async fn start() -> Platform {
        Self::start_where(lockstep_binary(), false).await
    }

    /// `up` of another `lockstep` binary (another release), with `--data-dir`.
    pub async fn start_with(binary: PathBuf) -> Platform {
        Self::start_where(binary, false).await
    }

    /// `up` with no `--data-dir`, as the README runs it: its state goes under `HOME`, here a
    /// temporary folder only its owner may enter, as root's home is.
    pub async fn start_in_home() -> Platform {
        Self::start_where(lockstep_binary(), true).await
    }

    async fn start_where(binary: PathBuf, in_home: bool) -> Platform {
        // Ports are picked free and then bound by `up` a moment later; a test running beside
        // this one can take one in between, and then `up` exits. Another set of ports settles it.
        for _ in 0..3 {
            let root = tempfile::tempdir().unwrap();
            let (home, data_dir) = if in_home {
                let home = root.path().join("home");
                std::fs::create_dir(&home).unwrap();
                std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
                let data_dir = home.join(".local/share/lockstep");
                (Some(home), data_dir)
            } else {
                (None, root.path().to_owned())
            };
            let listen = free_port();
            let edge = free_port();
            seed_test_authority(&data_dir.join("controller"));
            let mut platform = Platform {
                child: spawn_up(&binary, &data_dir, home.as_deref(), listen, edge, None),
                binary: binary.clone(),
                _root: root,
                data_dir,
                home,
                api: String::new(),
                git: String::new(),
                token: String::new(),
                listen,
                edge,
            };
            if platform.wait_until_up().await {
                return platform;
            }
        }
        panic!("lockstep up did not start three times in a row");
    }

    /// Stops `up` with SIGINT, as Ctrl-C would, and waits for it to finish.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let _ = self.child.wait();
    }

    /// SIGKILL on the controller alone: its agents live on, as they would on other hosts.
    pub fn kill_controller(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn restart(&mut self) {
        self.restart_with_failpoint(None).await;
    }

    /// Restarts `up`, optionally armed to exit at a phase boundary (`after:close`, ...).
    pub async fn restart_with_failpoint(&mut self, failpoint: Option<&str>) {
        self.stop();
        self.child = spawn_up(
            &self.binary,
            &self.data_dir,
            self.home.as_deref(),
            self.listen,
            self.edge,
            failpoint,
        );
        assert!(self.wait_until_up().await, "lockstep up did not come back");
    }

    /// Waits for `up` to exit by itself (a failpoint); returns its exit status.
    pub async fn wait_for_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "lockstep up did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until an activity has ended; returns it.
    pub async fn wait_for_activity(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let activity = self.get(&format!("/activities/{id}")).await;
            if activity["state"] == "complete" || activity["state"] == "cancelled" {
                return activity;
            }
            assert!(
                Instant::now() < deadline,
                "activity {id} did not end: {activity}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pid of a node's agent, from the file it writes.
    pub fn agent_pid(&self, node: &str) -> i32 {
        let path = self.data_dir.join("agents").join(node).join("agent.pid");
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits for `up` to answer; false when it exited first (its log is printed).
    async fn wait_until_up(&mut self) -> bool {
        let endpoints_path = self.data_dir.join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints_path);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !endpoints_path.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log_dir = self.home.as_deref().unwrap_or(&self.data_dir);
                let log = std::fs::read_to_string(log_dir.join("up.log")).unwrap_or_default();
                eprintln!("lockstep up exited ({status}) before it was up:\n{log}");
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for lockstep up to write endpoints.json"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let endpoints: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&endpoints_path).unwrap()).unwrap();
        self.api = endpoints["api"].as_str().unwrap().to_owned();
        self.git = endpoints["git"].as_str().unwrap().to_owned();
        self.token = endpoints["token"].as_str().unwrap().to_owned();
        let (api, token) = (self.api.clone(), self.token.clone());
        eventually(Duration::from_secs(30), "the API to answer", || {
            let (api, token) = (api.clone(), token.clone());
            async move {
                reqwest::Client::new()
                    .get(format!("{api}/api/v1/status"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        true
    }

    /// Runs the `lockstep` command line against this platform.
    /// The project's repository on the controller, with the administrator's credentials in
    /// it, for git commands other than a push.
    pub fn git_remote(&self) -> String {
        self.git
            .replacen("http://", &format!("http://u:{}@", self.token), 1)
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.binary)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env_remove("LOCKSTEP_API")
            .env_remove("LOCKSTEP_TOKEN")
            .output()
            .unwrap()
    }

    /// `git push` of `refspec` with the real git client, authenticated by `lockstep credential`.
    pub fn push(&self, project: &Project, refspec: &str) -> std::process::Output {
        self.push_command(project, refspec).output().unwrap()
    }

    /// The `git push` of [`Platform::push`], to run elsewhere.
    pub fn push_command(&self, project: &Project, refspec: &str) -> Command {
        let helper = format!(
            "!{} --data-dir {} credential",
            self.binary.display(),
            self.data_dir.display()
        );
        let mut command = Command::new("git");
        command
            .arg("-C")
            .arg(project.path())
            .args([
                "-c",
                &format!("credential.helper={helper}"),
                "push",
                "--porcelain",
                &self.git,
                refspec,
            ])
            .env("GIT_TERMINAL_PROMPT", "0");
        command
    }

    /// `git push` of `refspec` as a user, their token in the remote's URL.
    pub fn push_as(&self, project: &Project, token: &str, refspec: &str) -> std::process::Output {
        let url = self
            .git
            .replacen("http://", &format!("http://user:{token}@"), 1);
        Command::new("git")
            .arg("-C")
            .arg(project.path())
            .args(["push", "--porcelain", &url, refspec])
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .unwrap()
    }

    /// Adds a user through the CLI and returns their token.
    pub fn add_user(&self, email: &str, extra: &[&str]) -> String {
        let mut args = vec!["user", "add", email];
        args.extend_from_slice(extra);
        let output = self.cli(&args);
        assert!(output.status.success(), "{}", text(&output));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("token: "))
            .expect("the token is printed")
            .to_owned()
    }

    /// The project's certificate authority, as the controller keeps it.
    pub fn authority(&self) -> lockstep_transport::Authority {
        lockstep_transport::Authority::load_or_create(
            &self.data_dir.join("controller/authority"),
            "unused: it exists",
        )
        .unwrap()
    }

    /// What `up.json` records: ports and tokens.
    pub fn layout(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.data_dir.join("up.json")).unwrap())
            .unwrap()
    }

    /// A counter of the `/metrics` of the agent listening on `port`, read as the controller.
    pub async fn agent_counter(&self, port: u64, name: &str) -> u64 {
        let text = client_as(&self.authority(), lockstep_transport::Peer::Controller)
            .get(format!("https://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `GET` on the API, as JSON.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.get_text(path).await).unwrap()
    }

    /// `GET` on the API, as the text it answers.
    pub async fn get_text(&self, path: &str) -> String {
        reqwest::Client::new()
            .get(format!("{}/api/v1{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn status(&self) -> serde_json::Value {
        self.get("/status").await
    }

    /// The names of an activity's phases, in order.
    pub fn phase_names(activity: &serde_json::Value) -> Vec<String> {
        activity["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The newest activity a user or a push started (catch-ups of returning nodes start by
    /// themselves, at any time), or null when there is none yet.
    pub async fn latest_activity(&self) -> serde_json::Value {
        self.get("/activities?limit=50")
            .await
            .as_array()
            .unwrap()
            .iter()
            .find(|activity| activity["type"] != "catch-up")
            .cloned()
            .unwrap_or_default()
    }

    /// An environment's part of `lockstep status`.
    pub async fn environment_status(&self, env: &str) -> serde_json::Value {
        let status = self.status().await;
        status["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == env)
            .unwrap_or_else(|| panic!("no environment {env}"))
            .clone()
    }

    /// The router URLs of an environment's nodes.
    pub async fn routers(&self, env: &str) -> Vec<String> {
        self.environment_status(env).await["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["router"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn storage(&self, env: &str, name: &str) -> String {
        std::fs::read_to_string(
            self.data_dir
                .join("controller/storage")
                .join(env)
                .join("storage")
                .join(name),
        )
        .unwrap_or_default()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `up` on `data_dir`: given as `--data-dir`, or, with a `home`, found there by `up`.
fn spawn_up(
    binary: &Path,
    data_dir: &Path,
    home: Option<&Path>,
    listen: u16,
    edge: u16,
    failpoint: Option<&str>,
) -> Child {
    let log_dir = home.unwrap_or(data_dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("up.log"))
        .unwrap();
    let mut command = Command::new(binary);
    if let Some(failpoint) = failpoint {
        command.env("LOCKSTEP_FAILPOINT", failpoint);
    }
    match home {
        Some(home) => {
            command
                .env("HOME", home)
                .env_remove("XDG_DATA_HOME")
                .env_remove("LOCKSTEP_HOME");
        }
        None => {
            command.arg("--data-dir").arg(data_dir);
        }
    }
    command
        .args(["up", "--listen", &format!("127.0.0.1:{listen}")])
        .args(["--edge-listen", &format!("127.0.0.1:{edge}")])
        .env("LOCKSTEP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The `lockstep` binary of this tree.
/// `command` (the `lockstep` binary, or a wrapper that runs it) completed into an agent
/// listening on `listen`; enrolled already, or given `--join` by the caller.
pub fn agent_command(mut command: Command, data_dir: &Path, listen: &str) -> Command {
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["agent", "--listen", listen])
        .env("LOCKSTEP_LOG", "warn")
        .stdin(Stdio::null());
    command
}

pub fn lockstep_binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin!("lockstep").to_owned()
}

/// Asserts that a command failed, saying `says`.
pub fn assert_refused(output: &std::process::Output, says: &str) {
    assert!(!output.status.success(), "{}", text(output));
    assert!(text(output).contains(says), "{}", text(output));
}

/// A command's standard output and error, for messages.
pub fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The deployment phases after the build, as the console's timeline names them.
pub const TIMELINE_PHASES: [&str; 7] = [
    "stage",
    "quiesce",
    "close",
    "swap",
    "deploy hook",
    "open",
    "post deploy",
];

/// The tree id of the project's HEAD: what the sample app reports as its release.
pub fn tree_of(project: &Project) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(project.path())
        .args(["rev-parse", "HEAD^{tree}"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `GET /` on a node router: status (0 when nothing answers) and the release that answered.
pub async fn release_of(router: &str) -> (u16, Option<String>) {
    match router_client().get(format!("{router}/")).send().await {
        Ok(response) => (
            response.status().as_u16(),
            response
                .headers()
                .get("x-release")
                .map(|v| v.to_str().unwrap().to_owned()),
        ),
        Err(_) => (0, None),
    }
}

/// GETs `path` at `host` through the edge until `stop` is set; every answer (status 0 when
/// the request failed) in order.
pub fn edge_request_loop(
    edge: u16,
    host: &str,
    path: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u16, String)>> {
    let (url, host) = (format!("http://127.0.0.1:{edge}{path}"), host.to_owned());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut answers = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let answer = http.get(&url).header("host", &host).send().await;
            answers.push(match answer {
                Ok(response) => (
                    response.status().as_u16(),
                    response.text().await.unwrap_or_default(),
                ),
                Err(error) => (0, error.to_string()),
            });
        }
        answers
    })
}

/// Requests `/` from the routers in turn until `stop` is set; returns every answer in order.
pub fn request_loop(
    routers: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u16, Option<String>)>> {
    tokio::spawn(async move {
        let mut answers = Vec::new();
        let mut turn = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            answers.push(release_of(&routers[turn % routers.len()]).await);
            turn += 1;
        }
        answers
    })
}
