//! An environment's data copied from another's (SPEC section 10): a new development
//! environment starts from its parent's shared storage and services. A service's data goes as a
//! consistent snapshot that its primary takes while it serves, streamed through the controller
//! into the other environment's primary, which then gets its own users and passwords.

use std::time::{Duration, Instant};

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
        let storage = self.options.data_dir.join("storage");
        let (from, to) = (storage.join(parent), storage.join(environment));
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
                human_bytes(tree_bytes(&to)),
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
            let same = theirs.iter().find(|their| {
                their.name == service.name
                    && their.engine == service.engine
                    && their.version == service.version
            });
            let Some(their) = same else {
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

/// A copy of folder `from` at `to`, links kept as links; shared blocks where the filesystem
/// can (btrfs, XFS), a plain copy elsewhere.
pub(crate) fn copy_tree(
    from: &std::path::Path,
    to: &std::path::Path,
) -> Result<(), ControllerError> {
    let action = || format!("copy {} to {}", from.display(), to.display());
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(from)
        .arg(to)
        .status()
        .map_err(ControllerError::io(action()))?;
    if status.success() {
        Ok(())
    } else {
        Err(ControllerError::Io {
            action: action(),
            source: std::io::Error::other(format!("cp exited with {status}")),
        })
    }
}

/// Bytes of the files under `dir`, links not followed.
pub(crate) fn tree_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// `12.3 MB`, `512 kB`, `840 B`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{} kB", bytes / 1_000),
        _ => format!("{:.1} MB", bytes as f64 / 1_000_000.0),
    }
}
