//! Nodes on hosts of their own (`support::hosts`): each test is a row of the fault matrix in
//! docs/RELIABILITY.md: a fault injected at a point of a deployment, then I1 (no two releases
//! served), I2 (the hook once), I5 where the deployment aborts, and a consistent end once the
//! fault is gone, with the time it took; and services replicating between the hosts. Root only.

mod support;

use std::time::{Duration, Instant};

use support::hosts::{Cluster, push};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partitioned_during_the_deploy_hook_stays_closed_and_catches_up_once_healed() {
    let Some(cluster) = Cluster::start(3, None).await else {
        return;
    };
    let project = Project::with_slow_deploy_hook(3);
    let pushed = cluster.push(&project);
    assert!(pushed.status.success(), "{}", text(&pushed));
    cluster.until_every_node_serves(&tree_of(&project)).await;

    project.new_version("v2");
    let v2 = tree_of(&project);
    let (path, remote) = (project.path().to_owned(), cluster.git.clone());
    let pusher = std::thread::spawn(move || push(&path, &remote));
    eventually(
        Duration::from_secs(60),
        "the deploy hook to run",
        || async {
            let push = cluster.latest_push().await;
            push["phases"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "deploy_hook" && p["ended_at"].is_null())
        },
    )
    .await;
    cluster.network.partition(2);
    let pushed = pusher.join().unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed));
    let deployment = cluster.latest_push().await;
    let id = deployment["id"].as_str().unwrap();
    assert_eq!(cluster.deploy_hook_runs(id), 1, "I2: the hook ran once");

    // I1: the nodes that took part serve the new release; the partitioned one, closed since
    // the close phase, serves nothing.
    let routers = cluster.routers().await;
    for (index, router) in routers.iter().enumerate().take(2) {
        assert_eq!(cluster.release_on_host(index, router), (200, v2.clone()));
    }
    assert_eq!(cluster.release_on_host(2, &routers[2]).0, 503);

    cluster.network.heal(2);
    let healed = cluster.until_every_node_serves(&v2).await;
    eprintln!("consistent {healed:?} after the partition healed");
    assert_eq!(cluster.deploy_hook_runs(id), 1, "I2: the hook ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partitioned_before_stage_aborts_the_deployment_and_nothing_changes() {
    let Some(cluster) = Cluster::start(3, None).await else {
        return;
    };
    let project = Project::sample();
    let pushed = cluster.push(&project);
    assert!(pushed.status.success(), "{}", text(&pushed));
    let v1 = tree_of(&project);
    cluster.until_every_node_serves(&v1).await;

    cluster.network.partition(2);
    project.new_version("v2");
    let pushed = cluster.push(&project);
    assert!(!pushed.status.success(), "{}", text(&pushed));
    let deployment = cluster.latest_push().await;
    assert_eq!(deployment["result"], "failure");
    let phases = Platform::phase_names(&deployment);
    assert!(!phases.contains(&"close".to_owned()), "{phases:?}");

    // I5: nothing changed anywhere, the partitioned node included.
    let routers = cluster.routers().await;
    for (index, router) in routers.iter().enumerate() {
        assert_eq!(cluster.release_on_host(index, router), (200, v1.clone()));
    }
    cluster.network.heal(2);
    let healed = cluster.until_every_node_serves(&v1).await;
    eprintln!("consistent {healed:?} after the partition healed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partitioned_while_it_drains_aborts_the_deployment_and_the_others_reopen() {
    let Some(cluster) = Cluster::start(3, None).await else {
        return;
    };
    let project = Project::sample();
    assert!(cluster.push(&project).status.success());
    let v1 = tree_of(&project);
    cluster.until_every_node_serves(&v1).await;
    let routers = cluster.routers().await;

    // A slow request on production-3 keeps its close draining while the partition comes.
    let mut slow = cluster
        .curl(2)
        .args(["-s", "-o", "/dev/null", "--max-time", "30"])
        .arg(format!("{}/slow?ms=6000", routers[2]))
        .spawn()
        .unwrap();
    project.new_version("v2");
    let (pusher, earlier) = cluster.push_in_background(&project).await;
    cluster.until_phase_begins(&earlier, "close").await;
    cluster.network.partition(2);
    let pushed = pusher.join().unwrap();
    let _ = slow.wait();
    let log = cluster.latest_push_log().await;
    assert!(!pushed.status.success(), "{log}");
    assert!(log.contains("Deployment aborted"), "{log}");
    // I5: the nodes that answered reopened at the old release; production-3, which closed by
    // itself once its request ended, never served the new one.
    for (index, router) in routers.iter().enumerate().take(2) {
        assert_eq!(cluster.release_on_host(index, router), (200, v1.clone()));
    }
    assert_ne!(cluster.release_on_host(2, &routers[2]).1, tree_of(&project));
    cluster.network.heal(2);
    let healed = cluster.until_every_node_serves(&v1).await;
    eprintln!("consistent {healed:?} after the partition healed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partitioned_after_open_serves_the_new_release_and_the_deployment_completes() {
    let Some(cluster) = Cluster::start(3, None).await else {
        return;
    };
    let project = Project::sample();
    assert!(cluster.push(&project).status.success());
    cluster.until_every_node_serves(&tree_of(&project)).await;

    project.new_version("v2");
    let v2 = tree_of(&project);
    let (pusher, earlier) = cluster.push_in_background(&project).await;
    cluster.until_phase_begins(&earlier, "post_deploy").await;
    cluster.network.partition(2);
    let pushed = pusher.join().unwrap();
    assert!(
        pushed.status.success(),
        "{}",
        cluster.latest_push_log().await
    );
    let routers = cluster.routers().await;
    for (index, router) in routers.iter().enumerate() {
        assert_eq!(cluster.release_on_host(index, router), (200, v2.clone()));
    }
    cluster.network.heal(2);
    let healed = cluster.until_every_node_serves(&v2).await;
    eprintln!("consistent {healed:?} after the partition healed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_cut_off_from_every_node_past_close_leaves_them_closed_until_it_returns() {
    let Some(cluster) = Cluster::start(3, None).await else {
        return;
    };
    let project = Project::with_slow_deploy_hook(3);
    assert!(cluster.push(&project).status.success());
    let v1 = tree_of(&project);
    cluster.until_every_node_serves(&v1).await;
    let routers = cluster.routers().await;

    project.new_version("v2");
    let (pusher, earlier) = cluster.push_in_background(&project).await;
    cluster.until_phase_begins(&earlier, "deploy_hook").await;
    for index in 0..3 {
        cluster.network.partition(index);
    }
    let pushed = pusher.join().unwrap();
    let id = cluster.latest_push().await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // I1: every node closed at the close phase; none opened while cut off.
    for (index, router) in routers.iter().enumerate() {
        assert_eq!(cluster.release_on_host(index, router).0, 503, "{router}");
    }
    assert!(
        !pushed.status.success(),
        "{}",
        cluster.latest_push_log().await
    );
    for index in 0..3 {
        cluster.network.heal(index);
    }
    // Every node was lost past close: the environment stays closed, serving nothing, until an
    // operator rolls back (a redeploy says so) or pushes again.
    let healed = Instant::now();
    let redeploy = cluster.production("deploy").await;
    assert_eq!(redeploy.status(), 409);
    let said = redeploy.text().await.unwrap();
    assert!(said.contains("lockstep rollback production"), "{said}");
    assert!(cluster.production("rollback").await.status().is_success());
    cluster.until_every_node_serves(&v1).await;
    eprintln!("consistent {:?} after the rollback", healed.elapsed());
    assert_eq!(cluster.deploy_hook_runs(&id), 1, "I2: the hook ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_paused_longer_than_the_drain_timeout_is_waited_for_and_nothing_serves_twice() {
    let Some(cluster) = Cluster::start(3, None).await else {
        return;
    };
    let project = Project::sample();
    assert!(cluster.push(&project).status.success());
    cluster.until_every_node_serves(&tree_of(&project)).await;

    project.new_version("v2");
    let v2 = tree_of(&project);
    let (pusher, earlier) = cluster.push_in_background(&project).await;
    cluster.until_phase_begins(&earlier, "quiesce").await;
    let paused = cluster.agent_pid(2);
    nix::sys::signal::kill(paused, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // Longer than the drain timeout (10 s): a live host's kernel keeps its connections.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let during = cluster.latest_push().await;
    assert!(during["result"].is_null(), "it waited: {during}");
    nix::sys::signal::kill(paused, nix::sys::signal::Signal::SIGCONT).unwrap();
    let pushed = pusher.join().unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed));
    let healed = cluster.until_every_node_serves(&v2).await;
    eprintln!("consistent {healed:?} after the agent resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_over_slow_lossy_links_completes_and_nothing_serves_twice() {
    let delay = Duration::from_millis(200);
    let Some(cluster) = Cluster::start(3, Some(delay)).await else {
        return;
    };
    let project = Project::sample();
    assert!(cluster.push(&project).status.success());
    cluster.until_every_node_serves(&tree_of(&project)).await;

    for index in 0..3 {
        cluster.network.lose(index, 5);
    }
    project.new_version("v2");
    let v2 = tree_of(&project);
    let started = Instant::now();
    let pushed = cluster.push(&project);
    assert!(
        pushed.status.success(),
        "{}",
        cluster.latest_push_log().await
    );
    let deployed = started.elapsed();
    let deployment = cluster.latest_push().await;
    let id = deployment["id"].as_str().unwrap();
    assert_eq!(cluster.deploy_hook_runs(id), 1, "I2: the hook ran once");
    let routers = cluster.routers().await;
    for (index, router) in routers.iter().enumerate() {
        assert_eq!(cluster.release_on_host(index, router), (200, v2.clone()));
    }
    eprintln!(
        "pushed and deployed in {deployed:?} with {delay:?} each way and 5% loss; phases: {}",
        deployment["phases"]
    );
}

/// Runs `program` against a server on another host; its output, or its error output.
fn client_of(program: &str, args: &[&str], password: (&str, &str)) -> Result<String, String> {
    let output = std::process::Command::new(program)
        .args(args)
        .env(password.0, password.1)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() {
        Ok(said)
    } else {
        Err(format!("{said}{}", String::from_utf8_lossy(&output.stderr)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_replicate_between_hosts_and_every_node_writes_to_the_one_primary() {
    let Some(cluster) = Cluster::start(3, None).await else {
        return;
    };
    let project = Project::example("services-app");
    let pushed = cluster.push(&project);
    let said = text(&pushed);
    assert!(pushed.status.success(), "{said}");
    // Replicas follow the primary at its host's address.
    let primary_host = cluster.network.hosts[0].address;
    for line in [
        "Service db on production-1: primary, ready".to_owned(),
        format!("Service db on production-2: replica of {primary_host}:"),
        format!("Service carts on production-3: replica of {primary_host}:"),
        format!("Service counter on production-2: replica of {primary_host}:"),
    ] {
        assert!(said.contains(&line), "{line} in {said}");
    }

    // An app on each host writes through its relationships, to the one primary.
    let http = router_client();
    let call = |method: reqwest::Method, url: String| {
        let http = http.clone();
        async move {
            let response = http.request(method, &url).send().await.unwrap();
            assert!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let routers = cluster.routers().await;
    assert_eq!(routers.len(), 3);
    let mut counter = serde_json::Value::Null;
    for (i, router) in routers.iter().enumerate() {
        call(
            reqwest::Method::POST,
            format!("{router}/notes?body=note%20{i}"),
        )
        .await;
        call(reqwest::Method::POST, format!("{router}/carts?id={i}")).await;
        counter = call(reqwest::Method::POST, format!("{router}/counter")).await["counter"].clone();
    }
    assert_eq!(counter, 3, "one Redis counts for every host");
    for router in &routers {
        let notes = call(reqwest::Method::GET, format!("{router}/notes")).await;
        assert_eq!(
            notes["notes"],
            serde_json::json!(["note 0", "note 1", "note 2"])
        );
    }

    // Each other host keeps a copy with the engine's own replication.
    for index in [1, 2] {
        let host = cluster.network.hosts[index].address.to_string();
        let kept = cluster.kept_services(index);
        let server = |name: &str| {
            let service = &kept["services"][name];
            (
                service["port"].as_u64().unwrap().to_string(),
                service["spec"]["password"].as_str().unwrap().to_owned(),
            )
        };
        let (port, password) = server("db");
        let psql = |sql: &str| {
            client_of(
                "psql",
                &[
                    "-h", &host, "-p", &port, "-U", "main", "-d", "main", "-qtAc", sql,
                ],
                ("PGPASSWORD", &password),
            )
        };
        assert_eq!(psql("SELECT pg_is_in_recovery()").unwrap(), "t");
        eventually(
            Duration::from_secs(10),
            "the notes on a replica host",
            || async { psql("SELECT count(*) FROM notes").is_ok_and(|count| count == "3") },
        )
        .await;
        let (port, password) = server("carts");
        let mariadb = |sql: &str| {
            client_of(
                "mariadb",
                &[
                    "--no-defaults",
                    "-h",
                    &host,
                    "-P",
                    &port,
                    "-u",
                    "user",
                    "main",
                    "-N",
                    "-e",
                    sql,
                ],
                ("MYSQL_PWD", &password),
            )
        };
        let size = mariadb("SHOW STATUS LIKE 'wsrep_cluster_size'").unwrap();
        assert_eq!(size.split_whitespace().last(), Some("3"), "{size}");
        assert_eq!(mariadb("SELECT count(*) FROM carts").unwrap(), "3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_mounts_live_in_the_pools_shared_folder_and_every_host_reads_what_one_wrote() {
    let Some(cluster) = Cluster::start(3, None).await else {
        return;
    };
    let project = Project::sample();
    let pushed = cluster.push(&project);
    assert!(pushed.status.success(), "{}", text(&pushed));
    cluster.until_every_node_serves(&tree_of(&project)).await;

    // The deploy hook ran on one host and wrote to storage; every host's app reads it there.
    let http = router_client();
    let routers = cluster.routers().await;
    for router in &routers {
        let hooks: serde_json::Value = http
            .get(format!("{router}/hooks"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(hooks["deploy_count"], 1, "{router}: {hooks}");
    }
    // Each host's worker writes its heartbeat into the one shared folder.
    let storage = cluster.shared_storage().join("production/storage");
    for node in ["production-1", "production-2", "production-3"] {
        let heartbeat = storage.join(format!("worker-{node}.log"));
        eventually(
            Duration::from_secs(10),
            "every host's worker to write to the shared folder",
            || async { heartbeat.exists() },
        )
        .await;
    }
    assert!(
        !cluster.controller_storage().join("production").exists(),
        "nothing of production lands in the controller's own folder"
    );
}
