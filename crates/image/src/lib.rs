//! Lockstep images: from a git tree to an immutable, content-addressed archive, and back.
//!
//! Owns: checking out a tree, running the build hook in its sandbox (at `/app`, as the
//! environment's user), packing the app folder into a deterministic archive named by its blake3
//! hash, the local image store with its build-reuse index, and verified unpacking.
//! Must never: run the build hook outside its sandbox, let a failed build leave an image
//! behind, reuse a build whose inputs differ, or unpack anything before its hash is checked or
//! outside the destination folder.

mod archive;
mod build;
mod checkout;
mod frames;
mod store;
mod variables;

use std::path::{Path, PathBuf};

// An image is named with the wire type every role reads it as.
pub use lockstep_proto::{ImageId, InvalidImageId};

pub use archive::{
    ArchiveStats, ExtraFile, Packed, UnpackLimits, hash_file, pack, unpack, unpack_verified,
};
pub use build::{
    BuildError, BuildOutcome, BuildRequest, Builder, DEFAULT_BUILD_TIMEOUT, REUSE_MESSAGE,
};
pub use checkout::{GitEnv, checkout, resolve_tree};
pub use frames::{Frame, FrameIndex, frame_hash};
pub use store::{ImageInfo, ImageStore, Manifest};
pub use variables::{base64_json, variables_env};

/// The separator of image ids in a release id.
const RELEASE_SEPARATOR: char = '+';

/// A release is the images of its project's apps, in the project's app order. Its id joins
/// their ids with `+`, so that a project with one app has its image's id as release id, and
/// the deploy procedure, which only compares release ids, needs to know nothing of apps.
pub fn release_id(images: &[ImageId]) -> String {
    let ids: Vec<&str> = images.iter().map(ImageId::as_str).collect();
    ids.join(&RELEASE_SEPARATOR.to_string())
}

/// A release id as people read it: each image id cut to 12 characters (`ImageId::short`).
pub fn short_release(release: &str) -> String {
    let ids: Vec<&str> = release
        .split(RELEASE_SEPARATOR)
        .map(|id| &id[..id.len().min(12)])
        .collect();
    ids.join(&RELEASE_SEPARATOR.to_string())
}

/// The image ids of a release id, in app order.
pub fn release_images(release: &str) -> Result<Vec<ImageId>, InvalidImageId> {
    release.split(RELEASE_SEPARATOR).map(str::parse).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the image does not match its id: expected {expected}, found {actual}")]
    HashMismatch { expected: ImageId, actual: ImageId },
    #[error("the image holds {reason}: {}", path.display())]
    UnsafeEntry { path: PathBuf, reason: &'static str },
    #[error("the image is corrupt: {0}")]
    Corrupt(String),
    #[error("the image is too large: {0}")]
    TooLarge(String),
    #[error("{} already exists", .0.display())]
    DestinationExists(PathBuf),
    #[error("cannot pack {}: only files, folders and links go into an image", .0.display())]
    SpecialFile(PathBuf),
    #[error("no image {0} in the store")]
    NotFound(ImageId),
    #[error("the build index {} is unreadable", path.display())]
    BadBuildIndex {
        path: PathBuf,
        #[source]
        source: InvalidImageId,
    },
    #[error("the manifest of image {id} is unreadable")]
    BadManifest {
        id: ImageId,
        #[source]
        source: serde_json::Error,
    },
}

impl ImageError {
    fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> ImageError {
        move |source| ImageError::Io {
            action,
            path: PathBuf::new(),
            source,
        }
    }

    fn io_at(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.to_owned();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }

    fn corrupt(error: std::io::Error) -> ImageError {
        ImageError::Corrupt(error.to_string())
    }
}
