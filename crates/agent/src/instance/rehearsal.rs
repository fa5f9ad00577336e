//! Migration rehearsal (SPEC section 10): a staged release's deploy hook run against a scratch
//! copy of the environment's data before anything of a deployment happens, so that a migration
//! that fails on the real data fails here, with the environment untouched and still serving.
//!
//! The copy is made on this node: each service whose primary is here is snapshotted (as a new
//! environment's clone is) into a scratch server of its own, with the same users and passwords;
//! the mounts are copied. The hook sees them through `PLATFORM_RELATIONSHIPS` and its mounts,
//! as it would in the deployment, with `LOCKSTEP_REHEARSAL=1`. Everything scratch is removed
//! afterwards, whatever the outcome.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use lockstep_proto::agent::{
    HookKind, HookOutcome, HookState, RehearsalRequest, ServiceRole, ServiceSpec,
};
use lockstep_supervisor::{HookFailure, RunAs};

use super::{Instance, RuntimeParts, hook_spec};
use crate::error::AgentError;
use crate::release::MountRoots;
use crate::services::Services;

impl Instance {
    /// Runs the deploy hook of staged release `request.image` against a scratch copy of the
    /// environment's data on this node; its outcome. Nothing of the environment changes.
    pub async fn rehearse(
        self: &Arc<Self>,
        request: &RehearsalRequest,
    ) -> Result<HookOutcome, AgentError> {
        super::check_plain_name(&request.deployment, "deployment id")?;
        let info = self.releases.info(&request.image)?;
        let started_at = Utc::now();
        let mut outcome = HookOutcome {
            deployment: request.deployment.clone(),
            hook: HookKind::Deploy,
            image: request.image.clone(),
            state: HookState::Succeeded,
            exit_code: Some(0),
            started_at,
            ended_at: Some(started_at),
            output: Vec::new(),
        };
        let Some(script) = info
            .app()
            .hooks
            .deploy
            .clone()
            .filter(|s| !s.trim().is_empty())
        else {
            return Ok(outcome);
        };
        let state = self.state.lock().await.clone();
        let user = self.user(&state)?;
        let scratch = Scratch::new(self.dir.join("rehearsal").join(&request.deployment))?;
        let result = async {
            let services = scratch.services(self, user).await?;
            let parts = RuntimeParts {
                id: &request.image,
                info: &info,
                inputs: &request.runtime,
                mounts: scratch.mounts(&self.mount_roots(&state))?,
                services: services.reachable(),
                home: &scratch.dir,
                upstream: None,
            };
            let (sandbox, mut env) = self.runtime_of(&state, &parts)?;
            env.insert("LOCKSTEP_REHEARSAL".into(), "1".into());
            let spec = hook_spec(&script, sandbox, env, &request.deployment);
            // On a blocking thread of its own, which the sandbox dies with.
            let ran = tokio::task::spawn_blocking(move || {
                let mut lines = Vec::new();
                let result = lockstep_supervisor::run_hook(&spec, &mut |line| {
                    lines.push(line.to_owned());
                });
                (result, lines)
            })
            .await
            .expect("the rehearsal's task does not panic");
            services.stop_all().await;
            Ok::<_, AgentError>(ran)
        }
        .await;
        scratch.remove();
        let (ran, lines) = result?;
        outcome.ended_at = Some(Utc::now());
        outcome.output = lines;
        if let Err(failure) = ran {
            outcome.state = HookState::Failed;
            outcome.exit_code = match &failure {
                HookFailure::Exited { status, .. } => status.code(),
                _ => None,
            };
            outcome.output.push(failure.to_string());
        }
        Ok(outcome)
    }
}

/// The scratch folder of one rehearsal: its services, mounts and sandbox folders.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(dir: PathBuf) -> Result<Scratch, AgentError> {
        // What an interrupted rehearsal of the same deployment left goes first.
        remove_tree(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(AgentError::io(format!("create {}", dir.display())))?;
        Ok(Scratch { dir })
    }

    /// Scratch servers of the environment's services whose primary is on this node, each
    /// holding a snapshot of it, with the same users and passwords.
    async fn services(&self, instance: &Instance, user: RunAs) -> Result<Services, AgentError> {
        let scratch = Services::load(
            self.dir.join("services"),
            self.dir.join("logs"),
            instance.context.clone(),
        )?;
        let primaries: Vec<ServiceSpec> = instance
            .services
            .declared()
            .into_iter()
            .filter(|spec| matches!(spec.role, ServiceRole::Primary { .. }))
            .map(|mut spec| {
                spec.role = ServiceRole::Primary {
                    replicas: 0,
                    cluster: Vec::new(),
                };
                spec
            })
            .collect();
        let taking = primaries.into_iter().map(|spec| async move {
            let snapshot = instance.services.snapshot(&spec.name, user).await?;
            Ok::<_, AgentError>((spec, snapshot))
        });
        let snapshots = futures_util::future::join_all(taking)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        scratch.start_from_snapshots(snapshots, user).await?;
        Ok(scratch)
    }

    /// Copies of the environment's mounts: its shared storage and this node's local mounts;
    /// `tmp` mounts start empty, as on a new node.
    fn mounts(&self, real: &MountRoots) -> Result<MountRoots, AgentError> {
        let folder = self.dir.join("mounts");
        std::fs::create_dir_all(&folder)
            .map_err(AgentError::io(format!("create {}", folder.display())))?;
        let copies = MountRoots {
            local: self.dir.join("mounts/local"),
            tmp: self.dir.join("mounts/tmp"),
            storage: self.dir.join("mounts/storage"),
            shared_storage: None,
        };
        copy_tree(&real.storage, &copies.storage)?;
        copy_tree(&real.local, &copies.local)?;
        Ok(copies)
    }

    fn remove(self) {
        remove_tree(&self.dir);
    }
}

/// A copy of a folder that may not exist yet (then nothing to copy).
fn copy_tree(from: &Path, to: &Path) -> Result<(), AgentError> {
    if !from.exists() {
        return Ok(());
    }
    lockstep_supervisor::copy_tree(from, to)
        .map_err(AgentError::io(format!("copy {}", from.display())))
}

fn remove_tree(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(folder = %dir.display(), %error, "a rehearsal's scratch folder stays");
    }
}
