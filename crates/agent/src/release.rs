//! Releases on disk: `releases/<image-id>` unpacked beside the running one (pulled into
//! `incoming/`, the image file then kept in `images/` with its frames for later pulls), the
//! atomically switched `current` link, the app's mounts linked into a release, and pruning.

use std::path::{Path, PathBuf};

use lockstep_config::{Mount, MountSource};
use lockstep_image::{FrameIndex, ImageId, ImageInfo, UnpackLimits};
use lockstep_supervisor::{RunAs, ensure_folder};

use crate::error::AgentError;
use crate::pull::{HeldImage, ImagePuller, Pulled};

pub struct Releases {
    root: PathBuf,
    pulling: tokio::sync::Mutex<()>,
}

impl Releases {
    pub fn new(instance_dir: &Path) -> Releases {
        Releases {
            root: instance_dir.to_owned(),
            pulling: tokio::sync::Mutex::new(()),
        }
    }

    pub fn create_dirs(&self) -> std::io::Result<()> {
        for dir in ["releases", "incoming", "images"] {
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

    /// Pulls image `image` from the controller at `source`, checks it against its id, unpacks
    /// it, and keeps its file, whose frames the next pull may copy. None when the image was
    /// already staged.
    pub async fn stage(
        &self,
        image: &ImageId,
        puller: &ImagePuller,
        source: &str,
    ) -> Result<Option<Pulled>, AgentError> {
        // One pull at a time: a repeated stage waits for the first and finds the image there.
        let _pulling = self.pulling.lock().await;
        if self.is_staged(image) {
            return Ok(None);
        }
        let incoming = self.root.join("incoming");
        let part = incoming.join(format!("{image}.part"));
        remove_other_files(&incoming, &part);
        let (frames, pulled) = puller
            .pull(source, image, &part, &self.held_images())
            .await?;
        let dest = self.dir(image);
        let (id, pulled_file) = (image.clone(), part.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            lockstep_image::unpack_verified(&pulled_file, &id, &dest, UnpackLimits::default())
        })
        .await
        .expect("unpack task does not panic");
        if let Err(error) = unpacked {
            // Every frame matched its hash, so the file is whole as the index described it:
            // a pull again would fetch the same bytes.
            let _ = std::fs::remove_file(&part);
            return Err(error.into());
        }
        self.hold(image, &part, &frames);
        Ok(Some(pulled))
    }

    /// Keeps a staged image's file and frames for later pulls; a failure costs only reuse.
    fn hold(&self, image: &ImageId, file: &Path, frames: &FrameIndex) {
        let kept = self.held_file(image);
        let frames_file = kept.with_extension("frames");
        let held = std::fs::rename(file, &kept)
            .and_then(|()| lockstep_durable::write_json(&frames_file, frames));
        if let Err(error) = held {
            tracing::warn!(image = image.short(), %error, "cannot keep the image file for later pulls");
        }
    }

    fn held_file(&self, image: &ImageId) -> PathBuf {
        self.root.join("images").join(format!("{image}.zst"))
    }

    /// The images kept with their frames.
    fn held_images(&self) -> Vec<HeldImage> {
        let Ok(entries) = std::fs::read_dir(self.root.join("images")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                if path.extension()? != "frames" {
                    return None;
                }
                let frames = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
                let file = path.with_extension("zst");
                file.is_file().then_some(HeldImage { file, frames })
            })
            .collect()
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

    /// Removes every release not in `keep`, and its kept image file.
    pub fn prune(&self, keep: &[ImageId]) {
        if let Ok(entries) = std::fs::read_dir(self.root.join("releases")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.iter().any(|k| k.as_str() == name)
                    && let Err(error) = std::fs::remove_dir_all(entry.path())
                {
                    tracing::warn!(release = %name, %error, "cannot remove an old release");
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("images")) {
            for entry in entries.flatten() {
                let path = entry.path();
                let image = path.file_stem().map(|stem| stem.to_string_lossy());
                if !image.is_some_and(|image| keep.iter().any(|k| k.as_str() == image)) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

/// Where each kind of mount keeps its files on this node.
pub struct MountRoots {
    pub local: PathBuf,
    pub tmp: PathBuf,
    pub storage: PathBuf,
    /// The folder shared by the pool's nodes that `storage` lies in, never made here.
    pub shared_storage: Option<PathBuf>,
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
        self.check_shared(mounts)?;
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

    /// Refuses `storage` mounts while the pool's shared folder is not on this node: made here,
    /// the folder would hold this node's files alone.
    pub fn check_shared(
        &self,
        mounts: &std::collections::BTreeMap<String, Mount>,
    ) -> Result<(), AgentError> {
        let Some(shared) = &self.shared_storage else {
            return Ok(());
        };
        let wants_storage = mounts
            .values()
            .any(|mount| mount.source == MountSource::Storage);
        if wants_storage && !shared.is_dir() {
            return Err(AgentError::Refused(format!(
                "the shared storage folder {} is not on this node, and the release has `source: storage` mounts: mount the pool's shared folder there (NFS or similar), as the controller's `--shared-storage` names it",
                shared.display()
            )));
        }
        Ok(())
    }
}

/// Removes what a pull of another image left in `folder`: pulls run one at a time.
fn remove_other_files(folder: &Path, keep: &Path) {
    if let Ok(entries) = std::fs::read_dir(folder) {
        for entry in entries.flatten() {
            if entry.path() != keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
