//! The admin API, for the controller: environments, gates, and `/metrics`. Every route
//! requires the bearer token.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::Edge;
use crate::error::RouteError;
use crate::wire::{EnvironmentRoute, ErrorBody, GateCommand};

pub(crate) fn router(edge: Arc<Edge>) -> axum::Router {
    axum::Router::new()
        .route("/v1/environments", get(list))
        .route(
            "/v1/environments/{env}",
            put(put_environment)
                .get(get_environment)
                .delete(delete_environment),
        )
        .route("/v1/environments/{env}/gate", post(set_gate))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(edge.clone(), authenticate))
        .with_state(edge)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        error(self.status(), self.to_string())
    }
}

async fn authenticate(State(edge): State<Arc<Edge>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let expected = edge.options.admin_token.as_bytes();
    let allowed = presented.is_some_and(|token| {
        !expected.is_empty() && constant_time_eq(token.trim().as_bytes(), expected)
    });
    if !allowed {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "this edge's admin API requires its bearer token".into(),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn list(State(edge): State<Arc<Edge>>) -> Response {
    Json(edge.environments()).into_response()
}

async fn get_environment(State(edge): State<Arc<Edge>>, Path(env): Path<String>) -> Response {
    match edge.environment(&env) {
        Some(view) => Json(view).into_response(),
        None => RouteError::UnknownEnvironment(env).into_response(),
    }
}

async fn put_environment(
    State(edge): State<Arc<Edge>>,
    Path(env): Path<String>,
    route: Result<Json<EnvironmentRoute>, JsonRejection>,
) -> Response {
    let Json(route) = match route {
        Ok(route) => route,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    match edge.put_environment(&env, route) {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn set_gate(
    State(edge): State<Arc<Edge>>,
    Path(env): Path<String>,
    command: Result<Json<GateCommand>, JsonRejection>,
) -> Response {
    let Json(command) = match command {
        Ok(command) => command,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    match edge.set_gate(&env, command) {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn delete_environment(State(edge): State<Arc<Edge>>, Path(env): Path<String>) -> Response {
    edge.delete_environment(&env);
    StatusCode::NO_CONTENT.into_response()
}

async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        edge.metrics_text(),
    )
        .into_response()
}
