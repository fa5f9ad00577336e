//! `.platform/routes.yaml`: which URLs reach the app, which redirect, and how the edge caches.

use serde::{Deserialize, Serialize};

use crate::decode::{self, Keys};
use crate::diagnostic::FileReport;
use crate::yaml::{Node, Span, Value};

pub const ROUTES_FILE: &str = ".platform/routes.yaml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The URL pattern as written, with `{default}` or `{all}` in place of the host.
    pub url: String,
    pub kind: RouteKind,
    pub id: Option<String>,
    pub primary: bool,
    pub cache: Cache,
    #[serde(skip)]
    pub(crate) upstream_span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum RouteKind {
    /// To the app's web process. `app` is the app's name.
    Upstream {
        app: String,
    },
    Redirect {
        to: String,
    },
}

/// The `cache` block, with Platform.sh's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cache {
    pub enabled: bool,
    /// Seconds, for responses that carry no `Cache-Control` of their own.
    pub default_ttl: u64,
    /// Request cookies that make a response vary: names, or `/regex/`; `*` means any cookie
    /// bypasses the cache.
    pub cookies: Vec<String>,
    pub headers: Vec<String>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            enabled: true,
            default_ttl: 0,
            cookies: vec!["*".into()],
            headers: vec!["Accept".into(), "Accept-Language".into()],
        }
    }
}

const ROUTE_KEYS: Keys = Keys {
    supported: &[
        "type",
        "upstream",
        "to",
        "cache",
        "id",
        "primary",
        "attributes",
    ],
    ignored: &["tls", "sticky"],
    unsupported: &[
        (
            "ssi",
            "Lockstep's edge does not process server-side includes; remove `ssi`",
        ),
        (
            "redirects",
            "Lockstep does not do partial redirects yet; redirect inside the app instead",
        ),
    ],
};
const CACHE_KEYS: Keys = Keys::only(&["enabled", "default_ttl", "cookies", "headers"]);

pub(crate) fn read(report: &mut FileReport<'_>, root: &Node) -> Option<Vec<Route>> {
    let mut routes = Vec::new();
    let mut ok = true;
    let mut primary: Option<&str> = None;
    for (url, body) in decode::mapping(report, root, "")? {
        match read_route(report, &url.name, url.span, body) {
            Some(route) => {
                if route.primary {
                    ok &= check_one_primary(report, &mut primary, &url.name, url.span);
                }
                routes.push(route);
            }
            None => ok = false,
        }
    }
    // As on Platform.sh, the first upstream route is the primary one unless a route says.
    if primary.is_none()
        && let Some(first) = routes
            .iter_mut()
            .find(|r| matches!(r.kind, RouteKind::Upstream { .. }))
    {
        first.primary = true;
    }
    ok.then_some(routes)
}

/// `PLATFORM_ROUTES` marks one route as primary; two would leave apps to guess which.
fn check_one_primary<'u>(
    report: &mut FileReport<'_>,
    primary: &mut Option<&'u str>,
    url: &'u str,
    span: Span,
) -> bool {
    if let Some(first) = primary {
        report.error(
            span,
            format!("route \"{url}\" is `primary`, but so is route \"{first}\""),
            Some("set `primary: true` on one route only".into()),
        );
        return false;
    }
    *primary = Some(url);
    true
}

fn read_route(
    report: &mut FileReport<'_>,
    url: &str,
    url_span: Span,
    node: &Node,
) -> Option<Route> {
    let url_ok = check_url(report, url, url_span, "route");
    let path = format!("\"{url}\"");
    let fields = decode::fields(report, node, &path, &ROUTE_KEYS);
    let kind = decode::required(
        report,
        &fields,
        &path,
        "type",
        "use `type: upstream` or `type: redirect`",
    )
    .and_then(|n| {
        decode::one_of(
            report,
            n,
            &format!("{path}.type"),
            &["upstream", "redirect", "proxy"],
        )
        .map(|t| (t, n.span))
    });
    let mut upstream_span = fields.owner;
    let kind = match kind {
        Some(("upstream", _)) => decode::required(
            report,
            &fields,
            &path,
            "upstream",
            "name the app, such as `upstream: \"app:http\"`",
        )
        .and_then(|n| {
            upstream_span = n.span;
            read_upstream(report, n, &format!("{path}.upstream"))
        })
        .map(|app| RouteKind::Upstream { app }),
        Some(("redirect", _)) => decode::required(
            report,
            &fields,
            &path,
            "to",
            "give the target, such as `to: \"https://{default}/\"`",
        )
        .and_then(|n| {
            let to = decode::text(report, n, &format!("{path}.to"))?;
            check_url(report, &to, n.span, "redirect target").then_some(to)
        })
        .map(|to| RouteKind::Redirect { to }),
        Some((_, span)) => {
            report.error(
                span,
                "`type: proxy` routes are a Platform.sh feature that Lockstep does not support yet",
                Some("route to the app with `type: upstream`".into()),
            );
            None
        }
        None => None,
    };
    let id = match fields.get("id") {
        None => Some(None),
        Some(n) if n.value == Value::Null => Some(None),
        Some(n) => decode::string(report, n, &format!("{path}.id")).map(Some),
    };
    let primary = match fields.get("primary") {
        None => Some(false),
        Some(n) => decode::boolean(report, n, &format!("{path}.primary")),
    };
    let cache = match fields.get("cache") {
        None => Some(Cache::default()),
        Some(n) => read_cache(report, n, &format!("{path}.cache")),
    };
    url_ok.then_some(())?;
    Some(Route {
        url: url.to_owned(),
        kind: kind?,
        id: id?,
        primary: primary?,
        cache: cache?,
        upstream_span,
    })
}

/// `app:http` or `app`; the app itself is checked against `.platform.app.yaml` later.
fn read_upstream(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<String> {
    let upstream = decode::text(report, node, path)?;
    let (app, protocol) = upstream
        .split_once(':')
        .unwrap_or((upstream.as_str(), "http"));
    if protocol != "http" || app.is_empty() {
        report.error(
            node.span,
            format!("`{path}` must be `APP:http`, not `{upstream}`"),
            Some(format!(
                "write the app's name and `:http`, such as `upstream: \"{}:http\"`; the edge speaks HTTP to the app whatever the route's scheme",
                if app.is_empty() { "app" } else { app }
            )),
        );
        return None;
    }
    Some(app.to_owned())
}

fn check_url(report: &mut FileReport<'_>, url: &str, span: Span, what: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let host = rest.map(|r| r.split('/').next().unwrap_or_default());
    let problem = match host {
        None => Some("it must start with `https://` or `http://`"),
        Some("") => Some("it has no host; write `{default}` for the environment's domain"),
        Some(host) if host.contains(char::is_whitespace) => Some("the host contains spaces"),
        Some(_) => None,
    };
    if let Some(problem) = problem {
        report.error(
            span,
            format!("`{url}` is not a valid {what} URL: {problem}"),
            Some("for example `\"https://{default}/\"` or `\"https://www.{default}/\"`".into()),
        );
        return false;
    }
    true
}

fn read_cache(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<Cache> {
    let fields = decode::fields(report, node, path, &CACHE_KEYS);
    let defaults = Cache::default();
    let enabled = match fields.get("enabled") {
        None => Some(defaults.enabled),
        Some(n) => decode::boolean(report, n, &format!("{path}.enabled")),
    };
    let default_ttl = match fields.get("default_ttl") {
        None => Some(defaults.default_ttl),
        Some(n) => decode::integer(
            report,
            n,
            &format!("{path}.default_ttl"),
            0..=31_536_000,
            "seconds",
        )
        .map(|s| s as u64),
    };
    let cookies = match fields.get("cookies") {
        None => Some(defaults.cookies),
        Some(n) => read_cookies(report, n, &format!("{path}.cookies")),
    };
    let headers = match fields.get("headers") {
        None => Some(defaults.headers),
        Some(n) => read_headers(report, n, &format!("{path}.headers")),
    };
    Some(Cache {
        enabled: enabled?,
        default_ttl: default_ttl?,
        cookies: cookies?,
        headers: headers?,
    })
}

fn read_cookies(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<Vec<String>> {
    let mut ok = true;
    let cookies = decode::string_list(report, node, path)?;
    for (cookie, span) in &cookies {
        let Some(pattern) = cookie.strip_prefix('/').and_then(|c| c.strip_suffix('/')) else {
            continue;
        };
        if let Err(error) = regex::Regex::new(pattern) {
            report.error(
                *span,
                format!(
                    "`{cookie}` in `{path}` is not a valid regular expression: {}",
                    decode::regex_problem(&error)
                ),
                Some(
                    "write a cookie name, or a regular expression between slashes such as `/^SESS/`"
                        .into(),
                ),
            );
            ok = false;
        }
    }
    ok.then(|| cookies.into_iter().map(|(c, _)| c).collect())
}

fn read_headers(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<Vec<String>> {
    let mut ok = true;
    let headers = decode::string_list(report, node, path)?;
    for (header, span) in &headers {
        if header.eq_ignore_ascii_case("cookie") || header.eq_ignore_ascii_case("accept-encoding") {
            report.error(
                *span,
                format!("`{header}` cannot be in `{path}`"),
                Some(
                    "cookies are keyed with `cache.cookies`; encodings are handled by the edge"
                        .into(),
                ),
            );
            ok = false;
        }
    }
    ok.then(|| headers.into_iter().map(|(h, _)| h).collect())
}
