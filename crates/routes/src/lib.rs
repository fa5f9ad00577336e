//! An environment's routes (`.platform/routes.yaml` as the controller resolved them), as every
//! edge serves them: checked when they are put, since they come from pushed configuration;
//! matched per request by host and longest path prefix, an upstream route naming the app whose
//! routers take it; and a redirect route's `Location`. The controller makes them from route
//! URLs with the same checks (`routes_from_urls`), so that it knows what an edge would refuse.
//!
//! Owns: the rules a route must follow (host names, paths, redirect targets and codes, no
//! redirect loop, at most `MAX_ROUTES`). Must never: do I/O, or let a route through that sends
//! a header or a visitor anywhere the route does not name.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use http::StatusCode;

use lockstep_proto::edge::{HostRoute, RouteAction};

/// Why routes are refused.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("an environment has at most {max} routes; this one has {count}")]
    TooManyRoutes { count: usize, max: usize },
    #[error("route {route:?} is refused: {reason}")]
    BadRoute { route: String, reason: String },
}

/// The most routes an environment may have.
pub const MAX_ROUTES: usize = 256;

const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

/// The longest path a route or a redirect target may have.
const MAX_PATH: usize = 2048;

/// A redirect route's target, parsed when the route was put.
#[derive(Debug)]
pub struct Redirect {
    pub code: StatusCode,
    /// As written: `http` or `https`.
    scheme: &'static str,
    /// Lower case, without a final dot.
    pub host: String,
    port: Option<u16>,
    /// Starts with `/`; no query.
    path: String,
}

#[derive(Debug)]
enum Action {
    /// To the routers of an app; `None`: the first app's.
    Upstream(Option<String>),
    Redirect(Redirect),
}

#[derive(Debug)]
struct Compiled {
    prefix: String,
    action: Action,
}

/// What a request's host and path pick.
#[derive(Debug)]
pub enum Matched<'a> {
    /// To the routers of an app (`None`: the first app's): an upstream route, or a host no
    /// route names.
    Upstream(Option<&'a str>),
    /// The edge answers; `rest` is the request's path after the route's prefix.
    Redirect {
        redirect: &'a Redirect,
        rest: &'a str,
    },
    /// The host has routes, but none for this path.
    NoRoute,
}

/// An environment's routes by host, each host's longest prefix first.
#[derive(Debug, Default)]
pub struct Routes {
    by_host: HashMap<String, Vec<Compiled>>,
}

impl Routes {
    /// Checks routes and writes their hosts as they are compared (lower case, no final dot).
    pub fn compile(routes: &mut [HostRoute]) -> Result<Routes, RouteError> {
        if routes.len() > MAX_ROUTES {
            return Err(RouteError::TooManyRoutes {
                count: routes.len(),
                max: MAX_ROUTES,
            });
        }
        let mut by_host: HashMap<String, Vec<Compiled>> = HashMap::new();
        for route in routes.iter_mut() {
            let (host, compiled) = compile_one(route).map_err(|reason| refused(route, reason))?;
            route.host = host.clone();
            let same_host = by_host.entry(host).or_default();
            if same_host.iter().any(|c| c.prefix == compiled.prefix) {
                return Err(refused(
                    route,
                    "another route has the same host and path".into(),
                ));
            }
            same_host.push(compiled);
        }
        for same_host in by_host.values_mut() {
            same_host.sort_by_key(|c| std::cmp::Reverse(c.prefix.len()));
        }
        let routes = Routes { by_host };
        routes.check_loops()?;
        Ok(routes)
    }

    /// A redirect whose target the same route answers would send browsers round forever.
    fn check_loops(&self) -> Result<(), RouteError> {
        for (host, same_host) in &self.by_host {
            for compiled in same_host {
                let Action::Redirect(redirect) = &compiled.action else {
                    continue;
                };
                if let Matched::Redirect {
                    redirect: target, ..
                } = self.find(&redirect.host, &redirect.path)
                    && std::ptr::eq(target, redirect)
                {
                    return Err(RouteError::BadRoute {
                        route: format!("{host}{}", compiled.prefix),
                        reason: "it redirects to a URL it answers itself".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The route of a (normalised) host and a request's path.
    pub fn find<'a>(&'a self, host: &str, path: &'a str) -> Matched<'a> {
        let Some(same_host) = self.by_host.get(host) else {
            return Matched::Upstream(None);
        };
        for compiled in same_host {
            if let Some(rest) = after_prefix(path, &compiled.prefix) {
                return match &compiled.action {
                    Action::Upstream(app) => Matched::Upstream(app.as_deref()),
                    Action::Redirect(redirect) => Matched::Redirect { redirect, rest },
                };
            }
        }
        Matched::NoRoute
    }
}

/// The rest of `path` when the route at `prefix` answers it: `/blog/` answers `/blog/a` and
/// `/blog`; `/blog` answers `/blog/a` and `/blog`, never `/blogs`.
fn after_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    match path.strip_prefix(prefix) {
        Some(rest) if prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/') => {
            Some(rest)
        }
        Some(_) => None,
        None => (prefix.strip_suffix('/') == Some(path)).then_some(""),
    }
}

impl Redirect {
    /// The `Location` for a request with `rest` after the route's prefix and `query`.
    ///
    /// This edge serves plain HTTP, so a target on a host it serves gets `http://` (whatever
    /// the route wrote: `https://` would send browsers to a port nothing listens on) and the
    /// port the client reached the edge on (`client_port`, from its `Host`). A target
    /// elsewhere keeps its scheme and port as written.
    pub fn location(
        &self,
        rest: &str,
        query: Option<&str>,
        served_here: bool,
        client_port: Option<u16>,
    ) -> String {
        let (scheme, port) = if served_here {
            ("http", client_port.filter(|&p| p != 80))
        } else {
            (self.scheme, self.port)
        };
        let mut location = format!("{scheme}://{}", self.host);
        if let Some(port) = port {
            let _ = write!(location, ":{port}");
        }
        location.push_str(&self.path);
        // Never `//` after the host's path: the location stays on the target's host whatever
        // the client's path.
        let rest = rest.trim_start_matches('/');
        if !rest.is_empty() {
            if !location.ends_with('/') {
                location.push('/');
            }
            location.push_str(rest);
        }
        if let Some(query) = query {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}

/// Checks the routes an `EnvironmentRoute` may carry, as `PUT /v1/environments/{env}` does:
/// at most 256, valid host names, paths, app names and targets, no two for one host and path,
/// no redirect to itself. That the apps are the environment's is checked by the put alone.
pub fn check_routes(routes: &[HostRoute]) -> Result<(), RouteError> {
    Routes::compile(&mut routes.to_vec()).map(|_| ())
}

/// Refuses an upstream route naming an app that `app_nodes` does not: its requests would have
/// no routers (or, sent to the first app's, reach the wrong app).
pub fn check_apps(
    routes: &[HostRoute],
    app_nodes: &BTreeMap<String, Vec<String>>,
) -> Result<(), RouteError> {
    for route in routes {
        if let RouteAction::Upstream { app: Some(app) } = &route.action
            && !app_nodes.contains_key(app)
        {
            let known = if app_nodes.is_empty() {
                "app_nodes names none".to_owned()
            } else {
                let names: Vec<String> = app_nodes.keys().map(|name| format!("{name:?}")).collect();
                format!("app_nodes names {}", names.join(", "))
            };
            return Err(refused(
                route,
                format!("its app {app:?} is not one of the environment's apps ({known})"),
            ));
        }
    }
    Ok(())
}

/// An app's name: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn valid_app(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The routes for `EnvironmentRoute::routes` from resolved route URLs (such as
/// `https://www.main.localhost/blog/`) and what each does, for a controller. The scheme is
/// dropped, as this edge serves plain HTTP; so when an `http://` and an `https://` URL name the
/// same host and path, the `https://` one is taken (the `http://` one is usually its redirect
/// to HTTPS, which here would redirect to itself). Routes the edge would refuse are left out,
/// with the reason in the second list; if the rest is still refused as a whole, all are.
pub fn routes_from_urls<'a>(
    urls: impl IntoIterator<Item = (&'a str, RouteAction)>,
) -> (Vec<HostRoute>, Vec<String>) {
    let mut candidates: Vec<(bool, &str, HostRoute)> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut left_out = Vec::new();
    for (url, action) in urls {
        let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => {
                left_out.push(format!("route {url:?}: not an http:// or https:// URL"));
                continue;
            }
        };
        let (host, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, "/"),
        };
        let route = HostRoute {
            host: normalise_name(host),
            path: path.to_owned(),
            action,
        };
        match index.entry((route.host.clone(), route.path.clone())) {
            Entry::Occupied(same) => {
                let same = &mut candidates[*same.get()];
                if https && !same.0 {
                    *same = (https, url, route);
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(candidates.len());
                candidates.push((https, url, route));
            }
        }
    }
    let mut routes = Vec::new();
    for (_, url, route) in candidates {
        match check_routes(std::slice::from_ref(&route)) {
            Ok(()) => routes.push(route),
            Err(error) => left_out.push(format!("route {url:?}: {error}")),
        }
    }
    if routes.len() > MAX_ROUTES {
        left_out.push(format!(
            "{} routes past the first {MAX_ROUTES}",
            routes.len() - MAX_ROUTES
        ));
        routes.truncate(MAX_ROUTES);
    }
    if let Err(error) = check_routes(&routes) {
        left_out.push(format!("every route, since {error}"));
        routes.clear();
    }
    (routes, left_out)
}

fn refused(route: &HostRoute, reason: String) -> RouteError {
    RouteError::BadRoute {
        route: format!("{}{}", route.host, route.path),
        reason,
    }
}

/// A route's host as it is compared, and the route, or why it is refused.
fn compile_one(route: &HostRoute) -> Result<(String, Compiled), String> {
    let to = match &route.action {
        RouteAction::Upstream { .. } => "",
        RouteAction::Redirect { to, .. } => to,
    };
    if [&route.host, &route.path, to]
        .iter()
        .any(|s| s.chars().any(char::is_control))
    {
        return Err(
            "it contains a control character (such as CR or LF), which could split a header".into(),
        );
    }
    let host = normalise_name(&route.host);
    if !valid_name(&host) {
        return Err(format!("{:?} is not a host name", route.host));
    }
    check_path(&route.path, "its path")?;
    let action = match &route.action {
        RouteAction::Upstream { app } => {
            if let Some(app) = app
                && !valid_app(app)
            {
                return Err(format!(
                    "its app {app:?} is not an app name: 1-64 ASCII letters, digits, `-` or `_`"
                ));
            }
            Action::Upstream(app.clone())
        }
        RouteAction::Redirect { to, code } => {
            if !REDIRECT_CODES.contains(code) {
                return Err(format!(
                    "its code {code} is not a redirect: use 301, 302, 303, 307 or 308"
                ));
            }
            let code = StatusCode::from_u16(*code).expect("a listed redirect code");
            Action::Redirect(parse_target(to, code)?)
        }
    };
    Ok((
        host,
        Compiled {
            prefix: route.path.clone(),
            action,
        },
    ))
}

/// `http(s)://host[:port]/path`, without user information, query or fragment.
fn parse_target(to: &str, code: StatusCode) -> Result<Redirect, String> {
    let (scheme, rest) = if let Some(rest) = to.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = to.strip_prefix("http://") {
        ("http", rest)
    } else {
        return Err(format!(
            "its target {to:?} is not an http:// or https:// URL"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(format!(
            "its target {to:?} carries user information, which a redirect must not"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("its target {to:?} has no valid port"))?;
            (host, Some(port))
        }
        None => (authority, None),
    };
    let host = normalise_name(host);
    if !valid_name(&host) {
        return Err(format!("its target {to:?} has no valid host name"));
    }
    check_path(path, "its target's path")?;
    Ok(Redirect {
        code,
        scheme,
        host,
        port,
        path: path.to_owned(),
    })
}

/// A route's path, or its target's: an absolute path of URL characters, without `..`, query
/// or fragment.
fn check_path(path: &str, what: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{what} {path:?} does not start with `/`"));
    }
    if path.len() > MAX_PATH {
        return Err(format!("{what} is longer than {MAX_PATH} bytes"));
    }
    if path.contains("..") {
        return Err(format!("{what} {path:?} contains `..`"));
    }
    if path.contains(['?', '#']) {
        return Err(format!(
            "{what} {path:?} has a query or fragment, which a route cannot carry"
        ));
    }
    if let Some(bad) = path.chars().find(|&c| !path_char(c)) {
        return Err(format!(
            "{what} {path:?} has {bad:?}, which a URL path must percent-encode"
        ));
    }
    Ok(())
}

/// RFC 3986's `pchar` and `/`: unreserved, percent-encoded, sub-delims, `:` and `@`.
fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()*+,;=:@/".contains(c)
}

/// A host name as routes compare it: lower case, without a final dot.
fn normalise_name(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Letters, digits and `-` in dot-separated labels of 1 to 63 characters that neither start
/// nor end with `-`; at most 253 characters in all.
fn valid_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The port of a `Host` header (`name:port`, `[v6]:port`), if it names a valid one.
pub fn host_port(raw_host: &str) -> Option<u16> {
    let raw_host = raw_host.trim();
    let port = if let Some(rest) = raw_host.strip_prefix('[') {
        rest.split_once("]:")?.1
    } else if raw_host.matches(':').count() == 1 {
        raw_host.split_once(':')?.1
    } else {
        return None;
    };
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(host: &str, path: &str) -> HostRoute {
        HostRoute {
            host: host.into(),
            path: path.into(),
            action: RouteAction::Upstream { app: None },
        }
    }

    fn of_app(app: &str, route: HostRoute) -> HostRoute {
        HostRoute {
            action: RouteAction::Upstream {
                app: Some(app.into()),
            },
            ..route
        }
    }

    fn redirect(host: &str, path: &str, to: &str) -> HostRoute {
        HostRoute {
            host: host.into(),
            path: path.into(),
            action: RouteAction::Redirect {
                to: to.into(),
                code: 301,
            },
        }
    }

    fn compile(mut routes: Vec<HostRoute>) -> Routes {
        Routes::compile(&mut routes).unwrap()
    }

    fn location(routes: &Routes, host: &str, path: &str, query: Option<&str>) -> String {
        match routes.find(host, path) {
            Matched::Redirect { redirect, rest } => redirect.location(rest, query, true, None),
            other => panic!("{host}{path} is {other:?}"),
        }
    }

    #[test]
    fn the_longest_prefix_of_the_host_wins() {
        let routes = compile(vec![
            upstream("www.main.localhost", "/"),
            redirect(
                "www.main.localhost",
                "/blog/",
                "https://blog.main.localhost/",
            ),
            redirect("main.localhost", "/", "https://www.main.localhost/"),
        ]);
        assert!(matches!(
            routes.find("www.main.localhost", "/about"),
            Matched::Upstream(None)
        ));
        assert_eq!(
            location(&routes, "www.main.localhost", "/blog/2024/post", None),
            "http://blog.main.localhost/2024/post"
        );
        assert_eq!(
            location(&routes, "www.main.localhost", "/blog", None),
            "http://blog.main.localhost/"
        );
        assert!(matches!(
            routes.find("www.main.localhost", "/blogs"),
            Matched::Upstream(None)
        ));
        assert_eq!(
            location(&routes, "main.localhost", "/about", Some("x=1")),
            "http://www.main.localhost/about?x=1"
        );
        // A host no route names goes to the nodes, as before routes.
        assert!(matches!(
            routes.find("other.localhost", "/"),
            Matched::Upstream(None)
        ));
    }

    #[test]
    fn an_upstream_route_takes_its_requests_to_its_app() {
        let routes = compile(vec![
            of_app("app", upstream("main.localhost", "/")),
            of_app("api", upstream("main.localhost", "/api")),
            upstream("www.main.localhost", "/"),
        ]);
        for (host, path, app) in [
            ("main.localhost", "/", Some("app")),
            ("main.localhost", "/apix", Some("app")),
            ("main.localhost", "/api", Some("api")),
            ("main.localhost", "/api/x", Some("api")),
            ("www.main.localhost", "/api/x", None),
            ("other.localhost", "/api/x", None),
        ] {
            match routes.find(host, path) {
                Matched::Upstream(to) => assert_eq!(to, app, "{host}{path}"),
                other => panic!("{host}{path} is {other:?}"),
            }
        }
    }

    #[test]
    fn a_route_must_name_an_app_of_app_nodes() {
        let routes = [
            of_app("app", upstream("main.localhost", "/")),
            of_app("api", upstream("main.localhost", "/api")),
        ];
        let apps = |names: &[&str]| -> BTreeMap<String, Vec<String>> {
            names.iter().map(|n| (n.to_string(), Vec::new())).collect()
        };
        assert!(check_apps(&routes, &apps(&["api", "app"])).is_ok());
        let unknown = check_apps(&routes, &apps(&["app", "web"])).unwrap_err();
        assert!(matches!(unknown, RouteError::BadRoute { .. }), "{unknown}");
        let message = unknown.to_string();
        assert!(
            message.contains("main.localhost/api") && message.contains(r#"app "api""#),
            "{message}"
        );
        let one_app = check_apps(&routes, &BTreeMap::new()).unwrap_err();
        assert!(one_app.to_string().contains("names none"), "{one_app}");
        assert!(check_apps(&[upstream("main.localhost", "/")], &BTreeMap::new()).is_ok());
    }

    #[test]
    fn a_host_with_routes_but_none_for_the_path_has_no_route() {
        let routes = compile(vec![upstream("main.localhost", "/app")]);
        assert!(matches!(
            routes.find("main.localhost", "/app/x"),
            Matched::Upstream(None)
        ));
        assert!(matches!(
            routes.find("main.localhost", "/"),
            Matched::NoRoute
        ));
        assert!(matches!(
            routes.find("main.localhost", "/apple"),
            Matched::NoRoute
        ));
    }

    #[test]
    fn locations_join_paths_and_keep_scheme_and_port_only_elsewhere() {
        let routes = compile(vec![
            redirect("a.localhost", "/old", "https://b.localhost/new"),
            redirect("c.localhost", "/", "https://example.com:8443/docs/"),
        ]);
        let Matched::Redirect { redirect, rest } = routes.find("a.localhost", "/old//x") else {
            panic!()
        };
        assert_eq!(
            redirect.location(rest, None, true, Some(8080)),
            "http://b.localhost:8080/new/x"
        );
        assert_eq!(
            redirect.location(rest, None, true, Some(80)),
            "http://b.localhost/new/x"
        );
        let Matched::Redirect { redirect, rest } = routes.find("c.localhost", "/a") else {
            panic!()
        };
        assert_eq!(redirect.code, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            redirect.location(rest, Some("q"), false, Some(8080)),
            "https://example.com:8443/docs/a?q"
        );
    }

    #[test]
    fn hostile_routes_are_refused_with_their_reason() {
        let with_code = |code| HostRoute {
            action: RouteAction::Redirect {
                to: "https://x.localhost/".into(),
                code,
            },
            ..upstream("y.localhost", "/")
        };
        let cases = [
            (upstream("bad host", "/"), "not a host name"),
            (upstream("*.main.localhost", "/"), "not a host name"),
            (upstream("main.localhost:8080", "/"), "not a host name"),
            (upstream("main.localhost\r\nx: y", "/"), "control character"),
            (upstream("main.localhost", "/a/../b"), "`..`"),
            (upstream("main.localhost", "a"), "start with `/`"),
            (upstream("main.localhost", "/a?b"), "query"),
            (upstream("main.localhost", "/{x}"), "percent-encode"),
            (
                of_app("api\r\nx", upstream("main.localhost", "/")),
                "not an app name",
            ),
            (
                of_app("", upstream("main.localhost", "/")),
                "not an app name",
            ),
            (
                redirect(
                    "m.localhost",
                    "/",
                    "https://w.localhost/\r\nSet-Cookie: a=b",
                ),
                "control character",
            ),
            (
                redirect("m.localhost", "/", "javascript:alert(1)"),
                "http://",
            ),
            (redirect("m.localhost", "/", "//evil.example/"), "http://"),
            (
                redirect("m.localhost", "/", "https://u@evil.example/"),
                "user information",
            ),
            (redirect("m.localhost", "/", "https://a b/"), "host name"),
            (
                redirect("m.localhost", "/", "https://w.localhost:x/"),
                "port",
            ),
            (
                redirect("m.localhost", "/", "https://w.localhost/?a=1"),
                "query",
            ),
            (
                redirect("m.localhost", "/", "https://w.localhost/a/.."),
                "`..`",
            ),
            (
                redirect("m.localhost", "/", "https://m.localhost/a/"),
                "itself",
            ),
            (with_code(200), "not a redirect"),
        ];
        for (route, reason) in cases {
            let error = check_routes(std::slice::from_ref(&route)).unwrap_err();
            assert!(
                matches!(error, RouteError::BadRoute { .. }),
                "{route:?}: {error}"
            );
            assert!(error.to_string().contains(reason), "{route:?}: {error}");
        }
        let twice = check_routes(&[upstream("a.localhost", "/"), upstream("A.localhost.", "/")]);
        assert!(
            twice
                .unwrap_err()
                .to_string()
                .contains("same host and path")
        );
        let many: Vec<HostRoute> = (0..=MAX_ROUTES)
            .map(|i| upstream(&format!("h{i}.localhost"), "/"))
            .collect();
        assert!(matches!(
            check_routes(&many),
            Err(RouteError::TooManyRoutes { count: 257, .. })
        ));
        assert!(check_routes(&many[..MAX_ROUTES]).is_ok());
        for code in REDIRECT_CODES {
            assert!(check_routes(&[with_code(code)]).is_ok(), "{code}");
        }
    }

    #[test]
    fn urls_become_routes_and_https_wins_over_http() {
        let to = |to: &str| RouteAction::Redirect {
            to: to.into(),
            code: 301,
        };
        let (routes, left_out) = routes_from_urls([
            ("http://main.localhost/", to("https://main.localhost/")),
            (
                "https://main.localhost/",
                RouteAction::Upstream { app: None },
            ),
            ("https://WWW.main.localhost", to("https://main.localhost/")),
            (
                "http://www.main.localhost/",
                to("https://www.main.localhost/"),
            ),
            (
                "https://*.main.localhost/",
                RouteAction::Upstream { app: None },
            ),
            ("ftp://main.localhost/", RouteAction::Upstream { app: None }),
        ]);
        assert_eq!(
            routes,
            vec![
                upstream("main.localhost", "/"),
                redirect("www.main.localhost", "/", "https://main.localhost/"),
            ]
        );
        assert_eq!(left_out.len(), 2, "{left_out:?}");
        assert!(
            left_out.iter().any(|l| l.contains("*.main.localhost")),
            "{left_out:?}"
        );

        let (routes, left_out) =
            routes_from_urls([("https://m.localhost/", to("https://m.localhost/x/"))]);
        assert!(routes.is_empty());
        assert!(left_out[0].contains("itself"), "{left_out:?}");
    }

    #[test]
    fn the_port_comes_from_the_host_header() {
        assert_eq!(host_port("main.localhost:8080"), Some(8080));
        assert_eq!(host_port("[::1]:81"), Some(81));
        assert_eq!(host_port("main.localhost"), None);
        assert_eq!(host_port("main.localhost:x"), None);
        assert_eq!(host_port("::1"), None);
    }
}
