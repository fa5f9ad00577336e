//! Entry points for the fuzz targets in `fuzz/`, compiled only with `--cfg fuzzing` (as
//! `cargo fuzz` builds): each runs a piece of the edge on arbitrary input and asserts what must
//! hold for every input. A panic is a finding.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, request};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::cache::rules::{Classified, KeyRules};
use crate::routing::normalise_host;
use crate::{Edge, EdgeOptions};
use lockstep_proto::edge::{CacheRules, EnvironmentRoute};

/// The hosts the fuzzed edge serves; every other host must get no further than the edge.
const HOSTS: [&str; 2] = ["localhost", "www.example.test"];

/// Headers no request reaching a node may carry as the client sent them.
const NEVER_FORWARDED: [&str; 6] = [
    "forwarded",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "proxy-authorization",
];

/// Raw bytes as one client connection to an edge serving one environment over a live origin:
/// the edge answers HTTP or closes, within seconds, and every request it forwards names a host
/// it serves and carries only the forwarding headers the edge set.
pub fn request(data: &[u8]) {
    let world = World::get();
    world.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        let (_stop, stopped) = watch::channel(false);
        let served = tokio::spawn(world.edge.clone().connection(server, peer, stopped));
        let exchange = async {
            // The client may stop reading at any point; the edge must not care.
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the edge neither answered nor closed the connection in 10 s");
        if !answer.is_empty() {
            assert!(
                answer.starts_with(b"HTTP/1."),
                "the edge answered something else than HTTP: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(64)])
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the connection did not end after the client closed it");
    });
    for forwarded in world.origin_seen.lock().expect("seen lock").drain(..) {
        forwarded.check();
    }
}

/// The cache key's promises, for any `cache` rules and any request: the key is the
/// environment's, the host's and the path's; headers outside the `headers` rule and cookies the
/// `cookies` rule does not name never change it; a keyed header's value always does.
///
/// Input: rules, a NUL byte, a request. Rules are lines `c<cookie rule>` and `h<header name>`;
/// the request is `METHOD TARGET` and then `Name: value` lines.
pub fn cache_key(data: &[u8]) {
    let Some(split) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let rules = parse_rules(&String::from_utf8_lossy(&data[..split]));
    let Some(parts) = parse_request(&String::from_utf8_lossy(&data[split + 1..])) else {
        return;
    };
    let Ok(compiled) = KeyRules::compile(&rules) else {
        return;
    };
    let host = normalise_host(
        parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost"),
    );
    let scope = "env#1";
    let classified = compiled.classify(&parts, scope, &host);
    assert_eq!(
        classified,
        compiled.classify(&parts, scope, &host),
        "the same request classified twice"
    );
    let Classified::Cache(key) = classified else {
        return;
    };
    assert!(
        key.starts_with(&format!("{scope}\n{host}\n")),
        "the key is not the environment's and the host's: {key:?}"
    );
    let Classified::Cache(elsewhere) = compiled.classify(&parts, "env#2", &host) else {
        panic!("another incarnation classified the request otherwise");
    };
    assert_ne!(key, elsewhere, "two incarnations share a key");

    let keyed: HashSet<HeaderName> = rules
        .headers
        .iter()
        .filter_map(|h| HeaderName::from_bytes(h.trim().as_bytes()).ok())
        .collect();
    let unkeyed = HeaderName::from_static("x-fuzz-unkeyed");
    if !keyed.contains(&unkeyed) {
        let mut more = clone_parts(&parts);
        more.headers
            .append(unkeyed, HeaderValue::from_static("anything"));
        assert_eq!(
            compiled.classify(&more, scope, &host),
            Classified::Cache(key.clone()),
            "a header outside the rule changed the key"
        );
    }

    let cookie_rules: Vec<&str> = rules.cookies.iter().map(|c| c.trim()).collect();
    let names_cookie = |name: &str| {
        cookie_rules.iter().any(|rule| {
            *rule == name
                || (rule.len() >= 2
                    && rule.starts_with('/')
                    && rule.ends_with('/')
                    && regex::Regex::new(&rule[1..rule.len() - 1]).is_ok_and(|r| r.is_match(name)))
        })
    };
    if !cookie_rules.is_empty() && !names_cookie("fuzzunkeyed") {
        let mut more = clone_parts(&parts);
        more.headers
            .append(header::COOKIE, HeaderValue::from_static("fuzzunkeyed=1"));
        let expected = if cookie_rules.contains(&"*") {
            Classified::Pass("cookie")
        } else {
            Classified::Cache(key.clone())
        };
        assert_eq!(
            compiled.classify(&more, scope, &host),
            expected,
            "a cookie outside the rule changed the key"
        );
    }

    for name in &keyed {
        let mut changed = clone_parts(&parts);
        let old = crate::headers::joined(&changed.headers, name).unwrap_or_default();
        let Ok(value) = HeaderValue::from_str(&format!("{old}x")) else {
            continue;
        };
        changed.headers.insert(name.clone(), value);
        if let Classified::Cache(other) = compiled.classify(&changed, scope, &host) {
            assert_ne!(other, key, "a keyed header's value did not change the key");
        }
    }
}

fn parse_rules(text: &str) -> CacheRules {
    let mut rules = CacheRules {
        enabled: true,
        default_ttl: 0,
        cookies: Vec::new(),
        headers: Vec::new(),
    };
    for line in text.lines() {
        if let Some(cookie) = line.strip_prefix('c') {
            rules.cookies.push(cookie.to_owned());
        } else if let Some(name) = line.strip_prefix('h') {
            rules.headers.push(name.to_owned());
        }
    }
    rules
}

fn parse_request(text: &str) -> Option<request::Parts> {
    let mut lines = text.lines();
    let (method, target) = lines.next()?.split_once(' ')?;
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).ok()?)
        .uri(target.parse::<Uri>().ok()?);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
        let value = HeaderValue::from_str(value.trim()).ok()?;
        builder = builder.header(name, value);
    }
    Some(builder.body(()).ok()?.into_parts().0)
}

fn clone_parts(parts: &request::Parts) -> request::Parts {
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone());
    *builder.headers_mut().expect("a fresh builder") = parts.headers.clone();
    builder.body(()).expect("valid parts").into_parts().0
}

/// The edge and its origin, made once per fuzzing process.
struct World {
    runtime: tokio::runtime::Runtime,
    edge: Arc<Edge>,
    origin_seen: Arc<Mutex<Vec<Forwarded>>>,
    /// libFuzzer's `main` leaves SIGPIPE fatal, where `lockstep edge` ignores it: a handler
    /// makes a write to a connection the peer closed an error, as in the real process.
    _sigpipe: tokio::signal::unix::Signal,
}

/// What the origin received of one request.
struct Forwarded {
    headers: HeaderMap,
}

impl Forwarded {
    fn check(&self) {
        let host = self
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(normalise_host);
        assert!(
            host.as_deref().is_some_and(|h| HOSTS.contains(&h)),
            "a request reached the node for host {host:?}"
        );
        let says = |name: &str| self.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(says("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(says("x-forwarded-proto"), Some("http"));
        let forwarded_hosts: Vec<String> = self
            .headers
            .get_all("x-forwarded-host")
            .iter()
            .map(|v| normalise_host(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        assert_eq!(
            forwarded_hosts,
            host.into_iter().collect::<Vec<_>>(),
            "X-Forwarded-Host is not the host the edge routed by"
        );
        for name in NEVER_FORWARDED {
            assert!(
                !self.headers.contains_key(name),
                "{name} reached the node: {:?}",
                self.headers
            );
        }
    }
}

impl World {
    fn get() -> &'static World {
        static WORLD: OnceLock<World> = OnceLock::new();
        WORLD.get_or_init(World::make)
    }

    fn make() -> World {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let origin_seen = Arc::new(Mutex::new(Vec::new()));
        let sigpipe = runtime
            .block_on(async {
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
            })
            .expect("a SIGPIPE handler");
        let edge = runtime.block_on(async {
            let origin = start_origin(origin_seen.clone()).await;
            let edge = Edge::new(EdgeOptions {
                cache_bytes: 8 << 20,
                origin_timeout: Duration::from_secs(2),
                ..EdgeOptions::default()
            });
            let mut route = EnvironmentRoute::new(
                HOSTS.iter().map(|h| h.to_string()).collect(),
                vec![format!("http://{origin}")],
            );
            route.max_hold_secs = 1;
            route.cache.cookies = vec!["SESS".into(), "/^pref/".into()];
            route.cache.headers = vec!["Accept-Language".into()];
            edge.put_environment("main", route)
                .expect("the fuzzed environment is valid");
            edge
        });
        World {
            runtime,
            edge,
            origin_seen,
            _sigpipe: sigpipe,
        }
    }
}

/// A node stand-in: records what it receives, answers cacheable pages, and 404 to the gate path
/// (a plain origin, open).
async fn start_origin(seen: Arc<Mutex<Vec<Forwarded>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the origin listens");
    let address = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let gate = request.uri().path() == lockstep_proto::agent::GATE_PATH;
                    if !gate {
                        seen.lock().expect("seen lock").push(Forwarded {
                            headers: request.headers().clone(),
                        });
                    }
                    let mut response = Response::new(Full::new(bytes::Bytes::from_static(b"page")));
                    if gate {
                        *response.status_mut() = http::StatusCode::NOT_FOUND;
                    } else {
                        response.headers_mut().insert(
                            header::CACHE_CONTROL,
                            HeaderValue::from_static("max-age=60"),
                        );
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    address
}
