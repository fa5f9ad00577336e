//! From a git ref to an image: check out, validate the configuration, run the build hook in the
//! build environment, pack, and record, or reuse the image built from the same inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lockstep_config::{BuildFlavor, Diagnostic};

use crate::hook::{HookFailure, HookSpec, run_hook};
use crate::store::{APP_PREFIX, ImageInfo, Manifest};
use crate::{ImageError, ImageStore, checkout};

/// Platform.sh's own words, which users search their logs for.
pub const REUSE_MESSAGE: &str = "Reusing existing build for this tree ID";

/// Bumped whenever the image layout changes, so that no old build is reused for a new layout.
const IMAGE_FORMAT: u32 = 1;

/// Platform.sh's build hook limit.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

pub struct BuildRequest<'a> {
    /// A git repository, bare or not.
    pub repo: &'a Path,
    pub git_ref: &'a str,
    /// The project's id: `PLATFORM_PROJECT`, and the name of its build cache.
    pub project: &'a str,
    /// Build-visible variables by full name: `env:NAME` become environment variables, the
    /// others go into `PLATFORM_VARIABLES`. They override the app config's `variables`.
    pub variables: &'a BTreeMap<String, serde_json::Value>,
    pub timeout: Duration,
    /// Extra environment for git, such as a receive hook's quarantine directories.
    pub git_env: &'a crate::checkout::GitEnv,
}

#[derive(Debug)]
pub struct BuildOutcome {
    pub manifest: Manifest,
    pub reused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("git: {0}")]
    Git(String),
    #[error("the configuration has {} error(s)", .0.iter().filter(|d| d.is_error()).count())]
    InvalidConfig(Vec<Diagnostic>),
    #[error("the build hook failed")]
    Hook(#[source] HookFailure),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot prepare the build folder {}", path.display())]
    Workspace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Builds images into a store, keeping one build cache folder per project.
pub struct Builder {
    store: ImageStore,
    cache_root: PathBuf,
    work_root: PathBuf,
}

impl Builder {
    /// Everything lives under `data_dir`: `images/`, `builds/`, `cache/<project>`, `work/`.
    pub fn new(data_dir: &Path) -> Result<Builder, BuildError> {
        let store = ImageStore::open(data_dir)?;
        let cache_root = data_dir.join("cache");
        let work_root = data_dir.join("work");
        for path in [&cache_root, &work_root] {
            std::fs::create_dir_all(path).map_err(|source| BuildError::Workspace {
                path: path.clone(),
                source,
            })?;
        }
        Ok(Builder {
            store,
            cache_root,
            work_root,
        })
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Builds `request`, streaming progress and the hook's output to `log` line by line.
    pub fn build(
        &self,
        request: &BuildRequest<'_>,
        log: &mut dyn FnMut(&str),
    ) -> Result<BuildOutcome, BuildError> {
        let started = Instant::now();
        let built_at = chrono::Utc::now();
        let tree_id = checkout::resolve_tree(request.repo, request.git_ref, request.git_env)?;
        let build_key = build_key(&tree_id, request.variables);
        if let Some(manifest) = self.store.find_build(&build_key)? {
            log(&format!(
                "Building application '{}' (runtime type: {}, tree: {})",
                manifest.info.config.app.name,
                manifest.info.config.app.runtime,
                &tree_id[..7]
            ));
            log(&format!("  {REUSE_MESSAGE}"));
            return Ok(BuildOutcome {
                manifest,
                reused: true,
            });
        }

        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&self.work_root)
            .map_err(|source| BuildError::Workspace {
                path: self.work_root.clone(),
                source,
            })?;
        let app_dir = work.path().join(APP_PREFIX);
        let home = work.path().join("home");
        let cache_dir = self.cache_root.join(safe_name(request.project));
        for dir in [&app_dir, &home, &cache_dir] {
            std::fs::create_dir_all(dir).map_err(|source| BuildError::Workspace {
                path: dir.clone(),
                source,
            })?;
        }
        checkout::checkout(request.repo, &tree_id, &app_dir, request.git_env)?;
        let checked = lockstep_config::check_dir(&app_dir).map_err(|e| BuildError::Workspace {
            path: app_dir.clone(),
            source: std::io::Error::other(e),
        })?;
        let Some(config) = checked.project else {
            return Err(BuildError::InvalidConfig(checked.diagnostics));
        };
        log(&format!(
            "Building application '{}' (runtime type: {}, tree: {})",
            config.app.name,
            config.app.runtime,
            &tree_id[..7]
        ));

        let mut variables = config.app.variables.clone();
        variables.extend(request.variables.clone());
        let env = build_env(&BuildEnv {
            app: &config.app.name,
            project: request.project,
            tree_id: &tree_id,
            app_dir: &app_dir,
            cache_dir: &cache_dir,
            home: &home,
            variables: &variables,
        });
        let mut script = String::new();
        if let Some(install) = dependencies_script(&config.app.dependencies) {
            log("  Installing global dependencies into .global");
            script.push_str(&install);
        }
        if needs_npm_install(&config.app, &app_dir) {
            log("  Installing dependencies with npm (the nodejs default build flavor)");
            script.push_str("npm prune --userconfig .npmrc && npm install --userconfig .npmrc\n");
        }
        if let Some(hook) = &config.app.hooks.build {
            log("  Executing build hook...");
            script.push_str(hook);
        }
        if !script.is_empty() {
            let spec = HookSpec {
                script,
                dir: app_dir.clone(),
                env,
                timeout: request.timeout,
                run_as: None,
            };
            run_hook(&spec, &mut |line| log(&format!("    {line}"))).map_err(BuildError::Hook)?;
        }

        let info = ImageInfo {
            format: IMAGE_FORMAT,
            tree_id,
            build_key,
            config,
        };
        let build_millis = started.elapsed().as_millis() as u64;
        let manifest = self.store.add(&app_dir, info, built_at, build_millis)?;
        log(&format!(
            "  Image {} ({} bytes)",
            manifest.id.short(),
            manifest.size
        ));
        Ok(BuildOutcome {
            manifest,
            reused: false,
        })
    }
}

/// The hash of every input that can change what a build produces.
fn build_key(tree_id: &str, variables: &BTreeMap<String, serde_json::Value>) -> String {
    let inputs = serde_json::json!({
        "format": IMAGE_FORMAT,
        "tree": tree_id,
        "variables": variables,
    });
    blake3::hash(inputs.to_string().as_bytes())
        .to_hex()
        .to_string()
}

/// Shell commands that install `dependencies` (global build tools per language) into the app's
/// `.global` folder, as Platform.sh does, so that the build and the runtime both find them:
/// `.global/bin` is on their `PATH`, and Python's user base is `.global`.
fn dependencies_script(
    dependencies: &BTreeMap<String, BTreeMap<String, String>>,
) -> Option<String> {
    let mut script = String::new();
    for (language, packages) in dependencies {
        if packages.is_empty() {
            continue;
        }
        let specs: Vec<String> = packages
            .iter()
            .map(|(name, version)| match language.as_str() {
                "nodejs" if version == "*" => shell_quote(name),
                "nodejs" => shell_quote(&format!("{name}@{version}")),
                _ if version == "*" => shell_quote(name),
                _ if version.starts_with(|c: char| c.is_ascii_digit()) => {
                    shell_quote(&format!("{name}=={version}"))
                }
                _ => shell_quote(&format!("{name}{version}")),
            })
            .collect();
        let command = match language.as_str() {
            "nodejs" => "npm install --global --prefix \"$PLATFORM_APP_DIR/.global\"",
            // The config check admits only python, python3 and nodejs.
            _ => {
                "PYTHONUSERBASE=\"$PLATFORM_APP_DIR/.global\" python3 -m pip install --user --no-warn-script-location"
            }
        };
        script.push_str(&format!("{command} {}\n", specs.join(" ")));
    }
    (!script.is_empty()).then_some(script)
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn needs_npm_install(app: &lockstep_config::AppConfig, app_dir: &Path) -> bool {
    app.build_flavor == BuildFlavor::Default
        && app.language() == "nodejs"
        && app_dir.join("package.json").exists()
}

fn safe_name(project: &str) -> String {
    project
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

struct BuildEnv<'a> {
    app: &'a str,
    project: &'a str,
    tree_id: &'a str,
    app_dir: &'a Path,
    cache_dir: &'a Path,
    home: &'a Path,
    variables: &'a BTreeMap<String, serde_json::Value>,
}

/// The build hook's whole environment (SPEC section 5, "Build").
fn build_env(build: &BuildEnv<'_>) -> BTreeMap<String, String> {
    // Variables first: what the platform provides below overrides them, as on Platform.sh.
    let mut env = crate::variables_env(build.variables);
    let host_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let global_bin = build.app_dir.join(".global/bin");
    env.insert(
        "PATH".into(),
        format!("{}:{host_path}", global_bin.display()),
    );
    env.insert("HOME".into(), build.home.display().to_string());
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("CI".into(), "true".into());
    env.insert("PLATFORM_APPLICATION_NAME".into(), build.app.into());
    env.insert("PLATFORM_PROJECT".into(), build.project.into());
    env.insert("PLATFORM_TREE_ID".into(), build.tree_id.into());
    env.insert(
        "PLATFORM_APP_DIR".into(),
        build.app_dir.display().to_string(),
    );
    env.insert(
        "PLATFORM_CACHE_DIR".into(),
        build.cache_dir.display().to_string(),
    );
    // Python tools installed from `dependencies` live in the app's `.global`.
    env.insert(
        "PYTHONUSERBASE".into(),
        build.app_dir.join(".global").display().to_string(),
    );
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_install_into_global_with_pinned_versions() {
        let mut dependencies = BTreeMap::new();
        dependencies.insert(
            "python3".to_owned(),
            BTreeMap::from([
                ("pipenv".to_owned(), "2023.2.4".to_owned()),
                ("poetry".to_owned(), ">=1.8".to_owned()),
            ]),
        );
        dependencies.insert(
            "nodejs".to_owned(),
            BTreeMap::from([("yarn".to_owned(), "*".to_owned())]),
        );
        let script = dependencies_script(&dependencies).unwrap();
        assert_eq!(
            script,
            "npm install --global --prefix \"$PLATFORM_APP_DIR/.global\" 'yarn'\n\
             PYTHONUSERBASE=\"$PLATFORM_APP_DIR/.global\" python3 -m pip install --user --no-warn-script-location 'pipenv==2023.2.4' 'poetry>=1.8'\n"
        );
        assert_eq!(dependencies_script(&BTreeMap::new()), None);
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
