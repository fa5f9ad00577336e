//! The web console (SPEC section 12): pages served by the controller on its API port, at `/`,
//! to users signed in with their API token. Server-rendered HTML (maud) that reads without
//! JavaScript; a small embedded script follows a running activity's log.
//!
//! Owns: sessions and their CSRF tokens (`session`), the page frame and assets (`layout`), the
//! environment tree (`tree`), the activity feed and an activity's timeline and live log
//! (`activities`).
//! Must never: show what the API would refuse the same user (every page reads through the API
//! module's permission checks), change anything on a GET, accept a form without the session's
//! CSRF token, or send a sensitive variable's value to a browser.

mod activities;
mod layout;
mod session;
mod tree;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::html;

pub(crate) use session::Sessions;

use crate::api::ApiError;
use crate::{Controller, ControllerError};
use layout::page;
use session::Viewer;

pub(crate) fn router() -> Router<Arc<Controller>> {
    Router::new()
        .route("/", get(tree::environments_page))
        .route("/activities", get(activities::feed))
        .route("/activities/{id}", get(activities::activity_page))
        .route("/activities/{id}/log", get(activities::log_events))
        .merge(session::routes())
        .merge(layout::routes())
        // Forms are small; the API's routes take images and data without this limit.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
}

/// The first 12 characters of a release id, enough to tell releases apart.
fn short(release: &str) -> &str {
    release.get(..12).unwrap_or(release)
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
