//! The caching edge in front of a real cluster, through production deploys whose deploy hook
//! takes 5 s: anonymous visitors are served from cache, logged-in visitors are held (or, with
//! `closed_mode: error`, get 503 only inside the closed window), and no client sees the old
//! release after the new one.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;

/// One answer through the edge: status, `X-Release`, `X-Lockstep-Cache`.
type Answer = (u16, Option<String>, Option<String>);

async fn get(edge: u16, path: &str, cookie: Option<&str>) -> Answer {
    let mut request = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{edge}{path}"))
        .header("host", "localhost")
        .timeout(Duration::from_secs(60));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    match request.send().await {
        Ok(response) => {
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            (
                response.status().as_u16(),
                header("x-release"),
                header("x-lockstep-cache"),
            )
        }
        Err(_) => (0, None, None),
    }
}

fn client_loop(
    edge: u16,
    path: &'static str,
    cookie: Option<&'static str>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Answer>> {
    tokio::spawn(async move {
        let mut answers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            answers.push(get(edge, path, cookie).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        answers
    })
}

/// An anonymous and a logged-in visitor requesting pages in a loop.
struct Visitors {
    stop: Arc<AtomicBool>,
    anonymous: tokio::task::JoinHandle<Vec<Answer>>,
    logged_in: tokio::task::JoinHandle<Vec<Answer>>,
}

impl Visitors {
    fn start(edge: u16) -> Visitors {
        let stop = Arc::new(AtomicBool::new(false));
        Visitors {
            anonymous: client_loop(edge, "/", None, stop.clone()),
            logged_in: client_loop(edge, "/private", Some("session=alice"), stop.clone()),
            stop,
        }
    }

    /// Their answers: the anonymous visitor's, then the logged-in one's.
    async fn finish(self) -> (Vec<Answer>, Vec<Answer>) {
        self.stop.store(true, Ordering::Relaxed);
        (self.anonymous.await.unwrap(), self.logged_in.await.unwrap())
    }
}

/// Deploys a new version while anonymous and logged-in clients load the edge; returns their
/// answers and the old and new releases.
async fn deploy_under_load(
    platform: &Platform,
    project: &Project,
    label: &str,
) -> (Vec<Answer>, Vec<Answer>, String, String) {
    let old = tree_of(project);
    // Warm the cache for anonymous visitors.
    let first = get(platform.edge, "/", None).await;
    assert_eq!(first.0, 200, "{first:?}");
    let visitors = Visitors::start(platform.edge);
    tokio::time::sleep(Duration::from_millis(300)).await;
    project.new_version(label);
    let new = tree_of(project);
    let pushed = platform.push(project, "HEAD:production");
    assert!(pushed.status.success(), "{}", text(&pushed));
    // Past the deploy, until both kinds of client have seen the new release.
    wait_for_release(platform.edge, &new).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (anonymous, logged_in) = visitors.finish().await;
    (anonymous, logged_in, old, new)
}

/// Waits until a logged-in visitor (whom the cache never answers) gets `release`.
async fn wait_for_release(edge: u16, release: &str) {
    support::eventually(
        Duration::from_secs(30),
        "the new release through the edge",
        || async {
            get(edge, "/private", Some("session=bob"))
                .await
                .1
                .as_deref()
                == Some(release)
        },
    )
    .await;
}

/// Old releases, then new ones, never old after new; `allowed` says what may stand between.
fn assert_switches_once(
    answers: &[Answer],
    old: &str,
    new: &str,
    allowed_between: impl Fn(&Answer) -> bool,
) {
    let first_new = answers.iter().position(|a| a.1.as_deref() == Some(new));
    let last_old = answers.iter().rposition(|a| a.1.as_deref() == Some(old));
    if let (Some(first_new), Some(last_old)) = (first_new, last_old) {
        assert!(
            last_old < first_new,
            "the old release answered after the new one: {answers:?}"
        );
    }
    for answer in answers {
        let known = answer.0 == 200
            && (answer.1.as_deref() == Some(old) || answer.1.as_deref() == Some(new));
        assert!(
            known || allowed_between(answer),
            "unexpected answer {answer:?} in {answers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visitors_see_no_error_through_a_deploy_and_never_the_old_release_after_the_new() {
    let platform = Platform::start().await;
    let project = Project::with_slow_deploy_hook(5);
    assert!(platform.push(&project, "HEAD:production").status.success());

    // closed_mode: hold (the default).
    let (anonymous, logged_in, old, new) = deploy_under_load(&platform, &project, "v2").await;
    assert!(
        anonymous.len() > 50 && logged_in.len() > 3,
        "{} {}",
        anonymous.len(),
        logged_in.len()
    );
    assert!(
        anonymous.iter().all(|a| a.0 == 200),
        "anonymous visitors got errors: {anonymous:?}"
    );
    assert!(
        anonymous
            .iter()
            .any(|a| a.2.as_deref() == Some("HIT") || a.2.as_deref() == Some("STALE")),
        "anonymous visitors were served from cache: {anonymous:?}"
    );
    assert!(
        logged_in.iter().all(|a| a.0 == 200),
        "logged-in visitors got errors: {logged_in:?}"
    );
    assert_switches_once(&logged_in, &old, &new, |_| false);

    // closed_mode: error gives Platform.sh's behaviour: 503, and only while closed.
    let set = platform.cli(&["env", "set", "production", "closed_mode", "error"]);
    assert!(set.status.success(), "{}", text(&set));
    let (anonymous, logged_in, old, new) = deploy_under_load(&platform, &project, "v3").await;
    assert!(
        anonymous.iter().all(|a| a.0 == 200),
        "anonymous visitors got errors: {anonymous:?}"
    );
    let errors = logged_in.iter().filter(|a| a.0 == 503).count();
    assert!(
        errors > 0,
        "a 5 s closed window gives logged-in visitors 503s: {logged_in:?}"
    );
    assert_switches_once(&logged_in, &old, &new, |a| a.0 == 503);
    let first_503 = logged_in.iter().position(|a| a.0 == 503).unwrap();
    let last_503 = logged_in.iter().rposition(|a| a.0 == 503).unwrap();
    assert!(
        logged_in[first_503..=last_503].iter().all(|a| a.0 == 503),
        "503s only inside the closed window: {logged_in:?}"
    );
}

/// The edge is a process of its own that keeps the routes it was given: the controller dying in
/// the middle of a deploy, and coming back to finish it, costs visitors a wait and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_edge_serves_through_a_controller_crash_in_the_middle_of_a_deploy() {
    let mut platform = Platform::start().await;
    let project = Project::with_slow_deploy_hook(2);
    assert!(platform.push(&project, "HEAD:production").status.success());
    let old = tree_of(&project);
    let first = get(platform.edge, "/", None).await;
    assert_eq!(first.0, 200, "{first:?}");
    project.new_version("v2");
    let new = tree_of(&project);

    platform.restart_with_failpoint(Some("after:close")).await;
    let _ = platform.push(&project, "HEAD:production");
    assert_eq!(
        platform.wait_for_exit().await,
        Some(86),
        "the controller died"
    );

    let visitors = Visitors::start(platform.edge);
    platform.restart().await;
    let resumed = platform.latest_activity().await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resumed = platform.wait_for_activity(&resumed).await;
    assert_eq!(resumed["result"], "success", "{resumed}");
    wait_for_release(platform.edge, &new).await;
    let (anonymous, logged_in) = visitors.finish().await;
    assert!(!logged_in.is_empty());
    assert_switches_once(&anonymous, &old, &new, |_| false);
    assert_switches_once(&logged_in, &old, &new, |_| false);
}
