//! What the end-to-end tests share: the sample app as a git project, images built from it, and a
//! real `lockstep agent` process with a client for its API.

#![allow(dead_code)] // Each test file uses its own part of this module.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_proto::agent::{
    EnvironmentType, GateSettings, HookKind, HookOutcome, HookRequest, InstanceConfig,
    InstanceStatus, RuntimeInputs, Step, SwapRequest,
};

pub fn sample_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/app")
}

/// A folder the app's unprivileged user can reach (temporary folders are private by default).
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A git repository holding a copy of the sample app, as a user's project would.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn sample() -> Project {
        let project = Project {
            dir: tempfile::tempdir().unwrap(),
        };
        let status = Command::new("cp")
            .arg("-r")
            .arg(sample_app().join("."))
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

    /// Commits a change that gives a new tree, hence a new release.
    pub fn new_version(&self, label: &str) {
        std::fs::write(self.path().join("VERSION"), label).unwrap();
        self.commit(label);
    }

    fn git(&self, args: &[&str]) {
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
    pub id: String,
    pub path: PathBuf,
    pub tree_id: String,
}

/// Builds the project's HEAD with the library builder into `store`.
pub fn build_image(project: &Project, store: &Path) -> BuiltImage {
    let builder = lockstep_image::Builder::new(store).unwrap();
    let variables = Default::default();
    let request = lockstep_image::BuildRequest {
        repo: project.path(),
        git_ref: "HEAD",
        project: "shop",
        variables: &variables,
        timeout: Duration::from_secs(120),
        git_env: &[],
    };
    let outcome = builder.build(&request, &mut |_| {}).unwrap();
    BuiltImage {
        path: builder.store().image_path(&outcome.manifest.id),
        id: outcome.manifest.id.to_string(),
        tree_id: outcome.manifest.info.tree_id,
    }
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

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A real `lockstep agent` process.
pub struct AgentProcess {
    child: Child,
    pub data_dir: PathBuf,
    pub port: u16,
    _token_dir: tempfile::TempDir,
}

impl AgentProcess {
    pub async fn start(data_dir: &Path) -> AgentProcess {
        Self::start_on(data_dir, free_port()).await
    }

    pub async fn start_on(data_dir: &Path, port: u16) -> AgentProcess {
        let token_dir = tempfile::tempdir().unwrap();
        let token_file = token_dir.path().join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let child = Command::new(assert_cmd::cargo::cargo_bin!("lockstep"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["agent", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--token-file")
            .arg(&token_file)
            .env("LOCKSTEP_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let agent = AgentProcess {
            child,
            data_dir: data_dir.to_owned(),
            port,
            _token_dir: token_dir,
        };
        let client = agent.client();
        eventually(Duration::from_secs(30), "the agent to answer", || async {
            client
                .http
                .get(client.url("/v1/instances"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .is_ok()
        })
        .await;
        agent
    }

    pub fn client(&self) -> AgentClient {
        AgentClient {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{}", self.port),
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
        let response = request.bearer_auth(TOKEN).send().await.unwrap();
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

    pub async fn stage_bytes(&self, env: &str, image_id: &str, bytes: Vec<u8>) -> Answer {
        let path = format!("/v1/instances/{env}/images/{image_id}");
        self.send(self.http.put(self.url(&path)).body(bytes)).await
    }

    pub async fn stage(&self, env: &str, image: &BuiltImage) -> Answer {
        self.stage_bytes(env, &image.id, std::fs::read(&image.path).unwrap())
            .await
    }

    pub async fn step(
        &self,
        env: &str,
        command: &str,
        deployment: &str,
        generation: u64,
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
        generation: u64,
        image: &str,
        runtime: RuntimeInputs,
    ) -> Answer {
        let request = SwapRequest {
            step: Step {
                deployment: deployment.into(),
                generation,
            },
            image: image.into(),
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
        generation: u64,
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
        generation: u64,
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
        cron_node: true,
        gate: GateSettings {
            start_timeout_ms: 20_000,
            ..GateSettings::default()
        },
    }
}

/// `GET path` on a node router: status, the `X-Release` header and the body.
pub async fn get_router(
    port: u16,
    path: &str,
) -> (u16, Option<String>, reqwest::header::HeaderMap) {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
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
