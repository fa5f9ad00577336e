//! The sandbox every piece of pushed code runs in (SPEC section 9), made with bubblewrap.
//!
//! What the code inside sees: the host's `/usr` and a short list of `/etc` entries, read-only;
//! the app's tree at `/app` (read-only at runtime, writable for a build), its mounts writable
//! inside it; a private `/tmp`; `/run`; the runtime's commands in `/opt/runtime/bin`; new
//! `/proc` and `/dev`. Nothing else of the host: no data folder of Lockstep, no home, no
//! other environment. It runs in its own mount, PID, IPC and cgroup namespaces, as the
//! environment's user, never as root.
//!
//! How the user is set: as root, bubblewrap runs privileged (it can read every bind source,
//! whatever the modes of the folders above them) and `setpriv` drops to the environment's
//! user with no capabilities and `no_new_privs` before the command starts. As an ordinary
//! user, bubblewrap makes a user namespace that maps that user to itself.
//!
//! Every sandbox's first process is `bwrap`, named `lockstep-sandbox:<owner>` in its
//! `argv[0]`, so that [`end_leftovers`] can find what an earlier run of the same owner left.
//! `--die-with-parent` ends the sandbox when the thread that started it dies, and the PID
//! namespace ends every process inside when the sandbox's first process inside ends.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::operator_env::OperatorEnv;

/// Where the sandbox's init program is shown inside it.
const INIT_INSIDE: &str = "/opt/lockstep/init";
/// Where the runtime's commands (`python3`, `node`...) appear inside the sandbox.
pub const RUNTIME_BIN: &str = "/opt/runtime/bin";
/// The app's folder inside the sandbox, as on Platform.sh.
pub const APP_ROOT: &str = "/app";
/// The name the app's user has inside the sandbox, as on Platform.sh.
pub const APP_USER: &str = "web";
const ARG0_PREFIX: &str = "lockstep-sandbox:";
/// Folders the sandbox has of its own, where no host file can be shown.
const SANDBOX_OWN: &[&str] = &[
    "/tmp",
    "/var",
    "/run",
    "/app",
    "/proc",
    "/dev",
    "/opt/runtime",
];

/// `/etc` entries programs need, bound read-only when the host has them; a name ending in `*`
/// takes every entry starting with the rest (`python*`: `python3`, `python3.11`).
const ETC_ENTRIES: &[&str] = &[
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "environment",
    "fonts",
    "gai.conf",
    "gitconfig",
    "host.conf",
    "hosts",
    "ImageMagick*",
    "inputrc",
    "java*",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "lsb-release",
    "magic",
    "magic.mime",
    "mime.types",
    "mysql",
    "nodejs",
    "npmrc",
    "nsswitch.conf",
    "os-release",
    "perl",
    "php*",
    "profile",
    "profile.d",
    "protocols",
    "python*",
    "resolv.conf",
    "rpc",
    "ruby*",
    "services",
    "ssl",
    "timezone",
    "xml",
];

/// Everything the sandbox of one command is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The host folder seen at `/app`.
    pub app: PathBuf,
    /// Whether the code may write `/app` itself (builds); at runtime only mounts are writable.
    pub app_writable: bool,
    /// Writable host folders seen inside the sandbox, by their path there: under `/app` (the
    /// app's mounts, each a folder of `app` already, since a read-only `/app` cannot get new
    /// mount points) or under `/tmp` (the build cache).
    pub mounts: Vec<(PathBuf, PathBuf)>,
    /// The host folder seen at `/tmp` (and `/var/tmp`).
    pub tmp: PathBuf,
    /// The host folder seen at `/run`: `config.json`, sockets.
    pub run: PathBuf,
    /// Host files or folders seen read-only at their own path: the files the operator's CA
    /// settings name.
    pub host_files: Vec<PathBuf>,
    /// The runtime's commands, by name, and the host program each one is.
    pub runtime: BTreeMap<String, PathBuf>,
    /// Who the code runs as.
    pub user: RunAs,
    /// A host folder of the sandbox's own (never seen inside) for the `/etc/passwd` and
    /// `/etc/group` that name the user.
    pub private: PathBuf,
    /// Whose sandbox this is, for [`end_leftovers`]: the same string for every sandbox of one
    /// agent or controller, and no other.
    pub owner: String,
}

/// The program that runs first in the sandbox of a long-running process (see `init.rs`):
/// `program ARGS... [--user UID:GID] COMMAND` must run `crate::init::main`. Lockstep's own
/// binary does, as `lockstep sandbox-init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInit {
    pub program: PathBuf,
    pub args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "bubblewrap is not installed, and Lockstep runs all pushed code in its sandbox: install the Debian package `bubblewrap` (apt-get install bubblewrap)"
    )]
    NoBubblewrap,
    #[error(
        "`setpriv` is not installed, and Lockstep needs it to run apps as their own user: install the Debian package `util-linux`"
    )]
    NoSetpriv,
    #[error("pushed code never runs as root; the sandbox was asked to run it as uid 0")]
    Root,
    #[error(
        "Lockstep runs as uid {own}, so it can only run apps as itself, not as uid {asked}; run Lockstep as root for one user per environment"
    )]
    OtherUser { own: u32, asked: u32 },
    #[error("{} does not exist, so the sandbox cannot show it", .0.display())]
    Missing(PathBuf),
    #[error("{0} cannot be a mount path: it must be a path inside the app")]
    MountPath(String),
    #[error("cannot write {}", path.display())]
    Private {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<SandboxError> for io::Error {
    fn from(error: SandboxError) -> io::Error {
        io::Error::other(error)
    }
}

/// The user and group pushed code runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// The user and group this process runs as.
    pub fn current() -> RunAs {
        RunAs {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// Who runs pushed code when nothing else says: this process's own user, or `nobody`
    /// (65534) when that is root.
    pub fn unprivileged() -> RunAs {
        if running_as_root() {
            RunAs {
                uid: NOBODY,
                gid: NOBODY,
            }
        } else {
            RunAs::current()
        }
    }
}

const NOBODY: u32 = 65534;

/// Checks that the sandbox can be made on this machine: bubblewrap (and, as root, setpriv)
/// installed. Daemons call it at start, so that a missing package is said at once.
pub fn check_installed() -> Result<(), SandboxError> {
    bubblewrap()?;
    if running_as_root() {
        setpriv()?;
    }
    Ok(())
}

impl Sandbox {
    /// A sandbox for the app tree at `app` (read-only), run by `user`, whose `/tmp`, `/run`
    /// and private files are folders of `home`: created, and given to `user` where it writes.
    /// No mounts, host files or runtime until the caller adds them.
    pub fn prepare(app: PathBuf, home: &Path, user: RunAs, owner: String) -> io::Result<Sandbox> {
        let sandbox = Sandbox {
            app,
            app_writable: false,
            mounts: Vec::new(),
            tmp: home.join("tmp"),
            run: home.join("run"),
            host_files: Vec::new(),
            runtime: BTreeMap::new(),
            user,
            private: home.join("sandbox"),
            owner,
        };
        std::fs::create_dir_all(&sandbox.private)?;
        for dir in [&sandbox.tmp, &sandbox.run] {
            give_folder(dir, user)?;
        }
        Ok(sandbox)
    }

    /// The command that runs `script` with `/bin/sh -c` in this sandbox, with exactly `env`,
    /// in `/app`, in a process group of its own, with no standard input. The sandbox ends when
    /// the shell ends.
    pub fn command(
        &self,
        script: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Command, SandboxError> {
        self.command_under(script, env, None)
    }

    /// As [`Sandbox::command`], with `init` as the sandbox's first process: the sandbox ends
    /// when every process in it has ended, so that a stop gives each its grace.
    pub fn command_with_init(
        &self,
        script: &str,
        env: &BTreeMap<String, String>,
        init: &SandboxInit,
    ) -> Result<Command, SandboxError> {
        self.command_under(script, env, Some(init))
    }

    fn command_under(
        &self,
        script: &str,
        env: &BTreeMap<String, String>,
        init: Option<&SandboxInit>,
    ) -> Result<Command, SandboxError> {
        let root = running_as_root();
        if root && self.user.uid == 0 {
            return Err(SandboxError::Root);
        }
        let own = RunAs::current();
        if !root && self.user.uid != own.uid {
            return Err(SandboxError::OtherUser {
                own: own.uid,
                asked: self.user.uid,
            });
        }
        let folders = [&self.app, &self.tmp, &self.run]
            .into_iter()
            .chain(self.mounts.iter().map(|(_, host)| host));
        for folder in folders {
            if !folder.is_dir() {
                return Err(SandboxError::Missing(folder.clone()));
            }
        }
        let (passwd, group) = self.write_identity()?;

        let mut command = Command::new(bubblewrap()?);
        command.arg0(format!("{ARG0_PREFIX}{}", self.owner));
        let mut args = Args(&mut command);
        args.flag("--die-with-parent");
        args.flag("--unshare-pid");
        args.flag("--unshare-ipc");
        args.flag("--unshare-cgroup-try");
        if !root {
            // The user namespace maps the user to itself; nothing inside may make another.
            args.flag("--unshare-user");
            args.flag("--disable-userns");
        }
        args.pair("--ro-bind", "/usr", "/usr");
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match std::fs::read_link(&host) {
                Ok(target) => args.pair("--symlink", &target, &host),
                Err(_) if host.is_dir() => args.pair("--ro-bind", &host, &host),
                Err(_) => {}
            }
        }
        args.one("--proc", "/proc");
        args.one("--dev", "/dev");
        // bubblewrap makes the folders above a bound file private (0700), which would hide the
        // file from the user: the folders are made first, readable by all.
        args.one("--perms", "0755");
        args.one("--dir", "/etc");
        for entry in etc_entries() {
            args.pair("--ro-bind-try", entry, entry);
        }
        args.pair("--ro-bind", &passwd, "/etc/passwd");
        args.pair("--ro-bind", &group, "/etc/group");
        for file in &self.host_files {
            if SANDBOX_OWN.iter().any(|own| file.starts_with(own)) {
                tracing::warn!(path = %file.display(), "a host file to show lies where the sandbox has a folder of its own; it is not shown");
                continue;
            }
            let Some(parent) = file.parent().filter(|p| !already_visible(p)) else {
                continue;
            };
            args.one("--perms", "0755");
            args.one("--dir", parent);
            args.pair("--ro-bind-try", file, file);
        }
        args.pair("--bind", &self.tmp, "/tmp");
        args.one("--dir", "/var");
        args.pair("--symlink", "../tmp", "/var/tmp");
        args.pair("--bind", &self.run, "/run");
        let app_bind = if self.app_writable {
            "--bind"
        } else {
            "--ro-bind"
        };
        args.pair(app_bind, &self.app, APP_ROOT);
        for (inside, host) in &self.mounts {
            check_mount_point(inside)?;
            args.pair("--bind", host, inside);
        }
        args.one("--dir", RUNTIME_BIN);
        for (name, program) in &self.runtime {
            args.pair("--symlink", program, Path::new(RUNTIME_BIN).join(name));
        }
        if let Some(init) = init {
            args.flag("--as-pid-1");
            args.pair("--ro-bind", &init.program, INIT_INSIDE);
        }
        // The sandbox's own root (where /etc, /opt and /var were made) is the user's in a user
        // namespace: read-only, so that only the binds above that say so are writable.
        args.one("--remount-ro", "/");
        args.one("--chdir", APP_ROOT);
        if root {
            args.one("--cap-add", "CAP_SETUID");
            args.one("--cap-add", "CAP_SETGID");
        }
        command.arg("--");
        let user = format!("{}:{}", self.user.uid, self.user.gid);
        match (init, root) {
            (Some(init), true) => command
                .arg(INIT_INSIDE)
                .args(&init.args)
                .args(["--user", &user, script]),
            (Some(init), false) => command.arg(INIT_INSIDE).args(&init.args).arg(script),
            (None, true) => command.arg(setpriv()?).args([
                format!("--reuid={}", self.user.uid),
                format!("--regid={}", self.user.gid),
                "--clear-groups".to_owned(),
                "--inh-caps=-all".to_owned(),
                "--bounding-set=-all".to_owned(),
                "--no-new-privs".to_owned(),
                "--".to_owned(),
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                script.to_owned(),
            ]),
            (None, false) => command.args(["/bin/sh", "-c", script]),
        };
        command
            .env_clear()
            .envs(env)
            // bubblewrap resolves every path itself; its own folder must exist for any user.
            .current_dir("/")
            // Its own group: a signal to the group reaches everything the command started,
            // and a Ctrl-C aimed at the daemon's terminal does not.
            .process_group(0)
            .stdin(Stdio::null());
        Ok(command)
    }

    /// Writes the sandbox's `/etc/passwd` and `/etc/group` when they are not already so.
    fn write_identity(&self) -> Result<(PathBuf, PathBuf), SandboxError> {
        let RunAs { uid, gid } = self.user;
        let passwd = format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\n\
             {APP_USER}:x:{uid}:{gid}:Lockstep app:{APP_ROOT}:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        );
        let group = format!("root:x:0:\n{APP_USER}:x:{gid}:\nnogroup:x:65534:\n");
        let write = |name: &str, contents: &str| -> Result<PathBuf, SandboxError> {
            let path = self.private.join(name);
            if std::fs::read_to_string(&path).is_ok_and(|now| now == contents) {
                return Ok(path);
            }
            let failed = |source| SandboxError::Private {
                path: path.clone(),
                source,
            };
            std::fs::create_dir_all(&self.private).map_err(failed)?;
            // Several sandboxes of one instance may start at once: each writes its own copy
            // and renames it into place.
            let staging = tempfile::NamedTempFile::new_in(&self.private).map_err(failed)?;
            std::fs::write(staging.path(), contents).map_err(failed)?;
            std::fs::set_permissions(
                staging.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )
            .map_err(failed)?;
            staging
                .persist(&path)
                .map_err(|error| failed(error.error))?;
            Ok(path)
        };
        Ok((write("passwd", &passwd)?, write("group", &group)?))
    }
}

/// Ends every sandbox that `owner` started and that still runs: what an earlier run of an
/// agent (or controller) left behind when it was killed. Returns how many it ended.
pub fn end_leftovers(owner: &str) -> usize {
    let tag = format!("{ARG0_PREFIX}{owner}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let tagged = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).next() == Some(tag.as_bytes()))
    };
    // Each sandbox shows two such processes: bubblewrap, and its child inside the sandbox.
    let found: Vec<(i32, bool)> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32 && tagged(*pid))
        .map(|pid| (pid, parent_of(pid).is_some_and(tagged)))
        .collect();
    let mut ended = 0;
    for (pid, inner) in found {
        // The sandbox's first process: its death ends the PID namespace inside, and with it
        // everything the sandbox ran.
        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() && !inner {
            tracing::warn!(pid, owner, "ended a sandbox left by an earlier run");
            ended += 1;
        }
    }
    ended
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The environment every piece of pushed code starts from: the operator's CA and proxy
/// settings, then where things are in the sandbox. The caller adds the platform's variables.
pub fn app_env(operator: &OperatorEnv) -> BTreeMap<String, String> {
    let mut env = operator.env.clone();
    let path = format!(
        "{APP_ROOT}/.global/bin:{APP_ROOT}/.local/bin:{RUNTIME_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let fixed = [
        ("PATH", path),
        ("HOME", APP_ROOT.to_owned()),
        ("USER", APP_USER.to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("PLATFORM_APP_DIR", APP_ROOT.to_owned()),
        // Python tools installed from `dependencies` live in the app's `.global`.
        ("PYTHONUSERBASE", format!("{APP_ROOT}/.global")),
    ];
    env.extend(fixed.map(|(name, value)| (name.to_owned(), value)));
    env
}

/// Creates `dir` if needed and makes it the user's own (mode 0700). As an ordinary user the
/// folder is already ours.
pub fn give_folder(dir: &Path, user: RunAs) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if running_as_root() {
        nix::unistd::chown(dir, Some(user.uid.into()), Some(user.gid.into()))?;
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether the sandbox shows this host folder already (so a file in it needs no bind).
fn already_visible(folder: &Path) -> bool {
    folder.starts_with("/usr") || etc_entries().iter().any(|entry| folder.starts_with(entry))
}

/// Where a mount path of the app's configuration (`web/uploads`, `/web/uploads`) is in the
/// sandbox, refusing any that would leave `/app`.
pub fn app_path(path: &str) -> Result<PathBuf, SandboxError> {
    let inside = Path::new(APP_ROOT).join(path.trim_start_matches('/'));
    check_mount_point(&inside).map_err(|_| SandboxError::MountPath(path.to_owned()))?;
    Ok(inside)
}

/// A mount point must be a plain path below `/app` or `/tmp`.
fn check_mount_point(inside: &Path) -> Result<(), SandboxError> {
    let below = [APP_ROOT, "/tmp"]
        .iter()
        .find_map(|root| inside.strip_prefix(root).ok());
    let plain = below.is_some_and(|rest| {
        !rest.as_os_str().is_empty()
            && rest
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
    });
    if plain {
        Ok(())
    } else {
        Err(SandboxError::MountPath(inside.display().to_string()))
    }
}

/// The `/etc` entries of [`ETC_ENTRIES`] this host has.
fn etc_entries() -> &'static [PathBuf] {
    static ENTRIES: OnceLock<Vec<PathBuf>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        let Ok(listing) = std::fs::read_dir("/etc") else {
            return Vec::new();
        };
        let mut found: Vec<PathBuf> = listing
            .flatten()
            .filter(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                ETC_ENTRIES
                    .iter()
                    .any(|wanted| match wanted.strip_suffix('*') {
                        Some(prefix) => name.starts_with(prefix),
                        None => name == *wanted,
                    })
            })
            .map(|entry| entry.path())
            .collect();
        found.sort();
        found
    })
}

fn bubblewrap() -> Result<&'static Path, SandboxError> {
    static BWRAP: OnceLock<Option<PathBuf>> = OnceLock::new();
    BWRAP
        .get_or_init(|| find_program("bwrap"))
        .as_deref()
        .ok_or(SandboxError::NoBubblewrap)
}

fn setpriv() -> Result<&'static Path, SandboxError> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| find_program("setpriv"))
        .as_deref()
        .ok_or(SandboxError::NoSetpriv)
}

/// A program on the daemon's `PATH`, or in the system folders when `PATH` lacks it.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}

/// Appends bubblewrap options to a command.
struct Args<'a>(&'a mut Command);

impl Args<'_> {
    fn flag(&mut self, flag: &str) {
        self.0.arg(flag);
    }

    fn one(&mut self, option: &str, value: impl AsRef<std::ffi::OsStr>) {
        self.0.arg(option).arg(value);
    }

    fn pair(
        &mut self,
        option: &str,
        first: impl AsRef<std::ffi::OsStr>,
        second: impl AsRef<std::ffi::OsStr>,
    ) {
        self.0.arg(option).arg(first).arg(second);
    }
}

/// An init that only runs the command as its user (the crate's own init is a program, which
/// unit tests cannot name), for tests that stop nothing gracefully.
#[cfg(test)]
pub(crate) fn passthrough_init() -> SandboxInit {
    let script = r#"if [ "$1" = --user ]; then
        exec setpriv --reuid="${2%:*}" --regid="${2#*:}" --clear-groups --no-new-privs -- sh -c "$3"
    fi
    exec sh -c "$1""#;
    SandboxInit {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into(), "init".into()],
    }
}

/// A sandbox in `home` whose `/app` (`home/app`) the code may write, for tests.
#[cfg(test)]
pub(crate) fn writable_test_sandbox(home: &Path) -> Sandbox {
    let user = RunAs::unprivileged();
    let app = home.join("app");
    give_folder(&app, user).unwrap();
    let mut sandbox = Sandbox::prepare(app, home, user, "supervisor-unit-test".into()).unwrap();
    sandbox.app_writable = true;
    sandbox
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_stay_inside_the_app() {
        assert_eq!(
            app_path("web/uploads").unwrap(),
            Path::new("/app/web/uploads")
        );
        assert_eq!(app_path("/tmp").unwrap(), Path::new("/app/tmp"));
        for bad in ["", "/", "../x", "a/../../x"] {
            assert!(app_path(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_mount_point(Path::new("/tmp/cache")).is_ok());
        for bad in ["/etc/x", "/tmp", "/app", "/app/../etc", "tmp/x"] {
            assert!(
                check_mount_point(Path::new(bad)).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn etc_entries_leave_out_secrets() {
        let entries = etc_entries();
        for secret in [
            "/etc/shadow",
            "/etc/gshadow",
            "/etc/ssh",
            "/etc/sudoers",
            "/etc/passwd",
        ] {
            assert!(
                !entries.contains(&PathBuf::from(secret)),
                "{secret} would be visible"
            );
        }
    }
}
