//! `git push` to a running `lockstep up`, end to end: the real git client, real agents, the
//! sample app, pages fetched from the nodes' routers.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_production_deploys_every_node_with_every_phase_and_the_hook_once() {
    let platform = Platform::start().await;
    let project = Project::sample();
    let pushed = platform.push(&project, "HEAD:production");
    let log = text(&pushed);
    assert!(pushed.status.success(), "{log}");
    assert!(log.contains("Deployment complete"), "{log}");

    let tree = tree_of(&project);
    for router in platform.routers("production").await {
        assert_eq!(
            release_of(&router).await,
            (200, Some(tree.clone())),
            "{router}"
        );
    }

    let activities = platform.cli(&["activity", "list", "--json"]);
    assert!(activities.status.success(), "{}", text(&activities));
    let activities: serde_json::Value = serde_json::from_slice(&activities.stdout).unwrap();
    let push = &activities[0];
    assert_eq!(push["type"], "push");
    assert_eq!(push["environment"], "production");
    assert_eq!(push["state"], "complete");
    assert_eq!(push["result"], "success");
    let phases = Platform::phase_names(push);
    assert_eq!(
        phases,
        [
            "build",
            "stage",
            "quiesce",
            "close",
            "swap",
            "deploy_hook",
            "open",
            "post_deploy"
        ]
    );
    for phase in push["phases"].as_array().unwrap() {
        for key in ["started_at", "ended_at"] {
            let at = phase[key].as_str().unwrap_or_else(|| panic!("{phase}"));
            assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
            assert_eq!(
                at.len(),
                "2026-01-01T00:00:00.000Z".len(),
                "milliseconds: {at}"
            );
        }
    }

    let hooks: Vec<serde_json::Value> = platform
        .storage("production", "hooks.log")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["hook"] == "deploy")
        .collect();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["node"], "production-1");

    // Staging deploys only staging.
    project.new_version("staging only");
    let pushed = platform.push(&project, "HEAD:staging");
    assert!(pushed.status.success(), "{}", text(&pushed));
    let staging_tree = tree_of(&project);
    for router in platform.routers("staging").await {
        assert_eq!(release_of(&router).await, (200, Some(staging_tree.clone())));
    }
    for router in platform.routers("production").await {
        assert_eq!(
            release_of(&router).await,
            (200, Some(tree.clone())),
            "production untouched"
        );
    }

    // Any other branch gets a development environment.
    let pushed = platform.push(&project, "HEAD:feature/login");
    assert!(pushed.status.success(), "{}", text(&pushed));
    assert!(text(&pushed).contains("Creating environment feature-login, as a clone of production"));
    // Its data started as a copy of production's, and then its own deploy hook ran.
    let hook_nodes: Vec<String> = platform
        .storage("feature-login", "hooks.log")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["hook"] == "deploy")
        .map(|r| r["node"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        hook_nodes,
        ["production-1", "development-1"],
        "cloned, then its own run"
    );
    let routers = platform.routers("feature-login").await;
    assert_eq!(routers.len(), 1);
    assert_eq!(
        release_of(&routers[0]).await,
        (200, Some(staging_tree.clone()))
    );
    let dev = platform.environment_status("feature-login").await;
    assert_eq!(dev["kind"], "development");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_with_a_config_error_or_a_failing_build_is_rejected_while_production_serves() {
    let platform = Platform::start().await;
    let project = Project::sample();
    let first = platform.push(&project, "HEAD:production");
    assert!(first.status.success(), "{}", text(&first));
    let tree = tree_of(&project);
    let routers = platform.routers("production").await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loop_task = request_loop(routers.clone(), stop.clone());

    std::fs::write(
        project.path().join(".platform.app.yaml"),
        std::fs::read_to_string(project.path().join(".platform.app.yaml"))
            .unwrap()
            .replace("hooks:", "hoks:"),
    )
    .unwrap();
    project.commit("typo");
    let rejected = platform.push(&project, "HEAD:production");
    let log = text(&rejected);
    assert!(!rejected.status.success(), "{log}");
    assert!(log.contains("did you mean `hooks`?"), "{log}");

    std::fs::write(
        project.path().join(".platform.app.yaml"),
        std::fs::read_to_string(project.path().join(".platform.app.yaml"))
            .unwrap()
            .replace("hoks:", "hooks:")
            .replace("python3 build.py", "python3 build.py && exit 3"),
    )
    .unwrap();
    project.commit("failing build");
    let rejected = platform.push(&project, "HEAD:production");
    let log = text(&rejected);
    assert!(!rejected.status.success(), "{log}");
    assert!(log.contains("build hook failed"), "{log}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = loop_task.await.unwrap();
    assert!(answers.len() > 10);
    assert!(
        answers.iter().all(|a| *a == (200, Some(tree.clone()))),
        "{answers:?}"
    );
    // The branch did not move.
    let repository = platform.data_dir.join("controller/repos/shop.git");
    let branch = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&repository)
        .args(["rev-parse", "production^{tree}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&branch.stdout).trim(), tree);
    let production = platform.environment_status("production").await;
    assert_eq!(production["generation"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_new_releases_never_serve_at_once_through_a_deploy() {
    let platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let old = tree_of(&project);
    let routers = platform.routers("production").await;
    project.new_version("v2");
    let new = tree_of(&project);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loop_task = request_loop(routers.clone(), stop.clone());
    let pushed = platform.push(&project, "HEAD:production");
    assert!(pushed.status.success(), "{}", text(&pushed));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = loop_task.await.unwrap();

    // Old 200s, then new 200s, never an old one after a new one, with a closed window between
    // them where every node answers 503; nodes close and open one by one, so a 503 may also
    // come between answers of one release while the others close or open.
    let first_new = answers
        .iter()
        .position(|a| a.1.as_deref() == Some(new.as_str()))
        .expect("the new release served");
    let last_old = answers
        .iter()
        .rposition(|a| a.1.as_deref() == Some(old.as_str()))
        .expect("the old release served");
    assert!(last_old < first_new, "old release after the new one");
    assert!(
        answers[last_old..first_new].contains(&(503, None)),
        "no closed window between the releases"
    );
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            (200, Some(release)) if *release == old && i < first_new => {}
            (200, Some(release)) if *release == new && i > last_old => {}
            (503, None) => {}
            other => panic!("answer {i} of {}: {other:?}", answers.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_starting_again_brings_every_environment_back_open_at_its_release() {
    let mut platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    assert!(platform.push(&project, "HEAD:staging").status.success());
    let tree = tree_of(&project);
    let before = [
        platform.routers("production").await,
        platform.routers("staging").await,
    ]
    .concat();

    platform.stop();
    for router in &before {
        assert_eq!(
            release_of(router).await,
            (0, None),
            "{router} still answers after Ctrl-C"
        );
    }
    platform.restart().await;
    let after = [
        platform.routers("production").await,
        platform.routers("staging").await,
    ]
    .concat();
    assert_eq!(before, after, "routers keep their ports");
    for router in &after {
        let mut answer = (0, None);
        for _ in 0..200 {
            answer = release_of(router).await;
            if answer.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(answer, (200, Some(tree.clone())), "{router}");
    }
    // Every node came back closed, and each was caught up by an activity of its own that the
    // deploy state machine ran: every phase but the hooks, on that node alone. A node serves
    // once it opened, a moment before its catch-up records its end.
    let succeeded = || async {
        let activities = platform.get("/activities?limit=50").await;
        activities
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == "catch-up" && a["result"] == "success")
            .cloned()
            .collect::<Vec<serde_json::Value>>()
    };
    eventually(Duration::from_secs(10), "the catch-ups to end", || async {
        succeeded().await.len() >= 4
    })
    .await;
    let catch_ups = succeeded().await;
    let mut caught_up = Vec::new();
    for catch_up in &catch_ups {
        assert_eq!(
            Platform::phase_names(catch_up),
            ["stage", "quiesce", "close", "swap", "open"]
        );
        let log = text(&platform.cli(&["activity", "log", catch_up["id"].as_str().unwrap()]));
        let node = log
            .split("Catching up ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{log}"));
        caught_up.push(format!(
            "{}/{node}",
            catch_up["environment"].as_str().unwrap()
        ));
    }
    caught_up.sort();
    assert_eq!(
        caught_up,
        [
            "production/production-1",
            "production/production-2",
            "production/production-3",
            "staging/staging-1",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_whose_ports_are_shared_or_taken_is_repaired_at_start() {
    let mut platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let tree = tree_of(&project);
    platform.stop();

    let layout_path = platform.data_dir.join("up.json");
    let mut layout: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&layout_path).unwrap()).unwrap();
    let first = layout["agent_ports"][0].clone();
    layout["agent_ports"][1] = first;
    layout["agent_ports"][2] = 0.into();
    // Another process listens on the staging node's port by the time its agent starts.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    layout["agent_ports"][3] = taken.into();
    std::fs::write(&layout_path, layout.to_string()).unwrap();

    platform.restart().await;
    let repaired: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&layout_path).unwrap()).unwrap();
    let mut ports: Vec<u64> = repaired["agent_ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port.as_u64().unwrap())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 5, "{repaired}");
    assert!(!ports.contains(&0), "{repaired}");
    assert!(!ports.contains(&u64::from(taken)), "{repaired}");
    for router in platform.routers("production").await {
        let mut answer = (0, None);
        for _ in 0..200 {
            answer = release_of(&router).await;
            if answer.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(answer, (200, Some(tree.clone())), "{router}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_serves_the_previous_release_and_queued_deploys_are_superseded() {
    let platform = Platform::start().await;
    // A deploy hook that takes a while, so that later requests queue behind the deploy.
    let project = Project::with_slow_deploy_hook(1);
    assert!(platform.push(&project, "HEAD:production").status.success());
    let v1 = tree_of(&project);
    project.new_version("v2");
    assert!(platform.push(&project, "HEAD:production").status.success());
    let v2 = tree_of(&project);

    let rolled_back = platform.cli(&["rollback", "production"]);
    assert!(rolled_back.status.success(), "{}", text(&rolled_back));
    for router in platform.routers("production").await {
        assert_eq!(
            release_of(&router).await,
            (200, Some(v1.clone())),
            "{router}"
        );
    }

    // Three redeploys in a row: the first runs, the second waits and is superseded by the third.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let queued = platform.cli(&["deploy", "production", "--no-wait"]);
        assert!(queued.status.success(), "{}", text(&queued));
        ids.push(
            String::from_utf8_lossy(&queued.stdout)
                .split_whitespace()
                .nth(1)
                .unwrap()
                .trim_end_matches(':')
                .to_owned(),
        );
    }
    let results: Vec<serde_json::Value> = {
        let mut results = Vec::new();
        for id in &ids {
            results.push(platform.wait_for_activity(id).await);
        }
        results
    };
    assert_eq!(results[0]["result"], "success", "{results:?}");
    assert_eq!(results[1]["result"], "superseded", "{results:?}");
    assert_eq!(results[1]["state"], "cancelled");
    assert_eq!(results[2]["result"], "success", "{results:?}");
    // A redeploy of the rolled-back release keeps serving it; rolling back again returns to v2.
    let rolled_back = platform.cli(&["rollback", "production"]);
    assert!(rolled_back.status.success(), "{}", text(&rolled_back));
    for router in platform.routers("production").await {
        assert_eq!(
            release_of(&router).await,
            (200, Some(v2.clone())),
            "{router}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_become_environments_named_as_host_names_and_clashing_names_are_refused() {
    let platform = Platform::start().await;
    let project = Project::sample();
    let pushed = platform.push(&project, "HEAD:Feature_Y");
    assert!(pushed.status.success(), "{}", text(&pushed));
    // The edge serves it at a host name made of the branch's.
    let answer = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/", platform.edge))
        .header("host", "feature-y.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["x-release"].to_str().unwrap(),
        tree_of(&project)
    );

    for (branch, owner) in [("feature/y", "Feature_Y"), ("Production", "production")] {
        let refused = platform.push(&project, &format!("HEAD:{branch}"));
        assert!(!refused.status.success(), "{branch}: {}", text(&refused));
        let expected = format!("which is branch `{owner}`'s already");
        assert!(text(&refused).contains(&expected), "{}", text(&refused));
    }
    let refused = platform.push(&project, "HEAD:___");
    assert!(
        text(&refused).contains("no letter or digit"),
        "{}",
        text(&refused)
    );
    // A new branch whose build fails makes no environment and copies no storage (production
    // has some once it runs).
    assert!(platform.push(&project, "HEAD:production").status.success());
    assert!(!platform.storage("production", "deploy-count").is_empty());
    let broken = Project::sample();
    let config = broken.path().join(".platform.app.yaml");
    let text_before = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text_before.replace("hooks:", "hoks:")).unwrap();
    broken.commit("a typo");
    let refused = platform.push(&broken, "HEAD:broken-feature");
    assert!(!refused.status.success());
    assert!(
        !platform
            .data_dir
            .join("controller/storage/broken-feature")
            .exists(),
        "production's storage was copied for a rejected branch"
    );
    let activities = platform.get("/activities").await;
    assert!(
        activities
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["environment"] == "broken-feature" && a["result"] == "failure"),
        "the rejected push is not in the activities: {activities}"
    );
    // Nothing about the refused branches exists.
    let status = platform.status().await;
    let names: Vec<&str> = status["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["production", "staging", "feature-y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_deployment_fails_is_rejected_and_its_branch_stays_where_it_was() {
    let platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let serving = tree_of(&project);
    let deployed_commit = git_output(&project, &["rev-parse", "HEAD"]);
    let routers = platform.routers("production").await;
    for (failure, variable) in [
        ("a failing deploy hook", "DEPLOY_HOOK_FAIL"),
        ("a web process that exits at once", "SERVER_EXIT_AT_START"),
    ] {
        let config_path = project.path().join(".platform.app.yaml");
        let config = std::fs::read_to_string(&config_path).unwrap();
        let broken = config.replace(
            "    GREETING:",
            &format!("    {variable}: \"1\"\n    GREETING:"),
        );
        std::fs::write(&config_path, broken).unwrap();
        project.commit(failure);

        let started = std::time::Instant::now();
        let pushed = platform.push(&project, "HEAD:production");
        assert!(!pushed.status.success(), "{failure}: {}", text(&pushed));
        assert!(
            text(&pushed).contains("did not succeed"),
            "{}",
            text(&pushed)
        );
        assert!(started.elapsed() < Duration::from_secs(60), "{failure}");
        // The branch still names the commit production runs, and production serves it.
        let remote = std::process::Command::new("git")
            .args(["ls-remote", &platform.git_remote(), "refs/heads/production"])
            .output()
            .unwrap();
        let remote = String::from_utf8_lossy(&remote.stdout).into_owned();
        assert!(remote.starts_with(&deployed_commit), "{failure}: {remote}");
        for router in &routers {
            assert_eq!(
                release_of(router).await,
                (200, Some(serving.clone())),
                "{failure}"
            );
        }
        std::fs::write(&config_path, config).unwrap();
        project.commit("back to what works");
    }
}

fn git_output(project: &Project, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(project.path())
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_sync_code_merges_the_parents_branch_into_the_childs_and_deploys_it() {
    let platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let branched = platform.cli(&["env", "branch", "feature", "--no-clone-data"]);
    assert!(branched.status.success(), "{}", text(&branched));
    let feature = platform.routers("feature").await[0].clone();
    let sync = || platform.cli(&["env", "sync", "feature", "--code"]);
    assert_refused(&sync(), "nothing to sync");
    let write_and_commit = |file: &str, text: &str| {
        std::fs::write(project.path().join(file), text).unwrap();
        project.commit(file);
    };

    // Production moves on: the feature branch fast-forwards to it and serves it.
    write_and_commit("PARENT", "1");
    assert!(platform.push(&project, "HEAD:production").status.success());
    let synced = sync();
    assert!(synced.status.success(), "{}", text(&synced));
    assert_eq!(release_of(&feature).await, (200, Some(tree_of(&project))));

    // Both move on: a merge commit with both sides, built and deployed.
    write_and_commit("CHILD", "1");
    assert!(platform.push(&project, "HEAD:feature").status.success());
    let child = git_output(&project, &["rev-parse", "HEAD"]);
    project.git(&["reset", "-q", "--hard", "HEAD~1"]);
    write_and_commit("PARENT", "2");
    assert!(platform.push(&project, "HEAD:production").status.success());
    let synced = sync();
    assert!(synced.status.success(), "{}", text(&synced));
    project.git(&["fetch", "-q", &platform.git_remote(), "feature"]);
    let parents = git_output(&project, &["rev-list", "--parents", "-n1", "FETCH_HEAD"]);
    assert_eq!(
        parents.split_whitespace().skip(1).collect::<Vec<_>>(),
        [
            child.as_str(),
            &git_output(&project, &["rev-parse", "HEAD"])
        ],
        "a merge of production's commit into the feature's"
    );
    let merged_tree = git_output(&project, &["rev-parse", "FETCH_HEAD^{tree}"]);
    assert_eq!(release_of(&feature).await, (200, Some(merged_tree.clone())));

    // Both change the same file: refused, naming it; the feature keeps its code and release.
    project.git(&["checkout", "-q", "FETCH_HEAD"]);
    write_and_commit("SHARED", "child");
    assert!(platform.push(&project, "HEAD:feature").status.success());
    let feature_tree = tree_of(&project);
    project.git(&["checkout", "-q", "main"]);
    write_and_commit("SHARED", "parent");
    assert!(platform.push(&project, "HEAD:production").status.success());
    assert_refused(&sync(), "both change SHARED");
    assert_eq!(release_of(&feature).await, (200, Some(feature_tree)));
}
