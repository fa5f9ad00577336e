//! `.platform/services.yaml`: the databases and caches an app may have relationships to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{self, Keys};
use crate::diagnostic::FileReport;
use crate::service_endpoints::ServiceEndpoints;
use crate::yaml::{Node, Span};

pub const SERVICES_FILE: &str = ".platform/services.yaml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub kind: ServiceKind,
    pub version: String,
    /// `type` as written (`mysql:10.6`, `redis-persistent:7.0`): apps see it in
    /// `PLATFORM_RELATIONSHIPS`.
    pub written_type: String,
    /// Whether a Redis keeps its data on disk (`redis-persistent`).
    pub persistent: bool,
    /// Megabytes.
    pub disk: Option<u64>,
    /// Its databases and the endpoints relationships name.
    pub endpoints: ServiceEndpoints,
    #[serde(skip)]
    pub(crate) span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Postgresql,
    /// `mariadb` and its alias `mysql`.
    Mariadb,
    /// `redis`, and `redis-persistent`.
    Redis,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Postgresql => "postgresql",
            ServiceKind::Mariadb => "mariadb",
            ServiceKind::Redis => "redis",
        }
    }

    /// The endpoint a relationship gets when it names none, as on Platform.sh.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            ServiceKind::Postgresql => "postgresql",
            ServiceKind::Mariadb => "mysql",
            ServiceKind::Redis => "redis",
        }
    }
}

const SERVICE_KEYS: Keys = Keys {
    supported: &["type", "disk", "configuration"],
    ignored: &["size", "resources"],
    unsupported: &[],
};

/// Platform.sh service types Lockstep knows it cannot run yet, so they get a precise message.
const KNOWN_UNSUPPORTED: &[&str] = &[
    "chrome-headless",
    "elasticsearch",
    "influxdb",
    "kafka",
    "memcached",
    "mongodb",
    "network-storage",
    "opensearch",
    "oracle-mysql",
    "rabbitmq",
    "solr",
    "varnish",
    "vault-kms",
];

pub(crate) fn read(
    report: &mut FileReport<'_>,
    root: &Node,
    runtimes: &dyn crate::Runtimes,
) -> Option<BTreeMap<String, Service>> {
    let mut services = BTreeMap::new();
    let mut ok = true;
    for (name, body) in decode::mapping(report, root, "")? {
        ok &= decode::check_name(report, name, "service");
        let path = name.name.as_str();
        let fields = decode::fields(report, body, path, &SERVICE_KEYS);
        let kind = decode::required(
            report,
            &fields,
            path,
            "type",
            "name the service type and version, such as `type: \"postgresql:16\"`",
        )
        .and_then(|n| read_type(report, n, &format!("{path}.type"), runtimes));
        let disk = match fields.get("disk") {
            None => Some(None),
            Some(n) => decode::integer(
                report,
                n,
                &format!("{path}.disk"),
                128..=1_048_576,
                "megabytes",
            )
            .map(|mb| Some(mb as u64)),
        };
        let endpoints = kind
            .as_ref()
            .and_then(|kind| match fields.get("configuration") {
                None => Some(ServiceEndpoints::default_for(kind.kind)),
                Some(node) => crate::service_endpoints::read(
                    report,
                    node,
                    &format!("{path}.configuration"),
                    kind.kind,
                ),
            });
        match (kind, disk, endpoints) {
            (
                Some(ServiceType {
                    kind,
                    version,
                    written,
                    persistent,
                }),
                Some(disk),
                Some(endpoints),
            ) => {
                services.insert(
                    name.name.clone(),
                    Service {
                        kind,
                        version,
                        written_type: written,
                        persistent,
                        disk,
                        endpoints,
                        span: name.span,
                    },
                );
            }
            _ => ok = false,
        }
    }
    ok.then_some(services)
}

struct ServiceType {
    kind: ServiceKind,
    version: String,
    written: String,
    persistent: bool,
}

fn read_type(
    report: &mut FileReport<'_>,
    node: &Node,
    path: &str,
    runtimes: &dyn crate::Runtimes,
) -> Option<ServiceType> {
    let text = decode::text(report, node, path)?;
    let (name, version) = text.split_once(':').unwrap_or((text.as_str(), ""));
    let kind = match name {
        "postgresql" => ServiceKind::Postgresql,
        "mariadb" | "mysql" => ServiceKind::Mariadb,
        "redis" | "redis-persistent" => ServiceKind::Redis,
        other => {
            let supported = "Lockstep runs `postgresql`, `mariadb` (or `mysql`), `redis` and `redis-persistent`";
            if KNOWN_UNSUPPORTED.contains(&other) {
                report.error(
                    node.span,
                    format!("service type `{other}` is a Platform.sh service that Lockstep does not support yet"),
                    Some(supported.into()),
                );
            } else {
                let help = match crate::diagnostic::suggest(
                    other,
                    [
                        "postgresql",
                        "mariadb",
                        "mysql",
                        "redis",
                        "redis-persistent",
                    ],
                ) {
                    Some(near) => format!("did you mean `{near}`? {supported}"),
                    None => supported.into(),
                };
                report.error(
                    node.span,
                    format!("unknown service type `{other}`"),
                    Some(help),
                );
            }
            return None;
        }
    };
    if version.is_empty() || version.contains(char::is_whitespace) {
        report.error(
            node.span,
            format!("`{path}` must be `type:version`, not `{text}`"),
            Some(format!("for example `type: \"{}\"`", example_type(kind))),
        );
        return None;
    }
    if let Some(advice) = runtimes.missing(kind.as_str()) {
        report.error(
            node.span,
            format!(
                "the service `{text}` cannot run here: no {} is installed",
                kind.as_str()
            ),
            Some(advice),
        );
        return None;
    }
    Some(ServiceType {
        kind,
        version: version.to_owned(),
        written: text.clone(),
        persistent: name == "redis-persistent",
    })
}

fn example_type(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Postgresql => "postgresql:16",
        ServiceKind::Mariadb => "mariadb:11.4",
        ServiceKind::Redis => "redis:7.2",
    }
}
