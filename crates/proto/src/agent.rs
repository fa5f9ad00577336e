//! The agent's API, used by the controller (and by tests and operators through the CLI).
//!
//! Every command that changes an instance names the deployment and the generation it belongs to,
//! so that a command repeated after a lost answer or a controller restart is recognised and does
//! nothing new.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
pub use lockstep_config::{Endpoint, Privilege, ServiceEndpoints, ServiceKind};
use serde::{Deserialize, Serialize};

use crate::{Generation, ImageId};

/// The header that carries the instance's gate state on every answer of a node router.
pub const GATE_HEADER: &str = "x-lockstep-gate";
/// A path every node router answers itself, open or closed, with its `Gate` as JSON: the
/// edge's health check.
pub const GATE_PATH: &str = "/.lockstep/gate";
/// The header that carries the generation a node router is open at.
pub const GENERATION_HEADER: &str = "x-lockstep-generation";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvironmentType {
    Production,
    Staging,
    Development,
}

impl EnvironmentType {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentType::Production => "production",
            EnvironmentType::Staging => "staging",
            EnvironmentType::Development => "development",
        }
    }
}

/// What an instance of an environment on a node is: sent before any other command, and again
/// whenever a setting changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceConfig {
    pub project: String,
    pub environment: String,
    pub branch: String,
    pub environment_type: EnvironmentType,
    /// This node's name, given to the app as `LOCKSTEP_NODE`.
    pub node: String,
    /// `PLATFORM_CLUSTER` on production and staging.
    pub cluster: Option<String>,
    /// The node router's port; 0 lets the agent pick one, which it keeps across restarts.
    #[serde(default)]
    pub router_port: u16,
    /// Where `source: storage` mounts live: shared by every node of the environment.
    pub storage_dir: PathBuf,
    /// The pool's shared folder that `storage_dir` lies in, which the operator mounts on every
    /// node of the pool: a node where it is missing refuses releases with `storage` mounts
    /// rather than keep their files to itself.
    #[serde(default)]
    pub shared_storage: Option<PathBuf>,
    /// Whether crons run on this node (exactly one node of an environment).
    pub cron_node: bool,
    #[serde(default)]
    pub gate: GateSettings,
    /// The environment's own Unix user, the same on every node; an agent running as root runs
    /// the environment's code as this user, and refuses to run it without one.
    #[serde(default)]
    pub user: Option<AppUser>,
    /// Whether a runtime version this node lacks fails the swap instead of running the nearest.
    #[serde(default)]
    pub strict_runtimes: bool,
    /// `PLATFORM_PROJECT_ENTROPY` for this environment's type.
    #[serde(default)]
    pub project_entropy: String,
    /// The app this instance runs when the project has several (`instance_name`); None for a
    /// project with one app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// The name of the agent instance that runs `app` of `environment`: the environment's name
/// for a project with one app, `ENV--APP` for each app of a project with several (environment
/// names never hold `--`, so no two instances share a name). Both sides of the agent's API
/// derive instance names with this.
pub fn instance_name(environment: &str, app: Option<&str>) -> String {
    match app {
        None => environment.to_owned(),
        Some(app) => format!("{environment}--{app}"),
    }
}

/// A Unix user and group allocated to one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppUser {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSettings {
    /// What a closed router answers: 503 (default) or 500 (Platform.sh's old behaviour).
    pub closed_status: u16,
    pub retry_after_secs: u64,
    /// How long close waits for requests in flight.
    pub drain_timeout_ms: u64,
    /// How long swap waits for the new web process to accept connections
    /// (`web_start_timeout`).
    pub start_timeout_ms: u64,
}

impl Default for GateSettings {
    fn default() -> Self {
        GateSettings {
            closed_status: 503,
            retry_after_secs: 5,
            drain_timeout_ms: 10_000,
            start_timeout_ms: 60_000,
        }
    }
}

/// The deployment a command belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub deployment: String,
    pub generation: Generation,
}

/// What the app sees of its environment at runtime, besides what the agent knows itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeInputs {
    /// Runtime-visible variables by full name (`env:NAME`, `django:secret`), already merged
    /// by precedence.
    pub variables: BTreeMap<String, serde_json::Value>,
    /// `PLATFORM_ROUTES` before encoding.
    pub routes: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapRequest {
    #[serde(flatten)]
    pub step: Step,
    pub image: ImageId,
    pub runtime: RuntimeInputs,
}

/// Runs the deploy hook of a staged release against a scratch copy of the environment's data
/// on this node (its services whose primary is here, its mounts), with `LOCKSTEP_REHEARSAL=1`;
/// answered with the hook's outcome. Nothing of the environment changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RehearsalRequest {
    pub deployment: String,
    pub image: ImageId,
    pub runtime: RuntimeInputs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    Deploy,
    PostDeploy,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Deploy => "deploy",
            HookKind::PostDeploy => "post_deploy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRequest {
    #[serde(flatten)]
    pub step: Step,
    pub hook: HookKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookState {
    Running,
    Succeeded,
    Failed,
    /// The agent stopped while the hook ran. Never run again: the outcome is unknown, and the
    /// deploy procedure treats it as a failure.
    Interrupted,
}

/// A hook run, as stored durably on the node that ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutcome {
    pub deployment: String,
    pub hook: HookKind,
    pub image: ImageId,
    pub state: HookState,
    pub exit_code: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The last lines of the hook's output.
    pub output: Vec<String>,
}

/// Stage an image: the agent pulls it from `source`, the controller's URL, by its id (the
/// image routes of the controller, `/v1/images/{id}`, with the agent's own token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRequest {
    pub source: String,
}

/// The answer to stage: whether this call unpacked the image or found it already there, and
/// how many of the image's bytes it fetched and how many it found in images the node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub image: ImageId,
    pub already_staged: bool,
    #[serde(default)]
    pub fetched_bytes: u64,
    #[serde(default)]
    pub reused_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    /// Requests still in flight when the drain timeout ran out (0 when all finished).
    pub abandoned_requests: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Gate {
    Open { generation: Generation },
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveRelease {
    pub image: ImageId,
    pub generation: Generation,
    pub deployment: String,
    pub activated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    BackingOff,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub name: String,
    pub state: ProcessState,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRunInfo {
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// `succeeded`, `failed`, `timed_out`, `stopped`, or null while running.
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUse {
    pub releases_bytes: u64,
    pub mounts_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub environment: String,
    pub node: String,
    pub router_port: u16,
    pub gate: Gate,
    pub active: Option<ActiveRelease>,
    /// Staged images, oldest first; the active one among them.
    pub releases: Vec<ImageId>,
    /// True between quiesce and start of background work.
    pub background_stopped: bool,
    pub processes: Vec<ProcessInfo>,
    pub cron_runs: Vec<CronRunInfo>,
    pub hooks: Vec<HookOutcome>,
    pub disk: DiskUse,
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
}

/// Every error answer of the agent's API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// A user as a node knows it: enough to let them in with their keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUser {
    pub name: String,
    /// The user's role on this environment's type: `admin`, `contributor` or `viewer`.
    pub role: String,
    pub ssh_keys: Vec<String>,
}

/// A command to run in the app's runtime environment on a node (`lockstep ssh`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub command: String,
    /// Who asked, for the node's log.
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutcome {
    pub exit_code: Option<i32>,
    /// Standard output and error, merged.
    pub output: String,
}

/// One service of an environment, as one node runs it: sent for every service the deployed
/// configuration declares, before the deployment starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Its name in `.platform/services.yaml`.
    pub name: String,
    pub engine: ServiceKind,
    /// `type` as written (`postgresql:15`, `redis-persistent:7.0`), for `PLATFORM_RELATIONSHIPS`.
    pub service_type: String,
    /// Whether a Redis keeps its data on disk (`redis-persistent`); the databases always do.
    pub persistent: bool,
    /// Megabytes, as `disk` says; reported beside what the data uses.
    pub disk_mb: Option<u64>,
    /// The password of the service's application user, generated per environment.
    pub password: String,
    pub role: ServiceRole,
    /// Its databases and the endpoints relationships name; empty in what an agent kept from
    /// before endpoints were sent, which means the engine's default.
    #[serde(default)]
    pub endpoints: ServiceEndpoints,
}

/// What this node's instance of a service is in its environment's topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum ServiceRole {
    /// The instance apps write to. With replicas, a PostgreSQL primary confirms a commit only
    /// once one of them has it too.
    Primary {
        replicas: u32,
        /// A clustered engine's members (Galera), `host:port` of each one's cluster port,
        /// once known: where it rejoins after a restart.
        #[serde(default)]
        cluster: Vec<String>,
    },
    /// An instance following the primary at `primary` (`host:port`) with the engine's own
    /// replication (a Galera member, for MariaDB); this node's endpoint forwards to the
    /// primary.
    Replica {
        primary: String,
        #[serde(default)]
        cluster: Vec<String>,
    },
    /// No instance here: this node's endpoint forwards to the primary at `primary`.
    Remote { primary: String },
}

impl ServiceRole {
    /// A clustered role's member list; none for a node without an instance.
    pub fn members_mut(&mut self) -> Option<&mut Vec<String>> {
        match self {
            ServiceRole::Primary { cluster, .. } | ServiceRole::Replica { cluster, .. } => {
                Some(cluster)
            }
            ServiceRole::Remote { .. } => None,
        }
    }
}

/// A service instance on a node, once it accepts connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub engine: ServiceKind,
    pub role: ServiceRole,
    /// Where the engine itself listens on this node; 0 when it runs on another node.
    pub port: u16,
    /// Where this node's apps reach the service (the port in `PLATFORM_RELATIONSHIPS`): a local
    /// endpoint that follows the primary.
    pub endpoint_port: u16,
    /// Where the other members of a clustered engine (Galera) reach this one; 0 otherwise.
    #[serde(default)]
    pub cluster_port: u16,
    /// The engine's process on this node; none when the primary runs elsewhere.
    pub process: Option<ProcessState>,
    /// Bytes the service's data uses on this node, measured within the last minute.
    pub data_bytes: u64,
    pub disk_mb: Option<u64>,
}

/// A service's own client run against it through an app's relationship, on a node
/// (`lockstep sql`, `lockstep redis`), in the app's runtime environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceClientRequest {
    /// The relationship to use; none means the first one to a service of the client's kind.
    pub relationship: Option<String>,
    pub client: ServiceClient,
    /// Who asked, for the node's log.
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "client")]
pub enum ServiceClient {
    /// `psql` or `mariadb`, reading `input` as its script.
    Sql { input: String },
    /// `redis-cli` with these arguments.
    Redis { args: Vec<String> },
}

/// How a replica on a node follows its primary, in its engine's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReplication {
    pub name: String,
    /// PostgreSQL's WAL receiver status (`streaming`), Redis's link to its primary (`up`),
    /// Galera's member state (`Synced`); `unknown` when the server did not say.
    pub state: String,
    /// Bytes received and not yet applied, where the engine counts them (PostgreSQL).
    pub lag_bytes: Option<u64>,
    /// How much of the primary's history it has received, in the engine's own unit (PostgreSQL's
    /// WAL position in bytes, Galera's last committed sequence number, Redis's replication
    /// offset): of two replicas, the one further on holds every write the other holds.
    #[serde(default)]
    pub received: Option<u64>,
}
