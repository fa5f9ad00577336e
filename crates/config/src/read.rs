//! Reading a project's configuration files, and the files they include, from its folder.
//!
//! Owns: every read from disk that the configuration needs, and the words that say why a file
//! cannot be configuration. Must never: read outside the project folder (a checked-out
//! repository can hold a symbolic link to anywhere), or more than [`MAX_SOURCE_BYTES`] of a file.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::ConfigError;
use crate::include::{Library, Loaded};
use crate::yaml::MAX_SOURCE_BYTES;

/// A project folder, and what has been read from it.
pub(crate) struct ProjectFolder {
    /// Canonical, so that where a file really is can be compared with it.
    root: PathBuf,
    /// The included files read, by their path from the project root.
    pub included: BTreeMap<String, Vec<u8>>,
    /// Files that are no configuration (too large, outside the project...): the file, and why.
    pub unreadable: Vec<(String, String)>,
}

/// Bounds on the search for app folders, so that a huge repository costs little to check.
const MAX_FOLDERS_SEARCHED: usize = 20_000;
const MAX_SEARCH_DEPTH: usize = 8;

enum FileBytes {
    Missing,
    Bytes(Vec<u8>),
    Unreadable(String),
}

impl ProjectFolder {
    pub fn open(dir: &Path) -> Result<Self, ConfigError> {
        let root = dir.canonicalize().map_err(|source| ConfigError::Read {
            path: dir.to_owned(),
            source,
        })?;
        Ok(ProjectFolder {
            root,
            included: BTreeMap::new(),
            unreadable: Vec::new(),
        })
    }

    /// The text of the configuration file `name`; `None` when it is missing, or when it is no
    /// configuration text (noted in `unreadable`, for the check to report).
    pub fn configuration(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        let bytes = match self.bytes(name)? {
            FileBytes::Missing => return Ok(None),
            FileBytes::Unreadable(why) => {
                self.unreadable.push((name.to_owned(), why));
                return Ok(None);
            }
            FileBytes::Bytes(bytes) => bytes,
        };
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Some(text)),
            Err(error) => {
                let why = not_utf8(name, error.utf8_error().valid_up_to(), "YAML");
                self.unreadable.push((name.to_owned(), why));
                Ok(None)
            }
        }
    }

    /// The files called `name` in the project's folders below its root, by their path from the
    /// root, in byte order. Links are not followed, and hidden folders (`.git`) are not
    /// searched; neither is anything past [`MAX_FOLDERS_SEARCHED`] folders, or deeper than
    /// [`MAX_SEARCH_DEPTH`].
    pub fn nested_app_files(&self, name: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut folders = vec![(String::new(), 0)];
        let mut searched = 0;
        while let Some((folder, depth)) = folders.pop() {
            searched += 1;
            if searched > MAX_FOLDERS_SEARCHED {
                break;
            }
            let Ok(entries) = std::fs::read_dir(self.root.join(&folder)) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(entry_name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let path = if folder.is_empty() {
                    entry_name.clone()
                } else {
                    format!("{folder}/{entry_name}")
                };
                let is_folder = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_folder && !entry_name.starts_with('.') && depth < MAX_SEARCH_DEPTH {
                    folders.push((path, depth + 1));
                } else if !folder.is_empty() && entry_name == name {
                    found.push(path);
                }
            }
        }
        found.sort();
        found
    }

    /// The file at `name` from the project root, read only if it really is in the project.
    fn bytes(&self, name: &str) -> Result<FileBytes, ConfigError> {
        let path = self.root.join(name);
        let read_error = |source| ConfigError::Read {
            path: path.clone(),
            source,
        };
        let real = match path.canonicalize() {
            Ok(real) => real,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FileBytes::Missing);
            }
            Err(source) => return Err(read_error(source)),
        };
        if !real.starts_with(&self.root) {
            let why = format!("`{name}` leads outside the project, through a symbolic link");
            return Ok(FileBytes::Unreadable(why));
        }
        // Asked before opening: opening a named pipe would wait for a writer.
        if !real.metadata().map_err(read_error)?.is_file() {
            return Ok(FileBytes::Unreadable(format!("`{name}` is not a file")));
        }
        let file = std::fs::File::open(&real).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(MAX_SOURCE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() > MAX_SOURCE_BYTES {
            return Ok(FileBytes::Unreadable(too_large(name)));
        }
        Ok(FileBytes::Bytes(bytes))
    }
}

impl<'a> Library<'a> for ProjectFolder {
    fn load(&mut self, path: &str) -> Loaded<'a> {
        if let Some(bytes) = self.included.get(path) {
            return Loaded::Bytes(Cow::Owned(bytes.clone()));
        }
        if let Some((_, why)) = self.unreadable.iter().find(|(file, _)| file == path) {
            return Loaded::Unreadable(why.clone());
        }
        // A file that cannot be read is the include's problem, not the whole project's.
        let bytes = self
            .bytes(path)
            .unwrap_or_else(|error| FileBytes::Unreadable(cannot_read(path, &error)));
        match bytes {
            FileBytes::Missing => Loaded::Missing,
            FileBytes::Bytes(bytes) => {
                self.included.insert(path.to_owned(), bytes.clone());
                Loaded::Bytes(Cow::Owned(bytes))
            }
            FileBytes::Unreadable(why) => {
                self.unreadable.push((path.to_owned(), why.clone()));
                Loaded::Unreadable(why)
            }
        }
    }
}

fn too_large(name: &str) -> String {
    format!("`{name}` is larger than the {MAX_SOURCE_BYTES} bytes a configuration file may hold")
}

/// `valid_up_to` is where the text stops being UTF-8; `wanted` is what it was to be read as.
pub(crate) fn not_utf8(name: &str, valid_up_to: usize, wanted: &str) -> String {
    format!("`{name}` is not UTF-8 text (byte {valid_up_to} is not), so it cannot be {wanted}")
}

fn cannot_read(name: &str, error: &ConfigError) -> String {
    let ConfigError::Read { source, .. } = error;
    format!("`{name}` cannot be read: {source}")
}
