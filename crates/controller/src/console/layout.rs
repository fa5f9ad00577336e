//! The frame every page shares, and the assets it links: embedded in the binary, no outside
//! CDN.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use maud::{DOCTYPE, Markup, html};

use super::session::Viewer;
use crate::Controller;
use crate::access::{may_manage_project, may_read_project};

const STYLE: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

/// A whole page: `body` under the navigation, which names the viewer and signs out.
pub(crate) fn page(title: &str, viewer: Option<&Viewer>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Lockstep" }
                    link rel="stylesheet" href="/assets/console.css";
                    script src="/assets/console.js" defer {}
                }
                body {
                    @if let Some(viewer) = viewer {
                        nav {
                            a.brand href="/" { "Lockstep" }
                            a href="/" { "Environments" }
                            a href="/activities" { "Activities" }
                            @if may_read_project(&viewer.principal) {
                                a href="/variables" { "Variables" }
                            }
                            @if may_manage_project(&viewer.principal) {
                                a href="/users" { "Users" }
                            }
                            span.who { (viewer.principal.name()) }
                            form.inline method="post" action="/sign-out" {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

pub(crate) fn routes() -> Router<Arc<Controller>> {
    Router::new()
        .route(
            "/assets/console.css",
            axum::routing::get(|| async {
                ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
            }),
        )
        .route(
            "/assets/console.js",
            axum::routing::get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    SCRIPT,
                )
                    .into_response()
            }),
        )
}
