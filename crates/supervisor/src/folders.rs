//! Folders a daemon makes for a sandbox inside trees it does not control: a release unpacked
//! from an image (whose links a build chose), mount folders the app writes. They are made one
//! component at a time, each opened with `O_NOFOLLOW`, so that a link planted anywhere on the
//! path can never send root's `mkdir` or `chown` outside the tree.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, mkdirat};

use crate::sandbox::RunAs;

/// Makes `root/relative` a folder, creating the folders missing on the way, and gives the last
/// one to `owner` (when this process is root). `root` itself is trusted; a link, file or `..`
/// at any component below it is an error.
pub fn ensure_folder(root: &Path, relative: &Path, owner: Option<RunAs>) -> io::Result<PathBuf> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut folder: OwnedFd = openat(nix::fcntl::AT_FDCWD, root, flags, Mode::empty())?;
    let mut reached = root.to_owned();
    for component in relative.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::CurDir => continue,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a plain relative path", relative.display()),
                ));
            }
        };
        reached.push(name);
        match mkdirat(&folder, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(error) => return Err(error.into()),
        }
        folder = openat(&folder, name, flags, Mode::empty()).map_err(|error| match error {
            Errno::ELOOP | Errno::ENOTDIR => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is a link or a file where a folder must be",
                    reached.display()
                ),
            ),
            other => other.into(),
        })?;
    }
    if let Some(owner) = owner.filter(|_| nix::unistd::geteuid().is_root()) {
        nix::unistd::fchown(&folder, Some(owner.uid.into()), Some(owner.gid.into()))?;
        nix::sys::stat::fchmod(&folder, Mode::from_bits_truncate(0o700))?;
    }
    Ok(reached)
}

/// Gives a whole tree to `user` (when this process is root): every folder, file and link,
/// links themselves and never what they point at. Only for a tree nobody else writes meanwhile
/// (a fresh checkout, a fresh copy).
pub fn give_tree(dir: &Path, user: RunAs) -> io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let give = |path: &Path| {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(user.uid.into()),
            Some(user.gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    };
    give(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            give_tree(&entry.path(), user)?;
        } else {
            give(&entry.path())?;
        }
    }
    Ok(())
}

/// How many times the files that changed while they were copied are copied again.
const SETTLE_PASSES: usize = 5;

/// A copy of folder `from` at `to` (which must not exist), links copied as links, never
/// followed; blocks shared where the filesystem can (btrfs, XFS), a plain copy elsewhere. Each
/// file's copy is a version the file had: one written to while it was read is copied again.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    cp(from, to)?;
    for _ in 0..SETTLE_PASSES {
        let changed = changed_since_copied(from, to)?;
        if changed.is_empty() {
            return Ok(());
        }
        for relative in changed {
            cp(&from.join(&relative), &to.join(&relative))?;
        }
    }
    Err(io::Error::other(format!(
        "files in {} kept changing while they were copied",
        from.display()
    )))
}

fn cp(from: &Path, to: &Path) -> io::Result<()> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg("--no-target-directory")
        .arg(from)
        .arg(to)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cp -a {} {} exited with {status}",
            from.display(),
            to.display()
        )))
    }
}

/// The files under `from` (relative paths) whose size or modification time differs from their
/// copy's under `to`. `cp -a` gives a copy the time its file had when it began to read it, so a
/// file written to since differs; one made since has no copy and is left out.
fn changed_since_copied(from: &Path, to: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let mut changed = Vec::new();
    let mut folders = vec![std::path::PathBuf::new()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(from.join(&folder)) {
            Ok(entries) => entries,
            // Removed since: nothing of it to copy again.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let relative = folder.join(entry.file_name());
            let Ok(original) = std::fs::symlink_metadata(from.join(&relative)) else {
                continue;
            };
            if original.is_dir() {
                folders.push(relative);
            } else if original.is_file() {
                let Ok(copy) = std::fs::symlink_metadata(to.join(&relative)) else {
                    continue;
                };
                if copy.len() != original.len() || copy.modified()? != original.modified()? {
                    changed.push(relative);
                }
            }
        }
    }
    Ok(changed)
}

/// Bytes of the files under `dir`, links not followed.
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_after_it_was_copied_is_copied_again_and_the_rest_is_left() {
        let root = tempfile::tempdir().unwrap();
        let (from, to) = (root.path().join("from"), root.path().join("to"));
        std::fs::create_dir_all(from.join("uploads")).unwrap();
        std::fs::write(from.join("uploads/photo"), "first version").unwrap();
        std::fs::write(from.join("notes"), "kept").unwrap();
        cp(&from, &to).unwrap();
        assert!(changed_since_copied(&from, &to).unwrap().is_empty());

        std::fs::write(from.join("uploads/photo"), "the second version").unwrap();
        assert_eq!(
            changed_since_copied(&from, &to).unwrap(),
            [std::path::PathBuf::from("uploads/photo")]
        );
        let again = root.path().join("again");
        copy_tree(&from, &again).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.join("uploads/photo")).unwrap(),
            "the second version"
        );
        assert_eq!(
            std::fs::read_to_string(again.join("notes")).unwrap(),
            "kept"
        );
    }

    #[test]
    fn folders_are_made_on_the_way() {
        let root = tempfile::tempdir().unwrap();
        let made = ensure_folder(root.path(), Path::new("web/uploads"), None).unwrap();
        assert_eq!(made, root.path().join("web/uploads"));
        assert!(made.is_dir());
        // A second call finds them.
        ensure_folder(root.path(), Path::new("web/uploads"), None).unwrap();
    }

    #[test]
    fn a_link_anywhere_on_the_path_is_refused_and_nothing_is_made_through_it() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("web")).unwrap();
        let error = ensure_folder(root.path(), Path::new("web/uploads"), None).unwrap_err();
        assert!(error.to_string().contains("is a link or a file"), "{error}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        std::fs::write(root.path().join("file"), "").unwrap();
        assert!(ensure_folder(root.path(), Path::new("file/x"), None).is_err());
        assert!(ensure_folder(root.path(), Path::new("../x"), None).is_err());
    }
}
