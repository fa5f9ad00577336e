//! Whether a response may be stored, and for how long: RFC 9111 through `http-cache-semantics`
//! (as a shared cache), narrowed by Platform.sh's rules, with the edge's stale windows.
//!
//! - Never stored: a 5xx, a `Set-Cookie` (even with `public`), `private`, `no-store`,
//!   `no-cache`, `Vary: *`, anything RFC 9111 does not allow a shared cache to store.
//! - `default_ttl` gives the freshness of a response that has neither `Cache-Control` nor
//!   `Expires`; at 0 (the default) such a response is not stored.
//! - Stale windows: the response's own `stale-while-revalidate` / `stale-if-error`, else the
//!   environment's `swr` / `grace`. `must-revalidate` and `proxy-revalidate` allow only the
//!   windows the response states itself (RFC 9111 section 4.2.4). `s-maxage` is read as a
//!   freshness lifetime only: it does not forbid grace, which is what the edge is for.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{request, response};
use http_cache_semantics::{CacheOptions, CachePolicy};

/// The timers of a response the cache may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timers {
    /// How much longer the response is fresh, from now.
    pub fresh_for: Duration,
    /// Its age now (its `Age` header plus the time since it was received).
    pub age: Duration,
    /// How long after it turns stale it may be served while it is refreshed in the background.
    pub swr: Duration,
    /// How long after it turns stale it may be served when the origin fails or is closed.
    pub grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Store(Timers),
    /// Not stored; the reason is for logs.
    DontStore(&'static str),
}

/// The edge's defaults for one environment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    pub default_ttl: Duration,
    pub swr: Duration,
    pub grace: Duration,
}

/// Judges a response to `request` (the request as sent to the origin).
pub(crate) fn evaluate(
    request: &request::Parts,
    response: &response::Parts,
    defaults: Defaults,
    now: SystemTime,
) -> Verdict {
    if response.status.is_server_error() {
        return Verdict::DontStore("5xx");
    }
    if response.headers.contains_key(header::SET_COOKIE) {
        return Verdict::DontStore("Set-Cookie");
    }
    let directives = directives(&response.headers);
    for (name, reason) in [
        ("private", "private"),
        ("no-store", "no-store"),
        ("no-cache", "no-cache"),
    ] {
        if directives.iter().any(|(d, _)| d == name) {
            return Verdict::DontStore(reason);
        }
    }
    if response
        .headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "*")
    {
        return Verdict::DontStore("Vary: *");
    }
    let explicit = response.headers.contains_key(header::CACHE_CONTROL)
        || response.headers.contains_key(header::EXPIRES);
    let mut judged = response.clone();
    if !explicit {
        if defaults.default_ttl.is_zero() {
            return Verdict::DontStore("no Cache-Control and default_ttl is 0");
        }
        let value = format!("max-age={}", defaults.default_ttl.as_secs());
        judged.headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_str(&value).expect("a number is a header value"),
        );
    }
    let options = CacheOptions {
        shared: true,
        ..CacheOptions::default()
    };
    let policy = CachePolicy::new_options(request, &judged, now, options);
    if !policy.is_storable() {
        return Verdict::DontStore("not storable by a shared cache");
    }
    let fresh_for = policy.time_to_live(now);
    if fresh_for.is_zero() {
        return Verdict::DontStore("no freshness");
    }
    let seconds = |name: &str| {
        directives
            .iter()
            .find(|(d, _)| d == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
    };
    let strict = directives
        .iter()
        .any(|(d, _)| d == "must-revalidate" || d == "proxy-revalidate");
    let (swr, grace) = if strict {
        (
            seconds("stale-while-revalidate").unwrap_or_default(),
            seconds("stale-if-error").unwrap_or_default(),
        )
    } else {
        (
            seconds("stale-while-revalidate").unwrap_or(defaults.swr),
            seconds("stale-if-error").unwrap_or(defaults.grace),
        )
    };
    Verdict::Store(Timers {
        fresh_for,
        age: policy.age(now),
        swr,
        grace,
    })
}

/// The `Cache-Control` directives, names lower-cased, values unquoted.
fn directives(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| {
            let part = part.trim();
            if part.is_empty() {
                return None;
            }
            Some(match part.split_once('=') {
                Some((name, value)) => (
                    name.trim().to_ascii_lowercase(),
                    Some(value.trim().trim_matches('"').to_owned()),
                ),
                None => (part.to_ascii_lowercase(), None),
            })
        })
        .collect()
}

/// The stored headers updated by a `304 Not Modified` (RFC 9111 section 4.3.4): every header the
/// 304 carries replaces the stored one, except those that describe the stored body.
pub(crate) fn merge_not_modified(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        if name == header::CONTENT_LENGTH
            || name == header::CONTENT_ENCODING
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_RANGE
        {
            continue;
        }
        merged.remove(name);
        for value in not_modified.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Defaults = Defaults {
        default_ttl: Duration::ZERO,
        swr: Duration::from_secs(10),
        grace: Duration::from_secs(100),
    };

    fn judge(status: u16, headers: &[(&str, &str)], defaults: Defaults) -> Verdict {
        let request = http::Request::get("http://h/p")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut builder = http::Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = builder.body(()).unwrap().into_parts().0;
        evaluate(&request, &response, defaults, SystemTime::now())
    }

    #[test]
    fn a_fresh_response_gets_the_default_windows() {
        let Verdict::Store(timers) = judge(200, &[("cache-control", "max-age=60")], DEFAULTS)
        else {
            panic!("stored")
        };
        assert_eq!(timers.fresh_for, Duration::from_secs(60));
        assert_eq!(timers.swr, DEFAULTS.swr);
        assert_eq!(timers.grace, DEFAULTS.grace);
    }

    #[test]
    fn platform_sh_rules_refuse_some_responses() {
        for (status, headers) in [
            (500, vec![("cache-control", "max-age=60")]),
            (
                200,
                vec![
                    ("cache-control", "public, max-age=60"),
                    ("set-cookie", "a=1"),
                ],
            ),
            (200, vec![("cache-control", "private, max-age=60")]),
            (200, vec![("cache-control", "no-store")]),
            (200, vec![("cache-control", "no-cache, max-age=60")]),
            (200, vec![("cache-control", "max-age=60"), ("vary", "*")]),
            (200, vec![]),
        ] {
            assert!(
                matches!(judge(status, &headers, DEFAULTS), Verdict::DontStore(_)),
                "{status} {headers:?}"
            );
        }
    }

    #[test]
    fn default_ttl_applies_only_without_cache_control() {
        let defaults = Defaults {
            default_ttl: Duration::from_secs(30),
            ..DEFAULTS
        };
        let Verdict::Store(timers) = judge(200, &[], defaults) else {
            panic!("stored")
        };
        assert_eq!(timers.fresh_for, Duration::from_secs(30));
        assert!(matches!(
            judge(200, &[("cache-control", "max-age=0")], defaults),
            Verdict::DontStore(_)
        ));
        let Verdict::Store(timers) = judge(200, &[("cache-control", "max-age=5")], defaults) else {
            panic!("stored")
        };
        assert_eq!(timers.fresh_for, Duration::from_secs(5));
    }

    #[test]
    fn must_revalidate_allows_only_stated_windows() {
        let Verdict::Store(timers) = judge(
            200,
            &[(
                "cache-control",
                "max-age=5, must-revalidate, stale-if-error=7",
            )],
            DEFAULTS,
        ) else {
            panic!("stored")
        };
        assert_eq!(timers.swr, Duration::ZERO);
        assert_eq!(timers.grace, Duration::from_secs(7));
    }
}
