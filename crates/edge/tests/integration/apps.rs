//! A project with several apps: each upstream route's requests reach its own app's routers
//! only, whatever the other app's routers say.

use std::collections::BTreeMap;

use lockstep_edge::{EnvironmentRoute, HostRoute, NodeState, RouteAction};
use reqwest::Method;

use crate::support::{Fetched, Origin, TestEdge, eventually};

fn of_app(path: &str, app: &str) -> HostRoute {
    HostRoute {
        host: "localhost".into(),
        path: path.into(),
        action: RouteAction::Upstream {
            app: Some(app.into()),
        },
    }
}

/// `{default}/` to app `app`, `{default}/api` to app `api`, and a host no route names.
fn two_apps(app: &Origin, api: &Origin) -> EnvironmentRoute {
    let mut route = EnvironmentRoute::new(
        vec!["localhost".into(), "plain.localhost".into()],
        vec![app.url()],
    );
    route.app_nodes = BTreeMap::from([
        ("app".to_owned(), vec![app.url()]),
        ("api".to_owned(), vec![api.url()]),
    ]);
    route.routes = vec![of_app("/", "app"), of_app("/api", "api")];
    route
}

async fn ask(edge: &TestEdge, method: Method, host: &str, path: &str) -> Fetched {
    Fetched::from(edge.request(method, host, path).send().await.unwrap()).await
}

/// The state of the router at `url`, as the edge's view shows it.
async fn router_state(edge: &TestEdge, url: &str) -> NodeState {
    let view = edge.view("main").await;
    view.nodes.iter().find(|n| n.url == url).unwrap().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_reaches_its_own_apps_routers_only() {
    let app = Origin::start().await;
    let api = Origin::start().await;
    let edge = TestEdge::start().await;
    edge.put("main", &two_apps(&app, &api)).await;
    edge.wait_nodes("main", NodeState::Open).await;
    let routers: Vec<(String, Option<String>)> = edge
        .view("main")
        .await
        .nodes
        .into_iter()
        .map(|n| (n.url, n.app))
        .collect();
    assert_eq!(
        routers,
        [
            (app.url(), Some("app".into())),
            (api.url(), Some("api".into()))
        ]
    );

    for _ in 0..3 {
        for (method, path, port) in [
            (Method::GET, "/", app.port),
            (Method::GET, "/apix", app.port),
            (Method::GET, "/api/x", api.port),
            (Method::POST, "/api", api.port),
        ] {
            let answer = ask(&edge, method, "localhost", path).await;
            assert_eq!(answer.status, 200, "{path}: {}", answer.body);
            assert_eq!(answer.headers["x-origin-port"], port.to_string(), "{path}");
        }
    }
    // A host no route names goes to the first app.
    let plain = ask(&edge, Method::GET, "plain.localhost", "/api/x").await;
    assert_eq!(plain.headers["x-origin-port"], app.port.to_string());
    assert_eq!(app.count("/api/x").await, 1);
    assert_eq!(api.count("/api/x").await, 3);
    assert_eq!(app.count("/api").await, 0);
    assert_eq!(api.count("/").await + api.count("/apix").await, 0);

    // The api's router down: its requests fail as a down environment's do, never reaching the
    // app's router, while the app's are served.
    api.mode("refuse").await;
    eventually("api's router seen down", || async {
        router_state(&edge, &api.url()).await == NodeState::Down
    })
    .await;
    app.reset().await;
    for method in [Method::GET, Method::POST] {
        let failed = ask(&edge, method, "localhost", "/api/down").await;
        assert_eq!(failed.status, 502, "{}", failed.body);
    }
    assert_eq!(ask(&edge, Method::GET, "localhost", "/").await.status, 200);
    assert_eq!(app.count("/api/down").await, 0);
    assert_eq!(app.count("/").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_requests_wait_for_its_routers_and_not_for_anothers() {
    let app = Origin::start().await;
    let api = Origin::start().await;
    let edge = TestEdge::start().await;
    edge.put("main", &two_apps(&app, &api)).await;
    edge.wait_nodes("main", NodeState::Open).await;

    api.gate("closed").await;
    eventually("api's router seen closed", || async {
        router_state(&edge, &api.url()).await == NodeState::Closed
    })
    .await;
    let held = tokio::spawn(
        edge.request(Method::POST, "localhost", "/api/held")
            .body("x")
            .send(),
    );
    edge.wait_held("main", 1).await;
    // The app's requests neither wait behind the api's nor go to its closed router.
    let served = ask(&edge, Method::POST, "localhost", "/app-meanwhile").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.headers["x-origin-port"], app.port.to_string());
    assert_eq!(edge.view("main").await.held, 1);
    assert_eq!(api.count("/api/held").await, 0);

    api.gate("open").await;
    let released = Fetched::from(held.await.unwrap().unwrap()).await;
    assert_eq!(released.status, 200, "{}", released.body);
    assert_eq!(released.headers["x-origin-port"], api.port.to_string());
    assert_eq!(app.count("/api/held").await, 0);
}
