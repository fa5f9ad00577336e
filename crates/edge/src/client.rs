//! Requests to the nodes: a pooled keep-alive client, the choice of node, retries, and what the
//! nodes' answers teach about their gates.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, request};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lockstep_proto::Generation;
use lockstep_proto::agent::{GATE_HEADER, GATE_PATH, GENERATION_HEADER};

use crate::error::OriginError;
use crate::gate::{Answer, Gate};
use crate::hold::Turn;
use crate::metrics::Metrics;

/// The body type of every request and response the edge sends.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A node's answer, with what it said of its gate.
pub(crate) struct Reply {
    pub response: Response<Incoming>,
    pub generation: Option<Generation>,
}

/// How to send one request.
pub(crate) struct Dispatch {
    pub environment: String,
    /// The app whose routers take the request (`None`: the first app's).
    pub app: Option<String>,
    /// Forward to closed nodes too, and return a closed node's answer at once (`closed_mode:
    /// error`).
    pub any_node: bool,
    /// A released request's turn, handed back once the request has started.
    pub turn: Option<Turn>,
}

pub(crate) struct Origin {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Origin {
    /// A client of the nodes' routers: over mutual TLS with `tls` (the edge's certificate) for
    /// `https://` routers, in plain HTTP for others.
    pub(crate) fn new(
        timeout: Duration,
        connect_timeout: Duration,
        metrics: Arc<Metrics>,
        tls: rustls::ClientConfig,
    ) -> Origin {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Origin {
            client,
            timeout,
            metrics,
        }
    }

    /// Sends a request to its app's routers: the next open one first, then another one when it
    /// cannot connect (idempotent requests without a body) or answers closed (any request
    /// without a body: a closed router admitted nothing).
    pub(crate) async fn send(
        &self,
        gate: &Gate,
        parts: &request::Parts,
        mut body: Option<Incoming>,
        mut how: Dispatch,
    ) -> Result<Reply, OriginError> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let idempotent = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let mut tried: Vec<String> = Vec::new();
        let mut closed = false;
        let mut last_error = None;
        while let Some(target) = gate.pick(how.app.as_deref(), &tried, how.any_node) {
            tried.push(target.url.clone());
            let resend = body.is_none();
            let mut request = Request::from_parts(
                parts.clone(),
                match body.take() {
                    Some(body) => body.boxed(),
                    None => empty(),
                },
            );
            *request.uri_mut() = match format!("{}{path}", target.url).parse() {
                Ok(uri) => uri,
                Err(_) => return Err(OriginError::Transport(format!("bad path {path:?}"))),
            };
            let result = {
                let mut attempt = pin!(tokio::time::timeout(
                    self.timeout,
                    self.client.request(request)
                ));
                poll_fn(|cx| {
                    let polled = attempt.as_mut().poll(cx);
                    // The request has started: the next held request may go.
                    how.turn.take();
                    polled
                })
                .await
            };
            let response = match result {
                Err(_) => {
                    self.error(&how, &target.url, "timeout");
                    return Err(OriginError::Timeout(self.timeout));
                }
                Ok(Err(error)) if error.is_connect() => {
                    self.error(&how, &target.url, "connect");
                    let message = error_chain(&error);
                    tracing::warn!(node = %target.url, error = %message, "cannot connect to node");
                    gate.learn(&target.url, Answer::Down(message.clone()), None);
                    last_error = Some(OriginError::Connect(message));
                    if resend && idempotent {
                        continue;
                    }
                    break;
                }
                Ok(Err(error)) => {
                    self.error(&how, &target.url, "transport");
                    let message = error_chain(&error);
                    tracing::warn!(node = %target.url, error = %message, "node request failed");
                    if resend && idempotent {
                        last_error = Some(OriginError::Transport(message));
                        continue;
                    }
                    // The node may have acted on it: never sent again, even after closed answers.
                    return Err(OriginError::Transport(message));
                }
                Ok(Ok(response)) => response,
            };
            let answer = gate_answer(response.headers());
            let generation = match &answer {
                Answer::Open(generation) => *generation,
                _ => None,
            };
            let is_closed = matches!(answer, Answer::Closed { .. });
            gate.learn(&target.url, answer, None);
            if is_closed {
                self.error(&how, &target.url, "closed");
                if resend && !how.any_node {
                    closed = true;
                    continue;
                }
            } else if response.status().is_server_error() {
                self.error(&how, &target.url, "status_5xx");
            }
            return Ok(Reply {
                response,
                generation,
            });
        }
        if closed {
            return Err(OriginError::AllClosed);
        }
        Err(last_error.unwrap_or(OriginError::NoNode))
    }

    /// Asks a node router for its gate: the active health check.
    pub(crate) async fn check(&self, url: &str, limit: Duration) -> Answer {
        let uri = match format!("{url}{GATE_PATH}").parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(error) => return Answer::Down(error.to_string()),
        };
        let request = Request::get(uri)
            .body(empty())
            .expect("a GET request builds");
        let answered = tokio::time::timeout(limit, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            // A plain HTTP origin, with no node router in front, knows no gate path: it is up,
            // and open with no generation.
            if status == http::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() && status != http::StatusCode::SERVICE_UNAVAILABLE {
                return Err(format!("gate check answered {status}"));
            }
            serde_json::from_slice::<lockstep_proto::agent::Gate>(&body)
                .map(Some)
                .map_err(|e| format!("gate check answered no gate: {e}"))
        })
        .await;
        match answered {
            Err(_) => Answer::Down(format!("gate check timed out after {limit:?}")),
            Ok(Err(error)) => Answer::Down(error),
            Ok(Ok(None)) => Answer::Open(None),
            Ok(Ok(Some(lockstep_proto::agent::Gate::Open { generation }))) => {
                Answer::Open(Some(generation))
            }
            Ok(Ok(Some(lockstep_proto::agent::Gate::Closed))) => {
                Answer::Closed { retry_after: None }
            }
        }
    }

    fn error(&self, how: &Dispatch, node: &str, kind: &str) {
        self.metrics.origin_error(&how.environment, node, kind);
    }
}

/// What a node's answer says of its gate.
fn gate_answer(headers: &http::HeaderMap) -> Answer {
    match headers.get(GATE_HEADER).and_then(|v| v.to_str().ok()) {
        Some(v) if v.eq_ignore_ascii_case("open") => Answer::Open(
            headers
                .get(GENERATION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .map(Generation),
        ),
        Some(v) if v.eq_ignore_ascii_case("closed") => Answer::Closed {
            retry_after: headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok()),
        },
        _ => Answer::Answered,
    }
}

/// An error with its causes, which is where hyper puts the useful part.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
