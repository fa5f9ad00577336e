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

    /// `lockstep env sync ENV [--code] [--data]`: the parent's code merged into the
    /// environment's branch (built and deployed), and its services and storage as they are now
    /// put in place of the environment's while it is closed; the activity, queued.
    pub fn sync(
        self: &Arc<Self>,
        principal: &Principal,
        name: &str,
        code: bool,
        data: bool,
    ) -> Result<Activity, ControllerError> {
        let env = self.store.environment(name)?;
        let Some(parent) = env.parent.clone() else {
            return Err(ControllerError::Environment(format!(
                "{name} has no parent to sync from"
            )));
        };
        if !code && !data {
            return Err(ControllerError::Environment(
                "say what to sync: --code, --data, or both".into(),
            ));
        }
        if code && !allowed(principal, Action::Push, env.kind) {
            return Err(ControllerError::Forbidden(format!(
                "{} may not change {name}'s code: that takes the contributor or admin role on {} environments",
                principal.name(),
                env.kind.as_str()
            )));
        }
        let source = crate::data::DataSource::Environment {
            name: parent.clone(),
            sanitize: None,
        };
        if data {
            if !allowed(principal, Action::Manage, env.kind) {
                return Err(ControllerError::Forbidden(format!(
                    "{} may not replace {name}'s data: that takes the admin role on {} environments",
                    principal.name(),
                    env.kind.as_str()
                )));
            }
            self.may_read_data_of(&parent, principal)
                .map_err(ControllerError::Forbidden)?;
            if !code {
                return self.queue_data_replacement(
                    &env,
                    source,
                    "sync",
                    &format!("Sync of {name}'s data from {parent}"),
                );
            }
        }
        let Some(serving) = env.serving.clone().or(env.previous.clone()) else {
            return Err(ControllerError::NothingDeployed(name.to_owned()));
        };
        let parent_branch = self.store.environment(&parent)?.branch;
        let merged = git::merge_into(
            &self.repository(),
            &env.branch,
            &parent_branch,
            principal.name(),
        )
        .map_err(ControllerError::io(format!(
            "merge {parent_branch} into {}",
            env.branch
        )))?;
        let what = if data { "code and data" } else { "code" };
        let commit = match merged {
            git::Merged::Moved(commit) => commit,
            git::Merged::UpToDate if data => {
                return self.queue_data_replacement(
                    &env,
                    source,
                    "sync",
                    &format!("Sync of {name}'s data from {parent} (its code is up to date)"),
                );
            }
            git::Merged::UpToDate => {
                return Err(ControllerError::Environment(format!(
                    "{name}'s branch has every commit of {parent}'s already: nothing to sync"
                )));
            }
            git::Merged::Conflicts(files) => {
                return Err(ControllerError::Environment(format!(
                    "{parent}'s code and {name}'s both change {}: merge {} into {} yourself, resolve the conflicts and push; nothing was synced",
                    files.join(", "),
                    parent_branch,
                    env.branch
                )));
            }
        };
        let activity = self.store.create_activity(
            "sync",
            name,
            &format!(
                "Sync of {name}'s {what} from {parent} at {}",
                &commit[..commit.len().min(7)]
            ),
        )?;
        self.store.append_log(
            &activity.id,
            &format!(
                "Merged {parent_branch} into {}: {}",
                env.branch,
                &commit[..commit.len().min(12)]
            ),
        )?;
        if data {
            self.store.set_activity_data(&activity.id, &source.name())?;
        }
        self.enqueue(DeployJob {
            activity: activity.id.clone(),
            environment: name.to_owned(),
            image: serving.image,
            rebuild_from: Some(format!("refs/heads/{}", env.branch)),
            data: data.then(|| source.name()),
        });
        Ok(activity)
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
    /// activities stay. The activity that does it, queued behind the environment's deployments.
    pub fn delete_environment(
        self: &Arc<Self>,
        principal: &Principal,
        name: &str,
    ) -> Result<Activity, ControllerError> {
        let env = self.store.environment(name)?;
        let development = lockstep_proto::agent::EnvironmentType::Development;
        if !allowed(principal, Action::Manage, development) {
            return Err(ControllerError::Forbidden(format!(
                "{} may not delete {name}: that takes the admin role on development environments",
                principal.name()
            )));
        }
        self.check_deletable(&env)?;
        let activity =
            self.store
                .create_activity("delete", name, &format!("Deletion of {name}"))?;
        self.enqueue(crate::orchestrator::Job::Delete {
            activity: activity.id.clone(),
            environment: name.to_owned(),
        });
        Ok(activity)
    }

    /// Carries out queued deletion `id`, checked again: a child may have been made meanwhile.
    pub(crate) async fn delete_queued(&self, id: &str, name: &str) -> Result<(), ControllerError> {
        self.store.set_activity_state(id, "in_progress")?;
        self.store.phase_started(id, "delete")?;
        // A controller that stopped after removing the record had done everything else.
        if let Some(env) = self.store.find_environment_named(name)? {
            self.check_deletable(&env)?;
            self.remove_everywhere(&env, id).await?;
        }
        self.store
            .append_log(id, &format!("Environment {name} deleted"))?;
        self.store.phase_ended(id, "delete")?;
        self.store.finish_activity(id, "complete", "success")?;
        Ok(())
    }

    /// Only a development environment without children is deleted.
    fn check_deletable(&self, env: &crate::Environment) -> Result<(), ControllerError> {
        let name = env.name.as_str();
        if env.kind != lockstep_proto::agent::EnvironmentType::Development {
            return Err(ControllerError::Environment(format!(
                "{name} is a {} cluster: only development environments are deleted",
                env.kind.as_str()
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
        Ok(())
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
        self.edge_forget(&env.name).await;
        let data = &self.options.data_dir;
        for folder in [
            self.storage.of(env),
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
