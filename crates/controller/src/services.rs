//! An environment's services across its nodes (SPEC section 10). What the deployed
//! configuration declares becomes one spec per service, sent to every node before the
//! deployment begins, so that services are up for the deploy hook and run through the closed
//! window. The first node runs each primary; every other node runs a replica with the engine's
//! own replication (PostgreSQL streaming, Redis replication, a Galera cluster for MariaDB), and
//! reaches the primary through its endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use lockstep_config::Service;
use lockstep_proto::agent::{ServiceRole, ServiceSpec, ServiceStatus};
use serde::Serialize;

use crate::ControllerError;
use crate::agents::{AgentClient, Call};
use crate::store::{Node, Store, StoredService};

/// A fresh database's data folder is made on the first call: `initdb` and
/// `mariadb-install-db` take seconds, a slow disk more.
const ENSURE_TIMEOUT: Duration = Duration::from_secs(180);

/// The specs of the services `declared`, each with the credentials recorded for it; a service
/// declared for the first time is recorded. A service whose engine or version changed is
/// refused: its data is in the old one's format.
pub(crate) fn specs(
    store: &Store,
    environment: &str,
    declared: &BTreeMap<String, Service>,
) -> Result<Vec<ServiceSpec>, ControllerError> {
    let recorded = store.services(environment)?;
    let mut specs = Vec::new();
    for (name, service) in declared {
        let stored = match recorded.iter().find(|s| &s.name == name) {
            Some(stored) if stored.engine != service.kind || stored.version != service.version => {
                return Err(ControllerError::ServiceChanged(format!(
                    "service `{name}` runs {}:{}; `.platform/services.yaml` now says `{}`. Lockstep does not change a service's engine or version in place: keep `{}:{}`, or add a service under a new name and move the data",
                    stored.engine.as_str(),
                    stored.version,
                    service.written_type,
                    stored.engine.as_str(),
                    stored.version,
                )));
            }
            Some(stored) => stored.clone(),
            None => {
                let stored = StoredService {
                    name: name.clone(),
                    engine: service.kind,
                    version: service.version.clone(),
                    password: crate::random_token(),
                    primary_node: None,
                    primary_address: None,
                };
                store.add_service(environment, &stored)?;
                stored
            }
        };
        specs.push(ServiceSpec {
            name: name.clone(),
            engine: service.kind,
            service_type: service.written_type.clone(),
            persistent: service.persistent,
            disk_mb: service.disk,
            password: stored.password,
            endpoints: service.endpoints.clone(),
            role: ServiceRole::Primary {
                replicas: 0,
                cluster: Vec::new(),
            },
        });
    }
    Ok(specs)
}

/// Whether placing services needs every node of the environment, as a deployment does, or
/// goes on without the ones that do not answer, as a promotion does when a node is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    EveryNode,
    AnsweringNodes,
}

/// What [`place`] did.
pub(crate) struct Placed {
    /// Each node placed, with its services.
    pub nodes: Vec<(String, Vec<ServiceStatus>)>,
    /// Nodes that did not answer, left as they were.
    pub skipped: Vec<String>,
    /// `host:port` of each service's primary.
    pub primaries: BTreeMap<String, String>,
}

/// Runs `specs` on `nodes`: each service's primary on the node `stored` records for it (the
/// first node until a promotion); on every other node a replica with the engine's own replication
/// (a Galera member for MariaDB). Answers each node's services once they all accept
/// connections.
pub(crate) async fn place(
    agents: &AgentClient,
    // The instance that answers for the environment's services on each node.
    instance: &str,
    nodes: &[Node],
    specs: Vec<ServiceSpec>,
    stored: &[StoredService],
    reach: Reach,
) -> Result<Placed, ControllerError> {
    let mut placed = Placed {
        nodes: Vec::new(),
        skipped: Vec::new(),
        primaries: BTreeMap::new(),
    };
    let Some(first) = nodes.first() else {
        return Ok(placed);
    };
    let primary_node = |service: &str| -> &str {
        stored
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.primary_on(nodes))
            .unwrap_or(first.name.as_str())
    };
    // A primary on a node that does not answer is where it was last placed.
    placed.primaries = stored
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.primary_address.clone()?)))
        .collect();
    // What each node runs now: where the primaries listen, and the clusters' members.
    let mut running: BTreeMap<&str, Vec<ServiceStatus>> = BTreeMap::new();
    for node in nodes {
        match agents.status(&node.agent_url, instance).await {
            Ok(status) => {
                running.insert(&node.name, status.services);
            }
            Err(error) if reach == Reach::EveryNode => {
                return Err(ControllerError::agent(node)(error));
            }
            Err(error) => {
                tracing::warn!(instance, node = %node.name, %error, "node left out of the services' placement");
                placed.skipped.push(node.name.clone());
            }
        }
    }
    let learn = |placed: &mut Placed, node: &Node, statuses: &[ServiceStatus]| {
        for status in statuses {
            if primary_node(&status.name) == node.name && status.port != 0 {
                placed.primaries.insert(
                    status.name.clone(),
                    format!("{}:{}", node.host(), status.port),
                );
            }
        }
    };
    for node in nodes {
        if let Some(statuses) = running.get(node.name.as_str()) {
            learn(&mut placed, node, statuses);
        }
    }
    let members = |running: &BTreeMap<&str, Vec<ServiceStatus>>, service: &str| -> Vec<String> {
        nodes
            .iter()
            .filter_map(|node| {
                let status = running
                    .get(node.name.as_str())?
                    .iter()
                    .find(|s| s.name == service)?;
                (status.cluster_port != 0)
                    .then(|| format!("{}:{}", node.host(), status.cluster_port))
            })
            .collect()
    };
    let replicas = nodes.len() as u32 - 1;
    let roles_on = |node: &Node,
                    placed: &Placed,
                    running: &BTreeMap<&str, Vec<ServiceStatus>>|
     -> Result<Vec<ServiceSpec>, ControllerError> {
        specs
            .iter()
            .map(|spec| {
                let cluster = members(running, &spec.name);
                let role = if primary_node(&spec.name) == node.name {
                    ServiceRole::Primary { replicas, cluster }
                } else {
                    let primary = placed.primaries.get(&spec.name).cloned().ok_or_else(|| {
                        ControllerError::Promotion(format!(
                            "service {} has no primary to follow: its node {} does not answer",
                            spec.name,
                            primary_node(&spec.name)
                        ))
                    })?;
                    ServiceRole::Replica { primary, cluster }
                };
                Ok(ServiceSpec {
                    role,
                    ..spec.clone()
                })
            })
            .collect()
    };
    // The first node first: a new service's primary is there, and the others follow it.
    let mut told = BTreeMap::new();
    for node in nodes {
        if placed.skipped.contains(&node.name) {
            continue;
        }
        let specs = roles_on(node, &placed, &running)?;
        let statuses = ensure_on(agents, instance, node, &specs).await?;
        learn(&mut placed, node, &statuses);
        running.insert(&node.name, statuses);
        told.insert(node.name.as_str(), specs);
    }
    // Every member of a cluster learns where all the others are, to rejoin after a restart
    // through whichever is up.
    for node in nodes {
        let Some(before) = told.get(node.name.as_str()) else {
            continue;
        };
        let specs = roles_on(node, &placed, &running)?;
        if &specs != before {
            let statuses = ensure_on(agents, instance, node, &specs).await?;
            running.insert(&node.name, statuses);
        }
    }
    placed.nodes = nodes
        .iter()
        .filter_map(|node| Some((node.name.clone(), running.get(node.name.as_str())?.clone())))
        .filter(|(name, _)| !placed.skipped.contains(name))
        .collect();
    Ok(placed)
}

/// What a placement did, one line per service and node, as an activity's log says it.
pub(crate) fn placement_lines(placed: &Placed) -> Vec<String> {
    let mut lines = Vec::new();
    for (node, services) in &placed.nodes {
        for service in services {
            let role = match &service.role {
                ServiceRole::Primary { .. } => "primary".to_owned(),
                ServiceRole::Replica { primary, .. } => format!("replica of {primary}"),
                ServiceRole::Remote { primary } => {
                    format!("endpoint to the primary at {primary}")
                }
            };
            lines.push(format!("Service {} on {node}: {role}, ready", service.name));
        }
    }
    for node in &placed.skipped {
        lines.push(format!(
            "Node {node} does not answer: its services take their part when it returns, before it serves again"
        ));
    }
    lines
}

/// What `lockstep service promote` did.
#[derive(Debug, Serialize)]
pub struct PromoteOutcome {
    pub service: String,
    /// The node whose primary was replaced.
    pub from: String,
    pub to: String,
    /// What was found and done, one line each.
    pub steps: Vec<String>,
}

async fn ensure_on(
    agents: &AgentClient,
    instance: &str,
    node: &Node,
    specs: &[ServiceSpec],
) -> Result<Vec<ServiceStatus>, ControllerError> {
    agents
        .call(
            &node.agent_url,
            instance,
            Call::Services(specs),
            ENSURE_TIMEOUT,
        )
        .await
        .map_err(ControllerError::agent(node))
}

/// Which node's replica of `service` to promote, from how far each answering replica has
/// received the primary's history (`received`, by node). The one that received the most holds
/// every write the primary confirmed (a PostgreSQL commit waits for one replica, a Galera write
/// for every member); one asked for by name must have received as much.
pub(crate) fn choose_promotion(
    service: &str,
    primary_node: &str,
    received: &[(String, Option<u64>)],
    asked: Option<&str>,
) -> Result<String, ControllerError> {
    let refuse = |message: String| Err(ControllerError::Promotion(message));
    let candidates: Vec<(&str, u64)> = received
        .iter()
        .filter(|(node, _)| node != primary_node)
        .filter_map(|(node, received)| Some((node.as_str(), (*received)?)))
        .collect();
    let furthest = candidates
        .iter()
        .copied()
        .reduce(|best, next| if next.1 > best.1 { next } else { best });
    let Some((furthest_node, furthest_received)) = furthest else {
        return refuse(format!(
            "no replica of {service} answered: there is nothing to promote until one of its nodes is back"
        ));
    };
    let Some(asked) = asked else {
        return Ok(furthest_node.to_owned());
    };
    if asked == primary_node {
        return refuse(format!("{asked} runs the primary of {service} already"));
    }
    let Some(&(_, asked_received)) = candidates.iter().find(|(node, _)| *node == asked) else {
        return refuse(format!(
            "{asked} has no replica of {service} that answered; the replicas that did: {}",
            candidates
                .iter()
                .map(|(node, _)| *node)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    if asked_received < furthest_received {
        return refuse(format!(
            "{furthest_node} received more of {service}'s changes than {asked} ({furthest_received} against {asked_received}): promoting {asked} could lose confirmed writes. Promote {furthest_node}, or leave out --node"
        ));
    }
    Ok(asked.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(pairs: &[(&str, Option<u64>)]) -> Vec<(String, Option<u64>)> {
        pairs.iter().map(|(n, r)| (n.to_string(), *r)).collect()
    }

    #[test]
    fn the_replica_that_received_most_is_promoted() {
        let answers = received(&[("p-2", Some(100)), ("p-3", Some(250))]);
        assert_eq!(
            choose_promotion("db", "p-1", &answers, None).unwrap(),
            "p-3"
        );
        assert_eq!(
            choose_promotion("db", "p-1", &answers, Some("p-3")).unwrap(),
            "p-3"
        );
    }

    #[test]
    fn a_replica_behind_another_is_refused() {
        let answers = received(&[("p-2", Some(100)), ("p-3", Some(250))]);
        let error = choose_promotion("db", "p-1", &answers, Some("p-2")).unwrap_err();
        assert!(error.to_string().contains("Promote p-3"), "{error}");
    }

    #[test]
    fn the_primary_itself_or_a_silent_node_is_refused() {
        let answers = received(&[("p-2", Some(100)), ("p-3", None)]);
        assert!(choose_promotion("db", "p-1", &answers, Some("p-1")).is_err());
        let error = choose_promotion("db", "p-1", &answers, Some("p-3")).unwrap_err();
        assert!(
            error.to_string().contains("the replicas that did: p-2"),
            "{error}"
        );
        assert!(choose_promotion("db", "p-1", &received(&[("p-2", None)]), None).is_err());
    }

    #[test]
    fn equal_replicas_promote_the_first_in_node_order() {
        let answers = received(&[("p-2", Some(7)), ("p-3", Some(7))]);
        assert_eq!(
            choose_promotion("db", "p-1", &answers, None).unwrap(),
            "p-2"
        );
    }
}
