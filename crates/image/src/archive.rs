//! The image file format: a tar stream with fixed metadata, compressed with zstd in frames
//! (`frames.rs`), named by the blake3 hash of its bytes.
//!
//! Packing walks the tree in byte order of names and writes every header with the same owner,
//! time and normalised mode, so one tree always gives one file and one id. Unpacking trusts
//! nothing: it checks the hash first, then refuses absolute paths, `..`, device files, hard links
//! and writes through links. A link may point anywhere (a virtualenv's `python` names
//! `/usr/bin/python3.11`): it is only ever followed inside the sandbox, where `/` is the
//! sandbox's own.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::frames::{FrameIndex, FrameWriter, compress_frames};
use crate::{ImageError, ImageId};

/// Compression level of the zstd CLI's default, so comparisons with `tar | zstd` are fair.
const ZSTD_LEVEL: i32 = 3;

/// What an archive may hold at most when unpacked; a guard against decompression bombs.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 50 * 1024 * 1024 * 1024,
            max_entries: 2_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Compressed size in bytes.
    pub size: u64,
    /// Sum of the regular files' sizes.
    pub content_bytes: u64,
    pub entries: u64,
}

/// A file-like entry to put first in the archive, before the folder's tree.
pub struct ExtraFile<'a> {
    pub path: &'a str,
    pub contents: &'a [u8],
}

/// What packing made: the image's id, its sizes, and its frames.
#[derive(Debug, Clone)]
pub struct Packed {
    pub id: ImageId,
    pub stats: ArchiveStats,
    pub frames: FrameIndex,
}

/// Packs `extra` and then the tree of `dir` under `prefix/` into `out`.
pub fn pack(
    extra: &[ExtraFile<'_>],
    dir: &Path,
    prefix: &str,
    out: impl Write + Send,
) -> Result<Packed, ImageError> {
    // Another thread compresses the frames while this one reads files: the same overlap
    // `tar | zstd` gets from being two processes.
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel(2);
        let compressor =
            scope.spawn(move || compress_frames(receiver, ZSTD_LEVEL, HashingWriter::new(out)));
        let archived = archive_into(extra, dir, prefix, FrameWriter::new(sender));
        let compressed = compressor.join().expect("the compressor does not panic");
        // The compressor's error first: the archiver only saw that it stopped.
        let (hashing, frames) = compressed.map_err(ImageError::io("compress"))?;
        let mut stats = archived?;
        let (hash, size, mut out) = hashing.finish();
        out.flush().map_err(ImageError::io("write archive"))?;
        stats.size = size;
        Ok(Packed {
            id: ImageId::from_digest(hash.as_bytes()),
            stats,
            frames,
        })
    })
}

/// Writes the tar stream of `extra` and the tree into `frames`, each extra file a frame of its
/// own (`image.json` changes with every build); the writer is dropped at the end, which ends
/// the compressor's input.
fn archive_into(
    extra: &[ExtraFile<'_>],
    dir: &Path,
    prefix: &str,
    frames: FrameWriter,
) -> Result<ArchiveStats, ImageError> {
    let mut builder = tar::Builder::new(frames);
    let mut stats = ArchiveStats::default();
    for file in extra {
        let mut header = fixed_header(tar::EntryType::Regular, 0o644, file.contents.len() as u64);
        builder
            .append_data(&mut header, file.path, file.contents)
            .map_err(ImageError::io("write archive"))?;
        builder
            .get_mut()
            .cut()
            .map_err(ImageError::io("write archive"))?;
        stats.entries += 1;
        stats.content_bytes += file.contents.len() as u64;
    }
    let mut header = fixed_header(tar::EntryType::Directory, 0o755, 0);
    builder
        .append_data(&mut header, format!("{prefix}/"), io::empty())
        .map_err(ImageError::io("write archive"))?;
    stats.entries += 1;
    append_tree(&mut builder, dir, Path::new(prefix), &mut stats)?;
    let mut frames = builder
        .into_inner()
        .map_err(ImageError::io("write archive"))?;
    frames.cut().map_err(ImageError::io("write archive"))?;
    Ok(stats)
}

fn fixed_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_tree(
    builder: &mut tar::Builder<FrameWriter>,
    dir: &Path,
    prefix: &Path,
    stats: &mut ArchiveStats,
) -> Result<(), ImageError> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(ImageError::io_at("read folder", dir))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(ImageError::io_at("read folder", dir))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let archived = prefix.join(&name);
        let meta = fs::symlink_metadata(&path).map_err(ImageError::io_at("read", &path))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            let mut header = fixed_header(tar::EntryType::Directory, 0o755, 0);
            builder
                .append_data(&mut header, &archived, io::empty())
                .map_err(ImageError::io("write archive"))?;
            stats.entries += 1;
            entry_ended(builder, &archived)?;
            append_tree(builder, &path, &archived, stats)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(ImageError::io_at("read link", &path))?;
            let mut header = fixed_header(tar::EntryType::Symlink, 0o777, 0);
            builder
                .append_link(&mut header, &archived, &target)
                .map_err(ImageError::io("write archive"))?;
            stats.entries += 1;
            entry_ended(builder, &archived)?;
        } else if kind.is_file() {
            let executable = meta.mode() & 0o111 != 0;
            let mode = if executable { 0o755 } else { 0o644 };
            let mut header = fixed_header(tar::EntryType::Regular, mode, meta.len());
            let file = fs::File::open(&path).map_err(ImageError::io_at("read", &path))?;
            // A file that changes size while being read would corrupt the stream: take exactly
            // the length the header announced.
            let mut reader = file.take(meta.len());
            builder
                .append_data(&mut header, &archived, &mut reader)
                .map_err(ImageError::io("write archive"))?;
            stats.entries += 1;
            stats.content_bytes += meta.len();
            entry_ended(builder, &archived)?;
        } else {
            return Err(ImageError::SpecialFile(path));
        }
    }
    Ok(())
}

fn entry_ended(builder: &mut tar::Builder<FrameWriter>, path: &Path) -> Result<(), ImageError> {
    builder
        .get_mut()
        .entry_ended(path)
        .map_err(ImageError::io("write archive"))
}

struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
            written: 0,
        }
    }

    fn finish(self) -> (blake3::Hash, u64, W) {
        (self.hasher.finalize(), self.written, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The id an archive file's bytes hash to.
pub fn hash_file(path: &Path) -> Result<ImageId, ImageError> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(fs::File::open(path).map_err(ImageError::io_at("read", path))?)
        .map_err(ImageError::io_at("read", path))?;
    Ok(ImageId::from_digest(hasher.finalize().as_bytes()))
}

/// Checks that the archive at `path` is the image `expected`, then unpacks it into `dest`,
/// which must not exist yet. On any failure nothing is left at `dest`.
pub fn unpack_verified(
    path: &Path,
    expected: &ImageId,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<ArchiveStats, ImageError> {
    let actual = hash_file(path)?;
    if actual != *expected {
        return Err(ImageError::HashMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    let file = fs::File::open(path).map_err(ImageError::io_at("read", path))?;
    unpack(file, dest, limits)
}

/// Unpacks a compressed archive into `dest`, which must not exist yet. The work happens in a
/// sibling folder renamed into place at the end, so `dest` appears whole or not at all.
pub fn unpack(
    compressed: impl Read,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<ArchiveStats, ImageError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(ImageError::DestinationExists(dest.to_owned()));
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(parent)
        .map_err(ImageError::io_at("create folder in", parent))?;
    let decoder = zstd::Decoder::new(compressed).map_err(ImageError::io("decompress"))?;
    let stats = Unpacker::new(staging.path(), limits).run(decoder)?;
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io_at("set permissions on", staging.path()))?;
    fs::rename(staging.keep(), dest).map_err(ImageError::io_at("move into place", dest))?;
    Ok(stats)
}

struct Unpacker<'a> {
    root: &'a Path,
    limits: UnpackLimits,
    stats: ArchiveStats,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, limits: UnpackLimits) -> Self {
        Unpacker {
            root,
            limits,
            stats: ArchiveStats::default(),
        }
    }

    fn run(mut self, tar_stream: impl Read) -> Result<ArchiveStats, ImageError> {
        let mut archive = tar::Archive::new(tar_stream);
        let entries = archive.entries().map_err(ImageError::corrupt)?;
        for entry in entries {
            let entry = entry.map_err(ImageError::corrupt)?;
            self.stats.entries += 1;
            if self.stats.entries > self.limits.max_entries {
                return Err(ImageError::TooLarge(format!(
                    "more than {} entries",
                    self.limits.max_entries
                )));
            }
            self.entry(entry)?;
        }
        Ok(self.stats)
    }

    fn entry(&mut self, mut entry: tar::Entry<'_, impl Read>) -> Result<(), ImageError> {
        let raw_path = entry.path().map_err(ImageError::corrupt)?.into_owned();
        let relative = safe_relative(&raw_path)?;
        let unsafe_entry = |reason| ImageError::UnsafeEntry {
            path: raw_path.clone(),
            reason,
        };
        if relative.as_os_str().is_empty() {
            return Ok(());
        }
        let kind = entry.header().entry_type();
        let target = self.root.join(&relative);
        self.prepare_parents(&relative, &raw_path)?;
        let exists = fs::symlink_metadata(&target).ok();
        match kind {
            tar::EntryType::Directory => match exists {
                Some(meta) if meta.is_dir() => Ok(()),
                Some(_) => Err(unsafe_entry("an entry that replaces another")),
                None => fs::create_dir(&target).map_err(ImageError::io_at("create", &target)),
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if exists.is_some() {
                    return Err(unsafe_entry("an entry that replaces another"));
                }
                let size = entry.size();
                self.stats.content_bytes += size;
                if self.stats.content_bytes > self.limits.max_bytes {
                    return Err(ImageError::TooLarge(format!(
                        "more than {} bytes",
                        self.limits.max_bytes
                    )));
                }
                let executable = entry.header().mode().map_err(ImageError::corrupt)? & 0o111 != 0;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(ImageError::io_at("create", &target))?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut file)
                    .map_err(ImageError::corrupt)?;
                if copied != size {
                    return Err(ImageError::Corrupt(
                        "an entry is shorter than its header says".into(),
                    ));
                }
                let mode = if executable { 0o755 } else { 0o644 };
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(ImageError::io_at("set permissions on", &target))
            }
            tar::EntryType::Symlink => {
                if exists.is_some() {
                    return Err(unsafe_entry("an entry that replaces another"));
                }
                let link_target = entry
                    .link_name()
                    .map_err(ImageError::corrupt)?
                    .ok_or_else(|| unsafe_entry("a link without a target"))?
                    .into_owned();
                if link_target.as_os_str().is_empty() {
                    return Err(unsafe_entry("a link without a target"));
                }
                std::os::unix::fs::symlink(&link_target, &target)
                    .map_err(ImageError::io_at("create link", &target))?;
                Ok(())
            }
            tar::EntryType::Link => Err(unsafe_entry("a hard link")),
            tar::EntryType::Char | tar::EntryType::Block => Err(unsafe_entry("a device file")),
            tar::EntryType::Fifo => Err(unsafe_entry("a named pipe")),
            _ => Err(unsafe_entry("an entry of a kind images never hold")),
        }
    }

    /// Creates the folders above an entry, refusing to go through anything but real folders:
    /// a link among them could send the write anywhere.
    fn prepare_parents(&self, relative: &Path, raw_path: &Path) -> Result<(), ImageError> {
        let mut current = self.root.to_path_buf();
        let Some(parent) = relative.parent() else {
            return Ok(());
        };
        for component in parent.components() {
            current.push(component);
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(ImageError::UnsafeEntry {
                        path: raw_path.to_owned(),
                        reason: "an entry inside a link or a file",
                    });
                }
                Err(_) => {
                    fs::create_dir(&current).map_err(ImageError::io_at("create", &current))?
                }
            }
        }
        Ok(())
    }
}

/// The entry's path made relative and clean, or an error if it is absolute or climbs with `..`.
fn safe_relative(raw: &Path) -> Result<PathBuf, ImageError> {
    let mut clean = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ImageError::UnsafeEntry {
                    path: raw.to_owned(),
                    reason: "a path with `..`",
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ImageError::UnsafeEntry {
                    path: raw.to_owned(),
                    reason: "an absolute path",
                });
            }
        }
    }
    Ok(clean)
}
