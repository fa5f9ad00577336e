//! Telling the caching edge what each environment is: its hosts, its nodes' routers, its gate,
//! and its cache rules. The gate goes closed before the nodes close and open after they opened;
//! the full route is sent whenever it may have changed, and only when it did.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lockstep_edge::wire::{CacheRules, ClosedMode, EnvironmentRoute, GateCommand, GateState};

use crate::{Controller, ControllerError, Environment};

/// How the controller reaches the edge's admin API.
#[derive(Debug, Clone)]
pub struct EdgeContact {
    pub admin_url: String,
    pub token: String,
}

pub(crate) struct EdgeClient {
    contact: EdgeContact,
    http: reqwest::Client,
    /// The last route sent per environment, so unchanged routes are not sent again.
    sent: Mutex<HashMap<String, EnvironmentRoute>>,
}

impl EdgeClient {
    pub fn new(contact: EdgeContact) -> EdgeClient {
        EdgeClient {
            contact,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client builds"),
            sent: Mutex::new(HashMap::new()),
        }
    }

    async fn gate(&self, environment: &str, command: GateCommand) {
        let url = format!(
            "{}/v1/environments/{environment}/gate",
            self.contact.admin_url
        );
        let answer = self
            .http
            .post(url)
            .bearer_auth(&self.contact.token)
            .json(&command)
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
                tracing::warn!(environment, %error, "the edge did not take the gate change");
                // The next sync sends the whole route again, with the gate as it is by then.
                sent.remove(environment);
            }
        }
    }

    async fn put(&self, environment: &str, route: EnvironmentRoute) {
        if self.sent.lock().expect("edge lock").get(environment) == Some(&route) {
            return;
        }
        let url = format!("{}/v1/environments/{environment}", self.contact.admin_url);
        let answer = self
            .http
            .put(url)
            .bearer_auth(&self.contact.token)
            .json(&route)
            .send()
            .await;
        match answer.and_then(|r| r.error_for_status()) {
            Ok(_) => {
                self.sent
                    .lock()
                    .expect("edge lock")
                    .insert(environment.to_owned(), route);
            }
            Err(error) => tracing::warn!(environment, %error, "the edge did not take the route"),
        }
    }
}

impl Controller {
    /// Before the nodes close: the edge starts serving from cache and holding requests. The
    /// route goes first, closed: on a first deployment the edge does not know the environment
    /// yet.
    pub(crate) async fn edge_closing(&self, environment: &str) {
        if let Some(edge) = &self.edge {
            if let Ok(env) = self.store.environment(environment)
                && let Ok(mut route) = self.edge_route(&env)
            {
                route.gate = GateState::Closed;
                edge.put(environment, route).await;
            }
            edge.gate(
                environment,
                GateCommand {
                    state: GateState::Closed,
                    generation: None,
                },
            )
            .await;
        }
    }

    /// After the nodes opened at `generation`. The route goes first: on a first deployment the
    /// edge does not know the environment yet.
    pub(crate) async fn edge_opened(&self, environment: &str, generation: u64) {
        let Some(edge) = &self.edge else { return };
        if let Ok(env) = self.store.environment(environment)
            && let Ok(mut route) = self.edge_route(&env)
        {
            route.gate = GateState::Open;
            edge.put(environment, route).await;
        }
        edge.gate(
            environment,
            GateCommand {
                state: GateState::Open,
                generation: Some(generation),
            },
        )
        .await;
    }

    /// Sends every environment's route to the edge, where it changed.
    pub(crate) async fn sync_edge(&self) -> Result<(), ControllerError> {
        let Some(edge) = &self.edge else {
            return Ok(());
        };
        let busy: Vec<String> = self.busy_environments();
        for env in self.store.environments()? {
            // A deployment in progress owns its environment's gate.
            if busy.contains(&env.name) {
                continue;
            }
            let route = self.edge_route(&env)?;
            edge.put(&env.name, route).await;
        }
        Ok(())
    }

    fn edge_route(&self, env: &Environment) -> Result<EnvironmentRoute, ControllerError> {
        let nodes = self
            .store
            .nodes(&env.name)?
            .into_iter()
            .filter_map(|n| n.router_port.map(|p| format!("http://127.0.0.1:{p}")))
            .collect();
        let mut route = EnvironmentRoute::new(vec![self.host(&env.name)], nodes);
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
        if let Some(serving) = &env.serving
            && let Ok(id) = serving.image.parse()
            && let Ok(manifest) = self.images.manifest(&id)
        {
            let routes = &manifest.info.config.routes;
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
        }
        Ok(route)
    }
}
