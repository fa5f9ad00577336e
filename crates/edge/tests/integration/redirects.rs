//! An environment's routes (SPEC.md section 6): redirect routes answered by the edge itself with
//! their code and `Location`, upstream routes to the nodes, the longest path prefix of a host.

use std::time::Duration;

use lockstep_edge::{EnvironmentRoute, GateState, HostRoute, NodeState, RouteAction};
use reqwest::Method;
use serde_json::Value;

use crate::support::{Fetched, Origin, TestEdge, metric};

fn upstream(host: &str, path: &str) -> HostRoute {
    HostRoute {
        host: host.into(),
        path: path.into(),
        action: RouteAction::Upstream { app: None },
    }
}

fn redirect(host: &str, path: &str, to: &str, code: u16) -> HostRoute {
    HostRoute {
        host: host.into(),
        path: path.into(),
        action: RouteAction::Redirect {
            to: to.into(),
            code,
        },
    }
}

/// A client that shows redirects instead of following them.
fn no_follow() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn ask(edge: &TestEdge, method: Method, host: &str, path: &str) -> Fetched {
    let response = no_follow()
        .request(method, format!("http://{}{path}", edge.public))
        .header(reqwest::header::HOST, host)
        .send()
        .await
        .unwrap();
    Fetched::from(response).await
}

fn location(answer: &Fetched) -> &str {
    answer
        .headers
        .get("location")
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}

/// The Next.js template's routes: the app at `www.{default}`, `{default}` redirecting to it.
fn www_site(origin: &Origin) -> EnvironmentRoute {
    let mut route = EnvironmentRoute::new(vec!["t-nextjs.localhost".into()], vec![origin.url()]);
    route.routes = vec![
        upstream("www.t-nextjs.localhost", "/"),
        redirect(
            "t-nextjs.localhost",
            "/",
            "https://www.t-nextjs.localhost/",
            301,
        ),
    ];
    route
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_route_answers_at_the_edge_without_the_nodes_even_while_closed() {
    let origin = Origin::start().await;
    let edge = TestEdge::start().await;
    let view = edge.put("t-nextjs", &www_site(&origin)).await;
    assert_eq!(
        view.route.hosts,
        ["t-nextjs.localhost", "www.t-nextjs.localhost"]
    );
    edge.wait_nodes("t-nextjs", NodeState::Open).await;

    let moved = ask(&edge, Method::GET, "t-nextjs.localhost", "/about?x=1").await;
    assert_eq!(moved.status, 301);
    assert_eq!(location(&moved), "http://www.t-nextjs.localhost/about?x=1");
    // A client that reached the edge on another port is sent back to it.
    let moved = ask(&edge, Method::GET, "T-Nextjs.localhost:8080", "/").await;
    assert_eq!(location(&moved), "http://www.t-nextjs.localhost:8080/");
    let head = ask(&edge, Method::HEAD, "t-nextjs.localhost", "/a/b").await;
    assert_eq!(
        (head.status, location(&head)),
        (301, "http://www.t-nextjs.localhost/a/b")
    );
    // The client's path never moves the location off the target's host.
    let elsewhere = ask(&edge, Method::GET, "t-nextjs.localhost", "//evil.example/x").await;
    assert_eq!(
        location(&elsewhere),
        "http://www.t-nextjs.localhost/evil.example/x"
    );
    assert_eq!(origin.total().await, 0, "the origin was asked");

    // The upstream route's host is served from the nodes.
    let served = ask(&edge, Method::GET, "www.t-nextjs.localhost", "/about").await;
    assert_eq!(served.status, 200);
    assert!(served.body.starts_with("/about #1"), "{}", served.body);
    assert_eq!(
        origin.log().await[0]["headers"]["host"],
        "www.t-nextjs.localhost"
    );

    // Closed: the redirect needs no node, so it neither waits nor asks one.
    edge.gate("t-nextjs", GateState::Closed, None).await;
    origin.gate("closed").await;
    origin.reset().await;
    let moved = ask(&edge, Method::POST, "t-nextjs.localhost", "/form").await;
    assert_eq!(
        (moved.status, location(&moved)),
        (301, "http://www.t-nextjs.localhost/form")
    );
    assert_eq!(origin.total().await, 0, "the origin was asked while closed");
    assert_eq!(edge.view("t-nextjs").await.held, 0);

    let metrics = edge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "lockstep_edge_redirects_total",
            &["environment=\"t-nextjs\"", "code=\"301\""]
        ),
        5.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_prefix_of_the_host_wins_and_unmatched_paths_and_hosts_get_404() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |route| {
        route.routes = vec![
            upstream("localhost", "/"),
            redirect("localhost", "/old/", "https://localhost/new/", 302),
            upstream("api.localhost", "/v1/"),
            redirect("docs.localhost", "/", "https://docs.example.com/guide", 308),
        ];
    })
    .await;

    let moved = ask(&edge, Method::GET, "localhost", "/old/page?q=a%20b").await;
    assert_eq!(
        (moved.status, location(&moved)),
        (302, "http://localhost/new/page?q=a%20b")
    );
    let served = ask(&edge, Method::GET, "localhost", "/older").await;
    assert_eq!(served.status, 200);
    assert!(served.body.starts_with("/older #1"), "{}", served.body);
    let api = ask(&edge, Method::GET, "api.localhost", "/v1/items").await;
    assert_eq!(api.status, 200);
    assert!(api.body.starts_with("/v1/items #1"), "{}", api.body);
    // A target this edge does not serve keeps its scheme.
    let docs = ask(&edge, Method::GET, "docs.localhost", "/x").await;
    assert_eq!(
        (docs.status, location(&docs)),
        (308, "https://docs.example.com/guide/x")
    );
    origin.reset().await;

    let no_route = ask(&edge, Method::GET, "api.localhost", "/v2/items").await;
    assert_eq!(no_route.status, 404);
    assert!(
        no_route.body.contains("api.localhost/v2/items"),
        "{}",
        no_route.body
    );
    let unknown = ask(&edge, Method::GET, "www.localhost", "/").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(origin.total().await, 0, "the origin was asked");

    let metrics = edge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "lockstep_edge_no_route_requests_total",
            &["environment=\"main\""]
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, "lockstep_edge_unknown_host_requests_total", &[]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_routes_are_refused_and_the_previous_route_stays() {
    let origin = Origin::start().await;
    let edge = TestEdge::start().await;
    edge.put("t-nextjs", &www_site(&origin)).await;
    let put = |route: &EnvironmentRoute| {
        edge.admin_http
            .put(edge.admin_url("/v1/environments/t-nextjs"))
            .json(route)
            .send()
    };

    let hostile = |routes: Vec<HostRoute>| {
        let mut route = www_site(&origin);
        route.routes = routes;
        route
    };
    let cases = [
        (
            hostile(vec![redirect(
                "t-nextjs.localhost",
                "/",
                "https://www.t-nextjs.localhost/\r\nSet-Cookie: session=stolen",
                301,
            )]),
            "control character",
        ),
        (
            hostile(vec![redirect(
                "t-nextjs.localhost",
                "/",
                "https://evil.example\"/",
                301,
            )]),
            "host name",
        ),
        (
            hostile(vec![upstream("t-nextjs.localhost", "/../admin/")]),
            "`..`",
        ),
        (
            hostile(vec![upstream("t-nextjs.localhost", "admin")]),
            "`/`",
        ),
        (
            hostile(vec![upstream("evil.example/x", "/")]),
            "not a host name",
        ),
        (
            hostile(
                (0..257)
                    .map(|i| upstream(&format!("h{i}.localhost"), "/"))
                    .collect(),
            ),
            "at most 256 routes",
        ),
        (
            hostile(vec![redirect(
                "t-nextjs.localhost",
                "/",
                "https://www.t-nextjs.localhost/",
                200,
            )]),
            "not a redirect",
        ),
    ];
    for (route, reason) in cases {
        let refused = put(&route).await.unwrap();
        assert_eq!(refused.status(), 400);
        let error: Value = refused.json().await.unwrap();
        let error = error["error"].as_str().unwrap();
        assert!(error.contains(reason), "{reason}: {error}");
    }

    // Nothing of them was taken: the site redirects as before.
    let kept = edge.view("t-nextjs").await.route;
    assert_eq!(kept.routes, www_site(&origin).routes);
    assert_eq!(kept.hosts, ["t-nextjs.localhost", "www.t-nextjs.localhost"]);
    let moved = ask(&edge, Method::GET, "t-nextjs.localhost", "/").await;
    assert_eq!(location(&moved), "http://www.t-nextjs.localhost/");
    assert_eq!(
        ask(&edge, Method::GET, "h1.localhost", "/").await.status,
        404
    );
}
