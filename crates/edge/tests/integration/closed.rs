//! While an environment is closed: stored responses answer, other requests wait (or get the
//! nodes' answer with `closed_mode: error`), and the edge learns the gate from the nodes too.

use std::time::Duration;

use lockstep_edge::{ClosedMode, EdgeOptions, EffectiveState, GateState, NodeState};
use reqwest::Method;
use serde_json::json;
use tokio::time::Instant;

use crate::support::{
    Fetched, Origin, TestEdge, eventually, let_time_pass, metric, options, route,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_environment_is_answered_from_the_store_without_the_origin() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let fresh = edge.fetch("/s?cc=max-age%3D60").await;
    let stale = edge.fetch("/t?cc=max-age%3D1").await;
    let_time_pass(Duration::from_millis(1100)).await;

    edge.gate("main", GateState::Closed, None).await;
    origin.gate("closed").await;
    origin.reset().await;

    let hit = edge.fetch("/s?cc=max-age%3D60").await;
    assert_eq!((hit.cache.as_str(), &hit.body), ("HIT", &fresh.body));
    let grace = edge.fetch("/t?cc=max-age%3D1").await;
    assert_eq!((grace.status, grace.cache.as_str()), (200, "STALE"));
    assert_eq!(grace.body, stale.body);
    let head = Fetched::from(
        edge.request(Method::HEAD, "localhost", "/t?cc=max-age%3D1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(head.cache, "STALE");
    assert_eq!(origin.total().await, 0, "the origin saw nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passed_requests_are_held_and_released_in_arrival_order() {
    let origin = Origin::start().await;
    // Connection: close makes every request a new connection, numbered by the origin in
    // accept order, so the log shows the order the edge sent them in.
    origin.set(json!({"close": true})).await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    edge.gate("main", GateState::Closed, None).await;

    let mut requests = Vec::new();
    for i in 0..6 {
        let request = if i == 5 {
            // A cacheable request with nothing stored waits too.
            edge.get("/held5?cc=max-age%3D60").send()
        } else {
            edge.request(Method::POST, "localhost", &format!("/held{i}"))
                .body(format!("request {i}"))
                .send()
        };
        requests.push(tokio::spawn(async move {
            Fetched::from(request.await.unwrap()).await
        }));
        edge.wait_held("main", i + 1).await;
    }
    assert_eq!(origin.total().await, 0);

    edge.gate("main", GateState::Open, None).await;
    for request in requests {
        assert_eq!(request.await.unwrap().status, 200);
    }
    let mut log = origin.log().await;
    log.sort_by_key(|e| e["conn"].as_u64());
    let order: Vec<&str> = log.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(
        order,
        ["/held0", "/held1", "/held2", "/held3", "/held4", "/held5"]
    );

    let metrics = edge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "lockstep_edge_holds_total",
            &["outcome=\"released\""]
        ),
        6.0
    );
    assert_eq!(
        metric(&metrics, "lockstep_edge_hold_seconds_count", &[]),
        6.0
    );
    assert_eq!(metric(&metrics, "lockstep_edge_held_requests", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_get_503_with_retry_after_after_max_hold() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |r| r.max_hold_secs = 1).await;
    edge.gate("main", GateState::Closed, None).await;
    let started = Instant::now();
    let passed = edge
        .request(Method::POST, "localhost", "/late")
        .body("x")
        .send();
    let cacheable = edge.get("/late2?cc=max-age%3D60").send();
    let (passed, cacheable) = tokio::join!(passed, cacheable);
    assert!(started.elapsed() >= Duration::from_secs(1));
    for (answer, cache) in [(passed.unwrap(), "PASS"), (cacheable.unwrap(), "MISS")] {
        let answer = Fetched::from(answer).await;
        assert_eq!((answer.status, answer.cache.as_str()), (503, cache));
        assert!(answer.headers.contains_key("retry-after"));
    }
    assert_eq!(origin.total().await, 0);
    let metrics = edge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "lockstep_edge_holds_total",
            &["outcome=\"timed_out\""]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_mode_error_forwards_at_once_and_returns_the_nodes_answer() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |r| r.closed_mode = ClosedMode::Error).await;
    let stored = edge.fetch("/stored?cc=max-age%3D60").await;
    origin.gate("closed").await;
    edge.gate("main", GateState::Closed, None).await;

    let started = Instant::now();
    let passed = Fetched::from(
        edge.request(Method::POST, "localhost", "/err")
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!((passed.status, passed.body.as_str()), (503, "closed\n"));
    assert_eq!(passed.headers["retry-after"], "2");
    let cacheable = edge.fetch("/err2?cc=max-age%3D60").await;
    assert_eq!((cacheable.status, cacheable.cache.as_str()), (503, "MISS"));
    assert_eq!(origin.count("/err").await, 1);
    assert_eq!(origin.count("/err2").await, 1);
    // Stored responses still answer without the origin.
    let hit = edge.fetch("/stored?cc=max-age%3D60").await;
    assert_eq!((hit.cache.as_str(), hit.body), ("HIT", stored.body));
    assert_eq!(origin.count("/stored").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_learns_closed_from_a_nodes_answer_until_a_check_finds_it_open() {
    let origin = Origin::start().await;
    let edge = TestEdge::start_with(EdgeOptions {
        health_interval: Duration::from_millis(1500),
        ..options()
    })
    .await;
    edge.put("main", &route(&[&origin])).await;
    edge.wait_nodes("main", NodeState::Open).await;
    let stored = edge.fetch("/u?cc=max-age%3D60").await;

    // Right after a health check, the node closes without the edge being told.
    eventually("a fresh health check", || async {
        edge.view("main").await.nodes[0]
            .checked_ms_ago
            .is_some_and(|ms| ms < 150)
    })
    .await;
    origin.gate("closed").await;
    let held = edge.get("/w").header("cookie", "session=1").send();
    let held = tokio::spawn(async move { Fetched::from(held.await.unwrap()).await });
    edge.wait_held("main", 1).await;
    let view = edge.view("main").await;
    assert_eq!(
        view.route.gate,
        GateState::Open,
        "the controller said nothing"
    );
    assert_eq!(view.state, EffectiveState::Closed);
    assert_eq!(view.nodes[0].state, NodeState::Closed);
    assert_eq!(origin.count("/w").await, 1, "the node answered closed once");

    let hit = edge.fetch("/u?cc=max-age%3D60").await;
    assert_eq!((hit.cache.as_str(), hit.body), ("HIT", stored.body));

    origin.gate("open").await;
    let released = held.await.unwrap();
    assert_eq!((released.status, released.cache.as_str()), (200, "PASS"));
    assert_eq!(origin.count("/w").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_open_at_a_newer_generation_opens_the_environment() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    edge.gate("main", GateState::Closed, None).await;
    assert_eq!(edge.view("main").await.state, EffectiveState::Closed);
    // The controller opens the node at generation 2, and its word to the edge is lost.
    origin.set(json!({"generation": 2})).await;
    eventually("the environment opens", || async {
        edge.view("main").await.state == EffectiveState::Open
    })
    .await;
    let answer = edge.fetch("/x").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("gen 2"));
}
