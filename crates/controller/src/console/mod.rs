//! The web console (SPEC section 12): pages served by the controller on its API port, at `/`,
//! to users signed in with their API token. Server-rendered HTML (maud) that reads without
//! JavaScript; a small embedded script follows a running activity's log.
//!
//! Owns: sessions and their CSRF tokens (`session`), the page frame and assets (`layout`), the
//! environment tree (`tree`), an environment's page and its confirmed actions (`environment`),
//! the activity feed and an activity's timeline and live log (`activities`), variables
//! (`variables`) and users (`users`).
//! Must never: show what the API would refuse the same user (every page reads through the API
//! module's permission checks), change anything on a GET, accept a form without the session's
//! CSRF token, or send a sensitive variable's value to a browser.

mod activities;
mod environment;
mod layout;
mod session;
mod tree;
mod users;
mod variables;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::html;

pub(crate) use session::Sessions;

use crate::api::ApiError;
use crate::{Controller, ControllerError};
use layout::page;
use session::Viewer;

pub(crate) fn router() -> Router<Arc<Controller>> {
    Router::new()
        .route("/", get(tree::environments_page))
        .route("/environments/{env}", get(environment::environment_page))
        .route(
            "/environments/{env}/{action}",
            get(environment::confirm_page).post(environment::carry_out),
        )
        .route(
            "/variables",
            get(variables::variables_page).post(variables::set),
        )
        .route("/variables/delete", post(variables::delete))
        .route("/users", get(users::users_page).post(users::add))
        .route("/users/{email}", post(users::update))
        .route("/users/{email}/delete", post(users::remove))
        .route("/activities", get(activities::feed))
        .route("/activities/{id}", get(activities::activity_page))
        .route("/activities/{id}/log", get(activities::log_events))
        .merge(session::routes())
        .merge(layout::routes())
        // Forms are small; the API's routes take images and data without this limit.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
}

/// A page saying what the API refused, with its status.
fn refused(viewer: &Viewer, error: ApiError) -> Response {
    let ApiError(status, message) = error;
    (
        status,
        page(
            "Refused",
            Some(viewer),
            html! { h1 { "Not here" } p.error { (message) } },
        ),
    )
        .into_response()
}

/// A page saying what went wrong.
fn failure(viewer: &Viewer, error: ControllerError) -> Response {
    let ApiError(status, mut message) = ApiError::from(error);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::warn!(%message, "a console page failed");
        message = "Lockstep could not read this: the controller's log says why.".to_owned();
    }
    (
        status,
        page(
            "Failed",
            Some(viewer),
            html! { h1 { "Failed" } p.error { (message) } },
        ),
    )
        .into_response()
}
