//! Project and environment variables (SPEC section 8): their rules, the values a build or a
//! runtime sees, and the changes that redeploy an environment.
//!
//! Precedence, lowest first: the app's `variables` (applied by the builder and the agent),
//! project, inherited environment variables (root of the environment tree first), the
//! environment's own; what the platform provides overrides them all. Sensitive values are
//! sealed in the store and never leave the controller except into a build or a node.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::orchestrator::DeployJob;
use crate::store::{Activity, StoredVariable, timestamp};
use crate::{Controller, ControllerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Build,
    Runtime,
    Both,
}

/// Which processes a resolution is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Build,
    Runtime,
}

/// A variable as the API shows it: a sensitive one without its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variable {
    pub name: String,
    /// `None` for a project-level variable.
    pub environment: Option<String>,
    pub value: Option<serde_json::Value>,
    pub sensitive: bool,
    pub json: bool,
    pub visibility: Visibility,
    pub inheritable: bool,
    pub updated_at: String,
}

/// What `lockstep var set` sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetVariable {
    pub environment: Option<String>,
    pub value: String,
    #[serde(default)]
    pub json: bool,
    #[serde(default)]
    pub sensitive: bool,
    #[serde(default = "both")]
    pub visibility: Visibility,
    #[serde(default = "yes")]
    pub inheritable: bool,
    #[serde(default)]
    pub no_redeploy: bool,
}

fn both() -> Visibility {
    Visibility::Both
}

fn yes() -> bool {
    true
}

/// The answer to a change: the variable, and the deployment it started, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariableChange {
    pub variable: Option<Variable>,
    pub activity: Option<Activity>,
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum VariableError {
    #[error(
        "`{0}` is not a variable name: use letters, digits, `_`, `-`, `.` and one `prefix:` (such as `env:API_URL`)"
    )]
    InvalidName(String),
    #[error("the value of `{0}` is not valid JSON; drop --json to store it as a string")]
    InvalidJson(String),
    #[error("no variable `{0}` at this level")]
    Unknown(String),
}

fn check_name(name: &str) -> Result<(), VariableError> {
    let invalid = || VariableError::InvalidName(name.to_owned());
    let simple = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let (prefix, rest) = match name.split_once(':') {
        Some((prefix, rest)) => (Some(prefix), rest),
        None => (None, name),
    };
    if !simple(rest) || prefix.is_some_and(|p| !simple(p)) {
        return Err(invalid());
    }
    // An `env:` variable becomes an environment variable: its name must be a valid one.
    if prefix == Some("env")
        && (rest.starts_with(|c: char| c.is_ascii_digit()) || rest.contains(['-', '.']))
    {
        return Err(invalid());
    }
    Ok(())
}

impl Visibility {
    fn of(variable: &StoredVariable) -> Visibility {
        match (variable.visible_build, variable.visible_runtime) {
            (true, false) => Visibility::Build,
            (false, true) => Visibility::Runtime,
            _ => Visibility::Both,
        }
    }

    fn flags(self) -> (bool, bool) {
        match self {
            Visibility::Build => (true, false),
            Visibility::Runtime => (false, true),
            Visibility::Both => (true, true),
        }
    }
}

fn visible_to(variable: &StoredVariable, audience: Audience) -> bool {
    match audience {
        Audience::Build => variable.visible_build,
        Audience::Runtime => variable.visible_runtime,
    }
}

/// The variables an environment's processes see, by precedence; `ancestors` run from the root
/// of the environment tree to the environment's parent. Values are still sealed when sensitive.
pub fn effective<'v>(
    project: &'v [StoredVariable],
    ancestors: &'v [Vec<StoredVariable>],
    own: &'v [StoredVariable],
    audience: Audience,
) -> BTreeMap<String, &'v StoredVariable> {
    let mut seen = BTreeMap::new();
    let inherited = ancestors.iter().flatten().filter(|v| v.inheritable);
    for variable in project.iter().chain(inherited).chain(own) {
        if visible_to(variable, audience) {
            seen.insert(variable.name.clone(), variable);
        } else {
            // A level that hides a name from this audience also hides what it overrides.
            seen.remove(&variable.name);
        }
    }
    seen
}

impl Controller {
    fn open_value(&self, variable: &StoredVariable) -> Result<serde_json::Value, ControllerError> {
        let text = if variable.sensitive {
            self.secrets
                .decrypt(&variable.stored)
                .map_err(|e| ControllerError::Secret(e.to_string()))?
        } else {
            variable.stored.clone()
        };
        Ok(if variable.json {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        } else {
            serde_json::Value::String(text)
        })
    }

    fn shown(&self, variable: &StoredVariable) -> Result<Variable, ControllerError> {
        Ok(Variable {
            name: variable.name.clone(),
            environment: (!variable.environment.is_empty()).then(|| variable.environment.clone()),
            value: if variable.sensitive {
                None
            } else {
                Some(self.open_value(variable)?)
            },
            sensitive: variable.sensitive,
            json: variable.json,
            visibility: Visibility::of(variable),
            inheritable: variable.inheritable,
            updated_at: variable.updated_at.clone(),
        })
    }

    /// The variables, opened, that a build or a runtime of `environment` sees.
    pub fn variables_for(
        &self,
        environment: &str,
        audience: Audience,
    ) -> Result<BTreeMap<String, serde_json::Value>, ControllerError> {
        let project = self.store.variables("")?;
        let mut chain = Vec::new();
        let mut next = self.store.environment(environment)?.parent;
        while let Some(name) = next {
            if chain.iter().any(|(n, _): &(String, _)| *n == name) {
                break;
            }
            let parent = self.store.environment(&name)?;
            next = parent.parent.clone();
            chain.push((name.clone(), self.store.variables(&name)?));
        }
        let ancestors: Vec<Vec<StoredVariable>> = chain.into_iter().rev().map(|(_, v)| v).collect();
        let own = self.store.variables(environment)?;
        effective(&project, &ancestors, &own, audience)
            .into_iter()
            .map(|(name, variable)| Ok((name, self.open_value(variable)?)))
            .collect()
    }

    pub fn list_variables(
        &self,
        environment: Option<&str>,
    ) -> Result<Vec<Variable>, ControllerError> {
        if let Some(env) = environment {
            self.store.environment(env)?;
        }
        self.store
            .variables(environment.unwrap_or(""))?
            .iter()
            .map(|v| self.shown(v))
            .collect()
    }

    pub fn get_variable(
        &self,
        environment: Option<&str>,
        name: &str,
    ) -> Result<Variable, ControllerError> {
        self.list_variables(environment)?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ControllerError::Variable(VariableError::Unknown(name.to_owned())))
    }

    pub fn set_variable(
        self: &Arc<Self>,
        name: &str,
        input: SetVariable,
    ) -> Result<VariableChange, ControllerError> {
        check_name(name).map_err(ControllerError::Variable)?;
        if input.json && serde_json::from_str::<serde_json::Value>(&input.value).is_err() {
            return Err(ControllerError::Variable(VariableError::InvalidJson(
                name.to_owned(),
            )));
        }
        let level = input.environment.clone().unwrap_or_default();
        if !level.is_empty() {
            self.store.environment(&level)?;
        }
        let existing = self
            .store
            .variables(&level)?
            .into_iter()
            .find(|v| v.name == name);
        // Sensitive is one-way, as on Platform.sh.
        let sensitive = input.sensitive || existing.as_ref().is_some_and(|v| v.sensitive);
        let (visible_build, visible_runtime) = input.visibility.flags();
        let stored = StoredVariable {
            environment: level.clone(),
            name: name.to_owned(),
            stored: if sensitive {
                self.secrets.encrypt(&input.value)
            } else {
                input.value.clone()
            },
            sensitive,
            json: input.json,
            visible_build,
            visible_runtime,
            inheritable: input.inheritable,
            updated_at: timestamp(chrono::Utc::now()),
        };
        self.store.put_variable(&stored)?;
        let rebuild = visible_build || existing.as_ref().is_some_and(|v| v.visible_build);
        let (activity, note) =
            self.after_change(&level, name, "set", rebuild, input.no_redeploy)?;
        Ok(VariableChange {
            variable: Some(self.shown(&stored)?),
            activity,
            note,
        })
    }

    pub fn delete_variable(
        self: &Arc<Self>,
        environment: Option<&str>,
        name: &str,
        no_redeploy: bool,
    ) -> Result<VariableChange, ControllerError> {
        let level = environment.unwrap_or_default();
        let existing = self
            .store
            .variables(level)?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ControllerError::Variable(VariableError::Unknown(name.to_owned())))?;
        self.store.delete_variable(level, name)?;
        let (activity, note) =
            self.after_change(level, name, "deleted", existing.visible_build, no_redeploy)?;
        Ok(VariableChange {
            variable: None,
            activity,
            note,
        })
    }

    /// Redeploys the environment whose variable changed (not its children), rebuilding when a
    /// build could see the variable.
    fn after_change(
        self: &Arc<Self>,
        level: &str,
        name: &str,
        what: &str,
        rebuild: bool,
        no_redeploy: bool,
    ) -> Result<(Option<Activity>, Option<String>), ControllerError> {
        if level.is_empty() {
            return Ok((None, Some("project variables apply to each environment at its next deployment (`lockstep deploy ENV`)".into())));
        }
        if no_redeploy {
            return Ok((
                None,
                Some(format!(
                    "{level} keeps running without it until its next deployment"
                )),
            ));
        }
        let env = self.store.environment(level)?;
        let Some(serving) = env.serving else {
            return Ok((
                None,
                Some(format!(
                    "{level} has no release yet; its first deployment will use it"
                )),
            ));
        };
        let description = if rebuild {
            format!("Variable {name} {what}: rebuild and redeploy")
        } else {
            format!("Variable {name} {what}: redeploy")
        };
        let activity = self
            .store
            .create_activity("variable", level, &description)?;
        self.store
            .set_activity_image(&activity.id, &serving.image)?;
        self.enqueue(DeployJob {
            activity: activity.id.clone(),
            environment: level.to_owned(),
            image: serving.image,
            rebuild_from: rebuild.then(|| format!("refs/heads/{}", env.branch)),
            data: None,
        });
        Ok((Some(self.store.activity(&activity.id)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(
        level: &str,
        name: &str,
        value: &str,
        build: bool,
        runtime: bool,
        inheritable: bool,
    ) -> StoredVariable {
        StoredVariable {
            environment: level.into(),
            name: name.into(),
            stored: value.into(),
            sensitive: false,
            json: false,
            visible_build: build,
            visible_runtime: runtime,
            inheritable,
            updated_at: String::new(),
        }
    }

    fn values(map: BTreeMap<String, &StoredVariable>) -> Vec<(String, String)> {
        map.into_iter()
            .map(|(k, v)| (k, v.stored.clone()))
            .collect()
    }

    #[test]
    fn the_environment_overrides_its_parents_which_override_the_project() {
        let project = [
            var("", "env:A", "project", true, true, true),
            var("", "env:B", "project", true, true, true),
        ];
        let parent = vec![var("production", "env:A", "production", true, true, true)];
        let own = [var("feature", "env:B", "feature", true, true, true)];
        let ancestors = [parent];
        let seen = effective(&project, &ancestors, &own, Audience::Runtime);
        assert_eq!(
            values(seen),
            [
                ("env:A".into(), "production".into()),
                ("env:B".into(), "feature".into())
            ]
        );
    }

    #[test]
    fn variables_that_are_not_inheritable_stay_on_their_environment() {
        let parent = vec![var(
            "production",
            "env:SECRET_LEVEL",
            "prod-only",
            true,
            true,
            false,
        )];
        let ancestors = [parent.clone()];
        let seen = effective(&[], &ancestors, &[], Audience::Runtime);
        assert!(seen.is_empty());
        let on_itself = effective(&[], &[], &parent, Audience::Runtime);
        assert_eq!(values(on_itself).len(), 1);
    }

    #[test]
    fn visibility_picks_the_audience() {
        let project = [
            var("", "build-only", "b", true, false, true),
            var("", "runtime-only", "r", false, true, true),
            var("", "both", "x", true, true, true),
        ];
        let build: Vec<String> = effective(&project, &[], &[], Audience::Build)
            .into_keys()
            .collect();
        let runtime: Vec<String> = effective(&project, &[], &[], Audience::Runtime)
            .into_keys()
            .collect();
        assert_eq!(build, ["both", "build-only"]);
        assert_eq!(runtime, ["both", "runtime-only"]);
    }

    #[test]
    fn a_level_hiding_a_name_from_an_audience_hides_what_it_overrides() {
        let project = [var("", "env:TOKEN", "project", true, true, true)];
        let own = [var("staging", "env:TOKEN", "staging", true, false, true)];
        assert!(effective(&project, &[], &own, Audience::Runtime).is_empty());
        assert_eq!(
            values(effective(&project, &[], &own, Audience::Build)),
            [("env:TOKEN".into(), "staging".into())]
        );
    }

    #[test]
    fn names_are_checked() {
        for good in ["env:API_URL", "theme", "django:secret_key", "app.mode"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "env:", "env:1ABC", "env:A-B", "a b", "x:y:z", ":x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
