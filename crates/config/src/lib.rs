//! Lockstep's reading of a project's Platform.sh configuration.
//!
//! Owns: parsing `.platform.app.yaml`, `.platform/routes.yaml` and `.platform/services.yaml` (and
//! the files they `!include`) into the typed model that every other part of Lockstep uses, and
//! every diagnostic about them.
//! Must never: touch anything but the files it is asked to read, read outside the project, or
//! stop at the first problem (users fix a config in one go only when they see all of its errors).

mod app;
mod cron_spec;
mod decode;
mod diagnostic;
mod include;
mod mounts;
mod processes;
mod read;
mod routes;
mod service_endpoints;
mod services;
mod web;
pub mod yaml;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use app::{APP_FILE, Access, AppConfig, BuildFlavor, Hooks, Relationship, Role};
pub use diagnostic::{Diagnostic, Severity};
pub use include::{MAX_INCLUDE_DEPTH, MAX_INCLUDED_BYTES};
pub use mounts::{Mount, MountSource};
pub use processes::{Cron, DEFAULT_CRON_SHUTDOWN_TIMEOUT_SECS, MAX_CRON_TIMEOUT_SECS, Worker};
pub use routes::{Cache, ROUTES_FILE, Route, RouteKind};
pub use service_endpoints::{Endpoint, Privilege, ServiceEndpoints};
pub use services::{SERVICES_FILE, Service, ServiceKind};
pub use web::{Expires, Location, Passthru, Rule, SocketFamily, Web};

use diagnostic::{FileReport, suggest};
use include::{Includer, Library, Loaded};

/// What the machine offers each runtime language. The check asks it so that a `type` whose
/// language no node can run is an error at `type`, before anything is built.
pub trait Runtimes {
    /// `None` when `language` can run here; otherwise what to do about it (the package to
    /// install).
    fn missing(&self, language: &str) -> Option<String>;
}

/// Every language counts as installed: for checks that do not run anything (fuzzing, the
/// corpus of messages).
pub struct AnyRuntime;

impl Runtimes for AnyRuntime {
    fn missing(&self, _language: &str) -> Option<String> {
        None
    }
}

/// Platform.sh's multi-app file: a mapping of app names to apps (or a list of apps with `name`),
/// each configured as in `.platform.app.yaml`, in the folder its `source.root` names.
pub const APPLICATIONS_FILE: &str = ".platform/applications.yaml";

/// The files that configure a project; any other is read only when one of them includes it.
const CONFIGURATION_FILES: [&str; 4] = [APP_FILE, ROUTES_FILE, SERVICES_FILE, APPLICATIONS_FILE];

/// Everything a project's configuration says, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredProject")]
pub struct Project {
    /// In the order the configuration gives them (`.platform/applications.yaml`'s, or the app
    /// files' paths); at least one, each name once.
    pub apps: Vec<AppConfig>,
    pub routes: Vec<Route>,
    pub services: BTreeMap<String, Service>,
}

impl Project {
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|app| app.name == name)
    }
}

/// A project as stored in images and manifests, also those written when a project had exactly
/// one `app`.
#[derive(Deserialize)]
struct StoredProject {
    #[serde(default)]
    apps: Vec<AppConfig>,
    app: Option<AppConfig>,
    routes: Vec<Route>,
    services: BTreeMap<String, Service>,
}

impl From<StoredProject> for Project {
    fn from(stored: StoredProject) -> Project {
        let mut apps = stored.apps;
        apps.extend(stored.app);
        Project {
            apps,
            routes: stored.routes,
            services: stored.services,
        }
    }
}

/// The configuration files' text, as found in a folder or a git tree.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub app: Option<String>,
    /// The `.platform.app.yaml` of each app folder below the repository root, by its path
    /// (`search/.platform.app.yaml`).
    pub nested_apps: BTreeMap<String, String>,
    pub routes: Option<String>,
    pub services: Option<String>,
    pub applications: Option<String>,
    /// The files that the configuration files `!include`, directly or not, by their path from
    /// the project root; as bytes, since `type: binary` includes any file.
    pub included: BTreeMap<String, Vec<u8>>,
    /// Files there that are no configuration text (too large, not UTF-8, outside the project):
    /// the file, and why. An included file is reported where it is included.
    pub unreadable: Vec<(String, String)>,
}

/// The outcome of a check: the project when there is no error, and every diagnostic.
#[derive(Debug, Clone)]
pub struct Checked {
    pub project: Option<Project>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Sources {
    /// Reads the configuration files of the project in `dir`, and the files they include;
    /// missing files are `None`. A file too large to be configuration is not read past the
    /// limit, one that is not UTF-8 text is not kept (unless included as `binary`), and nothing
    /// outside `dir` is read: these are noted in `unreadable`, for the check to report.
    pub fn read_dir(dir: &Path) -> Result<Sources, ConfigError> {
        let mut folder = read::ProjectFolder::open(dir)?;
        let mut sources = Sources {
            app: folder.configuration(APP_FILE)?,
            routes: folder.configuration(ROUTES_FILE)?,
            services: folder.configuration(SERVICES_FILE)?,
            applications: folder.configuration(APPLICATIONS_FILE)?,
            ..Sources::default()
        };
        for path in folder.nested_app_files(APP_FILE) {
            if let Some(text) = folder.configuration(&path)? {
                sources.nested_apps.insert(path, text);
            }
        }
        // The includes are found as the check will find them, by resolving them: their values
        // are not kept, only the files read.
        for (file, text) in sources.configuration_texts() {
            let mut includer = Includer::new(file, &mut folder);
            yaml::parse(text, yaml::FileId::default(), &mut includer);
        }
        sources.included = folder.included;
        sources.unreadable = folder.unreadable;
        Ok(sources)
    }

    fn configuration_texts(&self) -> impl Iterator<Item = (&str, &str)> {
        let texts = [&self.app, &self.routes, &self.services, &self.applications];
        let nested = self
            .nested_apps
            .iter()
            .map(|(file, text)| (file.as_str(), text.as_str()));
        CONFIGURATION_FILES
            .into_iter()
            .zip(texts)
            .filter_map(|(file, text)| Some((file, text.as_deref()?)))
            .chain(nested)
    }

    /// The text of an included YAML file, which was read as YAML so is text.
    fn included_text(&self, path: &str) -> &str {
        self.included
            .get(path)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
    }
}

impl<'a> Library<'a> for &'a Sources {
    fn load(&mut self, path: &str) -> Loaded<'a> {
        let sources: &'a Sources = self;
        if let Some(bytes) = sources.included.get(path) {
            return Loaded::Bytes(Cow::Borrowed(bytes));
        }
        match sources.unreadable.iter().find(|(file, _)| file == path) {
            Some((_, why)) => Loaded::Unreadable(why.clone()),
            None => Loaded::Missing,
        }
    }
}

/// Reads and validates the project in `dir`.
pub fn check_dir(dir: &Path, runtimes: &dyn Runtimes) -> Result<Checked, ConfigError> {
    Ok(check(&Sources::read_dir(dir)?, runtimes))
}

/// Validates configuration text, for a machine offering `runtimes`. Never panics, whatever the
/// input.
pub fn check(sources: &Sources, runtimes: &dyn Runtimes) -> Checked {
    let (mut app_reports, apps) = read_apps(sources, runtimes);
    let mut routes_report = report_for(ROUTES_FILE, &sources.routes);
    let mut services_report = report_for(SERVICES_FILE, &sources.services);
    let routes = match &sources.routes {
        None => Some(default_routes(
            apps.as_ref()
                .and_then(|apps| apps.first())
                .map_or("app", |a| a.config.name.as_str()),
        )),
        Some(text) => match parse_root(&mut routes_report, text, sources) {
            None => Some(Vec::new()),
            Some(root) => routes::read(&mut routes_report, &root),
        },
    };
    let services = match &sources.services {
        None => Some(BTreeMap::new()),
        Some(text) => match parse_root(&mut services_report, text, sources) {
            None => Some(BTreeMap::new()),
            Some(root) => services::read(&mut services_report, &root, runtimes),
        },
    };
    let project = match (apps, routes, services) {
        (Some(apps), Some(routes), Some(services)) => {
            let first_file = app_reports[apps[0].report].file().to_owned();
            check_upstreams(&mut routes_report, &apps, &first_file, &routes);
            for app in &apps {
                check_relationships(&mut app_reports[app.report], &app.config, &apps, &services);
            }
            Some(Project {
                apps: apps.into_iter().map(|app| app.config).collect(),
                routes,
                services,
            })
        }
        _ => None,
    };
    let unreadable_reports = sources
        .unreadable
        .iter()
        .filter(|(file, _)| is_configuration_file(file))
        .map(|(file, why)| {
            let mut report = FileReport::new(file.clone(), "");
            report.error(
                yaml::Span::file_start(yaml::FileId::default()),
                why.clone(),
                Some("commit the configuration as YAML text".into()),
            );
            report
        });
    // An unreadable file hides what the project is: no project then.
    let project = project.filter(|_| sources.unreadable.is_empty());
    let reports = app_reports
        .into_iter()
        .chain([routes_report, services_report]);
    finish(project, reports.chain(unreadable_reports))
}

/// One of the files that configure a project, the app files of app folders included.
fn is_configuration_file(file: &str) -> bool {
    CONFIGURATION_FILES.contains(&file) || file.ends_with(&format!("/{APP_FILE}"))
}

fn report_for<'a>(file: &str, text: &'a Option<String>) -> FileReport<'a> {
    FileReport::new(file, text.as_deref().unwrap_or_default())
}

/// An app as read, with the report of the file it is in and where it starts there.
struct ReadApp {
    config: AppConfig,
    report: usize,
    span: yaml::Span,
}

/// The apps, from `.platform/applications.yaml` or else from the `.platform.app.yaml` files (at
/// the root, or one in each app folder), with the reports of the files they came from; `None`
/// when one is wrong, or two share a name.
fn read_apps<'a>(
    sources: &'a Sources,
    runtimes: &dyn Runtimes,
) -> (Vec<FileReport<'a>>, Option<Vec<ReadApp>>) {
    let app_files: Vec<(&str, &'a str)> = sources
        .app
        .iter()
        .map(|text| (APP_FILE, text.as_str()))
        .chain(
            sources
                .nested_apps
                .iter()
                .map(|(file, text)| (file.as_str(), text.as_str())),
        )
        .collect();
    if let Some(text) = &sources.applications {
        let mut report = FileReport::new(APPLICATIONS_FILE, text);
        if let Some((file, _)) = app_files.first() {
            report.error(
                Default::default(),
                format!("the project configures apps in both `{file}` and `{APPLICATIONS_FILE}`"),
                Some("keep the apps in one of the two and delete the other".into()),
            );
            return (vec![report], None);
        }
        let apps = parse_file(&mut report, text, sources)
            .and_then(|root| read_listed_apps(&mut report, &root, runtimes));
        let mut reports = vec![report];
        let apps = apps.and_then(|apps| distinct_names(&mut reports, apps));
        return (reports, apps);
    }
    let mut reports = Vec::new();
    let mut apps = Vec::new();
    for (file, text) in &app_files {
        let mut report = FileReport::new(*file, text);
        let folder = file.strip_suffix(APP_FILE).unwrap_or_default();
        let folder = folder.trim_end_matches('/');
        apps.push(
            parse_file(&mut report, text, sources)
                .and_then(|root| app::read(&mut report, &root, None, folder, runtimes))
                .map(|config| ReadApp {
                    config,
                    report: reports.len(),
                    span: Default::default(),
                }),
        );
        reports.push(report);
    }
    if reports.is_empty() {
        let mut report = report_for(APP_FILE, &sources.app);
        // Reported as unreadable, not as missing.
        if !sources.unreadable.iter().any(|(file, _)| file == APP_FILE) {
            report.error(
                Default::default(),
                "the project has no `.platform.app.yaml`",
                Some(format!(
                    "add `{APP_FILE}` at the repository root, with at least {MINIMUM_APP}"
                )),
            );
        }
        return (vec![report], None);
    }
    let apps = apps
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .and_then(|apps| distinct_names(&mut reports, apps));
    (reports, apps)
}

/// Apps must have names of their own: routes and relationships name them.
fn distinct_names(reports: &mut [FileReport<'_>], apps: Vec<ReadApp>) -> Option<Vec<ReadApp>> {
    let mut ok = true;
    for (index, app) in apps.iter().enumerate() {
        if let Some(first) = apps[..index]
            .iter()
            .find(|other| other.config.name == app.config.name)
        {
            let first_file = reports[first.report].file().to_owned();
            reports[app.report].error(
                app.span,
                format!(
                    "two apps are named `{}`: this one and the one in `{first_file}`",
                    app.config.name
                ),
                Some("give each app a `name` of its own".into()),
            );
            ok = false;
        }
    }
    ok.then_some(apps)
}

const MINIMUM_APP: &str = "`name`, `type` and `web.commands.start`";

/// Parses a file that must not be empty.
fn parse_file<'a>(
    report: &mut FileReport<'a>,
    text: &str,
    sources: &'a Sources,
) -> Option<yaml::Node> {
    let had_errors = report.diagnostics.len();
    let root = parse_root(report, text, sources);
    if root.is_none() && report.diagnostics.len() == had_errors {
        report.error(
            Default::default(),
            format!("`{}` is empty", report.file()),
            Some(format!(
                "configure the app in it, with at least {MINIMUM_APP}"
            )),
        );
    }
    root
}

/// `.platform/applications.yaml` as a mapping of app names to apps, or as a list of apps with
/// `name`; the apps' folders are their `source.root`.
fn read_listed_apps(
    report: &mut FileReport<'_>,
    root: &yaml::Node,
    runtimes: &dyn Runtimes,
) -> Option<Vec<ReadApp>> {
    // Each app with the key naming it (map form) and where it starts.
    let apps: Vec<(Option<&yaml::Key>, &yaml::Node, yaml::Span)> = match &root.value {
        yaml::Value::Map(entries) => entries
            .iter()
            .map(|(key, app)| (Some(key), app, key.span))
            .collect(),
        yaml::Value::Seq(items) => items.iter().map(|app| (None, app, app.span)).collect(),
        _ => {
            decode::mapping(report, root, "");
            return None;
        }
    };
    if apps.is_empty() {
        report.error(root.span, "this file defines no app", None);
        return None;
    }
    // Every app is read, so that all their problems are reported at once.
    let read: Vec<Option<ReadApp>> = apps
        .into_iter()
        .map(|(named, app, span)| {
            app::read(report, app, named, "", runtimes).map(|config| ReadApp {
                config,
                report: 0,
                span,
            })
        })
        .collect();
    read.into_iter().collect()
}

fn finish<'a>(
    project: Option<Project>,
    reports: impl IntoIterator<Item = FileReport<'a>>,
) -> Checked {
    let diagnostics: Vec<Diagnostic> = reports
        .into_iter()
        .flat_map(FileReport::into_diagnostics)
        .collect();
    let project = project.filter(|_| !diagnostics.iter().any(Diagnostic::is_error));
    Checked {
        project,
        diagnostics,
    }
}

/// Parses one file and the files it includes; syntax problems go to the report. `None` when
/// there is nothing to read.
fn parse_root<'a>(
    report: &mut FileReport<'a>,
    text: &str,
    sources: &'a Sources,
) -> Option<yaml::Node> {
    let mut library = sources;
    let mut includer = Includer::new(report.file(), &mut library);
    let (root, problems) = yaml::parse(text, yaml::FileId::default(), &mut includer);
    for file in includer.files() {
        report.include(file.clone(), sources.included_text(file));
    }
    for problem in problems {
        report.error(problem.span, problem.message, problem.help);
    }
    root
}

/// What Platform.sh serves when a project has no routes file.
fn default_routes(app: &str) -> Vec<Route> {
    vec![
        Route {
            url: "https://{default}/".into(),
            kind: RouteKind::Upstream { app: app.into() },
            id: None,
            primary: true,
            cache: Cache::default(),
            upstream_span: Default::default(),
        },
        Route {
            url: "https://www.{default}/".into(),
            kind: RouteKind::Redirect {
                to: "https://{default}/".into(),
            },
            id: None,
            primary: false,
            cache: Cache::default(),
            upstream_span: Default::default(),
        },
    ]
}

/// A relationship to another app of the project: its `http` endpoint, the app's web server.
fn check_app_relationship(
    report: &mut FileReport<'_>,
    app: &AppConfig,
    name: &str,
    relationship: &Relationship,
    target: &AppConfig,
    services: &BTreeMap<String, Service>,
) {
    let target_name = &target.name;
    if services.contains_key(target_name) {
        report.error(
            relationship.service_span,
            format!(
                "relationship `{name}` names `{target_name}`, which is both an app and a service in `{SERVICES_FILE}`"
            ),
            Some("give the app or the service another name".into()),
        );
    } else if *target_name == app.name {
        report.error(
            relationship.service_span,
            format!("relationship `{name}` names the app itself"),
            Some("an app reaches itself on its own `PORT`; name another app or a service".into()),
        );
    } else if let Some(endpoint) = relationship
        .endpoint
        .as_deref()
        .filter(|e| *e != APP_ENDPOINT)
    {
        report.error(
            relationship.endpoint_span,
            format!(
                "relationship `{name}` asks app `{target_name}` for endpoint `{endpoint}`, but an app answers on `{APP_ENDPOINT}` only"
            ),
            Some(format!("write `\"{target_name}:{APP_ENDPOINT}\"`")),
        );
    }
}

/// `first_file` is where the first app is configured, for the message when there is one app.
fn check_upstreams(
    report: &mut FileReport<'_>,
    apps: &[ReadApp],
    first_file: &str,
    routes: &[Route],
) {
    let names = || apps.iter().map(|app| app.config.name.as_str());
    for route in routes {
        let RouteKind::Upstream { app: upstream } = &route.kind else {
            continue;
        };
        if names().any(|name| name == upstream) {
            continue;
        }
        let (message, help) = match apps {
            [only] => (
                format!(
                    "route \"{}\" sends requests to app `{upstream}`, but `{}` names the app `{}`",
                    route.url, first_file, only.config.name
                ),
                format!("write `upstream: \"{}:http\"`", only.config.name),
            ),
            _ => (
                format!(
                    "route \"{}\" sends requests to app `{upstream}`, but no app has that name",
                    route.url
                ),
                match suggest(upstream, names()) {
                    Some(near) => format!("did you mean `\"{near}:http\"`?"),
                    None => format!(
                        "name one of the apps: {}",
                        names()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            ),
        };
        report.error(route.upstream_span, message, Some(help));
    }
}

/// The endpoint an app answers relationships on (`"api:http"`), as on Platform.sh.
pub const APP_ENDPOINT: &str = "http";

fn check_relationships(
    report: &mut FileReport<'_>,
    app: &AppConfig,
    apps: &[ReadApp],
    services: &BTreeMap<String, Service>,
) {
    for (name, relationship) in &app.relationships {
        let target_app = apps
            .iter()
            .find(|other| other.config.name == relationship.service);
        if let Some(other) = target_app {
            check_app_relationship(report, app, name, relationship, &other.config, services);
            continue;
        }
        let Some(service) = services.get(&relationship.service) else {
            let help = match suggest(&relationship.service, services.keys().map(String::as_str)) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("define `{}` in `{SERVICES_FILE}`", relationship.service),
            };
            report.error(
                relationship.service_span,
                format!(
                    "relationship `{name}` names service `{}`, which `{SERVICES_FILE}` does not define",
                    relationship.service
                ),
                Some(help),
            );
            continue;
        };
        let endpoints = &service.endpoints.endpoints;
        let endpoint = relationship
            .endpoint
            .as_deref()
            .unwrap_or(service.kind.default_endpoint());
        if !endpoints.contains_key(endpoint) {
            let defined = endpoints
                .keys()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let service_name = &relationship.service;
            let default = service.kind.default_endpoint();
            let help = match suggest(endpoint, endpoints.keys().map(String::as_str)) {
                Some(near) => format!("did you mean `\"{service_name}:{near}\"`?"),
                None if endpoints.len() == 1 && endpoints.contains_key(default) => format!(
                    "write `\"{service_name}:{default}\"`, or leave the endpoint out to get `{default}`"
                ),
                None => format!("name one of its endpoints: {defined}"),
            };
            let span = if relationship.endpoint.is_some() {
                relationship.endpoint_span
            } else {
                relationship.service_span
            };
            report.error(
                span,
                format!(
                    "relationship `{name}` asks for endpoint `{endpoint}`, but service `{}` defines only {defined}",
                    relationship.service
                ),
                Some(help),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_only(text: &str) -> Checked {
        check(
            &Sources {
                app: Some(text.into()),
                ..Default::default()
            },
            &AnyRuntime,
        )
    }

    fn messages(checked: &Checked) -> Vec<String> {
        checked.errors().map(|d| d.message.clone()).collect()
    }

    #[test]
    fn files_that_are_not_configuration_text_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(APP_FILE), b"name: app\n\xff\xfe binary").unwrap();
        std::fs::create_dir(dir.path().join(".platform")).unwrap();
        std::fs::write(
            dir.path().join(ROUTES_FILE),
            "#".repeat(yaml::MAX_SOURCE_BYTES + 10),
        )
        .unwrap();
        let checked = check_dir(dir.path(), &AnyRuntime).unwrap();
        assert!(checked.project.is_none());
        let errors: Vec<(String, String)> = checked
            .errors()
            .map(|d| (d.file.clone(), d.message.clone()))
            .collect();
        assert_eq!(
            errors,
            [
                (
                    APP_FILE.to_owned(),
                    "`.platform.app.yaml` is not UTF-8 text (byte 10 is not), so it cannot be YAML"
                        .to_owned()
                ),
                (
                    ROUTES_FILE.to_owned(),
                    "`.platform/routes.yaml` is larger than the 1048576 bytes a configuration file may hold"
                        .to_owned()
                ),
            ]
        );
    }

    /// Writes `files` (path from the project root, content) under `root`.
    fn write_files(root: &Path, files: &[(&str, &[u8])]) {
        for (path, content) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }

    fn errors_at(checked: &Checked) -> Vec<(String, usize, String)> {
        checked
            .errors()
            .map(|d| (d.file.clone(), d.line, d.message.clone()))
            .collect()
    }

    #[test]
    fn included_files_are_read_from_the_folder_of_the_file_that_includes_them() {
        let dir = tempfile::tempdir().unwrap();
        write_files(
            dir.path(),
            &[
                (APPLICATIONS_FILE, b"# one app\n- !include app.yaml\n"),
                (
                    ".platform/app.yaml",
                    b"name: app\ntype: python:3.12\nweb: {commands: {start: gunicorn app:app}}\nhooks:\n  build: !include {type: string, path: build.sh}\n  deploy: !include {type: string, path: ../scripts/deploy.sh}\nvariables:\n  env:\n    KEY: !include {type: binary, path: key.bin}\n",
                ),
                (".platform/build.sh", b"set -e\npip install -r requirements.txt\n"),
                ("scripts/deploy.sh", b"python manage.py migrate\n"),
                (".platform/key.bin", &[0xde, 0xad, 0xbe, 0xef]),
                (".platform/unused.yaml", b"not: read\n"),
            ],
        );
        let sources = Sources::read_dir(dir.path()).unwrap();
        assert_eq!(
            sources.included.keys().collect::<Vec<_>>(),
            [
                ".platform/app.yaml",
                ".platform/build.sh",
                ".platform/key.bin",
                "scripts/deploy.sh"
            ]
        );
        let checked = check(&sources, &AnyRuntime);
        let app = checked.project.expect("valid").apps.remove(0);
        assert_eq!(app.name, "app");
        assert_eq!(
            app.hooks.build.as_deref(),
            Some("set -e\npip install -r requirements.txt\n")
        );
        assert_eq!(
            app.hooks.deploy.as_deref(),
            Some("python manage.py migrate\n")
        );
        assert_eq!(app.variables["env:KEY"], "3q2+7w==");
    }

    #[test]
    fn problems_in_an_included_file_are_reported_in_it() {
        let sources = Sources {
            applications: Some("- !include app.yaml\n".into()),
            included: [(
                ".platform/app.yaml".to_owned(),
                b"name: app\ntype: python:3.12\nweb: {commands: {start: x}}\nhoks: {}\n".to_vec(),
            )]
            .into(),
            ..Default::default()
        };
        let checked = check(&sources, &AnyRuntime);
        let error = checked.errors().next().expect("an error");
        assert_eq!(
            (error.file.as_str(), error.line, error.column),
            (".platform/app.yaml", 4, 1)
        );
        assert!(error.to_string().contains("4 | hoks: {}"), "{error}");
    }

    #[test]
    fn nothing_outside_the_project_is_read_even_through_a_symbolic_link() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        write_files(
            dir.path(),
            &[
                ("secret.sh", b"SECRET\n"),
                ("elsewhere/routes.yaml", b"SECRET: {}\n"),
                (
                    "project/.platform.app.yaml",
                    b"name: app\ntype: python:3.12\nweb: {commands: {start: x}}\nhooks:\n  build: !include {type: string, path: inside.sh}\n  deploy: !include {type: string, path: outside.sh}\n",
                ),
                ("project/scripts/build.sh", b"make\n"),
            ],
        );
        std::os::unix::fs::symlink("scripts/build.sh", project.join("inside.sh")).unwrap();
        std::os::unix::fs::symlink("../secret.sh", project.join("outside.sh")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), project.join(".platform"))
            .unwrap();
        let sources = Sources::read_dir(&project).unwrap();
        assert!(
            sources
                .included
                .values()
                .all(|bytes| !String::from_utf8_lossy(bytes).contains("SECRET"))
        );
        assert_eq!(sources.routes, None);
        let checked = check(&sources, &AnyRuntime);
        assert_eq!(
            errors_at(&checked),
            [
                (
                    APP_FILE.to_owned(),
                    6,
                    "`outside.sh` leads outside the project, through a symbolic link".to_owned()
                ),
                (
                    ROUTES_FILE.to_owned(),
                    1,
                    "`.platform/routes.yaml` leads outside the project, through a symbolic link"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn included_files_too_large_or_not_text_are_errors_where_they_are_included() {
        let dir = tempfile::tempdir().unwrap();
        let large = "#".repeat(yaml::MAX_SOURCE_BYTES + 1);
        write_files(
            dir.path(),
            &[
                (
                    APP_FILE,
                    b"name: app\ntype: python:3.12\nweb: {commands: {start: x}}\nvariables: !include large.yaml\nhooks:\n  build: !include {type: string, path: logo.png}\n  deploy: !include {type: binary, path: logo.png}\n",
                ),
                ("large.yaml", large.as_bytes()),
                ("logo.png", b"\x89PNG"),
            ],
        );
        let checked = check_dir(dir.path(), &AnyRuntime).unwrap();
        assert_eq!(
            errors_at(&checked),
            [
                (
                    APP_FILE.to_owned(),
                    4,
                    "`large.yaml` is larger than the 1048576 bytes a configuration file may hold"
                        .to_owned()
                ),
                (
                    APP_FILE.to_owned(),
                    6,
                    "`logo.png` is not UTF-8 text (byte 0 is not), so it cannot be a string"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_language_the_machine_lacks_is_an_error_at_type() {
        struct NoPhp;
        impl Runtimes for NoPhp {
            fn missing(&self, language: &str) -> Option<String> {
                (language == "php").then(|| "install the Debian package `php8.2-fpm`".into())
            }
        }
        let text = "name: app\ntype: 'php:8.2'\nweb: {commands: {start: php-fpm}}\n";
        let sources = Sources {
            app: Some(text.into()),
            ..Default::default()
        };
        let checked = check(&sources, &NoPhp);
        assert_eq!(
            messages(&checked),
            ["the runtime `php:8.2` cannot run here: no php is installed"]
        );
        let error = &checked.diagnostics[0];
        assert_eq!((error.line, error.column), (2, 7));
        assert_eq!(
            error.help.as_deref(),
            Some("install the Debian package `php8.2-fpm`")
        );
        assert!(check(&sources, &AnyRuntime).project.is_some());
    }

    #[test]
    fn a_service_engine_the_machine_lacks_is_an_error_at_its_type() {
        struct NoMariadb;
        impl Runtimes for NoMariadb {
            fn missing(&self, language: &str) -> Option<String> {
                (language == "mariadb")
                    .then(|| "install the Debian package `mariadb-server`".into())
            }
        }
        let sources = Sources {
            app: Some("name: app\ntype: 'python:3.11'\nweb: {commands: {start: x}}\nrelationships: {db: 'shop:mysql'}\n".into()),
            services: Some("cache:\n  type: redis-persistent:7.0\nshop:\n  type: mysql:10.6\n".into()),
            ..Default::default()
        };
        let checked = check(&sources, &NoMariadb);
        assert_eq!(
            messages(&checked),
            ["the service `mysql:10.6` cannot run here: no mariadb is installed"]
        );
        let error = &checked.diagnostics[0];
        assert_eq!((error.file.as_str(), error.line), (SERVICES_FILE, 4));
        assert_eq!(
            error.help.as_deref(),
            Some("install the Debian package `mariadb-server`")
        );
        let project = check(&sources, &AnyRuntime).project.expect("valid");
        let cache = &project.services["cache"];
        assert!(cache.persistent);
        assert_eq!(cache.written_type, "redis-persistent:7.0");
        assert_eq!(project.services["shop"].kind, ServiceKind::Mariadb);
    }

    #[test]
    fn locations_become_a_typed_model() {
        let checked = app_only(
            "name: app\ntype: 'php:8.1'\nweb:\n  commands: {start: php -S 0.0.0.0:$PORT}\n  locations:\n    /:\n      root: /wordpress/\n      passthru: /index.php\n      expires: 600\n      index: [index.php]\n      headers: {X-Frame-Options: DENY}\n      rules: {'^/license\\.txt$': {allow: false, expires: 1h}}\n",
        );
        let project = checked.project.expect("valid");
        let location = &project.apps[0].web.locations["/"];
        assert_eq!(location.root.as_deref(), Some("wordpress"));
        assert_eq!(location.passthru, Passthru::Path("/index.php".into()));
        assert_eq!(location.expires, Expires::Seconds(600));
        assert_eq!(location.index, vec!["index.php".to_owned()]);
        assert_eq!(location.headers["X-Frame-Options"], "DENY");
        assert!(location.allow);
        let rule = &location.rules[0];
        assert_eq!(rule.pattern, "^/license\\.txt$");
        assert_eq!(rule.allow, Some(false));
        assert_eq!(rule.expires, Some(Expires::Seconds(3_600)));
        assert_eq!(rule.passthru, None);
        assert!(project.apps[0].web.passes_to_app());
    }

    #[test]
    fn a_static_site_needs_no_start_command() {
        let checked = app_only(
            "name: app\ntype: nodejs:18\nweb:\n  locations:\n    /: {root: public, index: [index.html]}\n",
        );
        let web = checked.project.expect("valid").apps.remove(0).web;
        assert_eq!(web.start, None);
        assert!(!web.passes_to_app());
        let passing =
            app_only("name: app\ntype: nodejs:18\nweb:\n  locations:\n    /: {passthru: true}\n");
        assert_eq!(messages(&passing), ["`web.commands` is required"]);
    }

    #[test]
    fn several_apps_are_each_checked_with_the_routes_and_relationships_between_them() {
        let app = |name: &str, extra: &str| {
            format!(
                "{name}:\n  type: python:3.11\n  source: {{root: {name}}}\n  web: {{commands: {{start: ./run}}}}\n{extra}"
            )
        };
        let project = |apps: String, routes: &str, services: &str| {
            check(
                &Sources {
                    applications: Some(apps),
                    routes: Some(routes.into()),
                    services: Some(services.into()),
                    ..Default::default()
                },
                &AnyRuntime,
            )
        };
        let routes = "\"https://{default}/\": {type: upstream, upstream: \"web:http\"}\n\"https://api.{default}/\": {type: upstream, upstream: \"api:http\"}\n";
        let db = "db: {type: postgresql:15}\n";
        // Two valid apps, one reaching the other.
        let valid = project(
            app(
                "web",
                "  relationships: {backend: \"api:http\", database: \"db:postgresql\"}\n",
            ) + &app("api", ""),
            routes,
            db,
        );
        assert_eq!(messages(&valid), Vec::<String>::new());

        let wrong = project(
            app(
                "web",
                "  relationships: {backend: \"api:mysql\", me: \"web:http\", both: \"db:http\"}\n",
            ) + &app("api", "")
                + &app("db", ""),
            "\"https://{default}/\": {type: upstream, upstream: \"wbe:http\"}\n",
            db,
        );
        assert_eq!(
            messages(&wrong),
            [
                "relationship `backend` asks app `api` for endpoint `mysql`, but an app answers on `http` only",
                "relationship `me` names the app itself",
                "relationship `both` names `db`, which is both an app and a service in `.platform/services.yaml`",
                "route \"https://{default}/\" sends requests to app `wbe`, but no app has that name",
            ]
        );

        let twins = check(
            &Sources {
                nested_apps: [
                    (
                        "a/.platform.app.yaml".into(),
                        "name: app\ntype: python:3.11\nweb: {commands: {start: ./run}}\n".into(),
                    ),
                    (
                        "b/.platform.app.yaml".into(),
                        "name: app\ntype: nodejs:20\nweb: {commands: {start: ./run}}\n".into(),
                    ),
                ]
                .into(),
                ..Default::default()
            },
            &AnyRuntime,
        );
        assert_eq!(
            messages(&twins),
            ["two apps are named `app`: this one and the one in `a/.platform.app.yaml`"]
        );
        assert_eq!(twins.diagnostics[0].file, "b/.platform.app.yaml");
    }

    #[test]
    fn a_project_stored_with_its_one_app_reads_back() {
        let checked = app_only("name: app\ntype: python:3.11\nweb: {commands: {start: ./run}}\n");
        let project = checked.project.expect("valid");
        let mut stored = serde_json::to_value(&project).unwrap();
        let apps = stored.as_object_mut().unwrap().remove("apps").unwrap();
        stored["app"] = apps[0].clone();
        let read: Project = serde_json::from_value(stored).unwrap();
        assert_eq!(read, project);
    }

    #[test]
    fn the_first_upstream_route_is_primary_unless_a_route_says() {
        let app = "name: app\ntype: python:3.11\nweb: {commands: {start: ./run}}\n";
        let primaries = |routes: &str| -> Vec<String> {
            let checked = check(
                &Sources {
                    app: Some(app.into()),
                    routes: Some(routes.into()),
                    ..Default::default()
                },
                &AnyRuntime,
            );
            let project = checked.project.expect("valid");
            project
                .routes
                .into_iter()
                .filter(|r| r.primary)
                .map(|r| r.url)
                .collect()
        };
        let redirect_first = "\"https://{default}/\": {type: redirect, to: \"https://www.{default}/\"}\n\"https://www.{default}/\": {type: upstream, upstream: \"app:http\"}\n";
        assert_eq!(primaries(redirect_first), ["https://www.{default}/"]);
        let chosen = "\"https://{default}/\": {type: upstream, upstream: \"app:http\"}\n\"https://api.{default}/\": {type: upstream, upstream: \"app:http\", primary: true}\n";
        assert_eq!(primaries(chosen), ["https://api.{default}/"]);
    }

    #[test]
    fn the_app_is_built_from_its_files_folder_or_its_source_root() {
        let app = "name: app\ntype: python:3.11\nweb: {commands: {start: ./run}}\n";
        let root_of = |sources: Sources| {
            check(&sources, &AnyRuntime)
                .project
                .expect("valid")
                .apps
                .remove(0)
                .source_root
        };
        let at_root = Sources {
            app: Some(app.into()),
            ..Default::default()
        };
        assert_eq!(root_of(at_root), "");
        let in_folder = Sources {
            nested_apps: [("apps/search/.platform.app.yaml".into(), app.into())].into(),
            ..Default::default()
        };
        assert_eq!(root_of(in_folder), "apps/search");
        let moved = Sources {
            app: Some(format!("{app}source: {{root: /backend/}}\n")),
            ..Default::default()
        };
        assert_eq!(root_of(moved), "backend");
        let listed = Sources {
            applications: Some("api:\n  type: python:3.11\n  source: {root: api}\n  web: {commands: {start: ./run}}\n".into()),
            ..Default::default()
        };
        assert_eq!(root_of(listed), "api");
        let escaping = check(
            &Sources {
                app: Some(format!("{app}source: {{root: ../elsewhere}}\n")),
                ..Default::default()
            },
            &AnyRuntime,
        );
        assert_eq!(
            messages(&escaping),
            ["`source.root` is not a valid path: it must not contain `..`"]
        );
    }

    #[test]
    fn one_app_in_applications_yaml_is_read_as_the_app() {
        let app = "  type: golang:1.22\n  web: {commands: {start: ./bin/app}}\n";
        let by_key = check(
            &Sources {
                applications: Some(format!("api:\n{app}")),
                ..Default::default()
            },
            &AnyRuntime,
        );
        assert_eq!(by_key.project.expect("valid").apps[0].name, "api");
        let listed = check(
            &Sources {
                applications: Some(format!("- name: api\n{app}")),
                ..Default::default()
            },
            &AnyRuntime,
        );
        assert_eq!(listed.project.expect("valid").apps[0].name, "api");
        let mismatch = check(
            &Sources {
                applications: Some(format!("api:\n  name: web\n{app}")),
                ..Default::default()
            },
            &AnyRuntime,
        );
        assert_eq!(
            messages(&mismatch),
            ["`name` is `web`, but the app's key in `.platform/applications.yaml` is `api`"]
        );
        assert_eq!(mismatch.diagnostics[0].file, APPLICATIONS_FILE);
    }

    #[test]
    fn a_misspelt_required_key_is_reported_once() {
        let checked = app_only("name: app\ntype: python:3.11\nweb:\n  commands:\n    strat: x\n");
        assert_eq!(
            messages(&checked),
            ["unknown key `strat` in `web.commands`"]
        );
    }

    #[test]
    fn utc_is_the_only_time_zone() {
        let base = "name: app\ntype: python:3.11\nweb: {commands: {start: x}}\n";
        assert!(
            app_only(&format!("{base}timezone: Etc/UTC\n"))
                .project
                .is_some()
        );
        assert_eq!(
            messages(&app_only(&format!("{base}timezone: Europe/Paris\n"))),
            ["`timezone: Europe/Paris` is not supported by Lockstep yet"]
        );
    }
}
