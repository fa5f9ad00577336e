//! The edge's admin API: what the controller tells each edge to serve, and what the edge
//! answers of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Generation;

/// Where an environment is served, and how: the body of `PUT /v1/environments/{env}`, which
/// replaces whatever the edge knew of the environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentRoute {
    /// Host names (no port, any case) whose requests go to this environment, e.g.
    /// `["localhost"]` for production and `["staging.localhost"]` for staging. Empty means
    /// `<env>.<domain>`. The hosts of `routes` join these. A host belongs to one environment
    /// at a time.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The environment's routes (`.platform/routes.yaml`, resolved), at most 256. A request
    /// takes the route of its host with the longest path prefix; a host none of them names
    /// goes to the nodes, so an empty list sends every host of `hosts` there.
    #[serde(default)]
    pub routes: Vec<HostRoute>,
    /// The node routers' base URLs, e.g. `http://127.0.0.1:34567`, of the environment's first
    /// app (the app of hosts no route names and of upstream routes without an app), in cluster
    /// order.
    pub nodes: Vec<String>,
    /// The gate as the controller knows it.
    #[serde(default)]
    pub gate: GateState,
    /// The primary route's `cache` block, with Platform.sh's defaults.
    #[serde(default)]
    pub cache: CacheRules,
    #[serde(default)]
    pub closed_mode: ClosedMode,
    /// How long a request may wait for a closed environment to open (`closed_mode: hold`).
    #[serde(default = "default_max_hold_secs")]
    pub max_hold_secs: u64,
    /// How long a stored response may be served stale when the origin fails or the environment
    /// is closed (unless the response sets `stale-if-error` itself).
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u64,
    /// How long a stored response may be served stale while it is refreshed in the background
    /// (unless the response sets `stale-while-revalidate` itself).
    #[serde(default = "default_swr_secs")]
    pub swr_secs: u64,
    /// For a project with several apps: every app's routers by app name, in cluster order (the
    /// first app's equal to `nodes`). Empty for a project with one app. App names are 1-64
    /// ASCII letters, digits, `-` or `_`; the URLs are `nodes`' kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_nodes: BTreeMap<String, Vec<String>>,
}

pub const DEFAULT_MAX_HOLD_SECS: u64 = 30;
pub const DEFAULT_GRACE_SECS: u64 = 43_200;
pub const DEFAULT_SWR_SECS: u64 = 10;

fn default_max_hold_secs() -> u64 {
    DEFAULT_MAX_HOLD_SECS
}

fn default_grace_secs() -> u64 {
    DEFAULT_GRACE_SECS
}

fn default_swr_secs() -> u64 {
    DEFAULT_SWR_SECS
}

impl EnvironmentRoute {
    /// A route with every setting at its default.
    pub fn new(hosts: Vec<String>, nodes: Vec<String>) -> EnvironmentRoute {
        EnvironmentRoute {
            hosts,
            routes: Vec::new(),
            nodes,
            gate: GateState::default(),
            cache: CacheRules::default(),
            closed_mode: ClosedMode::default(),
            max_hold_secs: DEFAULT_MAX_HOLD_SECS,
            grace_secs: DEFAULT_GRACE_SECS,
            swr_secs: DEFAULT_SWR_SECS,
            app_nodes: BTreeMap::new(),
        }
    }
}

/// One route of an environment, its URL resolved for it: `https://www.{default}/blog/` is host
/// `www.main.localhost` and path `/blog/`. The scheme is not part of it: this edge serves
/// plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    /// A host name, without port.
    pub host: String,
    /// The path prefix the route answers, starting with `/`.
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(flatten)]
    pub action: RouteAction,
}

fn default_path() -> String {
    "/".into()
}

/// What a route does with its requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RouteAction {
    /// To the nodes: the routers of `app` (None: the environment's first app, i.e. `nodes`),
    /// which must be a key of `app_nodes`.
    Upstream {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        app: Option<String>,
    },
    /// Answered by the edge itself: `code` (301, 302, 303, 307 or 308) and a `Location` of
    /// `to` (an absolute `http://` or `https://` URL without query) with the rest of the
    /// request's path after the route's prefix, and its query.
    Redirect {
        to: String,
        #[serde(default = "default_redirect_code")]
        code: u16,
    },
}

/// Platform.sh's whole-route redirects are permanent.
pub const DEFAULT_REDIRECT_CODE: u16 = 301;

fn default_redirect_code() -> u16 {
    DEFAULT_REDIRECT_CODE
}

/// The `cache` block of a Platform.sh route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheRules {
    pub enabled: bool,
    /// Seconds a response is fresh when it carries neither `Cache-Control` nor `Expires`;
    /// 0 means such responses are not stored.
    pub default_ttl: u64,
    /// `["*"]`: any request cookie passes the request to the origin. `[]`: cookies are
    /// ignored. Names, or `/regex/` patterns: those cookies' values join the cache key and the
    /// others are ignored.
    pub cookies: Vec<String>,
    /// Request headers whose values join the cache key (besides the response's `Vary`).
    /// `Cookie` and `Accept-Encoding` are refused.
    pub headers: Vec<String>,
}

impl Default for CacheRules {
    fn default() -> Self {
        CacheRules {
            enabled: true,
            default_ttl: 0,
            cookies: vec!["*".into()],
            headers: vec!["Accept".into(), "Accept-Language".into()],
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateState {
    #[default]
    Open,
    Closed,
}

/// What happens to requests that must reach the origin while the environment is closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClosedMode {
    /// Held until the environment opens, up to `max_hold_secs`, then `503` with `Retry-After`.
    #[default]
    Hold,
    /// Forwarded at once; the client gets the node's answer (Platform.sh's behaviour).
    Error,
}

/// The body of `POST /v1/environments/{env}/gate`: the controller's fast path at close and
/// open. Call it with `closed` before closing the nodes, and with `open` after they opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateCommand {
    pub state: GateState,
    /// The generation the nodes opened at. Stored responses from older generations are then
    /// refreshed before they are served again (they stay usable as grace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
}

/// What the edge acts on for an environment, combining the controller's word and what the nodes
/// answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EffectiveState {
    /// At least one node may be sent requests.
    Open,
    /// The controller closed the environment, or every node answered closed.
    Closed,
    /// No node answers at all: requests fail (or get grace).
    Down,
}

/// One environment as the edge sees it: `GET /v1/environments` returns a list of these, sorted by
/// name; `PUT` and `POST .../gate` return the one they changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentView {
    pub name: String,
    /// The route as last put, with `gate` as last set by the controller (or learned, see
    /// `state`).
    pub route: EnvironmentRoute,
    /// Open while some app's requests may be sent; each app's requests go by the state of its
    /// own routers.
    pub state: EffectiveState,
    /// The newest generation a node was seen open at.
    pub generation: Option<Generation>,
    /// Requests waiting for the environment to open.
    pub held: u64,
    /// Every router of every app, `nodes` first.
    pub nodes: Vec<NodeView>,
}

/// What the edge learned of one node router, from health checks and from its answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub url: String,
    /// The app whose router this is, when the route has `app_nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub state: NodeState,
    pub generation: Option<Generation>,
    /// Milliseconds since the last health check answered or failed; `None` before the first.
    pub checked_ms_ago: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Not checked yet: tried as if open.
    Unknown,
    Open,
    Closed,
    /// Refused or failed the last connection or health check.
    Down,
}

/// The body of every admin error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_optional_and_read_as_platform_sh_writes_them() {
        let old: EnvironmentRoute =
            serde_json::from_str(r#"{"hosts": ["localhost"], "nodes": []}"#).unwrap();
        assert!(old.routes.is_empty());
        let route: HostRoute = serde_json::from_str(
            r#"{"host": "main.localhost", "type": "redirect", "to": "https://www.main.localhost/"}"#,
        )
        .unwrap();
        assert_eq!(route.path, "/");
        assert_eq!(
            route.action,
            RouteAction::Redirect {
                to: "https://www.main.localhost/".into(),
                code: 301
            }
        );
        let written = serde_json::to_value(&route).unwrap();
        assert_eq!(written["type"], "redirect");
        assert_eq!(written["code"], 301);
    }

    #[test]
    fn an_upstream_route_without_app_goes_to_the_first_app_and_is_written_as_before() {
        let route: HostRoute =
            serde_json::from_str(r#"{"host":"a","path":"/","type":"upstream"}"#).unwrap();
        assert_eq!(route.action, RouteAction::Upstream { app: None });
        assert_eq!(
            serde_json::to_value(&route).unwrap(),
            serde_json::json!({"host": "a", "path": "/", "type": "upstream"})
        );
        let api: HostRoute =
            serde_json::from_str(r#"{"host":"a","path":"/api","type":"upstream","app":"api"}"#)
                .unwrap();
        assert_eq!(
            api.action,
            RouteAction::Upstream {
                app: Some("api".into())
            }
        );
        assert_eq!(serde_json::to_value(&api).unwrap()["app"], "api");

        let one_app = EnvironmentRoute::new(vec![], vec!["http://127.0.0.1:1".into()]);
        let written = serde_json::to_value(&one_app).unwrap();
        assert!(written.get("app_nodes").is_none(), "{written}");
        let read: EnvironmentRoute = serde_json::from_value(written).unwrap();
        assert!(read.app_nodes.is_empty());
    }
}
