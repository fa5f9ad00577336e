//! The console in a real browser: headless Chromium driven over WebDriver (chromedriver), against
//! `lockstep up`. Signing in, the environment tree, a push's log followed live to its end, the
//! timeline, a viewer's pages, a sensitive value absent from every page's source, and a form
//! posted from another site. With `CONSOLE_SCREENSHOTS=DIR`, it also saves the screenshots the
//! README shows.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use support::*;

/// A chromedriver, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs the browser tests: install chromium and chromium-driver (./setup does)");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually(
            Duration::from_secs(30),
            "chromedriver to answer",
            || async { reqwest::get(&status).await.is_ok() },
        )
        .await;
        Driver {
            child,
            url,
            _profile: tempfile::tempdir().unwrap(),
        }
    }

    /// A new browser with a profile of its own: no cookie of another.
    async fn browser(&self) -> Client {
        let profile = tempfile::tempdir().unwrap().keep();
        let mut args = vec![
            "--headless".to_owned(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        if nix::unistd::geteuid().is_root() {
            args.push("--no-sandbox".into());
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("chromedriver starts Chromium")
    }
}

async fn sign_in(browser: &Client, platform: &Platform, token: &str) {
    browser.goto(&format!("{}/", platform.api)).await.unwrap();
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/sign-in")
    );
    browser
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    browser
        .find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the tree after signing in",
        || async {
            browser
                .current_url()
                .await
                .is_ok_and(|url| url.path() == "/")
        },
    )
    .await;
}

async fn texts(browser: &Client, css: &str) -> Vec<String> {
    let mut texts = Vec::new();
    for element in browser.find_all(Locator::Css(css)).await.unwrap() {
        texts.push(element.text().await.unwrap());
    }
    texts
}

async fn screenshot(browser: &Client, name: &str) {
    if let Ok(dir) = std::env::var("CONSOLE_SCREENSHOTS") {
        let png = browser.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_follows_a_push_live_and_keeps_secrets_and_other_sites_out() {
    let platform = Platform::start().await;
    let project = Project::sample();
    for branch in ["production", "feature-x"] {
        let pushed = platform.push(&project, &format!("HEAD:{branch}"));
        assert!(pushed.status.success(), "{}", text(&pushed));
    }
    let driver = Driver::start().await;
    let admin = driver.browser().await;
    sign_in(&admin, &platform, &platform.token).await;
    let environments = texts(&admin, "td.tree strong").await;
    assert_eq!(environments[0], "production", "{environments:?}");
    assert!(
        environments.contains(&"feature-x".to_owned()),
        "{environments:?}"
    );
    screenshot(&admin, "console-tree.png").await;

    // A push with a slow deploy hook: its page, opened while it runs, grows without a reload.
    let slow = Project::with_slow_deploy_hook(3);
    let mut push = platform.push_command(&slow, "+HEAD:production");
    let pusher = std::thread::spawn(move || push.output().unwrap());
    let deploying = |activity: &serde_json::Value| {
        activity["environment"] == "production"
            && activity["state"] == "in_progress"
            && activity["phases"]
                .as_array()
                .is_some_and(|phases| phases.iter().any(|p| p["name"] == "stage"))
    };
    eventually(Duration::from_secs(60), "the push to deploy", || async {
        deploying(&platform.latest_activity().await)
    })
    .await;
    let running = platform.latest_activity().await;
    assert!(deploying(&running), "{running}");
    let id = running["id"].as_str().unwrap().to_owned();
    admin
        .goto(&format!("{}/activities/{id}", platform.api))
        .await
        .unwrap();
    admin
        .execute("window.samePage = true;", vec![])
        .await
        .unwrap();
    let log_now = || async {
        let seen = admin
            .execute(
                "return [document.querySelector('pre.log').textContent, window.samePage === true];",
                vec![],
            )
            .await
            .unwrap();
        (
            seen[0].as_str().unwrap_or_default().to_owned(),
            seen[1].as_bool().unwrap_or(false),
        )
    };
    let (first, _) = log_now().await;
    eventually(
        Duration::from_secs(60),
        "the log to grow on the page it was opened on",
        || async {
            let (log, same_page) = log_now().await;
            same_page && log.len() > first.len() && log.contains("Running the deploy hook")
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the log to reach the deployment's end",
        || async { log_now().await.0.contains("Deployment completed") },
    )
    .await;
    assert!(pusher.join().unwrap().status.success());
    eventually(
        Duration::from_secs(30),
        "the finished page with its timeline",
        || async { admin.find(Locator::Css("svg.timeline")).await.is_ok() },
    )
    .await;
    let phases = texts(&admin, "svg.timeline text").await;
    for phase in std::iter::once("build").chain(TIMELINE_PHASES) {
        assert!(phases.contains(&phase.to_owned()), "{phase} in {phases:?}");
    }
    assert!(
        phases.iter().any(|t| t.starts_with("closed window")),
        "{phases:?}"
    );
    screenshot(&admin, "console-activity.png").await;

    // A sensitive value, set through the console, is in no page's source.
    let secret = "s3cr3t-value-0123456789";
    admin
        .goto(&format!("{}/variables", platform.api))
        .await
        .unwrap();
    admin
        .find(Locator::Css("#name"))
        .await
        .unwrap()
        .send_keys("env:API_KEY")
        .await
        .unwrap();
    admin
        .find(Locator::Css("#value"))
        .await
        .unwrap()
        .send_keys(secret)
        .await
        .unwrap();
    admin
        .find(Locator::Css("input[name=sensitive]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    admin
        .find(Locator::Css("form[action='/variables'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the variable listed", || async {
        admin
            .source()
            .await
            .is_ok_and(|page| page.contains("env:API_KEY"))
    })
    .await;
    screenshot(&admin, "console-variables.png").await;
    for path in [
        "/",
        "/variables",
        "/environments/production",
        "/activities",
        &format!("/activities/{id}"),
    ] {
        admin
            .goto(&format!("{}{path}", platform.api))
            .await
            .unwrap();
        assert!(
            !admin.source().await.unwrap().contains(secret),
            "the secret in {path}"
        );
    }

    // A viewer sees no form that would change a variable.
    let viewer_token = platform.add_user("viewer@example.com", &["--role", "development:viewer"]);
    let viewer = driver.browser().await;
    sign_in(&viewer, &platform, &viewer_token).await;
    viewer
        .goto(&format!("{}/variables?environment=feature-x", platform.api))
        .await
        .unwrap();
    assert!(
        viewer
            .find(Locator::Css("h1"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("feature-x")
    );
    assert!(
        viewer
            .find_all(Locator::Css("form[action^='/variables']"))
            .await
            .unwrap()
            .is_empty()
    );
    viewer.close().await.unwrap();

    // A page of another site posts a redeploy form to the console: nothing starts.
    let before = platform.latest_activity().await["id"].clone();
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_port = evil.local_addr().unwrap().port();
    let target = format!("{}/environments/production/redeploy", platform.api);
    let page = format!(
        "<!doctype html><form id=f method=post action=\"{target}\"><input name=csrf value=guess></form><script>document.getElementById('f').submit()</script>"
    );
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let page = page.clone();
                async move { axum::response::Html(page) }
            }),
        );
        axum::serve(evil, app).await.unwrap();
    });
    admin
        .goto(&format!("http://localhost:{evil_port}/"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the forged form to be answered",
        || async {
            admin
                .current_url()
                .await
                .is_ok_and(|url| url.port() != Some(evil_port))
        },
    )
    .await;
    let landed = admin.source().await.unwrap();
    assert!(
        landed.contains("Sign in to Lockstep") || landed.contains("This form was refused"),
        "{landed}"
    );
    assert_eq!(
        platform.latest_activity().await["id"],
        before,
        "nothing started"
    );
    admin.close().await.unwrap();
}
