//! The environments the edge serves, and which one a request's host picks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::Uri;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cache::policy::Defaults;
use crate::cache::rules::KeyRules;
use crate::error::RouteError;
use crate::gate::Gate;
use crate::hold::HoldQueue;
use lockstep_proto::edge::{ClosedMode, EnvironmentRoute, EnvironmentView};
use lockstep_routes::{Routes, check_apps, valid_app};

/// An environment's settings, replaced as a whole by each `PUT`.
#[derive(Debug)]
pub(crate) struct EnvConfig {
    /// As put, with hosts and routers normalised; `hosts` holds the routes' hosts too.
    pub route: EnvironmentRoute,
    pub routes: Routes,
    pub rules: KeyRules,
    pub defaults: Defaults,
    pub max_hold: Duration,
    pub closed_mode: ClosedMode,
}

impl EnvConfig {
    fn compile(route: EnvironmentRoute, routes: Routes) -> Result<EnvConfig, RouteError> {
        let rules = KeyRules::compile(&route.cache)?;
        Ok(EnvConfig {
            routes,
            defaults: Defaults {
                default_ttl: rules.default_ttl,
                swr: Duration::from_secs(route.swr_secs),
                grace: Duration::from_secs(route.grace_secs),
            },
            rules,
            max_hold: Duration::from_secs(route.max_hold_secs),
            closed_mode: route.closed_mode,
            route,
        })
    }
}

pub(crate) struct Environment {
    pub name: String,
    /// Prefix of every cache key of this environment: its name and incarnation, so that a
    /// deleted and recreated environment never sees the old one's responses.
    pub scope: String,
    config: RwLock<Arc<EnvConfig>>,
    pub gate: Gate,
    pub held: HoldQueue,
    /// Wakes the health checker for an immediate round.
    pub check_now: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Environment {
    pub(crate) fn config(&self) -> Arc<EnvConfig> {
        self.config.read().expect("config lock").clone()
    }

    pub(crate) fn add_task(&self, task: JoinHandle<()>) {
        self.tasks.lock().expect("tasks lock").push(task);
    }

    /// Stops the environment's health checker and releaser; held requests get their 503 at once.
    pub(crate) fn stop(&self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        self.held.clear();
    }

    pub(crate) fn view(&self) -> EnvironmentView {
        let mut route = self.config().route.clone();
        route.gate = self.gate.controller();
        EnvironmentView {
            name: self.name.clone(),
            route,
            state: self.gate.effective(),
            generation: self.gate.generation(),
            held: self.held.len() as u64,
            nodes: self.gate.view(),
        }
    }
}

#[derive(Default)]
struct Table {
    by_name: BTreeMap<String, Arc<Environment>>,
    by_host: HashMap<String, Arc<Environment>>,
}

#[derive(Default)]
pub(crate) struct Router {
    table: RwLock<Table>,
    incarnations: AtomicU64,
}

/// What `put` did.
pub(crate) struct Put {
    pub environment: Arc<Environment>,
    /// A new environment, whose tasks must be started.
    pub created: bool,
}

impl Router {
    /// The environment served at a (normalised) host.
    pub(crate) fn by_host(&self, host: &str) -> Option<Arc<Environment>> {
        self.table
            .read()
            .expect("routes lock")
            .by_host
            .get(host)
            .cloned()
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<Arc<Environment>> {
        self.table
            .read()
            .expect("routes lock")
            .by_name
            .get(name)
            .cloned()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Environment>> {
        self.table
            .read()
            .expect("routes lock")
            .by_name
            .values()
            .cloned()
            .collect()
    }

    /// Creates or replaces an environment.
    pub(crate) fn put(
        &self,
        name: &str,
        mut route: EnvironmentRoute,
        domain: &str,
    ) -> Result<Put, RouteError> {
        check_name(name)?;
        if route.hosts.is_empty() {
            route.hosts = vec![format!("{name}.{domain}")];
        }
        let routes = Routes::compile(&mut route.routes)?;
        let mut hosts = Vec::new();
        for host in route
            .hosts
            .iter()
            .chain(route.routes.iter().map(|r| &r.host))
        {
            let normal = normalise_host(host);
            if !valid_host(&normal) {
                return Err(RouteError::BadHost(host.clone()));
            }
            if !hosts.contains(&normal) {
                hosts.push(normal);
            }
        }
        route.hosts = hosts;
        if let Some(app) = route.app_nodes.keys().find(|app| !valid_app(app)) {
            return Err(RouteError::BadApp(app.clone()));
        }
        check_apps(&route.routes, &route.app_nodes)?;
        for routers in std::iter::once(&mut route.nodes).chain(route.app_nodes.values_mut()) {
            *routers = routers
                .iter()
                .map(|node| normalise_node(node))
                .collect::<Result<_, _>>()?;
        }
        let gate = route.gate;
        let config = Arc::new(EnvConfig::compile(route, routes)?);

        let mut table = self.table.write().expect("routes lock");
        for host in &config.route.hosts {
            if let Some(owner) = table.by_host.get(host)
                && owner.name != name
            {
                return Err(RouteError::HostTaken {
                    host: host.clone(),
                    owner: owner.name.clone(),
                });
            }
        }
        let (environment, created) = match table.by_name.get(name) {
            Some(existing) => {
                existing.gate.set_routers(&config.route);
                *existing.config.write().expect("config lock") = config.clone();
                (existing.clone(), false)
            }
            None => {
                let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed);
                let environment = Arc::new(Environment {
                    name: name.to_owned(),
                    scope: format!("{name}#{incarnation}"),
                    gate: Gate::new(name, &config.route),
                    config: RwLock::new(config.clone()),
                    held: HoldQueue::default(),
                    check_now: Notify::new(),
                    tasks: Mutex::new(Vec::new()),
                });
                table.by_name.insert(name.to_owned(), environment.clone());
                (environment, true)
            }
        };
        table.by_host.retain(|_, owner| owner.name != name);
        for host in &config.route.hosts {
            table.by_host.insert(host.clone(), environment.clone());
        }
        drop(table);
        if !created {
            environment.gate.command(gate, None);
            environment.check_now.notify_one();
        }
        Ok(Put {
            environment,
            created,
        })
    }

    pub(crate) fn delete(&self, name: &str) -> Option<Arc<Environment>> {
        let mut table = self.table.write().expect("routes lock");
        let environment = table.by_name.remove(name)?;
        table.by_host.retain(|_, owner| owner.name != name);
        Some(environment)
    }
}

fn check_name(name: &str) -> Result<(), RouteError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RouteError::BadName(name.to_owned()))
    }
}

/// A host as routing compares it: lower case, without port or final dot.
pub(crate) fn normalise_host(host: &str) -> String {
    let host = host.trim();
    // An absolute URI's authority may carry user information.
    let host = host.rsplit('@').next().unwrap_or(host);
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
}

/// A node's base URL as `https://authority` (a router over mutual TLS), or `http://authority`
/// (a plain one: tests, tools).
fn normalise_node(node: &str) -> Result<String, RouteError> {
    let bad = || RouteError::BadNode(node.to_owned());
    let uri: Uri = node.trim().parse().map_err(|_| bad())?;
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme,
        _ => return Err(bad()),
    };
    let authority = uri.authority().ok_or_else(bad)?;
    if authority.port_u16().is_none() || !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad());
    }
    Ok(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_compared_without_port_and_case() {
        assert_eq!(
            normalise_host("Staging.LocalHost:8080"),
            "staging.localhost"
        );
        assert_eq!(normalise_host("localhost."), "localhost");
        assert_eq!(normalise_host("[::1]:80"), "::1");
    }

    #[test]
    fn a_host_belongs_to_one_environment() {
        let router = Router::default();
        let route = |hosts: &[&str]| {
            EnvironmentRoute::new(
                hosts.iter().map(|s| s.to_string()).collect(),
                vec!["http://127.0.0.1:1".into()],
            )
        };
        router
            .put("main", route(&["localhost"]), "localhost")
            .ok()
            .unwrap();
        let taken = router.put("staging", route(&["LOCALHOST"]), "localhost");
        assert!(matches!(taken, Err(RouteError::HostTaken { .. })));
        router.put("staging", route(&[]), "localhost").ok().unwrap();
        assert_eq!(router.by_host("staging.localhost").unwrap().name, "staging");
        router
            .put("main", route(&["www.localhost"]), "localhost")
            .ok()
            .unwrap();
        assert!(router.by_host("localhost").is_none());
        // A route's host is the environment's too.
        let mut routed = route(&[]);
        routed.routes = vec![lockstep_proto::edge::HostRoute {
            host: "WWW.localhost".into(),
            path: "/".into(),
            action: lockstep_proto::edge::RouteAction::Upstream { app: None },
        }];
        let taken = router.put("staging", routed, "localhost");
        assert!(matches!(taken, Err(RouteError::HostTaken { .. })));
        assert_eq!(router.by_host("staging.localhost").unwrap().name, "staging");
        assert!(router.delete("main").is_some());
        assert!(router.by_host("www.localhost").is_none());
    }

    #[test]
    fn an_upstream_route_must_name_an_app_of_the_environment() {
        let router = Router::default();
        let mut route = EnvironmentRoute::new(vec![], vec!["http://127.0.0.1:1".into()]);
        route.app_nodes = BTreeMap::from([
            ("app".to_owned(), vec!["http://127.0.0.1:1/".to_owned()]),
            ("api".to_owned(), vec!["http://127.0.0.1:2".to_owned()]),
        ]);
        let of_app = |path: &str, app: &str| lockstep_proto::edge::HostRoute {
            host: "main.localhost".into(),
            path: path.into(),
            action: lockstep_proto::edge::RouteAction::Upstream {
                app: Some(app.into()),
            },
        };
        route.routes = vec![of_app("/", "app"), of_app("/api", "apo")];
        let refused = router
            .put("main", route.clone(), "localhost")
            .err()
            .unwrap();
        assert_eq!(refused.status(), axum::http::StatusCode::BAD_REQUEST);
        let message = refused.to_string();
        assert!(
            message.contains("main.localhost/api") && message.contains(r#"app "apo""#),
            "{message}"
        );
        assert!(router.by_name("main").is_none());

        route.routes[1] = of_app("/api", "api");
        let put = router.put("main", route.clone(), "localhost").ok().unwrap();
        let routers = &put.environment.config().route.app_nodes;
        assert_eq!(routers["app"], ["http://127.0.0.1:1"], "normalised");
        let view = put.environment.view();
        let apps: Vec<_> = view.nodes.iter().map(|n| n.app.as_deref()).collect();
        assert_eq!(apps, [Some("app"), Some("api")]);

        let with_app = |name: &str, url: &str| {
            let mut bad = route.clone();
            bad.app_nodes.insert(name.into(), vec![url.into()]);
            router.put("main", bad, "localhost").err().unwrap()
        };
        assert!(matches!(
            with_app("a b", "http://127.0.0.1:3"),
            RouteError::BadApp(_)
        ));
        assert!(matches!(
            with_app("web", "ftp://h:1"),
            RouteError::BadNode(_)
        ));
    }

    #[test]
    fn nodes_must_be_http_or_https_base_urls() {
        assert_eq!(
            normalise_node("http://127.0.0.1:5000/").unwrap(),
            "http://127.0.0.1:5000"
        );
        assert_eq!(normalise_node("https://h:1").unwrap(), "https://h:1");
        for bad in ["ftp://h:1", "http://h", "http://h:1/path", "nope"] {
            assert!(normalise_node(bad).is_err(), "{bad}");
        }
    }
}
