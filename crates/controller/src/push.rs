//! What happens to a push, called from the repository's hooks through `lockstep git-hook`:
//! pre-receive validates and builds every pushed branch (a failure rejects the push); then
//! proc-receive, which git runs instead of moving the refs itself, deploys each branch and
//! streams the log back to `git push`. Only a branch whose deployment succeeded moves: git
//! moves it once the hook says so. A failed or rolled back deployment rejects the push, so a
//! branch always names the commit its environment runs.
//!
//! The hook's answer is a stream of JSON lines: `{"line": "..."}` to print, then `{"exit": N}`
//! (pre-receive) or `{"verdicts": [...]}` (proc-receive, one per ref, in order).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{Controller, DeployJob};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookCall {
    pub refs: Vec<RefUpdate>,
    /// The hook's quarantine: git's object directories holding the pushed objects.
    #[serde(default)]
    pub git_env: BTreeMap<String, String>,
    /// Who pushes: the name the git route authenticated (`owner` or a user's email).
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HookLine {
    Line { line: String },
    Exit { exit: i32 },
    Verdicts { verdicts: Vec<RefVerdict> },
}

/// Whether a pushed ref may move: `error` is `None` when it may, else why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefVerdict {
    pub name: String,
    pub error: Option<String>,
}

pub type HookOutput = mpsc::UnboundedSender<HookLine>;

fn say(out: &HookOutput, line: impl Into<String>) {
    let _ = out.send(HookLine::Line { line: line.into() });
}

const ZERO: &str = "0000000000000000000000000000000000000000";

impl Controller {
    pub async fn pre_receive(self: Arc<Self>, call: HookCall, out: HookOutput) {
        let mut exit = 0;
        for update in &call.refs {
            let Some(branch) = update.name.strip_prefix("refs/heads/") else {
                say(
                    &out,
                    format!("Lockstep deploys branches; {} is not one", update.name),
                );
                exit = 1;
                continue;
            };
            // Deleting a branch needs the same role as pushing it.
            if let Err(refusal) = self.may_push(call.user.as_deref(), branch) {
                say(&out, format!("error: {refusal}"));
                exit = 1;
                continue;
            }
            if update.new == ZERO {
                continue;
            }
            if !self
                .build_push(branch, &update.new, &call.git_env, &out)
                .await
            {
                exit = 1;
            }
        }
        if exit != 0 {
            say(
                &out,
                "Push rejected: the branch did not move, and nothing was deployed.",
            );
        }
        let _ = out.send(HookLine::Exit { exit });
    }

    /// Whether the pusher's role on the branch's environment type allows a push; a new branch
    /// becomes a development environment.
    fn may_push(&self, user: Option<&str>, branch: &str) -> Result<(), String> {
        let principal = self.pusher(user)?;
        let kind = match self.store.environment_for_branch(branch) {
            Ok(Some(env)) => env.kind,
            Ok(None) => lockstep_proto::agent::EnvironmentType::Development,
            Err(error) => return Err(error.to_string()),
        };
        if crate::access::allowed(&principal, crate::access::Action::Push, kind) {
            Ok(())
        } else {
            Err(format!(
                "{} may not push to {branch}: pushing to {} environments needs the contributor or admin role",
                principal.name(),
                kind.as_str()
            ))
        }
    }

    /// Who pushes, as git's authentication named them.
    fn pusher(&self, user: Option<&str>) -> Result<crate::access::Principal, String> {
        match user {
            Some("owner") => Ok(crate::access::Principal::Owner),
            Some(email) => match self.store.user(email) {
                Ok(Some(user)) => Ok(crate::access::Principal::User {
                    email: user.email,
                    roles: user.roles,
                }),
                _ => Err(format!("{email} is not a user of this project")),
            },
            None => Err("the push is not authenticated".into()),
        }
    }

    /// Builds a pushed commit into an image, in an activity that deploys it after the push.
    async fn build_push(
        self: &Arc<Self>,
        branch: &str,
        commit: &str,
        git_env: &BTreeMap<String, String>,
        out: &HookOutput,
    ) -> bool {
        let environment = match self
            .environment_for_branch(branch)
            .and_then(|env| self.nodes_of(&env).map(|_| env))
        {
            Ok(env) => env,
            Err(error) => {
                say(out, format!("error: {error}"));
                return false;
            }
        };
        let description = format!("Push of {} to {branch}", &commit[..commit.len().min(7)]);
        let Ok(activity) = self
            .store
            .create_activity("push", &environment.name, &description)
        else {
            say(out, "error: cannot record the activity");
            return false;
        };
        let _ = self.store.set_activity_state(&activity.id, "in_progress");
        let _ = self.store.phase_started(&activity.id, "build");
        say(
            out,
            format!(
                "Activity {}: building {branch} for environment {}",
                activity.id, environment.name
            ),
        );
        if environment.pending {
            let line = format!(
                "New branch: environment {} will be made, as a clone of {}, if the push is accepted",
                environment.name,
                environment.parent.as_deref().unwrap_or("nothing")
            );
            let _ = self.store.append_log(&activity.id, &line);
            say(out, line);
        }

        let (lines, mut incoming) = mpsc::unbounded_channel::<String>();
        let controller = self.clone();
        let git_env: Vec<(String, String)> = git_env.clone().into_iter().collect();
        let commit_owned = commit.to_owned();
        let variables =
            match self.variables_for(&environment.name, crate::variables::Audience::Build) {
                Ok(variables) => variables,
                Err(error) => return self.fail_push(&activity.id, &error.to_string(), out),
            };
        let activity_id = activity.id.clone();
        let build_env = environment.clone();
        // A blocking thread of its own, for as long as the build runs: the build's sandbox dies
        // with the thread that started it.
        let build = tokio::task::spawn_blocking(move || {
            controller.build_for(
                &build_env,
                &commit_owned,
                &git_env,
                &variables,
                &activity_id,
                &mut |line| {
                    let _ = lines.send(line.to_owned());
                },
            )
        });
        while let Some(line) = incoming.recv().await {
            let _ = self.store.append_log(&activity.id, &line);
            say(out, line);
        }
        let result = build.await.expect("the build task does not panic");
        let _ = self.store.phase_ended(&activity.id, "build");
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(lockstep_image::BuildError::InvalidConfig(diagnostics)) => {
                for diagnostic in diagnostics {
                    for line in diagnostic.to_string().lines() {
                        say(out, line);
                        let _ = self.store.append_log(&activity.id, line);
                    }
                }
                return self.fail_push(&activity.id, "the configuration is invalid", out);
            }
            Err(lockstep_image::BuildError::Cancelled) => {
                let _ = self
                    .store
                    .finish_activity(&activity.id, "cancelled", "failure");
                say(out, "error: the build was cancelled");
                return false;
            }
            Err(error) => {
                let reason = match &error {
                    lockstep_image::BuildError::Hook(failure) => {
                        format!("the build hook failed: {failure}")
                    }
                    other => other.to_string(),
                };
                return self.fail_push(&activity.id, &reason, out);
            }
        };
        for manifest in &outcome.images {
            let _ = self.store.record_image(manifest);
        }
        let _ = self
            .store
            .set_activity_image(&activity.id, &outcome.release());
        self.pending_pushes
            .lock()
            .expect("pending pushes lock")
            .insert((branch.to_owned(), commit.to_owned()), activity.id.clone());
        true
    }

    fn fail_push(&self, activity: &str, reason: &str, out: &HookOutput) -> bool {
        let _ = self
            .store
            .append_log(activity, &format!("Push rejected: {reason}"));
        let _ = self.store.finish_activity(activity, "complete", "failure");
        say(out, format!("error: {reason}"));
        false
    }

    /// Deploys each pushed branch built by pre-receive, in turn, and says which refs may move:
    /// those whose deployment succeeded, and deletions (their role was checked in pre-receive).
    pub async fn proc_receive(self: Arc<Self>, call: HookCall, out: HookOutput) {
        let mut verdicts = Vec::new();
        for update in &call.refs {
            let error = if update.new == ZERO {
                None
            } else {
                self.deploy_pushed(update, call.user.as_deref(), &out)
                    .await
                    .err()
            };
            verdicts.push(RefVerdict {
                name: update.name.clone(),
                error,
            });
        }
        let _ = out.send(HookLine::Verdicts { verdicts });
    }

    /// Deploys a branch that pre-receive built, streaming the deployment's log; `Err` says why
    /// the branch must not move.
    async fn deploy_pushed(
        self: &Arc<Self>,
        update: &RefUpdate,
        user: Option<&str>,
        out: &HookOutput,
    ) -> Result<(), String> {
        let branch = update
            .name
            .strip_prefix("refs/heads/")
            .unwrap_or(&update.name);
        let key = (branch.to_owned(), update.new.clone());
        let pending = self
            .pending_pushes
            .lock()
            .expect("pending pushes lock")
            .remove(&key);
        let activity = pending.ok_or("it was not built")?;
        let record = self
            .store
            .activity(&activity)
            .map_err(|e| format!("its activity is unreadable: {e}"))?;
        let image = record.image.clone().ok_or("its build left no image")?;
        let env = self
            .store
            .environment(&record.environment)
            .map_err(|e| format!("its environment is unreadable: {e}"))?;
        // What the log says from here on reaches the pusher.
        let mut shown = self.store.log(&activity).map(|l| l.len()).unwrap_or(0);
        if env.pending {
            let principal = self.pusher(user)?;
            let clone = self.may_clone_parent(&env, &principal);
            let line = match &clone {
                Ok(parent) => format!("Creating environment {}, as a clone of {parent}", env.name),
                Err(why) => format!("Creating environment {}, with no data: {why}", env.name),
            };
            let _ = self.store.append_log(&activity, &line);
            say(out, line);
            shown = self.store.log(&activity).map(|l| l.len()).unwrap_or(0);
            self.accept_environment(&env, clone.is_ok(), &activity)
                .map_err(|e| format!("its environment cannot be made: {e}"))?;
        }
        self.enqueue(DeployJob {
            activity: activity.clone(),
            environment: record.environment.clone(),
            image,
            rebuild_from: None,
            data: None,
        });
        if self.follow(&activity, shown, out).await {
            Ok(())
        } else {
            Err(format!(
                "deployment {activity} did not succeed (`lockstep activity log {activity}`)"
            ))
        }
    }

    /// Streams an activity's log from byte `shown` until it ends; returns whether it succeeded.
    async fn follow(&self, activity: &str, mut shown: usize, out: &HookOutput) -> bool {
        loop {
            let Ok(record) = self.store.activity(activity) else {
                return false;
            };
            if let Ok(log) = self.store.log(activity) {
                for line in log[shown.min(log.len())..].lines() {
                    say(out, line);
                }
                shown = log.len();
            }
            if record.state == "complete" || record.state == "cancelled" {
                return record.result.as_deref() == Some("success");
            }
            if out.is_closed() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
