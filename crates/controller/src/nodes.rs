//! The node registry (SPEC section 11): `lockstep node add / list / remove`, a host's join with
//! its token, an agent saying where it listens, the renewal of nodes' certificates, and where a
//! pool's nodes go: every enrolled node of the production and staging pools is a node of that
//! cluster, and each development environment is on one development node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lockstep_proto::agent::EnvironmentType;
use lockstep_proto::nodes::{
    ClusterContact, Enrolled, JoinRequest, JoinToken, NodeAdded, NodeEntry, Pool,
    RevokedCertificates,
};
use lockstep_transport::{Peer, fingerprint_of, peer_of_pool};

use crate::store::{self, RegisteredNode};
use crate::{Controller, ControllerError, Environment, Node, random_token};

/// How long a join token may wait for its host.
const JOIN_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The pool whose nodes host environments of `kind` (no environment is on an edge).
pub(crate) fn pool_of(kind: EnvironmentType) -> Pool {
    match kind {
        EnvironmentType::Production => Pool::Production,
        EnvironmentType::Staging => Pool::Staging,
        EnvironmentType::Development => Pool::Development,
    }
}

/// An environment as placement sees it: its kind and the nodes it has.
pub(crate) struct Placed {
    pub name: String,
    pub kind: EnvironmentType,
    pub nodes: Vec<String>,
}

/// The nodes environments gain: a cluster every enrolled node of its pool it lacks; a
/// development environment without a node the enrolled development node hosting fewest.
pub(crate) fn placements(
    registered: &[RegisteredNode],
    environments: &[Placed],
) -> Vec<(String, String)> {
    let enrolled = |pool: Pool| {
        registered
            .iter()
            .filter(move |node| node.pool == pool && node.enrolled())
            .map(|node| node.name.clone())
    };
    let mut load: BTreeMap<String, usize> = enrolled(Pool::Development).map(|n| (n, 0)).collect();
    for env in environments
        .iter()
        .filter(|e| e.kind == EnvironmentType::Development)
    {
        for node in &env.nodes {
            if let Some(count) = load.get_mut(node) {
                *count += 1;
            }
        }
    }
    let mut gained = Vec::new();
    for env in environments {
        if env.kind == EnvironmentType::Development {
            if env.nodes.is_empty()
                && let Some((node, count)) = load.iter_mut().min_by_key(|(_, count)| **count)
            {
                *count += 1;
                gained.push((env.name.clone(), node.clone()));
            }
            continue;
        }
        for node in enrolled(pool_of(env.kind)) {
            if !env.nodes.contains(&node) {
                gained.push((env.name.clone(), node));
            }
        }
    }
    gained
}

/// A node's name: it is part of certificates and URLs.
fn check_node_name(name: &str) -> Result<(), ControllerError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(ControllerError::Node(format!(
            "`{name}` cannot name a node: use up to 63 lowercase letters, digits and dashes"
        )))
    }
}

fn agent_url_of(registered: &[RegisteredNode], node: &str) -> Option<String> {
    registered
        .iter()
        .find(|r| r.name == node)?
        .agent_url
        .clone()
}

fn hash_secret(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

fn rfc3339(at: SystemTime) -> String {
    store::timestamp(chrono::DateTime::<chrono::Utc>::from(at))
}

impl Controller {
    /// Places node `name` in `pool` and makes the token its host joins with (once, within a
    /// day). Asking again for a node of the same pool makes a new token, for a host that lost
    /// its identity.
    pub fn add_node(&self, name: &str, pool: Pool) -> Result<NodeAdded, ControllerError> {
        check_node_name(name)?;
        if let Some(existing) = self.store.registered_node(name)?
            && existing.pool != pool
        {
            return Err(ControllerError::Node(format!(
                "node {name} is in the {} pool: `lockstep node remove {name}` first to move it",
                existing.pool
            )));
        }
        let secret = random_token();
        let now = SystemTime::now();
        self.store.register_node(
            name,
            pool,
            &hash_secret(&secret),
            &rfc3339(now + JOIN_TOKEN_LIFETIME),
            &rfc3339(now),
        )?;
        let token = JoinToken {
            ca_fingerprint: self.authority.fingerprint(),
            secret,
        };
        tracing::debug!(node = name, %pool, "node added; waiting for its host to join");
        Ok(NodeAdded {
            name: name.to_owned(),
            pool,
            join_token: token.to_string(),
            shared_storage: self
                .storage
                .named(pool)
                .map(|folder| folder.display().to_string()),
        })
    }

    pub fn list_nodes(&self) -> Result<Vec<NodeEntry>, ControllerError> {
        let mut hosting: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for env in self.store.environments()? {
            for node in self.store.nodes(&env.name)? {
                hosting.entry(node.name).or_default().push(env.name.clone());
            }
        }
        Ok(self
            .store
            .registered_nodes()?
            .into_iter()
            .map(|node| NodeEntry {
                environments: hosting.remove(&node.name).unwrap_or_default(),
                name: node.name,
                pool: node.pool,
                agent_url: node.agent_url,
                certificate_expires: node.certificate_expires_at,
            })
            .collect())
    }

    /// A host enrols as the node its token was made for: its certificate, for the key of its
    /// request, names that node and the address its agent listens on.
    pub fn join(self: &Arc<Self>, request: &JoinRequest) -> Result<Enrolled, ControllerError> {
        let refused = || {
            ControllerError::Forbidden(
                "this join token is unknown, spent or expired: `lockstep node add NAME --pool POOL` makes a new one".into(),
            )
        };
        let host = reqwest::Url::parse(&request.agent_url)
            .ok()
            .filter(|url| url.scheme() == "https" && url.port().is_some())
            .and_then(|url| url.host_str().map(str::to_owned))
            .ok_or_else(|| {
                ControllerError::Node(format!(
                    "`{}` is no agent URL: https://HOST:PORT, where the controller reaches the agent",
                    request.agent_url
                ))
            })?;
        let node = self
            .store
            .take_join(&hash_secret(&request.secret), &rfc3339(SystemTime::now()))?
            .ok_or_else(refused)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let certificate = self
            .authority
            .issue(&request.csr, &peer_of_pool(node.pool, &node.name), &[host])
            .map_err(|e| ControllerError::Node(e.to_string()))?;
        self.record_certificate(&node.name, &request.agent_url, &certificate)?;
        // A host that joins again (its identity lost) may listen elsewhere.
        self.store.move_agent(&node.name, &request.agent_url)?;
        tracing::debug!(node = %node.name, pool = %node.pool, agent = %request.agent_url, "node enrolled");
        if let Err(error) = self.place_nodes() {
            tracing::warn!(%error, "the new node is placed at the next round");
        }
        Ok(Enrolled {
            node: node.name,
            pool: node.pool,
            ca: self.authority.ca_pem().to_owned(),
            certificate,
            cluster_url: self.options.cluster_url.clone(),
        })
    }

    fn record_certificate(
        &self,
        node: &str,
        agent_url: &str,
        certificate: &str,
    ) -> Result<(), ControllerError> {
        let invalid = |e: lockstep_transport::TransportError| ControllerError::Node(e.to_string());
        let fingerprint = fingerprint_of(certificate).map_err(invalid)?;
        let expires = lockstep_transport::certificate_expiry(certificate).map_err(invalid)?;
        self.store
            .record_certificate(node, agent_url, &fingerprint, &rfc3339(expires))?;
        Ok(())
    }

    pub fn cluster_contact(&self) -> ClusterContact {
        ClusterContact {
            ca_fingerprint: self.authority.fingerprint(),
            cluster_url: self.options.cluster_url.clone(),
        }
    }

    /// An enrolled node's agent listens at `agent_url` now (on the address its certificate
    /// names: a new address is a new enrolment).
    pub fn announce(&self, node: &str, agent_url: &str) -> Result<(), ControllerError> {
        let Some(registered) = self.store.registered_node(node)? else {
            return Err(ControllerError::Forbidden(format!(
                "node {node} is not registered"
            )));
        };
        if registered.agent_url.as_deref() != Some(agent_url) {
            let moved = self.store.move_agent(node, agent_url)?;
            tracing::info!(
                node,
                agent = agent_url,
                environments = moved,
                "node's agent moved"
            );
        }
        Ok(())
    }

    /// The registered node or edge that `peer` is, if `fingerprint` is the certificate it was
    /// last issued.
    pub(crate) fn enrolled_as(&self, peer: &Peer, fingerprint: &str) -> Option<String> {
        let (Peer::Node(name) | Peer::Edge(name)) = peer else {
            return None;
        };
        let node = self.store.registered_node(name).ok().flatten()?;
        (peer_of_pool(node.pool, &node.name) == *peer
            && node.certificate_fingerprint.as_deref() == Some(fingerprint))
        .then_some(node.name)
    }

    /// The nodes of `env`; refused while it has none, saying how to give it one.
    pub(crate) fn nodes_of(&self, env: &Environment) -> Result<Vec<Node>, ControllerError> {
        let nodes = self.store.nodes(&env.name)?;
        if nodes.is_empty() {
            let pool = pool_of(env.kind);
            return Err(ControllerError::Environment(format!(
                "{} has no node yet: place one in the {pool} pool (`lockstep node add NAME --pool {pool}`, then `lockstep agent --join URL` with its token on the node's host)",
                env.name
            )));
        }
        Ok(nodes)
    }

    /// The nodes (name, agent URL) a new environment `name` of `kind` starts with.
    pub(crate) fn nodes_for_new_environment(
        &self,
        name: &str,
        kind: EnvironmentType,
    ) -> Result<Vec<(String, String)>, ControllerError> {
        let registered = self.store.registered_nodes()?;
        let mut environments = vec![Placed {
            name: name.to_owned(),
            kind,
            nodes: Vec::new(),
        }];
        environments.extend(self.placed_environments()?);
        Ok(placements(&registered, &environments)
            .into_iter()
            .filter(|(environment, _)| environment == name)
            .filter_map(|(_, node)| {
                let agent_url = agent_url_of(&registered, &node)?;
                Some((node, agent_url))
            })
            .collect())
    }

    /// Every environment (pending ones too) with the nodes it has.
    fn placed_environments(&self) -> Result<Vec<Placed>, ControllerError> {
        let mut environments = Vec::new();
        for env in self.store.environments_and_pending()? {
            let nodes = self.store.nodes(&env.name)?;
            environments.push(Placed {
                name: env.name,
                kind: env.kind,
                nodes: nodes.into_iter().map(|n| n.name).collect(),
            });
        }
        Ok(environments)
    }

    /// Adds enrolled nodes to the environments their pools serve; an environment with work
    /// under way gains its node at a later round.
    pub(crate) fn place_nodes(self: &Arc<Self>) -> Result<(), ControllerError> {
        let registered = self.store.registered_nodes()?;
        let environments = self.placed_environments()?;
        for (environment, node) in placements(&registered, &environments) {
            let Some(_claim) = self.claim_idle(&environment) else {
                continue;
            };
            let Some(agent_url) = agent_url_of(&registered, &node) else {
                continue;
            };
            self.store
                .add_environment_node(&environment, &node, &agent_url)?;
            tracing::debug!(%environment, %node, "node placed; it catches up to what the environment serves");
        }
        Ok(())
    }

    /// Takes node `name` out of every environment and out of the registry: its certificate is
    /// refused from now on, and its agent is told to remove what it held. Refused while it is
    /// an environment's last node and that environment serves, or holds a service's primary.
    pub async fn remove_node(self: &Arc<Self>, name: &str) -> Result<(), ControllerError> {
        if self.store.registered_node(name)?.is_none() {
            return Err(ControllerError::UnknownNode(name.to_owned()));
        }
        let mut hosted: Vec<(String, Node)> = Vec::new();
        let mut claims = Vec::new();
        for env in self.store.environments_and_pending()? {
            let nodes = self.store.nodes(&env.name)?;
            let Some(node) = nodes.iter().find(|n| n.name == name).cloned() else {
                continue;
            };
            if nodes.len() == 1 && env.serving.is_some() {
                return Err(ControllerError::Node(format!(
                    "node {name} is the last node of {}, which serves: add another to the {} pool first",
                    env.name,
                    pool_of(env.kind)
                )));
            }
            if nodes.len() > 1 {
                for service in self.store.services(&env.name)? {
                    if service.primary_on(&nodes) == Some(name) {
                        return Err(ControllerError::Node(format!(
                            "node {name} holds the primary of {}'s service `{}`: `lockstep service promote {} {} NODE` to another node first",
                            env.name, service.name, env.name, service.name
                        )));
                    }
                }
            }
            let claim = self.claim_idle(&env.name).ok_or_else(|| {
                ControllerError::Environment(format!(
                    "{} has work under way on node {name}: remove the node when its activity ends",
                    env.name
                ))
            })?;
            claims.push(claim);
            hosted.push((env.name.clone(), node));
        }
        for (environment, node) in &hosted {
            self.store.remove_environment_node(environment, name)?;
            if let Err(error) = self
                .agents
                .delete_environment(&node.agent_url, environment)
                .await
            {
                tracing::warn!(node = name, %environment, %error, "the removed node keeps what it held of the environment");
            }
        }
        self.store.unregister_node(name)?;
        drop(claims);
        tracing::info!(node = name, environments = hosted.len(), "node removed");
        Ok(())
    }

    /// Renews the certificates of nodes with a third of their lifetime left: the agent makes a
    /// new key, the authority certifies it, the agent serves with it.
    pub(crate) async fn renew_certificates(&self) -> Result<(), ControllerError> {
        let now = SystemTime::now();
        let renew_before = rfc3339(now + lockstep_transport::CERTIFICATE_LIFETIME / 3);
        for node in self.store.registered_nodes()? {
            let (Some(agent_url), Some(expires)) = (&node.agent_url, &node.certificate_expires_at)
            else {
                continue;
            };
            if *expires > renew_before {
                continue;
            }
            let failed = |e: &dyn std::fmt::Display| ControllerError::Agent {
                node: node.name.clone(),
                message: format!("cannot renew its certificate: {e}"),
            };
            let request = self
                .agents
                .certificate_request(agent_url)
                .await
                .map_err(|e| failed(&e))?;
            let host = reqwest::Url::parse(agent_url)
                .ok()
                .and_then(|url| {
                    url.host_str()
                        .map(|h| h.trim_matches(['[', ']']).to_owned())
                })
                .unwrap_or_default();
            let certificate = self
                .authority
                .issue(&request.csr, &peer_of_pool(node.pool, &node.name), &[host])
                .map_err(|e| failed(&e))?;
            self.agents
                .install_certificate(agent_url, certificate.clone())
                .await
                .map_err(|e| failed(&e))?;
            self.record_certificate(&node.name, agent_url, &certificate)?;
            tracing::info!(node = %node.name, "certificate renewed");
        }
        self.renew_own_certificate()
    }

    /// Tells every enrolled node which certificates to refuse (removed hosts', until they
    /// expire): a removed edge's at its routers above all. Told again to a node whose
    /// certificate changed (a host that joined again has an empty list) and after a restart.
    pub(crate) async fn tell_revocations(&self) -> Result<(), ControllerError> {
        let revoked = RevokedCertificates {
            fingerprints: self
                .store
                .revoked_certificates(&rfc3339(SystemTime::now()))?,
        };
        let nodes: Vec<(String, String, String)> = self
            .store
            .registered_nodes()?
            .into_iter()
            .filter(|node| node.pool != Pool::Edge)
            .filter_map(|node| Some((node.name, node.agent_url?, node.certificate_fingerprint?)))
            .collect();
        self.revocations_told
            .lock()
            .expect("revocations lock")
            .retain(|(name, certificate), _| {
                nodes.iter().any(|(n, _, c)| n == name && c == certificate)
            });
        for (name, agent_url, certificate) in nodes {
            let key = (name, certificate);
            let told = self
                .revocations_told
                .lock()
                .expect("revocations lock")
                .get(&key)
                == Some(&revoked.fingerprints);
            if told {
                continue;
            }
            match self.agents.revoke_certificates(&agent_url, &revoked).await {
                Ok(()) => {
                    self.revocations_told
                        .lock()
                        .expect("revocations lock")
                        .insert(key, revoked.fingerprints.clone());
                }
                Err(error) => {
                    tracing::debug!(node = %key.0, %error, "revoked certificates not told yet");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, pool: Pool, enrolled: bool) -> RegisteredNode {
        RegisteredNode {
            name: name.into(),
            pool,
            added_at: String::new(),
            agent_url: enrolled.then(|| format!("https://{name}:1")),
            certificate_fingerprint: enrolled.then(|| "f".into()),
            certificate_expires_at: None,
        }
    }

    fn env(name: &str, kind: EnvironmentType, nodes: &[&str]) -> Placed {
        Placed {
            name: name.into(),
            kind,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn clusters_gain_every_enrolled_node_of_their_pool_and_nothing_else() {
        let registered = [
            node("p1", Pool::Production, true),
            node("p2", Pool::Production, true),
            node("p3", Pool::Production, false),
            node("s1", Pool::Staging, true),
        ];
        let environments = [
            env("production", EnvironmentType::Production, &["p1"]),
            env("staging", EnvironmentType::Staging, &[]),
        ];
        assert_eq!(
            placements(&registered, &environments),
            [
                ("production".into(), "p2".into()),
                ("staging".into(), "s1".into())
            ]
        );
    }

    #[test]
    fn a_development_environment_without_a_node_goes_to_the_least_loaded_one() {
        let registered = [
            node("d1", Pool::Development, true),
            node("d2", Pool::Development, true),
        ];
        let environments = [
            env("a", EnvironmentType::Development, &["d1"]),
            env("b", EnvironmentType::Development, &[]),
            env("c", EnvironmentType::Development, &[]),
        ];
        assert_eq!(
            placements(&registered, &environments),
            [("b".into(), "d2".into()), ("c".into(), "d1".into())]
        );
        assert!(placements(&[], &environments).is_empty());
    }

    #[test]
    fn node_names_that_could_not_be_part_of_a_certificate_are_refused() {
        for bad in ["", "-a", "A", "a.b", "a:b", &"a".repeat(64)] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
        check_node_name("production-1").unwrap();
    }
}
