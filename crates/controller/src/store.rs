//! The controller's state in SQLite: environments, their nodes, images, activities with their
//! phases and logs, and the deploy journals. Migrations are numbered by `PRAGMA user_version`.
//!
//! Calls are short and synchronous behind one connection; the journal append is a committed
//! transaction before it returns, which is what makes a deployment resumable (I4).

mod registry;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use lockstep_proto::Generation;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

pub use registry::RegisteredNode;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state database failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a stored value is unreadable")]
    Json(#[from] serde_json::Error),
    #[error("no environment `{0}`")]
    UnknownEnvironment(String),
    #[error("no activity `{0}`")]
    UnknownActivity(String),
    #[error("cannot make the state database {} private", path.display())]
    Private {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE environments (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    branch TEXT NOT NULL UNIQUE,
    parent TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    serving TEXT,
    previous TEXT,
    settings TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE nodes (
    environment TEXT NOT NULL REFERENCES environments(name),
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    agent_url TEXT NOT NULL,
    router_port INTEGER,
    PRIMARY KEY (environment, name)
);
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    tree_id TEXT NOT NULL,
    manifest TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE activities (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    environment TEXT NOT NULL,
    state TEXT NOT NULL,
    result TEXT,
    description TEXT NOT NULL,
    image TEXT,
    created_at TEXT NOT NULL,
    completed_at TEXT,
    phases TEXT NOT NULL DEFAULT '[]',
    log TEXT NOT NULL DEFAULT ''
);
CREATE TABLE journal (
    deployment TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (deployment, seq)
);
"#,
    r#"
CREATE TABLE variables (
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    stored TEXT NOT NULL,
    sensitive INTEGER NOT NULL,
    json INTEGER NOT NULL,
    visible_build INTEGER NOT NULL,
    visible_runtime INTEGER NOT NULL,
    inheritable INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (environment, name)
);
"#,
    r#"
CREATE TABLE users (
    email TEXT PRIMARY KEY,
    roles TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    ssh_keys TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"#,
    // Each environment runs as a Unix user of its own, allocated once and never reused.
    r#"
ALTER TABLE environments ADD COLUMN uid INTEGER;
UPDATE environments SET uid = 70000 + rowid;
CREATE UNIQUE INDEX environments_by_uid ON environments (uid);
"#,
    // A new branch's environment is pending until its first push is accepted.
    r#"
ALTER TABLE environments ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
"#,
    // Each service an environment ever declared, with the credentials apps get for it.
    r#"
CREATE TABLE services (
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    engine TEXT NOT NULL,
    version TEXT NOT NULL,
    password TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (environment, name)
);
"#,
    // Where each service's primary runs once a promotion moved it off the first node, and
    // where it listened when last placed, for a node that returns to compare with.
    r#"
ALTER TABLE services ADD COLUMN primary_node TEXT;
ALTER TABLE services ADD COLUMN primary_address TEXT;
"#,
    // The router port of each app's instance on a node, for projects with several apps.
    r#"
ALTER TABLE nodes ADD COLUMN app_routers TEXT NOT NULL DEFAULT '{}';
"#,
    // A new environment whose services take its parent's data at its first deployment.
    r#"
ALTER TABLE environments ADD COLUMN clone_pending INTEGER NOT NULL DEFAULT 0;
"#,
    // The Unix users of deleted environments, never given to another.
    r#"
CREATE TABLE retired_uids (uid INTEGER PRIMARY KEY);
"#,
    // The data a queued activity puts in place of its environment's (`data::DataSource`),
    // known before its journal starts.
    r#"
ALTER TABLE activities ADD COLUMN data TEXT;
"#,
    // The node registry (`registry.rs`): nodes placed in pools, enrolled with a join token.
    r#"
CREATE TABLE cluster_nodes (
    name TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    added_at TEXT NOT NULL,
    join_secret_hash TEXT UNIQUE,
    join_expires_at TEXT,
    agent_url TEXT,
    certificate_fingerprint TEXT,
    certificate_expires_at TEXT
);
"#,
    // The certificates of removed nodes and edges, refused until they expire.
    r#"
CREATE TABLE revoked_certificates (
    fingerprint TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL
);
"#,
    // An environment's activities, and those under way, found without reading every
    // activity's log (the console's pages ask for them at each view).
    r#"
CREATE INDEX activities_by_environment ON activities (environment, seq);
CREATE INDEX activities_by_state ON activities (state);
"#,
];

/// A service of an environment as first declared: its engine and version never change, since
/// its data is in that engine's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredService {
    pub name: String,
    pub engine: lockstep_proto::agent::ServiceKind,
    pub version: String,
    pub password: String,
    /// The node of its primary; `None` until a promotion: the environment's first node.
    pub primary_node: Option<String>,
    /// `host:port` where its primary listened when it was last placed.
    pub primary_address: Option<String>,
}

impl StoredService {
    /// The node of its primary among `nodes`: the one a promotion recorded, while it is one of
    /// them; else the first.
    pub fn primary_on<'a>(&'a self, nodes: &'a [Node]) -> Option<&'a str> {
        self.primary_node
            .as_deref()
            .filter(|recorded| nodes.iter().any(|n| n.name == *recorded))
            .or(nodes.first().map(|n| n.name.as_str()))
    }
}

/// Environments' Unix users are numbered from here up: above the ids Debian gives users and
/// its dynamic range, below the ranges rootless containers usually take (`/etc/subuid`).
pub const FIRST_UID: u32 = 70001;

pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Per-environment settings of SPEC section 7 (`lockstep env set`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnvSettings {
    pub on_hook_failure: lockstep_deploy::HookFailurePolicy,
    pub closed_status: u16,
    pub closed_mode: String,
    pub max_hold_secs: u64,
    pub grace_secs: u64,
    pub drain_timeout_secs: u64,
    /// How long a build may run before it is stopped.
    pub build_timeout_secs: u64,
    /// How long a new web process has to accept connections during a swap.
    pub web_start_timeout_secs: u64,
    /// Whether a runtime version that is not installed fails the build and the deploy instead
    /// of running the nearest installed one.
    pub strict_runtimes: bool,
    /// Whether a deployment first runs its deploy hook against a scratch copy of the
    /// environment's services and mounts (where it has services).
    pub rehearse: bool,
}

impl Default for EnvSettings {
    fn default() -> Self {
        EnvSettings {
            on_hook_failure: lockstep_deploy::HookFailurePolicy::Rollback,
            closed_status: 503,
            closed_mode: "hold".into(),
            max_hold_secs: 30,
            grace_secs: 12 * 3600,
            drain_timeout_secs: 10,
            build_timeout_secs: 3600,
            web_start_timeout_secs: 60,
            strict_runtimes: false,
            rehearse: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub name: String,
    pub kind: lockstep_proto::agent::EnvironmentType,
    pub branch: String,
    pub parent: Option<String>,
    /// The last generation used by a deployment of this environment.
    pub generation: Generation,
    pub serving: Option<lockstep_deploy::Release>,
    /// What served before `serving`: the target of `lockstep rollback`.
    pub previous: Option<lockstep_deploy::Release>,
    pub settings: EnvSettings,
    pub created_at: String,
    /// The environment's own Unix user and group id, the same on all its nodes.
    pub uid: u32,
    /// A new branch's environment until a push of it has been accepted: recorded (its
    /// activities need it) but on no node, with no storage, listed nowhere.
    #[serde(skip)]
    pub pending: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub environment: String,
    pub name: String,
    pub position: u32,
    pub agent_url: String,
    /// The router port of the instance named after the environment (a project with one app).
    pub router_port: Option<u16>,
    /// The router port of each app's instance, by app, for a project with several apps.
    #[serde(default)]
    pub app_routers: BTreeMap<String, u16>,
}

impl Node {
    /// The router port of `app`'s instance on this node (`None`: the environment's instance of
    /// a project with one app).
    pub fn router_of(&self, app: Option<&str>) -> Option<u16> {
        match app {
            None => self.router_port,
            Some(app) => self.app_routers.get(app).copied(),
        }
    }

    /// The host of its agent's URL: where its routers and services listen too.
    pub fn host(&self) -> String {
        reqwest::Url::parse(&self.agent_url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_else(|| "127.0.0.1".into())
    }

    /// The URL of `app`'s router on this node, once it has one.
    pub fn router_url(&self, app: Option<&str>) -> Option<String> {
        self.router_of(app)
            .map(|port| format!("https://{}:{port}", self.host()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTiming {
    pub name: String,
    pub started_at: String,
    pub ended_at: Option<String>,
}

/// An activity in the shape of SPEC section 7's `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub environment: String,
    pub state: String,
    pub result: Option<String>,
    pub description: String,
    /// The image the activity deploys, once known.
    pub image: Option<String>,
    pub created_at: String,
    pub completed_at: Option<String>,
    pub phases: Vec<PhaseTiming>,
}

pub struct Store {
    connection: Mutex<Connection>,
}

impl Store {
    /// Opens (or creates) the store, readable by Lockstep's user alone: it holds user token
    /// hashes and sealed variables. SQLite gives its journal files the database's mode.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|_| {
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            })
            .map_err(|source| StoreError::Private {
                path: path.to_owned(),
                source,
            })?;
        let mut connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut connection)?;
        Ok(Store {
            connection: Mutex::new(connection),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let connection = self.connection.lock().expect("store lock");
        f(&connection)
    }

    /// Records a new environment with its nodes, and allocates its Unix user (the `uid` given
    /// is ignored): one more than any environment ever had.
    pub fn create_environment(&self, env: &Environment, nodes: &[Node]) -> Result<(), StoreError> {
        let mut connection = self.connection.lock().expect("store lock");
        let tx = connection.transaction()?;
        tx.execute(
            "INSERT INTO environments (name, kind, branch, parent, generation, serving, previous, settings, created_at, uid, pending)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                     (SELECT MAX(COALESCE((SELECT MAX(uid) FROM (SELECT uid FROM environments UNION ALL SELECT uid FROM retired_uids)), 0) + 1, ?10)), ?11)",
            params![
                env.name,
                env.kind.as_str(),
                env.branch,
                env.parent,
                env.generation.0,
                serde_json::to_string(&env.serving)?,
                serde_json::to_string(&env.previous)?,
                serde_json::to_string(&env.settings)?,
                env.created_at,
                FIRST_UID,
                env.pending,
            ],
        )?;
        for node in nodes {
            tx.execute(
                "INSERT INTO nodes (environment, name, position, agent_url, router_port) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![node.environment, node.name, node.position, node.agent_url, node.router_port],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every environment but those still pending.
    pub fn environments(&self) -> Result<Vec<Environment>, StoreError> {
        Ok(self
            .environments_and_pending()?
            .into_iter()
            .filter(|e| !e.pending)
            .collect())
    }

    /// Every environment, pending ones included.
    pub fn environments_and_pending(&self) -> Result<Vec<Environment>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT name, kind, branch, parent, generation, serving, previous, settings, created_at, uid, pending
                 FROM environments ORDER BY created_at, name",
            )?;
            let rows = statement.query_map([], read_environment)?;
            let mut environments = Vec::new();
            for row in rows {
                environments.push(row??);
            }
            Ok(environments)
        })
    }

    pub fn environment(&self, name: &str) -> Result<Environment, StoreError> {
        self.find_environment("name", name)?
            .ok_or_else(|| StoreError::UnknownEnvironment(name.to_owned()))
    }

    /// A pending environment's first push was accepted: it exists from now on.
    pub fn accept_environment(&self, name: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE environments SET pending = 0 WHERE name = ?1",
                [name],
            )?;
            Ok(())
        })
    }

    /// Forgets a deleted environment: its nodes, services and variables go; its activities
    /// stay, and its Unix user is never given to another.
    pub fn delete_environment(&self, name: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.lock().expect("store lock");
        let tx = connection.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO retired_uids (uid) SELECT uid FROM environments WHERE name = ?1",
            [name],
        )?;
        for table in ["nodes", "services", "variables"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE environment = ?1"),
                [name],
            )?;
        }
        let deleted = tx.execute("DELETE FROM environments WHERE name = ?1", [name])?;
        if deleted == 0 {
            return Err(StoreError::UnknownEnvironment(name.to_owned()));
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether the environment's services are still to take its parent's data, at its next
    /// deployment.
    pub fn clone_pending(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT clone_pending FROM environments WHERE name = ?1",
                [name],
                |row| row.get(0),
            )?)
        })
    }

    pub fn set_clone_pending(&self, name: &str, pending: bool) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE environments SET clone_pending = ?2 WHERE name = ?1",
                params![name, pending],
            )?;
            Ok(())
        })
    }

    /// The environment of that name, if there is one.
    pub fn find_environment_named(&self, name: &str) -> Result<Option<Environment>, StoreError> {
        self.find_environment("name", name)
    }

    pub fn environment_for_branch(&self, branch: &str) -> Result<Option<Environment>, StoreError> {
        self.find_environment("branch", branch)
    }

    fn find_environment(
        &self,
        column: &str,
        value: &str,
    ) -> Result<Option<Environment>, StoreError> {
        self.with(|c| {
            let sql = format!(
                "SELECT name, kind, branch, parent, generation, serving, previous, settings, created_at, uid, pending
                 FROM environments WHERE {column} = ?1"
            );
            c.query_row(&sql, [value], read_environment).optional()?.transpose()
        })
    }

    /// Takes the next generation of an environment: every deployment opens at a new one.
    pub fn next_generation(&self, environment: &str) -> Result<Generation, StoreError> {
        self.with(|c| {
            let updated = c.execute(
                "UPDATE environments SET generation = generation + 1 WHERE name = ?1",
                [environment],
            )?;
            if updated == 0 {
                return Err(StoreError::UnknownEnvironment(environment.to_owned()));
            }
            Ok(Generation(c.query_row(
                "SELECT generation FROM environments WHERE name = ?1",
                [environment],
                |row| row.get::<_, u64>(0),
            )?))
        })
    }

    /// Records what an environment serves after a deployment; the release it replaces becomes
    /// the rollback target.
    pub fn set_serving(
        &self,
        environment: &str,
        serving: Option<&lockstep_deploy::Release>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let current: Option<String> = c.query_row(
                "SELECT serving FROM environments WHERE name = ?1",
                [environment],
                |row| row.get(0),
            )?;
            let current: Option<lockstep_deploy::Release> =
                serde_json::from_str(current.as_deref().unwrap_or("null"))?;
            let changed = current.as_ref().map(|r| &r.image) != serving.map(|r| &r.image);
            if changed && current.is_some() {
                c.execute(
                    "UPDATE environments SET previous = ?2 WHERE name = ?1",
                    params![environment, serde_json::to_string(&current)?],
                )?;
            }
            c.execute(
                "UPDATE environments SET serving = ?2 WHERE name = ?1",
                params![environment, serde_json::to_string(&serving)?],
            )?;
            Ok(())
        })
    }

    pub fn set_settings(
        &self,
        environment: &str,
        settings: &EnvSettings,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE environments SET settings = ?2 WHERE name = ?1",
                params![environment, serde_json::to_string(settings)?],
            )?;
            Ok(())
        })
    }

    pub fn nodes(&self, environment: &str) -> Result<Vec<Node>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT environment, name, position, agent_url, router_port, app_routers FROM nodes
                 WHERE environment = ?1 ORDER BY position",
            )?;
            let rows = statement.query_map([environment], |row| {
                Ok((
                    Node {
                        environment: row.get(0)?,
                        name: row.get(1)?,
                        position: row.get(2)?,
                        agent_url: row.get(3)?,
                        router_port: row.get(4)?,
                        app_routers: BTreeMap::new(),
                    },
                    row.get::<_, String>(5)?,
                ))
            })?;
            let mut nodes = Vec::new();
            for row in rows {
                let (mut node, app_routers) = row?;
                node.app_routers = serde_json::from_str(&app_routers)?;
                nodes.push(node);
            }
            Ok(nodes)
        })
    }

    /// Points node `node`, in the registry and in every environment, at `agent_url`; how many
    /// environments it moved.
    pub fn move_agent(&self, node: &str, agent_url: &str) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE cluster_nodes SET agent_url = ?2 WHERE name = ?1",
                params![node, agent_url],
            )?;
            Ok(c.execute(
                "UPDATE nodes SET agent_url = ?2 WHERE name = ?1 AND agent_url != ?2",
                params![node, agent_url],
            )?)
        })
    }

    /// Records where the router of `app`'s instance (`Node::router_of`) listens on `node`.
    pub fn set_router_port(
        &self,
        environment: &str,
        node: &str,
        app: Option<&str>,
        port: u16,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            match app {
                None => c.execute(
                    "UPDATE nodes SET router_port = ?3 WHERE environment = ?1 AND name = ?2",
                    params![environment, node, port],
                )?,
                Some(app) => c.execute(
                    "UPDATE nodes SET app_routers = json_set(app_routers, '$.' || json_quote(?3), ?4)
                     WHERE environment = ?1 AND name = ?2",
                    params![environment, node, app, port],
                )?,
            };
            Ok(())
        })
    }

    pub fn services(&self, environment: &str) -> Result<Vec<StoredService>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT name, engine, version, password, primary_node, primary_address FROM services WHERE environment = ?1 ORDER BY name",
            )?;
            let rows = statement.query_map([environment], |row| {
                Ok((
                    (
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ),
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })?;
            let mut services = Vec::new();
            for row in rows {
                let ((name, engine, version, password), primary_node, primary_address) = row?;
                services.push(StoredService {
                    name,
                    engine: serde_json::from_value(serde_json::Value::String(engine))?,
                    version,
                    password,
                    primary_node,
                    primary_address,
                });
            }
            Ok(services)
        })
    }

    /// Records a service the first time an environment declares it; a service already recorded
    /// stays as it was.
    pub fn add_service(
        &self,
        environment: &str,
        service: &StoredService,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO services (environment, name, engine, version, password, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    environment,
                    service.name,
                    service.engine.as_str(),
                    service.version,
                    service.password,
                    timestamp(Utc::now())
                ],
            )?;
            Ok(())
        })
    }

    /// Records where the primary of `service` runs: on `node` from now on (a promotion), and
    /// listening at `address` (as just placed); `None` leaves that part as it was.
    pub fn set_service_primary(
        &self,
        environment: &str,
        service: &str,
        node: Option<&str>,
        address: Option<&str>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE services SET primary_node = coalesce(?3, primary_node), primary_address = coalesce(?4, primary_address) WHERE environment = ?1 AND name = ?2",
                params![environment, service, node, address],
            )?;
            Ok(())
        })
    }

    pub fn record_image(&self, manifest: &lockstep_image::Manifest) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO images (id, tree_id, manifest, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    manifest.id.as_str(),
                    manifest.info.tree_id,
                    serde_json::to_string(manifest)?,
                    timestamp(Utc::now()),
                ],
            )?;
            Ok(())
        })
    }

    pub fn create_activity(
        &self,
        kind: &str,
        environment: &str,
        description: &str,
    ) -> Result<Activity, StoreError> {
        self.with(|c| {
            let seq: u64 = c.query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM activities",
                [],
                |r| r.get(0),
            )?;
            let activity = Activity {
                id: format!("a{seq:06}"),
                kind: kind.to_owned(),
                environment: environment.to_owned(),
                state: "pending".into(),
                result: None,
                description: description.to_owned(),
                image: None,
                created_at: timestamp(Utc::now()),
                completed_at: None,
                phases: Vec::new(),
            };
            c.execute(
                "INSERT INTO activities (id, seq, kind, environment, state, description, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    activity.id,
                    seq,
                    activity.kind,
                    activity.environment,
                    activity.state,
                    activity.description,
                    activity.created_at
                ],
            )?;
            Ok(activity)
        })
    }

    pub fn activities(
        &self,
        environment: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Activity>, StoreError> {
        // Two statements, so that SQLite uses the index by environment for one.
        match environment {
            Some(environment) => self.activities_where(
                "environment = ?1 ORDER BY seq DESC LIMIT ?2",
                params![environment, limit],
            ),
            None => self.activities_where("1 ORDER BY seq DESC LIMIT ?1", params![limit]),
        }
    }

    /// The activities under way now, of every environment.
    pub fn running_activities(&self) -> Result<Vec<Activity>, StoreError> {
        self.activities_where("state = 'in_progress' ORDER BY seq DESC", [])
    }

    fn activities_where(
        &self,
        condition: &str,
        parameters: impl rusqlite::Params,
    ) -> Result<Vec<Activity>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(&format!(
                "SELECT id, kind, environment, state, result, description, image, created_at, completed_at, phases
                 FROM activities WHERE {condition}"
            ))?;
            let rows = statement.query_map(parameters, read_activity)?;
            let mut activities = Vec::new();
            for row in rows {
                activities.push(row??);
            }
            Ok(activities)
        })
    }

    pub fn activity(&self, id: &str) -> Result<Activity, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, kind, environment, state, result, description, image, created_at, completed_at, phases
                 FROM activities WHERE id = ?1",
                [id],
                read_activity,
            )
            .optional()?
            .transpose()?
            .ok_or_else(|| StoreError::UnknownActivity(id.to_owned()))
        })
    }

    /// Activities not finished when the controller stopped.
    pub fn unfinished_activities(&self) -> Result<Vec<Activity>, StoreError> {
        Ok(self
            .activities(None, u32::MAX)?
            .into_iter()
            .filter(|a| a.state != "complete" && a.state != "cancelled")
            .rev()
            .collect())
    }

    pub fn set_activity_image(&self, id: &str, image: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE activities SET image = ?2 WHERE id = ?1",
                params![id, image],
            )?;
            Ok(())
        })
    }

    pub fn set_activity_data(&self, id: &str, data: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE activities SET data = ?2 WHERE id = ?1",
                params![id, data],
            )?;
            Ok(())
        })
    }

    /// The data activity `id` puts in place of its environment's, if any.
    pub fn activity_data(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT data FROM activities WHERE id = ?1", [id], |row| {
                    row.get(0)
                })
                .optional()?
                .flatten(),
            )
        })
    }

    pub fn set_activity_state(&self, id: &str, state: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE activities SET state = ?2 WHERE id = ?1",
                params![id, state],
            )?;
            Ok(())
        })
    }

    pub fn finish_activity(&self, id: &str, state: &str, result: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE activities SET state = ?2, result = ?3, completed_at = ?4 WHERE id = ?1",
                params![id, state, result, timestamp(Utc::now())],
            )?;
            Ok(())
        })
    }

    pub fn phase_started(&self, id: &str, phase: &str) -> Result<(), StoreError> {
        self.update_phases(id, |phases| {
            phases.push(PhaseTiming {
                name: phase.to_owned(),
                started_at: timestamp(Utc::now()),
                ended_at: None,
            });
        })
    }

    pub fn phase_ended(&self, id: &str, phase: &str) -> Result<(), StoreError> {
        self.update_phases(id, |phases| {
            if let Some(timing) = phases
                .iter_mut()
                .rev()
                .find(|p| p.name == phase && p.ended_at.is_none())
            {
                timing.ended_at = Some(timestamp(Utc::now()));
            }
        })
    }

    fn update_phases(
        &self,
        id: &str,
        change: impl FnOnce(&mut Vec<PhaseTiming>),
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let text: String =
                c.query_row("SELECT phases FROM activities WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
            let mut phases: Vec<PhaseTiming> = serde_json::from_str(&text)?;
            change(&mut phases);
            c.execute(
                "UPDATE activities SET phases = ?2 WHERE id = ?1",
                params![id, serde_json::to_string(&phases)?],
            )?;
            Ok(())
        })
    }

    pub fn append_log(&self, id: &str, line: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE activities SET log = log || ?2 || char(10) WHERE id = ?1",
                params![id, line],
            )?;
            Ok(())
        })
    }

    pub fn log(&self, id: &str) -> Result<String, StoreError> {
        self.with(|c| {
            c.query_row("SELECT log FROM activities WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::UnknownActivity(id.to_owned()))
        })
    }

    /// Appends a journal record, committed before it returns.
    pub fn append_journal(
        &self,
        deployment: &str,
        record: &lockstep_deploy::Record,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO journal (deployment, seq, record)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE deployment = ?1), ?2)",
                params![deployment, serde_json::to_string(record)?],
            )?;
            Ok(())
        })
    }

    pub fn journal(&self, deployment: &str) -> Result<Vec<lockstep_deploy::Record>, StoreError> {
        self.with(|c| {
            let mut statement =
                c.prepare("SELECT record FROM journal WHERE deployment = ?1 ORDER BY seq")?;
            let rows = statement.query_map([deployment], |row| row.get::<_, String>(0))?;
            let mut records = Vec::new();
            for row in rows {
                records.push(serde_json::from_str(&row?)?);
            }
            Ok(records)
        })
    }
}

/// A variable as stored: `stored` is the value's text, sealed when sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVariable {
    /// Empty for a project-level variable.
    pub environment: String,
    pub name: String,
    pub stored: String,
    pub sensitive: bool,
    pub json: bool,
    pub visible_build: bool,
    pub visible_runtime: bool,
    pub inheritable: bool,
    pub updated_at: String,
}

impl Store {
    pub fn put_variable(&self, variable: &StoredVariable) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO variables (environment, name, stored, sensitive, json, visible_build, visible_runtime, inheritable, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (environment, name) DO UPDATE SET stored = ?3, sensitive = ?4, json = ?5,
                   visible_build = ?6, visible_runtime = ?7, inheritable = ?8, updated_at = ?9",
                params![
                    variable.environment,
                    variable.name,
                    variable.stored,
                    variable.sensitive,
                    variable.json,
                    variable.visible_build,
                    variable.visible_runtime,
                    variable.inheritable,
                    variable.updated_at
                ],
            )?;
            Ok(())
        })
    }

    pub fn delete_variable(&self, environment: &str, name: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM variables WHERE environment = ?1 AND name = ?2",
                params![environment, name],
            )? > 0)
        })
    }

    /// The variables set at one level (`""` for the project), by name.
    pub fn variables(&self, environment: &str) -> Result<Vec<StoredVariable>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT environment, name, stored, sensitive, json, visible_build, visible_runtime, inheritable, updated_at
                 FROM variables WHERE environment = ?1 ORDER BY name",
            )?;
            let rows = statement.query_map([environment], |row| {
                Ok(StoredVariable {
                    environment: row.get(0)?,
                    name: row.get(1)?,
                    stored: row.get(2)?,
                    sensitive: row.get(3)?,
                    json: row.get(4)?,
                    visible_build: row.get(5)?,
                    visible_runtime: row.get(6)?,
                    inheritable: row.get(7)?,
                    updated_at: row.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

/// A user as stored: the token only as its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub email: String,
    pub roles: crate::access::Roles,
    pub token_hash: String,
    pub ssh_keys: Vec<String>,
    pub created_at: String,
}

impl Store {
    pub fn put_user(&self, user: &StoredUser) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO users (email, roles, token_hash, ssh_keys, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (email) DO UPDATE SET roles = ?2, token_hash = ?3, ssh_keys = ?4",
                params![
                    user.email,
                    serde_json::to_string(&user.roles)?,
                    user.token_hash,
                    serde_json::to_string(&user.ssh_keys)?,
                    user.created_at
                ],
            )?;
            Ok(())
        })
    }

    pub fn delete_user(&self, email: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM users WHERE email = ?1", [email])? > 0))
    }

    pub fn users(&self) -> Result<Vec<StoredUser>, StoreError> {
        // `?1 IS NULL` holds for the absent value: every user.
        self.find_users("?1 IS NULL", None)
    }

    pub fn user(&self, email: &str) -> Result<Option<StoredUser>, StoreError> {
        Ok(self.find_users("email = ?1", Some(email))?.pop())
    }

    pub fn user_by_token_hash(&self, hash: &str) -> Result<Option<StoredUser>, StoreError> {
        Ok(self.find_users("token_hash = ?1", Some(hash))?.pop())
    }

    fn find_users(
        &self,
        condition: &str,
        value: Option<&str>,
    ) -> Result<Vec<StoredUser>, StoreError> {
        self.with(|c| {
            let sql = format!(
                "SELECT email, roles, token_hash, ssh_keys, created_at FROM users WHERE {condition} ORDER BY email"
            );
            let mut statement = c.prepare(&sql)?;
            let rows = statement.query_map([value], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                ))
            })?;
            let mut users = Vec::new();
            for row in rows {
                let (email, roles, token_hash, keys, created_at) = row?;
                users.push(StoredUser {
                    email,
                    roles: serde_json::from_str(&roles)?,
                    token_hash,
                    ssh_keys: serde_json::from_str(&keys)?,
                    created_at,
                });
            }
            Ok(users)
        })
    }
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let version: usize = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = connection.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}

type Row<T> = Result<T, StoreError>;

fn read_environment(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row<Environment>> {
    let kind: String = row.get(1)?;
    let serving: Option<String> = row.get(5)?;
    let previous: Option<String> = row.get(6)?;
    let settings: String = row.get(7)?;
    let parse = || -> Row<Environment> {
        Ok(Environment {
            name: row.get(0)?,
            kind: serde_json::from_value(serde_json::Value::String(kind))?,
            branch: row.get(2)?,
            parent: row.get(3)?,
            generation: Generation(row.get(4)?),
            serving: serde_json::from_str(serving.as_deref().unwrap_or("null"))?,
            previous: serde_json::from_str(previous.as_deref().unwrap_or("null"))?,
            settings: serde_json::from_str(&settings)?,
            created_at: row.get(8)?,
            uid: row.get(9)?,
            pending: row.get(10)?,
        })
    };
    Ok(parse())
}

fn read_activity(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row<Activity>> {
    let phases: String = row.get(9)?;
    let parse = || -> Row<Activity> {
        Ok(Activity {
            id: row.get(0)?,
            kind: row.get(1)?,
            environment: row.get(2)?,
            state: row.get(3)?,
            result: row.get(4)?,
            description: row.get(5)?,
            image: row.get(6)?,
            created_at: row.get(7)?,
            completed_at: row.get(8)?,
            phases: serde_json::from_str(&phases)?,
        })
    };
    Ok(parse())
}
