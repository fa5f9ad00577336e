//! The images nodes pull during stage (SPEC section 11): an image's frames
//! (`GET /v1/images/{id}/frames`) and its bytes, whole or one range of them
//! (`GET /v1/images/{id}`, `Range: bytes=FIRST-LAST`), on the cluster port (`cluster.rs`),
//! which enrolled nodes alone reach.
//! Nothing but a stored image's bytes is ever read here.

use std::io::SeekFrom;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lockstep_image::{FrameIndex, ImageError, ImageId, ImageStore, InvalidImageId};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

#[derive(Clone)]
struct Source {
    store: ImageStore,
}

/// The image routes; whoever serves them decides who may call.
pub fn routes(store: ImageStore) -> Router {
    Router::new()
        .route("/v1/images/{id}", get(image))
        .route("/v1/images/{id}/frames", get(frames))
        .with_state(Source { store })
}

/// A request answered with an error: its status, its message, and for a range beyond the
/// file the file's length.
struct Refusal {
    status: StatusCode,
    message: String,
    length: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            length: None,
        }
    }
}

impl From<ImageError> for Refusal {
    fn from(error: ImageError) -> Refusal {
        let status = match error {
            ImageError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal::new(status, error.to_string())
    }
}

impl From<InvalidImageId> for Refusal {
    fn from(error: InvalidImageId) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, error.to_string())
    }
}

impl From<std::io::Error> for Refusal {
    fn from(error: std::io::Error) -> Refusal {
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(length) = self.length {
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes */{length}").parse().expect("a valid header"),
            );
        }
        response
    }
}

async fn frames(
    State(source): State<Source>,
    Path(id): Path<String>,
) -> Result<axum::Json<FrameIndex>, Refusal> {
    let id: ImageId = id.parse()?;
    Ok(axum::Json(source.store.frames(&id)?))
}

async fn image(
    State(source): State<Source>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let id: ImageId = id.parse()?;
    let path = source.store.image_path(&id);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::NotFound(id).into());
        }
        Err(e) => return Err(e.into()),
    };
    let length = file.metadata().await?.len();
    let asked = headers
        .get(header::RANGE)
        .map(|range| byte_range(range.to_str().unwrap_or_default(), length));
    let (first, last) = match asked {
        None => (0, length.saturating_sub(1)),
        Some(Some(range)) => range,
        Some(None) => {
            return Err(Refusal {
                length: Some(length),
                ..Refusal::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("the image has {length} bytes; ask for one range `bytes=FIRST-LAST`"),
                )
            });
        }
    };
    file.seek(SeekFrom::Start(first)).await?;
    let count = if length == 0 { 0 } else { last - first + 1 };
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file.take(count),
        1 << 20,
    ));
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, count.into());
    if asked.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{length}")
                .parse()
                .expect("a valid header"),
        );
    }
    Ok(response)
}

/// The one range `bytes=FIRST-LAST` (or `bytes=FIRST-`) of a file of `length` bytes, inclusive,
/// or None when the header asks for anything else or beyond the end.
fn byte_range(header: &str, length: u64) -> Option<(u64, u64)> {
    let (first, last) = header.strip_prefix("bytes=")?.split_once('-')?;
    let first: u64 = first.parse().ok()?;
    let last: u64 = match last {
        "" => length.checked_sub(1)?,
        last => last.parse::<u64>().ok()?.min(length.checked_sub(1)?),
    };
    (first <= last).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn one_range_within_the_file_is_taken_and_anything_else_refused() {
        assert_eq!(byte_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(byte_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=90-500", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=100-", 100), None);
        assert_eq!(byte_range("bytes=5-4", 100), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), None);
        assert_eq!(byte_range("bytes=-5", 100), None);
        assert_eq!(byte_range("items=0-1", 100), None);
        assert_eq!(byte_range("bytes=0-", 0), None);
    }
}
