//! Backups (SPEC section 10): `lockstep backup create ENV` keeps a consistent snapshot of each
//! of the environment's services, taken by its primary while it serves (as a new environment's
//! clone is), and a copy of its shared storage, in `backups/<env>/<id>/` of the controller's
//! data folder with a manifest; `lockstep backup list ENV` reads the manifests, newest first.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::access::{Action, Principal, allowed};
use crate::data::{copy_tree, human_bytes};
use crate::{Activity, Controller, ControllerError};

/// How long taking one service's snapshot may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);

const MANIFEST: &str = "manifest.json";

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The activity that took it.
    pub id: String,
    pub environment: String,
    pub created_at: String,
    /// The release the environment served then.
    pub release: String,
    pub services: Vec<BackedUpService>,
    /// Bytes of the shared storage's copy.
    pub storage_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackedUpService {
    pub name: String,
    pub engine: String,
    pub version: String,
    /// Bytes of its snapshot.
    pub bytes: u64,
}

impl Controller {
    fn backups_dir(&self, environment: &str) -> PathBuf {
        self.options.data_dir.join("backups").join(environment)
    }

    /// `lockstep backup create ENV`: the activity that takes it, queued with the environment's
    /// deployments; its id names the backup.
    pub fn create_backup(
        self: &std::sync::Arc<Self>,
        principal: &Principal,
        environment: &str,
    ) -> Result<Activity, ControllerError> {
        let env = self.store.environment(environment)?;
        if !allowed(principal, Action::Manage, env.kind) {
            return Err(ControllerError::Forbidden(format!(
                "{} may not back up {environment}: that takes the admin role on {} environments",
                principal.name(),
                env.kind.as_str()
            )));
        }
        if env.serving.is_none() {
            return Err(ControllerError::NothingDeployed(environment.to_owned()));
        }
        let activity = self.store.create_activity(
            "backup",
            environment,
            &format!("Backup of {environment}"),
        )?;
        self.enqueue(crate::orchestrator::Job::Backup {
            activity: activity.id.clone(),
            environment: environment.to_owned(),
        });
        Ok(activity)
    }

    /// Takes the backup of queued activity `id`, whole or not at all.
    pub(crate) async fn take_queued_backup(
        &self,
        id: &str,
        environment: &str,
    ) -> Result<(), ControllerError> {
        let env = self.store.environment(environment)?;
        let Some(serving) = env.serving else {
            return Err(ControllerError::NothingDeployed(environment.to_owned()));
        };
        self.store.set_activity_state(id, "in_progress")?;
        self.store.phase_started(id, "backup")?;
        let dir = self.backups_dir(environment).join(id);
        // What a controller that stopped meanwhile left of it.
        let _ = std::fs::remove_dir_all(&dir);
        let taken = self
            .take_backup(environment, &serving.image, &dir, id)
            .await;
        if taken.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        taken?;
        self.store.phase_ended(id, "backup")?;
        self.store.finish_activity(id, "complete", "success")?;
        Ok(())
    }

    async fn take_backup(
        &self,
        environment: &str,
        release: &str,
        dir: &std::path::Path,
        activity: &str,
    ) -> Result<(), ControllerError> {
        std::fs::create_dir_all(dir)
            .map_err(ControllerError::io(format!("create {}", dir.display())))?;
        let instance = self.services_instance(environment, release)?;
        let nodes = self.store.nodes(environment)?;
        let mut services = Vec::new();
        for service in self.store.services(environment)? {
            let Some(node) = service
                .primary_on(&nodes)
                .and_then(|name| nodes.iter().find(|n| n.name == name))
            else {
                continue;
            };
            let started = Instant::now();
            let file = dir.join(format!("{}.snapshot", service.name));
            let bytes = self
                .agents
                .save_snapshot(
                    (&node.agent_url, &instance),
                    &service.name,
                    &file,
                    SNAPSHOT_TIMEOUT,
                )
                .await
                .map_err(ControllerError::agent(node))?;
            self.store.append_log(
                activity,
                &format!(
                    "Service {} on {}: {} in {:.1} s",
                    service.name,
                    node.name,
                    human_bytes(bytes),
                    started.elapsed().as_secs_f64()
                ),
            )?;
            services.push(BackedUpService {
                name: service.name.clone(),
                engine: service.engine.as_str().to_owned(),
                version: service.version.clone(),
                bytes,
            });
        }
        let storage = self.storage.of(&self.store.environment(environment)?);
        let mut storage_bytes = 0;
        if storage.exists() {
            let copy = dir.join("storage");
            copy_tree(&storage, &copy)?;
            storage_bytes = lockstep_supervisor::tree_bytes(&copy);
            self.store.append_log(
                activity,
                &format!("Storage: {}", human_bytes(storage_bytes)),
            )?;
        }
        let backup = Backup {
            id: activity.to_owned(),
            environment: environment.to_owned(),
            created_at: crate::store::timestamp(chrono::Utc::now()),
            release: release.to_owned(),
            services,
            storage_bytes,
        };
        let manifest = serde_json::to_vec_pretty(&backup).expect("a backup serialises");
        // Written last: a backup without its manifest is none.
        lockstep_durable::replace_private(&dir.join(MANIFEST), &manifest, None)
            .map_err(ControllerError::io("write the backup's manifest"))?;
        self.store.append_log(
            activity,
            &format!("Backup {activity} of {environment} taken"),
        )?;
        Ok(())
    }

    /// `lockstep backup restore ENV ID`: the environment closes as for a deploy, takes the
    /// backup's services and storage, and opens again; the activity that does it, queued.
    pub fn restore_backup(
        self: &std::sync::Arc<Self>,
        principal: &Principal,
        environment: &str,
        id: &str,
    ) -> Result<Activity, ControllerError> {
        let env = self.store.environment(environment)?;
        if !allowed(principal, Action::Manage, env.kind) {
            return Err(ControllerError::Forbidden(format!(
                "{} may not restore {environment}: that takes the admin role on {} environments",
                principal.name(),
                env.kind.as_str()
            )));
        }
        self.queue_data_replacement(
            &env,
            crate::data::DataSource::Backup(id.to_owned()),
            "restore",
            &format!("Restore of backup {id} to {environment}"),
        )
    }

    /// `lockstep backup list ENV`: the environment's backups, newest first.
    pub fn backups(
        &self,
        principal: &Principal,
        environment: &str,
    ) -> Result<Vec<Backup>, ControllerError> {
        let env = self.store.environment(environment)?;
        if !allowed(principal, Action::Read, env.kind) {
            return Err(ControllerError::Forbidden(format!(
                "{} may not see {environment}",
                principal.name()
            )));
        }
        self.backups_of(environment)
    }

    /// The environment's backups, newest first.
    pub(crate) fn backups_of(&self, environment: &str) -> Result<Vec<Backup>, ControllerError> {
        let dir = self.backups_dir(environment);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(ControllerError::io(format!("read {}", dir.display()))(
                    error,
                ));
            }
        };
        let mut backups: Vec<Backup> = entries
            .flatten()
            .filter_map(|entry| {
                let text = std::fs::read(entry.path().join(MANIFEST)).ok()?;
                serde_json::from_slice(&text).ok()
            })
            .collect();
        backups.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(backups)
    }
}
