//! Lockstep's reading of a project's Platform.sh configuration.
//!
//! Owns: parsing `.platform.app.yaml`, `.platform/routes.yaml` and `.platform/services.yaml` into
//! the typed model that every other part of Lockstep uses, and every diagnostic about them.
//! Must never: touch anything but the files it is asked to read, or stop at the first problem
//! (users fix a config in one go only when they see all of its errors).

mod app;
mod decode;
mod diagnostic;
mod routes;
mod services;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use app::{
    APP_FILE, Access, AppConfig, BuildFlavor, Cron, Hooks, Mount, MountSource, Relationship, Role,
    Web, Worker,
};
pub use diagnostic::{Diagnostic, Severity};
pub use routes::{Cache, ROUTES_FILE, Route, RouteKind};
pub use services::{SERVICES_FILE, Service, ServiceKind};

use diagnostic::{FileReport, suggest};

/// Platform.sh's multi-app file, which Lockstep does not read yet.
pub const APPLICATIONS_FILE: &str = ".platform/applications.yaml";

/// Everything a project's configuration says, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub app: AppConfig,
    pub routes: Vec<Route>,
    pub services: BTreeMap<String, Service>,
}

/// The configuration files' text, as found in a folder or a git tree.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub app: Option<String>,
    pub routes: Option<String>,
    pub services: Option<String>,
    pub applications: Option<String>,
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
    /// Reads the configuration files of the project in `dir`; missing files are `None`.
    pub fn read_dir(dir: &Path) -> Result<Sources, ConfigError> {
        let read = |name: &str| {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(ConfigError::Read { path, source }),
            }
        };
        Ok(Sources {
            app: read(APP_FILE)?,
            routes: read(ROUTES_FILE)?,
            services: read(SERVICES_FILE)?,
            applications: read(APPLICATIONS_FILE)?,
        })
    }
}

/// Reads and validates the project in `dir`.
pub fn check_dir(dir: &Path) -> Result<Checked, ConfigError> {
    Ok(check(&Sources::read_dir(dir)?))
}

/// Validates configuration text. Never panics, whatever the input.
pub fn check(sources: &Sources) -> Checked {
    let empty = String::new();
    let mut app_report = FileReport::new(APP_FILE, sources.app.as_deref().unwrap_or(&empty));
    let mut routes_report =
        FileReport::new(ROUTES_FILE, sources.routes.as_deref().unwrap_or(&empty));
    let mut services_report =
        FileReport::new(SERVICES_FILE, sources.services.as_deref().unwrap_or(&empty));

    if sources.applications.is_some() {
        let mut report = FileReport::new(APPLICATIONS_FILE, "");
        report.error(
            Default::default(),
            "projects with several apps (`.platform/applications.yaml`) are not supported by Lockstep yet",
            Some("keep one app, configured in `.platform.app.yaml` at the repository root".into()),
        );
        return finish(None, [report, app_report, routes_report, services_report]);
    }
    let app = match &sources.app {
        None => {
            app_report.error(
                Default::default(),
                "the project has no `.platform.app.yaml`",
                Some("add `.platform.app.yaml` at the repository root, with at least `name`, `type` and `web.commands.start`".into()),
            );
            None
        }
        Some(text) => {
            parse_root(&mut app_report, text).and_then(|root| app::read(&mut app_report, &root))
        }
    };
    let routes = match &sources.routes {
        None => Some(default_routes(
            app.as_ref().map_or("app", |a| a.name.as_str()),
        )),
        Some(text) => match parse_root(&mut routes_report, text) {
            None => Some(Vec::new()),
            Some(root) => routes::read(&mut routes_report, &root),
        },
    };
    let services = match &sources.services {
        None => Some(BTreeMap::new()),
        Some(text) => match parse_root(&mut services_report, text) {
            None => Some(BTreeMap::new()),
            Some(root) => services::read(&mut services_report, &root),
        },
    };
    let project = match (app, routes, services) {
        (Some(app), Some(routes), Some(services)) => {
            check_upstreams(&mut routes_report, &app, &routes);
            check_relationships(&mut app_report, &app, &services);
            Some(Project {
                app,
                routes,
                services,
            })
        }
        _ => None,
    };
    finish(project, [app_report, routes_report, services_report])
}

fn finish<const N: usize>(project: Option<Project>, reports: [FileReport<'_>; N]) -> Checked {
    let mut diagnostics = Vec::new();
    for report in reports {
        let mut file_diagnostics = report.diagnostics;
        file_diagnostics.sort_by_key(|d| (d.line, d.column));
        diagnostics.extend(file_diagnostics);
    }
    let project = project.filter(|_| !diagnostics.iter().any(Diagnostic::is_error));
    Checked {
        project,
        diagnostics,
    }
}

/// Parses one file; syntax problems go to the report. `None` when there is nothing to read.
fn parse_root(report: &mut FileReport<'_>, text: &str) -> Option<yaml::Node> {
    let (root, problems) = yaml::parse(text);
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

fn check_upstreams(report: &mut FileReport<'_>, app: &AppConfig, routes: &[Route]) {
    for route in routes {
        if let RouteKind::Upstream { app: upstream } = &route.kind {
            if *upstream != app.name {
                report.error(
                    route.upstream_span,
                    format!(
                        "route \"{}\" sends requests to app `{upstream}`, but `{APP_FILE}` names the app `{}`",
                        route.url, app.name
                    ),
                    Some(format!("write `upstream: \"{}:http\"`", app.name)),
                );
            }
        }
    }
}

fn check_relationships(
    report: &mut FileReport<'_>,
    app: &AppConfig,
    services: &BTreeMap<String, Service>,
) {
    for (name, relationship) in &app.relationships {
        let Some(service) = services.get(&relationship.service) else {
            let help = match suggest(&relationship.service, services.keys().map(String::as_str)) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("define `{}` in `{SERVICES_FILE}`", relationship.service),
            };
            report.error(
                relationship.span,
                format!(
                    "relationship `{name}` names service `{}`, which `{SERVICES_FILE}` does not define",
                    relationship.service
                ),
                Some(help),
            );
            continue;
        };
        let expected = service.kind.default_endpoint();
        if let Some(endpoint) = relationship.endpoint.as_deref().filter(|e| *e != expected) {
            report.error(
                relationship.span,
                format!(
                    "relationship `{name}` asks for endpoint `{endpoint}`, but service `{}` has only `{expected}`",
                    relationship.service
                ),
                Some(format!("write `\"{}:{expected}\"`", relationship.service)),
            );
        }
    }
}
