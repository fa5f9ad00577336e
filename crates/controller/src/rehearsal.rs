//! Migration rehearsal (SPEC section 10): before a deployment of an environment with services
//! touches anything, each app's deploy hook runs once against a scratch copy of the
//! environment's services and mounts, made on the node of its primaries. A hook that fails
//! there stops the deployment before it stages: nothing closes, the push is refused.

use std::time::{Duration, Instant};

use lockstep_proto::agent::{HookOutcome, HookState, RehearsalRequest};

use crate::agents::Call;
use crate::apps::dependencies_first;
use crate::{Controller, ControllerError, Environment};

/// Platform.sh's limit for a hook, which a rehearsal's copy and hook stay within.
const REHEARSAL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Controller {
    /// Rehearses `release`'s deploy hooks for `env`, unless it has no service, no hook, or says
    /// not to (`rehearse`); said in `activity`'s log with the hooks' output.
    pub(crate) async fn rehearse(
        &self,
        env: &Environment,
        release: &str,
        activity: &str,
    ) -> Result<(), ControllerError> {
        let project = self.release_project(release)?;
        let stored = self.store.services(&env.name)?;
        let Some(first_service) = stored
            .iter()
            .find(|s| project.services.contains_key(&s.name))
        else {
            return Ok(());
        };
        let hooked: Vec<_> = dependencies_first(self.app_instances(&env.name, release)?, &project)
            .into_iter()
            .filter(|instance| {
                project
                    .app(&instance.name)
                    .and_then(|app| app.hooks.deploy.as_deref())
                    .is_some_and(|hook| !hook.trim().is_empty())
            })
            .collect();
        if !env.settings.rehearse || hooked.is_empty() {
            return Ok(());
        }
        let nodes = self.store.nodes(&env.name)?;
        let Some(node) = first_service
            .primary_on(&nodes)
            .and_then(|name| nodes.iter().find(|n| n.name == name))
        else {
            return Ok(());
        };
        self.store.phase_started(activity, "rehearse")?;
        let started = Instant::now();
        self.store.append_log(
            activity,
            &format!(
                "Rehearsing the deploy hook on {} against a copy of {}'s services and mounts",
                node.name, env.name
            ),
        )?;
        let runtime = self.runtime_inputs(&env.name, release)?;
        for instance in &hooked {
            let _: serde_json::Value = self
                .agents
                .call(
                    &node.agent_url,
                    &instance.instance,
                    Call::Stage(&instance.image),
                    REHEARSAL_TIMEOUT,
                )
                .await
                .map_err(ControllerError::agent(node))?;
            let request = RehearsalRequest {
                deployment: activity.to_owned(),
                image: instance.image.clone(),
                runtime: runtime.clone(),
            };
            let outcome: HookOutcome = self
                .agents
                .call(
                    &node.agent_url,
                    &instance.instance,
                    Call::Rehearse(&request),
                    REHEARSAL_TIMEOUT,
                )
                .await
                .map_err(ControllerError::agent(node))?;
            for line in &outcome.output {
                self.store.append_log(activity, &format!("  {line}"))?;
            }
            if outcome.state != HookState::Succeeded {
                self.store.append_log(
                    activity,
                    &format!(
                        "The deploy hook of {} failed in rehearsal on {}",
                        instance.name, node.name
                    ),
                )?;
                return Err(ControllerError::Rehearsal(env.name.clone()));
            }
        }
        self.store.append_log(
            activity,
            &format!(
                "The deploy hook succeeded in rehearsal ({:.1} s); the copy is removed",
                started.elapsed().as_secs_f64()
            ),
        )?;
        self.store.phase_ended(activity, "rehearse")?;
        Ok(())
    }
}
