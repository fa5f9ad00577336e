//! Users and roles: the permission table enforced on the API and on git push for every role
//! on every environment type; users reaching the nodes with no deploy; `lockstep ssh`.

mod support;

use support::*;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl0c2FrZXlmb3J0ZXN0aW5nbG9ja3N0ZXBvbmx5 test@example";

async fn status_as(
    platform: &Platform,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> u16 {
    reqwest::Client::new()
        .request(method, format!("{}/api/v1{path}", platform.api))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Pushes a new commit to `branch` with a user's token in the URL.
fn push_as(platform: &Platform, project: &Project, token: &str, branch: &str) -> bool {
    project.new_version(&format!("{branch} {token}"));
    platform
        .push_as(project, token, &format!("HEAD:{branch}"))
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_on_every_environment_type_may_do_exactly_what_the_table_says() {
    let platform = Platform::start().await;
    let project = Project::sample();
    for branch in ["production", "staging", "feature"] {
        let pushed = platform.push(&project, &format!("HEAD:{branch}"));
        assert!(pushed.status.success(), "{}", text(&pushed));
    }
    let targets = [
        ("production", "production"),
        ("staging", "staging"),
        ("development", "feature"),
    ];
    let roles = [None, Some("viewer"), Some("contributor"), Some("admin")];

    let mut checked = 0;
    for (kind, _) in targets {
        for role in roles {
            let email = format!("{}-{kind}@example.com", role.unwrap_or("none"));
            let spec = role.map(|r| format!("{kind}:{r}"));
            let extra: Vec<&str> = spec
                .as_deref()
                .map(|s| vec!["--role", s])
                .unwrap_or_default();
            let token = platform.add_user(&email, &extra);
            for (target_kind, env) in targets {
                let role_here = if target_kind == kind { role } else { None };
                let may_read = role_here.is_some();
                let may_push = matches!(role_here, Some("contributor" | "admin"));
                let may_manage = role_here == Some("admin");
                let expect = |allowed: bool| if allowed { 200 } else { 403 };
                let read = status_as(
                    &platform,
                    &token,
                    reqwest::Method::GET,
                    &format!("/environments/{env}"),
                    serde_json::json!({}),
                )
                .await;
                assert_eq!(read, expect(may_read), "{email} reads {env}");
                for path in [
                    format!("/variables?environment={env}"),
                    format!("/environments/{env}/logs"),
                ] {
                    let read = status_as(
                        &platform,
                        &token,
                        reqwest::Method::GET,
                        &path,
                        serde_json::json!({}),
                    )
                    .await;
                    // Allowed, a log read goes on to the node: the refusal is what tells.
                    assert_eq!(read != 403, may_read, "{email} reads {path}: {read}");
                }
                let manage = status_as(
                    &platform,
                    &token,
                    reqwest::Method::POST,
                    &format!("/environments/{env}/settings"),
                    serde_json::json!({"key": "grace", "value": "3600"}),
                )
                .await;
                assert_eq!(
                    manage,
                    expect(may_manage),
                    "{email} changes a setting of {env}"
                );
                let promote = status_as(
                    &platform,
                    &token,
                    reqwest::Method::POST,
                    &format!("/environments/{env}/services/db/promote"),
                    serde_json::json!({}),
                )
                .await;
                // Allowed, it goes on to find that the sample app has no service.
                assert_eq!(
                    promote != 403,
                    may_manage,
                    "{email} promotes a replica on {env}: {promote}"
                );
                let ssh = status_as(
                    &platform,
                    &token,
                    reqwest::Method::POST,
                    &format!("/environments/{env}/exec"),
                    serde_json::json!({"command": "true"}),
                )
                .await;
                assert_eq!(ssh, expect(may_push), "{email} runs a command on {env}");
                let data = status_as(
                    &platform,
                    &token,
                    reqwest::Method::POST,
                    &format!("/environments/{env}/services/client"),
                    serde_json::json!({"client": "redis", "args": ["PING"]}),
                )
                .await;
                // Allowed, it goes on to the node (where the sample app has no relationship).
                assert_eq!(
                    data != 403,
                    may_push,
                    "{email} runs a service client on {env}: {data}"
                );
                assert_eq!(
                    push_as(&platform, &project, &token, env),
                    may_push,
                    "{email} pushes to {env}"
                );
                checked += 8;
            }
            let users = status_as(
                &platform,
                &token,
                reqwest::Method::GET,
                "/users",
                serde_json::json!({}),
            )
            .await;
            assert_eq!(users, 403, "{email} is not a project admin");
        }
    }
    assert_eq!(checked, 3 * 4 * 3 * 8);
    let wrong = status_as(
        &platform,
        "not-a-token",
        reqwest::Method::GET,
        "/status",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(wrong, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_change_reaches_every_production_node_with_no_deploy() {
    let platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let activities = platform.get("/activities").await.as_array().unwrap().len();
    let keys_of = |node: &str| {
        std::fs::read_to_string(
            platform
                .data_dir
                .join("agents")
                .join(node)
                .join("instances/production/ssh/authorized_keys"),
        )
        .unwrap_or_default()
    };

    platform.add_user(
        "dev@example.com",
        &["--role", "production:contributor", "--ssh-key", KEY],
    );
    platform.add_user(
        "watcher@example.com",
        &[
            "--role",
            "production:viewer",
            "--ssh-key",
            &KEY.replace("test@", "viewer@"),
        ],
    );
    for node in ["production-1", "production-2", "production-3"] {
        let keys = keys_of(node);
        assert!(keys.contains("lockstep:dev@example.com"), "{node}: {keys}");
        assert!(
            !keys.contains("watcher@example.com"),
            "{node}: a viewer may not ssh: {keys}"
        );
    }
    assert_eq!(
        platform.get("/activities").await.as_array().unwrap().len(),
        activities,
        "no deploy"
    );

    let deleted = platform.cli(&["user", "delete", "dev@example.com"]);
    assert!(deleted.status.success(), "{}", text(&deleted));
    for node in ["production-1", "production-2", "production-3"] {
        assert!(!keys_of(node).contains("dev@example.com"), "{node}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockstep_ssh_runs_in_the_apps_runtime_environment_on_the_chosen_node() {
    let platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let output = platform.cli(&[
        "ssh",
        "production",
        "--node",
        "production-2",
        "--",
        "echo $PLATFORM_ENVIRONMENT $LOCKSTEP_NODE $(pwd) && id -u",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    let mut lines = out.lines();
    let first = lines.next().unwrap();
    assert!(first.starts_with("production production-2 "), "{out}");
    assert!(first.ends_with("/app"), "{out}");
    if nix::unistd::Uid::effective().is_root() {
        assert_ne!(
            lines.next().unwrap().trim(),
            "0",
            "commands run as the app's user"
        );
    }
    let failed = platform.cli(&["ssh", "production", "--", "exit 3"]);
    assert!(!failed.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_branch_reading_variables_logs_and_hooks_need_the_right_role_or_token() {
    let platform = Platform::start().await;
    let project = Project::sample();
    for branch in ["staging", "feature"] {
        let pushed = platform.push(&project, &format!("HEAD:{branch}"));
        assert!(pushed.status.success(), "{}", text(&pushed));
    }
    let dev = platform.add_user("dev@example.com", &["--role", "development:contributor"]);
    let stranger = platform.add_user("stranger@example.com", &[]);

    // A development contributor deletes its own branch, and not staging's.
    let refused = platform.push_as(&project, &dev, ":staging");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("may not push to staging"),
        "{}",
        text(&refused)
    );
    let branches = |platform: &Platform| {
        let listed = std::process::Command::new("git")
            .args(["ls-remote", "--heads"])
            .arg(
                platform
                    .git
                    .replacen("http://", &format!("http://u:{}@", platform.token), 1),
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&listed.stdout).into_owned()
    };
    assert!(branches(&platform).contains("refs/heads/staging"));
    let deleted = platform.push_as(&project, &dev, ":feature");
    assert!(deleted.status.success(), "{}", text(&deleted));
    assert!(!branches(&platform).contains("refs/heads/feature"));

    // Project variables are for whoever has a role on the project.
    let set = platform.cli(&["var", "set", "theme", "dark"]);
    assert!(set.status.success(), "{}", text(&set));
    for path in ["/variables", "/variables/theme"] {
        for (token, expected) in [(&stranger, 403), (&dev, 200)] {
            let status = status_as(
                &platform,
                token,
                reqwest::Method::GET,
                path,
                serde_json::json!({}),
            )
            .await;
            assert_eq!(status, expected, "{path} read with a role or without");
        }
    }
    let production = status_as(
        &platform,
        &dev,
        reqwest::Method::GET,
        "/variables?environment=production",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(production, 403);

    // A process name cannot reach another route of the agent.
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/environments/staging/logs?process=../../../../metrics",
            platform.api
        ))
        .bearer_auth(&platform.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        !response.text().await.unwrap().contains("lockstep_agent"),
        "the agent's metrics leaked"
    );

    // The hooks' route says nothing to a caller without the hooks' token, whatever it sends.
    for body in ["not json", "{\"refs\": []}"] {
        let response = reqwest::Client::new()
            .post(format!("{}/internal/hooks/pre-receive", platform.api))
            .bearer_auth(&platform.token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{body}");
    }

    // Images go to enrolled nodes alone, on the cluster port: not to a caller without a
    // certificate, nor to another role's, nor to a node the project never enrolled; and the
    // API's port serves none, whatever the token.
    let image = platform.get("/environments/staging").await["serving"]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    let cluster = format!("https://127.0.0.1:{}", platform.layout()["cluster_port"]);
    let authority = platform.authority();
    let staging_node = lockstep_transport::http_client(
        &lockstep_transport::Identity::load(&platform.data_dir.join("agents/staging-1/tls"))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    for path in [
        format!("/v1/images/{image}"),
        format!("/v1/images/{image}/frames"),
    ] {
        let status = |client: reqwest::Client| {
            let url = format!("{cluster}{path}");
            async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
        };
        assert_eq!(status(staging_node.clone()).await.unwrap(), 200, "{path}");
        for (who, peer) in [
            (
                "the controller's role",
                lockstep_transport::Peer::Controller,
            ),
            (
                "an edge's role",
                lockstep_transport::Peer::Edge("edge".into()),
            ),
            (
                "a node never enrolled",
                lockstep_transport::Peer::Node("intruder".into()),
            ),
            (
                "a node's name with a certificate it was not issued",
                lockstep_transport::Peer::Node("staging-1".into()),
            ),
        ] {
            assert_eq!(
                status(client_as(&authority, peer)).await.unwrap(),
                403,
                "{path} as {who}"
            );
        }
        let anonymous = reqwest::Client::builder()
            .tls_certs_only([
                reqwest::Certificate::from_pem(authority.ca_pem().as_bytes()).unwrap(),
            ])
            .build()
            .unwrap();
        assert!(
            status(anonymous).await.is_err(),
            "{path} without a certificate"
        );
        for token in [platform.token.as_str(), dev.as_str()] {
            let on_api = reqwest::Client::new()
                .get(format!("{}{path}", platform.api))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(on_api, 404, "{path} on the API's port");
        }
    }
}
