//! Signing in to the console with an API token, and the session that follows: a random id in a
//! cookie (`HttpOnly`, `SameSite=Strict`), kept in memory with the token it stands for and the
//! session's CSRF token. The token is resolved again at every request, so a token revoked or a
//! role changed takes effect at once; a controller restart signs everyone out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Router};
use maud::html;
use serde::Deserialize;

use super::layout::page;
use crate::access::Principal;
use crate::api::token_matches;
use crate::{Controller, random_token};

const COOKIE: &str = "lockstep_session";
/// A session unused this long is forgotten.
const IDLE_LIMIT: Duration = Duration::from_secs(12 * 3600);

#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, Session>>);

struct Session {
    token: String,
    csrf: String,
    last_seen: Instant,
}

impl Sessions {
    fn open(&self, token: String) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let mut sessions = self.0.lock().expect("sessions lock");
        sessions.retain(|_, session| session.last_seen.elapsed() < IDLE_LIMIT);
        sessions.insert(
            id.clone(),
            Session {
                token,
                csrf: csrf.clone(),
                last_seen: Instant::now(),
            },
        );
        (id, csrf)
    }

    /// The token and CSRF token of session `id`, if it is still open.
    fn touch(&self, id: &str) -> Option<(String, String)> {
        let mut sessions = self.0.lock().expect("sessions lock");
        let session = sessions.get_mut(id)?;
        if session.last_seen.elapsed() >= IDLE_LIMIT {
            sessions.remove(id);
            return None;
        }
        session.last_seen = Instant::now();
        Some((session.token.clone(), session.csrf.clone()))
    }

    fn close(&self, id: &str) {
        self.0.lock().expect("sessions lock").remove(id);
    }
}

/// Who is looking at a page: the signed-in principal, and the CSRF token its forms carry.
pub(crate) struct Viewer {
    pub principal: Principal,
    pub csrf: String,
    session: String,
}

impl Viewer {
    /// The refusal of a form that does not carry this session's CSRF token: one posted from
    /// another site, or from a page of an earlier session.
    pub(crate) fn refuse_forged(&self, csrf: &str) -> Option<Response> {
        if token_matches(&self.csrf, csrf) {
            None
        } else {
            Some((
                StatusCode::FORBIDDEN,
                page(
                    "Refused",
                    Some(self),
                    html! {
                        h1 { "This form was refused" }
                        p { "It did not come from a page of your session: reload the page and try again." }
                    },
                ),
            )
                .into_response())
        }
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

impl FromRequestParts<Arc<Controller>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        controller: &Arc<Controller>,
    ) -> Result<Viewer, Response> {
        let signed_in = session_cookie(&parts.headers).and_then(|id| {
            let (token, csrf) = controller.console_sessions.touch(id)?;
            let principal = controller.principal(&token).ok().flatten()?;
            Some(Viewer {
                principal,
                csrf,
                session: id.to_owned(),
            })
        });
        signed_in.ok_or_else(|| Redirect::to("/sign-in").into_response())
    }
}

pub(crate) fn routes() -> Router<Arc<Controller>> {
    Router::new()
        .route("/sign-in", axum::routing::get(sign_in_page).post(sign_in))
        .route("/sign-out", axum::routing::post(sign_out))
}

async fn sign_in_page() -> Response {
    sign_in_form(None).into_response()
}

fn sign_in_form(error: Option<&str>) -> axum::response::Html<String> {
    page(
        "Sign in",
        None,
        html! {
            h1 { "Sign in to Lockstep" }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            form method="post" action="/sign-in" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required;
                p.hint { "The token `lockstep user add` printed, or the admin token `lockstep up` printed." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(State(controller): State<Arc<Controller>>, Form(form): Form<SignIn>) -> Response {
    match controller.principal(form.token.trim()) {
        Ok(Some(principal)) => {
            let (id, _) = controller
                .console_sessions
                .open(form.token.trim().to_owned());
            tracing::info!(user = %principal.name(), "signed in to the console");
            (
                [(
                    header::SET_COOKIE,
                    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
                )],
                Redirect::to("/"),
            )
                .into_response()
        }
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            sign_in_form(Some("No user has this token.")),
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            sign_in_form(Some(&error.to_string())),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    pub csrf: String,
}

async fn sign_out(
    State(controller): State<Arc<Controller>>,
    viewer: Viewer,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(refused) = viewer.refuse_forged(&form.csrf) {
        return refused;
    }
    controller.console_sessions.close(&viewer.session);
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/sign-in"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "theme=dark; lockstep_session=abc123; other=1"
                .parse()
                .unwrap(),
        );
        assert_eq!(session_cookie(&headers), Some("abc123"));
        headers.insert(header::COOKIE, "lockstep_sessionx=1".parse().unwrap());
        assert_eq!(session_cookie(&headers), None);
    }
}
