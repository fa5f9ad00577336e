//! `.platform.app.yaml` (or the one app of `.platform/applications.yaml`): the application,
//! its build, hooks, relationships and variables. Its processes, mounts and web settings have
//! modules of their own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{self, Fields, Keys};
use crate::diagnostic::FileReport;
use crate::mounts::{self, Mount};
use crate::processes::{self, Cron, Worker};
use crate::web::{self, Web};
use crate::yaml::{Key, Node, Span, Value};

pub const APP_FILE: &str = ".platform.app.yaml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppConfig {
    pub name: String,
    /// The runtime, as `language:version` (`python:3.11`).
    #[serde(rename = "type")]
    pub runtime: String,
    pub build_flavor: BuildFlavor,
    /// Global build tools per language, installed for the build and the runtime: `python` and
    /// `python3` packages with pip, `nodejs` packages with npm (`nodejs: {yarn: "*"}`), `php`
    /// packages with Composer.
    pub dependencies: BTreeMap<String, BTreeMap<String, String>>,
    /// `runtime.extensions`: the PHP extensions the app needs, checked at build.
    #[serde(default)]
    pub extensions: Vec<String>,
    pub hooks: Hooks,
    pub web: Web,
    pub workers: BTreeMap<String, Worker>,
    pub crons: BTreeMap<String, Cron>,
    /// Keyed by the mount's path relative to the app folder, without leading or trailing `/`.
    pub mounts: BTreeMap<String, Mount>,
    pub relationships: BTreeMap<String, Relationship>,
    /// Keyed by the full name, prefix included (`env:GREETING`).
    pub variables: BTreeMap<String, serde_json::Value>,
    /// Megabytes.
    pub disk: Option<u64>,
    pub access: Access,
    /// The repository folder the app is built from, without leading or trailing `/`: its
    /// `source.root`, else the folder of its `.platform.app.yaml`; empty for the repository
    /// root. Only that folder is the app's tree (at `/app`).
    #[serde(default)]
    pub source_root: String,
    /// The app's configuration as written, as JSON (with `name` when its key gave it): what
    /// Platform.sh gives the app as `PLATFORM_APPLICATION`.
    #[serde(default)]
    pub as_written: serde_json::Value,
}

impl AppConfig {
    /// The language part of the runtime type (`python` for `python:3.11`).
    pub fn language(&self) -> &str {
        self.runtime.split(':').next().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildFlavor {
    /// Platform.sh's per-language default: `npm install` for Node.js, `composer install` for
    /// PHP, nothing for the others.
    Default,
    None,
    /// `composer install` when there is a `composer.json`.
    Composer,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    pub build: Option<String>,
    pub deploy: Option<String>,
    pub post_deploy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relationship {
    pub service: String,
    /// `None` means the service's default endpoint.
    pub endpoint: Option<String>,
    /// Where the service and the endpoint are written, for messages about them.
    #[serde(skip)]
    pub(crate) service_span: Span,
    #[serde(skip)]
    pub(crate) endpoint_span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Contributor,
    Viewer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// The least role that may open a shell on the app's nodes.
    pub ssh: Role,
}

const APP_KEYS: Keys = Keys {
    supported: &[
        "name",
        "type",
        "build",
        "dependencies",
        "hooks",
        "web",
        "workers",
        "crons",
        "mounts",
        "relationships",
        "variables",
        "disk",
        "access",
        "source",
        "timezone",
        "runtime",
    ],
    ignored: &["operations", "size", "resources", "firewall"],
    unsupported: &[(
        "additional_hosts",
        "Lockstep nodes use the host's resolver; remove `additional_hosts`",
    )],
};

const SOURCE_KEYS: Keys = Keys {
    supported: &["root"],
    // Source operations are run by Platform.sh's console on demand, never by a deploy.
    ignored: &["operations"],
    unsupported: &[],
};
const HOOK_KEYS: Keys = Keys::only(&["build", "deploy", "post_deploy"]);
const BUILD_KEYS: Keys = Keys::only(&["flavor"]);
const RUNTIME_KEYS: Keys = Keys {
    supported: &["extensions"],
    ignored: &[
        "disabled_extensions",
        "request_terminate_timeout",
        "sizing_hints",
        "xdebug",
    ],
    unsupported: &[],
};
const ACCESS_KEYS: Keys = Keys::only(&["ssh"]);
const RELATIONSHIP_KEYS: Keys = Keys::only(&["service", "endpoint"]);
const DEPENDENCY_KEYS: Keys = Keys {
    supported: &["python", "python3", "nodejs", "php"],
    ignored: &[],
    unsupported: &[
        (
            "ruby",
            "Lockstep installs global packages for `python3` (pip), `nodejs` (npm) and `php` (Composer) only; install gems in the build hook",
        ),
        (
            "python2",
            "Lockstep installs global packages for `python3` (pip), `nodejs` (npm) and `php` (Composer) only",
        ),
    ],
};

const ROLES: &[&str] = &["admin", "contributor", "viewer"];

/// Time zones that are UTC under another name: crons in them run as Lockstep runs every cron.
const UTC_NAMES: &[&str] = &[
    "UTC",
    "Etc/UTC",
    "Etc/UCT",
    "UCT",
    "Etc/Universal",
    "Universal",
];

/// Reads one app. `named` is the key that names it in `.platform/applications.yaml`, where the
/// app may leave out `name`; `folder` is where its configuration file is (the repository root
/// for `.platform/applications.yaml`), which is the app's folder unless `source.root` says
/// another.
pub(crate) fn read(
    report: &mut FileReport<'_>,
    root: &Node,
    named: Option<&Key>,
    folder: &str,
    runtimes: &dyn crate::Runtimes,
) -> Option<AppConfig> {
    let top = decode::fields(report, root, "", &APP_KEYS);
    let name = read_name(report, &top, named);
    let runtime = decode::required(
        report,
        &top,
        "",
        "type",
        "name the runtime, such as `type: \"python:3.11\"`",
    )
    .and_then(|n| read_runtime(report, n, runtimes));
    let source_root = top.read_or("source", folder.to_owned(), |n| {
        read_source_root(report, n, folder)
    });
    if let Some(timezone) = top.get("timezone") {
        check_timezone(report, timezone);
    }
    let build_flavor = top.read_or("build", BuildFlavor::Default, |n| read_build(report, n));
    let dependencies = top.read_or("dependencies", BTreeMap::new(), |n| {
        read_dependencies(report, n)
    });
    let hooks = top.read_or("hooks", Hooks::default(), |n| read_hooks(report, n));
    let php = runtime
        .as_deref()
        .is_some_and(|runtime| runtime.split(':').next() == Some("php"));
    let extensions = top.read_or("runtime", Vec::new(), |n| {
        read_runtime_settings(report, n, php)
    });
    let web = web::read(report, &top, php);
    let workers = top.read_or("workers", BTreeMap::new(), |n| {
        processes::read_workers(report, n)
    });
    let crons = top.read_or("crons", BTreeMap::new(), |n| {
        processes::read_crons(report, n)
    });
    let mounts = top.read_or("mounts", BTreeMap::new(), |n| mounts::read(report, n));
    let relationships = top.read_or("relationships", BTreeMap::new(), |n| {
        read_relationships(report, n)
    });
    let variables = top.read_or("variables", BTreeMap::new(), |n| read_variables(report, n));
    let disk = top.read_opt("disk", |n| {
        decode::integer(report, n, "disk", 128..=1_048_576, "megabytes").map(|mb| mb as u64)
    });
    let access = top.read_or(
        "access",
        Access {
            ssh: Role::Contributor,
        },
        |n| read_access(report, n),
    );
    let name = name?;
    let mut as_written = root.to_json();
    if let serde_json::Value::Object(fields) = &mut as_written {
        fields
            .entry("name")
            .or_insert_with(|| serde_json::Value::String(name.clone()));
    }
    Some(AppConfig {
        as_written,
        name,
        runtime: runtime?,
        build_flavor: build_flavor?,
        dependencies: dependencies?,
        extensions: extensions?,
        hooks: hooks?,
        web: web?,
        workers: workers?,
        crons: crons?,
        mounts: mounts?,
        relationships: relationships?,
        variables: variables?,
        disk: disk?,
        access: access?,
        source_root: source_root?,
    })
}

fn read_name(report: &mut FileReport<'_>, top: &Fields<'_>, named: Option<&Key>) -> Option<String> {
    let (name, span) = match (named, top.get("name")) {
        (Some(key), None) => (key.name.clone(), key.span),
        (Some(key), Some(node)) => {
            let name = decode::text(report, node, "name")?;
            if name != key.name {
                report.error(
                    node.span,
                    format!(
                        "`name` is `{name}`, but the app's key in `{}` is `{}`",
                        crate::APPLICATIONS_FILE,
                        key.name
                    ),
                    Some("remove `name`: the key names the app".into()),
                );
                return None;
            }
            (name, node.span)
        }
        (None, _) => {
            let help = "give the app a name, such as `name: app`";
            let node = decode::required(report, top, "", "name", help)?;
            (decode::text(report, node, "name")?, node.span)
        }
    };
    check_app_name(report, &name, span).then_some(name)
}

fn check_app_name(report: &mut FileReport<'_>, name: &str, span: Span) -> bool {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        report.error(
            span,
            format!("`{name}` is not a valid app name"),
            Some(
                "use up to 64 lowercase letters, digits, `-` and `_`, starting with a letter or digit"
                    .into(),
            ),
        );
    }
    valid
}

fn read_runtime(
    report: &mut FileReport<'_>,
    node: &Node,
    runtimes: &dyn crate::Runtimes,
) -> Option<String> {
    let runtime = decode::text(report, node, "type")?;
    let well_formed = runtime.split_once(':').is_some_and(|(language, version)| {
        !language.is_empty()
            && language
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !version.is_empty()
            && !version.contains(char::is_whitespace)
    });
    if !well_formed {
        report.error(
            node.span,
            format!("`type` must be `language:version`, not `{runtime}`"),
            Some("for example `type: \"python:3.11\"` or `type: \"nodejs:20\"`".into()),
        );
        return None;
    }
    let language = runtime.split(':').next().unwrap_or_default();
    if let Some(advice) = runtimes.missing(language) {
        report.error(
            node.span,
            format!("the runtime `{runtime}` cannot run here: no {language} is installed"),
            Some(advice),
        );
        return None;
    }
    Some(runtime)
}

/// `source.root`: the app's folder, from the repository root; `folder` when it is not given.
fn read_source_root(report: &mut FileReport<'_>, node: &Node, folder: &str) -> Option<String> {
    let source = decode::fields(report, node, "source", &SOURCE_KEYS);
    let Some(root) = source.get("root").filter(|r| r.value != Value::Null) else {
        return Some(folder.to_owned());
    };
    decode::string(report, root, "source.root")
        .and_then(|r| decode::folder(report, &r, root.span, "`source.root`", true))
}

/// Platform.sh's `timezone` only sets the zone crons run in. Lockstep runs them in UTC, so UTC
/// is accepted and any other zone, which would move every cron, is not.
fn check_timezone(report: &mut FileReport<'_>, node: &Node) {
    let Some(zone) = decode::text(report, node, "timezone") else {
        return;
    };
    if !UTC_NAMES.contains(&zone.as_str()) {
        report.error(
            node.span,
            format!("`timezone: {zone}` is not supported by Lockstep yet"),
            Some(
                "Lockstep runs crons in UTC: remove `timezone` and write the cron specs in UTC"
                    .into(),
            ),
        );
    }
}

fn read_build(report: &mut FileReport<'_>, node: &Node) -> Option<BuildFlavor> {
    let build = decode::fields(report, node, "build", &BUILD_KEYS);
    let Some(flavor) = build.get("flavor") else {
        return Some(BuildFlavor::Default);
    };
    let path = "build.flavor";
    match decode::one_of(report, flavor, path, &["none", "default", "composer"])? {
        "none" => Some(BuildFlavor::None),
        "default" => Some(BuildFlavor::Default),
        _ => Some(BuildFlavor::Composer),
    }
}

/// `runtime`: the PHP extensions the app needs (a name, or `{name: ..., configuration: ...}`).
fn read_runtime_settings(
    report: &mut FileReport<'_>,
    node: &Node,
    php: bool,
) -> Option<Vec<String>> {
    let runtime = decode::fields(report, node, "runtime", &RUNTIME_KEYS);
    let Some(list) = runtime.get("extensions") else {
        return Some(Vec::new());
    };
    if !php {
        report.error(
            list.span,
            "`runtime.extensions` are PHP extensions, and this app does not run PHP",
            Some("remove `runtime.extensions`".into()),
        );
        return None;
    }
    let Value::Seq(items) = &list.value else {
        report.error(
            list.span,
            format!(
                "`runtime.extensions` must be a list of extensions, not {}",
                list.describe()
            ),
            Some("write a list, such as `[redis, sodium]`".into()),
        );
        return None;
    };
    let mut extensions = Vec::new();
    for item in items {
        let name = match &item.value {
            Value::Map(_) => {
                let fields = decode::fields(
                    report,
                    item,
                    "runtime.extensions",
                    &Keys {
                        supported: &["name"],
                        ignored: &["configuration"],
                        unsupported: &[],
                    },
                );
                decode::required(
                    report,
                    &fields,
                    "runtime.extensions",
                    "name",
                    "name the extension, such as `name: redis`",
                )
                .and_then(|n| decode::text(report, n, "runtime.extensions.name"))
            }
            _ => decode::text(report, item, "runtime.extensions"),
        };
        let Some(name) = name else { continue };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            report.error(
                item.span,
                format!("`{name}` is not a PHP extension name"),
                Some("use the extension's name as `php -m` lists it, such as `redis`".into()),
            );
            return None;
        }
        extensions.push(name);
    }
    Some(extensions)
}

fn read_dependencies(
    report: &mut FileReport<'_>,
    node: &Node,
) -> Option<BTreeMap<String, BTreeMap<String, String>>> {
    let languages = decode::fields(report, node, "dependencies", &DEPENDENCY_KEYS);
    let mut dependencies = BTreeMap::new();
    let mut ok = true;
    for (language, packages) in languages.iter() {
        let path = format!("dependencies.{}", language.name);
        let Some(entries) = decode::mapping(report, packages, &path) else {
            ok = false;
            continue;
        };
        let mut versions = BTreeMap::new();
        for (package, version) in entries {
            match decode::text(report, version, &format!("{path}.{}", package.name)) {
                Some(version) => {
                    versions.insert(package.name.clone(), version);
                }
                None => ok = false,
            }
        }
        dependencies.insert(language.name.clone(), versions);
    }
    ok.then_some(dependencies)
}

fn read_hooks(report: &mut FileReport<'_>, node: &Node) -> Option<Hooks> {
    let hooks = decode::fields(report, node, "hooks", &HOOK_KEYS);
    let mut read = |name: &str| match hooks.get(name) {
        None => Some(None),
        Some(n) if n.value == Value::Null => Some(None),
        Some(n) => decode::string(report, n, &format!("hooks.{name}")).map(Some),
    };
    let build = read("build");
    let deploy = read("deploy");
    let post_deploy = read("post_deploy");
    Some(Hooks {
        build: build?,
        deploy: deploy?,
        post_deploy: post_deploy?,
    })
}

fn read_relationships(
    report: &mut FileReport<'_>,
    node: &Node,
) -> Option<BTreeMap<String, Relationship>> {
    let mut relationships = BTreeMap::new();
    let mut ok = true;
    for (name, body) in decode::mapping(report, node, "relationships")? {
        ok &= decode::check_name(report, name, "relationship");
        match read_relationship(report, name, body) {
            Some(relationship) => {
                relationships.insert(name.name.clone(), relationship);
            }
            None => ok = false,
        }
    }
    ok.then_some(relationships)
}

/// `"db:postgresql"`, `"db"`, `{service: db, endpoint: postgresql}`, or nothing at all, which
/// means the service of the relationship's own name.
fn read_relationship(report: &mut FileReport<'_>, name: &Key, body: &Node) -> Option<Relationship> {
    let path = format!("relationships.{}", name.name);
    let in_place = |service: String, endpoint: Option<String>| Relationship {
        service,
        endpoint,
        service_span: body.span,
        endpoint_span: body.span,
    };
    match &body.value {
        Value::Null => Some(in_place(name.name.clone(), None)),
        Value::Str(text) => match text.split_once(':') {
            Some((service, endpoint)) if !service.is_empty() && !endpoint.is_empty() => {
                Some(in_place(service.to_owned(), Some(endpoint.to_owned())))
            }
            None if !text.is_empty() => Some(in_place(text.clone(), None)),
            _ => {
                report.error(
                    body.span,
                    format!("`{path}` must be `service:endpoint`, not `{text}`"),
                    Some("for example `database: \"db:postgresql\"`".into()),
                );
                None
            }
        },
        _ => {
            let fields = decode::fields(report, body, &path, &RELATIONSHIP_KEYS);
            let service = decode::required(
                report,
                &fields,
                &path,
                "service",
                "name a service of `.platform/services.yaml`",
            )
            .and_then(|n| decode::text(report, n, &format!("{path}.service")).map(|s| (s, n.span)));
            let endpoint = fields.read_opt("endpoint", |n| {
                decode::text(report, n, &format!("{path}.endpoint")).map(|e| (e, n.span))
            });
            let ((service, service_span), endpoint) = (service?, endpoint?);
            Some(Relationship {
                service,
                endpoint_span: endpoint.as_ref().map_or(service_span, |(_, span)| *span),
                endpoint: endpoint.map(|(e, _)| e),
                service_span,
            })
        }
    }
}

fn read_variables(
    report: &mut FileReport<'_>,
    node: &Node,
) -> Option<BTreeMap<String, serde_json::Value>> {
    let mut variables = BTreeMap::new();
    let mut ok = true;
    for (prefix, group) in decode::mapping(report, node, "variables")? {
        let entries: &[(Key, Node)] = match &group.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => {
                report_ungrouped_variable(report, prefix, group);
                ok = false;
                continue;
            }
        };
        for (name, value) in entries {
            variables.insert(format!("{}:{}", prefix.name, name.name), value.to_json());
        }
    }
    ok.then_some(variables)
}

/// A variable written directly under `variables`: Platform.sh groups them by prefix, and the
/// user almost always meant an environment variable.
fn report_ungrouped_variable(report: &mut FileReport<'_>, prefix: &Key, group: &Node) {
    let value = group.scalar_text().unwrap_or("...");
    report.error(
        prefix.span,
        format!(
            "`variables.{}` must be a group of variables under a prefix, not {}",
            prefix.name,
            group.describe()
        ),
        Some(format!(
            "for an environment variable, write it under `env:`, such as `variables: {{env: {{{}: {value}}}}}`",
            prefix.name
        )),
    );
}

fn read_access(report: &mut FileReport<'_>, node: &Node) -> Option<Access> {
    let access = decode::fields(report, node, "access", &ACCESS_KEYS);
    let ssh = access.read_or("ssh", Role::Contributor, |n| {
        Some(match decode::one_of(report, n, "access.ssh", ROLES)? {
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            _ => Role::Contributor,
        })
    });
    Some(Access { ssh: ssh? })
}
