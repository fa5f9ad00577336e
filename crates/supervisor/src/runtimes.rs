//! The runtimes a machine offers (SPEC sections 9 and 10): `type: LANG:VERSION` of an app, and
//! `type: ENGINE:VERSION` of a service, resolved to the host's programs. An app's sandbox shows
//! them in `/opt/runtime/bin` as the plain names the app calls (`python3`, `node`, `php`); a
//! service's engine is started by its host path, which the sandbox shows under `/usr`.
//!
//! The exact version when it is installed, else the nearest installed version of the language
//! with a warning (an error under `strict_runtimes`); a language with no version installed is an
//! error naming the Debian package that provides it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A runtime resolved on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// What the app asked for: `python:3.8`.
    pub requested: String,
    /// The version found: `3.11`.
    pub version: String,
    pub exact: bool,
    /// The commands the app gets, by name, and the host program each one is.
    pub commands: BTreeMap<String, PathBuf>,
}

impl Runtime {
    /// What to tell the user when the version is not the one asked for.
    pub fn warning(&self) -> Option<String> {
        let (language, _) = split(&self.requested);
        (!self.exact).then(|| {
            format!(
                "warning: `type: {}` asks for a version this machine does not have; it runs {language} {} (the nearest installed). Set the environment's strict_runtimes to refuse instead.",
                self.requested, self.version
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("the runtime `{requested}` cannot run here: {advice}")]
    Missing { requested: String, advice: String },
    #[error(
        "the runtime `{requested}` is not installed here (the nearest is {found}), and strict_runtimes refuses a substitute: install it, or change `type` to `{language}:{found}`"
    )]
    NotExact {
        requested: String,
        language: String,
        found: String,
    },
}

/// The runtimes of this machine, as the configuration check sees them.
pub struct HostRuntimes;

impl lockstep_config::Runtimes for HostRuntimes {
    fn missing(&self, language: &str) -> Option<String> {
        match installed(language) {
            Ok(found) if !found.is_empty() => None,
            Ok(_) | Err(()) => Some(advice(language)),
        }
    }
}

/// Resolves `runtime` (`language:version`) on this machine.
pub fn resolve(runtime: &str, strict: bool) -> Result<Runtime, RuntimeError> {
    let (language, version) = split(runtime);
    let missing = || RuntimeError::Missing {
        requested: runtime.to_owned(),
        advice: advice(language),
    };
    let found = installed(language).map_err(|()| missing())?;
    let wanted = numbers(version);
    let exact = found
        .iter()
        .find(|install| numbers(&install.version).starts_with(&wanted) && !wanted.is_empty());
    let chosen = match exact {
        Some(install) => install,
        None => {
            let nearest = found
                .iter()
                .min_by_key(|install| distance(&wanted, &numbers(&install.version)))
                .ok_or_else(missing)?;
            if strict {
                return Err(RuntimeError::NotExact {
                    requested: runtime.to_owned(),
                    language: language.to_owned(),
                    found: nearest.version.clone(),
                });
            }
            nearest
        }
    };
    let mut commands = chosen.commands.clone();
    if exact.is_none() {
        commands.extend(versioned_aliases(
            &chosen.commands,
            &chosen.version,
            version,
        ));
    }
    Ok(Runtime {
        requested: runtime.to_owned(),
        version: chosen.version.clone(),
        exact: exact.is_some(),
        commands,
    })
}

/// The version-named programs of the version that runs (`python3.11`, `pip3.11`, `php8.2`) under
/// the names of the version asked for (`python3.10`), since the nearest version stands in for
/// it: a build hook that calls `python3.10` gets what `type` got.
fn versioned_aliases(
    commands: &BTreeMap<String, PathBuf>,
    found: &str,
    requested: &str,
) -> BTreeMap<String, PathBuf> {
    let plain = !requested.is_empty() && requested.chars().all(|c| c.is_ascii_digit() || c == '.');
    if !plain || found.is_empty() {
        return BTreeMap::new();
    }
    commands
        .values()
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let prefix = name.strip_suffix(found)?;
            Some((format!("{prefix}{requested}"), path.clone()))
        })
        .collect()
}

/// One installed version of a language.
#[derive(Debug, Clone)]
struct Install {
    version: String,
    commands: BTreeMap<String, PathBuf>,
}

fn split(runtime: &str) -> (&str, &str) {
    runtime.split_once(':').unwrap_or((runtime, ""))
}

/// Every installed version of `language`; `Err` when Lockstep does not know the language.
fn installed(language: &str) -> Result<Vec<Install>, ()> {
    let bins = [Path::new("/usr/local/bin"), Path::new("/usr/bin")];
    Ok(match language {
        "python" | "python3" => versioned(&bins, "python", |dir, version| {
            let mut commands = named(dir, &[("python", &format!("python{version}"))]);
            commands.insert("python3".into(), dir.join(format!("python{version}")));
            commands.extend(named(
                dir,
                &[
                    ("pip", &format!("pip{version}")),
                    ("pip3", &format!("pip{version}")),
                ],
            ));
            commands
        })
        .into_iter()
        .filter(|install| install.version.starts_with('3'))
        .collect(),
        "php" => versioned(&bins, "php", |dir, version| {
            let mut commands = named(dir, &[("php", &format!("php{version}"))]);
            commands.extend(named(
                Path::new("/usr/sbin"),
                &[("php-fpm", &format!("php-fpm{version}"))],
            ));
            commands.extend(named(dir, &[("composer", "composer")]));
            commands
        }),
        "ruby" => versioned(&bins, "ruby", |dir, version| {
            let mut commands = named(dir, &[("ruby", &format!("ruby{version}"))]);
            commands.extend(named(dir, &[("gem", "gem"), ("bundle", "bundle")]));
            commands
        }),
        "nodejs" => reported(&bins, "node", &["--version"], |dir| {
            let mut commands = named(dir, &[("node", "node"), ("nodejs", "node")]);
            commands.extend(named(
                dir,
                &[("npm", "npm"), ("npx", "npx"), ("corepack", "corepack")],
            ));
            commands
        }),
        "golang" => {
            let roots = bin_folders("/usr/lib", |name| name.starts_with("go-"));
            let roots: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
            reported(&roots, "go", &["version"], |dir| {
                named(dir, &[("go", "go"), ("gofmt", "gofmt")])
            })
        }
        "java" => {
            let homes = bin_folders("/usr/lib/jvm", |_| true);
            let homes: Vec<&Path> = homes.iter().map(PathBuf::as_path).collect();
            reported(&homes, "java", &["-version"], |dir| {
                named(dir, &[("java", "java"), ("javac", "javac")])
            })
        }
        "postgresql" => {
            let roots = bin_folders("/usr/lib/postgresql", |_| true);
            let roots: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
            reported(&roots, "postgres", &["--version"], |dir| {
                let mut commands = named(
                    dir,
                    &[
                        ("postgres", "postgres"),
                        ("initdb", "initdb"),
                        ("pg_basebackup", "pg_basebackup"),
                        ("pg_ctl", "pg_ctl"),
                    ],
                );
                commands.extend(named(Path::new("/usr/bin"), &[("psql", "psql")]));
                commands
            })
        }
        "mariadb" | "mysql" => reported(
            &[Path::new("/usr/sbin")],
            "mariadbd",
            &["--version"],
            |dir| {
                let mut commands = named(dir, &[("mariadbd", "mariadbd")]);
                commands.extend(named(
                    Path::new("/usr/bin"),
                    &[
                        ("mariadb", "mariadb"),
                        ("mariadb-install-db", "mariadb-install-db"),
                    ],
                ));
                commands
            },
        ),
        "redis" | "redis-persistent" => reported(&bins, "redis-server", &["--version"], |dir| {
            named(
                dir,
                &[("redis-server", "redis-server"), ("redis-cli", "redis-cli")],
            )
        }),
        _ => return Err(()),
    })
}

/// The `bin` folders of the folders in `parent` whose name `wanted` takes, sorted
/// (`/usr/lib/jvm/*/bin`, `/usr/lib/postgresql/*/bin`).
fn bin_folders(parent: &str, wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_str().is_some_and(&wanted))
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.is_dir())
        .collect();
    folders.sort();
    folders
}

/// Installs named `<prefix><version>` in `dirs` (`python3.11`, `php8.2`), first dir first.
fn versioned(
    dirs: &[&Path],
    prefix: &str,
    commands: impl Fn(&Path, &str) -> BTreeMap<String, PathBuf>,
) -> Vec<Install> {
    let mut found: BTreeMap<String, Install> = BTreeMap::new();
    for dir in dirs {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                continue;
            };
            let well_formed = version.split('.').count() == 2
                && version
                    .split('.')
                    .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
            if well_formed && is_program(&entry.path()) && !found.contains_key(version) {
                found.insert(
                    version.to_owned(),
                    Install {
                        version: version.to_owned(),
                        commands: commands(dir, version),
                    },
                );
            }
        }
    }
    found.into_values().collect()
}

/// Installs of `program` in `dirs` whose version the program reports when run with `args`.
fn reported(
    dirs: &[&Path],
    program: &str,
    args: &[&str],
    commands: impl Fn(&Path) -> BTreeMap<String, PathBuf>,
) -> Vec<Install> {
    let mut found: Vec<Install> = Vec::new();
    for dir in dirs {
        let path = dir.join(program);
        if !is_program(&path) {
            continue;
        }
        let Some(version) = reported_version(&path, args) else {
            continue;
        };
        if !found.iter().any(|install| install.version == version) {
            found.push(Install {
                version,
                commands: commands(dir),
            });
        }
    }
    found
}

/// The first `N.N[.N]` in what a program prints about its version (`v20.20.2`,
/// `go version go1.22.1 linux/amd64`, `openjdk version "17.0.15"`).
fn reported_version(program: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    first_version(&format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

fn first_version(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|word| word.trim_matches('.'))
        .find(|word| word.contains('.') && word.split('.').all(|part| !part.is_empty()))
        .map(str::to_owned)
}

/// `(name, file)` pairs of `dir` whose file is a program, as commands.
fn named(dir: &Path, pairs: &[(&str, &str)]) -> BTreeMap<String, PathBuf> {
    pairs
        .iter()
        .map(|(name, file)| (name.to_string(), dir.join(file)))
        .filter(|(_, path)| is_program(path))
        .collect()
}

fn is_program(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| {
        m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
    })
}

fn numbers(version: &str) -> Vec<u32> {
    version
        .split('.')
        .map_while(|part| part.parse().ok())
        .collect()
}

/// How far an installed version is from the wanted one: the major version first, then the
/// minor within the same major; between two as far, the newer.
fn distance(wanted: &[u32], found: &[u32]) -> (u32, u32, std::cmp::Reverse<Vec<u32>>) {
    let part = |v: &[u32], i: usize| v.get(i).copied().unwrap_or(0);
    let major = part(wanted, 0).abs_diff(part(found, 0));
    let minor = if major == 0 {
        part(wanted, 1).abs_diff(part(found, 1))
    } else {
        0
    };
    (major, minor, std::cmp::Reverse(found.to_vec()))
}

/// What to install for a language Lockstep runs, or what Lockstep runs.
fn advice(language: &str) -> String {
    let package = match language {
        "python" | "python3" => "python3",
        "nodejs" => "nodejs",
        "php" => "php8.2-fpm",
        "ruby" => "ruby",
        "golang" => "golang",
        "java" => "default-jdk",
        "postgresql" => "postgresql-15",
        "mariadb" | "mysql" => "mariadb-server",
        "redis" | "redis-persistent" => "redis-server",
        _ => {
            return format!(
                "Lockstep runs python, nodejs, php, golang, ruby and java apps, and postgresql, mariadb and redis services, not `{language}`"
            );
        }
    };
    format!(
        "no {language} is installed on this machine: install the Debian package `{package}` (apt-get install {package})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stand_in_version_answers_to_the_names_of_the_version_asked_for() {
        let commands = BTreeMap::from([
            ("python3".to_owned(), PathBuf::from("/usr/bin/python3.11")),
            ("pip".to_owned(), PathBuf::from("/usr/bin/pip3.11")),
            ("node".to_owned(), PathBuf::from("/usr/bin/node")),
        ]);
        let aliases = versioned_aliases(&commands, "3.11", "3.10");
        assert_eq!(
            aliases,
            BTreeMap::from([
                ("pip3.10".to_owned(), PathBuf::from("/usr/bin/pip3.11")),
                (
                    "python3.10".to_owned(),
                    PathBuf::from("/usr/bin/python3.11")
                ),
            ])
        );
        assert!(versioned_aliases(&commands, "3.11", "3;rm").is_empty());
    }

    #[test]
    fn the_nearest_version_is_the_closest_major_then_minor_then_the_newer() {
        let versions = [vec![3, 9], vec![3, 11], vec![3, 12]];
        let nearest = |wanted: &[u32]| {
            versions
                .iter()
                .min_by_key(|v| distance(wanted, v))
                .unwrap()
                .clone()
        };
        assert_eq!(nearest(&[3, 10]), vec![3, 11]);
        assert_eq!(nearest(&[3, 8]), vec![3, 9]);
        assert_eq!(nearest(&[2, 7]), vec![3, 12]);
        assert_eq!(nearest(&[3, 13]), vec![3, 12]);
    }

    #[test]
    fn python_resolves_to_the_host_interpreter_and_says_when_it_is_not_the_one_asked() {
        let Ok(found) = installed("python") else {
            panic!("python is a language Lockstep knows");
        };
        let Some(install) = found.first() else {
            eprintln!("skipped: no python3.N on this machine");
            return;
        };
        let exact = resolve(&format!("python:{}", install.version), false).unwrap();
        assert!(exact.exact);
        assert_eq!(exact.warning(), None);
        assert!(exact.commands["python3"].ends_with(format!("python{}", install.version)));

        let substitute = resolve("python:2.7", false).unwrap();
        assert!(!substitute.exact);
        assert!(substitute.warning().unwrap().contains("`type: python:2.7`"));
        assert!(matches!(
            resolve("python:2.7", true),
            Err(RuntimeError::NotExact { .. })
        ));
    }

    #[test]
    fn unknown_and_missing_languages_say_what_to_do() {
        assert!(matches!(
            resolve("cobol:85", false),
            Err(RuntimeError::Missing { advice, .. }) if advice.contains("not `cobol`")
        ));
        assert!(advice("php").contains("`php8.2-fpm`"));
    }

    #[test]
    fn versions_are_read_from_what_programs_print() {
        assert_eq!(first_version("v20.20.2\n").as_deref(), Some("20.20.2"));
        assert_eq!(
            first_version("go version go1.22.1 linux/amd64").as_deref(),
            Some("1.22.1")
        );
        assert_eq!(
            first_version("openjdk version \"17.0.15\" 2025-04-15").as_deref(),
            Some("17.0.15")
        );
        assert_eq!(first_version("no version here"), None);
    }
}
