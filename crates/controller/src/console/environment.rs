//! An environment's page: where it is served, what it runs, its settings, services, nodes and
//! recent activities; and its actions (redeploy, rollback, sync, branch, backup), each behind a
//! confirmation page, carried out by the API's own handlers with their permission checks. A
//! button shows only for a viewer whose role allows its action.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use lockstep_image::short_release;
use lockstep_proto::agent::EnvironmentType;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::page;
use super::session::Viewer;
use super::tree::EnvironmentState;
use super::{failure, refused};
use crate::access::{Action, allowed};
use crate::api::{self, ApiError};
use crate::{Activity, Controller, Environment};

/// The actions of an environment's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvironmentAction {
    Redeploy,
    Rollback,
    Sync,
    Branch,
    Backup,
}

impl EnvironmentAction {
    const ALL: [EnvironmentAction; 5] = [
        EnvironmentAction::Redeploy,
        EnvironmentAction::Rollback,
        EnvironmentAction::Sync,
        EnvironmentAction::Branch,
        EnvironmentAction::Backup,
    ];

    fn path(self) -> &'static str {
        match self {
            EnvironmentAction::Redeploy => "redeploy",
            EnvironmentAction::Rollback => "rollback",
            EnvironmentAction::Sync => "sync",
            EnvironmentAction::Branch => "branch",
            EnvironmentAction::Backup => "backup",
        }
    }

    fn from_path(path: &str) -> Option<EnvironmentAction> {
        EnvironmentAction::ALL
            .into_iter()
            .find(|action| action.path() == path)
    }

    fn label(self) -> &'static str {
        match self {
            EnvironmentAction::Redeploy => "Redeploy",
            EnvironmentAction::Rollback => "Roll back",
            EnvironmentAction::Sync => "Sync from parent",
            EnvironmentAction::Branch => "Branch",
            EnvironmentAction::Backup => "Back up",
        }
    }

    /// Whether the environment's page offers the action to `viewer`: the role the API will
    /// ask for, and what the environment has to act on.
    fn offered(self, viewer: &Viewer, environment: &Environment) -> bool {
        let may = |action| allowed(&viewer.principal, action, environment.kind);
        match self {
            EnvironmentAction::Redeploy => may(Action::Manage) && environment.serving.is_some(),
            EnvironmentAction::Rollback => may(Action::Manage) && environment.previous.is_some(),
            // Code with the push role; data needs the admin role, and its box shows only then.
            EnvironmentAction::Sync => may(Action::Push) && environment.parent.is_some(),
            EnvironmentAction::Branch => {
                may(Action::Read)
                    && allowed(
                        &viewer.principal,
                        Action::Push,
                        EnvironmentType::Development,
                    )
            }
            EnvironmentAction::Backup => may(Action::Manage) && environment.serving.is_some(),
        }
    }

    /// What the confirmation page says the action does.
    fn consequence(self, environment: &Environment) -> String {
        let name = &environment.name;
        match self {
            EnvironmentAction::Redeploy => format!(
                "{name} is deployed again with the release it serves: it closes for the switch, as for a push."
            ),
            EnvironmentAction::Rollback => format!(
                "{name} is deployed with the release it served before ({}).",
                environment
                    .previous
                    .as_ref()
                    .map(|release| short_release(&release.image))
                    .unwrap_or_default()
            ),
            EnvironmentAction::Sync => format!(
                "{name} takes what its parent, {}, has: its code is merged, and its data replaced if you tick it.",
                environment.parent.as_deref().unwrap_or_default()
            ),
            EnvironmentAction::Branch => format!(
                "A new development environment is made as a child of {name}, with a copy of its data."
            ),
            EnvironmentAction::Backup => format!(
                "A consistent snapshot of {name}'s services and a copy of its storage are kept by the controller; {name} keeps serving."
            ),
        }
    }
}

pub(crate) async fn environment_page(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    viewer: Viewer,
) -> Response {
    let environment = match api::check(&controller, &viewer.principal, Action::Read, &name) {
        Ok(environment) => environment,
        Err(error) => return refused(&viewer, error),
    };
    match render(&controller, &viewer, &environment) {
        Ok(body) => page(&name, Some(&viewer), body).into_response(),
        Err(error) => failure(&viewer, error),
    }
}

fn render(
    controller: &Controller,
    viewer: &Viewer,
    environment: &Environment,
) -> Result<Markup, crate::ControllerError> {
    let name = &environment.name;
    let nodes = controller.store.nodes(name)?;
    let services = controller.store.services(name)?;
    let recent = api::visible_activities(controller, &viewer.principal, Some(name), 10)?;
    let running = recent.iter().find(|a| a.state == "in_progress");
    let settings = serde_json::to_value(&environment.settings).unwrap_or_default();
    let url = format!("http://{}/", controller.host(name));
    Ok(html! {
        h1 { (name) " " (EnvironmentState::of(environment, running).badge()) }
        dl.facts {
            dt { "URL" } dd { a href=(url) { (url) } }
            dt { "Type" } dd { (environment.kind.as_str()) }
            dt { "Branch" } dd { code { (environment.branch) } }
            @if let Some(parent) = &environment.parent {
                dt { "Parent" } dd { a href={ "/environments/" (parent) } { (parent) } }
            }
            dt { "Release" }
            dd {
                @match &environment.serving {
                    Some(release) => { code title=(release.image) { (short_release(&release.image)) } " at generation " (release.generation) }
                    None => span.hint { "none" },
                }
            }
            dt { "Nodes" } dd { @for node in &nodes { code { (node.name) } " " } }
            dt { "Variables" } dd { a href={ "/variables?environment=" (name) } { "its own" } ", besides the project's" }
        }
        @let actions: Vec<EnvironmentAction> = EnvironmentAction::ALL
            .into_iter()
            .filter(|action| action.offered(viewer, environment))
            .collect();
        @if !actions.is_empty() {
            p.actions {
                @for action in &actions {
                    a.button href={ "/environments/" (name) "/" (action.path()) } { (action.label()) } " "
                }
            }
        }
        h2 { "Services" }
        @if services.is_empty() {
            p.hint { "None declared in .platform/services.yaml." }
        } @else {
            table {
                thead { tr { th { "Service" } th { "Engine" } th { "Primary on" } } }
                tbody {
                    @for service in &services {
                        tr {
                            td { (service.name) }
                            td { (service.engine.as_str()) " " (service.version) }
                            td { (service.primary_on(&nodes).unwrap_or("-")) }
                        }
                    }
                }
            }
        }
        h2 { "Settings" }
        table {
            tbody {
                @if let Some(settings) = settings.as_object() {
                    @for (key, value) in settings {
                        tr { td { code { (key) } } td { (value) } }
                    }
                }
            }
        }
        h2 { "Recent activities" }
        (activity_rows(&recent))
        p { a href={ "/activities?environment=" (name) } { "All of " (name) "'s activities" } }
    })
}

fn activity_rows(activities: &[Activity]) -> Markup {
    html! {
        @if activities.is_empty() {
            p.hint { "Nothing happened yet." }
        } @else {
            table {
                tbody {
                    @for activity in activities {
                        tr {
                            td { a href={ "/activities/" (activity.id) } { (activity.description) } }
                            td { (activity.state) @if let Some(result) = &activity.result { ", " (result) } }
                            td { (activity.created_at) }
                        }
                    }
                }
            }
        }
    }
}

fn no_such_action(viewer: &Viewer, path: &str) -> Response {
    refused(
        viewer,
        ApiError(
            axum::http::StatusCode::NOT_FOUND,
            format!("no action {path}"),
        ),
    )
}

/// The confirmation page of an action: what it does, and the form that carries it out.
pub(crate) async fn confirm_page(
    State(controller): State<Arc<Controller>>,
    Path((name, action)): Path<(String, String)>,
    viewer: Viewer,
) -> Response {
    let Some(action) = EnvironmentAction::from_path(&action) else {
        return no_such_action(&viewer, &action);
    };
    let environment = match api::check(&controller, &viewer.principal, Action::Read, &name) {
        Ok(environment) => environment,
        Err(error) => return refused(&viewer, error),
    };
    page(
        action.label(),
        Some(&viewer),
        html! {
            h1 { (action.label()) " " (name) "?" }
            p { (action.consequence(&environment)) }
            form method="post" action={ "/environments/" (name) "/" (action.path()) } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                @if action == EnvironmentAction::Branch {
                    label for="branch" { "New branch" }
                    input #branch type="text" name="branch" required pattern="[A-Za-z0-9._/-]+";
                }
                @if action == EnvironmentAction::Sync {
                    label { input type="checkbox" name="code" value="true" checked; " Code" }
                    @if allowed(&viewer.principal, Action::Manage, environment.kind) {
                        label { input type="checkbox" name="data" value="true"; " Data (replaces " (name) "'s)" }
                    }
                }
                p {
                    button type="submit" { (action.label()) }
                    " " a href={ "/environments/" (name) } { "Cancel" }
                }
            }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ActionForm {
    csrf: String,
    branch: Option<String>,
    #[serde(default)]
    code: bool,
    #[serde(default)]
    data: bool,
}

/// Carries out a confirmed action through the API's handler, then shows its activity.
pub(crate) async fn carry_out(
    State(controller): State<Arc<Controller>>,
    Path((name, action)): Path<(String, String)>,
    viewer: Viewer,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    let Some(action) = EnvironmentAction::from_path(&action) else {
        return no_such_action(&viewer, &action);
    };
    let (state, principal) = (State(controller), Extension(viewer.principal.clone()));
    let env = Path(name);
    let started: Result<Json<Activity>, ApiError> = match action {
        EnvironmentAction::Redeploy => api::deploy(state, env, principal).await,
        EnvironmentAction::Rollback => api::rollback(state, env, principal).await,
        EnvironmentAction::Backup => api::create_backup(state, env, principal).await,
        EnvironmentAction::Sync => {
            let request = api::SyncRequest {
                code: form.code,
                data: form.data,
            };
            api::sync(state, env, principal, Json(request)).await
        }
        EnvironmentAction::Branch => {
            let request = api::BranchRequest {
                branch: form.branch.unwrap_or_default(),
                clone_data: true,
            };
            api::branch(state, env, principal, Json(request)).await
        }
    };
    match started {
        Ok(Json(activity)) => Redirect::to(&format!("/activities/{}", activity.id)).into_response(),
        Err(error) => refused(&viewer, error),
    }
}
