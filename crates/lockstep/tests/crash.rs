//! The controller killed at each phase boundary, and a node killed after close: every
//! deployment still ends consistent, with the deploy hook run once (I2, I4).

mod support;

use std::time::Duration;

use support::*;

fn deploy_hook_runs(platform: &Platform, deployment: &str) -> usize {
    platform
        .storage("production", "hooks.log")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["hook"] == "deploy" && r["deployment"] == deployment)
        .count()
}

async fn controller_killed_at(failpoint: &str) {
    let mut platform = Platform::start().await;
    let project = Project::with_slow_deploy_hook(2);
    assert!(platform.push(&project, "HEAD:production").status.success());
    project.new_version("v2");
    let new = tree_of(&project);

    platform.restart_with_failpoint(Some(failpoint)).await;
    // The push's deploy dies with the controller; the push itself was accepted.
    let _ = platform.push(&project, "HEAD:production");
    assert_eq!(
        platform.wait_for_exit().await,
        Some(86),
        "the failpoint {failpoint} fired"
    );
    platform.restart().await;

    let activity = platform.latest_activity().await;
    let id = activity["id"].as_str().unwrap().to_owned();
    let activity = platform.wait_for_activity(&id).await;
    assert_eq!(activity["result"], "success", "{failpoint}: {activity}");
    assert_eq!(
        deploy_hook_runs(&platform, &id),
        1,
        "{failpoint}: the deploy hook ran once"
    );
    for router in platform.routers("production").await {
        let mut release = None;
        for _ in 0..100 {
            release = release_of(&router).await.1;
            if release.as_deref() == Some(new.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            release.as_deref(),
            Some(new.as_str()),
            "{failpoint}: {router}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_killed_after_stage_resumes_to_a_consistent_end() {
    controller_killed_at("after:stage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_killed_after_close_resumes_to_a_consistent_end() {
    controller_killed_at("after:close").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_killed_during_the_deploy_hook_resumes_and_the_hook_runs_once() {
    controller_killed_at("during:deploy_hook").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_killed_after_open_resumes_to_a_consistent_end() {
    controller_killed_at("after:open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_after_close_catches_up_and_opens_again() {
    let platform = Platform::start().await;
    let project = Project::with_slow_deploy_hook(2);
    assert!(platform.push(&project, "HEAD:production").status.success());
    project.new_version("v2");
    let new = tree_of(&project);

    let first_push = platform.latest_activity().await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let killer = {
        let api = platform.api.clone();
        let token = platform.token.clone();
        let pid = platform.agent_pid("production-3");
        tokio::spawn(async move {
            // Kill production-3 as soon as the deployment has closed the cluster.
            loop {
                let activities: serde_json::Value = reqwest::Client::new()
                    .get(format!("{api}/api/v1/activities?limit=1"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let closed = activities[0]["phases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == "close" && !p["ended_at"].is_null());
                if closed && activities[0]["id"] != first_push.as_str() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let pushed = platform.push(&project, "HEAD:production");
    killer.await.unwrap();
    let log = String::from_utf8_lossy(&pushed.stderr);
    assert!(log.contains("Deployment complete"), "{log}");

    let activity = platform.latest_activity().await;
    let id = activity["id"].as_str().unwrap();
    assert_eq!(deploy_hook_runs(&platform, id), 1);
    // The lost node comes back (restarted as a service manager would), closed, catches up to
    // the release its environment serves, and only then opens.
    let routers = platform.routers("production").await;
    for router in &routers {
        let mut release = None;
        for _ in 0..400 {
            release = release_of(router).await.1;
            if release.as_deref() == Some(new.as_str()) {
                break;
            }
            assert!(
                release.is_none(),
                "{router} served {release:?} before catching up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(release.as_deref(), Some(new.as_str()), "{router}");
    }
}
