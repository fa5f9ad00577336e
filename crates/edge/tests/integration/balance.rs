//! Load balancing over open nodes, health checks, retries on another node, metrics.

use std::time::Duration;

use lockstep_edge::{EdgeOptions, NodeState};
use reqwest::Method;

use crate::support::{Fetched, Origin, TestEdge, eventually, metric, options, route};

async fn post(edge: &TestEdge, path: &str) -> Fetched {
    Fetched::from(
        edge.request(Method::POST, "localhost", path)
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_balanced_over_open_nodes_only() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let c = Origin::start().await;
    let edge = TestEdge::with(&[&a, &b, &c], |_| {}).await;
    for _ in 0..9 {
        assert_eq!(post(&edge, "/lb").await.status, 200);
    }
    for origin in [&a, &b, &c] {
        assert_eq!(origin.count("/lb").await, 3);
    }

    // A closed node, found by the health checks, gets nothing.
    c.gate("closed").await;
    eventually("c seen closed", || async {
        edge.view("main").await.nodes[2].state == NodeState::Closed
    })
    .await;
    // A refusing node, found by the health checks, gets nothing either.
    b.mode("refuse").await;
    eventually("b seen down", || async {
        edge.view("main").await.nodes[1].state == NodeState::Down
    })
    .await;
    for origin in [&a, &b, &c] {
        origin.reset().await;
    }
    for _ in 0..6 {
        assert_eq!(post(&edge, "/lb").await.status, 200);
    }
    assert_eq!(a.count("/lb").await, 6);
    assert_eq!(c.total().await, 0);

    // Back in rotation once the checks find them open.
    b.mode("healthy").await;
    c.gate("open").await;
    edge.wait_nodes("main", NodeState::Open).await;
    for _ in 0..9 {
        assert_eq!(post(&edge, "/lb2").await.status, 200);
    }
    for origin in [&a, &b, &c] {
        assert_eq!(origin.count("/lb2").await, 3);
    }
}

/// An edge whose health checks will not notice anything during the test.
async fn edge_without_checks(origins: &[&Origin]) -> TestEdge {
    let edge = TestEdge::start_with(EdgeOptions {
        health_interval: Duration::from_secs(60),
        ..options()
    })
    .await;
    edge.put("main", &route(origins)).await;
    edge.wait_nodes("main", NodeState::Open).await;
    edge
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_that_cannot_connect_is_retried_on_another_node() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let edge = edge_without_checks(&[&a, &b]).await;
    a.mode("refuse").await;
    for _ in 0..4 {
        let answer = Fetched::from(
            edge.get("/retry")
                .header("cookie", "session=1")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((answer.status, answer.cache.as_str()), (200, "PASS"));
    }
    assert_eq!(b.count("/retry").await, 4);
    let view = edge.view("main").await;
    assert_eq!(view.nodes[0].state, NodeState::Down);
    assert!(view.nodes[0].last_error.is_some());
    let metrics = edge.metrics().await;
    assert!(
        metric(
            &metrics,
            "lockstep_edge_origin_errors_total",
            &[&format!("node=\"{}\"", a.url())]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_idempotent_request_is_not_retried() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let edge = edge_without_checks(&[&a, &b]).await;
    a.mode("refuse").await;
    let mut statuses = vec![
        post(&edge, "/once").await.status,
        post(&edge, "/once").await.status,
    ];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 502]);
    assert_eq!(b.count("/once").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_cache_result() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    edge.fetch("/m?cc=max-age%3D60").await;
    edge.fetch("/m?cc=max-age%3D60").await;
    post(&edge, "/m").await;
    let metrics = edge.metrics().await;
    for (result, count) in [("MISS", 1.0), ("HIT", 1.0), ("PASS", 1.0)] {
        assert_eq!(
            metric(
                &metrics,
                "lockstep_edge_requests_total",
                &["environment=\"main\"", &format!("cache=\"{result}\"")]
            ),
            count,
            "{metrics}"
        );
    }
}

/// A plain HTTP origin, with no node router in front: its gate path is a 404.
async fn plain_origin() -> String {
    let app = axum::Router::new().route(
        "/plain",
        axum::routing::get(|| async { ([("cache-control", "max-age=60")], "plain") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_origin_that_knows_no_gate_counts_as_open() {
    let url = plain_origin().await;
    let edge = TestEdge::start().await;
    edge.put(
        "main",
        &lockstep_edge::EnvironmentRoute::new(vec!["localhost".into()], vec![url]),
    )
    .await;
    edge.wait_nodes("main", NodeState::Open).await;
    let view = edge.view("main").await;
    assert_eq!(view.state, lockstep_edge::EffectiveState::Open);
    assert_eq!(view.nodes[0].generation, None);
    assert_eq!(view.nodes[0].last_error, None);

    let first = edge.fetch("/plain").await;
    assert_eq!((first.status, first.body.as_str()), (200, "plain"));
    assert_eq!(edge.fetch("/plain").await.cache, "HIT");
}
