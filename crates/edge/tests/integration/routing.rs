//! Routing by host, the proxy's handling of headers, bodies and upgrades, and the admin API.

use std::time::Duration;

use bytes::Bytes;
use lockstep_edge::{EdgeOptions, EnvironmentRoute, EnvironmentView, GateState, NodeState};
use lockstep_proto::Generation;
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Fetched, Origin, TestEdge, client_as, eventually, options, route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_picks_the_environment_and_unknown_hosts_get_404() {
    let production = Origin::start().await;
    let staging = Origin::start().await;
    let edge = TestEdge::start().await;
    edge.put("main", &route(&[&production])).await;
    edge.put(
        "staging",
        &EnvironmentRoute::new(vec!["staging.localhost".into()], vec![staging.url()]),
    )
    .await;
    edge.wait_nodes("main", NodeState::Open).await;
    edge.wait_nodes("staging", NodeState::Open).await;

    let path = "/page?cc=max-age%3D60";
    let main = Fetched::from(
        edge.request(Method::GET, "localhost:8080", path)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(main.status, 200);
    assert!(main.body.contains(&format!("port {}", production.port)));
    assert_eq!(main.cache, "MISS");

    // The same path on staging is staging's own, never production's stored response.
    let on_staging = Fetched::from(
        edge.request(Method::GET, "STAGING.LocalHost", path)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(on_staging.cache, "MISS");
    assert!(on_staging.body.contains(&format!("port {}", staging.port)));
    let again = edge.fetch(path).await;
    assert_eq!((again.cache.as_str(), again.body), ("HIT", main.body));

    let unknown = Fetched::from(
        edge.request(Method::GET, "nope.localhost", "/")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("nope.localhost"), "{}", unknown.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let response = edge
        .request(
            Method::GET,
            "localhost",
            "/hop?header=Connection:x-origin-secret&header=X-Origin-Secret:1&header=Keep-Alive:timeout%3D5",
        )
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("proxy-authorization", "Basic eA==")
        .header("te", "trailers")
        .send()
        .await
        .unwrap();
    let answer = Fetched::from(response).await;
    assert_eq!(answer.status, 200);
    for gone in [
        "x-origin-secret",
        "keep-alive",
        "x-lockstep-gate",
        "x-lockstep-generation",
    ] {
        assert!(
            !answer.headers.contains_key(gone),
            "{gone} reached the client"
        );
    }
    let log = origin.log().await;
    let headers = &log[0]["headers"];
    for gone in ["x-secret", "proxy-authorization", "te"] {
        assert!(headers.get(gone).is_none(), "{gone} reached the origin");
    }
    assert_eq!(headers["host"], "localhost");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-host"], "localhost");
    assert_eq!(headers["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_naming_another_host_is_refused_and_clients_say_nothing_of_where_they_are() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    // Routed by the target's host, the request would reach the app saying another one; cached
    // under the first, the app's answer about the second would poison it for every visitor.
    let mut stream = tokio::net::TcpStream::connect(edge.public).await.unwrap();
    stream
        .write_all(
            b"GET http://localhost/p HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(origin.log().await.is_empty(), "the origin was asked");

    let response = edge
        .get("/p")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-for", "10.6.6.6")
        .header("forwarded", "for=10.6.6.6;host=evil.example;proto=https")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let log = origin.log().await;
    let headers = &log[0]["headers"];
    assert_eq!(headers["x-forwarded-host"], "localhost");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert!(headers.get("forwarded").is_none(), "{headers}");

    // Named in the target alone, or twice, the host reaches the app as the edge routed it, never
    // as the node's address or the second value.
    for (request, may_refuse) in [
        (
            &b"GET http://localhost/target-only HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
            false,
        ),
        (
            b"GET /twice HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            true,
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(edge.public).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        if may_refuse && answer.starts_with("HTTP/1.1 400") {
            continue;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let log = origin.log().await;
        let headers = &log.last().unwrap()["headers"];
        assert_eq!(headers["host"], "localhost", "{headers}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_streamed_both_ways() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;

    // Response: the first half arrives while the origin still holds the second.
    let mut response = edge
        .get("/stream?size=200000&wait=stream")
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the first chunk arrives before the origin finishes")
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    origin.release("stream").await;
    let mut total = first.len();
    while let Some(chunk) = response.chunk().await.unwrap() {
        total += chunk.len();
    }
    assert_eq!(total, 200_000);

    // Request: the origin receives the first part before the client sends the rest.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), receiver))
    });
    let upload = tokio::spawn(
        edge.request(Method::POST, "localhost", "/upload")
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    sender.send(Bytes::from(vec![b'a'; 65_536])).await.unwrap();
    eventually("the origin receives the first part", || async {
        origin
            .log()
            .await
            .iter()
            .any(|e| e["path"] == "/upload" && e["received"].as_u64() >= Some(65_536))
    })
    .await;
    sender.send(Bytes::from(vec![b'b'; 1 << 20])).await.unwrap();
    drop(sender);
    let answer = Fetched::from(upload.await.unwrap().unwrap()).await;
    assert_eq!(answer.cache, "PASS");
    assert!(
        answer
            .body
            .starts_with(&format!("received {}", 65_536 + (1 << 20))),
        "{}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(edge.public).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("x-lockstep-cache: pass"), "{head}");
    stream.write_all(b"hello through the edge").await.unwrap();
    let mut echo = [0u8; 22];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
        .await
        .expect("the echo comes back")
        .unwrap();
    assert_eq!(&echo, b"hello through the edge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_nodes_are_kept_alive() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    for _ in 0..20 {
        let answer = Fetched::from(
            edge.request(Method::POST, "localhost", "/keep")
                .body("x")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let mut connections: Vec<u64> = origin
        .log()
        .await
        .iter()
        .map(|e| e["conn"].as_u64().unwrap())
        .collect();
    connections.sort_unstable();
    connections.dedup();
    assert!(connections.len() <= 3, "20 requests used {connections:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_the_controller_alone_and_checks_routes() {
    let origin = Origin::start().await;
    let edge = TestEdge::start().await;
    for path in ["/v1/environments", "/metrics"] {
        for peer in [
            lockstep_transport::Peer::Node("n1".into()),
            lockstep_transport::Peer::Edge("other".into()),
        ] {
            let refused = client_as(peer.clone())
                .get(edge.admin_url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status(), 403, "{path} as {peer}");
        }
        let plain = edge
            .http
            .get(edge.admin_url(path).replacen("https", "http", 1))
            .send()
            .await;
        assert!(plain.is_err(), "{path} answered plain HTTP");
    }
    let http = &edge.admin_http;
    let put = |env: &str, route: &EnvironmentRoute| {
        http.put(edge.admin_url(&format!("/v1/environments/{env}")))
            .json(route)
            .send()
    };

    let mut bad = route(&[&origin]);
    bad.cache.cookies = vec!["/(/".into()];
    let refused = put("main", &bad).await.unwrap();
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("/(/"), "{error}");

    assert!(
        put("main", &route(&[&origin]))
            .await
            .unwrap()
            .status()
            .is_success()
    );
    // Idempotent.
    assert!(
        put("main", &route(&[&origin]))
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let taken = put("other", &route(&[&origin])).await.unwrap();
    assert_eq!(taken.status(), 409);

    let gate = http
        .post(edge.admin_url("/v1/environments/nope/gate"))
        .json(&serde_json::json!({"state": "closed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(gate.status(), 404);

    edge.wait_nodes("main", NodeState::Open).await;
    let all: Vec<EnvironmentView> = http
        .get(edge.admin_url("/v1/environments"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name, "main");
    assert_eq!(all[0].nodes[0].url, origin.url());
    assert_eq!(all[0].nodes[0].generation, Some(Generation(1)));

    let deleted = http
        .delete(edge.admin_url("/v1/environments/main"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(edge.fetch("/").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_after_shutdown_and_held_requests_are_answered() {
    let origin = Origin::start().await;
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = public.local_addr().unwrap();
    let (_identity_dir, identity) = crate::support::edge_identity();
    let edge = lockstep_edge::Edge::with_identity(crate::support::options(), identity).unwrap();
    edge.put_environment("main", route(&[&origin])).unwrap();
    edge.set_gate(
        "main",
        lockstep_edge::GateCommand {
            state: lockstep_edge::GateState::Closed,
            generation: None,
        },
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(edge.clone().serve(public, Some(admin), async move {
        let _ = stopped.await;
    }));
    let held = tokio::spawn(
        reqwest::Client::new()
            .post(format!("http://{address}/held"))
            .header("host", "localhost")
            .body("x")
            .send(),
    );
    eventually("the request is held", || async {
        edge.environment("main").unwrap().held == 1
    })
    .await;
    stop.send(()).unwrap();
    let answer = held.await.unwrap().unwrap();
    assert_eq!(answer.status(), 503);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_edge_serves_the_routes_and_gates_it_was_given() {
    let origin = Origin::start().await;
    let state = tempfile::tempdir().unwrap();
    let saved = EdgeOptions {
        saved_routes: Some(state.path().join("routes.json")),
        ..options()
    };
    let first = TestEdge::start_with(saved.clone()).await;
    first.put("main", &route(&[&origin])).await;
    first
        .put(
            "staging",
            &EnvironmentRoute::new(vec!["staging.localhost".into()], vec![origin.url()]),
        )
        .await;
    first.gate("staging", GateState::Closed, None).await;
    first.wait_nodes("main", NodeState::Open).await;
    drop(first);

    let second = TestEdge::start_with(saved).await;
    let main = second.view("main").await;
    assert_eq!(main.route.hosts, ["localhost"]);
    assert_eq!(main.route.nodes, [origin.url()]);
    assert_eq!(second.view("staging").await.route.gate, GateState::Closed);
    second.wait_nodes("main", NodeState::Open).await;
    let page = second.fetch("/after-restart").await;
    assert_eq!(page.status, 200, "{}", page.body);
}
