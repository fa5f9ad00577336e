use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lockstep_proto::agent::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no instance of environment `{0}` on this node; configure it first")]
    UnknownInstance(String),
    #[error("{0}")]
    BadRequest(String),
    /// The command is refused in the instance's present state; nothing changed.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Image(#[from] lockstep_image::ImageError),
    #[error(transparent)]
    InvalidImageId(#[from] lockstep_proto::InvalidImageId),
    #[error("the web process {reason}; nothing opened. Its last output:\n{output}")]
    WebDidNotStart { reason: String, output: String },
    #[error(transparent)]
    Supervisor(#[from] lockstep_supervisor::SupervisorError),
    #[error(transparent)]
    Sandbox(#[from] lockstep_supervisor::SandboxError),
    #[error(transparent)]
    Runtime(#[from] lockstep_supervisor::RuntimeError),
    #[error("cannot pull image {image} from {controller}: {reason}")]
    Pull {
        image: String,
        controller: String,
        reason: String,
    },
    #[error(
        "this agent is not enrolled ({0} holds no node certificate): start it with `--join URL --join-token TOKEN`, the token from `lockstep node add NAME --pool POOL`"
    )]
    NotEnrolled(std::path::PathBuf),
    #[error(transparent)]
    Identity(#[from] lockstep_transport::TransportError),
    #[error("cannot {action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    pub fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
        let action = action.into();
        move |source| AgentError::Io { action, source }
    }

    fn status(&self) -> StatusCode {
        use lockstep_image::ImageError as Image;
        match self {
            AgentError::UnknownInstance(_) => StatusCode::NOT_FOUND,
            AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AgentError::Refused(_) | AgentError::Runtime(_) => StatusCode::CONFLICT,
            AgentError::Pull { .. } => StatusCode::BAD_GATEWAY,
            // Only a certificate given to install reaches an answer.
            AgentError::Identity(lockstep_transport::TransportError::Refused(_)) => {
                StatusCode::CONFLICT
            }
            AgentError::Identity(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AgentError::InvalidImageId(_)
            | AgentError::Image(
                Image::HashMismatch { .. }
                | Image::UnsafeEntry { .. }
                | Image::Corrupt(_)
                | Image::TooLarge(_),
            ) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(&self);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        match self {
            // What the controller asks to learn whether it must configure an instance first.
            AgentError::UnknownInstance(_) => tracing::debug!(error = %text, "command failed"),
            _ => tracing::warn!(error = %text, "command failed"),
        }
        (self.status(), axum::Json(ApiError { error: text })).into_response()
    }
}
