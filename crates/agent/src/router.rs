//! The node router of one instance: the instance's public port, which proxies to its web process
//! only while the gate is open, and counts requests in flight so that close can drain them.
//!
//! Under the active release's `web.locations` it also answers requests itself, as Platform.sh's
//! router does: files from a location's `root`, 404 where nothing passes through; only while the
//! gate admits the request, which then counts as in flight like a proxied one.
//!
//! The gate's state and the in-flight count change under one lock, so a request is either
//! admitted before close (and counted, and drained) or refused after it: never in between.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lockstep_proto::Generation;
use lockstep_proto::agent::{GATE_HEADER, GATE_PATH, GENERATION_HEADER, Gate, GateSettings};
use lockstep_transport::{Peer, PeerCertificate, ServerIdentity};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::locations::{Decision, OpenFile, Served, content_type};
use crate::metrics::Metrics;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// The router port on the node's address: mutual TLS with the node's certificate, serving
/// edges whose certificate is not revoked.
#[derive(Clone)]
pub struct EdgeTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub identity: Arc<ServerIdentity>,
}

/// The answer on a connection whose edge was removed since it connected; the connection ends.
fn revoked_edge() -> Response<ProxyBody> {
    let mut response = Response::new(full("this edge's certificate is revoked\n"));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// Where the web process listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A TCP port on loopback (`$PORT`).
    Port(u16),
    /// A unix socket (`$SOCKET`), by its path on the host.
    Socket(PathBuf),
    /// PHP-FPM's FastCGI socket, by its path on the host.
    FastCgi(PathBuf),
}

struct GateInner {
    open_at: Option<Generation>,
    in_flight: u64,
    upstream: Option<Upstream>,
    /// What the active release serves: its app folder and `web.locations`.
    served: Option<Arc<Served>>,
    settings: GateSettings,
}

/// An admitted request: counted until dropped, with what it may reach.
struct Admitted {
    guard: InFlight,
    generation: Generation,
    upstream: Option<Upstream>,
    served: Option<Arc<Served>>,
}

pub struct GateControl {
    inner: Mutex<GateInner>,
    in_flight: watch::Sender<u64>,
}

/// Held by an admitted request until its response body is done.
struct InFlight(Arc<GateControl>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = self.0.inner.lock().expect("gate lock");
        inner.in_flight -= 1;
        self.0.in_flight.send_replace(inner.in_flight);
    }
}

impl GateControl {
    /// Every instance starts closed: only an open command opens it.
    pub fn new(settings: GateSettings) -> Arc<GateControl> {
        Arc::new(GateControl {
            inner: Mutex::new(GateInner {
                open_at: None,
                in_flight: 0,
                upstream: None,
                served: None,
                settings,
            }),
            in_flight: watch::channel(0).0,
        })
    }

    pub fn state(&self) -> Gate {
        match self.inner.lock().expect("gate lock").open_at {
            Some(generation) => Gate::Open { generation },
            None => Gate::Closed,
        }
    }

    pub fn set_settings(&self, settings: GateSettings) {
        self.inner.lock().expect("gate lock").settings = settings;
    }

    pub fn set_upstream(&self, upstream: Option<Upstream>) {
        self.inner.lock().expect("gate lock").upstream = upstream;
    }

    /// Where requests for the app go, once its web process listened.
    pub fn upstream(&self) -> Option<Upstream> {
        self.inner.lock().expect("gate lock").upstream.clone()
    }

    /// Set next to the upstream when a release's web side starts; `None` once it stops.
    pub fn set_served(&self, served: Option<Served>) {
        self.inner.lock().expect("gate lock").served = served.map(Arc::new);
    }

    /// Whether the active release can answer requests: its web process listens, or it is a
    /// static site that needs none.
    pub fn serving(&self) -> bool {
        let inner = self.inner.lock().expect("gate lock");
        match &inner.served {
            Some(served) => inner.upstream.is_some() || !served.passes_to_app(),
            None => inner.upstream.is_some(),
        }
    }

    pub fn open(&self, generation: Generation) {
        self.inner.lock().expect("gate lock").open_at = Some(generation);
    }

    /// Closes the gate, then waits up to the drain timeout for admitted requests to finish.
    /// Returns how many were still running when it gave up.
    pub async fn close(&self) -> u64 {
        let timeout = {
            let mut inner = self.inner.lock().expect("gate lock");
            inner.open_at = None;
            Duration::from_millis(inner.settings.drain_timeout_ms)
        };
        let mut in_flight = self.in_flight.subscribe();
        let drained = tokio::time::timeout(timeout, in_flight.wait_for(|n| *n == 0))
            .await
            .is_ok();
        if drained { 0 } else { *in_flight.borrow() }
    }

    fn admit(self: &Arc<Self>) -> Result<Admitted, GateSettings> {
        let mut inner = self.inner.lock().expect("gate lock");
        match inner.open_at {
            Some(generation) => {
                inner.in_flight += 1;
                self.in_flight.send_replace(inner.in_flight);
                Ok(Admitted {
                    guard: InFlight(self.clone()),
                    generation,
                    upstream: inner.upstream.clone(),
                    served: inner.served.clone(),
                })
            }
            None => Err(inner.settings.clone()),
        }
    }
}

#[derive(Clone)]
pub struct NodeRouter {
    gate: Arc<GateControl>,
    client: Client<HttpConnector, Incoming>,
    environment: String,
    metrics: Arc<Metrics>,
}

impl NodeRouter {
    pub fn new(gate: Arc<GateControl>, environment: String, metrics: Arc<Metrics>) -> NodeRouter {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        NodeRouter {
            gate,
            client: Client::builder(TokioExecutor::new()).build(connector),
            environment,
            metrics,
        }
    }

    /// Serves the router port until the task is dropped: over mutual TLS to edges alone
    /// (`tls`), or in plain HTTP to the apps of this node (on loopback).
    pub async fn serve(self, listener: TcpListener, tls: Option<EdgeTls>) {
        loop {
            let (tcp, address) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "router accept failed");
                    continue;
                }
            };
            let (router, tls) = (self.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(tls) => {
                        let Some((stream, peer, certificate)) =
                            lockstep_transport::handshake(&tls.acceptor, tcp, address).await
                        else {
                            return;
                        };
                        if matches!(peer, Peer::Edge(_)) {
                            let presented = Some((tls.identity, certificate));
                            router
                                .serve_connection(TokioIo::new(stream), presented)
                                .await;
                        } else {
                            tracing::info!(%address, %peer, "the router serves edges alone");
                        }
                    }
                    None => router.serve_connection(TokioIo::new(tcp), None).await,
                }
            });
        }
    }

    /// Serves one connection; one over TLS (`presented`: the identity that accepted it, and the
    /// edge's certificate) ends at its next request once that certificate is revoked.
    async fn serve_connection<S>(
        self,
        stream: TokioIo<S>,
        presented: Option<(Arc<ServerIdentity>, PeerCertificate)>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request| {
            let router = self.clone();
            let revoked = presented
                .as_ref()
                .is_some_and(|(identity, certificate)| identity.refuses(certificate));
            async move {
                if revoked {
                    return Ok::<_, Infallible>(revoked_edge());
                }
                Ok(router.handle(request).await)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(stream, service)
            .await;
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        if request.uri().path() == GATE_PATH {
            return gate_response(&self.gate.state());
        }
        let Admitted {
            guard,
            generation,
            upstream,
            served,
        } = match self.gate.admit() {
            Ok(admitted) => admitted,
            Err(settings) => {
                self.metrics.router_request(&self.environment, "closed");
                return closed_response(&settings);
            }
        };
        let files = matches!(*request.method(), Method::GET | Method::HEAD);
        let decision = match &served {
            Some(served) => served.decide(request.uri().path(), files),
            None => Decision::App(None),
        };
        let new_path = match decision {
            Decision::App(new_path) => new_path,
            Decision::Script(script) => {
                let Some(Upstream::FastCgi(socket)) = &upstream else {
                    self.metrics.router_request(&self.environment, "no_process");
                    return text_response(
                        StatusCode::BAD_GATEWAY,
                        "PHP-FPM is not running\n",
                        generation,
                    );
                };
                let params = crate::fastcgi::cgi_params(&script, &request);
                let answer = crate::fastcgi::request(socket, &params, request.into_body()).await;
                return self.proxied(answer.map_err(BoxError::from), guard, generation);
            }
            Decision::File {
                file,
                expires,
                headers,
            } => {
                let head = *request.method() == Method::HEAD;
                return self
                    .file_response(file, expires, &headers, head, guard, generation)
                    .await;
            }
            Decision::NotFound => {
                self.metrics.router_request(&self.environment, "not_found");
                return text_response(StatusCode::NOT_FOUND, "not found\n", generation);
            }
            Decision::Refused => {
                self.metrics.router_request(&self.environment, "refused");
                return text_response(StatusCode::FORBIDDEN, "forbidden\n", generation);
            }
        };
        let Some(upstream) = upstream else {
            if served.as_ref().is_some_and(|s| !s.passes_to_app()) {
                // A static site has no app to pass to.
                self.metrics.router_request(&self.environment, "not_found");
                return text_response(StatusCode::NOT_FOUND, "not found\n", generation);
            }
            self.metrics.router_request(&self.environment, "no_process");
            return text_response(
                StatusCode::BAD_GATEWAY,
                "the web process is not running\n",
                generation,
            );
        };
        let path = match (new_path, request.uri().query()) {
            (Some(path), Some(query)) => format!("{path}?{query}"),
            (Some(path), None) => path,
            (None, _) => request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
        };
        let answer = self
            .forward(&upstream, &path, request)
            .await
            .map(|response| response.map(|body| body.map_err(BoxError::from).boxed()));
        self.proxied(answer, guard, generation)
    }

    /// The web process's answer, counted in flight until its body ends; or a 502 saying it did
    /// not answer.
    fn proxied(
        &self,
        answer: Result<Response<ProxyBody>, BoxError>,
        guard: InFlight,
        generation: Generation,
    ) -> Response<ProxyBody> {
        match answer {
            Ok(response) => {
                self.metrics.router_request(&self.environment, "proxied");
                let (mut parts, body) = response.into_parts();
                insert_gate_headers(&mut parts.headers, generation);
                // The guard lives as long as the body, so close waits for streaming answers too.
                let body = body.map_frame(move |frame| {
                    let _counted = &guard;
                    frame
                });
                Response::from_parts(parts, body.boxed())
            }
            Err(error) => {
                self.metrics
                    .router_request(&self.environment, "upstream_error");
                tracing::warn!(%error, "web process did not answer");
                text_response(
                    StatusCode::BAD_GATEWAY,
                    "the web process did not answer\n",
                    generation,
                )
            }
        }
    }
}

impl NodeRouter {
    /// Sends a request to the web process: over pooled connections to a port, or over a new
    /// connection to a unix socket (cheap, on the same machine).
    async fn forward(
        &self,
        upstream: &Upstream,
        path: &str,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, BoxError> {
        match upstream {
            Upstream::Port(port) => {
                *request.uri_mut() = format!("http://127.0.0.1:{port}{path}").parse()?;
                Ok(self.client.request(request).await?)
            }
            Upstream::FastCgi(_) => Err("a PHP app's requests go to its scripts".into()),
            Upstream::Socket(socket) => {
                *request.uri_mut() = path.parse()?;
                let stream = tokio::net::UnixStream::connect(socket).await?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "a connection to the web process's socket ended");
                    }
                });
                Ok(sender.send_request(request).await?)
            }
        }
    }

    /// Answers with a file from a location's root: GET streams it, HEAD sends its headers only.
    async fn file_response(
        &self,
        opened: OpenFile,
        expires: lockstep_config::Expires,
        headers: &std::collections::BTreeMap<String, String>,
        head: bool,
        guard: InFlight,
        generation: Generation,
    ) -> Response<ProxyBody> {
        let length = match opened.file.metadata() {
            Ok(metadata) => metadata.len(),
            Err(error) => {
                tracing::warn!(%error, path = %opened.path.display(), "a static file could not be read");
                self.metrics.router_request(&self.environment, "not_found");
                return text_response(StatusCode::NOT_FOUND, "not found\n", generation);
            }
        };
        let file = tokio::fs::File::from_std(opened.file);
        self.metrics.router_request(&self.environment, "static");
        let mut builder = Response::builder()
            .header(header::CONTENT_TYPE, content_type(&opened.path))
            .header(header::CONTENT_LENGTH, length);
        if let lockstep_config::Expires::Seconds(seconds) = expires {
            builder = builder.header(header::CACHE_CONTROL, format!("max-age={seconds}"));
        }
        for (name, value) in headers {
            match (
                header::HeaderName::from_bytes(name.as_bytes()),
                header::HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => builder = builder.header(name, value),
                _ => tracing::warn!(%name, "a location header is not a valid HTTP header"),
            }
        }
        let body = if head {
            drop(file);
            drop(guard);
            Empty::new().map_err(|never| match never {}).boxed()
        } else {
            // The guard lives as long as the body, as for proxied answers.
            let frames = futures_util::StreamExt::map(
                tokio_util::io::ReaderStream::new(file),
                move |chunk| {
                    let _counted = &guard;
                    chunk.map(Frame::data).map_err(BoxError::from)
                },
            );
            StreamBody::new(frames).boxed()
        };
        let mut response = builder
            .body(body)
            .expect("a file response builds from valid parts");
        insert_gate_headers(response.headers_mut(), generation);
        response
    }
}

/// The router's own answer to the edge's health check: the gate, without touching the app.
fn gate_response(gate: &Gate) -> Response<ProxyBody> {
    let body = serde_json::to_string(gate).expect("a gate serialises");
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a fixed response builds");
    match gate {
        Gate::Open { generation } => insert_gate_headers(response.headers_mut(), *generation),
        Gate::Closed => {
            response
                .headers_mut()
                .insert(GATE_HEADER, header::HeaderValue::from_static("closed"));
        }
    }
    response
}

fn insert_gate_headers(headers: &mut header::HeaderMap, generation: Generation) {
    headers.insert(GATE_HEADER, header::HeaderValue::from_static("open"));
    headers.insert(GENERATION_HEADER, generation.0.into());
}

fn closed_response(settings: &GateSettings) -> Response<ProxyBody> {
    let status =
        StatusCode::from_u16(settings.closed_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    Response::builder()
        .status(status)
        .header(header::RETRY_AFTER, settings.retry_after_secs)
        .header(GATE_HEADER, "closed")
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(
            "This site is being deployed. Please retry in a few seconds.\n",
        ))
        .expect("a fixed response builds")
}

fn text_response(
    status: StatusCode,
    text: &'static str,
    generation: Generation,
) -> Response<ProxyBody> {
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(text))
        .expect("a fixed response builds");
    insert_gate_headers(response.headers_mut(), generation);
    response
}

fn full(text: &'static str) -> ProxyBody {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_gate_admits_nothing_and_close_waits_for_admitted_requests() {
        let gate = GateControl::new(GateSettings::default());
        assert!(gate.admit().is_err(), "a new gate is closed");
        gate.open(Generation(7));
        let admitted = gate.admit().expect("open gate admits");
        assert_eq!(admitted.generation, Generation(7));
        let request = admitted.guard;
        let closing = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.close().await })
        };
        // Close has begun (or will) — a new request must be refused from now on.
        tokio::task::yield_now().await;
        while gate.state() != Gate::Closed {
            tokio::task::yield_now().await;
        }
        assert!(gate.admit().is_err());
        assert!(
            !closing.is_finished(),
            "close waits for the admitted request"
        );
        drop(request);
        assert_eq!(closing.await.unwrap(), 0);
    }

    #[test]
    fn a_static_site_serves_without_a_web_process_and_an_app_does_not() {
        let gate = GateControl::new(GateSettings::default());
        assert!(!gate.serving());
        let static_site = lockstep_config::Web {
            start: None,
            locations: [(
                "/".to_owned(),
                lockstep_config::Location {
                    root: Some("public".into()),
                    passthru: lockstep_config::Passthru::No,
                    index: vec!["index.html".into()],
                    expires: lockstep_config::Expires::Off,
                    allow: true,
                    scripts: false,
                    headers: Default::default(),
                    rules: Vec::new(),
                },
            )]
            .into(),
            socket_family: Default::default(),
        };
        gate.set_served(Some(Served::new("/app".into(), Vec::new(), &static_site)));
        assert!(gate.serving());
        let app = lockstep_config::Web {
            start: Some("x".into()),
            locations: Default::default(),
            socket_family: Default::default(),
        };
        gate.set_served(Some(Served::new("/app".into(), Vec::new(), &app)));
        assert!(!gate.serving(), "an app needs its web process");
        gate.set_upstream(Some(Upstream::Port(8000)));
        assert!(gate.serving());
    }

    #[tokio::test]
    async fn close_gives_up_after_the_drain_timeout() {
        let settings = GateSettings {
            drain_timeout_ms: 50,
            ..GateSettings::default()
        };
        let gate = GateControl::new(settings);
        gate.open(Generation(1));
        let _stuck = gate.admit().expect("admitted");
        assert_eq!(gate.close().await, 1);
    }
}
