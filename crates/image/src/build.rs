//! From a git ref to an image: check out, validate the configuration, run the build hook in the
//! build environment, pack, and record, or reuse the image built from the same inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lockstep_config::{BuildFlavor, Diagnostic};
use lockstep_supervisor::{
    APP_ROOT, Cancel, HookFailure, HookSpec, OperatorEnv, RunAs, RuntimeError, Sandbox, app_env,
    give_folder, give_tree, run_hook,
};

use crate::store::{APP_PREFIX, ImageInfo, Manifest};
use crate::{ImageError, ImageId, ImageStore, base64_json, checkout};

/// Platform.sh's own words, which users search their logs for.
pub const REUSE_MESSAGE: &str = "Reusing existing build for this tree ID";

/// Bumped whenever the image layout changes, so that no old build is reused for a new layout.
const IMAGE_FORMAT: u32 = 2;

/// Platform.sh's build hook limit.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where the project's build cache is, inside the build's sandbox (`PLATFORM_CACHE_DIR`).
const CACHE_INSIDE: &str = "/tmp/cache";

pub struct BuildRequest<'a> {
    /// A git repository, bare or not.
    pub repo: &'a Path,
    pub git_ref: &'a str,
    /// The project's id: `PLATFORM_PROJECT`.
    pub project: &'a str,
    /// `PLATFORM_PROJECT_ENTROPY` as builds see it: the same for every environment, since an
    /// image is reused by all of them.
    pub project_entropy: &'a str,
    /// Whose build cache the build uses: builds of one environment share one
    /// (`PLATFORM_CACHE_DIR`), and no environment sees another's.
    pub cache: &'a str,
    /// Build-visible variables by full name: `env:NAME` become environment variables, the
    /// others go into `PLATFORM_VARIABLES`. They override the app config's `variables`.
    pub variables: &'a BTreeMap<String, serde_json::Value>,
    pub timeout: Duration,
    /// Extra environment for git, such as a receive hook's quarantine directories.
    pub git_env: &'a crate::checkout::GitEnv,
    /// Who runs the build hook: the environment's user.
    pub user: RunAs,
    /// Whether a runtime version that is not installed fails the build instead of running
    /// the nearest one.
    pub strict_runtimes: bool,
    /// The operator's CA and proxy settings.
    pub operator: &'a OperatorEnv,
    /// Ends the build from elsewhere (`lockstep activity cancel`).
    pub cancel: Cancel,
}

/// A build's images, one per app in the project's order.
#[derive(Debug)]
pub struct BuildOutcome {
    pub images: Vec<Manifest>,
    pub reused: bool,
}

impl BuildOutcome {
    /// The release these images make (`crate::release_id`).
    pub fn release(&self) -> String {
        let ids: Vec<ImageId> = self.images.iter().map(|m| m.id.clone()).collect();
        crate::release_id(&ids)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("git: {0}")]
    Git(String),
    #[error("the configuration has {} error(s)", .0.iter().filter(|d| d.is_error()).count())]
    InvalidConfig(Vec<Diagnostic>),
    #[error(
        "the app's folder `{0}` (its `source.root`) is not a folder of the repository: commit it, or correct `source.root`"
    )]
    NoAppFolder(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the build hook failed")]
    Hook(#[source] HookFailure),
    #[error("the build was cancelled")]
    Cancelled,
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot prepare the build folder {}", path.display())]
    Workspace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Builds images into a store, keeping one build cache folder per project and environment.
pub struct Builder {
    store: ImageStore,
    cache_root: PathBuf,
    work_root: PathBuf,
    /// Names the builds' sandboxes, so that a restarted controller can end what it left.
    sandbox_owner: String,
}

impl Builder {
    /// Everything lives under `data_dir`: `images/`, `builds/`, `cache/<project>/<cache>`,
    /// `work/`. Sandboxes left running by an earlier builder of `data_dir` are ended.
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
        let canonical = work_root
            .canonicalize()
            .unwrap_or_else(|_| work_root.clone());
        let sandbox_owner = format!("build:{}", canonical.display());
        lockstep_supervisor::end_leftovers(&sandbox_owner);
        Ok(Builder {
            store,
            cache_root,
            work_root,
            sandbox_owner,
        })
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Builds `request`, one image per app of the project, streaming progress and the hooks'
    /// output to `log` line by line.
    pub fn build(
        &self,
        request: &BuildRequest<'_>,
        log: &mut dyn FnMut(&str),
    ) -> Result<BuildOutcome, BuildError> {
        let built_at = chrono::Utc::now();
        let tree_id = checkout::resolve_tree(request.repo, request.git_ref, request.git_env)?;
        let build_key = build_key(&tree_id, request.variables);
        if let Some(images) = self.store.find_build(&build_key)? {
            for manifest in &images {
                log_building(log, manifest.info.app(), &tree_id);
                log(&format!("  {REUSE_MESSAGE}"));
            }
            return Ok(BuildOutcome {
                images,
                reused: true,
            });
        }

        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&self.work_root)
            .map_err(workspace(&self.work_root))?;
        let tree_dir = work.path().join("tree");
        std::fs::create_dir(&tree_dir).map_err(workspace(&tree_dir))?;
        checkout::checkout(request.repo, &tree_id, &tree_dir, request.git_env)?;
        let checked = lockstep_config::check_dir(&tree_dir, &lockstep_supervisor::HostRuntimes)
            .map_err(|e| BuildError::Workspace {
                path: tree_dir.clone(),
                source: std::io::Error::other(e),
            })?;
        let Some(config) = checked.project else {
            return Err(BuildError::InvalidConfig(checked.diagnostics));
        };
        // Services resolve as runtimes do; said here, where the pusher reads it.
        for service in config.services.values() {
            let engine = lockstep_supervisor::resolve_runtime(
                &service.written_type,
                request.strict_runtimes,
            )?;
            if let Some(warning) = engine.warning() {
                log(&format!("  {warning}"));
            }
        }
        let work_dirs = take_app_folders(&tree_dir, &config.apps, work.path())?;
        let mut images = Vec::with_capacity(config.apps.len());
        for (app, app_work) in config.apps.iter().zip(&work_dirs) {
            let built = AppBuild {
                config: &config,
                app,
                work: app_work,
                tree_id: &tree_id,
                build_key: &build_key,
                built_at,
            };
            images.push(self.build_app(request, &built, log)?);
        }
        let ids: Vec<ImageId> = images.iter().map(|m| m.id.clone()).collect();
        self.store.record_build(&build_key, &ids)?;
        Ok(BuildOutcome {
            images,
            reused: false,
        })
    }

    /// One app's image: its folder (`APP_PREFIX` in `built.work`) through its build hook,
    /// packed.
    fn build_app(
        &self,
        request: &BuildRequest<'_>,
        built: &AppBuild<'_>,
        log: &mut dyn FnMut(&str),
    ) -> Result<Manifest, BuildError> {
        let started = Instant::now();
        let app = built.app;
        let app_dir = built.work.join(APP_PREFIX);
        log_building(log, app, built.tree_id);
        let runtime = lockstep_supervisor::resolve_runtime(&app.runtime, request.strict_runtimes)?;
        if let Some(warning) = runtime.warning() {
            log(&format!("  {warning}"));
        }

        // The build user gets the tree, and the project's cache of this environment (of this
        // app, when the project has several).
        give_tree(&app_dir, request.user).map_err(workspace(&app_dir))?;
        let mut cache_dir = self
            .cache_root
            .join(safe_name(request.project))
            .join(safe_name(request.cache));
        if built.config.apps.len() > 1 {
            cache_dir.push(safe_name(&app.name));
        }
        give_folder(&cache_dir, request.user).map_err(workspace(&cache_dir))?;
        let mut sandbox = Sandbox::prepare(
            app_dir.clone(),
            built.work,
            request.user,
            self.sandbox_owner.clone(),
        )
        .map_err(workspace(built.work))?;
        let cache_point = sandbox.tmp.join("cache");
        give_folder(&cache_point, request.user).map_err(workspace(&cache_point))?;
        sandbox.app_writable = true;
        sandbox.mounts.push((CACHE_INSIDE.into(), cache_dir));
        sandbox.runtime = runtime.commands;
        sandbox.host_files = request.operator.files.clone();

        let mut variables = app.variables.clone();
        variables.extend(request.variables.clone());
        let env = build_env(&BuildEnv {
            app,
            project: request.project,
            project_entropy: request.project_entropy,
            tree_id: built.tree_id,
            variables: &variables,
            operator: request.operator,
        });
        let mut script = String::new();
        if let Some(install) = dependencies_script(&app.dependencies) {
            log("  Installing global dependencies into .global");
            script.push_str(&install);
        }
        if needs_npm_install(app, &app_dir) {
            log("  Installing dependencies with npm (the nodejs default build flavor)");
            script.push_str("npm prune --userconfig .npmrc && npm install --userconfig .npmrc\n");
        }
        if let Some(check) = php_extensions_check(&app.extensions) {
            script.push_str(&check);
        }
        if needs_composer_install(app, &app_dir) {
            log("  Installing dependencies with Composer (the composer build flavor)");
            script.push_str(
                "composer --no-ansi --no-interaction install --no-progress --prefer-dist --optimize-autoloader --no-dev\n",
            );
        }
        // What Lockstep runs before the hook stops the build at its first failure; the hook
        // itself runs as written (its own `set -e`, or not), as on Platform.sh.
        if !script.is_empty() {
            script = format!("set -e\n{script}set +e\n");
        }
        if let Some(hook) = &app.hooks.build {
            log("  Executing build hook...");
            script.push_str(hook);
        }
        if !script.is_empty() {
            let spec = HookSpec {
                script,
                sandbox,
                env,
                timeout: request.timeout,
                cancel: request.cancel.clone(),
                stdin: None,
                stdout: None,
            };
            run_hook(&spec, &mut |line| log(&format!("    {line}"))).map_err(|failure| {
                match failure {
                    HookFailure::Cancelled { .. } => BuildError::Cancelled,
                    other => BuildError::Hook(other),
                }
            })?;
        }

        let info = ImageInfo {
            format: IMAGE_FORMAT,
            tree_id: built.tree_id.to_owned(),
            build_key: built.build_key.to_owned(),
            config: built.config.clone(),
            app: app.name.clone(),
        };
        let build_millis = started.elapsed().as_millis() as u64;
        let manifest = self
            .store
            .add(&app_dir, info, built.built_at, build_millis)?;
        log(&format!(
            "  Image {} ({} bytes)",
            manifest.id.short(),
            manifest.size
        ));
        Ok(manifest)
    }
}

/// What one app's build needs to know of the whole build.
struct AppBuild<'a> {
    config: &'a lockstep_config::Project,
    app: &'a lockstep_config::AppConfig,
    /// The app's own work folder: its tree at `APP_PREFIX`, and its sandbox's folders.
    work: &'a Path,
    tree_id: &'a str,
    build_key: &'a str,
    built_at: chrono::DateTime<chrono::Utc>,
}

fn log_building(log: &mut dyn FnMut(&str), app: &lockstep_config::AppConfig, tree_id: &str) {
    log(&format!(
        "Building application '{}' (runtime type: {}, tree: {})",
        app.name,
        app.runtime,
        &tree_id[..7]
    ));
}

fn workspace(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + use<> {
    let path = path.to_owned();
    move |source| BuildError::Workspace { path, source }
}

/// Gives each app its folder of the checked-out tree, as `<work>/apps/<index>/APP_PREFIX`, in
/// the apps' order: the folder of the app is all its image holds, the rest of the repository is
/// not the app's. Deeper folders are taken first, so that an app whose folder holds another's
/// does not take that one along; apps of one folder each get a copy.
fn take_app_folders(
    tree_dir: &Path,
    apps: &[lockstep_config::AppConfig],
    work: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    let work_dirs: Vec<PathBuf> = (0..apps.len())
        .map(|index| work.join("apps").join(index.to_string()))
        .collect();
    let mut order: Vec<usize> = (0..apps.len()).collect();
    order.sort_by_key(|&index| {
        std::cmp::Reverse(Path::new(&apps[index].source_root).components().count())
    });
    for (position, &index) in order.iter().enumerate() {
        let work_dir = &work_dirs[index];
        std::fs::create_dir_all(work_dir).map_err(workspace(work_dir))?;
        let root = &apps[index].source_root;
        let taken_later = order[position + 1..]
            .iter()
            .any(|&other| apps[other].source_root == *root);
        let app_dir = work_dir.join(APP_PREFIX);
        if taken_later {
            check_app_folder(tree_dir, root)?;
            lockstep_supervisor::copy_tree(&tree_dir.join(root), &app_dir)
                .map_err(workspace(&app_dir))?;
        } else {
            take_app_folder(tree_dir, root, &app_dir)?;
        }
    }
    Ok(work_dirs)
}

/// Moves the app's folder of the checked-out tree to `app_dir`.
fn take_app_folder(tree_dir: &Path, source_root: &str, app_dir: &Path) -> Result<(), BuildError> {
    check_app_folder(tree_dir, source_root)?;
    let folder = tree_dir.join(source_root);
    std::fs::rename(&folder, app_dir).map_err(workspace(&folder))
}

/// The app's folder must be a real folder of the tree: a link could lead the build anywhere.
fn check_app_folder(tree_dir: &Path, source_root: &str) -> Result<(), BuildError> {
    let mut walked = tree_dir.to_owned();
    for part in Path::new(source_root).components() {
        walked.push(part);
        let is_folder = std::fs::symlink_metadata(&walked).is_ok_and(|m| m.is_dir());
        if !is_folder {
            return Err(BuildError::NoAppFolder(source_root.to_owned()));
        }
    }
    Ok(())
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
        let specs: Vec<String> = packages
            .iter()
            // Composer itself is the machine's.
            .filter(|(name, _)| !(language == "php" && name.as_str() == "composer/composer"))
            .map(|(name, version)| match language.as_str() {
                "nodejs" if version == "*" => shell_quote(name),
                "nodejs" => shell_quote(&format!("{name}@{version}")),
                "php" => shell_quote(&format!("{name}:{version}")),
                _ if version == "*" => shell_quote(name),
                _ if version.starts_with(|c: char| c.is_ascii_digit()) => {
                    shell_quote(&format!("{name}=={version}"))
                }
                _ => shell_quote(&format!("{name}{version}")),
            })
            .collect();
        if specs.is_empty() {
            continue;
        }
        let command = match language.as_str() {
            "nodejs" => "npm install --global --prefix \"$PLATFORM_APP_DIR/.global\"",
            "php" => {
                "COMPOSER_HOME=\"$PLATFORM_APP_DIR/.global\" composer --no-ansi --no-interaction global require"
            }
            // The config check admits only python, python3, nodejs and php.
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

/// Stops the build with the Debian package to install for each PHP extension in `extensions`
/// that the machine's PHP lacks.
fn php_extensions_check(extensions: &[String]) -> Option<String> {
    if extensions.is_empty() {
        return None;
    }
    // The config check admits only names of letters, digits and `_`.
    Some(format!(
        "for extension in {}; do php -m | grep -qix \"$extension\" || {{ version=$(php -r 'echo PHP_MAJOR_VERSION.\".\".PHP_MINOR_VERSION;'); echo \"error: the PHP extension $extension is not installed: install the Debian package php$version-$extension\" >&2; exit 1; }}; done\n",
        extensions.join(" ")
    ))
}

fn needs_composer_install(app: &lockstep_config::AppConfig, app_dir: &Path) -> bool {
    let flavor = match app.build_flavor {
        BuildFlavor::Composer => true,
        BuildFlavor::Default => app.language() == "php",
        BuildFlavor::None => false,
    };
    flavor && app_dir.join("composer.json").exists()
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
    app: &'a lockstep_config::AppConfig,
    project: &'a str,
    project_entropy: &'a str,
    tree_id: &'a str,
    variables: &'a BTreeMap<String, serde_json::Value>,
    operator: &'a OperatorEnv,
}

/// The build hook's whole environment (SPEC section 5, "Build").
fn build_env(build: &BuildEnv<'_>) -> BTreeMap<String, String> {
    let mut env = app_env(build.operator);
    // Debian's Python refuses `pip install --user` (PEP 668) to protect the system's packages;
    // in the sandbox `/usr` is read-only and installs land in `/app`, as on Platform.sh. A
    // variable may still say otherwise.
    env.insert("PIP_BREAK_SYSTEM_PACKAGES".into(), "1".into());
    // Variables next: what the platform provides below overrides them, as on Platform.sh.
    env.extend(crate::variables_env(build.variables));
    let provided = [
        ("CI", "true".to_owned()),
        ("PLATFORM_APPLICATION_NAME", build.app.name.clone()),
        (
            "PLATFORM_APPLICATION",
            base64_json(&build_application(build.app)),
        ),
        ("PLATFORM_PROJECT", build.project.to_owned()),
        ("PLATFORM_PROJECT_ENTROPY", build.project_entropy.to_owned()),
        ("PLATFORM_TREE_ID", build.tree_id.to_owned()),
        ("PLATFORM_APP_DIR", APP_ROOT.to_owned()),
        ("PLATFORM_CACHE_DIR", CACHE_INSIDE.to_owned()),
    ];
    env.extend(provided.map(|(name, value)| (name.to_owned(), value)));
    env
}

/// `PLATFORM_APPLICATION` at build time: as at runtime, without what only changes how the app
/// runs (so that changing it redeploys without a rebuild), as Platform.sh leaves it out.
fn build_application(app: &lockstep_config::AppConfig) -> serde_json::Value {
    let mut json = app.as_written.clone();
    if let serde_json::Value::Object(fields) = &mut json {
        for runtime_only in ["web", "crons", "relationships", "access"] {
            fields.remove(runtime_only);
        }
        if let Some(serde_json::Value::Object(hooks)) = fields.get_mut("hooks") {
            hooks.remove("deploy");
            hooks.remove("post_deploy");
        }
    }
    json
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

    #[test]
    fn php_dependencies_go_through_composer_except_composer_itself() {
        let only_composer = BTreeMap::from([(
            "php".to_owned(),
            BTreeMap::from([("composer/composer".to_owned(), "^2".to_owned())]),
        )]);
        assert_eq!(dependencies_script(&only_composer), None);
        let with_a_tool = BTreeMap::from([(
            "php".to_owned(),
            BTreeMap::from([
                ("composer/composer".to_owned(), "^2".to_owned()),
                ("drush/drush".to_owned(), "^12".to_owned()),
            ]),
        )]);
        assert_eq!(
            dependencies_script(&with_a_tool).unwrap(),
            "COMPOSER_HOME=\"$PLATFORM_APP_DIR/.global\" composer --no-ansi --no-interaction global require 'drush/drush:^12'\n"
        );
    }
}
