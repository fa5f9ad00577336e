//! The variables of the project or of one environment, as the API lists them: a sensitive
//! variable's value never reaches this module, so it cannot reach a page. Those the API lets
//! change them (project admins; an environment's admins) get forms to set and delete.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use maud::html;
use serde::Deserialize;

use super::layout::page;
use super::refused;
use super::session::Viewer;
use crate::api::{self, VariableQuery};
use crate::variables::Visibility;
use crate::{Controller, SetVariable};

#[derive(Deserialize)]
pub(crate) struct Level {
    environment: Option<String>,
}

/// Where the page of `environment`'s variables (the project's, for `None`) is.
fn level_url(environment: Option<&str>) -> String {
    match environment {
        Some(environment) => format!("/variables?environment={environment}"),
        None => "/variables".to_owned(),
    }
}

pub(crate) async fn variables_page(
    State(controller): State<Arc<Controller>>,
    Query(level): Query<Level>,
    viewer: Viewer,
) -> Response {
    let environment = level.environment.clone();
    let listed = api::list_variables(
        State(controller.clone()),
        Query(VariableQuery {
            environment: environment.clone(),
            no_redeploy: false,
        }),
        Extension(viewer.principal.clone()),
    )
    .await;
    let variables = match listed {
        Ok(Json(variables)) => variables,
        Err(error) => return refused(&viewer, error),
    };
    // The forms show where the API would take them.
    let editable =
        api::check_variables_change(&controller, &viewer.principal, environment.as_deref()).is_ok();
    let title = match &environment {
        Some(environment) => format!("Variables of {environment}"),
        None => "Project variables".to_owned(),
    };
    let back = level_url(environment.as_deref());
    page(
        &title,
        Some(&viewer),
        html! {
            h1 { (title) }
            @if let Some(environment) = &environment {
                p { "Besides the project's (" a href="/variables" { "project variables" } ") and those its parents pass on. "
                    a href={ "/environments/" (environment) } { "Back to " (environment) } }
            }
            @if variables.is_empty() {
                p.hint { "No variable at this level." }
            } @else {
                table {
                    thead { tr { th { "Name" } th { "Value" } th { "Visible to" } th { "Updated" } @if editable { th {} } } }
                    tbody {
                        @for variable in &variables {
                            tr {
                                td { code { (variable.name) } }
                                td {
                                    @if variable.sensitive {
                                        span.hint { "sensitive: not shown" }
                                    } @else if let Some(value) = &variable.value {
                                        code { (value.as_str().map_or_else(|| value.to_string(), str::to_owned)) }
                                    }
                                }
                                td { (match variable.visibility { Visibility::Build => "build", Visibility::Runtime => "runtime", Visibility::Both => "build and runtime" }) }
                                td { (variable.updated_at) }
                                @if editable {
                                    td {
                                        form.inline method="post" action="/variables/delete" {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            input type="hidden" name="name" value=(variable.name);
                                            @if let Some(environment) = &environment {
                                                input type="hidden" name="environment" value=(environment);
                                            }
                                            button.link type="submit" { "Delete" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if editable {
                h2 { "Set a variable" }
                form method="post" action="/variables" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    @if let Some(environment) = &environment {
                        input type="hidden" name="environment" value=(environment);
                    }
                    label for="name" { "Name" }
                    input #name type="text" name="name" required placeholder="env:API_URL";
                    label for="value" { "Value" }
                    input #value type="text" name="value";
                    label { input type="checkbox" name="sensitive" value="true"; " Sensitive (never shown again, here or by the API)" }
                    p { button type="submit" { "Set" } }
                    p.hint { "Setting or deleting a variable redeploys the environments that see it." }
                }
            }
            p { a href=(back) { "Reload" } }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct SetForm {
    csrf: String,
    name: String,
    value: String,
    environment: Option<String>,
    #[serde(default)]
    sensitive: bool,
}

pub(crate) async fn set(
    State(controller): State<Arc<Controller>>,
    viewer: Viewer,
    Form(form): Form<SetForm>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    let back = level_url(form.environment.as_deref());
    let input = SetVariable {
        environment: form.environment,
        value: form.value,
        json: false,
        sensitive: form.sensitive,
        visibility: Visibility::Both,
        inheritable: true,
        no_redeploy: false,
    };
    let set = api::set_variable(
        State(controller),
        Path(form.name),
        Extension(viewer.principal.clone()),
        Json(input),
    )
    .await;
    match set {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(error) => refused(&viewer, error),
    }
}

#[derive(Deserialize)]
pub(crate) struct DeleteForm {
    csrf: String,
    name: String,
    environment: Option<String>,
}

pub(crate) async fn delete(
    State(controller): State<Arc<Controller>>,
    viewer: Viewer,
    Form(form): Form<DeleteForm>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    let back = level_url(form.environment.as_deref());
    let deleted = api::delete_variable(
        State(controller),
        Path(form.name),
        Query(VariableQuery {
            environment: form.environment,
            no_redeploy: false,
        }),
        Extension(viewer.principal.clone()),
    )
    .await;
    match deleted {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(error) => refused(&viewer, error),
    }
}
