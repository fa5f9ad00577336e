//! The template corpus: for each official Platform.sh template that Lockstep promises to run
//! (django4, wagtail, express, strapi4, nextjs, flask, meilisearch, golang, laravel), a fixture
//! of our own under `tests/templates/NAME` in the same shape as the template: the same
//! configuration files in the same places (`.platform.app.yaml`, `.platform/applications.yaml`
//! with `!include`, an app in a subfolder), the same route kinds (the app and its www redirect),
//! the same service engines and versions, and the same configuration features (unix sockets,
//! `web.locations`, mounts, build flavors, workers, a deploy hook that does what the template's
//! does), around a minimal app written for the corpus.
//!
//! The fixtures download nothing: CI has no package registry, so each app uses its language's
//! standard library and reaches its database with the engine's command-line client (or PDO),
//! through `PLATFORM_RELATIONSHIPS`. Each test pushes one fixture to a development branch
//! `t-NAME` of its own platform (to production for the Django ones: their settings allow
//! `localhost` and Platform.sh's own host names, as the templates' do, so a development
//! environment's `t-NAME.localhost` gets Django's 400), and checks that the configuration check passes, that the push
//! builds and deploys, that the app serves through the edge with content only its database (or
//! its deploy hook) could have given, and that the template's redirect route answers at the
//! edge.
//!
//! The real templates, unmodified, are pushed by `scripts/templates.sh` (not CI: their builds
//! need the package registries).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// Where a template's routes put the app, and which host redirects to it.
#[derive(Clone, Copy, Debug)]
enum Www {
    /// `https://{default}/` is the app; `https://www.{default}/` redirects to it.
    RedirectsToBare,
    /// `https://www.{default}/` is the app; `https://{default}/` redirects to it.
    AppAtWww,
}

/// `tests/templates/NAME`.
fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/templates")
        .join(name)
}

/// A git repository holding a copy of the fixture, committed on `main`.
fn fixture_project(name: &str) -> Project {
    let source = fixture_dir(name);
    assert!(source.is_dir(), "no fixture at {}", source.display());
    let project = Project {
        dir: tempfile::tempdir().unwrap(),
    };
    let status = Command::new("cp")
        .arg("-r")
        .arg(source.join("."))
        .arg(project.path())
        .status()
        .unwrap();
    assert!(status.success(), "copying the {name} fixture");
    let status = Command::new("git")
        .arg("-C")
        .arg(project.path())
        .args(["init", "-q", "-b", "main"])
        .status()
        .unwrap();
    assert!(status.success(), "git init");
    project.commit(&format!("the {name} template's shape"));
    project
}

/// One answer through the edge.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// Where a fixture is pushed.
#[derive(Clone, Copy, Debug)]
enum Branch {
    /// `t-NAME`, a development environment at `t-NAME.localhost`.
    Development,
    /// `production`, at `localhost`.
    Production,
}

/// A fixture pushed to a platform of its own, deployed.
struct Deployed {
    platform: Platform,
    _project: Project,
    name: &'static str,
    environment: String,
    www: Www,
    /// The environment's host at the edge: `{default}` of its routes.
    bare_host: String,
    http: reqwest::Client,
}

/// Starts a platform, checks the fixture's configuration, pushes it to `branch`, and checks that
/// the push built an image and completed its deployment, saying each of `push_says` too.
async fn deploy(name: &'static str, branch: Branch, www: Www, push_says: &[&str]) -> Deployed {
    let platform = Platform::start().await;
    let project = fixture_project(name);

    let check = platform.cli(&["config", "check", project.path().to_str().unwrap()]);
    assert!(
        check.status.success(),
        "config check of the {name} fixture:\n{}",
        text(&check)
    );
    assert!(
        text(&check).contains("the configuration is valid"),
        "{}",
        text(&check)
    );

    let (environment, bare_host) = match branch {
        Branch::Development => (format!("t-{name}"), format!("t-{name}.localhost")),
        Branch::Production => ("production".to_owned(), "localhost".to_owned()),
    };
    let output = platform.push(&project, &format!("HEAD:refs/heads/{environment}"));
    let said = text(&output);
    assert!(
        output.status.success(),
        "push of the {name} fixture:\n{said}"
    );
    let always = ["Building application", "  Image ", "Deployment completed"];
    for expected in always.iter().chain(push_says.iter()) {
        assert!(
            said.contains(expected),
            "the push of the {name} fixture does not say {expected:?}:\n{said}"
        );
    }
    Deployed {
        platform,
        _project: project,
        name,
        environment,
        www,
        bare_host,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    }
}

impl Deployed {
    fn www_host(&self) -> String {
        format!("www.{}", self.bare_host)
    }

    /// The host of the route that serves the app.
    fn app_host(&self) -> String {
        match self.www {
            Www::RedirectsToBare => self.bare_host.clone(),
            Www::AppAtWww => self.www_host(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, host: &str) -> Reply {
        let response = request
            .header("host", host)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: request through the edge failed: {e}", self.name));
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap_or_default(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.platform.edge)
    }

    /// `GET path` at `host` through the edge.
    async fn get_at(&self, host: &str, path: &str) -> Reply {
        self.send(self.http.get(self.url(path)), host).await
    }

    /// `GET path` at the app's host through the edge.
    async fn get(&self, path: &str) -> Reply {
        self.get_at(&self.app_host(), path).await
    }

    /// `POST path` at the app's host through the edge.
    async fn post(&self, path: &str) -> Reply {
        self.send(self.http.post(self.url(path)), &self.app_host())
            .await
    }

    /// `GET path` at the app's host, which must answer 200; the answer.
    async fn page(&self, path: &str) -> Reply {
        let reply = self.get(path).await;
        assert_eq!(
            reply.status,
            200,
            "{} {path} at {}: {}\n(the app's log: {})",
            self.name,
            self.app_host(),
            reply.body,
            self.web_log()
        );
        reply
    }

    /// The redirect route answers at the edge, with Platform.sh's default code (301) and the
    /// route's target as its Location, in the scheme the edge serves (plain HTTP).
    async fn assert_redirect(&self) {
        let (from, to) = match self.www {
            Www::RedirectsToBare => (self.www_host(), self.bare_host.clone()),
            Www::AppAtWww => (self.bare_host.clone(), self.www_host()),
        };
        let reply = self.get_at(&from, "/").await;
        assert_eq!(
            reply.status, 301,
            "{}: the redirect route https://{from}/ answered: {}",
            self.name, reply.body
        );
        assert_eq!(
            reply.header("location").as_deref(),
            Some(format!("http://{to}/").as_str()),
            "{}: where https://{from}/ redirects",
            self.name
        );
    }

    /// The web process's log, for messages.
    fn web_log(&self) -> String {
        text(&self.platform.cli(&["logs", &self.environment]))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django4_an_included_app_file_on_a_unix_socket_migrates_postgresql_in_its_deploy_hook() {
    let deployed = deploy(
        "django4",
        Branch::Production,
        Www::RedirectsToBare,
        &["Executing build hook", "static files copied"],
    )
    .await;

    // The migration the deploy hook applied wrote the greeting; the app reads it back.
    let home = deployed.page("/").await;
    assert!(
        home.body
            .contains("Hello from the django4 corpus, migrated by the deploy hook"),
        "{}",
        home.body
    );
    assert!(home.body.contains("hello.0001_greeting"), "{}", home.body);

    // The build hook collected the static files; the router serves them itself, `expires: 1h`.
    let css = deployed.page("/static/hello/site.css").await;
    assert!(css.body.contains("font-family"), "{}", css.body);
    assert!(
        css.header("cache-control")
            .is_some_and(|c| c.contains("max-age=3600")),
        "{:?}",
        css.headers
    );

    deployed.assert_redirect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wagtail_on_a_unix_socket_with_its_settings_module_migrates_its_home_page() {
    let deployed = deploy(
        "wagtail",
        Branch::Production,
        Www::RedirectsToBare,
        &["static files collected into /app/static (production settings)"],
    )
    .await;

    // The home page is a row the deploy hook's migrations made; the settings module is the
    // one `variables.env` named.
    let home = deployed.page("/").await;
    assert!(
        home.body.contains("Welcome to the wagtail corpus"),
        "{}",
        home.body
    );
    assert!(home.body.contains("settings production"), "{}", home.body);
    let css = deployed.page("/static/css/welcome.css").await;
    assert!(css.body.contains("teal"), "{}", css.body);

    deployed.assert_redirect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_with_the_default_npm_flavor_writes_and_reads_mariadb() {
    let deployed = deploy(
        "express",
        Branch::Development,
        Www::RedirectsToBare,
        &["Installing dependencies with npm"],
    )
    .await;

    // Each visit creates a table, writes a row, reads it back and drops the table.
    let home = deployed.page("/").await;
    assert!(
        home.body.contains("row 1: lockstep / express corpus"),
        "{}",
        home.body
    );

    deployed.assert_redirect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strapi4_with_its_mounts_bootstraps_its_postgresql_tables_at_start() {
    let deployed = deploy(
        "strapi4",
        Branch::Development,
        Www::AppAtWww,
        &["admin panel built"],
    )
    .await;

    // The CMS made its tables and recorded its start in PostgreSQL, and wrote into a mount.
    let home = deployed.page("/").await.json();
    assert_eq!(home["app"], "strapi4 corpus", "{home}");
    assert_eq!(home["node_env"], "production", "variables.env: {home}");
    assert!(home["starts"].as_i64().unwrap_or(0) >= 1, "{home}");
    assert_eq!(home["admin_built"], true, "the build's output: {home}");
    assert!(
        !home["scratch"].as_str().unwrap_or_default().is_empty(),
        "the .tmp mount: {home}"
    );

    deployed.assert_redirect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextjs_moves_its_built_folder_into_its_mount_in_the_deploy_hook() {
    let deployed = deploy(
        "nextjs",
        Branch::Development,
        Www::AppAtWww,
        &["set aside the build's .next"],
    )
    .await;

    // The page exists only in the build's output, which the deploy hook copied into the
    // `.next` mount: the server would not start without it.
    let home = deployed.page("/").await;
    assert!(
        home.body.contains("nextjs corpus: pre-rendered page"),
        "{}",
        home.body
    );
    let build = home.header("x-build-id").expect("the served build's id");
    assert!(
        home.body.contains(&build),
        "{build} is not the page's build: {}",
        home.body
    );
    let public = deployed.page("/hello.txt").await;
    assert!(
        public.body.contains("served from public/"),
        "{}",
        public.body
    );

    deployed.assert_redirect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_in_its_virtualenv_reaches_mariadb_and_redis() {
    let deployed = deploy(
        "flask",
        Branch::Development,
        Www::RedirectsToBare,
        &["Building application 'flask'", "virtualenv at /app/.venv"],
    )
    .await;

    let home = deployed.page("/").await.json();
    assert_eq!(home["database"]["status"], "OK", "{home}");
    assert!(
        home["database"]["return"]
            .as_str()
            .unwrap_or_default()
            .starts_with("mariadb "),
        "{home}"
    );
    assert_eq!(home["redis"]["status"], "OK", "{home}");
    assert_eq!(home["redis"]["return"], "bar", "{home}");
    assert_eq!(home["venv"], "/app/.venv", "{home}");

    deployed.assert_redirect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meilisearch_an_app_in_a_subfolder_is_seeded_through_its_port_by_the_deploy_hook() {
    let deployed = deploy(
        "meilisearch",
        Branch::Development,
        Www::AppAtWww,
        &["installing searchd", "installing pyrun"],
    )
    .await;

    // The deploy hook, with the runner the build put in ~/.local/bin, filled the running
    // engine's index through $PORT; the engine keeps it in its `data.ms` mount.
    let home = deployed.page("/").await.json();
    assert_eq!(home["status"], "available", "{home}");
    assert_eq!(home["indexes"]["movies"], 5, "{home}");
    let found = deployed
        .page("/indexes/movies/search?q=lighthouse")
        .await
        .json();
    assert_eq!(found["hits"].as_array().map(Vec::len), Some(2), "{found}");

    deployed.assert_redirect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golang_from_applications_yaml_builds_a_binary_that_writes_and_reads_mariadb() {
    let deployed = deploy(
        "golang",
        Branch::Development,
        Www::RedirectsToBare,
        &["Executing build hook"],
    )
    .await;

    // The start command exported the relationship as DATABASE_* variables; each visit writes a
    // row and reads it back.
    let home = deployed.page("/").await;
    assert!(
        home.body.contains("row 1 gopher golang corpus"),
        "{}",
        home.body
    );

    deployed.assert_redirect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravel_under_php_fpm_caches_migrates_and_runs_its_queue_worker() {
    let deployed = deploy(
        "laravel",
        Branch::Development,
        Www::AppAtWww,
        &["Installing dependencies with Composer"],
    )
    .await;

    // The deploy hook cached the configuration, compiled the view into its mount and migrated.
    let home = deployed.page("/").await.json();
    assert_eq!(home["app"], "laravel corpus", "{home}");
    assert_eq!(home["config_cached"], true, "{home}");
    let view = home["view"].as_str().unwrap_or_default();
    assert!(
        view.contains("Hello from the laravel corpus") && view.contains("Corpus Admin"),
        "the compiled view with the migrated user: {home}"
    );
    assert_eq!(
        home["migrations"].as_array().map(Vec::len),
        Some(3),
        "{home}"
    );
    assert_eq!(home["session_visits"], 1, "sessions in Redis: {home}");
    let robots = deployed.page("/robots.txt").await;
    assert!(robots.body.contains("User-agent"), "{}", robots.body);

    // A job queued through the app is run by the queue worker, which leaves a file in the
    // public storage mount that the `/storage` location serves.
    let queued = deployed.post("/jobs").await;
    assert_eq!(queued.status, 200, "{}", queued.body);
    let job = queued.json()["queued"].as_str().unwrap().to_owned();
    let d = &deployed;
    eventually(
        Duration::from_secs(60),
        "the queue worker to run the job",
        || async move {
            let reply = d.get("/").await;
            reply.status == 200 && reply.json()["jobs_done"].as_i64().unwrap_or(0) >= 1
        },
    )
    .await;
    let done = deployed.page(&format!("/storage/jobs/{job}.txt")).await;
    assert!(
        done.body
            .contains(&format!("job {job} done by the queue worker")),
        "{}",
        done.body
    );
    eventually(
        Duration::from_secs(30),
        "the scheduler worker to run",
        || async move {
            let reply = d.get("/").await;
            reply.status == 200 && !reply.json()["scheduler_last_run"].is_null()
        },
    )
    .await;

    deployed.assert_redirect().await;
}

/// Every fixture's folder is here, and no test pushes one that is not.
#[test]
fn every_template_of_the_issue_has_a_fixture() {
    let names = [
        "django4",
        "wagtail",
        "express",
        "strapi4",
        "nextjs",
        "flask",
        "meilisearch",
        "golang",
        "laravel",
    ];
    for name in names {
        assert!(fixture_dir(name).is_dir(), "no fixture for {name}");
    }
    let mut present: Vec<String> = std::fs::read_dir(fixture_dir(""))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(present, expected);
}
