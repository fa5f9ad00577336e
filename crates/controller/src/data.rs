//! An environment's data copied from another's (SPEC section 10): a new development
//! environment starts from its parent's shared storage and services. A service's data goes as a
//! consistent snapshot that its primary takes while it serves, streamed through the controller
//! into the other environment's primary, which then gets its own users and passwords.
//!
//! A running environment's data is replaced only inside a deployment of its serving release
//! (`Plan::data`), whose state machine asks for it once every node is closed: a backup
//! restored (`backup BACKUP`), or its parent's data synced (`environment PARENT`). `DataCopy`
//! is what that replacement copies, worked out before the deployment starts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lockstep_supervisor::RunAs;

use crate::{Controller, ControllerError, Environment, builds};

/// How long copying one service's data may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);

impl Controller {
    /// A new development environment starts as a clone of its parent's shared storage, as on
    /// Platform.sh, given to the new environment's own user; said in `activity`'s log with its
    /// size and time.
    pub(crate) fn clone_storage(
        &self,
        parent: &str,
        env: &Environment,
        activity: &str,
    ) -> Result<(), ControllerError> {
        let environment = env.name.as_str();
        let (from, to) = (
            self.storage.of(&self.store.environment(parent)?),
            self.storage.of(env),
        );
        if !from.exists() || to.exists() {
            return Ok(());
        }
        let started = Instant::now();
        copy_tree(&from, &to)?;
        // Nothing runs in the copy yet, so no link can appear in it while it changes hands.
        lockstep_supervisor::give_tree(&to, builds::app_user(env)).map_err(ControllerError::io(
            format!("give {} to environment {environment}", to.display()),
        ))?;
        self.store.append_log(
            activity,
            &format!(
                "Storage cloned from {parent}: {} in {:.1} s",
                human_bytes(lockstep_supervisor::tree_bytes(&to)),
                started.elapsed().as_secs_f64()
            ),
        )?;
        Ok(())
    }

    /// Gives each service of `env` (as `release` declares them, placed already) the data of its
    /// parent's service of the same name, engine and version, once, at the environment's first
    /// deployment; says each copy, with its size and time, in `activity`'s log.
    pub(crate) async fn clone_services(
        &self,
        env: &Environment,
        release: &str,
        activity: &str,
    ) -> Result<(), ControllerError> {
        if !self.store.clone_pending(&env.name)? {
            return Ok(());
        }
        let Some(parent) = env.parent.as_deref() else {
            return Ok(());
        };
        let parent_env = self.store.environment(parent)?;
        let own = self.store.services(&env.name)?;
        let Some(parent_serving) = parent_env.serving.as_ref().filter(|_| !own.is_empty()) else {
            self.store.set_clone_pending(&env.name, false)?;
            return Ok(());
        };
        self.store.phase_started(activity, "clone")?;
        let theirs = self.store.services(parent)?;
        let (nodes, parent_nodes) = (self.store.nodes(&env.name)?, self.store.nodes(parent)?);
        let instance = self.services_instance(&env.name, release)?;
        let parent_instance = self.services_instance(parent, &parent_serving.image)?;
        for service in &own {
            let Some(their) = same_service(&theirs, service) else {
                self.store.append_log(
                    activity,
                    &format!(
                        "Service {} starts empty: {parent} has no {} {} of that name",
                        service.name,
                        service.engine.as_str(),
                        service.version
                    ),
                )?;
                continue;
            };
            let node_of = |nodes: &[crate::Node], primary: Option<&str>| {
                nodes
                    .iter()
                    .find(|n| Some(n.name.as_str()) == primary)
                    .cloned()
            };
            let (Some(to), Some(from)) = (
                node_of(&nodes, service.primary_on(&nodes)),
                node_of(&parent_nodes, their.primary_on(&parent_nodes)),
            ) else {
                continue;
            };
            let started = Instant::now();
            let bytes = self
                .agents
                .copy_service_data(
                    (&from.agent_url, &parent_instance),
                    (&to.agent_url, &instance),
                    &service.name,
                    COPY_TIMEOUT,
                )
                .await
                .map_err(|error| ControllerError::Agent {
                    node: to.name.clone(),
                    message: format!(
                        "service {} could not take {parent}'s data from {}: {error}",
                        service.name, from.name
                    ),
                })?;
            self.store.append_log(
                activity,
                &format!(
                    "Service {} cloned from {parent} on {}: {} in {:.1} s",
                    service.name,
                    from.name,
                    human_bytes(bytes),
                    started.elapsed().as_secs_f64()
                ),
            )?;
        }
        self.store.set_clone_pending(&env.name, false)?;
        self.store.phase_ended(activity, "clone")?;
        Ok(())
    }
}

/// Where a data replacement takes its data from, as `Plan::data` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DataSource {
    /// One of the environment's backups, by id.
    Backup(String),
    /// Another environment's services and storage, as they are when the copy is taken, then
    /// a command run against the copy before it opens (`--sanitize`).
    Environment {
        name: String,
        sanitize: Option<String>,
    },
}

/// Between an environment's name and its sanitize command in a `DataSource`'s name.
const SANITIZED_BY: &str = ", sanitized by: ";

impl DataSource {
    /// As `Plan::data` names it, and the activity log says it.
    pub fn name(&self) -> String {
        match self {
            DataSource::Backup(id) => format!("backup {id}"),
            DataSource::Environment {
                name,
                sanitize: None,
            } => format!("environment {name}"),
            DataSource::Environment {
                name,
                sanitize: Some(command),
            } => format!("environment {name}{SANITIZED_BY}{command}"),
        }
    }

    pub fn parse(name: &str) -> Option<DataSource> {
        match name.split_once(' ')? {
            ("backup", id) => Some(DataSource::Backup(id.to_owned())),
            // Environment names have no space.
            ("environment", rest) => Some(match rest.split_once(SANITIZED_BY) {
                Some((env, command)) => DataSource::Environment {
                    name: env.to_owned(),
                    sanitize: Some(command.to_owned()),
                },
                None => DataSource::Environment {
                    name: rest.to_owned(),
                    sanitize: None,
                },
            }),
            _ => None,
        }
    }
}

/// What a data replacement copies into an environment.
#[derive(Debug, Clone)]
pub(crate) struct DataCopy {
    services: Vec<ServiceCopy>,
    storage: Option<StorageCopy>,
    sanitize: Option<Sanitize>,
}

/// A command run in the environment's app runtime, against the copy, before it opens.
#[derive(Debug, Clone)]
struct Sanitize {
    agent: String,
    instance: String,
    command: String,
}

#[derive(Debug, Clone)]
struct ServiceCopy {
    name: String,
    /// The primary that takes the data: its agent and the instance answering for services.
    to: (String, String),
    /// The agents of the nodes with a replica, which copy the new data from the primary.
    replicas: Vec<String>,
    from: ServiceData,
}

#[derive(Debug, Clone)]
enum ServiceData {
    File(PathBuf),
    Primary { agent: String, instance: String },
}

#[derive(Debug, Clone)]
struct StorageCopy {
    from: PathBuf,
    to: PathBuf,
    user: RunAs,
}

impl Controller {
    /// Queues the redeployment of what `env` serves (when it starts) that puts `source` in
    /// place of its data while every node is closed; its activity.
    pub(crate) fn queue_data_replacement(
        self: &std::sync::Arc<Self>,
        env: &Environment,
        source: DataSource,
        kind: &str,
        description: &str,
    ) -> Result<crate::Activity, ControllerError> {
        // An environment left closed by a replacement that failed has no release serving: the
        // one before is what a restore brings back.
        let Some(serving) = env.serving.clone().or(env.previous.clone()) else {
            return Err(ControllerError::NothingDeployed(env.name.clone()));
        };
        // Worked out now too, so that a request that cannot be carried out is refused at once.
        self.data_copy(&env.name, &serving.image, &source)?;
        let activity = self.store.create_activity(kind, &env.name, description)?;
        self.store
            .set_activity_image(&activity.id, &serving.image)?;
        self.store.set_activity_data(&activity.id, &source.name())?;
        self.enqueue(crate::DeployJob {
            activity: activity.id.clone(),
            environment: env.name.clone(),
            image: serving.image,
            rebuild_from: None,
            data: Some(source.name()),
        });
        Ok(activity)
    }

    /// What replacing `environment`'s data (running `release`) with `source` copies.
    pub(crate) fn data_copy(
        &self,
        environment: &str,
        release: &str,
        source: &DataSource,
    ) -> Result<DataCopy, ControllerError> {
        let env = self.store.environment(environment)?;
        let nodes = self.store.nodes(environment)?;
        let instance = self.services_instance(environment, release)?;
        let primary_of = |service: &crate::store::StoredService, nodes: &[crate::Node]| {
            service
                .primary_on(nodes)
                .and_then(|name| nodes.iter().find(|n| n.name == name))
                .map(|node| node.agent_url.clone())
        };
        let replicas_of = |service: &crate::store::StoredService| -> Vec<String> {
            let primary = service.primary_on(&nodes);
            nodes
                .iter()
                .filter(|node| Some(node.name.as_str()) != primary)
                .map(|node| node.agent_url.clone())
                .collect()
        };
        let mut services = Vec::new();
        let storage_from = match source {
            DataSource::Backup(id) => {
                let dir = self
                    .options
                    .data_dir
                    .join("backups")
                    .join(environment)
                    .join(id);
                let backup = self
                    .backups_of(environment)?
                    .into_iter()
                    .find(|backup| backup.id == *id)
                    .ok_or_else(|| {
                        ControllerError::Environment(format!(
                            "{environment} has no backup {id}; `lockstep backup list {environment}` lists them"
                        ))
                    })?;
                for service in self.store.services(environment)? {
                    let Some(agent) = primary_of(&service, &nodes) else {
                        continue;
                    };
                    if backup.services.iter().any(|s| s.name == service.name) {
                        services.push(ServiceCopy {
                            to: (agent, instance.clone()),
                            replicas: replicas_of(&service),
                            from: ServiceData::File(dir.join(format!("{}.snapshot", service.name))),
                            name: service.name.clone(),
                        });
                    }
                }
                dir.join("storage")
            }
            DataSource::Environment { name: other, .. } => {
                let other_env = self.store.environment(other)?;
                let Some(serving) = other_env.serving.clone() else {
                    return Err(ControllerError::NothingDeployed(other.clone()));
                };
                let other_instance = self.services_instance(other, &serving.image)?;
                let (theirs, their_nodes) = (self.store.services(other)?, self.store.nodes(other)?);
                for service in self.store.services(environment)? {
                    let (Some(agent), Some(their_agent)) = (
                        primary_of(&service, &nodes),
                        same_service(&theirs, &service)
                            .and_then(|their| primary_of(their, &their_nodes)),
                    ) else {
                        continue;
                    };
                    services.push(ServiceCopy {
                        name: service.name.clone(),
                        to: (agent, instance.clone()),
                        replicas: replicas_of(&service),
                        from: ServiceData::Primary {
                            agent: their_agent,
                            instance: other_instance.clone(),
                        },
                    });
                }
                self.storage.of(&other_env)
            }
        };
        let storage = storage_from.exists().then(|| StorageCopy {
            from: storage_from,
            to: self.storage.of(&env),
            user: builds::app_user(&env),
        });
        let sanitize = match source {
            DataSource::Environment {
                sanitize: Some(command),
                ..
            } => Some(Sanitize {
                agent: nodes
                    .first()
                    .map(|node| node.agent_url.clone())
                    .unwrap_or_default(),
                instance: self.app_instances(environment, release)?.remove(0).instance,
                command: command.clone(),
            }),
            _ => None,
        };
        Ok(DataCopy {
            services,
            storage,
            sanitize,
        })
    }
}

impl DataCopy {
    /// Puts the data in place: each service's into its primary, whose replicas then copy it
    /// again; then the storage. Every node is closed and quiesced meanwhile, so nothing of the
    /// environment writes.
    pub(crate) async fn carry_out(
        &self,
        agents: &crate::agents::AgentClient,
    ) -> Result<(), crate::agents::CallError> {
        use crate::agents::Call;
        for service in &self.services {
            let to = (service.to.0.as_str(), service.to.1.as_str());
            // Every replica goes before the primary changes: a Galera member still running
            // would keep the old cluster, which another could rejoin.
            service
                .on_replicas(agents, |name| Call::DiscardReplica(name))
                .await?;
            match &service.from {
                ServiceData::File(file) => {
                    agents
                        .restore_from_file(to, &service.name, file, COPY_TIMEOUT)
                        .await?;
                }
                ServiceData::Primary { agent, instance } => {
                    agents
                        .copy_service_data((agent, instance), to, &service.name, COPY_TIMEOUT)
                        .await?;
                }
            }
            service
                .on_replicas(agents, |name| Call::StartService(name))
                .await?;
        }
        let failed =
            |why: String| crate::agents::CallError::Node(lockstep_deploy::NodeFailure::Failed(why));
        if let Some(storage) = &self.storage {
            replace_storage(storage).map_err(|error| failed(error.to_string()))?;
        }
        if let Some(sanitize) = &self.sanitize {
            let request = lockstep_proto::agent::ExecRequest {
                command: sanitize.command.clone(),
                user: "lockstep (sanitize)".into(),
            };
            let outcome: lockstep_proto::agent::ExecOutcome = agents
                .call(
                    &sanitize.agent,
                    &sanitize.instance,
                    Call::Exec(&request),
                    COPY_TIMEOUT,
                )
                .await?;
            if outcome.exit_code != Some(0) {
                return Err(failed(format!(
                    "the sanitize command failed ({}): {}",
                    outcome
                        .exit_code
                        .map_or("no exit status".into(), |code| format!(
                            "exit status {code}"
                        )),
                    outcome.output.trim_end()
                )));
            }
        }
        Ok(())
    }
}

impl ServiceCopy {
    /// Asks each replica of the service for `call`, one after the other.
    async fn on_replicas(
        &self,
        agents: &crate::agents::AgentClient,
        call: impl for<'a> Fn(&'a str) -> crate::agents::Call<'a>,
    ) -> Result<(), crate::agents::CallError> {
        for replica in &self.replicas {
            let _: Vec<lockstep_proto::agent::ServiceStatus> = agents
                .call(replica, &self.to.1, call(&self.name), COPY_TIMEOUT)
                .await?;
        }
        Ok(())
    }
}

/// The environment's storage replaced by a copy of another: the old one is set aside until the
/// copy is whole and given to the environment's user.
fn replace_storage(copy: &StorageCopy) -> Result<(), ControllerError> {
    let incoming = copy.to.with_extension("incoming");
    let replaced = copy.to.with_extension("replaced");
    for leftover in [&incoming, &replaced] {
        let _ = std::fs::remove_dir_all(leftover);
    }
    copy_tree(&copy.from, &incoming)?;
    lockstep_supervisor::give_tree(&incoming, copy.user)
        .map_err(ControllerError::io(format!("give {}", incoming.display())))?;
    if copy.to.exists() {
        std::fs::rename(&copy.to, &replaced).map_err(ControllerError::io(format!(
            "set {} aside",
            copy.to.display()
        )))?;
    }
    std::fs::rename(&incoming, &copy.to).map_err(ControllerError::io(format!(
        "put {} in place",
        copy.to.display()
    )))?;
    let _ = std::fs::remove_dir_all(&replaced);
    Ok(())
}

/// Another environment's service whose data `service` can take: the same name, engine and
/// version (a data folder is only read by the engine and version that made it).
fn same_service<'a>(
    theirs: &'a [crate::store::StoredService],
    service: &crate::store::StoredService,
) -> Option<&'a crate::store::StoredService> {
    theirs.iter().find(|their| {
        their.name == service.name
            && their.engine == service.engine
            && their.version == service.version
    })
}

/// A copy of folder `from` at `to` (`lockstep_supervisor::copy_tree`).
pub(crate) fn copy_tree(
    from: &std::path::Path,
    to: &std::path::Path,
) -> Result<(), ControllerError> {
    lockstep_supervisor::copy_tree(from, to).map_err(ControllerError::io(format!(
        "copy {} to {}",
        from.display(),
        to.display()
    )))
}

/// `12.3 MB`, `512 kB`, `840 B`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{} kB", bytes / 1_000),
        _ => format!("{:.1} MB", bytes as f64 / 1_000_000.0),
    }
}
