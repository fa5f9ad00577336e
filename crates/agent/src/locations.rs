//! What the node router does with a request under the active release's `web.locations`, as
//! Platform.sh's router does: serve a file from a location's `root`, pass the request to the app
//! (as it is, or as another path), or answer 404.
//!
//! Files are looked up safely: the path is percent-decoded, `..` and NUL are refused, and the
//! file is opened by the kernel beneath the location's root (`openat2` with `RESOLVE_BENEATH`),
//! so that no link, absolute or climbing, leads out of it, and nothing the app writes into a
//! mount meanwhile can swap the file for another between the check and the read. A path under
//! one of the app's mounts is looked up in the mount's folder, as the app sees it.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lockstep_config::{Expires, Location, Passthru};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use regex::Regex;

use crate::release::ReadyMount;

/// What the active release serves: its app folder, its mounts, and its locations, rules
/// compiled.
#[derive(Debug)]
pub struct Served {
    app_dir: PathBuf,
    /// Longest path first.
    mounts: Vec<ReadyMount>,
    /// Longest prefix first.
    locations: Vec<(String, Location, Vec<Option<Regex>>)>,
    passes_to_app: bool,
    /// Whether `.php` files are PHP-FPM's to run (a PHP app without a start command): never
    /// served as files, run where `scripts` allows, and a passthru path names the script.
    php: bool,
}

/// A PHP script to run, as PHP-FPM needs to find it.
#[derive(Debug, PartialEq)]
pub struct Script {
    /// Where the app sees it, relative to the app folder.
    pub path: PathBuf,
    /// Its location's root, relative to the app folder.
    pub document_root: PathBuf,
    /// The URL path that names it (`/index.php`).
    pub script_name: String,
}

/// A file opened for an answer, by the kernel, beneath its location's root.
#[derive(Debug)]
pub struct OpenFile {
    pub file: std::fs::File,
    /// Where the app sees it, relative to the app folder: for its content type.
    pub path: PathBuf,
}

impl PartialEq for OpenFile {
    /// The same file on disk, shown at the same path.
    fn eq(&self, other: &OpenFile) -> bool {
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()) && self.path == other.path,
            _ => false,
        }
    }
}

/// What to do with one request.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Answer with this file.
    File {
        file: OpenFile,
        expires: Expires,
        headers: BTreeMap<String, String>,
    },
    /// Send to the app, with this path (and the request's query) when given.
    App(Option<String>),
    /// Run this PHP script.
    Script(Script),
    NotFound,
    /// A path with `..` or NUL, or one that leads out of the root.
    Refused,
}

impl Served {
    pub fn new(
        app_dir: PathBuf,
        mut mounts: Vec<ReadyMount>,
        web: &lockstep_config::Web,
    ) -> Served {
        mounts.sort_by_key(|mount| std::cmp::Reverse(mount.path.components().count()));
        let mut locations: Vec<_> = web
            .locations
            .iter()
            .map(|(prefix, location)| {
                // The config check only admits valid patterns; one that is not never matches.
                let rules = location
                    .rules
                    .iter()
                    .map(|r| Regex::new(&r.pattern).ok())
                    .collect();
                (prefix.clone(), location.clone(), rules)
            })
            .collect();
        locations.sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
        Served {
            app_dir,
            mounts,
            locations,
            passes_to_app: web.passes_to_app(),
            php: false,
        }
    }

    /// The same, for a PHP app whose scripts PHP-FPM runs.
    pub fn running_php(mut self) -> Served {
        self.php = true;
        self
    }

    /// Whether some request can reach the app, so that the release needs a web process.
    pub fn passes_to_app(&self) -> bool {
        self.passes_to_app
    }

    /// Decides for a request of `raw_path` (the URI's path, still percent-encoded). `files`:
    /// whether the method may be answered with a file (GET and HEAD).
    pub fn decide(&self, raw_path: &str, files: bool) -> Decision {
        self.decide_following(raw_path, files, true)
    }

    /// [`Served::decide`]; a PHP passthru path is decided once more, as the script it names,
    /// when `follow` (and only once: a passthru to a passthru is no script). A passthru's
    /// script runs whatever its location's `scripts` says, as on Platform.sh.
    fn decide_following(&self, raw_path: &str, files: bool, follow: bool) -> Decision {
        if self.locations.is_empty() {
            return Decision::App(None);
        }
        let Some(path) = percent_decode(raw_path) else {
            return Decision::Refused;
        };
        if path.contains('\0') || path.split('/').any(|part| part == "..") {
            return Decision::Refused;
        }
        let Some((prefix, location, rules)) = self
            .locations
            .iter()
            .find(|(prefix, _, _)| prefix_matches(prefix, &path))
        else {
            return Decision::NotFound;
        };
        let rule = location
            .rules
            .iter()
            .zip(rules)
            .find(|(_, regex)| regex.as_ref().is_some_and(|r| r.is_match(&path)))
            .map(|(rule, _)| rule);
        let allow = rule.and_then(|r| r.allow).unwrap_or(location.allow);
        let expires = rule.and_then(|r| r.expires).unwrap_or(location.expires);
        let passthru = rule
            .and_then(|r| r.passthru.clone())
            .unwrap_or_else(|| location.passthru.clone());
        let headers = match rule {
            Some(rule) if !rule.headers.is_empty() => rule.headers.clone(),
            _ => location.headers.clone(),
        };
        let scripts = !follow || rule.and_then(|r| r.scripts).unwrap_or(location.scripts);
        if let (Some(root), true, true) = (&location.root, allow, files || self.php) {
            let rest = &path[prefix.trim_end_matches('/').len()..];
            match self.find_file(root, rest, &location.index) {
                // A PHP file is never sent as it is: it may hold the app's secrets.
                Found::File(file) if self.php && is_php(&file.path) => {
                    if !scripts {
                        return Decision::NotFound;
                    }
                    return Decision::Script(Script {
                        script_name: script_name(&path, &file.path),
                        document_root: PathBuf::from(root.trim_matches('/')),
                        path: file.path,
                    });
                }
                Found::File(file) if files => {
                    return Decision::File {
                        file,
                        expires,
                        headers,
                    };
                }
                Found::File(_) | Found::Nothing => {}
                Found::Outside => return Decision::Refused,
            }
        }
        match passthru {
            Passthru::No => Decision::NotFound,
            Passthru::App if self.php => Decision::NotFound,
            Passthru::App => Decision::App(None),
            Passthru::Path(target) if self.php && follow => {
                match self.decide_following(&target, true, false) {
                    script @ Decision::Script(_) => script,
                    _ => Decision::NotFound,
                }
            }
            Passthru::Path(_) if self.php => Decision::NotFound,
            Passthru::Path(target) => Decision::App(Some(target)),
        }
    }
}

fn is_php(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension == "php")
}

/// The URL path of the script `file` found for the request of `path`: the path itself, or,
/// for a folder's index file, the folder's path with the file's name.
fn script_name(path: &str, file: &Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if path.ends_with(&*name) {
        path.to_owned()
    } else {
        format!("{}/{name}", path.trim_end_matches('/'))
    }
}

/// `/static` matches `/static`, `/static/` and `/static/x`, not `/staticx`; `/` matches all.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

enum Found {
    File(OpenFile),
    Outside,
    Nothing,
}

impl Served {
    /// The regular file `rest` names under the location root `root` (relative to the app), or
    /// the first index file of the folder it names.
    fn find_file(&self, root: &str, rest: &str, index: &[String]) -> Found {
        let root = Path::new(root.trim_matches('/'));
        let rest: PathBuf = rest
            .split('/')
            .filter(|part| !part.is_empty() && *part != ".")
            .collect();
        let full = root.join(&rest);
        // Under a mount, the file is in the mount's folder; the lookup stays beneath the
        // location's root, or beneath the mount when the mount lies inside that root.
        let (base, root_in_base, rest_in_root) =
            match self.mounts.iter().find(|m| full.starts_with(&m.path)) {
                Some(mount) => match root.strip_prefix(&mount.path) {
                    Ok(root_inside) => (&mount.host, root_inside.to_owned(), rest.clone()),
                    Err(_) => (
                        &mount.host,
                        PathBuf::new(),
                        full.strip_prefix(&mount.path).unwrap_or(&full).to_owned(),
                    ),
                },
                None => (&self.app_dir, root.to_owned(), rest.clone()),
            };
        let opened = nix::fcntl::open(
            base.as_path(),
            OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .and_then(|base| open_beneath(&base, &root_in_base, true))
        .and_then(|root| {
            let target = open_beneath(&root, &rest_in_root, false)?;
            Ok((root, target))
        });
        let (_root, target) = match opened {
            Ok(opened) => opened,
            Err(Errno::EXDEV | Errno::ELOOP) => return Found::Outside,
            Err(_) => return Found::Nothing,
        };
        let target = std::fs::File::from(target);
        match target.metadata() {
            Ok(meta) if meta.is_file() => Found::File(OpenFile {
                file: target,
                path: full,
            }),
            Ok(meta) if meta.is_dir() => {
                for name in index {
                    if name.contains('/') || name == ".." || name.contains('\0') {
                        continue;
                    }
                    match open_beneath(&target, Path::new(name), false) {
                        Ok(file) => {
                            let file = std::fs::File::from(file);
                            if file.metadata().is_ok_and(|m| m.is_file()) {
                                return Found::File(OpenFile {
                                    file,
                                    path: full.join(name),
                                });
                            }
                        }
                        Err(Errno::EXDEV | Errno::ELOOP) => return Found::Outside,
                        Err(_) => {}
                    }
                }
                Found::Nothing
            }
            _ => Found::Nothing,
        }
    }
}

/// Opens `path` beneath `dir`: every link followed by the kernel, none allowed out of `dir`.
/// Non-blocking, so that a named pipe the app planted cannot hang the router.
fn open_beneath(dir: &impl AsFd, path: &Path, folder: bool) -> Result<OwnedFd, Errno> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let mut flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    if folder {
        flags |= OFlag::O_DIRECTORY;
    }
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(dir, path, how)
}

/// `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The Content-Type of a served file, from its extension.
pub fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_config::{Rule, Web};

    fn location(root: Option<&str>, passthru: Passthru) -> Location {
        Location {
            root: root.map(str::to_owned),
            passthru,
            index: Vec::new(),
            expires: Expires::Off,
            allow: true,
            scripts: false,
            headers: BTreeMap::new(),
            rules: Vec::new(),
        }
    }

    fn served(dir: &Path, locations: Vec<(&str, Location)>) -> Served {
        served_with_mounts(dir, Vec::new(), locations)
    }

    fn served_with_mounts(
        dir: &Path,
        mounts: Vec<ReadyMount>,
        locations: Vec<(&str, Location)>,
    ) -> Served {
        let web = Web {
            start: Some("x".into()),
            locations: locations
                .into_iter()
                .map(|(p, l)| (p.to_owned(), l))
                .collect(),
            socket_family: Default::default(),
        };
        Served::new(dir.to_owned(), mounts, &web)
    }

    /// The file at `host`, shown to the app at `path`.
    fn open_file(host: PathBuf, path: &str) -> OpenFile {
        OpenFile {
            file: std::fs::File::open(host).unwrap(),
            path: path.into(),
        }
    }

    /// The decision to answer with the app's file `path`.
    fn file(app: &Path, path: &str) -> Decision {
        Decision::File {
            file: open_file(app.join(path), path),
            expires: Expires::Off,
            headers: BTreeMap::new(),
        }
    }

    /// An app folder with `static/hello.txt`, `static/docs/index.html` and a secret beside.
    fn app() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().canonicalize().unwrap().join("app");
        std::fs::create_dir_all(app.join("static/docs")).unwrap();
        std::fs::write(app.join("static/hello.txt"), "hello").unwrap();
        std::fs::write(app.join("static/docs/index.html"), "<p>docs").unwrap();
        std::fs::write(app.join("secret.yaml"), "secret").unwrap();
        (dir, app)
    }

    #[test]
    fn no_locations_send_everything_to_the_app() {
        let (_dir, app) = app();
        let served = served(&app, vec![]);
        assert_eq!(
            served.decide("/static/hello.txt", true),
            Decision::App(None)
        );
        assert_eq!(served.decide("/../x", true), Decision::App(None));
    }

    #[test]
    fn the_longest_prefix_on_segment_boundaries_applies() {
        let (_dir, app) = app();
        let served = served(
            &app,
            vec![
                ("/", location(None, Passthru::App)),
                ("/static", location(Some("static"), Passthru::No)),
            ],
        );
        assert_eq!(
            served.decide("/static/hello.txt", true),
            file(&app, "static/hello.txt")
        );
        assert_eq!(
            served.decide("/static/missing.txt", true),
            Decision::NotFound
        );
        assert_eq!(
            served.decide("/staticx/hello.txt", true),
            Decision::App(None)
        );
        assert_eq!(served.decide("/", true), Decision::App(None));
        assert_eq!(served.decide("/hello.txt", true), Decision::App(None));
        // A POST is never answered with a file.
        assert_eq!(
            served.decide("/static/hello.txt", false),
            Decision::NotFound
        );
        assert_eq!(
            served.decide("/static/hell%6f.txt", true),
            file(&app, "static/hello.txt")
        );
    }

    #[test]
    fn traversal_encoded_or_not_and_nul_are_refused() {
        let (_dir, app) = app();
        let served = served(
            &app,
            vec![
                ("/", location(None, Passthru::App)),
                ("/static", location(Some("static"), Passthru::App)),
            ],
        );
        for bad in [
            "/static/../secret.yaml",
            "/static/%2e%2e/secret.yaml",
            "/static/%2E%2E%2Fsecret.yaml",
            "/static/..%2fsecret.yaml",
            "/static/hello.txt%00",
            "/static/%zz",
            "/static/%ff",
            "/../secret.yaml",
        ] {
            assert_eq!(served.decide(bad, true), Decision::Refused, "{bad}");
        }
    }

    #[test]
    fn links_out_of_the_root_are_refused_and_links_inside_are_followed() {
        let (_dir, app) = app();
        std::os::unix::fs::symlink("../secret.yaml", app.join("static/secret.yaml")).unwrap();
        std::os::unix::fs::symlink("..", app.join("static/up")).unwrap();
        // An absolute link names a place in the sandbox, never one on the node.
        std::os::unix::fs::symlink("/etc/passwd", app.join("static/passwd")).unwrap();
        std::os::unix::fs::symlink("hello.txt", app.join("static/alias.txt")).unwrap();
        let served = served(&app, vec![("/", location(Some("static"), Passthru::App))]);
        assert_eq!(served.decide("/secret.yaml", true), Decision::Refused);
        assert_eq!(served.decide("/up/secret.yaml", true), Decision::Refused);
        assert_eq!(served.decide("/passwd", true), Decision::Refused);
        let Decision::File { file: alias, .. } = served.decide("/alias.txt", true) else {
            panic!("the link inside the root was not followed");
        };
        assert_eq!(
            alias,
            open_file(app.join("static/hello.txt"), "static/alias.txt")
        );
    }

    #[test]
    fn files_under_a_mount_come_from_its_folder_and_stay_beneath_it() {
        let (dir, app) = app();
        // The mount point in the release is empty; the app's files are in the mount's folder.
        std::fs::create_dir_all(app.join("static/uploads")).unwrap();
        let uploads = dir.path().join("mounts/uploads");
        std::fs::create_dir_all(&uploads).unwrap();
        std::fs::write(uploads.join("pic.txt"), "picture").unwrap();
        std::os::unix::fs::symlink("../../../app/secret.yaml", uploads.join("escape")).unwrap();
        nix::unistd::mkfifo(&uploads.join("pipe"), Mode::from_bits_truncate(0o644)).unwrap();
        let mounts = vec![ReadyMount {
            path: "static/uploads".into(),
            host: uploads.clone(),
        }];
        let served = served_with_mounts(
            &app,
            mounts,
            vec![("/", location(Some("static"), Passthru::No))],
        );
        let Decision::File { file: pic, .. } = served.decide("/uploads/pic.txt", true) else {
            panic!("the mount's file was not served");
        };
        assert_eq!(
            pic,
            open_file(uploads.join("pic.txt"), "static/uploads/pic.txt")
        );
        assert_eq!(served.decide("/uploads/escape", true), Decision::Refused);
        // A named pipe the app made is no file to serve, and does not hang the router.
        assert_eq!(served.decide("/uploads/pipe", true), Decision::NotFound);
        assert_eq!(
            served.decide("/hello.txt", true),
            file(&app, "static/hello.txt")
        );
    }

    #[test]
    fn folders_are_answered_with_their_first_index_file() {
        let (_dir, app) = app();
        let mut docs = location(Some("static"), Passthru::No);
        docs.index = vec!["index.htm".into(), "index.html".into()];
        let served = served(&app, vec![("/", docs)]);
        assert_eq!(
            served.decide("/docs", true),
            file(&app, "static/docs/index.html")
        );
        assert_eq!(
            served.decide("/docs/", true),
            file(&app, "static/docs/index.html")
        );
        assert_eq!(
            served.decide("/", true),
            Decision::NotFound,
            "no index there"
        );
    }

    #[test]
    fn the_first_matching_rule_overrides_the_location() {
        let (_dir, app) = app();
        let mut files = location(Some("static"), Passthru::Path("/index.py".into()));
        files.expires = Expires::Seconds(60);
        files.headers = [("X-Frame-Options".to_owned(), "DENY".to_owned())].into();
        let rule = |pattern: &str| Rule {
            pattern: pattern.into(),
            allow: None,
            expires: None,
            passthru: None,
            scripts: None,
            headers: BTreeMap::new(),
        };
        files.rules = vec![
            Rule {
                allow: Some(false),
                ..rule(r"^/hello\.txt$")
            },
            Rule {
                expires: Some(Expires::Seconds(3600)),
                headers: [("X-Doc".to_owned(), "yes".to_owned())].into(),
                ..rule(r"\.html$")
            },
            Rule {
                expires: Some(Expires::Off),
                ..rule(r"\.html$")
            },
            Rule {
                passthru: Some(Passthru::No),
                ..rule(r"^/nothing/")
            },
        ];
        files.index = vec!["index.html".into()];
        let served = served(&app, vec![("/", files)]);
        assert_eq!(
            served.decide("/hello.txt", true),
            Decision::App(Some("/index.py".into())),
            "not allowed: passed through"
        );
        assert_eq!(
            served.decide("/docs/index.html", true),
            Decision::File {
                file: open_file(app.join("static/docs/index.html"), "static/docs/index.html"),
                expires: Expires::Seconds(3600),
                headers: [("X-Doc".to_owned(), "yes".to_owned())].into(),
            }
        );
        assert_eq!(
            served.decide("/docs/", true),
            Decision::File {
                file: open_file(app.join("static/docs/index.html"), "static/docs/index.html"),
                expires: Expires::Seconds(60),
                headers: [("X-Frame-Options".to_owned(), "DENY".to_owned())].into(),
            }
        );
        assert_eq!(served.decide("/nothing/x", true), Decision::NotFound);
        assert_eq!(
            served.decide("/other", true),
            Decision::App(Some("/index.py".into()))
        );
    }

    #[test]
    fn content_types_come_from_the_extension() {
        assert_eq!(
            content_type(Path::new("a/b.CSS")),
            "text/css; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.wasm")), "application/wasm");
        assert_eq!(content_type(Path::new("a")), "application/octet-stream");
    }
}
