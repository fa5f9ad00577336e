//! Managing users and their tokens, and propagating them to every node without a redeploy.

use std::time::Duration;

use lockstep_proto::agent::NodeUser;
use serde::{Deserialize, Serialize};

use crate::access::{Principal, Roles};
use crate::store::{StoredUser, timestamp};
use crate::{Controller, ControllerError};

/// A user as the API shows it: never the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub email: String,
    pub roles: Roles,
    pub ssh_keys: Vec<String>,
    pub created_at: String,
}

/// A user and the token just made for them: shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserWithToken {
    #[serde(flatten)]
    pub user: User,
    pub token: String,
}

/// What `lockstep user add/update` sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserChange {
    /// `production:admin,staging:contributor,...`
    #[serde(default)]
    pub roles: Option<String>,
    #[serde(default)]
    pub project_admin: Option<bool>,
    /// Replaces the user's keys when given.
    #[serde(default)]
    pub ssh_keys: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("`{0}` is not an email address")]
    InvalidEmail(String),
    #[error("{0}")]
    InvalidRoles(String),
    #[error(
        "`{0}` is not an SSH public key (expected a line such as `ssh-ed25519 AAAA... you@host`)"
    )]
    InvalidKey(String),
    #[error("user {0} already exists; use `lockstep user update`")]
    Exists(String),
    #[error("no user {0}")]
    Unknown(String),
}

fn hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

fn shown(user: &StoredUser) -> User {
    User {
        email: user.email.clone(),
        roles: user.roles.clone(),
        ssh_keys: user.ssh_keys.clone(),
        created_at: user.created_at.clone(),
    }
}

fn check_keys(keys: &[String]) -> Result<(), UserError> {
    for key in keys {
        let mut parts = key.split_whitespace();
        let kind = parts.next().unwrap_or_default();
        let body = parts.next().unwrap_or_default();
        let known =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
        if !known || body.len() < 16 || key.contains(['\n', '\r']) {
            return Err(UserError::InvalidKey(key.chars().take(40).collect()));
        }
    }
    Ok(())
}

impl Controller {
    /// Who a token belongs to, if anyone.
    pub fn principal(&self, token: &str) -> Result<Option<Principal>, ControllerError> {
        if crate::api::token_matches(&self.options.admin_token, token) {
            return Ok(Some(Principal::Owner));
        }
        Ok(self
            .store
            .user_by_token_hash(&hash(token))?
            .map(|user| Principal::User {
                email: user.email,
                roles: user.roles,
            }))
    }

    pub fn list_users(&self) -> Result<Vec<User>, ControllerError> {
        Ok(self.store.users()?.iter().map(shown).collect())
    }

    pub async fn add_user(
        &self,
        email: &str,
        change: UserChange,
    ) -> Result<UserWithToken, ControllerError> {
        let valid = email.contains('@')
            && !email.starts_with('@')
            && !email.ends_with('@')
            && !email.contains(char::is_whitespace);
        if !valid {
            return Err(UserError::InvalidEmail(email.to_owned()).into());
        }
        if self.store.user(email)?.is_some() {
            return Err(UserError::Exists(email.to_owned()).into());
        }
        let mut roles = Roles::default();
        let user = self.changed(
            StoredUser {
                email: email.to_owned(),
                roles: std::mem::take(&mut roles),
                token_hash: String::new(),
                ssh_keys: Vec::new(),
                created_at: timestamp(chrono::Utc::now()),
            },
            change,
        )?;
        self.with_new_token(user).await
    }

    pub async fn update_user(
        &self,
        email: &str,
        change: UserChange,
    ) -> Result<User, ControllerError> {
        let user = self
            .store
            .user(email)?
            .ok_or_else(|| UserError::Unknown(email.to_owned()))?;
        let user = self.changed(user, change)?;
        self.store.put_user(&user)?;
        self.propagate_users().await;
        Ok(shown(&user))
    }

    pub async fn delete_user(&self, email: &str) -> Result<(), ControllerError> {
        if !self.store.delete_user(email)? {
            return Err(UserError::Unknown(email.to_owned()).into());
        }
        self.propagate_users().await;
        Ok(())
    }

    /// Gives a user a new token; the old one stops working at once.
    pub async fn new_token(&self, email: &str) -> Result<UserWithToken, ControllerError> {
        let user = self
            .store
            .user(email)?
            .ok_or_else(|| UserError::Unknown(email.to_owned()))?;
        self.with_new_token(user).await
    }

    async fn with_new_token(&self, mut user: StoredUser) -> Result<UserWithToken, ControllerError> {
        let token = crate::random_token();
        user.token_hash = hash(&token);
        self.store.put_user(&user)?;
        self.propagate_users().await;
        Ok(UserWithToken {
            user: shown(&user),
            token,
        })
    }

    fn changed(
        &self,
        mut user: StoredUser,
        change: UserChange,
    ) -> Result<StoredUser, ControllerError> {
        if let Some(spec) = &change.roles {
            user.roles
                .parse_into(spec)
                .map_err(UserError::InvalidRoles)?;
        }
        if let Some(project_admin) = change.project_admin {
            user.roles.project_admin = project_admin;
        }
        if let Some(keys) = change.ssh_keys {
            check_keys(&keys)?;
            user.ssh_keys = keys;
        }
        Ok(user)
    }

    /// Sends every node of every environment its users, with their role on its environment's
    /// type. Nodes that do not answer get them at their next configuration.
    pub async fn propagate_users(&self) {
        let Ok(environments) = self.store.environments() else {
            return;
        };
        for env in environments {
            let Ok(nodes) = self.store.nodes(&env.name) else {
                continue;
            };
            let Ok(instances) = self.serving_instances(&env) else {
                continue;
            };
            for node in &nodes {
                if let Err(error) = self.send_users(env.kind, node, &instances).await {
                    tracing::warn!(environment = %env.name, node = %node.name, %error, "users not propagated yet");
                }
            }
        }
    }

    /// Sends the users, with their role on an environment of type `kind`, to the environment's
    /// `instances` on `node`.
    pub(crate) async fn send_users(
        &self,
        kind: lockstep_proto::agent::EnvironmentType,
        node: &crate::Node,
        instances: &[crate::apps::AppInstance],
    ) -> Result<(), ControllerError> {
        let users: Vec<NodeUser> = self
            .store
            .users()?
            .into_iter()
            .filter_map(|user| {
                let role = if user.roles.project_admin {
                    Some(crate::access::Role::Admin)
                } else {
                    user.roles.on(kind)
                }?;
                Some(NodeUser {
                    name: user.email,
                    role: serde_json::to_value(role).ok()?.as_str()?.to_owned(),
                    ssh_keys: user.ssh_keys,
                })
            })
            .collect();
        for instance in instances {
            let _: serde_json::Value = self
                .agents
                .call(
                    &node.agent_url,
                    &instance.instance,
                    crate::agents::Call::Users(&users),
                    Duration::from_secs(10),
                )
                .await
                .map_err(ControllerError::agent(node))?;
        }
        Ok(())
    }
}
