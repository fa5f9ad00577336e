//! Releases on disk: `releases/<image-id>` unpacked beside the running one, the atomically
//! switched `current` link, the app's mounts linked into a release, and pruning.

use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt};
use lockstep_config::{Mount, MountSource};
use lockstep_image::{ImageId, ImageInfo, UnpackLimits};
use lockstep_supervisor::{RunAs, ensure_folder};
use tokio::io::AsyncWriteExt;

use crate::error::AgentError;

/// Largest image upload accepted.
const MAX_UPLOAD_BYTES: u64 = 20 * 1024 * 1024 * 1024;

pub struct Releases {
    root: PathBuf,
}

impl Releases {
    pub fn new(instance_dir: &Path) -> Releases {
        Releases {
            root: instance_dir.to_owned(),
        }
    }

    pub fn create_dirs(&self) -> std::io::Result<()> {
        for dir in ["releases", "incoming"] {
            std::fs::create_dir_all(self.root.join(dir))?;
        }
        Ok(())
    }

    pub fn dir(&self, image: &ImageId) -> PathBuf {
        self.root.join("releases").join(image.as_str())
    }

    pub fn app_dir(&self, image: &ImageId) -> PathBuf {
        self.dir(image).join("app")
    }

    pub fn is_staged(&self, image: &ImageId) -> bool {
        self.dir(image).join("image.json").is_file()
    }

    pub fn info(&self, image: &ImageId) -> Result<ImageInfo, AgentError> {
        let path = self.dir(image).join("image.json");
        let bytes =
            std::fs::read(&path).map_err(AgentError::io(format!("read {}", path.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Io {
            action: format!("read {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Receives an image, checks it against its id and unpacks it. Returns false when the image
    /// was already staged (then the body is not read).
    pub async fn stage<S, E>(&self, image: &ImageId, body: S) -> Result<bool, AgentError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if self.is_staged(image) {
            return Ok(false);
        }
        let incoming = tempfile::Builder::new()
            .prefix(image.short())
            .tempfile_in(self.root.join("incoming"))
            .map_err(AgentError::io("create an upload file"))?;
        let upload_path = incoming.path().to_owned();
        let mut file = tokio::fs::File::from_std(
            incoming
                .reopen()
                .map_err(AgentError::io("open the upload file"))?,
        );
        let mut received = 0u64;
        let mut body = body;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| AgentError::BadRequest(format!("the upload broke off: {e}")))?;
            received += chunk.len() as u64;
            if received > MAX_UPLOAD_BYTES {
                return Err(AgentError::BadRequest(format!(
                    "the image is larger than {MAX_UPLOAD_BYTES} bytes"
                )));
            }
            file.write_all(&chunk)
                .await
                .map_err(AgentError::io("write the upload"))?;
        }
        file.flush()
            .await
            .map_err(AgentError::io("write the upload"))?;
        drop(file);
        let dest = self.dir(image);
        let id = image.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            lockstep_image::unpack_verified(&upload_path, &id, &dest, UnpackLimits::default())
        })
        .await
        .expect("unpack task does not panic");
        drop(incoming);
        match unpacked {
            Ok(_) => Ok(true),
            // Another upload of the same image finished first: the same bytes are in place.
            Err(lockstep_image::ImageError::DestinationExists(_)) if self.is_staged(image) => {
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Points `current` at the release, atomically: readers see the old or the new one.
    pub fn switch_current(&self, image: &ImageId) -> Result<(), AgentError> {
        let link = self.root.join("current");
        let staging = self.root.join("current.next");
        let _ = std::fs::remove_file(&staging);
        let target = Path::new("releases").join(image.as_str());
        std::os::unix::fs::symlink(&target, &staging)
            .and_then(|()| std::fs::rename(&staging, &link))
            .map_err(AgentError::io(format!(
                "switch {} to {}",
                link.display(),
                image.short()
            )))
    }

    /// Removes every release not in `keep`.
    pub fn prune(&self, keep: &[String]) {
        let Ok(entries) = std::fs::read_dir(self.root.join("releases")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name)
                && let Err(error) = std::fs::remove_dir_all(entry.path())
            {
                tracing::warn!(release = %name, %error, "cannot remove an old release");
            }
        }
    }
}

/// Where each kind of mount keeps its files on this node.
pub struct MountRoots {
    pub local: PathBuf,
    pub tmp: PathBuf,
    pub storage: PathBuf,
}

/// A mount of the app, ready: its path in the app, and the host folder shown there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyMount {
    /// Relative to the app folder (`web/uploads`).
    pub path: PathBuf,
    pub host: PathBuf,
}

impl MountRoots {
    /// Makes each mount ready: its mount point, a folder in the release (a link or a file where
    /// one must go refuses the release, since root would follow it), and its host folder, given
    /// to the environment's user. What the image held at a mount path is hidden by the mount.
    pub fn prepare(
        &self,
        app_dir: &Path,
        mounts: &std::collections::BTreeMap<String, Mount>,
        user: RunAs,
    ) -> Result<Vec<ReadyMount>, AgentError> {
        let mut ready = Vec::new();
        for (path, mount) in mounts {
            let path = PathBuf::from(path.trim_start_matches('/'));
            ensure_folder(app_dir, &path, None).map_err(AgentError::io(format!(
                "make the mount point {} in the release",
                path.display()
            )))?;
            let root = match mount.source {
                MountSource::Local => &self.local,
                MountSource::Tmp => &self.tmp,
                MountSource::Storage => &self.storage,
            };
            std::fs::create_dir_all(root)
                .map_err(AgentError::io(format!("create {}", root.display())))?;
            let host = ensure_folder(root, Path::new(&mount.source_path), Some(user)).map_err(
                AgentError::io(format!("make the folder of mount {}", path.display())),
            )?;
            ready.push(ReadyMount { path, host });
        }
        Ok(ready)
    }
}
