//! PHP apps as Platform.sh runs them: PHP-FPM behind the node router, `web.locations` passing
//! every request that is no file to the front controller, `build.flavor: composer`, a deploy
//! hook that migrates MariaDB, php.ini settings from `variables.php`, and files the router
//! serves itself, through the edge with real git pushes.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_php_app_runs_under_php_fpm_behind_its_locations_with_its_database() {
    let platform = Platform::start().await;
    let project = Project::example("php-app");
    let output = platform.push(&project, "HEAD:staging");
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("Installing dependencies with Composer"),
        "{said}"
    );
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", platform.edge);
    // Through the edge, to the staging environment.
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request
            .header("host", "staging.localhost")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    };
    let json = |body: &str| -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
    };

    // The front controller answers every path that is no file, with its database.
    let (status, body) = send(client.get(url("/"))).await;
    assert_eq!(status, 200, "{body}");
    let first = json(&body);
    assert_eq!(first["script_name"], "/index.php");
    assert_eq!(first["migrations"], 1, "the deploy hook ran once");
    assert_eq!(first["memory_limit"], "192M", "variables.php");
    assert_eq!(first["redis"], true, "runtime.extensions");
    assert_eq!(first["environment"], "staging");
    let (status, body) = send(
        client
            .get(url("/articles/7?sort=new"))
            .header("proxy", "http://attacker.example:3128"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let routed = json(&body);
    assert_eq!(routed["request_uri"], "/articles/7?sort=new");
    assert_eq!(routed["script_name"], "/index.php");
    assert_eq!(
        routed["visits"].as_i64(),
        first["visits"].as_i64().map(|v| v + 1)
    );
    assert_eq!(
        routed["http_proxy"],
        serde_json::Value::Null,
        "a client's Proxy header never becomes HTTP_PROXY"
    );
    let (status, body) = send(client.post(url("/form")).body("name=lockstep")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["body"], "name=lockstep");
    assert_eq!(json(&body)["method"], "POST");
    let (status, _) = send(client.get(url("/missing"))).await;
    assert_eq!(status, 404, "the script's own status");

    // Files are the router's; a PHP file under `scripts: false` is neither run nor sent.
    let (status, body) = send(client.get(url("/static/hello.txt"))).await;
    assert_eq!(status, 200);
    assert!(body.contains("a static file"), "{body}");
    let (status, body) = send(client.get(url("/static/config.php"))).await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("never-shown"), "{body}");
    let (status, body) = send(client.get(url("/index.php"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("<?php"), "{body}");
}
