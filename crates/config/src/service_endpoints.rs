//! A database service's `configuration`: its databases (MariaDB's `schemas`, PostgreSQL's
//! `databases`) and its endpoints, each a user with privileges on some of them, which
//! relationships name (`"db:reporter"`). Without `configuration`, Platform.sh's default: one
//! database `main` and one endpoint (`mysql`, `postgresql`) with every privilege on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ServiceKind;
use crate::decode::{self, Keys};
use crate::diagnostic::{FileReport, suggest};
use crate::yaml::{Node, Span};

/// The database all of Platform.sh's defaults name.
pub const DEFAULT_DATABASE: &str = "main";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    /// The databases made in the service; none for Redis.
    pub databases: Vec<String>,
    /// By name, as relationships name them.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// PostgreSQL extensions made in every database (`configuration.extensions`).
    pub extensions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The user it logs in as: the endpoint's name, except for the default endpoints, whose
    /// users Platform.sh names `user` (MariaDB) and `main` (PostgreSQL).
    pub username: String,
    /// The database a relationship's `path` names.
    pub default_database: Option<String>,
    pub privileges: BTreeMap<String, Privilege>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    /// Reads.
    Ro,
    /// Reads and writes rows.
    Rw,
    /// Everything, the schema too.
    Admin,
}

impl ServiceEndpoints {
    /// What a service of `kind` gives without `configuration`.
    pub fn default_for(kind: ServiceKind) -> ServiceEndpoints {
        let databases = match kind {
            ServiceKind::Redis => Vec::new(),
            _ => vec![DEFAULT_DATABASE.to_owned()],
        };
        ServiceEndpoints {
            endpoints: default_endpoints(kind, &databases),
            databases,
            extensions: Vec::new(),
        }
    }
}

/// The default endpoint, with every privilege on each of `databases`.
fn default_endpoints(kind: ServiceKind, databases: &[String]) -> BTreeMap<String, Endpoint> {
    let username = match kind {
        ServiceKind::Postgresql => DEFAULT_DATABASE,
        ServiceKind::Mariadb => "user",
        ServiceKind::Redis => "",
    };
    BTreeMap::from([(
        kind.default_endpoint().to_owned(),
        Endpoint {
            username: username.to_owned(),
            default_database: databases.first().cloned(),
            privileges: databases
                .iter()
                .map(|database| (database.clone(), Privilege::Admin))
                .collect(),
        },
    )])
}

/// The words each engine uses in `configuration`.
struct Words {
    databases: &'static str,
    default_database: &'static str,
    keys: Keys,
}

fn words(kind: ServiceKind) -> Words {
    match kind {
        ServiceKind::Mariadb => Words {
            databases: "schemas",
            default_database: "default_schema",
            keys: Keys {
                supported: &["schemas", "endpoints"],
                ignored: &["properties", "rotate_passwords"],
                unsupported: &[],
            },
        },
        ServiceKind::Postgresql => Words {
            databases: "databases",
            default_database: "default_database",
            keys: Keys {
                supported: &["databases", "endpoints", "extensions"],
                ignored: &["rotate_passwords"],
                unsupported: &[],
            },
        },
        ServiceKind::Redis => Words {
            databases: "",
            default_database: "",
            keys: Keys {
                supported: &[],
                ignored: &["maxmemory_policy"],
                unsupported: &[],
            },
        },
    }
}

/// Names that go into SQL as they are: databases, endpoints' users, extensions (whose names
/// may hold `-`, as `uuid-ossp` does).
fn check_identifier(report: &mut FileReport<'_>, span: Span, text: &str, what: &str) -> bool {
    let hyphen = what == "extension";
    let valid = !text.is_empty()
        && text.len() <= 32
        && text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || (hyphen && c == '-'));
    if !valid {
        let allowed = if hyphen {
            "letters, digits, `_` and `-`"
        } else {
            "letters, digits and `_`"
        };
        report.error(
            span,
            format!("`{text}` is not a valid {what} name"),
            Some(format!("use up to 32 {allowed}, starting with a letter")),
        );
    }
    valid
}

/// `configuration` of a service of `kind`, at `path`.
pub(crate) fn read(
    report: &mut FileReport<'_>,
    node: &Node,
    path: &str,
    kind: ServiceKind,
) -> Option<ServiceEndpoints> {
    let words = words(kind);
    let fields = decode::fields(report, node, path, &words.keys);
    if kind == ServiceKind::Redis {
        return Some(ServiceEndpoints::default_for(kind));
    }
    let mut ok = true;
    let databases = match fields.get(words.databases) {
        None => vec![DEFAULT_DATABASE.to_owned()],
        Some(list) => {
            let list_path = decode::join(path, words.databases);
            let mut databases = Vec::new();
            for (name, span) in decode::string_list(report, list, &list_path)? {
                ok &= check_identifier(report, span, &name, "database");
                if !databases.contains(&name) {
                    databases.push(name);
                }
            }
            if databases.is_empty() {
                report.error(
                    list.span,
                    format!("`{list_path}` names no database"),
                    Some(format!("list at least one, such as `[{DEFAULT_DATABASE}]`")),
                );
                return None;
            }
            databases
        }
    };
    let extensions = match fields.get("extensions") {
        None => Vec::new(),
        Some(list) => {
            let list_path = decode::join(path, "extensions");
            let mut extensions = Vec::new();
            for (name, span) in decode::string_list(report, list, &list_path)? {
                ok &= check_identifier(report, span, &name, "extension");
                extensions.push(name);
            }
            extensions
        }
    };
    let endpoints = match fields.get("endpoints") {
        None => default_endpoints(kind, &databases),
        Some(mapping) => {
            let endpoints_path = decode::join(path, "endpoints");
            let mut endpoints = BTreeMap::new();
            let entries = decode::mapping(report, mapping, &endpoints_path)?;
            if entries.is_empty() {
                report.error(
                    mapping.span,
                    format!("`{endpoints_path}` defines no endpoint"),
                    Some("define one, or remove `endpoints` to get the default one".into()),
                );
                return None;
            }
            for (name, body) in entries {
                let endpoint_path = decode::join(&endpoints_path, &name.name);
                ok &= check_identifier(report, name.span, &name.name, "endpoint");
                match read_endpoint(report, body, &endpoint_path, &words, &databases) {
                    Some((default_database, privileges)) => {
                        endpoints.insert(
                            name.name.clone(),
                            Endpoint {
                                username: name.name.clone(),
                                default_database,
                                privileges,
                            },
                        );
                    }
                    None => ok = false,
                }
            }
            endpoints
        }
    };
    ok.then_some(ServiceEndpoints {
        databases,
        endpoints,
        extensions,
    })
}

fn read_endpoint(
    report: &mut FileReport<'_>,
    body: &Node,
    path: &str,
    words: &Words,
    databases: &[String],
) -> Option<(Option<String>, BTreeMap<String, Privilege>)> {
    let keys = Keys::only(if words.default_database == "default_schema" {
        &["default_schema", "privileges"]
    } else {
        &["default_database", "privileges"]
    });
    let fields = decode::fields(report, body, path, &keys);
    let mut ok = true;
    let known = |report: &mut FileReport<'_>, span: Span, name: &str| -> bool {
        if databases.iter().any(|d| d == name) {
            return true;
        }
        let help = match suggest(name, databases.iter().map(String::as_str)) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("add it to `{}`", words.databases),
        };
        report.error(
            span,
            format!(
                "`{path}` names database `{name}`, which `{}` does not list",
                words.databases
            ),
            Some(help),
        );
        false
    };
    let mut privileges = BTreeMap::new();
    if let Some(mapping) = fields.get("privileges") {
        let privileges_path = decode::join(path, "privileges");
        for (database, level) in decode::mapping(report, mapping, &privileges_path)? {
            ok &= known(report, database.span, &database.name);
            let level_path = decode::join(&privileges_path, &database.name);
            let privilege = match decode::one_of(report, level, &level_path, &["ro", "rw", "admin"])
            {
                Some("ro") => Privilege::Ro,
                Some("rw") => Privilege::Rw,
                Some(_) => Privilege::Admin,
                None => {
                    ok = false;
                    continue;
                }
            };
            privileges.insert(database.name.clone(), privilege);
        }
    }
    let default_database = match fields.get(words.default_database) {
        None => privileges.keys().next().cloned(),
        Some(node) => {
            let name = decode::string(report, node, &decode::join(path, words.default_database))?;
            ok &= known(report, node.span, &name);
            Some(name)
        }
    };
    ok.then_some((default_database, privileges))
}
