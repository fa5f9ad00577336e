//! The image store on disk:
//!
//! ```text
//! images/<id>.tar.zst   the image
//! images/<id>.frames    its frames (`FrameIndex`), what a node fetches of it
//! images/<id>.json      its manifest
//! builds/<build-key>    the release built from those build inputs: its apps' image ids joined
//!                       with `+` (the reuse index)
//! ```
//!
//! Every file is written beside its final name and renamed into place, so a reader sees a whole
//! file or none, and an image's manifest appears only after the image itself.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::{self, ExtraFile, Packed};
use crate::frames::FrameIndex;
use crate::{ImageError, ImageId};

/// The path of the description inside every image, beside the `app/` folder.
pub const IMAGE_INFO_PATH: &str = "image.json";
/// The folder inside every image that holds the built app.
pub const APP_PREFIX: &str = "app";

/// What an image says about itself; packed inside it, so part of its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub format: u32,
    pub tree_id: String,
    /// Hash of everything that went into the build: tree, build-visible variables, format.
    pub build_key: String,
    /// The whole project's configuration: its routes and services are every app's.
    pub config: lockstep_config::Project,
    /// The app of the project this image is; empty in images built before projects had
    /// several, which are of their project's one app.
    #[serde(default)]
    pub app: String,
}

impl ImageInfo {
    /// The configuration of the app this image is.
    pub fn app(&self) -> &lockstep_config::AppConfig {
        self.config
            .app(&self.app)
            .or(self.config.apps.first())
            .expect("a checked project has an app")
    }
}

/// The store's record of an image: its description, and facts about this build of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: ImageId,
    #[serde(flatten)]
    pub info: ImageInfo,
    /// Bytes of the compressed image.
    pub size: u64,
    /// Bytes of the files it holds.
    pub content_bytes: u64,
    pub entries: u64,
    pub built_at: DateTime<Utc>,
    pub build_millis: u64,
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in ["images", "builds"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(ImageError::io_at("create", &path))?;
        }
        Ok(ImageStore {
            root: root.to_owned(),
        })
    }

    pub fn image_path(&self, id: &ImageId) -> PathBuf {
        self.root.join("images").join(format!("{id}.tar.zst"))
    }

    fn frames_path(&self, id: &ImageId) -> PathBuf {
        self.root.join("images").join(format!("{id}.frames"))
    }

    /// The frames of an image: as packed, or the whole file as one for an image packed before
    /// images had several.
    pub fn frames(&self, id: &ImageId) -> Result<FrameIndex, ImageError> {
        let path = self.frames_path(id);
        match fs::read(&path) {
            Ok(json) => serde_json::from_slice(&json).map_err(|source| ImageError::BadManifest {
                id: id.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let image = self.image_path(id);
                match fs::metadata(&image) {
                    Ok(meta) => Ok(FrameIndex::whole(id, meta.len())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(ImageError::NotFound(id.clone()))
                    }
                    Err(e) => Err(ImageError::io_at("read", &image)(e)),
                }
            }
            Err(e) => Err(ImageError::io_at("read", &path)(e)),
        }
    }

    fn manifest_path(&self, id: &ImageId) -> PathBuf {
        self.root.join("images").join(format!("{id}.json"))
    }

    fn build_index_path(&self, build_key: &str) -> PathBuf {
        self.root.join("builds").join(build_key)
    }

    pub fn manifest(&self, id: &ImageId) -> Result<Manifest, ImageError> {
        let path = self.manifest_path(id);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound(id.clone()));
            }
            Err(e) => return Err(ImageError::io_at("read", &path)(e)),
        };
        serde_json::from_slice(&text).map_err(|source| ImageError::BadManifest {
            id: id.clone(),
            source,
        })
    }

    /// The images of every app already built from these build inputs, if they are all still
    /// in the store.
    pub fn find_build(&self, build_key: &str) -> Result<Option<Vec<Manifest>>, ImageError> {
        let path = self.build_index_path(build_key);
        let ids = match fs::read_to_string(&path) {
            Ok(release) => crate::release_images(release.trim())
                .map_err(|source| ImageError::BadBuildIndex { path, source })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io_at("read", &path)(e)),
        };
        let mut manifests = Vec::with_capacity(ids.len());
        for id in ids {
            match self.manifest(&id) {
                Ok(manifest) if self.image_path(&id).exists() => manifests.push(manifest),
                Ok(_) | Err(ImageError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(manifests))
    }

    /// Indexes the images of a whole build (one per app) under its build key.
    pub fn record_build(&self, build_key: &str, images: &[ImageId]) -> Result<(), ImageError> {
        write_atomically(
            &self.build_index_path(build_key),
            crate::release_id(images).as_bytes(),
        )
    }

    /// Packs the built app folder with its description into a new image and records it.
    pub fn add(
        &self,
        app_dir: &Path,
        info: ImageInfo,
        built_at: DateTime<Utc>,
        build_millis: u64,
    ) -> Result<Manifest, ImageError> {
        let images = self.root.join("images");
        let mut staged = tempfile::NamedTempFile::new_in(&images)
            .map_err(ImageError::io_at("create a file in", &images))?;
        let info_json = serde_json::to_vec_pretty(&info).expect("image info serialises");
        let extra = [ExtraFile {
            path: IMAGE_INFO_PATH,
            contents: &info_json,
        }];
        let Packed { id, stats, frames } = archive::pack(
            &extra,
            app_dir,
            APP_PREFIX,
            std::io::BufWriter::new(staged.as_file_mut()),
        )?;
        staged
            .as_file()
            .sync_all()
            .map_err(ImageError::io_at("write", staged.path()))?;
        let image_path = self.image_path(&id);
        staged
            .persist(&image_path)
            .map_err(|e| ImageError::io_at("write", &image_path)(e.error))?;
        write_atomically(
            &self.frames_path(&id),
            &serde_json::to_vec(&frames).expect("frames serialise"),
        )?;
        let manifest = Manifest {
            id: id.clone(),
            info,
            size: stats.size,
            content_bytes: stats.content_bytes,
            entries: stats.entries,
            built_at,
            build_millis,
        };
        let manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        write_atomically(&self.manifest_path(&id), &manifest_json)?;
        Ok(manifest)
    }
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), ImageError> {
    lockstep_durable::replace_private(path, contents, None)
        .map_err(ImageError::io_at("write", path))
}
