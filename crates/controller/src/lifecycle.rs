//! Environments made on request (SPEC section 10): `lockstep env branch` makes a development
//! environment as a child of another, on a new branch at its parent's commit, deployed with its
//! parent's release and, unless asked not to, a copy of its parent's data.

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
        });
        Ok(activity)
    }
}
