//! The edge's errors: a route the admin API refuses, and an origin that did not answer.

use std::time::Duration;

use axum::http::StatusCode;

/// Why `PUT /v1/environments/{env}` refused a route.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("environment name {0:?} must be 1-64 characters of a-z, 0-9, '-', '_' or '.'")]
    BadName(String),
    #[error("host {0:?} is not a host name")]
    BadHost(String),
    #[error("host {host:?} already belongs to environment {owner:?}")]
    HostTaken { host: String, owner: String },
    #[error("node {0:?} must be an http:// URL with a host and port, like http://127.0.0.1:8080")]
    BadNode(String),
    #[error("app name {0:?} in app_nodes must be 1-64 ASCII letters, digits, '-' or '_'")]
    BadApp(String),
    #[error("cache.cookies entry {pattern:?} is not a valid /regex/: {reason}")]
    BadCookieRegex { pattern: String, reason: String },
    #[error(
        "cache.headers cannot list {0:?}: use cache.cookies for cookies; encodings are handled by the edge"
    )]
    ForbiddenHeader(String),
    #[error("cache.headers entry {0:?} is not a header name")]
    BadHeader(String),
    #[error(transparent)]
    Routes(#[from] lockstep_routes::RouteError),
    #[error("no environment {0:?} on this edge")]
    UnknownEnvironment(String),
}

impl RouteError {
    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::HostTaken { .. } => StatusCode::CONFLICT,
            RouteError::UnknownEnvironment(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why a request could not get an answer from any node of its environment.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("the environment has no node")]
    NoNode,
    #[error("no node accepted a connection: {0}")]
    Connect(String),
    #[error("the node did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection to the node failed: {0}")]
    Transport(String),
    /// Every node answered that its gate is closed, and the request can be retried later.
    #[error("every node is closed")]
    AllClosed,
}

impl OriginError {
    /// The status a client gets when no stored response can stand in.
    pub fn status(&self) -> StatusCode {
        match self {
            OriginError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            OriginError::NoNode | OriginError::AllClosed => StatusCode::SERVICE_UNAVAILABLE,
            OriginError::Connect(_) | OriginError::Transport(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The label of the origin errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            OriginError::NoNode => "no_node",
            OriginError::Connect(_) => "connect",
            OriginError::Timeout(_) => "timeout",
            OriginError::Transport(_) => "transport",
            OriginError::AllClosed => "closed",
        }
    }
}
