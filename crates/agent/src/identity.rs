//! This node's identity (SPEC section 11): enrolment with a join token, the certificate the
//! agent serves and calls with, its renewal when the controller asks, and the announcement of
//! where the agent listens when it starts again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use lockstep_proto::nodes::{
    Announce, ClusterContact, Enrolled, JoinRequest, JoinToken, RenewalRequest,
};
use lockstep_transport::{CertificateRequest, Identity, Peer, ServerIdentity, fingerprint_of};

use crate::AgentError;

/// The folder of the node's identity, in the agent's data folder.
pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Where the controller's cluster port was last heard of, kept beside the identity.
const CLUSTER_URL_FILE: &str = "cluster-url";

pub(crate) struct NodeIdentity {
    dir: PathBuf,
    server: Arc<ServerIdentity>,
    current: RwLock<(Identity, reqwest::Client)>,
    /// The key of the last renewal request, until its certificate comes.
    pending: Mutex<Option<CertificateRequest>>,
}

impl NodeIdentity {
    pub fn load(data_dir: &Path) -> Result<NodeIdentity, AgentError> {
        let dir = identity_dir(data_dir);
        let identity = Identity::load(&dir)?.ok_or_else(|| AgentError::NotEnrolled(dir.clone()))?;
        if !matches!(identity.peer()?, Peer::Node(_)) {
            return Err(AgentError::NotEnrolled(dir));
        }
        let client = lockstep_transport::http_client(&identity)?;
        Ok(NodeIdentity {
            server: ServerIdentity::new(&identity)?,
            current: RwLock::new((identity, client)),
            pending: Mutex::new(None),
            dir,
        })
    }

    pub fn server(&self) -> Arc<ServerIdentity> {
        self.server.clone()
    }

    /// The client of calls to other roles (image pulls), with the current certificate.
    pub fn client(&self) -> reqwest::Client {
        self.current.read().expect("identity lock").1.clone()
    }

    /// A fresh key and its certificate request; the key waits for its certificate.
    pub fn renewal_request(&self) -> Result<RenewalRequest, AgentError> {
        let request = CertificateRequest::new()?;
        let csr = request.csr_pem.clone();
        *self.pending.lock().expect("pending lock") = Some(request);
        Ok(RenewalRequest { csr })
    }

    /// Serves and calls with `certificate`, issued for the last renewal request, from now on;
    /// refused unless it is for that key and names this node again.
    pub fn install(&self, certificate: String) -> Result<(), AgentError> {
        let mut pending = self.pending.lock().expect("pending lock");
        let Some(request) = pending.as_ref() else {
            return Err(AgentError::Refused(
                "no certificate was asked for: POST /v1/certificate-request first".into(),
            ));
        };
        let mut current = self.current.write().expect("identity lock");
        let renewed = Identity {
            ca_pem: current.0.ca_pem.clone(),
            certificate_pem: certificate,
            key_pem: request.key_pem.clone(),
        };
        if renewed.peer()? != current.0.peer()? {
            return Err(AgentError::Refused(
                "the certificate names another node".into(),
            ));
        }
        // Refused unless the certificate is for the pending key.
        self.server.replace(&renewed)?;
        let client = lockstep_transport::http_client(&renewed)?;
        renewed.save(&self.dir)?;
        tracing::info!(expires = ?renewed.expires_at()?, "certificate renewed");
        *current = (renewed, client);
        *pending = None;
        Ok(())
    }
}

/// Enrols this host: a fresh key, its certificate request sent with the join token's secret to
/// the controller's API at `join_url`, and the answer kept once its authority matches the
/// token's fingerprint.
pub async fn enrol(
    data_dir: &Path,
    join_url: &str,
    token: &JoinToken,
    agent_url: &str,
) -> Result<Enrolled, AgentError> {
    let failed = |reason: String| AgentError::Enrol {
        controller: join_url.to_owned(),
        reason,
    };
    let request = CertificateRequest::new()?;
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/join", join_url.trim_end_matches('/')))
        .json(&JoinRequest {
            secret: token.secret.clone(),
            csr: request.csr_pem.clone(),
            agent_url: agent_url.to_owned(),
        })
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !answer.status().is_success() {
        let status = answer.status();
        let said = answer.text().await.unwrap_or_default();
        return Err(failed(format!("{status}: {said}")));
    }
    let enrolled: Enrolled = answer.json().await.map_err(|e| failed(e.to_string()))?;
    if fingerprint_of(&enrolled.ca)? != token.ca_fingerprint {
        return Err(failed(
            "its certificate authority is not the one the join token names: is this the right controller, and nothing in between?".into(),
        ));
    }
    let identity = request.into_identity(enrolled.ca.clone(), enrolled.certificate.clone());
    if identity.peer()? != Peer::Node(enrolled.node.clone()) {
        return Err(failed(
            "the certificate it issued names another node".into(),
        ));
    }
    let dir = identity_dir(data_dir);
    identity.save(&dir)?;
    save_cluster_url(&dir, &enrolled.cluster_url)?;
    Ok(enrolled)
}

/// Tells the controller where this enrolled agent listens now, at its cluster port as the
/// public contact of `join_url` names it (checked against this node's authority), or as last
/// heard of. Retries until it is heard: the controller may start after the agent.
pub async fn announce(data_dir: PathBuf, join_url: Option<String>, agent_url: String) {
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        match announce_once(&data_dir, join_url.as_deref(), &agent_url).await {
            Ok(()) => {
                tracing::info!(%agent_url, "announced to the controller");
                return;
            }
            Err(error) => tracing::debug!(%error, "cannot announce yet"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(10));
    }
}

async fn announce_once(
    data_dir: &Path,
    join_url: Option<&str>,
    agent_url: &str,
) -> Result<(), AgentError> {
    let dir = identity_dir(data_dir);
    let identity = NodeIdentity::load(data_dir)?;
    let failed = |reason: String| AgentError::Enrol {
        controller: join_url.unwrap_or("the controller").to_owned(),
        reason,
    };
    if let Some(join_url) = join_url {
        let contact: ClusterContact =
            reqwest::get(format!("{}/v1/cluster", join_url.trim_end_matches('/')))
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| failed(e.to_string()))?
                .json()
                .await
                .map_err(|e| failed(e.to_string()))?;
        let own = fingerprint_of(&identity.current.read().expect("identity lock").0.ca_pem)?;
        if contact.ca_fingerprint != own {
            return Err(failed(
                "it is another project's controller: this node was enrolled elsewhere".into(),
            ));
        }
        save_cluster_url(&dir, &contact.cluster_url)?;
    }
    let cluster_url = std::fs::read_to_string(dir.join(CLUSTER_URL_FILE))
        .map_err(AgentError::io("read the controller's cluster URL"))?;
    identity
        .client()
        .put(format!("{}/v1/nodes/self", cluster_url.trim()))
        .json(&Announce {
            agent_url: agent_url.to_owned(),
        })
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| failed(e.to_string()))?;
    Ok(())
}

fn save_cluster_url(dir: &Path, url: &str) -> Result<(), AgentError> {
    let path = dir.join(CLUSTER_URL_FILE);
    std::fs::write(&path, url).map_err(AgentError::io(format!("write {}", path.display())))
}
