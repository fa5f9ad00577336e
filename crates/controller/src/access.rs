//! Users, their roles, and what each role may do (SPEC section 8), as on Platform.sh: per
//! environment type `admin` (everything), `contributor` (push, ssh; no settings), `viewer`
//! (read only); plus project admins, who may do everything, users and project variables
//! included. The built-in token of `lockstep up` is a project admin.

use lockstep_proto::agent::EnvironmentType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Contributor,
    Admin,
}

/// A user's roles; an environment type without a role is invisible to the user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    #[serde(default)]
    pub project_admin: bool,
    pub production: Option<Role>,
    pub staging: Option<Role>,
    pub development: Option<Role>,
}

impl Roles {
    pub fn on(&self, kind: EnvironmentType) -> Option<Role> {
        match kind {
            EnvironmentType::Production => self.production,
            EnvironmentType::Staging => self.staging,
            EnvironmentType::Development => self.development,
        }
    }

    /// Parses `production:admin,staging:contributor,development:viewer` (`none` removes a role).
    pub fn parse_into(&mut self, spec: &str) -> Result<(), String> {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (kind, role) = item
                .split_once(':')
                .ok_or_else(|| format!("`{item}` must be TYPE:ROLE, such as production:viewer"))?;
            let role = match role {
                "admin" => Some(Role::Admin),
                "contributor" => Some(Role::Contributor),
                "viewer" => Some(Role::Viewer),
                "none" => None,
                other => {
                    return Err(format!(
                        "`{other}` is not a role: admin, contributor, viewer or none"
                    ));
                }
            };
            match kind {
                "production" => self.production = role,
                "staging" => self.staging = role,
                "development" => self.development = role,
                other => {
                    return Err(format!(
                        "`{other}` is not an environment type: production, staging or development"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The instance's own token: a project admin.
    Owner,
    User {
        email: String,
        roles: Roles,
    },
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Owner => "owner",
            Principal::User { email, .. } => email,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Environments, activities, logs, variables' names and non-sensitive values.
    Read,
    /// `git push` to the environment's branch.
    Push,
    /// A shell or a command on the environment's nodes.
    Ssh,
    /// Deploy, roll back, settings and the environment's variables.
    Manage,
}

/// The permission table.
pub fn allowed(principal: &Principal, action: Action, kind: EnvironmentType) -> bool {
    let roles = match principal {
        Principal::Owner => return true,
        Principal::User { roles, .. } if roles.project_admin => return true,
        Principal::User { roles, .. } => roles,
    };
    let Some(role) = roles.on(kind) else {
        return false;
    };
    match action {
        Action::Read => true,
        Action::Push | Action::Ssh => role >= Role::Contributor,
        Action::Manage => role == Role::Admin,
    }
}

/// The project's own facts (its variables' names and non-sensitive values): whoever has a role
/// on the project, whatever the environment type.
pub fn may_read_project(principal: &Principal) -> bool {
    match principal {
        Principal::Owner => true,
        Principal::User { roles, .. } => {
            roles.project_admin
                || [roles.production, roles.staging, roles.development]
                    .iter()
                    .any(Option::is_some)
        }
    }
}

/// Users and project variables: project admins only.
pub fn may_manage_project(principal: &Principal) -> bool {
    match principal {
        Principal::Owner => true,
        Principal::User { roles, .. } => roles.project_admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIONS: [Action; 4] = [Action::Read, Action::Push, Action::Ssh, Action::Manage];

    const KINDS: [EnvironmentType; 3] = [
        EnvironmentType::Production,
        EnvironmentType::Staging,
        EnvironmentType::Development,
    ];

    fn user_with(kind: EnvironmentType, role: Option<Role>) -> Principal {
        let mut roles = Roles::default();
        match kind {
            EnvironmentType::Production => roles.production = role,
            EnvironmentType::Staging => roles.staging = role,
            EnvironmentType::Development => roles.development = role,
        }
        Principal::User {
            email: "u@example.com".into(),
            roles,
        }
    }

    #[test]
    fn every_role_on_every_environment_type_for_every_action() {
        for kind in KINDS {
            for role in [
                None,
                Some(Role::Viewer),
                Some(Role::Contributor),
                Some(Role::Admin),
            ] {
                let user = user_with(kind, role);
                for action in ACTIONS {
                    let expected = match (role, action) {
                        (None, _) => false,
                        (Some(_), Action::Read) => true,
                        (Some(Role::Viewer), _) => false,
                        (Some(Role::Contributor), Action::Push | Action::Ssh) => true,
                        (Some(Role::Contributor), Action::Manage) => false,
                        (Some(Role::Admin), _) => true,
                    };
                    assert_eq!(
                        allowed(&user, action, kind),
                        expected,
                        "{role:?} {action:?} on {kind:?}"
                    );
                    // A role on one type gives nothing on the others.
                    for other in KINDS.iter().filter(|k| **k != kind) {
                        assert!(
                            !allowed(&user, action, *other),
                            "{role:?} on {kind:?} leaks to {other:?}"
                        );
                    }
                }
                assert!(!may_manage_project(&user));
                assert_eq!(may_read_project(&user), role.is_some(), "{role:?}");
            }
        }
    }

    #[test]
    fn owners_and_project_admins_may_do_everything() {
        let admin = Principal::User {
            email: "a@example.com".into(),
            roles: Roles {
                project_admin: true,
                ..Roles::default()
            },
        };
        for principal in [Principal::Owner, admin] {
            for kind in KINDS {
                for action in ACTIONS {
                    assert!(allowed(&principal, action, kind));
                }
            }
            assert!(may_manage_project(&principal));
            assert!(may_read_project(&principal));
        }
    }

    #[test]
    fn role_specs_parse_and_report_mistakes() {
        let mut roles = Roles::default();
        roles
            .parse_into("production:admin, staging:contributor,development:viewer")
            .unwrap();
        assert_eq!(
            (roles.production, roles.staging, roles.development),
            (
                Some(Role::Admin),
                Some(Role::Contributor),
                Some(Role::Viewer)
            )
        );
        roles.parse_into("staging:none").unwrap();
        assert_eq!(roles.staging, None);
        assert!(
            roles
                .parse_into("prod:admin")
                .unwrap_err()
                .contains("not an environment type")
        );
        assert!(
            roles
                .parse_into("production:owner")
                .unwrap_err()
                .contains("not a role")
        );
        assert!(
            roles
                .parse_into("production")
                .unwrap_err()
                .contains("TYPE:ROLE")
        );
    }
}
