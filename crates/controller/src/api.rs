//! The controller's HTTP surface: git, the hooks' internal routes, the API and `/metrics`, and
//! the console's pages (`console`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::access::{Action, Principal, allowed, may_manage_project};
use crate::push::{HookCall, HookLine};
use crate::{Activity, Controller, ControllerError, DeployJob, Environment, StoreError};
use lockstep_proto::agent::EnvironmentType;

pub fn router(controller: Arc<Controller>) -> Router {
    let api = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/environments", get(environments))
        .route(
            "/api/v1/environments/{env}",
            get(environment).delete(delete_environment),
        )
        .route("/api/v1/environments/{env}/deploy", post(deploy))
        .route("/api/v1/environments/{env}/rollback", post(rollback))
        .route("/api/v1/environments/{env}/branch", post(branch))
        .route(
            "/api/v1/environments/{env}/backups",
            post(create_backup).get(list_backups),
        )
        .route(
            "/api/v1/environments/{env}/backups/{id}/restore",
            post(restore_backup),
        )
        .route("/api/v1/environments/{env}/sync", post(sync))
        .route("/api/v1/environments/{env}/replicate", post(replicate))
        .route("/api/v1/environments/{env}/logs", get(app_log))
        .route("/api/v1/environments/{env}/settings", post(set_setting))
        .route("/api/v1/variables", get(list_variables))
        .route(
            "/api/v1/variables/{name}",
            get(get_variable).put(set_variable).delete(delete_variable),
        )
        .route("/api/v1/environments/{env}/exec", post(exec))
        .route(
            "/api/v1/environments/{env}/services/client",
            post(service_client),
        )
        .route(
            "/api/v1/environments/{env}/services/{service}/promote",
            post(promote_service),
        )
        .route("/api/v1/users", get(list_users))
        .route(
            "/api/v1/users/{email}",
            post(add_user).patch(update_user).delete(delete_user),
        )
        .route("/api/v1/users/{email}/token", post(new_token))
        .route("/api/v1/nodes", get(list_nodes).post(add_node))
        .route("/api/v1/nodes/{name}", axum::routing::delete(remove_node))
        .route("/api/v1/activities", get(activities))
        .route("/api/v1/activities/{id}", get(activity))
        .route("/api/v1/activities/{id}/log", get(activity_log))
        .route("/api/v1/activities/{id}/cancel", post(cancel_activity))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            controller.clone(),
            identify,
        ));
    Router::new()
        .route("/git/{*path}", any(git))
        .route("/internal/hooks/{hook}", post(hook))
        // A host enrolling has no token but its join token, and checks what it is given
        // against the authority's fingerprint in it.
        .route("/v1/join", post(join))
        .route("/v1/cluster", get(cluster_contact))
        .merge(api)
        .merge(crate::console::router())
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(controller)
}

pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ControllerError> for ApiError {
    fn from(error: ControllerError) -> Self {
        let status = match &error {
            ControllerError::Store(
                StoreError::UnknownEnvironment(_) | StoreError::UnknownActivity(_),
            ) => StatusCode::NOT_FOUND,
            ControllerError::Promotion(_) => StatusCode::CONFLICT,
            ControllerError::NothingDeployed(_) | ControllerError::NoSuchApp { .. } => {
                StatusCode::NOT_FOUND
            }
            ControllerError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControllerError::Node(_) => StatusCode::CONFLICT,
            ControllerError::UnknownNode(_) => StatusCode::NOT_FOUND,
            ControllerError::BranchName(_) | ControllerError::Environment(_) => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        ApiError(status, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ControllerError::from(error).into()
    }
}

pub(crate) fn token_matches(expected: &str, presented: &str) -> bool {
    presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Identifies the caller by token; every API route then checks what the caller may do.
async fn identify(
    State(controller): State<Arc<Controller>>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    let principal = bearer(request.headers()).map(|token| controller.principal(token));
    match principal {
        Some(Ok(Some(principal))) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Some(Err(error)) => ApiError::from(error).into_response(),
        _ => ApiError(
            StatusCode::UNAUTHORIZED,
            "a valid API token is required (LOCKSTEP_TOKEN)".into(),
        )
        .into_response(),
    }
}

/// Refuses unless `principal` may do `action` on environment `env`.
pub(crate) fn check(
    controller: &Controller,
    principal: &Principal,
    action: Action,
    env: &str,
) -> Result<Environment, ApiError> {
    let environment = controller.store.environment(env)?;
    if allowed(principal, action, environment.kind) {
        Ok(environment)
    } else {
        Err(forbidden(principal, action, &environment))
    }
}

fn forbidden(principal: &Principal, action: Action, environment: &Environment) -> ApiError {
    let what = match action {
        Action::Read => "see",
        Action::Push => "push to",
        Action::Ssh => "open a shell on",
        Action::Manage => "deploy or change the settings and variables of",
    };
    ApiError(
        StatusCode::FORBIDDEN,
        format!(
            "{} may not {what} {} ({} environments need a role that allows it)",
            principal.name(),
            environment.name,
            environment.kind.as_str()
        ),
    )
}

fn check_project_admin(principal: &Principal) -> Result<(), ApiError> {
    if may_manage_project(principal) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("{} is not a project admin", principal.name()),
        ))
    }
}

/// Git authenticates with HTTP basic: any user name, a token as the password.
async fn git(
    State(controller): State<Arc<Controller>>,
    Path(path): Path<String>,
    request: Request,
) -> Response {
    let password = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| {
            v.split_once(':')
                .map(|(user, password)| (user.to_owned(), password.to_owned()))
        });
    let principal = password.and_then(|(_, token)| controller.principal(&token).ok().flatten());
    let Some(principal) = principal else {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, "Basic realm=\"Lockstep\"")
            .body(Body::from("a Lockstep token is required as the password\n"))
            .expect("a fixed response builds");
    };
    // Pushes are checked per branch in pre-receive; here, only whether the caller may push or
    // read anything at all.
    let pushing = path.ends_with("git-receive-pack")
        || request
            .uri()
            .query()
            .is_some_and(|q| q.contains("service=git-receive-pack"));
    let needed = if pushing { Action::Push } else { Action::Read };
    let kinds = [
        EnvironmentType::Production,
        EnvironmentType::Staging,
        EnvironmentType::Development,
    ];
    if !kinds.iter().any(|kind| allowed(&principal, needed, *kind)) {
        return ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not {} this project",
                principal.name(),
                if pushing { "push to" } else { "read" }
            ),
        )
        .into_response();
    }
    let user = principal.name().to_owned();
    let (parts, body) = request.into_parts();
    let path_info = format!("/{path}");
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let repos = controller.options.data_dir.join("repos");
    let contact = controller.hook_contact();
    crate::git::serve(
        crate::git::CgiRequest {
            repos_root: &repos,
            path_info: &path_info,
            method: &parts.method,
            query: &query,
            headers: &parts.headers,
            user: &user,
            contact: &contact,
        },
        body,
    )
    .await
}

async fn hook(
    State(controller): State<Arc<Controller>>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The token first: a caller without it gets nothing read, and nothing said about its body.
    if !bearer(&headers).is_some_and(|t| token_matches(&controller.hook_token, t)) {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "only the repository's hooks call this".into(),
        )
        .into_response();
    }
    // A hook's call is a list of refs: small.
    let Ok(body) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the hook's call is larger than 1 MiB".into(),
        )
        .into_response();
    };
    let call: HookCall = match serde_json::from_slice(&body) {
        Ok(call) => call,
        Err(error) => {
            return ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the hook's call is unreadable: {error}"),
            )
            .into_response();
        }
    };
    let (out, lines) = mpsc::unbounded_channel();
    match hook.as_str() {
        "pre-receive" => {
            tokio::spawn(controller.pre_receive(call, out));
        }
        "proc-receive" => {
            tokio::spawn(controller.proc_receive(call, out));
        }
        _ => return ApiError(StatusCode::NOT_FOUND, format!("no hook {hook}")).into_response(),
    }
    let stream = tokio_stream_lines(lines);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .expect("a fixed response builds")
}

fn tokio_stream_lines(
    mut lines: mpsc::UnboundedReceiver<HookLine>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    async_stream(move |sender| async move {
        while let Some(line) = lines.recv().await {
            let mut text = serde_json::to_string(&line).expect("hook lines serialise");
            text.push('\n');
            if sender.send(Ok(bytes::Bytes::from(text))).await.is_err() {
                break;
            }
        }
    })
}

/// A stream fed by a task, for answers produced bit by bit.
fn async_stream<F, Fut>(
    produce: F,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>>
where
    F: FnOnce(mpsc::Sender<Result<bytes::Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(produce(sender));
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

#[derive(Serialize)]
struct NodeStatus {
    name: String,
    agent: String,
    /// The first app's router, gate and release.
    router: Option<String>,
    /// Each app's, for a project with several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    apps: Vec<AppStatus>,
    gate: Option<lockstep_proto::agent::Gate>,
    active: Option<lockstep_proto::agent::ActiveRelease>,
    services: Vec<lockstep_proto::agent::ServiceStatus>,
    /// How the replicas on the node follow their primaries; asked only here, since it queries
    /// each server.
    replication: Vec<lockstep_proto::agent::ServiceReplication>,
    error: Option<String>,
}

#[derive(Serialize)]
struct AppStatus {
    app: String,
    router: Option<String>,
    gate: Option<lockstep_proto::agent::Gate>,
    active: Option<lockstep_proto::agent::ActiveRelease>,
    error: Option<String>,
}

/// Each app's instance on `node`, as it answers.
async fn app_statuses(
    controller: &Controller,
    node: &crate::Node,
    instances: &[crate::apps::AppInstance],
) -> Vec<AppStatus> {
    let mut apps = Vec::new();
    for instance in instances {
        let router = node.router_url(instance.app.as_deref());
        let (gate, active, error) = if router.is_none() {
            (None, None, Some("no release yet".to_owned()))
        } else {
            match controller
                .agents
                .status(&node.agent_url, &instance.instance)
                .await
            {
                Ok(status) => (Some(status.gate), status.active, None),
                Err(error) => (None, None, Some(error.to_string())),
            }
        };
        apps.push(AppStatus {
            app: instance.name.clone(),
            router,
            gate,
            active,
            error,
        });
    }
    apps
}

/// The replicas' state on a node, or nothing when it does not answer in time.
async fn replication_on(
    controller: &Controller,
    agent_url: &str,
    environment: &str,
) -> Vec<lockstep_proto::agent::ServiceReplication> {
    controller
        .agents
        .call(
            agent_url,
            environment,
            crate::agents::Call::ServiceReplication,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_default()
}

#[derive(Serialize)]
struct EnvironmentStatus {
    #[serde(flatten)]
    environment: Environment,
    url: String,
    nodes: Vec<NodeStatus>,
    running: Option<Activity>,
}

#[derive(Serialize)]
struct Status {
    project: String,
    git: String,
    environments: Vec<EnvironmentStatus>,
}

async fn environment_status(
    controller: &Controller,
    environment: Environment,
) -> Result<EnvironmentStatus, ApiError> {
    let instances = controller.serving_instances(&environment)?;
    let mut nodes = Vec::new();
    for node in controller.store.nodes(&environment.name)? {
        let first = instances.first();
        let router = first.and_then(|first| node.router_url(first.app.as_deref()));
        let apps = if instances.len() > 1 {
            app_statuses(controller, &node, &instances).await
        } else {
            Vec::new()
        };
        // A node that never received the environment has nothing to say yet.
        let (gate, active, services, replication, error) =
            if let (Some(first), Some(_)) = (first, &router) {
                let instance = first.instance.as_str();
                match controller.agents.status(&node.agent_url, instance).await {
                    Ok(status) => {
                        let replication = if status.services.is_empty() {
                            Vec::new()
                        } else {
                            replication_on(controller, &node.agent_url, instance).await
                        };
                        (
                            Some(status.gate),
                            status.active,
                            status.services,
                            replication,
                            None,
                        )
                    }
                    Err(error) => (None, None, Vec::new(), Vec::new(), Some(error.to_string())),
                }
            } else {
                (
                    None,
                    None,
                    Vec::new(),
                    Vec::new(),
                    Some("no release yet".to_owned()),
                )
            };
        nodes.push(NodeStatus {
            router,
            apps,
            name: node.name,
            agent: node.agent_url,
            gate,
            active,
            services,
            replication,
            error,
        });
    }
    let running = controller
        .store
        .activities(Some(&environment.name), 20)?
        .into_iter()
        .find(|a| a.state == "in_progress");
    Ok(EnvironmentStatus {
        url: format!("http://{}/", controller.host(&environment.name)),
        environment,
        nodes,
        running,
    })
}

async fn status(
    State(controller): State<Arc<Controller>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Status>, ApiError> {
    let mut environments = Vec::new();
    for environment in visible(&controller, &principal)? {
        environments.push(environment_status(&controller, environment).await?);
    }
    Ok(Json(Status {
        project: controller.options.project.clone(),
        git: controller.git_remote(),
        environments,
    }))
}

async fn environments(
    State(controller): State<Arc<Controller>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<Environment>>, ApiError> {
    Ok(Json(visible(&controller, &principal)?))
}

/// The environments the caller may see.
pub(crate) fn visible(
    controller: &Controller,
    principal: &Principal,
) -> Result<Vec<Environment>, ControllerError> {
    Ok(controller
        .store
        .environments()?
        .into_iter()
        .filter(|e| allowed(principal, Action::Read, e.kind))
        .collect())
}

async fn environment(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<EnvironmentStatus>, ApiError> {
    let environment = check(&controller, &principal, Action::Read, &env)?;
    Ok(Json(environment_status(&controller, environment).await?))
}

/// Redeploys what the environment serves, through the whole procedure.
pub(crate) async fn deploy(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Activity>, ApiError> {
    redeploy(&controller, &principal, &env, Redeploy::Current)
}

/// Deploys the release that served before the current one.
pub(crate) async fn rollback(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Activity>, ApiError> {
    redeploy(&controller, &principal, &env, Redeploy::Previous)
}

/// `lockstep env delete`: a development environment removed, with its data.
async fn delete_environment(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Activity>, ApiError> {
    check(&controller, &principal, Action::Read, &env)?;
    tracing::info!(environment = %env, by = %principal.name(), "deleting an environment");
    Ok(Json(controller.delete_environment(&principal, &env)?))
}

/// `lockstep backup create`.
pub(crate) async fn create_backup(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Activity>, ApiError> {
    check(&controller, &principal, Action::Read, &env)?;
    Ok(Json(controller.create_backup(&principal, &env)?))
}

/// `lockstep backup restore`.
async fn restore_backup(
    State(controller): State<Arc<Controller>>,
    Path((env, id)): Path<(String, String)>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Activity>, ApiError> {
    check(&controller, &principal, Action::Read, &env)?;
    Ok(Json(controller.restore_backup(&principal, &env, &id)?))
}

/// `lockstep env sync --data`.
#[derive(Deserialize)]
pub(crate) struct SyncRequest {
    #[serde(default)]
    pub(crate) code: bool,
    #[serde(default)]
    pub(crate) data: bool,
}

pub(crate) async fn sync(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
    Json(request): Json<SyncRequest>,
) -> Result<Json<Activity>, ApiError> {
    check(&controller, &principal, Action::Read, &env)?;
    Ok(Json(controller.sync(
        &principal,
        &env,
        request.code,
        request.data,
    )?))
}

#[derive(Deserialize)]
struct ReplicateRequest {
    from: String,
    #[serde(default)]
    force: bool,
    sanitize: Option<String>,
}

/// `lockstep env replicate`: another environment's data put in place of this one's.
async fn replicate(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
    Json(request): Json<ReplicateRequest>,
) -> Result<Json<Activity>, ApiError> {
    check(&controller, &principal, Action::Read, &env)?;
    check(&controller, &principal, Action::Read, &request.from)?;
    let activity = controller.replicate(
        &principal,
        &request.from,
        &env,
        request.force,
        request.sanitize,
    )?;
    Ok(Json(activity))
}

/// `lockstep backup list`.
async fn list_backups(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<crate::Backup>>, ApiError> {
    Ok(Json(controller.backups(&principal, &env)?))
}

#[derive(Deserialize)]
pub(crate) struct BranchRequest {
    /// The new branch, which names the environment.
    pub(crate) branch: String,
    #[serde(default = "clone_by_default")]
    pub(crate) clone_data: bool,
}

fn clone_by_default() -> bool {
    true
}

/// `lockstep env branch`: a development environment as a child of `env`.
pub(crate) async fn branch(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
    Json(request): Json<BranchRequest>,
) -> Result<Json<Activity>, ApiError> {
    check(&controller, &principal, Action::Read, &env)?;
    let activity = controller
        .branch(&principal, &env, &request.branch, request.clone_data)
        .await?;
    Ok(Json(activity))
}

enum Redeploy {
    Current,
    Previous,
}

fn redeploy(
    controller: &Arc<Controller>,
    principal: &Principal,
    env: &str,
    which: Redeploy,
) -> Result<Json<Activity>, ApiError> {
    let environment = check(controller, principal, Action::Manage, env)?;
    let (release, kind, description, missing) = match which {
        Redeploy::Current => (
            environment.serving,
            "deploy",
            "Redeploy of",
            "has no release yet; push a branch first",
        ),
        Redeploy::Previous => (
            environment.previous.clone(),
            "rollback",
            "Rollback to",
            "has no previous release to roll back to",
        ),
    };
    let Some(release) = release else {
        let message = match (which, &environment.previous) {
            (Redeploy::Current, Some(previous)) => format!(
                "{env} serves nothing: a deployment failed past close and left it closed; \
                 `lockstep rollback {env}` brings back {} (generation {}), or push again",
                lockstep_image::short_release(&previous.image),
                previous.generation
            ),
            _ => format!("{env} {missing}"),
        };
        return Err(ApiError(StatusCode::CONFLICT, message));
    };
    start(
        controller,
        kind,
        env,
        &release.image,
        &format!(
            "{description} {}",
            lockstep_image::short_release(&release.image)
        ),
    )
}

fn start(
    controller: &Arc<Controller>,
    kind: &str,
    env: &str,
    image: &str,
    description: &str,
) -> Result<Json<Activity>, ApiError> {
    let activity = controller.store.create_activity(kind, env, description)?;
    controller.store.set_activity_image(&activity.id, image)?;
    controller.enqueue(DeployJob {
        activity: activity.id.clone(),
        environment: env.to_owned(),
        image: image.to_owned(),
        rebuild_from: None,
        data: None,
    });
    Ok(Json(controller.store.activity(&activity.id)?))
}

#[derive(Deserialize)]
struct Setting {
    key: String,
    value: String,
}

const SETTINGS: &str = "on_hook_failure, closed_status, closed_mode, max_hold, grace, drain_timeout, build_timeout, web_start_timeout, strict_runtimes, rehearse";

/// `lockstep env set ENV KEY VALUE`: one setting of SPEC section 7.
async fn set_setting(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
    Json(setting): Json<Setting>,
) -> Result<Json<Environment>, ApiError> {
    let mut settings = check(&controller, &principal, Action::Manage, &env)?.settings;
    let bad = |what: &str| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("`{}` must be {what}, not `{}`", setting.key, setting.value),
        )
    };
    let yes_or_no = |value: &str| match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad("`true` or `false`")),
    };
    let seconds = |value: &str| {
        value
            .trim_end_matches('s')
            .parse::<u64>()
            .map_err(|_| bad("a number of seconds"))
    };
    match setting.key.as_str() {
        "on_hook_failure" => {
            settings.on_hook_failure =
                serde_json::from_value(serde_json::Value::String(setting.value.clone()))
                    .map_err(|_| bad("`rollback`, `open` or `stay-closed`"))?;
        }
        "closed_status" => {
            settings.closed_status = match setting.value.as_str() {
                "500" => 500,
                "503" => 503,
                _ => return Err(bad("503 or 500")),
            };
        }
        "closed_mode" => {
            if !["hold", "error"].contains(&setting.value.as_str()) {
                return Err(bad("`hold` or `error`"));
            }
            settings.closed_mode = setting.value.clone();
        }
        "max_hold" => settings.max_hold_secs = seconds(&setting.value)?,
        "grace" => settings.grace_secs = seconds(&setting.value)?,
        "drain_timeout" => settings.drain_timeout_secs = seconds(&setting.value)?,
        "build_timeout" => settings.build_timeout_secs = seconds(&setting.value)?,
        "web_start_timeout" => settings.web_start_timeout_secs = seconds(&setting.value)?,
        "strict_runtimes" => settings.strict_runtimes = yes_or_no(&setting.value)?,
        "rehearse" => settings.rehearse = yes_or_no(&setting.value)?,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("unknown setting `{other}`; settings are {SETTINGS}"),
            ));
        }
    }
    controller.store.set_settings(&env, &settings)?;
    // The nodes take gate settings at once; the rest applies to the next deployment.
    let nodes = controller.store.nodes(&env)?;
    if let Err(error) = controller.sync_edge().await {
        tracing::warn!(%error, "the edge did not take the new settings yet");
    }
    let instances = controller.serving_instances(&controller.store.environment(&env)?)?;
    if let Err(error) = controller
        .configure_instances(&env, &nodes, &instances)
        .await
    {
        tracing::warn!(%error, "a node did not take the new settings yet; it will at the next deployment");
    }
    Ok(Json(controller.store.environment(&env)?))
}

#[derive(Deserialize)]
struct ActivityQuery {
    environment: Option<String>,
    limit: Option<u32>,
}

async fn activities(
    State(controller): State<Arc<Controller>>,
    Query(query): Query<ActivityQuery>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<Activity>>, ApiError> {
    Ok(Json(visible_activities(
        &controller,
        &principal,
        query.environment.as_deref(),
        query.limit.unwrap_or(50),
    )?))
}

/// The newest `limit` activities (of `environment`, if given) that `principal` may see.
pub(crate) fn visible_activities(
    controller: &Controller,
    principal: &Principal,
    environment: Option<&str>,
    limit: u32,
) -> Result<Vec<Activity>, ControllerError> {
    // A rejected first push of a branch is an activity of an environment still pending.
    let known = controller.store.environments_and_pending()?;
    let kinds: std::collections::BTreeMap<&str, EnvironmentType> = known
        .iter()
        .filter(|e| allowed(principal, Action::Read, e.kind))
        .map(|e| (e.name.as_str(), e.kind))
        .collect();
    // Only development environments are deleted; their activities stay.
    let deleted_visible = allowed(principal, Action::Read, EnvironmentType::Development);
    Ok(controller
        .store
        .activities(environment, limit)?
        .into_iter()
        .filter(|a| {
            kinds.contains_key(a.environment.as_str())
                || (deleted_visible && !known.iter().any(|e| e.name == a.environment))
        })
        .collect())
}

async fn activity(
    State(controller): State<Arc<Controller>>,
    Path(id): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Activity>, ApiError> {
    Ok(Json(check_activity(
        &controller,
        &principal,
        Action::Read,
        &id,
    )?))
}

/// Activity `id`, if `principal` may do `action` on its environment; an environment deleted
/// since was a development one (no other is deleted), and its activities stay.
pub(crate) fn check_activity(
    controller: &Controller,
    principal: &Principal,
    action: Action,
    id: &str,
) -> Result<Activity, ApiError> {
    let activity = controller.store.activity(id)?;
    match controller
        .store
        .find_environment_named(&activity.environment)?
    {
        Some(_) => {
            check(controller, principal, action, &activity.environment)?;
        }
        None if allowed(principal, action, EnvironmentType::Development) => {}
        None => {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "{} may not see activity {id}: it was of a development environment",
                    principal.name()
                ),
            ));
        }
    }
    Ok(activity)
}

/// `lockstep activity cancel ID`: whoever may push to the environment may cancel its builds
/// and waiting deployments.
async fn cancel_activity(
    State(controller): State<Arc<Controller>>,
    Path(id): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Activity>, ApiError> {
    check_activity(&controller, &principal, Action::Push, &id)?;
    controller
        .cancel_activity(&id)
        .map_err(|error| ApiError(StatusCode::CONFLICT, error.to_string()))?;
    Ok(Json(controller.store.activity(&id)?))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
}

/// The activity's log; with `follow`, streamed until the activity ends.
async fn activity_log(
    State(controller): State<Arc<Controller>>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    check_activity(&controller, &principal, Action::Read, &id)?;
    let log = controller.store.log(&id)?;
    if !query.follow {
        return Ok(log.into_response());
    }
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from_stream(follow_log(controller, id, |chunk| chunk)))
        .expect("a fixed response builds"))
}

/// Activity `id`'s log as it grows, each new part as `frame` shapes it, until the activity
/// ends.
pub(crate) fn follow_log(
    controller: Arc<Controller>,
    id: String,
    frame: impl Fn(String) -> String + Send + 'static,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    async_stream(move |sender| async move {
        let mut shown = 0;
        loop {
            let (Ok(log), Ok(activity)) =
                (controller.store.log(&id), controller.store.activity(&id))
            else {
                return;
            };
            if log.len() > shown {
                let part = frame(log[shown..].to_owned());
                if sender.send(Ok(bytes::Bytes::from(part))).await.is_err() {
                    return;
                }
                shown = log.len();
            }
            if activity.state == "complete" || activity.state == "cancelled" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Where in an environment a request is for.
#[derive(Deserialize)]
struct Place {
    /// The node [default: the environment's first].
    node: Option<String>,
    /// The app, in a project with several [default: its first].
    app: Option<String>,
}

#[derive(Deserialize)]
struct AppLogQuery {
    #[serde(flatten)]
    place: Place,
    process: Option<String>,
}

/// An app process's log on one node of the environment (the first, unless named).
async fn app_log(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Query(query): Query<AppLogQuery>,
    Extension(principal): Extension<Principal>,
) -> Result<String, ApiError> {
    let environment = check(&controller, &principal, Action::Read, &env)?;
    let node = node_of(&controller, &env, query.place.node.as_deref())?;
    let instance = controller.serving_instance(&environment, query.place.app.as_deref())?;
    let process = query.process.as_deref().unwrap_or("web");
    let plain = !process.is_empty()
        && process
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !plain {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "`{process}` is not a process name: `web`, `worker-NAME`, `cron-NAME`, `hook-deploy`, `hook-post_deploy`, `service-NAME`"
            ),
        ));
    }
    controller
        .agents
        .log(&node.agent_url, &instance.instance, process)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("{}: {e:?}", node.name)))
}

async fn metrics(State(controller): State<Arc<Controller>>) -> impl IntoResponse {
    let activities = controller
        .store
        .activities(None, u32::MAX)
        .unwrap_or_default();
    let mut text = String::from(
        "# HELP lockstep_controller_activities Activities by type, state and result.\n# TYPE lockstep_controller_activities gauge\n",
    );
    let mut counts = std::collections::BTreeMap::new();
    for activity in &activities {
        *counts
            .entry((
                activity.kind.clone(),
                activity.state.clone(),
                activity.result.clone().unwrap_or_default(),
            ))
            .or_insert(0u64) += 1;
    }
    for ((kind, state, result), count) in counts {
        text.push_str(&format!(
            "lockstep_controller_activities{{type=\"{kind}\",state=\"{state}\",result=\"{result}\"}} {count}\n"
        ));
    }
    text.push_str("# EOF\n");
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

#[derive(Deserialize)]
pub(crate) struct VariableQuery {
    pub(crate) environment: Option<String>,
    #[serde(default)]
    pub(crate) no_redeploy: bool,
}

/// An environment's variables need its read role; the project's, a role on the project.
fn check_variables_read(
    controller: &Controller,
    principal: &Principal,
    env: Option<&str>,
) -> Result<(), ApiError> {
    match env {
        Some(env) => check(controller, principal, Action::Read, env).map(drop),
        None if crate::access::may_read_project(principal) => Ok(()),
        None => Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not see the project's variables: that needs a role on the project",
                principal.name()
            ),
        )),
    }
}

/// An environment's variables change with its admin role; the project's, as a project admin.
pub(crate) fn check_variables_change(
    controller: &Controller,
    principal: &Principal,
    env: Option<&str>,
) -> Result<(), ApiError> {
    match env {
        Some(env) => check(controller, principal, Action::Manage, env).map(drop),
        None => check_project_admin(principal),
    }
}

pub(crate) async fn list_variables(
    State(controller): State<Arc<Controller>>,
    Query(query): Query<VariableQuery>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<crate::Variable>>, ApiError> {
    check_variables_read(&controller, &principal, query.environment.as_deref())?;
    Ok(Json(
        controller.list_variables(query.environment.as_deref())?,
    ))
}

async fn get_variable(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    Query(query): Query<VariableQuery>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<crate::Variable>, ApiError> {
    check_variables_read(&controller, &principal, query.environment.as_deref())?;
    Ok(Json(
        controller.get_variable(query.environment.as_deref(), &name)?,
    ))
}

pub(crate) async fn set_variable(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    Extension(principal): Extension<Principal>,
    Json(input): Json<crate::SetVariable>,
) -> Result<Json<crate::VariableChange>, ApiError> {
    check_variables_change(&controller, &principal, input.environment.as_deref())?;
    Ok(Json(controller.set_variable(&name, input)?))
}

pub(crate) async fn delete_variable(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    Query(query): Query<VariableQuery>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<crate::VariableChange>, ApiError> {
    check_variables_change(&controller, &principal, query.environment.as_deref())?;
    Ok(Json(controller.delete_variable(
        query.environment.as_deref(),
        &name,
        query.no_redeploy,
    )?))
}

/// Nodes are the operator's: the admin token manages them, no user role does.
fn check_owner(principal: &Principal) -> Result<(), ApiError> {
    match principal {
        Principal::Owner => Ok(()),
        Principal::User { .. } => Err(ApiError(
            StatusCode::FORBIDDEN,
            "managing nodes needs the admin token".into(),
        )),
    }
}

async fn list_nodes(
    State(controller): State<Arc<Controller>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<lockstep_proto::nodes::NodeEntry>>, ApiError> {
    check_owner(&principal)?;
    Ok(Json(controller.list_nodes()?))
}

async fn add_node(
    State(controller): State<Arc<Controller>>,
    Extension(principal): Extension<Principal>,
    Json(node): Json<lockstep_proto::nodes::NewNode>,
) -> Result<Json<lockstep_proto::nodes::NodeAdded>, ApiError> {
    check_owner(&principal)?;
    Ok(Json(controller.add_node(&node.name, node.pool)?))
}

async fn remove_node(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_owner(&principal)?;
    controller.remove_node(&name).await?;
    Ok(Json(serde_json::json!({ "removed": name })))
}

async fn join(
    State(controller): State<Arc<Controller>>,
    Json(request): Json<lockstep_proto::nodes::JoinRequest>,
) -> Result<Json<lockstep_proto::nodes::Enrolled>, ApiError> {
    Ok(Json(controller.join(&request)?))
}

async fn cluster_contact(
    State(controller): State<Arc<Controller>>,
) -> Json<lockstep_proto::nodes::ClusterContact> {
    Json(controller.cluster_contact())
}

pub(crate) async fn list_users(
    State(controller): State<Arc<Controller>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<crate::User>>, ApiError> {
    check_project_admin(&principal)?;
    Ok(Json(controller.list_users()?))
}

pub(crate) async fn add_user(
    State(controller): State<Arc<Controller>>,
    Path(email): Path<String>,
    Extension(principal): Extension<Principal>,
    Json(change): Json<crate::UserChange>,
) -> Result<Json<crate::UserWithToken>, ApiError> {
    check_project_admin(&principal)?;
    Ok(Json(controller.add_user(&email, change).await?))
}

pub(crate) async fn update_user(
    State(controller): State<Arc<Controller>>,
    Path(email): Path<String>,
    Extension(principal): Extension<Principal>,
    Json(change): Json<crate::UserChange>,
) -> Result<Json<crate::User>, ApiError> {
    check_project_admin(&principal)?;
    Ok(Json(controller.update_user(&email, change).await?))
}

pub(crate) async fn delete_user(
    State(controller): State<Arc<Controller>>,
    Path(email): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_project_admin(&principal)?;
    controller.delete_user(&email).await?;
    Ok(Json(serde_json::json!({ "deleted": email })))
}

async fn new_token(
    State(controller): State<Arc<Controller>>,
    Path(email): Path<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<crate::UserWithToken>, ApiError> {
    check_project_admin(&principal)?;
    Ok(Json(controller.new_token(&email).await?))
}

#[derive(Deserialize)]
struct ExecQuery {
    #[serde(flatten)]
    place: Place,
    command: String,
}

/// `lockstep ssh`: a command in the app's runtime environment on one node.
async fn exec(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
    Json(query): Json<ExecQuery>,
) -> Result<Json<lockstep_proto::agent::ExecOutcome>, ApiError> {
    let ExecQuery { place, command } = query;
    run_on_node(&controller, &principal, &env, &place, |user| {
        NodeCommand::Exec(lockstep_proto::agent::ExecRequest { command, user })
    })
    .await
}

#[derive(Deserialize)]
struct ServiceClientQuery {
    #[serde(flatten)]
    place: Place,
    relationship: Option<String>,
    #[serde(flatten)]
    client: lockstep_proto::agent::ServiceClient,
}

/// `lockstep sql`, `lockstep redis`: a service's client through a relationship, on one node.
async fn service_client(
    State(controller): State<Arc<Controller>>,
    Path(env): Path<String>,
    Extension(principal): Extension<Principal>,
    Json(query): Json<ServiceClientQuery>,
) -> Result<Json<lockstep_proto::agent::ExecOutcome>, ApiError> {
    let ServiceClientQuery {
        place,
        relationship,
        client,
    } = query;
    run_on_node(&controller, &principal, &env, &place, |user| {
        NodeCommand::ServiceClient(lockstep_proto::agent::ServiceClientRequest {
            relationship,
            client,
            user,
        })
    })
    .await
}

#[derive(Deserialize)]
struct PromoteQuery {
    node: Option<String>,
}

/// `lockstep service promote`: a replica becomes the primary of a service whose primary is gone.
async fn promote_service(
    State(controller): State<Arc<Controller>>,
    Path((env, service)): Path<(String, String)>,
    Extension(principal): Extension<Principal>,
    Json(query): Json<PromoteQuery>,
) -> Result<Json<crate::services::PromoteOutcome>, ApiError> {
    check(&controller, &principal, Action::Manage, &env)?;
    tracing::info!(environment = %env, %service, by = %principal.name(), "promoting a replica");
    let outcome = controller
        .promote(&env, &service, query.node.as_deref())
        .await?;
    Ok(Json(outcome))
}

/// What runs in the app's runtime environment on a node for a user.
enum NodeCommand {
    Exec(lockstep_proto::agent::ExecRequest),
    ServiceClient(lockstep_proto::agent::ServiceClientRequest),
}

/// Runs `command` (made with the caller's name) at `place` of `env`, for a caller with the role
/// `lockstep ssh` needs: it reaches the app's data.
async fn run_on_node(
    controller: &Controller,
    principal: &Principal,
    env: &str,
    place: &Place,
    command: impl FnOnce(String) -> NodeCommand,
) -> Result<Json<lockstep_proto::agent::ExecOutcome>, ApiError> {
    let environment = check(controller, principal, Action::Ssh, env)?;
    let instance = controller.serving_instance(&environment, place.app.as_deref())?;
    check_app_ssh_access(controller, principal, &environment, &instance)?;
    let node = node_of(controller, env, place.node.as_deref())?;
    let command = command(principal.name().to_owned());
    let call = match &command {
        NodeCommand::Exec(request) => crate::agents::Call::Exec(request),
        NodeCommand::ServiceClient(request) => crate::agents::Call::ServiceClient(request),
    };
    controller
        .agents
        .call(
            &node.agent_url,
            &instance.instance,
            call,
            Duration::from_secs(600),
        )
        .await
        .map(Json)
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("{}: {e}", node.name)))
}

/// The app's own `access.ssh` may ask for more than the contributor role the table needs.
fn check_app_ssh_access(
    controller: &Controller,
    principal: &Principal,
    environment: &Environment,
    instance: &crate::apps::AppInstance,
) -> Result<(), ApiError> {
    let Principal::User { roles, .. } = principal else {
        return Ok(());
    };
    let least = match controller
        .images
        .manifest(&instance.image)
        .map(|m| m.info.app().access.ssh)
    {
        Ok(lockstep_config::Role::Admin) => crate::access::Role::Admin,
        Ok(lockstep_config::Role::Viewer) => crate::access::Role::Viewer,
        _ => crate::access::Role::Contributor,
    };
    if roles.project_admin || roles.on(environment.kind).is_some_and(|role| role >= least) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not open a shell on {}: the app's access.ssh asks for {least:?}",
                principal.name(),
                environment.name
            ),
        ))
    }
}

/// A node of the environment: the one named, or else the first in cluster order.
fn node_of(
    controller: &Controller,
    env: &str,
    name: Option<&str>,
) -> Result<crate::Node, ApiError> {
    let nodes = controller.store.nodes(env)?;
    let node = match name {
        Some(name) => nodes.into_iter().find(|n| n.name == name),
        None => nodes.into_iter().next(),
    };
    node.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("{env} has no node {}", name.unwrap_or_default()),
        )
    })
}
