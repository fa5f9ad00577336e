//! `.platform.app.yaml`: the application, its processes, hooks, crons and mounts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{self, Fields, Keys};
use crate::diagnostic::FileReport;
use crate::yaml::{Node, Span, Value};

pub const APP_FILE: &str = ".platform.app.yaml";

/// Platform.sh's limit, and the default when a cron does not set one.
pub const MAX_CRON_TIMEOUT_SECS: u64 = 86_400;
pub const DEFAULT_CRON_SHUTDOWN_TIMEOUT_SECS: u64 = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppConfig {
    pub name: String,
    /// The runtime, as `language:version` (`python:3.11`).
    #[serde(rename = "type")]
    pub runtime: String,
    pub build_flavor: BuildFlavor,
    /// Global build tools per language: `python3: {pipenv: "2023.2.4"}`.
    pub dependencies: BTreeMap<String, BTreeMap<String, String>>,
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
    /// Platform.sh's per-language default: `npm install` for Node.js, nothing for the others.
    Default,
    None,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    pub build: Option<String>,
    pub deploy: Option<String>,
    pub post_deploy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Web {
    pub start: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub start: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cron {
    pub spec: String,
    pub start: String,
    pub stop: Option<String>,
    pub shutdown_timeout_secs: u64,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: MountSource,
    pub source_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountSource {
    /// Per node, kept across deploys.
    Local,
    /// Shared by every node of the environment.
    Storage,
    /// Per node, may be emptied at any time.
    Tmp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relationship {
    pub service: String,
    /// `None` means the service's default endpoint.
    pub endpoint: Option<String>,
    #[serde(skip)]
    pub(crate) span: Span,
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
    ],
    ignored: &["source", "operations", "size", "resources", "firewall"],
    unsupported: &[
        (
            "timezone",
            "Lockstep runs crons in UTC; remove `timezone` and write the cron specs in UTC",
        ),
        (
            "runtime",
            "language extensions and runtime settings are not installed by Lockstep; remove `runtime` and install what the app needs in the build hook",
        ),
        (
            "additional_hosts",
            "Lockstep nodes use the host's resolver; remove `additional_hosts`",
        ),
    ],
};

const WEB_KEYS: Keys = Keys {
    supported: &["commands", "upstream"],
    ignored: &[],
    unsupported: &[(
        "locations",
        "Lockstep sends every request to the web process; remove `web.locations` and serve static files from the app",
    )],
};

const WEB_COMMANDS_KEYS: Keys = Keys {
    supported: &["start"],
    ignored: &[],
    unsupported: &[
        (
            "pre_start",
            "run the preparation at the start of `web.commands.start` instead",
        ),
        (
            "post_start",
            "`post_start` is not available on Dedicated Gen 2 either; remove it",
        ),
    ],
};

const UPSTREAM_KEYS: Keys = Keys::only(&["socket_family", "protocol"]);
const COMMAND_KEYS: Keys = Keys::only(&["start"]);
const WORKER_KEYS: Keys = Keys {
    supported: &["commands"],
    ignored: &["size", "resources", "disk"],
    unsupported: &[
        (
            "mounts",
            "workers share the app's mounts on Lockstep; declare mounts at the top level",
        ),
        (
            "relationships",
            "workers share the app's relationships on Lockstep; declare them at the top level",
        ),
        (
            "variables",
            "workers share the app's variables on Lockstep; declare them at the top level",
        ),
    ],
};
const CRON_KEYS: Keys = Keys::only(&["spec", "commands", "shutdown_timeout", "timeout"]);
const CRON_COMMAND_KEYS: Keys = Keys::only(&["start", "stop"]);
const MOUNT_KEYS: Keys = Keys::only(&["source", "source_path", "service"]);
const HOOK_KEYS: Keys = Keys::only(&["build", "deploy", "post_deploy"]);
const BUILD_KEYS: Keys = Keys::only(&["flavor"]);
const ACCESS_KEYS: Keys = Keys::only(&["ssh"]);
const RELATIONSHIP_KEYS: Keys = Keys::only(&["service", "endpoint"]);

const ROLES: &[&str] = &["admin", "contributor", "viewer"];

pub(crate) fn read(report: &mut FileReport<'_>, root: &Node) -> Option<AppConfig> {
    let top = decode::fields(report, root, "", &APP_KEYS);
    let name = decode::required(
        report,
        &top,
        "",
        "name",
        "give the app a name, such as `name: app`",
    )
    .and_then(|n| decode::text(report, n, "name"));
    if let Some(name) = &name {
        let node = top.get("name").expect("read above");
        check_app_name(report, name, node.span);
    }
    let runtime = decode::required(
        report,
        &top,
        "",
        "type",
        "name the runtime, such as `type: \"python:3.11\"`",
    )
    .and_then(|n| read_runtime(report, n));
    let build_flavor = top
        .get("build")
        .map_or(Some(BuildFlavor::Default), |n| read_build(report, n));
    let dependencies = top
        .get("dependencies")
        .map_or(Some(BTreeMap::new()), |n| read_dependencies(report, n));
    let hooks = top
        .get("hooks")
        .map_or(Some(Hooks::default()), |n| read_hooks(report, n));
    let web = read_web(report, &top);
    let workers = top
        .get("workers")
        .map_or(Some(BTreeMap::new()), |n| read_workers(report, n));
    let crons = top
        .get("crons")
        .map_or(Some(BTreeMap::new()), |n| read_crons(report, n));
    let mounts = top
        .get("mounts")
        .map_or(Some(BTreeMap::new()), |n| read_mounts(report, n));
    let relationships = top
        .get("relationships")
        .map_or(Some(BTreeMap::new()), |n| read_relationships(report, n));
    let variables = top
        .get("variables")
        .map_or(Some(BTreeMap::new()), |n| read_variables(report, n));
    let disk = match top.get("disk") {
        None => Some(None),
        Some(n) => decode::integer(report, n, "disk", 128..=1_048_576, "megabytes")
            .map(|mb| Some(mb as u64)),
    };
    let access = top.get("access").map_or(
        Some(Access {
            ssh: Role::Contributor,
        }),
        |n| read_access(report, n),
    );
    Some(AppConfig {
        name: name?,
        runtime: runtime?,
        build_flavor: build_flavor?,
        dependencies: dependencies?,
        hooks: hooks?,
        web: web?,
        workers: workers?,
        crons: crons?,
        mounts: mounts?,
        relationships: relationships?,
        variables: variables?,
        disk: disk?,
        access: access?,
    })
}

fn check_app_name(report: &mut FileReport<'_>, name: &str, span: Span) {
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
}

fn read_runtime(report: &mut FileReport<'_>, node: &Node) -> Option<String> {
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
    Some(runtime)
}

fn read_build(report: &mut FileReport<'_>, node: &Node) -> Option<BuildFlavor> {
    let build = decode::fields(report, node, "build", &BUILD_KEYS);
    match build.get("flavor") {
        None => Some(BuildFlavor::Default),
        Some(flavor) => {
            match decode::one_of(
                report,
                flavor,
                "build.flavor",
                &["none", "default", "composer"],
            )? {
                "none" => Some(BuildFlavor::None),
                "default" => Some(BuildFlavor::Default),
                _ => {
                    report.error(
                        flavor.span,
                        "`build.flavor: composer` is a Platform.sh flavor that Lockstep does not support yet",
                        Some("set `flavor: none` and run `composer install` in the build hook".into()),
                    );
                    None
                }
            }
        }
    }
}

fn read_dependencies(
    report: &mut FileReport<'_>,
    node: &Node,
) -> Option<BTreeMap<String, BTreeMap<String, String>>> {
    let mut dependencies = BTreeMap::new();
    let mut ok = true;
    for (language, packages) in decode::mapping(report, node, "dependencies")? {
        let path = format!("dependencies.{}", language.name);
        let Some(entries) = decode::mapping(report, packages, &path) else {
            ok = false;
            continue;
        };
        let mut versions = BTreeMap::new();
        for (package, version) in entries {
            match decode::string(report, version, &format!("{path}.{}", package.name)) {
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
    Some(Hooks {
        build: read("build")?,
        deploy: read("deploy")?,
        post_deploy: read("post_deploy")?,
    })
}

fn read_web(report: &mut FileReport<'_>, top: &Fields<'_>) -> Option<Web> {
    let help = "the web process must be started by a command that listens on $PORT, such as `start: python3 server.py`";
    let web = decode::required(report, top, "", "web", help)
        .map(|n| decode::fields(report, n, "web", &WEB_KEYS))?;
    if let Some(upstream) = web.get("upstream") {
        read_upstream(report, upstream);
    }
    let commands = decode::required(report, &web, "web", "commands", help)
        .map(|n| decode::fields(report, n, "web.commands", &WEB_COMMANDS_KEYS))?;
    let start = decode::required(report, &commands, "web.commands", "start", help)
        .and_then(|n| decode::text(report, n, "web.commands.start"))?;
    Some(Web { start })
}

fn read_upstream(report: &mut FileReport<'_>, node: &Node) {
    let upstream = decode::fields(report, node, "web.upstream", &UPSTREAM_KEYS);
    if let Some(family) = upstream.get("socket_family") {
        let path = "web.upstream.socket_family";
        if decode::one_of(report, family, path, &["tcp", "unix"]) == Some("unix") {
            report.error(
                family.span,
                format!("`{path}: unix` is not supported by Lockstep yet"),
                Some("set `socket_family: tcp` and listen on the port given in $PORT".into()),
            );
        }
    }
    if let Some(protocol) = upstream.get("protocol") {
        let path = "web.upstream.protocol";
        if decode::one_of(report, protocol, path, &["http", "fastcgi"]) == Some("fastcgi") {
            report.error(
                protocol.span,
                format!("`{path}: fastcgi` is not supported by Lockstep yet"),
                Some("serve HTTP on $PORT and set `protocol: http`".into()),
            );
        }
    }
}

fn read_workers(report: &mut FileReport<'_>, node: &Node) -> Option<BTreeMap<String, Worker>> {
    let mut workers = BTreeMap::new();
    let mut ok = true;
    for (name, body) in decode::mapping(report, node, "workers")? {
        ok &= decode::check_name(report, name, "worker");
        let path = format!("workers.{}", name.name);
        let help = "a worker needs a command, such as `commands: {start: python3 worker.py}`";
        let worker = decode::fields(report, body, &path, &WORKER_KEYS);
        let start = decode::required(report, &worker, &path, "commands", help)
            .map(|n| decode::fields(report, n, &format!("{path}.commands"), &COMMAND_KEYS))
            .and_then(|commands| {
                decode::required(
                    report,
                    &commands,
                    &format!("{path}.commands"),
                    "start",
                    help,
                )
            })
            .and_then(|n| decode::text(report, n, &format!("{path}.commands.start")));
        match start {
            Some(start) => {
                workers.insert(name.name.clone(), Worker { start });
            }
            None => ok = false,
        }
    }
    ok.then_some(workers)
}

fn read_crons(report: &mut FileReport<'_>, node: &Node) -> Option<BTreeMap<String, Cron>> {
    let mut crons = BTreeMap::new();
    let mut ok = true;
    for (name, body) in decode::mapping(report, node, "crons")? {
        ok &= decode::check_name(report, name, "cron");
        let path = format!("crons.{}", name.name);
        match read_cron(report, body, &path) {
            Some(cron) => {
                crons.insert(name.name.clone(), cron);
            }
            None => ok = false,
        }
    }
    ok.then_some(crons)
}

fn read_cron(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<Cron> {
    let cron = decode::fields(report, node, path, &CRON_KEYS);
    let spec = decode::required(
        report,
        &cron,
        path,
        "spec",
        "for example `spec: \"*/5 * * * *\"`",
    )
    .and_then(|n| read_cron_spec(report, n, &format!("{path}.spec")));
    let commands_path = format!("{path}.commands");
    let help = "a cron needs a command, such as `commands: {start: python3 cron.py}`";
    let commands = decode::required(report, &cron, path, "commands", help)
        .map(|n| decode::fields(report, n, &commands_path, &CRON_COMMAND_KEYS));
    let start = commands.as_ref().and_then(|commands| {
        decode::required(report, commands, &commands_path, "start", help)
            .and_then(|n| decode::text(report, n, &format!("{commands_path}.start")))
    });
    let stop = match commands.as_ref().and_then(|c| c.get("stop")) {
        None => Some(None),
        Some(n) => decode::text(report, n, &format!("{commands_path}.stop")).map(Some),
    };
    let seconds = |report: &mut FileReport<'_>, key: &str, default: u64| match cron.get(key) {
        None => Some(default),
        Some(n) => decode::integer(
            report,
            n,
            &format!("{path}.{key}"),
            if key == "timeout" { 1 } else { 0 }..=MAX_CRON_TIMEOUT_SECS as i64,
            "seconds",
        )
        .map(|s| s as u64),
    };
    let shutdown_timeout_secs = seconds(
        report,
        "shutdown_timeout",
        DEFAULT_CRON_SHUTDOWN_TIMEOUT_SECS,
    );
    let timeout_secs = seconds(report, "timeout", MAX_CRON_TIMEOUT_SECS);
    Some(Cron {
        spec: spec?,
        start: start?,
        stop: stop?,
        shutdown_timeout_secs: shutdown_timeout_secs?,
        timeout_secs: timeout_secs?,
    })
}

fn read_cron_spec(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<String> {
    let spec = decode::text(report, node, path)?;
    if spec.split_whitespace().any(|field| field.contains('H')) {
        report.error(
            node.span,
            format!("`{path}` uses `H`, which only Platform.sh's Grid understands"),
            Some("pick a fixed minute instead, such as `17 * * * *`".into()),
        );
        return None;
    }
    let fields = spec.split_whitespace().count();
    let parsed = spec.parse::<croner::Cron>();
    if (!spec.starts_with('@') && fields != 5) || parsed.is_err() {
        let reason = match parsed {
            Err(error) => format!(": {error}"),
            Ok(_) => format!(": it has {fields} fields"),
        };
        report.error(
            node.span,
            format!("`{spec}` is not a valid cron spec{reason}"),
            Some("write five fields: minute hour day-of-month month day-of-week, such as `*/5 * * * *`".into()),
        );
        return None;
    }
    Some(spec)
}

fn read_mounts(report: &mut FileReport<'_>, node: &Node) -> Option<BTreeMap<String, Mount>> {
    let mut mounts: BTreeMap<String, Mount> = BTreeMap::new();
    let mut ok = true;
    for (key, body) in decode::mapping(report, node, "mounts")? {
        let Some(path) = mount_path(report, &key.name, key.span) else {
            ok = false;
            continue;
        };
        let here = format!("mounts.{}", key.name);
        if let Some(text) = body.scalar_text() {
            report.error(
                body.span,
                format!("`{text}` uses the old mount syntax, which Lockstep does not read"),
                Some("write `{source: local, source_path: NAME}` (or `source: storage` for a folder shared by every node)".into()),
            );
            ok = false;
            continue;
        }
        let fields = decode::fields(report, body, &here, &MOUNT_KEYS);
        let source = decode::required(
            report,
            &fields,
            &here,
            "source",
            "use `source: local`, `storage` or `tmp`",
        )
        .and_then(|n| read_mount_source(report, n, &format!("{here}.source")));
        let source_path = match fields.get("source_path") {
            None => Some(path.clone()),
            Some(n) => decode::text(report, n, &format!("{here}.source_path"))
                .and_then(|p| relative_path(report, &p, n.span, &format!("{here}.source_path"))),
        };
        if fields.get("service").is_some() && source != Some(None) {
            report.error(
                fields.get("service").expect("checked").span,
                format!("`{here}.service` only goes with `source: service`"),
                Some("remove it".into()),
            );
            ok = false;
        }
        if let Some(existing) = mounts.keys().find(|m| nested(m, &path)) {
            report.error(
                key.span,
                format!("mount `{path}` overlaps mount `{existing}`"),
                Some("mounts may not be inside each other; pick separate folders".into()),
            );
            ok = false;
            continue;
        }
        match (source, source_path) {
            (Some(Some(source)), Some(source_path)) => {
                mounts.insert(
                    path,
                    Mount {
                        source,
                        source_path,
                    },
                );
            }
            _ => ok = false,
        }
    }
    ok.then_some(mounts)
}

/// `Some(None)` is Platform.sh's `source: service`, reported here as unsupported.
fn read_mount_source(
    report: &mut FileReport<'_>,
    node: &Node,
    path: &str,
) -> Option<Option<MountSource>> {
    let source = decode::one_of(report, node, path, &["local", "storage", "tmp", "service"])?;
    Some(match source {
        "local" => Some(MountSource::Local),
        "storage" => Some(MountSource::Storage),
        "tmp" => Some(MountSource::Tmp),
        _ => {
            report.error(
                node.span,
                format!("`{path}: service` (network storage) is not supported by Lockstep yet"),
                Some("use `source: storage`: it is shared by every node of the environment".into()),
            );
            None
        }
    })
}

fn nested(a: &str, b: &str) -> bool {
    a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/"))
}

/// Mount paths are relative to the app folder; Platform.sh allows a leading `/` for the same.
fn mount_path(report: &mut FileReport<'_>, raw: &str, span: Span) -> Option<String> {
    relative_path(
        report,
        raw.trim_start_matches('/'),
        span,
        &format!("mount path `{raw}`"),
    )
}

fn relative_path(report: &mut FileReport<'_>, raw: &str, span: Span, what: &str) -> Option<String> {
    let trimmed = raw.trim_end_matches('/');
    let parts: Vec<&str> = trimmed.split('/').collect();
    let problem = if raw.starts_with('/') {
        Some("it must be relative to the app folder")
    } else if trimmed.is_empty() {
        Some("it is empty")
    } else if parts.iter().any(|p| *p == "..") {
        Some("it must not contain `..`")
    } else if parts.iter().any(|p| p.is_empty() || *p == ".") {
        Some("it must not contain empty or `.` parts")
    } else if trimmed.contains('\0') {
        Some("it must not contain a NUL character")
    } else {
        None
    };
    if let Some(problem) = problem {
        report.error(
            span,
            format!("{what} is not a valid path: {problem}"),
            Some("write a folder inside the app, such as `web/uploads`".into()),
        );
        return None;
    }
    Some(trimmed.to_owned())
}

fn read_relationships(
    report: &mut FileReport<'_>,
    node: &Node,
) -> Option<BTreeMap<String, Relationship>> {
    let mut relationships = BTreeMap::new();
    let mut ok = true;
    for (name, body) in decode::mapping(report, node, "relationships")? {
        ok &= decode::check_name(report, name, "relationship");
        let path = format!("relationships.{}", name.name);
        let relationship = match &body.value {
            // `database:` alone means the service of the same name.
            Value::Null => Some((name.name.clone(), None)),
            Value::Str(text) => match text.split_once(':') {
                Some((service, endpoint)) if !service.is_empty() && !endpoint.is_empty() => {
                    Some((service.to_owned(), Some(endpoint.to_owned())))
                }
                None if !text.is_empty() => Some((text.clone(), None)),
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
                    "name a service of .platform/services.yaml",
                )
                .and_then(|n| decode::text(report, n, &format!("{path}.service")));
                let endpoint = match fields.get("endpoint") {
                    None => Some(None),
                    Some(n) => decode::text(report, n, &format!("{path}.endpoint")).map(Some),
                };
                service.zip(endpoint)
            }
        };
        match relationship {
            Some((service, endpoint)) => {
                relationships.insert(
                    name.name.clone(),
                    Relationship {
                        service,
                        endpoint,
                        span: body.span,
                    },
                );
            }
            None => ok = false,
        }
    }
    ok.then_some(relationships)
}

fn read_variables(
    report: &mut FileReport<'_>,
    node: &Node,
) -> Option<BTreeMap<String, serde_json::Value>> {
    let mut variables = BTreeMap::new();
    let mut ok = true;
    for (prefix, group) in decode::mapping(report, node, "variables")? {
        let path = format!("variables.{}", prefix.name);
        let Value::Map(entries) = &group.value else {
            report.error(
                group.span,
                format!(
                    "`{path}` must be a mapping of variable names to values, not {}",
                    group.kind()
                ),
                Some(format!(
                    "variables are grouped by prefix, such as `variables: {{{}: {{NAME: value}}}}`",
                    prefix.name
                )),
            );
            ok = false;
            continue;
        };
        for (name, value) in entries {
            variables.insert(format!("{}:{}", prefix.name, name.name), value.to_json());
        }
    }
    ok.then_some(variables)
}

fn read_access(report: &mut FileReport<'_>, node: &Node) -> Option<Access> {
    let access = decode::fields(report, node, "access", &ACCESS_KEYS);
    let ssh = match access.get("ssh") {
        None => Role::Contributor,
        Some(n) => match decode::one_of(report, n, "access.ssh", ROLES)? {
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            _ => Role::Contributor,
        },
    };
    Some(Access { ssh })
}
