//! The answers the edge makes itself: stored responses, nodes' answers cleaned up, errors.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::Ctx;
use crate::cache::store::Stored;
use crate::client::{Body, empty};
use crate::error::OriginError;
use crate::headers;

/// A stored response, with its current `Age`.
pub(super) fn serve(s: &Stored, head: bool, now: std::time::Instant) -> Response<Body> {
    let body = if head {
        empty()
    } else {
        Full::new(s.body.clone())
            .map_err(|never| match never {})
            .boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = s.status;
    *response.headers_mut() = s.headers.clone();
    let headers = response.headers_mut();
    headers.insert(header::AGE, HeaderValue::from(s.age(now).as_secs()));
    if s.status != StatusCode::NO_CONTENT && s.status != StatusCode::NOT_MODIFIED {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(s.body.len()));
    }
    response
}

/// A node's answer for the client: without hop-by-hop and gate headers.
pub(super) fn to_client(response: Response<Incoming>, head: bool) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::strip_gate_headers(&mut parts.headers);
    let body = if head { empty() } else { body.boxed() };
    Response::from_parts(parts, body)
}

/// The answer when a request waited `max_hold` for a closed environment.
pub(super) fn closed_response(ctx: &Ctx) -> Response<Body> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "This site is being deployed. Please retry in a few seconds.\n".into(),
    );
    let headers = response.headers_mut();
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(ctx.env.gate.retry_after()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The answer when no node answered and nothing stored stands in.
pub(super) fn error_response(ctx: &Ctx, error: &OriginError) -> Response<Body> {
    tracing::warn!(environment = %ctx.env.name, %error, "no answer from the origin");
    let message = match error {
        OriginError::AllClosed => return closed_response(ctx),
        OriginError::NoNode => "This site has no server to answer.\n",
        OriginError::Timeout(_) => "This site's servers took too long to answer.\n",
        OriginError::Connect(_) | OriginError::Transport(_) => {
            "This site's servers cannot be reached.\n"
        }
    };
    let mut response = text(error.status(), message.into());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if matches!(error, OriginError::NoNode) {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(ctx.env.gate.retry_after()),
        );
    }
    response
}

/// A redirect route's answer. A `Location` that is not a header value (a request path with bytes
/// a header cannot carry) is never sent: the client gets 400.
pub(super) fn redirect_response(code: StatusCode, location: &str, head: bool) -> Response<Body> {
    let Ok(value) = HeaderValue::from_str(location) else {
        return text(
            StatusCode::BAD_REQUEST,
            "This request's path cannot be redirected.\n".into(),
        );
    };
    let mut response = text(code, format!("Redirecting to {location}\n"));
    if head {
        *response.body_mut() = empty();
    }
    response.headers_mut().insert(header::LOCATION, value);
    response
}

pub(super) fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
