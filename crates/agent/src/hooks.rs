//! Durable hook outcomes (invariant I2): one file per deployment and hook, written before the
//! hook starts (state `running`) and again when it ends. A hook whose file exists never runs
//! again; one found `running` after a restart of the agent is `interrupted`, never re-run.

use std::path::{Path, PathBuf};

use lockstep_proto::agent::{HookKind, HookOutcome, HookState};

use crate::error::AgentError;

pub struct HookStore {
    dir: PathBuf,
}

impl HookStore {
    pub fn new(instance_dir: &Path) -> HookStore {
        HookStore {
            dir: instance_dir.join("hooks"),
        }
    }

    pub fn create_dir(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)
    }

    fn path(&self, deployment: &str, hook: HookKind) -> PathBuf {
        self.dir
            .join(format!("{deployment}.{}.json", hook.as_str()))
    }

    pub fn get(&self, deployment: &str, hook: HookKind) -> Result<Option<HookOutcome>, AgentError> {
        let path = self.path(deployment, hook);
        lockstep_durable::read_json(&path)
            .map_err(AgentError::io(format!("read {}", path.display())))
    }

    pub fn put(&self, outcome: &HookOutcome) -> Result<(), AgentError> {
        let path = self.path(&outcome.deployment, outcome.hook);
        lockstep_durable::write_json(&path, outcome)
            .map_err(AgentError::io(format!("write {}", path.display())))
    }

    /// Every recorded outcome, oldest first.
    pub fn all(&self) -> Vec<HookOutcome> {
        let mut outcomes: Vec<HookOutcome> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| lockstep_durable::read_json(&entry.path()).ok().flatten())
            .collect();
        outcomes.sort_by_key(|o| o.started_at);
        outcomes
    }

    /// After a restart: a hook that was running when the agent stopped has an unknown outcome.
    pub fn mark_interrupted(&self) -> Result<(), AgentError> {
        for mut outcome in self.all() {
            if outcome.state == HookState::Running {
                tracing::warn!(deployment = %outcome.deployment, hook = outcome.hook.as_str(), "hook was interrupted by an agent restart");
                outcome.state = HookState::Interrupted;
                outcome.ended_at = Some(chrono::Utc::now());
                self.put(&outcome)?;
            }
        }
        Ok(())
    }
}
