//! The builder against real git repositories and real build hooks.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lockstep_image::{
    BuildError, BuildOutcome, BuildRequest, Builder, REUSE_MESSAGE, UnpackLimits, unpack_verified,
};
use lockstep_supervisor::{Cancel, HookFailure, OperatorEnv, RunAs};

const APP_CONFIG: &str = r#"name: app
type: "python:3.11"
hooks:
  build: |
    set -e
    echo "building $PLATFORM_TREE_ID"
    printf '%s\n' "$PLATFORM_APPLICATION_NAME" "$PLATFORM_PROJECT" "$PLATFORM_TREE_ID" \
      "$PLATFORM_APP_DIR" "$PLATFORM_VARIABLES" "${FLAVOUR:-none}" "${SECRET_SAUCE:-none}" \
      "$PLATFORM_PROJECT_ENTROPY" > build-env.txt
    count=$(cat "$PLATFORM_CACHE_DIR/count" 2>/dev/null || echo 0)
    echo $((count + 1)) > "$PLATFORM_CACHE_DIR/count"
    if [ -n "${FAIL_BUILD:-}" ]; then echo "about to fail" >&2; exit 7; fi
variables:
  env:
    FLAVOUR: vanilla
web:
  commands:
    start: python3 server.py
"#;

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new(config: &str) -> Repo {
        let repo = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.write(".platform.app.yaml", config);
        repo.write("server.py", "print('hello')\n");
        repo.commit();
        repo
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, contents: &str) {
        fs::write(self.path().join(name), contents).unwrap();
    }

    fn commit(&self) {
        self.git(&["add", "-A"]);
        self.git(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "change",
        ]);
    }

    fn git(&self, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }
}

static NO_OPERATOR_SETTINGS: std::sync::LazyLock<OperatorEnv> =
    std::sync::LazyLock::new(OperatorEnv::default);

/// A request to build `git_ref` of `repo` for the `main` environment, as the test user.
fn request<'a>(
    repo: &'a Repo,
    git_ref: &'a str,
    variables: &'a BTreeMap<String, serde_json::Value>,
) -> BuildRequest<'a> {
    BuildRequest {
        repo: repo.path(),
        git_ref,
        project: "shop",
        project_entropy: "build-entropy-of-shop",
        cache: "main",
        variables,
        timeout: Duration::from_secs(120),
        git_env: &[],
        user: RunAs::unprivileged(),
        strict_runtimes: false,
        operator: &NO_OPERATOR_SETTINGS,
        cancel: Cancel::default(),
    }
}

fn build(
    builder: &Builder,
    repo: &Repo,
    variables: &BTreeMap<String, serde_json::Value>,
) -> (Result<BuildOutcome, BuildError>, Vec<String>) {
    run(builder, &request(repo, "HEAD", variables))
}

fn run(
    builder: &Builder,
    request: &BuildRequest<'_>,
) -> (Result<BuildOutcome, BuildError>, Vec<String>) {
    let mut log = Vec::new();
    let result = builder.build(request, &mut |line| log.push(line.to_owned()));
    (result, log)
}

/// A builder with an empty store, in a folder of its own.
fn fresh_builder() -> (tempfile::TempDir, Builder) {
    let data = tempfile::tempdir().unwrap();
    let builder = Builder::new(data.path()).unwrap();
    (data, builder)
}

fn no_variables() -> BTreeMap<String, serde_json::Value> {
    BTreeMap::new()
}

#[test]
fn building_one_commit_twice_reuses_the_first_image() {
    let (data, builder) = fresh_builder();
    let repo = Repo::new(APP_CONFIG);
    let (first, first_log) = build(&builder, &repo, &no_variables());
    let first = first.unwrap();
    assert!(!first.reused);
    assert!(!first_log.iter().any(|l| l.contains(REUSE_MESSAGE)));
    let (second, second_log) = build(&builder, &repo, &no_variables());
    let second = second.unwrap();
    assert!(second.reused);
    assert_eq!(first.images[0].id, second.images[0].id);
    assert!(
        second_log.iter().any(|l| l.trim() == REUSE_MESSAGE),
        "{second_log:?}"
    );
    // The hook did not run the second time: the project's build cache counted one build.
    let count = fs::read_to_string(data.path().join("cache/shop/main/count")).unwrap();
    assert_eq!(count.trim(), "1");
}

#[test]
fn two_stores_build_one_commit_into_the_same_image() {
    // Every build runs at /app, so even a hook that records where it runs is deterministic.
    let repo = Repo::new(APP_CONFIG);
    let ids: Vec<_> = (0..2)
        .map(|_| {
            let data = tempfile::tempdir().unwrap();
            let builder = Builder::new(data.path()).unwrap();
            build(&builder, &repo, &no_variables()).0.unwrap().images[0]
                .id
                .clone()
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
}

#[test]
fn changing_one_file_changes_the_image() {
    let (_data, builder) = fresh_builder();
    let repo = Repo::new(APP_CONFIG);
    let first = build(&builder, &repo, &no_variables()).0.unwrap();
    repo.write("server.py", "print('hello, world')\n");
    repo.commit();
    let second = build(&builder, &repo, &no_variables()).0.unwrap();
    assert!(!second.reused);
    assert_ne!(first.images[0].id, second.images[0].id);
    assert_ne!(first.images[0].info.tree_id, second.images[0].info.tree_id);
}

#[test]
fn changing_one_build_visible_variable_changes_the_image() {
    let (_data, builder) = fresh_builder();
    let repo = Repo::new(APP_CONFIG);
    let mut variables = no_variables();
    variables.insert("env:SECRET_SAUCE".into(), "ketchup".into());
    let first = build(&builder, &repo, &variables).0.unwrap();
    variables.insert("env:SECRET_SAUCE".into(), "mustard".into());
    let second = build(&builder, &repo, &variables).0.unwrap();
    assert!(!second.reused);
    assert_ne!(first.images[0].id, second.images[0].id);
    assert_eq!(first.images[0].info.tree_id, second.images[0].info.tree_id);
}

#[test]
fn the_build_hook_sees_the_build_environment() {
    let (data, builder) = fresh_builder();
    let repo = Repo::new(APP_CONFIG);
    let mut variables = no_variables();
    variables.insert("env:SECRET_SAUCE".into(), "ketchup".into());
    variables.insert("theme".into(), "dark".into());
    let outcome = build(&builder, &repo, &variables).0.unwrap();
    let unpacked = data.path().join("unpacked");
    unpack_verified(
        &builder.store().image_path(&outcome.images[0].id),
        &outcome.images[0].id,
        &unpacked,
        UnpackLimits::default(),
    )
    .unwrap();
    let env = fs::read_to_string(unpacked.join("app/build-env.txt")).unwrap();
    let lines: Vec<&str> = env.lines().collect();
    assert_eq!(lines[0], "app");
    assert_eq!(lines[1], "shop");
    assert_eq!(lines[2], outcome.images[0].info.tree_id);
    assert_eq!(lines[3], "/app");
    let decoded = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s '{}' | base64 -d", lines[4]))
        .output()
        .unwrap();
    let platform_variables: serde_json::Value = serde_json::from_slice(&decoded.stdout).unwrap();
    assert_eq!(platform_variables, serde_json::json!({"theme": "dark"}));
    // `env:` variables come from the app config and from the request.
    assert_eq!(lines[5], "vanilla");
    assert_eq!(lines[6], "ketchup");
    assert_eq!(lines[7], "build-entropy-of-shop");
    // The image describes itself, and the configuration inside it is the parsed one.
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(unpacked.join("image.json")).unwrap()).unwrap();
    assert_eq!(info["tree_id"], outcome.images[0].info.tree_id);
    assert_eq!(info["config"]["apps"][0]["name"], "app");
    assert_eq!(info["app"], "app", "the image names its app");
}

#[test]
fn a_failing_build_hook_fails_with_its_output_and_stores_nothing() {
    let (data, builder) = fresh_builder();
    let repo = Repo::new(APP_CONFIG);
    let mut variables = no_variables();
    variables.insert("env:FAIL_BUILD".into(), "1".into());
    let (result, log) = build(&builder, &repo, &variables);
    match result {
        Err(BuildError::Hook(failure @ HookFailure::Exited { .. })) => {
            assert!(failure.to_string().contains("exit status: 7"), "{failure}");
            assert!(failure.last_lines().iter().any(|l| l == "about to fail"));
        }
        other => panic!("expected a hook failure, got {other:?}"),
    }
    assert!(log.iter().any(|l| l.contains("about to fail")), "{log:?}");
    assert_eq!(fs::read_dir(data.path().join("images")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(data.path().join("work")).unwrap().count(), 0);
}

#[test]
fn a_build_hook_past_its_timeout_is_stopped() {
    let (_data, builder) = fresh_builder();
    let repo = Repo::new(&APP_CONFIG.replace("set -e\n", "set -e\n    sleep 60\n"));
    let variables = no_variables();
    let mut request = request(&repo, "HEAD", &variables);
    request.timeout = Duration::from_millis(500);
    let result = builder.build(&request, &mut |_| {});
    assert!(
        matches!(result, Err(BuildError::Hook(HookFailure::TimedOut { .. }))),
        "{result:?}"
    );
}

#[test]
fn an_invalid_configuration_fails_before_the_hook_runs() {
    let (data, builder) = fresh_builder();
    let repo = Repo::new(&APP_CONFIG.replace("web:", "wbe:"));
    let (result, log) = build(&builder, &repo, &no_variables());
    match result {
        Err(BuildError::InvalidConfig(diagnostics)) => {
            assert!(
                diagnostics
                    .iter()
                    .any(|d| d.message.contains("unknown key `wbe`"))
            );
        }
        other => panic!("expected an invalid configuration, got {other:?}"),
    }
    assert!(!log.iter().any(|l| l.contains("building")), "{log:?}");
    assert!(!data.path().join("cache/shop/main/count").exists());
}

#[test]
fn an_unknown_ref_is_a_clear_error() {
    let (_data, builder) = fresh_builder();
    let repo = Repo::new(APP_CONFIG);
    let variables = no_variables();
    let error = builder
        .build(&request(&repo, "no-such-branch", &variables), &mut |_| {})
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("`no-such-branch` does not name a commit"),
        "{error}"
    );
}

/// Unpacks an image of `builder`'s store into `dir/unpacked`, returning its app folder.
fn unpacked_app(builder: &Builder, outcome: &BuildOutcome, dir: &Path) -> std::path::PathBuf {
    unpacked_image(builder, &outcome.images[0], dir)
}

/// The app folder of `image`, unpacked in `dir`.
fn unpacked_image(
    builder: &Builder,
    image: &lockstep_image::Manifest,
    dir: &Path,
) -> std::path::PathBuf {
    let unpacked = dir.join(format!("unpacked-{}", image.id.short()));
    unpack_verified(
        &builder.store().image_path(&image.id),
        &image.id,
        &unpacked,
        UnpackLimits::default(),
    )
    .unwrap();
    unpacked.join("app")
}

#[test]
fn the_build_runs_at_app_as_its_user_and_sees_nothing_of_lockstep() {
    let (data, builder) = fresh_builder();
    let store = data.path().display().to_string();
    // A hostile build hook hunting for the builder's files, and a tool installing into the
    // home as pipenv and `pip install --user` do.
    let hook = format!(
        "set -e\n    \
         echo \"uid=$(id -u) pwd=$(pwd) home=$HOME\" > where.txt\n    \
         for path in {store} {store}/images /root /etc/shadow; do if [ -e $path ]; then echo $path >> seen.txt; fi; done\n    \
         mkdir -p ~/.local/bin && echo tool > ~/.local/bin/tool\n"
    );
    let repo = Repo::new(&format!(
        "name: app\ntype: \"python:3.11\"\nhooks:\n  build: |\n    {hook}web:\n  commands:\n    start: python3 server.py\n"
    ));
    let outcome = build(&builder, &repo, &no_variables()).0.unwrap();
    let app = unpacked_app(&builder, &outcome, data.path());
    let user = RunAs::unprivileged();
    assert_eq!(
        fs::read_to_string(app.join("where.txt")).unwrap(),
        format!("uid={} pwd=/app home=/app\n", user.uid)
    );
    assert!(
        !app.join("seen.txt").exists(),
        "the build saw {:?}",
        fs::read_to_string(app.join("seen.txt"))
    );
    assert_eq!(
        fs::read_to_string(app.join(".local/bin/tool")).unwrap(),
        "tool\n"
    );
}

#[test]
fn each_environment_has_a_build_cache_of_its_own() {
    let (data, builder) = fresh_builder();
    let repo = Repo::new(APP_CONFIG);
    let variables = no_variables();
    let main = request(&repo, "HEAD", &variables);
    run(&builder, &main).0.unwrap();
    // Another environment building another tree starts with an empty cache.
    repo.write("server.py", "print('feature')\n");
    repo.commit();
    let mut feature = request(&repo, "HEAD", &variables);
    feature.cache = "feature";
    run(&builder, &feature).0.unwrap();
    let count = |cache: &str| {
        fs::read_to_string(data.path().join(format!("cache/shop/{cache}/count"))).unwrap()
    };
    assert_eq!(count("main").trim(), "1");
    assert_eq!(count("feature").trim(), "1");
}

#[test]
fn a_cancelled_build_stops_at_once_and_stores_nothing() {
    let (data, builder) = fresh_builder();
    let repo =
        Repo::new(&APP_CONFIG.replace("set -e\n", "set -e\n    echo waiting\n    sleep 60\n"));
    let variables = no_variables();
    let request = request(&repo, "HEAD", &variables);
    let cancel = request.cancel.clone();
    let started = std::time::Instant::now();
    let result = builder.build(&request, &mut |line| {
        if line.trim() == "waiting" {
            cancel.cancel();
        }
    });
    assert!(matches!(result, Err(BuildError::Cancelled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(fs::read_dir(data.path().join("images")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(data.path().join("work")).unwrap().count(), 0);
}

#[test]
fn a_runtime_version_not_installed_runs_the_nearest_with_a_warning_or_fails_when_strict() {
    let (_data, builder) = fresh_builder();
    let repo = Repo::new(&APP_CONFIG.replace("python:3.11", "python:2.7"));
    let variables = no_variables();
    let (lenient, log) = run(&builder, &request(&repo, "HEAD", &variables));
    lenient.unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("warning: `type: python:2.7`")),
        "{log:?}"
    );
    let (_data, builder) = fresh_builder();
    let mut strict = request(&repo, "HEAD", &variables);
    strict.strict_runtimes = true;
    let (result, _) = run(&builder, &strict);
    assert!(
        matches!(
            result,
            Err(BuildError::Runtime(
                lockstep_supervisor::RuntimeError::NotExact { .. }
            ))
        ),
        "{result:?}"
    );
}

#[test]
fn a_language_not_installed_fails_the_check_naming_its_package() {
    let (_data, builder) = fresh_builder();
    let repo = Repo::new(&APP_CONFIG.replace("python:3.11", "elixir:1.15"));
    let (result, log) = build(&builder, &repo, &no_variables());
    match result {
        Err(BuildError::InvalidConfig(diagnostics)) => {
            let error = &diagnostics[0];
            assert_eq!(
                error.message,
                "the runtime `elixir:1.15` cannot run here: no elixir is installed"
            );
            assert_eq!((error.line, error.column), (2, 7));
        }
        other => panic!("expected an invalid configuration, got {other:?}"),
    }
    assert!(!log.iter().any(|l| l.contains("Executing build hook")));
}

#[test]
fn a_failing_dependency_install_fails_the_build_before_its_hook() {
    let (data, builder) = fresh_builder();
    let repo = Repo::new(
        "name: app\ntype: \"php:8.2\"\nbuild:\n  flavor: composer\nhooks:\n  build: echo the hook ran\nweb:\n  locations:\n    \"/\":\n      root: \"\"\n      passthru: /index.php\n",
    );
    // Not JSON: Composer fails at once, with no network needed.
    repo.write("composer.json", "{ not json");
    repo.commit();
    let (result, log) = build(&builder, &repo, &no_variables());
    assert!(
        matches!(result, Err(BuildError::Hook(HookFailure::Exited { .. }))),
        "{result:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("Installing dependencies with Composer")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("the hook ran")), "{log:?}");
    assert_eq!(fs::read_dir(data.path().join("images")).unwrap().count(), 0);
}

#[test]
fn an_app_in_a_folder_is_built_from_that_folder_alone() {
    let (data, builder) = fresh_builder();
    let repo = Repo::new(APP_CONFIG);
    fs::create_dir_all(repo.path().join("search")).unwrap();
    fs::rename(
        repo.path().join(".platform.app.yaml"),
        repo.path().join("search/.platform.app.yaml"),
    )
    .unwrap();
    repo.write("search/server.py", "print('search')\n");
    repo.write("README.md", "not the app's\n");
    repo.commit();
    let outcome = build(&builder, &repo, &no_variables()).0.unwrap();
    assert_eq!(outcome.images[0].info.app().source_root, "search");
    let app = unpacked_app(&builder, &outcome, data.path());
    assert_eq!(
        fs::read_to_string(app.join("server.py")).unwrap(),
        "print('search')\n"
    );
    assert!(
        app.join("build-env.txt").exists(),
        "the hook ran in the folder"
    );
    assert!(
        !app.join("README.md").exists(),
        "the rest of the repository is not the app's"
    );

    // A `source.root` that is no folder of the repository (here a link out of it) fails
    // the build, naming it.
    fs::remove_dir_all(repo.path().join("search")).unwrap();
    repo.write(
        ".platform.app.yaml",
        &format!("{APP_CONFIG}source:\n  root: elsewhere\n"),
    );
    std::os::unix::fs::symlink("/etc", repo.path().join("elsewhere")).unwrap();
    repo.commit();
    let error = build(&builder, &repo, &no_variables()).0.unwrap_err();
    assert!(
        matches!(&error, BuildError::NoAppFolder(folder) if folder == "elsewhere"),
        "{error}"
    );
}

#[test]
fn each_app_of_a_project_is_built_into_an_image_of_its_own_from_its_folder() {
    let (data, builder) = fresh_builder();
    let repo = Repo::new(APP_CONFIG);
    fs::remove_file(repo.path().join(".platform.app.yaml")).unwrap();
    let app = |name: &str, root: &str| {
        format!(
            "{name}:\n  type: \"python:3.11\"\n  source: {{root: {root}}}\n  hooks: {{build: 'echo \"$PLATFORM_APPLICATION_NAME\" > built-by.txt'}}\n  web: {{commands: {{start: python3 server.py}}}}\n"
        )
    };
    fs::create_dir_all(repo.path().join(".platform")).unwrap();
    // `docs` shares `web`'s folder; `api` is a folder inside it, which `web` must not take along.
    repo.write(
        ".platform/applications.yaml",
        &(app("web", "web") + &app("api", "web/api") + &app("docs", "web")),
    );
    fs::create_dir_all(repo.path().join("web/api")).unwrap();
    repo.write("web/server.py", "print('web')\n");
    repo.write("web/api/server.py", "print('api')\n");
    repo.commit();

    let outcome = build(&builder, &repo, &no_variables()).0.unwrap();
    let apps: Vec<&str> = outcome
        .images
        .iter()
        .map(|image| image.info.app().name.as_str())
        .collect();
    assert_eq!(
        apps,
        ["web", "api", "docs"],
        "one image per app, in the project's order"
    );
    let ids: Vec<_> = outcome
        .images
        .iter()
        .map(|image| image.id.clone())
        .collect();
    assert_eq!(outcome.release(), lockstep_image::release_id(&ids));
    assert_eq!(
        lockstep_image::release_images(&outcome.release()).unwrap(),
        ids
    );
    for (image, server) in outcome.images.iter().zip(["web", "api", "web"]) {
        let name = &image.info.app().name;
        let folder = unpacked_image(&builder, image, data.path());
        assert_eq!(
            fs::read_to_string(folder.join("built-by.txt")).unwrap(),
            format!("{name}\n"),
            "{name}'s hook ran in its own folder"
        );
        assert_eq!(
            fs::read_to_string(folder.join("server.py")).unwrap(),
            format!("print('{server}')\n"),
            "{name}'s image holds its folder"
        );
        assert!(
            !folder.join("api").exists(),
            "{name}'s image does not hold the api's folder"
        );
    }

    let (again, log) = build(&builder, &repo, &no_variables());
    let again = again.unwrap();
    assert!(again.reused);
    assert_eq!(again.release(), outcome.release());
    assert_eq!(
        log.iter()
            .filter(|line| line.contains(REUSE_MESSAGE))
            .count(),
        3,
        "{log:?}"
    );
}
