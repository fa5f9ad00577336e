//! The `cache` block of a route, compiled: which requests pass to the origin, and the cache key
//! of the others.
//!
//! The key is the environment (with its incarnation, so a deleted and recreated environment
//! never sees the old one's responses), the host, the path and query, the values of the
//! `headers` rule and the values of the cookies the `cookies` rule names. The response's `Vary`
//! selects among variants stored under one key (see `store`).

use std::fmt::Write as _;
use std::time::Duration;

use http::header::{self, HeaderName};
use http::{Method, request};
use regex::Regex;

use crate::error::RouteError;
use crate::headers;
use lockstep_proto::edge::CacheRules;

/// A route's cache rules, ready to classify requests.
#[derive(Debug)]
pub(crate) struct KeyRules {
    enabled: bool,
    pub default_ttl: Duration,
    cookies: CookieRule,
    headers: Vec<HeaderName>,
}

#[derive(Debug)]
enum CookieRule {
    /// `*`: any cookie passes the request.
    PassAny,
    /// `[]`: cookies are ignored.
    Ignore,
    /// Names or patterns whose cookies join the key; other cookies are ignored.
    Key(Vec<CookieMatcher>),
}

#[derive(Debug)]
enum CookieMatcher {
    Name(String),
    Pattern(Regex),
}

impl CookieMatcher {
    fn matches(&self, name: &str) -> bool {
        match self {
            CookieMatcher::Name(wanted) => wanted == name,
            CookieMatcher::Pattern(regex) => regex.is_match(name),
        }
    }
}

/// What the cache does with a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Classified {
    /// Straight to the origin, never stored; the reason is for logs.
    Pass(&'static str),
    /// Looked up and stored under this key.
    Cache(String),
}

impl KeyRules {
    pub(crate) fn compile(rules: &CacheRules) -> Result<KeyRules, RouteError> {
        let cookies = if rules.cookies.iter().any(|c| c.trim() == "*") {
            CookieRule::PassAny
        } else if rules.cookies.is_empty() {
            CookieRule::Ignore
        } else {
            let mut matchers = Vec::new();
            for cookie in &rules.cookies {
                let cookie = cookie.trim();
                if cookie.len() >= 2 && cookie.starts_with('/') && cookie.ends_with('/') {
                    let regex = Regex::new(&cookie[1..cookie.len() - 1]).map_err(|e| {
                        RouteError::BadCookieRegex {
                            pattern: cookie.to_owned(),
                            reason: e.to_string(),
                        }
                    })?;
                    matchers.push(CookieMatcher::Pattern(regex));
                } else {
                    matchers.push(CookieMatcher::Name(cookie.to_owned()));
                }
            }
            CookieRule::Key(matchers)
        };
        let mut names = Vec::new();
        for name in &rules.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| RouteError::BadHeader(name.clone()))?;
            if header == header::COOKIE || header == header::ACCEPT_ENCODING {
                return Err(RouteError::ForbiddenHeader(name.clone()));
            }
            if !names.contains(&header) {
                names.push(header);
            }
        }
        Ok(KeyRules {
            enabled: rules.enabled,
            default_ttl: Duration::from_secs(rules.default_ttl),
            cookies,
            headers: names,
        })
    }

    /// Decides whether a request may be answered from the cache, and under which key.
    /// `scope` names the environment's incarnation; `host` is the normalised request host.
    pub(crate) fn classify(&self, parts: &request::Parts, scope: &str, host: &str) -> Classified {
        if !self.enabled {
            return Classified::Pass("cache disabled");
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return Classified::Pass("method");
        }
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return Classified::Pass("authorization");
        }
        if headers::is_upgrade(&parts.headers) {
            return Classified::Pass("upgrade");
        }
        if parts.headers.contains_key(header::RANGE) {
            return Classified::Pass("range");
        }
        if headers::has_body(&parts.headers) {
            return Classified::Pass("request body");
        }
        let cookies = request_cookies(&parts.headers);
        let keyed_cookies: Vec<(&str, &str)> = match &self.cookies {
            CookieRule::PassAny if !cookies.is_empty() => return Classified::Pass("cookie"),
            CookieRule::PassAny | CookieRule::Ignore => Vec::new(),
            CookieRule::Key(matchers) => {
                let mut keyed: Vec<(&str, &str)> = cookies
                    .into_iter()
                    .filter(|(name, _)| matchers.iter().any(|m| m.matches(name)))
                    .collect();
                keyed.sort_unstable();
                keyed
            }
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut key = format!("{scope}\n{host}\n{path}\n");
        for name in &self.headers {
            let value = headers::joined(&parts.headers, name).unwrap_or_default();
            let _ = write!(key, "{name}={value};");
        }
        key.push('\n');
        for (name, value) in keyed_cookies {
            let _ = write!(key, "{name}={value};");
        }
        Classified::Cache(key)
    }
}

/// The request's cookies as (name, value) pairs, from every `Cookie` header.
fn request_cookies(headers: &http::HeaderMap) -> Vec<(&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let pair = pair.trim();
            if pair.is_empty() {
                return None;
            }
            Some(match pair.split_once('=') {
                Some((name, value)) => (name.trim(), value.trim()),
                None => (pair, ""),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(cookies: &[&str], headers: &[&str]) -> KeyRules {
        KeyRules::compile(&CacheRules {
            enabled: true,
            default_ttl: 0,
            cookies: cookies.iter().map(|s| s.to_string()).collect(),
            headers: headers.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = http::Request::builder().method(method).uri("/a?b=1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn key(rules: &KeyRules, headers: &[(&str, &str)]) -> Classified {
        rules.classify(&request("GET", headers), "env#1", "localhost")
    }

    #[test]
    fn only_anonymous_gets_and_heads_are_cached() {
        let r = rules(&["*"], &[]);
        assert!(matches!(key(&r, &[]), Classified::Cache(_)));
        assert!(matches!(
            r.classify(&request("HEAD", &[]), "e", "h"),
            Classified::Cache(_)
        ));
        assert_eq!(
            r.classify(&request("POST", &[]), "e", "h"),
            Classified::Pass("method")
        );
        assert_eq!(
            key(&r, &[("authorization", "Bearer x")]),
            Classified::Pass("authorization")
        );
        assert_eq!(key(&r, &[("cookie", "a=1")]), Classified::Pass("cookie"));
    }

    #[test]
    fn cookie_rules_ignore_or_key_on_cookies() {
        let ignore = rules(&[], &[]);
        assert_eq!(key(&ignore, &[("cookie", "a=1")]), key(&ignore, &[]));

        let named = rules(&["SESS"], &[]);
        assert_eq!(
            key(&named, &[("cookie", "_ga=1; SESS=x")]),
            key(&named, &[("cookie", "SESS=x")])
        );
        assert_ne!(
            key(&named, &[("cookie", "SESS=x")]),
            key(&named, &[("cookie", "SESS=y")])
        );

        let pattern = rules(&["/^SS?ESS/"], &[]);
        assert_ne!(
            key(&pattern, &[("cookie", "SSESS123=x")]),
            key(&pattern, &[("cookie", "SSESS123=y")])
        );
        assert_eq!(key(&pattern, &[("cookie", "other=1")]), key(&pattern, &[]));
    }

    #[test]
    fn header_rule_values_join_the_key() {
        let r = rules(&["*"], &["Accept-Language"]);
        assert_ne!(
            key(&r, &[("accept-language", "en")]),
            key(&r, &[("accept-language", "fr")])
        );
        assert_eq!(key(&r, &[("x-other", "1")]), key(&r, &[]));
    }

    #[test]
    fn bad_rules_are_refused() {
        for (cookies, headers) in [(vec!["/(/"], vec![]), (vec![], vec!["Cookie"])] {
            let result = KeyRules::compile(&CacheRules {
                enabled: true,
                default_ttl: 0,
                cookies: cookies.into_iter().map(String::from).collect(),
                headers: headers.into_iter().map(String::from).collect(),
            });
            assert!(result.is_err());
        }
    }
}
