//! The cluster port: what enrolled nodes and edges call, over mutual TLS
//! (`lockstep_transport::serve`): the images nodes pull during stage, and where each listens
//! now. A caller is let in only with the certificate it was last issued: a removed node's, an
//! old one, or another role's are refused.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Extension, Json, Router};
use lockstep_proto::nodes::Announce;
use lockstep_transport::{Peer, PeerCertificate};

use crate::Controller;
use crate::api::ApiError;

/// A caller the cluster port let in: an enrolled node or edge, by name.
#[derive(Clone)]
struct EnrolledNode(String);

pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/nodes/self", put(announce))
        .with_state(controller.clone())
        .merge(crate::images::routes(controller.images.clone()))
        .layer(axum::middleware::from_fn_with_state(
            controller,
            enrolled_only,
        ))
}

async fn enrolled_only(
    State(controller): State<Arc<Controller>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<Peer>();
    let enrolled = match (peer, request.extensions().get::<PeerCertificate>()) {
        (Some(peer), Some(PeerCertificate(fingerprint))) => {
            controller.enrolled_as(peer, fingerprint)
        }
        _ => None,
    };
    let node = match enrolled {
        Some(name) => name,
        None => {
            let caller = peer.map_or_else(|| "an unknown caller".to_owned(), Peer::to_string);
            tracing::warn!(%caller, "refused on the cluster port");
            return (
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({
                    "error": format!("{caller} is not an enrolled node holding its current certificate")
                })),
            )
                .into_response();
        }
    };
    request.extensions_mut().insert(EnrolledNode(node));
    next.run(request).await
}

async fn announce(
    State(controller): State<Arc<Controller>>,
    Extension(EnrolledNode(node)): Extension<EnrolledNode>,
    Json(announce): Json<Announce>,
) -> Result<StatusCode, ApiError> {
    controller.announce(&node, &announce.agent_url)?;
    Ok(StatusCode::NO_CONTENT)
}
