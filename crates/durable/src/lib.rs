//! Files that must survive a crash whole: written beside their final name, flushed to disk,
//! renamed into place, and the folder flushed so the rename itself is durable.
//!
//! Owns: how every role writes its state files. Must never: write in place, or follow a link at
//! the final name (a folder an app can write may hold one).

use std::io::Write;
use std::path::Path;

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut file, value)?;
    file.write_all(b"\n")?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes a file whole, readable by its owner only, replacing whatever is at `path` (a link
/// there included: it is replaced, never followed, so that a folder the app can write is safe
/// to write in). The file is given to `owner` (uid, gid) when this process is root.
pub fn replace_private(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(contents)?;
    if let Some((uid, gid)) = owner.filter(|_| nix::unistd::geteuid().is_root()) {
        nix::unistd::fchown(file.as_file(), Some(uid.into()), Some(gid.into()))?;
    }
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_value_reads_back_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read_json::<u32>(&path).unwrap(), None);
        write_json(&path, &42u32).unwrap();
        assert_eq!(read_json::<u32>(&path).unwrap(), Some(42));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
