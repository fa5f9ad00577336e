//! Telling the caching edge what each environment is: its hosts and routes, its nodes' routers,
//! its gate, and its cache rules. The gate goes closed before the nodes close and open after they opened;
//! the full route is sent whenever it may have changed, and only when it did.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use lockstep_proto::nodes::Pool;

use lockstep_proto::edge::{
    CacheRules, ClosedMode, DEFAULT_REDIRECT_CODE, EnvironmentRoute, GateCommand, GateState,
    RouteAction,
};

use lockstep_deploy::Release;

use crate::{Controller, ControllerError, Environment};

/// One enrolled edge, reached at its admin API with the controller's certificate.
pub(crate) struct EdgeClient {
    admin_url: String,
    /// The last route sent per environment, so unchanged routes are not sent again.
    sent: Mutex<HashMap<String, EnvironmentRoute>>,
}

/// How long a call to an edge may take.
const EDGE_TIMEOUT: Duration = Duration::from_secs(5);

impl EdgeClient {
    fn new(admin_url: String) -> EdgeClient {
        EdgeClient {
            admin_url,
            sent: Mutex::new(HashMap::new()),
        }
    }

    async fn gate(&self, http: &reqwest::Client, environment: &str, command: GateCommand) {
        let url = format!("{}/v1/environments/{environment}/gate", self.admin_url);
        let answer = http
            .post(url)
            .json(&command)
            .timeout(EDGE_TIMEOUT)
            .send()
            .await;
        let mut sent = self.sent.lock().expect("edge lock");
        match answer.and_then(|r| r.error_for_status()) {
            Ok(_) => {
                if let Some(route) = sent.get_mut(environment) {
                    route.gate = command.state;
                }
            }
            Err(error) => {
                tracing::warn!(environment, edge = %self.admin_url, %error, "the edge did not take the gate change");
                // The next sync sends the whole route again, with the gate as it is by then.
                sent.remove(environment);
            }
        }
    }

    /// The edge forgets a deleted environment.
    async fn delete(&self, http: &reqwest::Client, environment: &str) {
        let url = format!("{}/v1/environments/{environment}", self.admin_url);
        let answer = http.delete(url).timeout(EDGE_TIMEOUT).send().await;
        self.sent.lock().expect("edge lock").remove(environment);
        if let Err(error) = answer.and_then(|r| r.error_for_status()) {
            tracing::warn!(environment, edge = %self.admin_url, %error, "the edge did not forget the environment");
        }
    }

    /// Sends a route unless the edge has it already; `left_out` names the routes of the
    /// configuration the edge would refuse, told once per change.
    async fn put(&self, http: &reqwest::Client, environment: &str, edge_route: &EdgeRoute) {
        let EdgeRoute { route, left_out } = edge_route;
        if self.sent.lock().expect("edge lock").get(environment) == Some(route) {
            return;
        }
        for problem in left_out {
            tracing::warn!(environment, %problem, "a route is not served by the edge");
        }
        let url = format!("{}/v1/environments/{environment}", self.admin_url);
        let answer = http.put(url).json(route).timeout(EDGE_TIMEOUT).send().await;
        match answer.and_then(|r| r.error_for_status()) {
            Ok(_) => {
                self.sent
                    .lock()
                    .expect("edge lock")
                    .insert(environment.to_owned(), route.clone());
            }
            Err(error) => {
                tracing::warn!(environment, edge = %self.admin_url, %error, "the edge did not take the route")
            }
        }
    }
}

/// The enrolled edges, each with what it was sent.
#[derive(Default)]
pub(crate) struct Edges(Mutex<BTreeMap<String, Arc<EdgeClient>>>);

impl Controller {
    /// The enrolled edges, as the registry has them now.
    fn edges(&self) -> Vec<Arc<EdgeClient>> {
        let registered = match self.store.registered_nodes() {
            Ok(registered) => registered,
            Err(error) => {
                tracing::warn!(%error, "cannot read the edges");
                return Vec::new();
            }
        };
        let mut edges = self.edges.0.lock().expect("edges lock");
        let enrolled: BTreeMap<String, String> = registered
            .into_iter()
            .filter(|node| node.pool == Pool::Edge && node.enrolled())
            .filter_map(|node| Some((node.name, node.agent_url?)))
            .collect();
        edges.retain(|name, edge| enrolled.get(name) == Some(&edge.admin_url));
        for (name, admin_url) in enrolled {
            edges
                .entry(name)
                .or_insert_with(|| Arc::new(EdgeClient::new(admin_url)));
        }
        edges.values().cloned().collect()
    }

    /// Before the nodes close: every edge starts serving from cache and holding requests. The
    /// route goes first, closed: on a first deployment an edge does not know the environment
    /// yet.
    pub(crate) async fn edge_closing(&self, environment: &str) {
        let closed = GateCommand {
            state: GateState::Closed,
            generation: None,
        };
        self.tell_edges(environment, None, closed).await;
    }

    /// After the nodes opened `release`. The route goes first: on a first deployment an edge
    /// does not know the environment yet, and the release's routes may be new.
    pub(crate) async fn edge_opened(&self, environment: &str, release: &Release) {
        let open = GateCommand {
            state: GateState::Open,
            generation: Some(release.generation),
        };
        self.tell_edges(environment, Some(&release.image), open)
            .await;
    }

    /// Every edge, at once: the environment's route with `release`'s routers and routes at
    /// the gate's state, then the gate.
    async fn tell_edges(&self, environment: &str, release: Option<&str>, gate: GateCommand) {
        let route = self
            .store
            .environment(environment)
            .ok()
            .and_then(|env| self.edge_route(&env, release).ok())
            .map(|mut route| {
                route.route.gate = gate.state;
                route
            });
        let http = self.agents.http();
        join_all(self.edges().iter().map(|edge| async {
            if let Some(route) = &route {
                edge.put(&http, environment, route).await;
            }
            edge.gate(&http, environment, gate).await;
        }))
        .await;
    }

    /// Every edge forgets a deleted environment.
    pub(crate) async fn edge_forget(&self, environment: &str) {
        let http = self.agents.http();
        join_all(
            self.edges()
                .iter()
                .map(|edge| edge.delete(&http, environment)),
        )
        .await;
    }

    /// Sends every environment's route to every edge, where it changed.
    pub(crate) async fn sync_edge(&self) -> Result<(), ControllerError> {
        let edges = self.edges();
        if edges.is_empty() {
            return Ok(());
        }
        let busy: Vec<String> = self.busy_environments();
        let http = self.agents.http();
        for env in self.store.environments()? {
            // A deployment in progress owns its environment's gate.
            if busy.contains(&env.name) {
                continue;
            }
            let route = self.edge_route(&env, None)?;
            join_all(edges.iter().map(|edge| edge.put(&http, &env.name, &route))).await;
        }
        Ok(())
    }

    /// The environment's route with the routers, routes and cache rules of `release`, or
    /// else of the release it serves.
    fn edge_route(
        &self,
        env: &Environment,
        release: Option<&str>,
    ) -> Result<EdgeRoute, ControllerError> {
        let release = release.or(env.serving.as_ref().map(|serving| serving.image.as_str()));
        let instances = match release {
            Some(release) => self.app_instances(&env.name, release)?,
            None => Vec::new(),
        };
        let nodes = self.store.nodes(&env.name)?;
        let routers = |app: Option<&str>| -> Vec<String> {
            nodes.iter().filter_map(|n| n.router_url(app)).collect()
        };
        let first_app = instances.first().and_then(|first| first.app.as_deref());
        // The environment's own host stays, so that it is served without a routes file.
        let mut route = EnvironmentRoute::new(vec![self.host(&env.name)], routers(first_app));
        let several_apps = instances.len() > 1;
        if several_apps {
            route.app_nodes = instances
                .iter()
                .map(|instance| (instance.name.clone(), routers(instance.app.as_deref())))
                .collect();
        }
        let mut left_out = Vec::new();
        route.gate = if env.serving.is_some() {
            GateState::Open
        } else {
            GateState::Closed
        };
        route.closed_mode = if env.settings.closed_mode == "error" {
            ClosedMode::Error
        } else {
            ClosedMode::Hold
        };
        route.max_hold_secs = env.settings.max_hold_secs;
        route.grace_secs = env.settings.grace_secs;
        if let Some(release) = release
            && let Ok(project) = self.release_project(release)
        {
            let routes = &project.routes;
            let primary = routes
                .iter()
                .find(|r| {
                    r.primary && matches!(r.kind, lockstep_config::RouteKind::Upstream { .. })
                })
                .or_else(|| {
                    routes
                        .iter()
                        .find(|r| matches!(r.kind, lockstep_config::RouteKind::Upstream { .. }))
                });
            if let Some(primary) = primary {
                route.cache = CacheRules {
                    enabled: primary.cache.enabled,
                    default_ttl: primary.cache.default_ttl,
                    cookies: primary.cache.cookies.clone(),
                    headers: primary.cache.headers.clone(),
                };
            }
            if let Ok(platform_routes) = self.platform_routes(&env.name, release) {
                (route.routes, left_out) = lockstep_routes::routes_from_urls(resolved_routes(
                    &platform_routes,
                    several_apps,
                ));
            }
            // `ENV.DOMAIN` is environment ENV's: production's `www.{default}` must not keep a
            // branch named `www` from its host, nor that branch production from its routes.
            let others: Vec<(String, String)> = self
                .store
                .environments_and_pending()?
                .into_iter()
                .filter(|other| other.name != env.name)
                .map(|other| (self.host(&other.name), other.name))
                .collect();
            route.routes.retain(|r| {
                let owner = others.iter().find(|(host, _)| *host == r.host);
                if let Some((host, owner)) = owner {
                    left_out.push(format!("host {host:?} is environment {owner:?}'s own"));
                }
                owner.is_none()
            });
        }
        Ok(EdgeRoute { route, left_out })
    }
}

/// A route for the edge, and the configuration's routes it leaves out, with why.
struct EdgeRoute {
    route: EnvironmentRoute,
    left_out: Vec<String>,
}

/// The routes of `PLATFORM_ROUTES` (so `{default}` and `{all}` are resolved once, as the app
/// sees them) that the edge serves: those whose URL names `{default}` or `{all}`. A route
/// naming a literal domain would make every environment claim that host. An upstream route
/// names its app when the project has several.
fn resolved_routes(
    platform_routes: &serde_json::Value,
    several_apps: bool,
) -> impl Iterator<Item = (&str, RouteAction)> {
    platform_routes
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(move |(url, entry)| {
            let original = entry.get("original_url")?.as_str()?;
            if !original.contains("{default}") && !original.contains("{all}") {
                return None;
            }
            let action = match entry.get("type")?.as_str()? {
                "upstream" => RouteAction::Upstream {
                    app: several_apps
                        .then(|| entry.get("upstream")?.as_str().map(str::to_owned))
                        .flatten(),
                },
                "redirect" => RouteAction::Redirect {
                    to: entry.get("to")?.as_str()?.to_owned(),
                    code: DEFAULT_REDIRECT_CODE,
                },
                _ => return None,
            };
            Some((url.as_str(), action))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_naming_the_environments_domain_reach_the_edge() {
        let platform_routes = serde_json::json!({
            "https://www.main.localhost/": {
                "type": "upstream", "upstream": "app", "original_url": "https://www.{default}/",
            },
            "https://main.localhost/": {
                "type": "redirect", "to": "https://www.main.localhost/",
                "original_url": "https://{all}/",
            },
            "https://example.com/": {
                "type": "upstream", "upstream": "app", "original_url": "https://example.com/",
            },
        });
        let mut routes: Vec<_> = resolved_routes(&platform_routes, false).collect();
        routes.sort_by_key(|(url, _)| *url);
        assert_eq!(
            routes,
            vec![
                (
                    "https://main.localhost/",
                    RouteAction::Redirect {
                        to: "https://www.main.localhost/".into(),
                        code: 301
                    }
                ),
                (
                    "https://www.main.localhost/",
                    RouteAction::Upstream { app: None }
                ),
            ]
        );
        let named: Vec<_> = resolved_routes(&platform_routes, true).collect();
        assert!(named.contains(&(
            "https://www.main.localhost/",
            RouteAction::Upstream {
                app: Some("app".into())
            }
        )));
    }
}
