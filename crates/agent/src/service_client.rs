//! `lockstep sql` and `lockstep redis` on a node: the service's own client, run in the app's
//! runtime environment (so that the endpoint lets it in, as the app's user) against the
//! endpoint an app's relationship names, with that relationship's credentials.

use std::collections::BTreeMap;

use lockstep_config::Relationship;
use lockstep_proto::agent::{ServiceClient, ServiceClientRequest, ServiceKind};

use crate::error::AgentError;
use crate::services::Reachable;

/// The script and the variables it needs (the password, the SQL), never on its command line.
pub fn command(
    relationships: &BTreeMap<String, Relationship>,
    services: &BTreeMap<String, Reachable>,
    request: &ServiceClientRequest,
) -> Result<(String, BTreeMap<String, String>), AgentError> {
    let fits = |kind: ServiceKind| match request.client {
        ServiceClient::Sql { .. } => kind != ServiceKind::Redis,
        ServiceClient::Redis { .. } => kind == ServiceKind::Redis,
    };
    let wanted = match request.client {
        ServiceClient::Sql { .. } => "an SQL database (postgresql, mariadb)",
        ServiceClient::Redis { .. } => "a redis service",
    };
    let (name, service, endpoint) = match &request.relationship {
        Some(name) => {
            let relationship = relationships.get(name).ok_or_else(|| {
                AgentError::BadRequest(format!(
                    "the app has no relationship `{name}`; it has: {}",
                    names(relationships)
                ))
            })?;
            let service = services.get(&relationship.service).ok_or_else(|| {
                AgentError::Refused(format!(
                    "service `{}` does not run on this node yet",
                    relationship.service
                ))
            })?;
            if !fits(service.spec.engine) {
                return Err(AgentError::BadRequest(format!(
                    "relationship `{name}` is to a {} service, not {wanted}",
                    service.spec.engine.as_str()
                )));
            }
            (name.clone(), service, relationship.endpoint.as_deref())
        }
        None => relationships
            .iter()
            .find_map(|(name, relationship)| {
                services
                    .get(&relationship.service)
                    .filter(|service| fits(service.spec.engine))
                    .map(|service| (name.clone(), service, relationship.endpoint.as_deref()))
            })
            .ok_or_else(|| {
                AgentError::BadRequest(format!(
                    "the app has no relationship to {wanted}; it has: {}",
                    names(relationships)
                ))
            })?,
    };
    tracing::debug!(relationship = %name, "service client");
    let port = service.endpoint_port;
    let connection = crate::services::connection(&service.spec, endpoint).ok_or_else(|| {
        AgentError::Refused(format!(
            "relationship `{name}` names an endpoint that service `{}` does not define",
            service.spec.name
        ))
    })?;
    let user = connection.username.unwrap_or_default();
    let database = connection.path.unwrap_or_default();
    let password = connection.password.unwrap_or_default();
    let mut env = BTreeMap::new();
    let script = match (&request.client, service.spec.engine) {
        (ServiceClient::Sql { input }, ServiceKind::Postgresql) => {
            env.insert("PGPASSWORD".into(), password);
            env.insert("LOCKSTEP_SQL".into(), input.clone());
            format!(
                "printf '%s\\n' \"$LOCKSTEP_SQL\" | psql -h 127.0.0.1 -p {port} -U {user} -d {database} -v ON_ERROR_STOP=1"
            )
        }
        (ServiceClient::Sql { input }, _) => {
            env.insert("MYSQL_PWD".into(), password);
            env.insert("LOCKSTEP_SQL".into(), input.clone());
            format!(
                "printf '%s\\n' \"$LOCKSTEP_SQL\" | mariadb --no-defaults -h 127.0.0.1 -P {port} -u {user} {database}"
            )
        }
        (ServiceClient::Redis { args }, _) => {
            let quoted: Vec<String> = args.iter().map(|arg| shell_quote(arg)).collect();
            format!("redis-cli -h 127.0.0.1 -p {port} {}", quoted.join(" "))
        }
    };
    Ok((script, env))
}

fn names(relationships: &BTreeMap<String, Relationship>) -> String {
    if relationships.is_empty() {
        return "none".into();
    }
    relationships
        .keys()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One shell word, whatever `text` holds.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_argument_stays_one_word() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's; rm -rf /"), "'it'\\''s; rm -rf /'");
    }
}
