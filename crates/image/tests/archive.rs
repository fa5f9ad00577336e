//! Packing is deterministic and round-trips; unpacking refuses every kind of hostile entry and
//! leaves nothing behind when it does.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use lockstep_image::{ImageError, UnpackLimits, hash_file, pack, unpack, unpack_verified};

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("src/deep/er")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("README"), "hello\n").unwrap();
    fs::write(root.join("src/deep/er/data.bin"), vec![7u8; 100_000]).unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    let long_name = "n".repeat(150);
    fs::write(root.join("src").join(&long_name), "long").unwrap();
    symlink("src/deep", root.join("shortcut")).unwrap();
}

fn pack_to_file(tree: &Path, out: &Path) -> lockstep_image::ImageId {
    let file = fs::File::create(out).unwrap();
    pack(&[], tree, "app", file).unwrap().id
}

#[test]
fn packing_the_same_tree_twice_gives_the_same_bytes_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let first = pack_to_file(&tree, &dir.path().join("a.tar.zst"));
    // Times and permissions that carry no meaning must not change the image.
    fs::set_permissions(tree.join("README"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::File::options()
        .append(true)
        .open(tree.join("README"))
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(99))
        .unwrap();
    let second = pack_to_file(&tree, &dir.path().join("b.tar.zst"));
    assert_eq!(first, second);
    assert_eq!(
        fs::read(dir.path().join("a.tar.zst")).unwrap(),
        fs::read(dir.path().join("b.tar.zst")).unwrap()
    );
    assert_eq!(hash_file(&dir.path().join("a.tar.zst")).unwrap(), first);
}

#[test]
fn changing_one_byte_of_one_file_changes_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let first = pack_to_file(&tree, &dir.path().join("a.tar.zst"));
    fs::write(tree.join("README"), "hellO\n").unwrap();
    let second = pack_to_file(&tree, &dir.path().join("b.tar.zst"));
    assert_ne!(first, second);
}

#[test]
fn unpacking_restores_files_modes_links_and_empty_folders() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let image = dir.path().join("image.tar.zst");
    let id = pack_to_file(&tree, &image);
    let dest = dir.path().join("out");
    let stats = unpack_verified(&image, &id, &dest, UnpackLimits::default()).unwrap();
    let app = dest.join("app");
    assert_eq!(fs::read_to_string(app.join("README")).unwrap(), "hello\n");
    assert_eq!(
        fs::read(app.join("src/deep/er/data.bin")).unwrap(),
        vec![7u8; 100_000]
    );
    assert_eq!(
        fs::read_to_string(app.join("src").join("n".repeat(150))).unwrap(),
        "long"
    );
    let mode = |p: &str| fs::metadata(app.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(mode("README"), 0o644);
    assert!(app.join("empty").is_dir());
    assert_eq!(
        fs::read_link(app.join("shortcut")).unwrap(),
        Path::new("src/deep")
    );
    assert!(app.join("shortcut/er/data.bin").is_file());
    let run_sh = "#!/bin/sh\necho run\n".len() as u64;
    assert_eq!(stats.content_bytes, 6 + 100_000 + run_sh + 4);
}

#[test]
fn a_tampered_image_is_refused_and_nothing_is_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let image = dir.path().join("image.tar.zst");
    let id = pack_to_file(&tree, &image);
    let mut bytes = fs::read(&image).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&image, bytes).unwrap();
    let dest = dir.path().join("out");
    let error = unpack_verified(&image, &id, &dest, UnpackLimits::default()).unwrap_err();
    assert!(matches!(error, ImageError::HashMismatch { .. }), "{error}");
    assert!(!dest.exists());
}

#[test]
fn unpacking_never_overwrites_an_existing_destination() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let image = dir.path().join("image.tar.zst");
    let id = pack_to_file(&tree, &image);
    let dest = dir.path().join("out");
    fs::create_dir(&dest).unwrap();
    let error = unpack_verified(&image, &id, &dest, UnpackLimits::default()).unwrap_err();
    assert!(matches!(error, ImageError::DestinationExists(_)), "{error}");
}

/// A hand-made hostile archive: the tar crate refuses to write such paths, so the name field is
/// filled in directly.
enum Hostile<'a> {
    File(&'a str),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Special(&'a str, tar::EntryType),
}

fn hostile_archive(entries: &[Hostile<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (path, kind, link, data): (&str, tar::EntryType, Option<&str>, &[u8]) = match entry {
            Hostile::File(p) => (p, tar::EntryType::Regular, None, b"payload"),
            Hostile::Dir(p) => (p, tar::EntryType::Directory, None, b""),
            Hostile::Symlink(p, t) => (p, tar::EntryType::Symlink, Some(t), b""),
            Hostile::HardLink(p, t) => (p, tar::EntryType::Link, Some(t), b""),
            Hostile::Special(p, kind) => (p, *kind, None, b""),
        };
        let mut header = tar::Header::new_old();
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    zstd::encode_all(&builder.into_inner().unwrap()[..], 3).unwrap()
}

fn refused(entries: &[Hostile<'_>], expected_reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let dest = dir.path().join("box/out");
    fs::create_dir(dir.path().join("box")).unwrap();
    let error = unpack(
        &hostile_archive(entries)[..],
        &dest,
        UnpackLimits::default(),
    )
    .unwrap_err();
    match &error {
        ImageError::UnsafeEntry { reason, .. } => assert_eq!(*reason, expected_reason),
        other => panic!("expected an unsafe entry ({expected_reason}), got: {other}"),
    }
    assert!(!dest.exists(), "a refused archive left {}", dest.display());
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("box")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "staging folder left behind: {leftovers:?}"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "wrote outside");
}

#[test]
fn an_absolute_path_is_refused() {
    refused(&[Hostile::File("/tmp/evil")], "an absolute path");
}

#[test]
fn a_path_climbing_out_with_dot_dot_is_refused() {
    refused(
        &[Hostile::File("app/../../outside/evil")],
        "a path with `..`",
    );
}

#[test]
fn device_files_are_refused() {
    refused(
        &[Hostile::Special("app/null", tar::EntryType::Char)],
        "a device file",
    );
    refused(
        &[Hostile::Special("app/disk", tar::EntryType::Block)],
        "a device file",
    );
}

#[test]
fn named_pipes_are_refused() {
    refused(
        &[Hostile::Special("app/pipe", tar::EntryType::Fifo)],
        "a named pipe",
    );
}

#[test]
fn hard_links_are_refused() {
    refused(
        &[Hostile::HardLink("app/passwd", "/etc/passwd")],
        "a hard link",
    );
}

#[test]
fn links_to_anywhere_are_kept_as_links() {
    // A virtualenv's interpreter names the host's; it is followed only inside the sandbox.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let archive = hostile_archive(&[
        Hostile::Dir("app/"),
        Hostile::Symlink("app/python", "/usr/bin/python3"),
        Hostile::Symlink("app/up", "../.."),
    ]);
    unpack(&archive[..], &dest, UnpackLimits::default()).unwrap();
    assert_eq!(
        fs::read_link(dest.join("app/python")).unwrap(),
        Path::new("/usr/bin/python3")
    );
    assert_eq!(
        fs::read_link(dest.join("app/up")).unwrap(),
        Path::new("../..")
    );
}

#[test]
fn writing_through_a_link_out_of_the_image_is_refused() {
    refused(
        &[
            Hostile::Dir("app/"),
            Hostile::Symlink("app/up", "../../outside"),
            Hostile::File("app/up/evil"),
        ],
        "an entry inside a link or a file",
    );
    refused(
        &[
            Hostile::Symlink("app/etc", "/etc"),
            Hostile::File("app/etc/evil"),
        ],
        "an entry inside a link or a file",
    );
}

#[test]
fn writing_through_a_link_is_refused() {
    refused(
        &[Hostile::Symlink("app", "."), Hostile::File("app/file")],
        "an entry inside a link or a file",
    );
}

#[test]
fn an_entry_replacing_another_is_refused() {
    refused(
        &[Hostile::File("app-file"), Hostile::File("app-file")],
        "an entry that replaces another",
    );
}

#[test]
fn an_archive_larger_than_the_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let archive = hostile_archive(&[Hostile::File("a"), Hostile::File("b")]);
    let limits = UnpackLimits {
        max_bytes: 10,
        max_entries: 100,
    };
    let dest = dir.path().join("out");
    let error = unpack(&archive[..], &dest, limits).unwrap_err();
    assert!(matches!(error, ImageError::TooLarge(_)), "{error}");
    assert!(!dest.exists());
}

#[test]
fn garbage_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let error = unpack(&b"definitely not zstd"[..], &dest, UnpackLimits::default()).unwrap_err();
    assert!(
        matches!(error, ImageError::Corrupt(_) | ImageError::Io { .. }),
        "{error}"
    );
    assert!(!dest.exists());
}

/// A tree like an app's dependencies: many files, each different, compressible.
fn many_files_tree(root: &Path) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for package in 0..40 {
        let dir = root.join(format!("node_modules/package-{package}/lib"));
        fs::create_dir_all(&dir).unwrap();
        for file in 0..25 {
            let mut text = String::new();
            for line in 0..400 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(&format!("export const v{line} = {};\n", state % 100_000));
            }
            fs::write(dir.join(format!("module-{file}.js")), text).unwrap();
        }
    }
}

#[test]
fn the_frames_index_the_file_and_a_one_file_change_leaves_all_but_a_few_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    many_files_tree(&tree);
    let pack_indexed = |name: &str| {
        let path = dir.path().join(name);
        let packed = pack(&[], &tree, "app", fs::File::create(&path).unwrap()).unwrap();
        (fs::read(&path).unwrap(), packed)
    };
    let (before_bytes, before) = pack_indexed("a.tar.zst");
    assert!(
        before.frames.0.len() > 10,
        "{} frames",
        before.frames.0.len()
    );
    assert_eq!(before.frames.total(), before_bytes.len() as u64);
    for (offset, frame) in before.frames.with_offsets() {
        let bytes = &before_bytes[offset as usize..(offset + frame.length) as usize];
        assert_eq!(lockstep_image::frame_hash(bytes), frame.hash);
    }

    let changed = tree.join("node_modules/package-17/lib/module-3.js");
    let mut text = fs::read_to_string(&changed).unwrap();
    text.push_str("export const added = 1;\n");
    fs::write(&changed, text).unwrap();
    let (after_bytes, after) = pack_indexed("b.tar.zst");
    assert_ne!(after.id, before.id);
    let new_bytes: u64 = after
        .frames
        .0
        .iter()
        .filter(|frame| !before.frames.0.contains(frame))
        .map(|frame| frame.length)
        .sum();
    assert!(new_bytes > 0);
    assert!(
        new_bytes * 20 < after_bytes.len() as u64,
        "{new_bytes} of {} bytes are new",
        after_bytes.len()
    );
    let dest = dir.path().join("unpacked");
    unpack_verified(
        &dir.path().join("b.tar.zst"),
        &after.id,
        &dest,
        UnpackLimits::default(),
    )
    .unwrap();
    assert!(
        fs::read_to_string(dest.join("app/node_modules/package-17/lib/module-3.js"))
            .unwrap()
            .ends_with("added = 1;\n")
    );
}
