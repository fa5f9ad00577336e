//! The agent's HTTP API, served over mutual TLS (`lockstep_transport::serve`). Every route,
//! `/metrics` included, answers the controller only: another node's certificate is refused.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use lockstep_proto::ImageId;
use lockstep_proto::agent::{
    Closed, HookKind, HookOutcome, HookRequest, InstanceConfig, InstanceStatus, StageRequest,
    Staged, Step, SwapRequest,
};

use lockstep_proto::nodes::{RenewalRequest, Renewed, RevokedCertificates};
use lockstep_transport::Peer;

use crate::Agent;
use crate::error::AgentError;

type Answer<T> = Result<Json<T>, AgentError>;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/instances", get(list))
        .route(
            "/v1/environments/{env}",
            axum::routing::delete(delete_environment),
        )
        .route("/v1/instances/{env}", put(configure).get(status))
        .route("/v1/instances/{env}/images/{image}", put(stage))
        .route("/v1/instances/{env}/quiesce", post(quiesce))
        .route("/v1/instances/{env}/close", post(close))
        .route("/v1/instances/{env}/swap", post(swap))
        .route("/v1/instances/{env}/hooks", post(run_hook))
        .route(
            "/v1/instances/{env}/hooks/{deployment}/{hook}",
            get(hook_outcome),
        )
        .route("/v1/instances/{env}/rehearsal", post(rehearse))
        .route("/v1/instances/{env}/open", post(open))
        .route("/v1/instances/{env}/background", post(background))
        .route("/v1/instances/{env}/crons/{name}/run", post(run_cron))
        .route("/v1/instances/{env}/logs/{process}", get(log))
        .route("/v1/instances/{env}/users", put(users))
        .route("/v1/instances/{env}/services", put(services))
        .route("/v1/instances/{env}/services/client", post(service_client))
        .route(
            "/v1/instances/{env}/services/replication",
            get(service_replication),
        )
        .route(
            "/v1/instances/{env}/services/{service}/snapshot",
            post(service_snapshot),
        )
        .route(
            "/v1/instances/{env}/services/{service}/data",
            put(service_restore).delete(service_discard),
        )
        .route(
            "/v1/instances/{env}/services/{service}/start",
            post(service_start),
        )
        .route("/v1/instances/{env}/exec", post(exec))
        .route("/v1/certificate-request", post(certificate_request))
        .route("/v1/certificate", put(install_certificate))
        .route("/v1/revoked-certificates", put(revoke_certificates))
        .layer(axum::middleware::from_fn_with_state(
            agent.clone(),
            authenticate,
        ))
        // Images are streamed to disk with their own limit; JSON bodies are small.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(agent)
}

async fn authenticate(State(agent): State<Arc<Agent>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Peer>();
    if peer == Some(&Peer::Controller) {
        return next.run(request).await;
    }
    agent.context.metrics.command("-", "unauthenticated", false);
    let caller = peer.map_or_else(|| "an unknown caller".to_owned(), Peer::to_string);
    (
        StatusCode::FORBIDDEN,
        Json(lockstep_proto::agent::ApiError {
            error: format!("this agent answers the controller only, not {caller}"),
        }),
    )
        .into_response()
}

/// A fresh key's certificate request, for the controller to renew this node's certificate.
async fn certificate_request(State(agent): State<Arc<Agent>>) -> Answer<RenewalRequest> {
    Ok(Json(agent.identity.renewal_request()?))
}

async fn install_certificate(
    State(agent): State<Arc<Agent>>,
    Json(renewed): Json<Renewed>,
) -> Result<StatusCode, AgentError> {
    agent.identity.install(renewed.certificate)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The certificates of hosts removed from the project: the router and this API refuse them.
async fn revoke_certificates(
    State(agent): State<Arc<Agent>>,
    Json(revoked): Json<RevokedCertificates>,
) -> Result<StatusCode, AgentError> {
    agent.identity.revoke(revoked)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn metrics(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        agent.context.metrics.encode(),
    )
}

async fn list(State(agent): State<Arc<Agent>>) -> Json<Vec<String>> {
    Json(agent.instance_names().await)
}

async fn configure(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(config): Json<InstanceConfig>,
) -> Answer<InstanceStatus> {
    agent.configure(&env, config).await.map(Json)
}

async fn status(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
) -> Answer<InstanceStatus> {
    Ok(Json(agent.instance(&env).await?.status().await))
}

async fn stage(
    State(agent): State<Arc<Agent>>,
    Path((env, image)): Path<(String, String)>,
    Json(request): Json<StageRequest>,
) -> Answer<Staged> {
    let instance = agent.instance(&env).await?;
    let result = match image.parse::<ImageId>() {
        Ok(image) => instance.stage(&image, &request).await,
        Err(invalid) => Err(invalid.into()),
    };
    agent.context.metrics.command(&env, "stage", result.is_ok());
    result.map(Json)
}

/// An answer to a request whose streamed body the handler may not have read to its end (a
/// refused restore): the connection closes after it, since the server will not read another
/// request from it, and a client that kept it would send its next one into a connection being
/// closed.
fn closing(answer: impl IntoResponse) -> Response {
    let mut response = answer.into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

async fn quiesce(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(step): Json<Step>,
) -> Answer<InstanceStatus> {
    let instance = agent.instance(&env).await?;
    let result = instance.quiesce(&step).await;
    agent
        .context
        .metrics
        .command(&env, "quiesce", result.is_ok());
    result?;
    Ok(Json(instance.status().await))
}

async fn close(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(step): Json<Step>,
) -> Answer<Closed> {
    let instance = agent.instance(&env).await?;
    let result = instance.close(&step).await;
    agent.context.metrics.command(&env, "close", result.is_ok());
    result.map(Json)
}

async fn swap(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(request): Json<SwapRequest>,
) -> Answer<InstanceStatus> {
    let instance = agent.instance(&env).await?;
    let result = instance.swap(&request).await;
    agent.context.metrics.command(&env, "swap", result.is_ok());
    result.map(Json)
}

async fn run_hook(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(request): Json<HookRequest>,
) -> Answer<HookOutcome> {
    let instance = agent.instance(&env).await?;
    let result = instance.run_hook(&request).await;
    agent.context.metrics.command(&env, "hook", result.is_ok());
    result.map(Json)
}

async fn hook_outcome(
    State(agent): State<Arc<Agent>>,
    Path((env, deployment, hook)): Path<(String, String, String)>,
) -> Answer<HookOutcome> {
    let hook = match hook.as_str() {
        "deploy" => HookKind::Deploy,
        "post_deploy" => HookKind::PostDeploy,
        other => return Err(AgentError::BadRequest(format!("`{other}` is not a hook"))),
    };
    agent
        .instance(&env)
        .await?
        .hook_outcome(&deployment, hook)?
        .map(Json)
        .ok_or_else(|| {
            AgentError::Refused(format!(
                "no {} hook was run for deployment {deployment}",
                hook.as_str()
            ))
        })
}

async fn open(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(step): Json<Step>,
) -> Answer<InstanceStatus> {
    let instance = agent.instance(&env).await?;
    let result = instance.open(&step).await;
    agent.context.metrics.command(&env, "open", result.is_ok());
    result?;
    Ok(Json(instance.status().await))
}

async fn background(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(step): Json<Step>,
) -> Answer<InstanceStatus> {
    let instance = agent.instance(&env).await?;
    let result = instance.start_background(&step).await;
    agent
        .context
        .metrics
        .command(&env, "background", result.is_ok());
    result?;
    Ok(Json(instance.status().await))
}

async fn run_cron(
    State(agent): State<Arc<Agent>>,
    Path((env, name)): Path<(String, String)>,
) -> Result<StatusCode, AgentError> {
    agent.instance(&env).await?.run_cron(&name).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(serde::Deserialize)]
struct LogQuery {
    bytes: Option<u64>,
}

async fn log(
    State(agent): State<Arc<Agent>>,
    Path((env, process)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> Result<String, AgentError> {
    agent
        .instance(&env)
        .await?
        .log(&process, query.bytes.unwrap_or(64 * 1024))
}

async fn services(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(specs): Json<Vec<lockstep_proto::agent::ServiceSpec>>,
) -> Answer<Vec<lockstep_proto::agent::ServiceStatus>> {
    Ok(Json(
        agent.instance(&env).await?.ensure_services(specs).await?,
    ))
}

/// Removes an environment from this node: its instances and its services, with their data.
async fn delete_environment(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
) -> Answer<Vec<String>> {
    Ok(Json(agent.delete_environment(&env).await?))
}

/// A consistent snapshot of a service whose primary is here, as the body.
async fn service_snapshot(
    State(agent): State<Arc<Agent>>,
    Path((env, service)): Path<(String, String)>,
) -> Result<Response, AgentError> {
    let snapshot = agent
        .instance(&env)
        .await?
        .snapshot_service(&service)
        .await?;
    // Streamed as it is taken: its length is known at its end.
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(snapshot.into_stream()))
        .expect("a fixed response builds"))
}

/// Replaces a service's data with the snapshot in the body.
async fn service_restore(
    State(agent): State<Arc<Agent>>,
    Path((env, service)): Path<(String, String)>,
    body: Body,
) -> Response {
    let restored = async {
        let instance = agent.instance(&env).await?;
        let statuses = instance
            .restore_service(&service, body.into_data_stream())
            .await?;
        Ok::<_, AgentError>(Json(statuses))
    };
    closing(restored.await)
}

/// Stops a replica and removes its data, before its primary's is replaced.
async fn service_discard(
    State(agent): State<Arc<Agent>>,
    Path((env, service)): Path<(String, String)>,
) -> Answer<Vec<lockstep_proto::agent::ServiceStatus>> {
    let instance = agent.instance(&env).await?;
    Ok(Json(instance.discard_replica(&service).await?))
}

/// Starts a service's server on this node unless it runs.
async fn service_start(
    State(agent): State<Arc<Agent>>,
    Path((env, service)): Path<(String, String)>,
) -> Answer<Vec<lockstep_proto::agent::ServiceStatus>> {
    let instance = agent.instance(&env).await?;
    Ok(Json(instance.start_service(&service).await?))
}

/// A staged release's deploy hook against a scratch copy of the environment's data.
async fn rehearse(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(request): Json<lockstep_proto::agent::RehearsalRequest>,
) -> Answer<HookOutcome> {
    let instance = agent.instance(&env).await?;
    let result = instance.rehearse(&request).await;
    agent
        .context
        .metrics
        .command(&env, "rehearse", result.is_ok());
    result.map(Json)
}

async fn service_client(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(request): Json<lockstep_proto::agent::ServiceClientRequest>,
) -> Answer<lockstep_proto::agent::ExecOutcome> {
    Ok(Json(
        agent.instance(&env).await?.service_client(&request).await?,
    ))
}

async fn service_replication(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
) -> Answer<Vec<lockstep_proto::agent::ServiceReplication>> {
    Ok(Json(
        agent.instance(&env).await?.service_replication().await?,
    ))
}

async fn users(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(users): Json<Vec<lockstep_proto::agent::NodeUser>>,
) -> Answer<serde_json::Value> {
    let count = users.len();
    agent.instance(&env).await?.set_users(users).await?;
    Ok(Json(serde_json::json!({ "users": count })))
}

async fn exec(
    State(agent): State<Arc<Agent>>,
    Path(env): Path<String>,
    Json(request): Json<lockstep_proto::agent::ExecRequest>,
) -> Answer<lockstep_proto::agent::ExecOutcome> {
    agent.instance(&env).await?.exec(&request).await.map(Json)
}
