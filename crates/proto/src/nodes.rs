//! The node registry's API: enrolment of a host (`lockstep agent --join`), the pools nodes are
//! placed in, and the renewal of a node's certificate.

use serde::{Deserialize, Serialize};

/// What a registered host is for: a node of the production or staging cluster, a node of
/// development environments, or a caching edge in front of them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    Production,
    Staging,
    Development,
    Edge,
}

impl Pool {
    pub const ALL: [Pool; 4] = [
        Pool::Production,
        Pool::Staging,
        Pool::Development,
        Pool::Edge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Production => "production",
            Pool::Staging => "staging",
            Pool::Development => "development",
            Pool::Edge => "edge",
        }
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Pool {
    type Err = String;

    fn from_str(s: &str) -> Result<Pool, String> {
        Pool::ALL
            .into_iter()
            .find(|pool| pool.as_str() == s)
            .ok_or_else(|| format!("`{s}` is no pool: production, staging, development or edge"))
    }
}

/// `POST /v1/nodes`: a node to place in a pool, which a host then enrols as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewNode {
    pub name: String,
    pub pool: Pool,
}

/// The answer to `POST /v1/nodes`: the token `lockstep agent --join` takes, once, within a day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeAdded {
    pub name: String,
    pub pool: Pool,
    pub join_token: String,
    /// The pool's shared folder, which the host must have mounted at this path before it
    /// serves releases with `storage` mounts; `None` where the pool shares the controller's.
    #[serde(default)]
    pub shared_storage: Option<String>,
}

/// A node (or edge) as `GET /v1/nodes` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub pool: Pool,
    /// Where its agent (an edge: its admin API) listens; `None` until it enrolled.
    pub agent_url: Option<String>,
    /// When its certificate expires (RFC 3339); `None` until it enrolled.
    pub certificate_expires: Option<String>,
    /// The environments it hosts.
    pub environments: Vec<String>,
}

/// `POST /v1/join`: a host enrolling as a node or an edge, with the key it made (in a
/// certificate request) and where its agent (an edge: its admin API) listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The secret part of the join token.
    pub secret: String,
    pub csr: String,
    pub agent_url: String,
}

/// The answer to a join: the node's name and pool, its certificate, and the authority's, which
/// the host checks against the fingerprint in its join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolled {
    pub node: String,
    pub pool: Pool,
    pub ca: String,
    pub certificate: String,
    /// Where the node's agent announces itself when it starts again (the controller's cluster
    /// port).
    pub cluster_url: String,
}

/// `GET /v1/cluster` (public): what an enrolled agent started with `--join` checks and uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterContact {
    pub ca_fingerprint: String,
    pub cluster_url: String,
}

/// `PUT /v1/nodes/self` on the cluster port: an enrolled agent says where it listens now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announce {
    pub agent_url: String,
}

/// The agent's answer to `POST /v1/certificate-request`: a fresh key's request, to renew its
/// certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewalRequest {
    pub csr: String,
}

/// `PUT /v1/certificate` on an agent: the certificate issued for its last renewal request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renewed {
    pub certificate: String,
}

/// A join token: `lsjoin-<fingerprint of the authority>-<secret>`. The fingerprint lets the
/// joining host tell the project's authority from one a man in the middle offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub secret: String,
}

impl JoinToken {
    const PREFIX: &str = "lsjoin-";
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}-{}", Self::PREFIX, self.ca_fingerprint, self.secret)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = String;

    fn from_str(s: &str) -> Result<JoinToken, String> {
        let malformed =
            || "this is no join token: `lockstep node add NAME --pool POOL` prints one".to_owned();
        let (fingerprint, secret) = s
            .trim()
            .strip_prefix(Self::PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .ok_or_else(malformed)?;
        let hex = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_hexdigit());
        if !(fingerprint.len() == 64 && hex(fingerprint) && hex(secret)) {
            return Err(malformed());
        }
        Ok(JoinToken {
            ca_fingerprint: fingerprint.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_token_reads_back_and_nothing_else_reads_as_one() {
        let token = JoinToken {
            ca_fingerprint: "ab".repeat(32),
            secret: "0123abcd".into(),
        };
        assert_eq!(token.to_string().parse::<JoinToken>().unwrap(), token);
        for bad in [
            "",
            "lsjoin-",
            "lsjoin-abc-def",
            &format!("lsjoin-{}-", "ab".repeat(32)),
            "admin-token",
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
        assert_eq!("staging".parse::<Pool>().unwrap(), Pool::Staging);
        assert!("prod".parse::<Pool>().is_err());
    }
}

/// `PUT /v1/revoked-certificates` on an agent: the certificates of hosts removed from the
/// project, refused from now on although they have not expired; the whole list each time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCertificates {
    /// Fingerprints (blake3 of the DER), as `lockstep_transport::fingerprint_of` gives them.
    pub fingerprints: std::collections::BTreeSet<String>,
}
