//! The controller: the project's git server, builder, state store, deploy orchestrator and API.
//!
//! Owns: which environments exist and on which nodes, every activity and its log, the deploy
//! journals, the images, the backups, and carrying out deployments (`orchestrator`).
//! Must never: decide a step of the deploy procedure itself (the `lockstep_deploy` state machine
//! decides; the orchestrator carries out), let a push whose configuration or build fails move
//! its branch, copy an environment's data for someone who may not read it, or answer an API
//! call without a valid token.

mod access;
mod agents;
mod api;
mod apps;
mod backups;
mod builds;
mod cluster;
mod console;
mod data;
mod edge;
mod git;
mod images;
mod lifecycle;
mod nodes;
mod orchestrator;
mod push;
mod rehearsal;
mod secrets;
mod services;
mod shared_storage;
mod store;
mod users;
mod variables;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep_proto::agent::{AppUser, EnvironmentType, GateSettings, InstanceConfig};
use lockstep_proto::nodes::Pool;
use lockstep_supervisor::{Cancel, OperatorEnv};
use secrets::EntropyScope;

pub use access::{Role, Roles};
pub use backups::{BackedUpService, Backup};
pub use builds::CancelError;
pub use images::routes as image_routes;
pub use orchestrator::DeployJob;
pub use store::{Activity, EnvSettings, Environment, Node, PhaseTiming, StoreError};
pub use users::{User, UserChange, UserError, UserWithToken};
pub use variables::{SetVariable, Variable, VariableChange, VariableError, Visibility};

pub struct ControllerOptions {
    pub data_dir: PathBuf,
    pub project: String,
    /// `<env>.<domain>` is environment `<env>`; `<domain>` is production.
    pub domain: String,
    pub admin_token: String,
    /// The controller's own base URL, as git hooks and users reach it.
    pub public_url: String,
    /// The cluster port's URL (`https://HOST:PORT`), as nodes reach it: its host is in the
    /// controller's certificate.
    pub cluster_url: String,
    /// The `lockstep` binary, which git hooks run to reach the controller.
    pub lockstep_binary: PathBuf,
    /// The operator's CA and proxy settings, passed to builds.
    pub operator: OperatorEnv,
    /// The folder each pool's nodes share for `storage` mounts, where the operator mounted
    /// one; other pools use `storage` in `data_dir`.
    pub shared_storage: BTreeMap<Pool, PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("node {node}: {message}")]
    Agent { node: String, message: String },
    #[error("the deploy journal is unreadable: {0}")]
    Journal(String),
    #[error(transparent)]
    Image(#[from] lockstep_image::ImageError),
    /// A release id that is not image ids joined with `+`.
    #[error(transparent)]
    ImageId(#[from] lockstep_proto::InvalidImageId),
    #[error(transparent)]
    Build(#[from] lockstep_image::BuildError),
    #[error("{0}")]
    Secret(String),
    #[error(transparent)]
    Variable(#[from] VariableError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("{0}")]
    Forbidden(String),
    /// A branch that cannot become an environment: its name maps to none, or to another
    /// branch's.
    #[error("{0}")]
    BranchName(String),
    /// A service's engine or version differs from what its data was made with.
    #[error("{0}")]
    ServiceChanged(String),
    /// A service's primary cannot move as asked.
    #[error("{0}")]
    Promotion(String),
    /// A deployment's deploy hook failed against a copy of the environment's data.
    #[error(
        "the deploy hook failed in rehearsal, against a copy of {0}'s data; {0} was not touched (`lockstep env set {0} rehearse false` deploys without rehearsing)"
    )]
    Rehearsal(String),
    /// An environment that cannot be changed as asked, and why.
    #[error("{0}")]
    Environment(String),
    #[error("{0} has no release yet: push to its branch first")]
    NothingDeployed(String),
    #[error("{environment} has no app `{app}`; its apps: {apps}")]
    NoSuchApp {
        environment: String,
        app: String,
        apps: String,
    },
    /// A node that cannot be added, removed or enrolled as asked, and why.
    #[error("{0}")]
    Node(String),
    #[error("no node {0}: `lockstep node list` shows them")]
    UnknownNode(String),
    #[error("cannot set up the cluster's certificates: {0}")]
    Transport(#[from] lockstep_transport::TransportError),
    #[error("cannot {action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

impl ControllerError {
    pub(crate) fn agent(node: &Node) -> impl FnOnce(agents::CallError) -> ControllerError + '_ {
        move |error| ControllerError::Agent {
            node: node.name.clone(),
            message: error.to_string(),
        }
    }

    fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControllerError {
        let action = action.into();
        move |source| ControllerError::Io { action, source }
    }
}

pub struct Controller {
    options: ControllerOptions,
    /// The project's certificate authority, which every role's certificate comes from.
    authority: lockstep_transport::Authority,
    /// The certificate the cluster port serves, renewed by the controller itself.
    cluster_identity: Arc<lockstep_transport::ServerIdentity>,
    own_certificate_expires: Mutex<std::time::SystemTime>,
    /// The revoked certificates each node was told, by node and the certificate it holds.
    revocations_told: Mutex<HashMap<(String, String), BTreeSet<String>>>,
    store: store::Store,
    /// Where environments' `storage` mounts live, per pool.
    storage: shared_storage::SharedStorage,
    agents: agents::AgentClient,
    images: lockstep_image::ImageStore,
    builder: lockstep_image::Builder,
    secrets: secrets::Secrets,
    /// The caching edges in front of the environments: the registry's `edge` pool.
    edges: edge::Edges,
    queues: orchestrator::Queues,
    /// Lets git hooks, and only them, call the controller's internal routes.
    hook_token: String,
    /// Pushes built by pre-receive and not yet deployed by proc-receive: (branch, commit) to
    /// activity.
    pending_pushes: Mutex<HashMap<(String, String), String>>,
    /// Who is signed in to the console.
    console_sessions: console::Sessions,
    /// Builds running now, by activity, to cancel them.
    running_builds: Mutex<HashMap<String, Cancel>>,
}

impl Controller {
    /// Opens (or creates) the controller's state, its repository and its clusters.
    pub fn open(options: ControllerOptions) -> Result<Arc<Controller>, ControllerError> {
        let dir = &options.data_dir;
        std::fs::create_dir_all(dir.join("repos"))
            .map_err(ControllerError::io(format!("create {}", dir.display())))?;
        let storage =
            shared_storage::SharedStorage::open(dir.join("storage"), &options.shared_storage)?;
        // Nothing in here is for anyone but Lockstep: sandboxes see their own folders through
        // their binds, whatever the modes above them.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(ControllerError::io(format!("close {}", dir.display())))?;
        lockstep_supervisor::check_installed().map_err(|e| ControllerError::Io {
            action: "run builds".into(),
            source: e.into(),
        })?;
        let store = store::Store::open(&dir.join("lockstep.db"))?;
        let builder = lockstep_image::Builder::new(&dir.join("build"))?;
        let images = builder.store().clone();
        let hook_token = random_token();
        let secrets = secrets::Secrets::open(&dir.join("secret.key"))
            .map_err(|e| ControllerError::Secret(e.to_string()))?;
        let authority = lockstep_transport::Authority::load_or_create(
            &dir.join("authority"),
            &options.project,
        )?;
        let identity = own_identity(&authority, &options.cluster_url)?;
        let controller = Controller {
            secrets,
            edges: Default::default(),
            revocations_told: Default::default(),
            agents: agents::AgentClient::new(&identity, options.cluster_url.clone())?,
            cluster_identity: lockstep_transport::ServerIdentity::new(&identity)?,
            own_certificate_expires: Mutex::new(identity.expires_at()?),
            authority,
            store,
            storage,
            images,
            builder,
            queues: Default::default(),
            hook_token,
            pending_pushes: Mutex::new(HashMap::new()),
            running_builds: Mutex::new(HashMap::new()),
            console_sessions: Default::default(),
            options,
        };
        git::ensure_repository(&controller.repository(), &controller.hook_contact())
            .map_err(ControllerError::io("create the project's git repository"))?;
        controller.ensure_cluster("production", EnvironmentType::Production)?;
        controller.ensure_cluster("staging", EnvironmentType::Staging)?;
        Ok(Arc::new(controller))
    }

    /// Serves the API and git on `api`, and what nodes call on `cluster`, until `shutdown`.
    /// Once `nodes_started` (the agents this process started answer), resumes unfinished
    /// deployments, and then keeps nodes placed, caught up and their certificates fresh.
    pub async fn serve(
        self: Arc<Self>,
        api: tokio::net::TcpListener,
        cluster: tokio::net::TcpListener,
        nodes_started: impl std::future::Future<Output = ()> + Send + 'static,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let controller = self.clone();
        let background = tokio::spawn(async move {
            nodes_started.await;
            if let Err(error) = controller.resume_unfinished().await {
                tracing::error!(%error, "cannot resume unfinished deployments");
            }
            loop {
                if let Err(error) = controller.place_nodes() {
                    tracing::warn!(%error, "cannot place nodes");
                }
                if let Err(error) = controller.catch_up().await {
                    tracing::warn!(%error, "catch-up failed");
                }
                if let Err(error) = controller.sync_edge().await {
                    tracing::warn!(%error, "the edge is not up to date");
                }
                if let Err(error) = controller.renew_certificates().await {
                    tracing::warn!(%error, "a certificate is not renewed yet");
                }
                if let Err(error) = controller.tell_revocations().await {
                    tracing::warn!(%error, "the nodes are not told the revoked certificates");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        let (stop_cluster, cluster_stopped) = tokio::sync::oneshot::channel::<()>();
        let cluster_port = tokio::spawn(lockstep_transport::serve(
            cluster,
            self.cluster_identity.clone(),
            cluster::router(self.clone()),
            async move {
                let _ = cluster_stopped.await;
            },
        ));
        let result = axum::serve(api, api::router(self.clone()))
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = stop_cluster.send(());
        let _ = cluster_port.await;
        background.abort();
        result
    }

    /// A new certificate for the controller once a third of its lifetime is left.
    fn renew_own_certificate(&self) -> Result<(), ControllerError> {
        let mut expires = self.own_certificate_expires.lock().expect("expiry lock");
        let left = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        if left > lockstep_transport::CERTIFICATE_LIFETIME / 3 {
            return Ok(());
        }
        let identity = own_identity(&self.authority, &self.options.cluster_url)?;
        self.cluster_identity.replace(&identity)?;
        self.agents.replace_identity(&identity)?;
        *expires = identity.expires_at()?;
        tracing::info!("the controller's certificate is renewed");
        Ok(())
    }

    /// A client with the controller's certificate, for `up` to ask the agents it runs whether
    /// they serve.
    pub fn http_client(&self) -> reqwest::Client {
        self.agents.http()
    }

    pub fn git_remote(&self) -> String {
        format!(
            "{}/git/{}.git",
            self.options.public_url, self.options.project
        )
    }

    fn repository(&self) -> PathBuf {
        self.options
            .data_dir
            .join("repos")
            .join(format!("{}.git", self.options.project))
    }

    fn hook_contact(&self) -> git::HookContact {
        git::HookContact {
            url: self.options.public_url.clone(),
            token: self.hook_token.clone(),
            lockstep_binary: self.options.lockstep_binary.clone(),
        }
    }

    fn ensure_cluster(&self, name: &str, kind: EnvironmentType) -> Result<(), ControllerError> {
        self.ensure_environment(name, name, kind, None)
    }

    fn ensure_environment(
        &self,
        name: &str,
        branch: &str,
        kind: EnvironmentType,
        parent: Option<&str>,
    ) -> Result<(), ControllerError> {
        if self.store.environment_for_branch(branch)?.is_some() {
            return Ok(());
        }
        let env = Environment {
            name: name.to_owned(),
            kind,
            branch: branch.to_owned(),
            parent: parent.map(str::to_owned),
            generation: lockstep_proto::Generation(0),
            serving: None,
            previous: None,
            settings: EnvSettings::default(),
            created_at: store::timestamp(chrono::Utc::now()),
            // Allocated by the store.
            uid: 0,
            // A development environment exists once a push of its branch is accepted.
            pending: kind == EnvironmentType::Development,
        };
        let nodes: Vec<Node> = self
            .nodes_for_new_environment(name, kind)?
            .into_iter()
            .enumerate()
            .map(|(position, (node, agent_url))| Node {
                environment: name.to_owned(),
                name: node,
                position: position as u32,
                agent_url,
                router_port: None,
                app_routers: Default::default(),
            })
            .collect();
        self.store.create_environment(&env, &nodes)?;
        Ok(())
    }

    /// The environment a branch deploys to, recorded (pending) on its first push.
    fn environment_for_branch(&self, branch: &str) -> Result<Environment, ControllerError> {
        if let Some(env) = self.store.environment_for_branch(branch)? {
            return Ok(env);
        }
        self.new_development_environment(branch, "production")
    }

    /// A development environment for `branch` (pending), a child of `parent`.
    fn new_development_environment(
        &self,
        branch: &str,
        parent: &str,
    ) -> Result<Environment, ControllerError> {
        let name = environment_name(branch).map_err(ControllerError::BranchName)?;
        if let Some(owner) = self.store.find_environment_named(&name)? {
            return Err(ControllerError::BranchName(format!(
                "branch `{branch}` would be environment `{name}`, which is branch `{}`'s already; push it under another name",
                owner.branch
            )));
        }
        self.ensure_environment(&name, branch, EnvironmentType::Development, Some(parent))?;
        Ok(self.store.environment(&name)?)
    }

    /// A pending environment's push was accepted: with `clone`, it starts as a clone of its
    /// parent's storage, and its services take its parent's data at its first deployment; it
    /// exists from now on.
    fn accept_environment(
        &self,
        env: &Environment,
        clone: bool,
        activity: &str,
    ) -> Result<(), ControllerError> {
        if let Some(parent) = env.parent.as_deref().filter(|_| clone) {
            self.clone_storage(parent, env, activity)?;
            self.store.set_clone_pending(&env.name, true)?;
        }
        self.store.accept_environment(&env.name)?;
        Ok(())
    }

    /// The parent whose data a new environment made by `principal` may start with: only
    /// someone who may reach the parent's data (its shell, on its environment type) copies it
    /// into an environment of their own. `Err` says why not.
    fn may_clone_parent(
        &self,
        env: &Environment,
        principal: &access::Principal,
    ) -> Result<String, String> {
        let Some(parent) = env.parent.as_deref() else {
            return Err("it has no parent".into());
        };
        self.may_read_data_of(parent, principal)?;
        Ok(parent.to_owned())
    }

    /// Whether `principal` may reach environment `environment`'s data; `Err` says why not.
    fn may_read_data_of(
        &self,
        environment: &str,
        principal: &access::Principal,
    ) -> Result<(), String> {
        let kind = self
            .store
            .environment(environment)
            .map_err(|error| error.to_string())?
            .kind;
        if access::allowed(principal, access::Action::Ssh, kind) {
            Ok(())
        } else {
            Err(format!(
                "{} may not read {environment}'s data (the contributor or admin role on {} environments), so none of it is copied",
                principal.name(),
                kind.as_str()
            ))
        }
    }

    /// The configuration of the instance of `app` (`apps::AppInstance::app`) on `node`.
    fn instance_config(&self, env: &Environment, node: &Node, app: Option<&str>) -> InstanceConfig {
        let cluster = (env.kind != EnvironmentType::Development)
            .then(|| format!("{}-{}", self.options.project, env.name));
        InstanceConfig {
            project: self.options.project.clone(),
            project_entropy: self
                .secrets
                .project_entropy(EntropyScope::Runtime(env.kind)),
            environment: env.name.clone(),
            branch: env.branch.clone(),
            environment_type: env.kind,
            node: node.name.clone(),
            cluster,
            router_port: node.router_of(app).unwrap_or(0),
            // Each app's `storage` mounts are its own, as on Platform.sh.
            storage_dir: match app {
                None => self.storage.of(env),
                Some(app) => self.storage.of(env).join(app),
            },
            shared_storage: Some(self.storage.root(nodes::pool_of(env.kind)).to_owned()),
            cron_node: node.position == 0,
            gate: GateSettings {
                closed_status: env.settings.closed_status,
                drain_timeout_ms: env.settings.drain_timeout_secs * 1000,
                start_timeout_ms: env.settings.web_start_timeout_secs * 1000,
                ..GateSettings::default()
            },
            user: Some(AppUser {
                uid: env.uid,
                gid: env.uid,
            }),
            strict_runtimes: env.settings.strict_runtimes,
            app: app.map(str::to_owned),
        }
    }

    /// The host name of an environment on the edge.
    fn host(&self, environment: &str) -> String {
        if environment == "production" {
            self.options.domain.clone()
        } else {
            format!("{environment}.{}", self.options.domain)
        }
    }

    /// `PLATFORM_ROUTES` for an environment running `release`, as Platform.sh shapes it.
    fn platform_routes(
        &self,
        environment: &str,
        release: &str,
    ) -> Result<serde_json::Value, ControllerError> {
        let project = self.release_project(release)?;
        let host = self.host(environment);
        let resolve = |url: &str| url.replace("{default}", &host).replace("{all}", &host);
        let mut routes = serde_json::Map::new();
        for route in &project.routes {
            let mut entry = serde_json::json!({
                "primary": route.primary,
                "id": route.id,
                "attributes": {},
                "original_url": route.url,
            });
            match &route.kind {
                lockstep_config::RouteKind::Upstream { app } => {
                    entry["type"] = "upstream".into();
                    entry["upstream"] = app.clone().into();
                }
                lockstep_config::RouteKind::Redirect { to } => {
                    entry["type"] = "redirect".into();
                    entry["to"] = resolve(to).into();
                }
            }
            routes.insert(resolve(&route.url), entry);
        }
        Ok(serde_json::Value::Object(routes))
    }
}

/// Branch names become environment names, which are DNS labels (the edge serves
/// `ENV.DOMAIN`) and folder names on the nodes: lower-case letters, digits and single `-`
/// between them, at most 63 characters. Anything else in the branch's name becomes `-`.
fn environment_name(branch: &str) -> Result<String, String> {
    let mut name = String::new();
    for c in branch.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let name: String = name.chars().take(63).collect();
    let name = name.trim_end_matches('-').to_owned();
    if name.is_empty() {
        return Err(format!(
            "branch `{branch}` has no letter or digit to name its environment after; push it under another name"
        ));
    }
    Ok(name)
}

/// The controller's certificate, for the host of its cluster URL.
fn own_identity(
    authority: &lockstep_transport::Authority,
    cluster_url: &str,
) -> Result<lockstep_transport::Identity, ControllerError> {
    let host = reqwest::Url::parse(cluster_url)
        .ok()
        .and_then(|url| {
            url.host_str()
                .map(|h| h.trim_matches(['[', ']']).to_owned())
        })
        .ok_or_else(|| {
            ControllerError::Node(format!("the cluster URL `{cluster_url}` names no host"))
        })?;
    Ok(authority.identity_for(&lockstep_transport::Peer::Controller, &[host])?)
}

pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 24];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("the kernel's random source is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_become_dns_labels() {
        let name = |branch: &str| environment_name(branch).unwrap();
        assert_eq!(name("feature/Login-Page"), "feature-login-page");
        assert_eq!(name("main"), "main");
        assert_eq!(name("/weird//"), "weird");
        assert_eq!(name("Feature_X"), "feature-x");
        assert_eq!(name("a__b--c"), "a-b-c");
        assert_eq!(name(&"x".repeat(100)).len(), 63);
        assert_eq!(name(&format!("{}-y", "x".repeat(62))), "x".repeat(62));
        assert!(environment_name("___").is_err());
        assert!(environment_name("ü_ï").is_err());
        assert_eq!(name("ünï"), "n");
    }
}
