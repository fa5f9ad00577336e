//! The admin API, for the controller alone (mutual TLS): environments, gates, `/metrics`, and
//! the renewal of the edge's certificate.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use lockstep_proto::nodes::Renewed;
use lockstep_transport::{Peer, RenewableIdentity, TransportError};

use crate::Edge;
use crate::error::RouteError;
use lockstep_proto::edge::{EnvironmentRoute, ErrorBody, GateCommand};

pub(crate) fn router(edge: Arc<Edge>, identity: Arc<RenewableIdentity>) -> axum::Router {
    let renewal = axum::Router::new()
        .route("/v1/certificate-request", post(certificate_request))
        .route("/v1/certificate", put(install_certificate))
        .with_state(identity);
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
        .with_state(edge)
        .merge(renewal)
        .layer(middleware::from_fn(controller_only))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        error(self.status(), self.to_string())
    }
}

async fn controller_only(request: Request, next: Next) -> Response {
    match request.extensions().get::<Peer>() {
        Some(Peer::Controller) => next.run(request).await,
        peer => {
            let caller = peer.map_or_else(|| "an unknown caller".to_owned(), Peer::to_string);
            error(
                StatusCode::FORBIDDEN,
                format!("this edge's admin API answers the controller only, not {caller}"),
            )
        }
    }
}

async fn certificate_request(State(identity): State<Arc<RenewableIdentity>>) -> Response {
    match identity.renewal_request() {
        Ok(request) => Json(request).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn install_certificate(
    State(identity): State<Arc<RenewableIdentity>>,
    Json(renewed): Json<Renewed>,
) -> Response {
    match identity.install(renewed.certificate) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ TransportError::Refused(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
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
