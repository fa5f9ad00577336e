//! Environments made and removed on request (SPEC section 10): `lockstep env branch` makes a
//! development environment as a child of another, on a new branch at its parent's commit,
//! deployed with its parent's release and, unless asked not to, a copy of its parent's data;
//! `lockstep env delete` removes one, with its data, everywhere.

use std::sync::Arc;

use crate::access::{Action, Principal, allowed};
use crate::orchestrator::DeployJob;
use crate::{Activity, Controller, ControllerError, environment_name, git};

impl Controller {
    /// `lockstep env branch BRANCH --parent PARENT`: the new environment's deployment, queued.
    pub async fn branch(
        self: &Arc<Self>,
        principal: &Principal,
        parent: &str,
        branch: &str,
        clone_data: bool,
    ) -> Result<Activity, ControllerError> {
        let parent_env = self.store.environment(parent)?;
        let development = lockstep_proto::agent::EnvironmentType::Development;
        if !allowed(principal, Action::Push, development) {
            return Err(ControllerError::Forbidden(format!(
                "{} may not make development environments: that takes the contributor or admin role on development environments",
                principal.name()
            )));
        }
        if clone_data {
            self.may_read_data_of(parent, principal).map_err(|why| {
                ControllerError::Forbidden(format!("{why}; branch with --no-clone-data"))
            })?;
        }
        let Some(serving) = parent_env.serving.clone() else {
            return Err(ControllerError::NothingDeployed(parent.to_owned()));
        };
        let name = environment_name(branch).map_err(ControllerError::BranchName)?;
        if self.store.environment_for_branch(branch)?.is_some()
            || self.store.find_environment_named(&name)?.is_some()
        {
            return Err(ControllerError::BranchName(format!(
                "environment {name} (branch `{branch}`) exists already"
            )));
        }
        let repository = self.repository();
        let commit = git::branch_commit(&repository, &parent_env.branch)
            .map_err(ControllerError::io("read the repository"))?
            .ok_or_else(|| ControllerError::NothingDeployed(parent.to_owned()))?;
        git::create_branch(&repository, branch, &commit)
            .map_err(ControllerError::io(format!("make branch {branch}")))?;
        let env = self.new_development_environment(branch, parent)?;
        let activity = self.store.create_activity(
            "branch",
            &env.name,
            &format!("Branch of {parent} at {}", &commit[..commit.len().min(7)]),
        )?;
        let from = if clone_data {
            format!("as a clone of {parent}")
        } else {
            "with no data (--no-clone-data)".to_owned()
        };
        self.store.append_log(
            &activity.id,
            &format!(
                "Creating environment {} on branch {branch}, {from}",
                env.name
            ),
        )?;
        self.accept_environment(&env, clone_data, &activity.id)?;
        self.store
            .set_activity_image(&activity.id, &serving.image)?;
        self.enqueue(DeployJob {
            activity: activity.id.clone(),
            environment: env.name.clone(),
            image: serving.image,
            rebuild_from: None,
            data: None,
        });
        Ok(activity)
    }

    /// `lockstep env sync ENV --data`: the environment closes as for a deploy, takes its
    /// parent's services and storage as they are now, and opens again; the activity, queued.
    pub fn sync_data(
        self: &Arc<Self>,
        principal: &Principal,
        name: &str,
    ) -> Result<Activity, ControllerError> {
        let env = self.store.environment(name)?;
        let Some(parent) = env.parent.clone() else {
            return Err(ControllerError::Environment(format!(
                "{name} has no parent to sync from"
            )));
        };
        if !allowed(principal, Action::Manage, env.kind) {
            return Err(ControllerError::Forbidden(format!(
                "{} may not replace {name}'s data: that takes the admin role on {} environments",
                principal.name(),
                env.kind.as_str()
            )));
        }
        self.may_read_data_of(&parent, principal)
            .map_err(ControllerError::Forbidden)?;
        self.queue_data_replacement(
            &env,
            crate::data::DataSource::Environment {
                name: parent.clone(),
                sanitize: None,
            },
            "sync",
            &format!("Sync of {name}'s data from {parent}"),
        )
    }

    /// `lockstep env replicate --from SRC --to DST`: DST closes as for a deploy, takes SRC's
    /// services and storage as they are now, runs `sanitize` against them, and opens again; a
    /// production or staging DST only with `force`. The activity, queued.
    pub fn replicate(
        self: &Arc<Self>,
        principal: &Principal,
        from: &str,
        to: &str,
        force: bool,
        sanitize: Option<String>,
    ) -> Result<Activity, ControllerError> {
        let target = self.store.environment(to)?;
        self.store.environment(from)?;
        if from == to {
            return Err(ControllerError::Environment(format!(
                "{to} cannot take its own data"
            )));
        }
        if !allowed(principal, Action::Manage, target.kind) {
            return Err(ControllerError::Forbidden(format!(
                "{} may not replace {to}'s data: that takes the admin role on {} environments",
                principal.name(),
                target.kind.as_str()
            )));
        }
        self.may_read_data_of(from, principal)
            .map_err(ControllerError::Forbidden)?;
        let development = lockstep_proto::agent::EnvironmentType::Development;
        if target.kind != development && !force {
            return Err(ControllerError::Environment(format!(
                "{to} is a {} environment: replicating onto it replaces its live data; add --force if that is what you want",
                target.kind.as_str()
            )));
        }
        self.queue_data_replacement(
            &target,
            crate::data::DataSource::Environment {
                name: from.to_owned(),
                sanitize,
            },
            "replicate",
            &format!("Replication of {from}'s data to {to}"),
        )
    }

    /// `lockstep env delete ENV --yes`: removes a development environment from its nodes (its
    /// apps and services, with their data), its storage, backups, branch and route; its
    /// activities stay.
    /// Answers the activity that did it.
    pub async fn delete_environment(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<Activity, ControllerError> {
        let env = self.store.environment(name)?;
        let development = lockstep_proto::agent::EnvironmentType::Development;
        if env.kind != development {
            return Err(ControllerError::Environment(format!(
                "{name} is a {} cluster: only development environments are deleted",
                env.kind.as_str()
            )));
        }
        if !allowed(principal, Action::Manage, development) {
            return Err(ControllerError::Forbidden(format!(
                "{} may not delete {name}: that takes the admin role on development environments",
                principal.name()
            )));
        }
        let children: Vec<String> = self
            .store
            .environments_and_pending()?
            .into_iter()
            .filter(|other| other.parent.as_deref() == Some(name))
            .map(|other| other.name)
            .collect();
        if !children.is_empty() {
            return Err(ControllerError::Environment(format!(
                "{name} has child environments ({}): delete them first",
                children.join(", ")
            )));
        }
        if self.busy_environments().iter().any(|busy| busy == name) {
            return Err(ControllerError::Environment(format!(
                "a deployment of {name} is running or waiting: wait for it, or cancel it with `lockstep activity cancel`"
            )));
        }
        let activity =
            self.store
                .create_activity("delete", name, &format!("Deletion of {name}"))?;
        let id = activity.id.as_str();
        self.store.set_activity_state(id, "in_progress")?;
        self.store.phase_started(id, "delete")?;
        let removed = self.remove_everywhere(&env, id).await;
        if let Err(error) = &removed {
            self.store.append_log(id, &format!("Error: {error}"))?;
            self.store.finish_activity(id, "complete", "failure")?;
        }
        removed?;
        self.store
            .append_log(id, &format!("Environment {name} deleted"))?;
        self.store.phase_ended(id, "delete")?;
        self.store.finish_activity(id, "complete", "success")?;
        Ok(self.store.activity(id)?)
    }

    /// Everything of `env` outside the store, then its record.
    async fn remove_everywhere(
        &self,
        env: &crate::Environment,
        activity: &str,
    ) -> Result<(), ControllerError> {
        for node in self.store.nodes(&env.name)? {
            let instances = self
                .agents
                .delete_environment(&node.agent_url, &env.name)
                .await
                .map_err(ControllerError::agent(&node))?;
            self.store.append_log(
                activity,
                &format!(
                    "Removed from {}: {} instance(s) and the services, with their data",
                    node.name,
                    instances.len()
                ),
            )?;
        }
        if let Some(edge) = &self.edge {
            edge.delete(&env.name).await;
        }
        let data = &self.options.data_dir;
        for folder in [
            data.join("storage").join(&env.name),
            data.join("backups").join(&env.name),
            data.join("build/cache")
                .join(&self.options.project)
                .join(&env.name),
        ] {
            match std::fs::remove_dir_all(&folder) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(ControllerError::io(format!("remove {}", folder.display()))(
                        error,
                    ));
                }
            }
        }
        git::delete_branch(&self.repository(), &env.branch)
            .map_err(ControllerError::io(format!("remove branch {}", env.branch)))?;
        self.store.delete_environment(&env.name)?;
        Ok(())
    }
}
