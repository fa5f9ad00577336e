//! Variables propagated to a running cluster: through exactly one deploy, rebuilt only when a
//! build can see them, and a sensitive value seen by the app alone.

mod support;

use support::*;

async fn body_of(router: &str, path: &str) -> String {
    router_client()
        .get(format!("{router}{path}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn serving_image(platform: &Platform) -> String {
    platform.get("/environments/production").await["serving"]["image"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_variable_change_reaches_every_node_through_exactly_one_deploy() {
    let platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let before = platform.get("/activities").await.as_array().unwrap().len();
    let image = serving_image(&platform).await;

    let set = platform.cli(&[
        "var",
        "set",
        "env:GREETING",
        "hello from a variable",
        "--env",
        "production",
        "--visibility",
        "runtime",
    ]);
    assert!(set.status.success(), "{}", text(&set));
    let activities = platform.get("/activities").await;
    assert_eq!(
        activities.as_array().unwrap().len(),
        before + 1,
        "exactly one deploy"
    );
    assert_eq!(activities[0]["type"], "variable");
    assert_eq!(activities[0]["result"], "success");
    assert_eq!(
        serving_image(&platform).await,
        image,
        "a runtime-only variable reuses the image"
    );
    for router in platform.routers("production").await {
        assert!(
            body_of(&router, "/")
                .await
                .contains("hello from a variable"),
            "{router}"
        );
    }

    // A build-visible variable rebuilds: the sample app's build records it in its image.
    let set = platform.cli(&[
        "var",
        "set",
        "env:APP_RELEASE_NOTE",
        "spring sale",
        "--env",
        "production",
        "--visibility",
        "build",
    ]);
    assert!(set.status.success(), "{}", text(&set));
    assert_ne!(
        serving_image(&platform).await,
        image,
        "a build-visible variable rebuilds"
    );
    let phases = Platform::phase_names(&platform.get("/activities").await[0]);
    assert_eq!(phases[0], "build");

    // --no-redeploy changes nothing until the next deployment.
    let count = platform.get("/activities").await.as_array().unwrap().len();
    let set = platform.cli(&[
        "var",
        "set",
        "env:GREETING",
        "later",
        "--env",
        "production",
        "--no-redeploy",
    ]);
    assert!(set.status.success(), "{}", text(&set));
    assert_eq!(
        platform.get("/activities").await.as_array().unwrap().len(),
        count
    );
    let router = &platform.routers("production").await[0];
    assert!(body_of(router, "/").await.contains("hello from a variable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensitive_value_never_leaves_the_controller_except_for_the_app() {
    const SECRET: &str = "s3cr3t-value-4f9d2c";
    let platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let set = platform.cli(&[
        "var",
        "set",
        "payment_key",
        SECRET,
        "--env",
        "production",
        "--sensitive",
        "--visibility",
        "runtime",
    ]);
    assert!(set.status.success(), "{}", text(&set));

    // The app sees it, on every node.
    for router in platform.routers("production").await {
        let report: serde_json::Value =
            serde_json::from_str(&body_of(&router, "/env").await).unwrap();
        assert_eq!(report["variables"]["payment_key"], SECRET, "{router}");
    }

    let mut seen = Vec::new();
    let activities = platform.get("/activities").await;
    for path in [
        "/status",
        "/environments",
        "/environments/production",
        "/variables?environment=production",
        "/variables/payment_key?environment=production",
        "/activities",
    ] {
        seen.push((path.to_owned(), platform.get(path).await.to_string()));
    }
    for activity in activities.as_array().unwrap() {
        let id = activity["id"].as_str().unwrap();
        let output = platform.cli(&["activity", "log", id]);
        seen.push((format!("activity log {id}"), text(&output)));
    }
    for args in [
        &["var", "list", "--env", "production"][..],
        &["var", "get", "payment_key", "--env", "production"],
        &["var", "list", "--env", "production", "--json"],
        &["activity", "list"],
        &["status"],
        &["env", "info", "production"],
        &["logs", "production"],
    ] {
        let output = platform.cli(args);
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        seen.push((format!("lockstep {}", args.join(" ")), text(&output)));
    }
    seen.push(("var set output".into(), text(&set)));
    for (place, content) in &seen {
        assert!(!content.contains(SECRET), "the secret appears in {place}");
    }
    assert!(
        seen.iter().any(|(_, c)| c.contains("(sensitive)")),
        "the CLI says the value is hidden"
    );

    // No log file and no byte of the state database holds it: sensitive values are sealed.
    let mut files = Vec::new();
    collect_files(&platform.data_dir, &mut files);
    let checked: Vec<_> = files
        .iter()
        .filter(|f| {
            let name = f.to_string_lossy();
            name.ends_with(".log") || name.contains("lockstep.db") || name.ends_with(".jsonl")
        })
        .collect();
    assert!(checked.len() > 5, "{checked:?}");
    for file in checked {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret appears in {}",
            file.display()
        );
    }
}

fn collect_files(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => collect_files(&path, files),
            Ok(kind) if kind.is_file() => files.push(path),
            _ => {}
        }
    }
}
