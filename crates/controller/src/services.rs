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
            role: ServiceRole::Primary {
                replicas: 0,
                cluster: Vec::new(),
            },
        });
    }
    Ok(specs)
}

/// Runs `specs` on `nodes`: primaries on the first node; on the others, replicas with the
/// engine's own replication (a Galera member for MariaDB), or endpoints to the primary.
/// Answers each node's services once they all accept connections.
pub(crate) async fn place(
    agents: &AgentClient,
    environment: &str,
    nodes: &[Node],
    specs: Vec<ServiceSpec>,
) -> Result<Vec<(String, Vec<ServiceStatus>)>, ControllerError> {
    let Some((first, others)) = nodes.split_first() else {
        return Ok(Vec::new());
    };
    let replicas = others.len() as u32;
    let primary_specs = with_roles(&specs, |_| ServiceRole::Primary {
        replicas,
        cluster: Vec::new(),
    });
    let primaries = ensure_on(agents, environment, first, &primary_specs).await?;
    let primary_host = host_of(&first.agent_url);
    let on_primary = |name: &str| primaries.iter().find(|s| s.name == name);
    let replica_specs = with_roles(&specs, |spec| {
        let status = on_primary(&spec.name);
        ServiceRole::Replica {
            primary: format!("{primary_host}:{}", status.map_or(0, |s| s.port)),
            cluster: status
                .filter(|s| s.cluster_port != 0)
                .map(|s| vec![format!("{primary_host}:{}", s.cluster_port)])
                .unwrap_or_default(),
        }
    });
    let mut placed = vec![(first.name.clone(), primaries.clone())];
    for node in others {
        placed.push((
            node.name.clone(),
            ensure_on(agents, environment, node, &replica_specs).await?,
        ));
    }
    // Every member of a cluster learns where all the others are, to rejoin after a restart
    // through whichever is up.
    let members = |name: &str| -> Vec<String> {
        nodes
            .iter()
            .zip(&placed)
            .filter_map(|(node, (_, statuses))| {
                let status = statuses.iter().find(|s| s.name == name)?;
                (status.cluster_port != 0)
                    .then(|| format!("{}:{}", host_of(&node.agent_url), status.cluster_port))
            })
            .collect()
    };
    if specs.iter().any(|spec| members(&spec.name).len() > 1) {
        let told = |specs: &[ServiceSpec]| -> Vec<ServiceSpec> {
            specs
                .iter()
                .cloned()
                .map(|mut spec| {
                    if let Some(cluster) = spec.role.members_mut() {
                        *cluster = members(&spec.name);
                    }
                    spec
                })
                .collect()
        };
        let (primary_specs, replica_specs) = (told(&primary_specs), told(&replica_specs));
        for (index, node) in nodes.iter().enumerate() {
            let specs = if index == 0 {
                &primary_specs
            } else {
                &replica_specs
            };
            placed[index].1 = ensure_on(agents, environment, node, specs).await?;
        }
    }
    Ok(placed)
}

/// `specs` with each one's role as `role` says.
fn with_roles(
    specs: &[ServiceSpec],
    role: impl Fn(&ServiceSpec) -> ServiceRole,
) -> Vec<ServiceSpec> {
    specs
        .iter()
        .map(|spec| ServiceSpec {
            role: role(spec),
            ..spec.clone()
        })
        .collect()
}

async fn ensure_on(
    agents: &AgentClient,
    environment: &str,
    node: &Node,
    specs: &[ServiceSpec],
) -> Result<Vec<ServiceStatus>, ControllerError> {
    agents
        .call(
            &node.agent_url,
            environment,
            Call::Services(specs),
            ENSURE_TIMEOUT,
        )
        .await
        .map_err(ControllerError::agent(node))
}

/// The host of an agent's URL: where its node's services listen too.
fn host_of(agent_url: &str) -> String {
    reqwest::Url::parse(agent_url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".into())
}
