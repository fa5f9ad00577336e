//! A project with two apps (`examples/multi-app`): `app` serves the site and calls `api`
//! through its `backend` relationship; `.platform/routes.yaml` sends `/api` to `api`. Both are
//! built into images of their own and deployed in one procedure on production's three nodes:
//! they close and open together, so that no request sees one app's release beside the other's,
//! and each app's deploy hook runs once per deployment.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;

/// `GET path` at production's host through the edge: status and body (status 0 when the
/// request failed).
async fn get(http: &reqwest::Client, edge: u16, path: &str) -> (u16, String) {
    match http
        .get(format!("http://127.0.0.1:{edge}{path}"))
        .header("host", "localhost")
        .send()
        .await
    {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(error) => (0, error.to_string()),
    }
}

/// What the site says: its release and the release of the api it reached.
fn releases(body: &str) -> (String, String) {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not the site's JSON: {body}"));
    (
        json["app"].as_str().unwrap().to_owned(),
        json["api"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_deploy_in_one_procedure_and_call_each_other_through_their_relationship() {
    let mut platform = Platform::start().await;
    let project = Project::example("multi-app");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    let pushed = platform.push(&project, "HEAD:production");
    let said = text(&pushed);
    assert!(pushed.status.success(), "{said}");
    for expected in [
        "Building application 'app'",
        "Building application 'api'",
        "Deployment completed",
    ] {
        assert!(
            said.contains(expected),
            "the push does not say {expected:?}:\n{said}"
        );
    }
    let first = tree_of(&project);
    let (status, body) = get(&http, platform.edge, "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(releases(&body), (first.clone(), first.clone()));
    assert_eq!(
        get(&http, platform.edge, "/api/release").await,
        (200, first.clone()),
        "the route to /api reaches the api app"
    );

    // Every node runs both apps, each behind its own router.
    let production = platform.environment_status("production").await;
    let nodes = production["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        let apps: Vec<&str> = node["apps"]
            .as_array()
            .unwrap_or_else(|| panic!("no apps in {node}"))
            .iter()
            .map(|a| a["app"].as_str().unwrap())
            .collect();
        assert_eq!(apps, ["app", "api"], "{node}");
        for app in node["apps"].as_array().unwrap() {
            assert_eq!(app["gate"]["state"], "open", "{node}");
        }
    }

    // A request loop through the edge while a new version deploys: every answer is the site
    // with the api of its own release.
    project.new_version("v2");
    let second = tree_of(&project);
    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let (stop, http, edge) = (stop.clone(), http.clone(), platform.edge);
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(get(&http, edge, "/").await);
            }
            answers
        })
    };
    let pushed = platform.push(&project, "HEAD:production");
    assert!(pushed.status.success(), "{}", text(&pushed));
    let after_push = get(&http, platform.edge, "/").await;
    stop.store(true, Ordering::Relaxed);
    let answers = looping.await.unwrap();
    let mut seen_second = false;
    for (i, (status, body)) in answers.iter().chain([&after_push]).enumerate() {
        assert_eq!(*status, 200, "answer {i}: {body}");
        let (app, api) = releases(body);
        assert_eq!(app, api, "answer {i} mixes releases");
        if app == second {
            seen_second = true;
        } else {
            assert!(
                !seen_second,
                "answer {i}: the first release after the second"
            );
            assert_eq!(app, first, "answer {i}");
        }
    }
    assert!(seen_second, "the second release never served");

    // Each app's deploy hook ran once per deployment, on one node of the three.
    let once_each = format!("deploy {first}\ndeploy {second}\n");
    assert_eq!(
        get(&http, platform.edge, "/hooks").await,
        (200, once_each.clone())
    );
    assert_eq!(
        get(&http, platform.edge, "/api/hooks").await,
        (200, once_each)
    );

    // `--app` picks the app a command runs in.
    let api_name = platform.cli(&[
        "ssh",
        "production",
        "--app",
        "api",
        "--",
        "printenv PLATFORM_APPLICATION_NAME",
    ]);
    assert_eq!(text(&api_name).trim(), "api", "{}", text(&api_name));
    let unknown = platform.cli(&["ssh", "production", "--app", "nope", "--", "true"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no app `nope`; its apps: `app`, `api`"),
        "{}",
        text(&unknown)
    );

    // After a restart each app finds the other again.
    platform.stop();
    platform.restart().await;
    eventually(
        Duration::from_secs(30),
        "the site after a restart",
        || async { get(&http, platform.edge, "/").await.0 == 200 },
    )
    .await;
    let (status, body) = get(&http, platform.edge, "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(releases(&body), (second.clone(), second));
}
