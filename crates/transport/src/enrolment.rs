//! A host's enrolment (SPEC section 11): a fresh key, its certificate request sent with the
//! join token's secret to the controller's API, the answer kept only if its authority is the
//! one the token names; and, at each later start, the announcement of where the role listens.

use std::path::Path;

use lockstep_proto::nodes::{Announce, ClusterContact, Enrolled, JoinRequest, JoinToken, Pool};

use crate::identity::write_whole;
use crate::{CertificateRequest, Identity, Peer, TransportError, fingerprint_of, http_client};

/// Where the controller's cluster port was last heard of, kept beside the identity.
const CLUSTER_URL_FILE: &str = "cluster-url";

/// The role a registry entry of `pool` enrols as.
pub fn peer_of_pool(pool: Pool, name: &str) -> Peer {
    match pool {
        Pool::Edge => Peer::Edge(name.to_owned()),
        _ => Peer::Node(name.to_owned()),
    }
}

/// Enrols this host with the controller's API at `join_url`, as the role reached at `url`;
/// its identity is kept in `dir`.
pub async fn enrol(
    dir: &Path,
    join_url: &str,
    token: &JoinToken,
    url: &str,
) -> Result<Enrolled, TransportError> {
    let failed = |reason: String| TransportError::Enrol {
        controller: join_url.to_owned(),
        reason,
    };
    let request = CertificateRequest::new()?;
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/join", join_url.trim_end_matches('/')))
        .json(&JoinRequest {
            secret: token.secret.clone(),
            csr: request.csr_pem.clone(),
            agent_url: url.to_owned(),
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
    if identity.peer()? != peer_of_pool(enrolled.pool, &enrolled.node) {
        return Err(failed(
            "the certificate it issued names another role".into(),
        ));
    }
    identity.save(dir)?;
    write_whole(dir, CLUSTER_URL_FILE, &enrolled.cluster_url, 0o644)?;
    Ok(enrolled)
}

/// Tells the controller where this enrolled role listens now (`url`), at its cluster port as the
/// public contact of `join_url` names it (checked against the role's authority), or as last
/// heard of. Retries until it is heard: the controller may start after the role.
pub async fn announce(dir: std::path::PathBuf, join_url: Option<String>, url: String) {
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        match announce_once(&dir, join_url.as_deref(), &url).await {
            Ok(()) => {
                tracing::info!(%url, "announced to the controller");
                return;
            }
            Err(error) => tracing::debug!(%error, "cannot announce yet"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(10));
    }
}

async fn announce_once(
    dir: &Path,
    join_url: Option<&str>,
    url: &str,
) -> Result<(), TransportError> {
    let identity = Identity::load(dir)?.ok_or_else(|| TransportError::Certificate {
        what: dir.display().to_string(),
        detail: "holds no identity".into(),
    })?;
    let failed = |reason: String| TransportError::Enrol {
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
        if contact.ca_fingerprint != fingerprint_of(&identity.ca_pem)? {
            return Err(failed(
                "it is another project's controller: this host was enrolled elsewhere".into(),
            ));
        }
        write_whole(dir, CLUSTER_URL_FILE, &contact.cluster_url, 0o644)?;
    }
    let path = dir.join(CLUSTER_URL_FILE);
    let cluster_url = std::fs::read_to_string(&path).map_err(|source| TransportError::Io {
        action: "read",
        path,
        source,
    })?;
    http_client(&identity)?
        .put(format!("{}/v1/nodes/self", cluster_url.trim()))
        .json(&Announce {
            agent_url: url.to_owned(),
        })
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| failed(e.to_string()))?;
    Ok(())
}
