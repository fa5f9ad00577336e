//! Builds for an environment: who runs them (the environment's own user), with which cache,
//! timeout and runtime strictness (its settings), with the operator's CA and proxy settings;
//! and cancelling a build, or a deployment still waiting in its queue, by activity.

use std::collections::BTreeMap;

use lockstep_image::{BuildError, BuildOutcome, BuildRequest};
use lockstep_supervisor::{Cancel, RunAs};

use crate::Controller;
use crate::secrets::EntropyScope;
use crate::store::Environment;

/// Why an activity could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error(
        "activity {0} is neither a running build nor a deployment waiting in its queue; nothing was cancelled"
    )]
    NotCancellable(String),
}

impl Controller {
    /// Builds `git_ref` for `env` within `activity`, streaming its lines to `log`. Blocks its
    /// thread until the build ends; `cancel_activity` ends it sooner.
    pub(crate) fn build_for(
        &self,
        env: &Environment,
        git_ref: &str,
        git_env: &lockstep_image::GitEnv,
        variables: &BTreeMap<String, serde_json::Value>,
        activity: &str,
        log: &mut dyn FnMut(&str),
    ) -> Result<BuildOutcome, BuildError> {
        let cancel = Cancel::default();
        self.running_builds
            .lock()
            .expect("builds lock")
            .insert(activity.to_owned(), cancel.clone());
        let request = BuildRequest {
            repo: &self.repository(),
            git_ref,
            project: &self.options.project,
            project_entropy: &self.secrets.project_entropy(EntropyScope::Build),
            cache: &env.name,
            variables,
            timeout: std::time::Duration::from_secs(env.settings.build_timeout_secs),
            git_env,
            user: app_user(env),
            strict_runtimes: env.settings.strict_runtimes,
            operator: &self.options.operator,
            cancel,
        };
        let result = self.builder.build(&request, log);
        self.running_builds
            .lock()
            .expect("builds lock")
            .remove(activity);
        result
    }

    /// `lockstep activity cancel`: ends a running build (its whole sandbox), or takes a
    /// deployment out of its queue before it starts.
    pub fn cancel_activity(&self, activity: &str) -> Result<(), CancelError> {
        if let Some(build) = self
            .running_builds
            .lock()
            .expect("builds lock")
            .get(activity)
        {
            build.cancel();
            let _ = self.store.append_log(activity, "Cancelled by a user");
            return Ok(());
        }
        if self.cancel_waiting(activity) {
            let _ = self
                .store
                .append_log(activity, "Cancelled by a user before it started");
            let _ = self.store.finish_activity(activity, "cancelled", "failure");
            return Ok(());
        }
        Err(CancelError::NotCancellable(activity.to_owned()))
    }
}

/// The Unix user an environment's code runs as: its own when Lockstep runs as root, Lockstep's
/// own user otherwise.
pub(crate) fn app_user(env: &Environment) -> RunAs {
    if nix::unistd::geteuid().is_root() {
        RunAs {
            uid: env.uid,
            gid: env.uid,
        }
    } else {
        RunAs::current()
    }
}
