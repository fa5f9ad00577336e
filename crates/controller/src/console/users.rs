//! The project's users and their roles, for project admins (as the API allows): add a user
//! (whose token is shown once), change roles, remove.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use lockstep_proto::agent::EnvironmentType;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::page;
use super::refused;
use super::session::Viewer;
use crate::api;
use crate::{Controller, Role, Roles, UserChange};

const KINDS: [EnvironmentType; 3] = [
    EnvironmentType::Production,
    EnvironmentType::Staging,
    EnvironmentType::Development,
];

fn role_name(role: Option<Role>) -> &'static str {
    match role {
        None => "none",
        Some(Role::Viewer) => "viewer",
        Some(Role::Contributor) => "contributor",
        Some(Role::Admin) => "admin",
    }
}

/// The fields of a user's roles: a choice per environment type, and project admin.
fn role_fields(roles: &Roles) -> Markup {
    html! {
        @for kind in KINDS {
            label.inline {
                (kind.as_str()) " "
                select name=(kind.as_str()) {
                    @for choice in ["none", "viewer", "contributor", "admin"] {
                        option value=(choice) selected[role_name(roles.on(kind)) == choice] { (choice) }
                    }
                }
            }
        }
        label.inline { input type="checkbox" name="project_admin" value="true" checked[roles.project_admin]; " project admin" }
    }
}

pub(crate) async fn users_page(
    State(controller): State<Arc<Controller>>,
    viewer: Viewer,
) -> Response {
    let listed = api::list_users(State(controller), Extension(viewer.principal.clone())).await;
    let users = match listed {
        Ok(Json(users)) => users,
        Err(error) => return refused(&viewer, error),
    };
    page(
        "Users",
        Some(&viewer),
        html! {
            h1 { "Users" }
            table {
                thead { tr { th { "User" } th { "Roles" } th {} } }
                tbody {
                    @for user in &users {
                        tr {
                            td { (user.email) }
                            td {
                                form.inline method="post" action={ "/users/" (user.email) } {
                                    input type="hidden" name="csrf" value=(viewer.csrf);
                                    (role_fields(&user.roles))
                                    " " button type="submit" { "Save" }
                                }
                            }
                            td {
                                form.inline method="post" action={ "/users/" (user.email) "/delete" } {
                                    input type="hidden" name="csrf" value=(viewer.csrf);
                                    button.link type="submit" { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Add a user" }
            form method="post" action="/users" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                label for="email" { "Email" }
                input #email type="text" name="email" required;
                p { (role_fields(&Roles::default())) }
                button type="submit" { "Add" }
            }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct RolesForm {
    csrf: String,
    email: Option<String>,
    production: String,
    staging: String,
    development: String,
    #[serde(default)]
    project_admin: bool,
}

impl RolesForm {
    fn change(&self) -> UserChange {
        UserChange {
            roles: Some(format!(
                "production:{},staging:{},development:{}",
                self.production, self.staging, self.development
            )),
            project_admin: Some(self.project_admin),
            ssh_keys: None,
        }
    }
}

pub(crate) async fn add(
    State(controller): State<Arc<Controller>>,
    viewer: Viewer,
    Form(form): Form<RolesForm>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    let email = form.email.clone().unwrap_or_default();
    let added = api::add_user(
        State(controller),
        Path(email),
        Extension(viewer.principal.clone()),
        Json(form.change()),
    )
    .await;
    match added {
        Ok(Json(added)) => page(
            "User added",
            Some(&viewer),
            html! {
                h1 { (added.user.email) " is added" }
                p { "Their token, shown this once: give it to them to sign in, push and use the CLI." }
                p { code.token { (added.token) } }
                p { a href="/users" { "Back to the users" } }
            },
        )
        .into_response(),
        Err(error) => refused(&viewer, error),
    }
}

pub(crate) async fn update(
    State(controller): State<Arc<Controller>>,
    Path(email): Path<String>,
    viewer: Viewer,
    Form(form): Form<RolesForm>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    let updated = api::update_user(
        State(controller),
        Path(email),
        Extension(viewer.principal.clone()),
        Json(form.change()),
    )
    .await;
    match updated {
        Ok(_) => Redirect::to("/users").into_response(),
        Err(error) => refused(&viewer, error),
    }
}

pub(crate) async fn remove(
    State(controller): State<Arc<Controller>>,
    Path(email): Path<String>,
    viewer: Viewer,
    Form(form): Form<super::session::CsrfOnly>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    let removed = api::delete_user(
        State(controller),
        Path(email),
        Extension(viewer.principal.clone()),
    )
    .await;
    match removed {
        Ok(_) => Redirect::to("/users").into_response(),
        Err(error) => refused(&viewer, error),
    }
}
