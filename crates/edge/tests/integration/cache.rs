//! The cache: what is stored, for how long, under which key, and what stands in when the
//! origin fails.

use std::time::Duration;

use lockstep_edge::{EdgeOptions, EnvironmentRoute, GateState, NodeState};
use lockstep_proto::Generation;
use reqwest::Method;
use serde_json::json;

use crate::support::{
    Fetched, Origin, TestEdge, eventually, let_time_pass, metric, options, route,
};

const PAST_ONE_SECOND: Duration = Duration::from_millis(1100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_is_stored_and_answered_with_hit_and_age() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let first = edge.fetch("/a?cc=max-age%3D60").await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    let second = edge.fetch("/a?cc=max-age%3D60").await;
    assert_eq!(second.cache, "HIT");
    assert_eq!(second.body, first.body);
    assert!(second.age.is_some());
    let_time_pass(PAST_ONE_SECOND).await;
    let third = edge.fetch("/a?cc=max-age%3D60").await;
    assert_eq!(third.cache, "HIT");
    assert!(third.age >= Some(1), "{:?}", third.age);
    assert_eq!(origin.count("/a").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_get_and_head_are_cached() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        for _ in 0..2 {
            let answer = Fetched::from(
                edge.request(method.clone(), "localhost", "/b?cc=max-age%3D60")
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(answer.cache, "PASS", "{method}");
        }
    }
    assert_eq!(origin.count("/b").await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_authorization_passes_and_is_not_stored() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let path = "/c?cc=public,max-age%3D60";
    for _ in 0..2 {
        let answer = Fetched::from(
            edge.get(path)
                .header("authorization", "Bearer user")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(answer.cache, "PASS");
    }
    assert_eq!(edge.fetch(path).await.cache, "MISS");
    assert_eq!(edge.fetch(path).await.cache, "HIT");
    // A stored response does not answer an authorised request either.
    let authorised = Fetched::from(
        edge.get(path)
            .header("authorization", "Bearer user")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(authorised.cache, "PASS");
    assert_eq!(origin.count("/c").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_rules_pass_ignore_or_key_on_cookies() {
    let origin = Origin::start().await;
    let edge = TestEdge::start().await;
    for (env, cookies) in [
        ("star", vec!["*"]),
        ("none", vec![]),
        ("named", vec!["SESS"]),
        ("pattern", vec!["/^SS?ESS/"]),
    ] {
        let mut r = EnvironmentRoute::new(vec![format!("{env}.localhost")], vec![origin.url()]);
        r.cache.cookies = cookies.into_iter().map(String::from).collect();
        edge.put(env, &r).await;
        edge.wait_nodes(env, NodeState::Open).await;
    }
    let get = |env: &str, cookie: Option<&str>| {
        let mut request = edge.request(
            Method::GET,
            &format!("{env}.localhost"),
            &format!("/{env}?cc=max-age%3D60"),
        );
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        async move { Fetched::from(request.send().await.unwrap()).await.cache }
    };

    // `*`: any cookie passes, even when a response is stored.
    assert_eq!(get("star", None).await, "MISS");
    assert_eq!(get("star", Some("a=1")).await, "PASS");
    assert_eq!(get("star", Some("a=1")).await, "PASS");
    assert_eq!(get("star", None).await, "HIT");

    // `[]`: cookies are ignored.
    assert_eq!(get("none", Some("a=1")).await, "MISS");
    assert_eq!(get("none", Some("a=2")).await, "HIT");
    assert_eq!(get("none", None).await, "HIT");

    // Names: that cookie's value joins the key, others are ignored.
    assert_eq!(get("named", Some("SESS=x")).await, "MISS");
    assert_eq!(get("named", Some("SESS=x; _ga=1")).await, "HIT");
    assert_eq!(get("named", Some("SESS=y")).await, "MISS");
    assert_eq!(get("named", Some("_ga=1")).await, "MISS");
    assert_eq!(get("named", None).await, "HIT");

    // /regex/: cookies whose names match join the key.
    assert_eq!(get("pattern", Some("SSESSab=1")).await, "MISS");
    assert_eq!(get("pattern", Some("SSESSab=2")).await, "MISS");
    assert_eq!(get("pattern", Some("SESScd=1; other=3")).await, "MISS");
    assert_eq!(get("pattern", Some("SSESSab=1; other=4")).await, "HIT");
    assert_eq!(get("pattern", Some("other=5")).await, "MISS");
    assert_eq!(get("pattern", None).await, "HIT");

    assert_eq!(origin.count("/star").await, 3);
    assert_eq!(origin.count("/none").await, 1);
    assert_eq!(origin.count("/named").await, 3);
    assert_eq!(origin.count("/pattern").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_private_no_store_and_no_cache_are_never_stored() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    for (path, query) in [
        ("/set-cookie", "set_cookie=s%3D1&cc=public,max-age%3D60"),
        ("/private", "cc=private,max-age%3D60"),
        ("/no-store", "cc=no-store"),
        ("/no-cache", "cc=no-cache,max-age%3D60"),
    ] {
        for _ in 0..2 {
            let answer = edge.fetch(&format!("{path}?{query}")).await;
            assert_eq!(
                (answer.status, answer.cache.as_str()),
                (200, "MISS"),
                "{path}"
            );
        }
        assert_eq!(origin.count(path).await, 2, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_never_replaces_a_stored_response() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |r| r.swr_secs = 0).await;
    let path = "/e?cc=max-age%3D1";
    let stored = edge.fetch(path).await;
    assert_eq!(stored.cache, "MISS");
    let_time_pass(PAST_ONE_SECOND).await;

    origin.mode("500").await;
    for _ in 0..2 {
        let answer = edge.fetch(path).await;
        assert_eq!((answer.status, answer.cache.as_str()), (200, "STALE"));
        assert_eq!(answer.body, stored.body);
        assert!(answer.age >= Some(1));
    }
    assert_eq!(
        origin.count("/e").await,
        3,
        "the origin was asked, and failed"
    );

    // Without a stored response, the 5xx goes through.
    let fresh_key = edge.fetch("/e2?cc=max-age%3D60").await;
    assert_eq!((fresh_key.status, fresh_key.cache.as_str()), (500, "MISS"));

    origin.mode("healthy").await;
    let renewed = edge.fetch(path).await;
    assert_eq!(renewed.cache, "MISS");
    assert!(renewed.body.contains("#4"), "{}", renewed.body);
    assert_eq!(edge.fetch(path).await.cache, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_serves_stale_when_the_origin_refuses_or_times_out() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |r| r.swr_secs = 0).await;
    let stored = edge.fetch("/f?cc=max-age%3D1").await;
    let_time_pass(PAST_ONE_SECOND).await;

    origin.mode("refuse").await;
    let refused = edge.fetch("/f?cc=max-age%3D1").await;
    assert_eq!((refused.status, refused.cache.as_str()), (200, "STALE"));
    assert_eq!(refused.body, stored.body);
    let nothing_stored = edge.fetch("/f2?cc=max-age%3D60").await;
    assert_eq!(
        (nothing_stored.status, nothing_stored.cache.as_str()),
        (502, "MISS")
    );

    // The origin listens again but answers after the edge's 1 s origin timeout.
    origin.set(json!({"mode": "slow", "delay_ms": 2500})).await;
    edge.wait_nodes("main", NodeState::Open).await;
    let slow = edge.fetch("/f?cc=max-age%3D1").await;
    assert_eq!((slow.status, slow.cache.as_str()), (200, "STALE"));
    assert_eq!(slow.body, stored.body);
    let metrics = edge.metrics().await;
    assert!(
        metric(
            &metrics,
            "lockstep_edge_origin_errors_total",
            &["kind=\"connect\""]
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "lockstep_edge_origin_errors_total",
            &["kind=\"timeout\""]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_grace_the_error_goes_through() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |r| {
        r.swr_secs = 0;
        r.grace_secs = 1;
    })
    .await;
    edge.fetch("/g?cc=max-age%3D1").await;
    let_time_pass(Duration::from_millis(2200)).await;
    origin.mode("500").await;
    let answer = edge.fetch("/g?cc=max-age%3D1").await;
    assert_eq!((answer.status, answer.cache.as_str()), (500, "MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let path = "/h?cc=max-age%3D1";
    let stored = edge.fetch(path).await;
    let_time_pass(PAST_ONE_SECOND).await;

    // The refresh takes a while; every request meanwhile gets the stale response at once.
    origin.set(json!({"mode": "slow", "delay_ms": 400})).await;
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let request = edge.get(path).send();
            tokio::spawn(async move { Fetched::from(request.await.unwrap()).await })
        })
        .collect();
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(answer.cache, "STALE");
        assert_eq!(answer.body, stored.body);
    }
    eventually("the background refresh is stored", || async {
        let answer = edge.fetch(path).await;
        answer.cache == "HIT" && answer.body.contains("#2")
    })
    .await;
    assert_eq!(origin.count("/h").await, 2);

    // A failed refresh keeps the stored response.
    origin.mode("500").await;
    let_time_pass(PAST_ONE_SECOND).await;
    assert_eq!(edge.fetch(path).await.cache, "STALE");
    eventually("the failed refresh", || async {
        origin.count("/h").await >= 3
    })
    .await;
    let after = edge.fetch(path).await;
    assert_eq!(after.cache, "STALE");
    assert!(after.body.contains("#2"), "{}", after.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_cold_key_make_one_origin_request() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let path = "/i?cc=max-age%3D60&wait=i";
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let request = edge.get(path).send();
            tokio::spawn(async move { Fetched::from(request.await.unwrap()).await })
        })
        .collect();
    eventually("nine requests wait for the first one's fetch", || async {
        let metrics = edge.metrics().await;
        metric(&metrics, "lockstep_edge_coalesced_requests_total", &[]) >= 9.0
    })
    .await;
    assert_eq!(origin.count("/i").await, 1);
    origin.release("i").await;
    let mut results = Vec::new();
    let mut bodies = Vec::new();
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200);
        bodies.push(answer.body);
        results.push(answer.cache);
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(
        results.iter().filter(|r| *r == "MISS").count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| *r == "HIT").count(),
        9,
        "{results:?}"
    );
    assert_eq!(origin.count("/i").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_from_a_stored_get() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let get = edge.fetch("/j?cc=max-age%3D60").await;
    let head = Fetched::from(
        edge.request(Method::HEAD, "localhost", "/j?cc=max-age%3D60")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((head.status, head.cache.as_str()), (200, "HIT"));
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers["content-length"].to_str().unwrap(),
        get.body.len().to_string()
    );
    assert_eq!(origin.count("/j").await, 1);

    // A HEAD on a cold key fills the cache with a GET.
    let cold = Fetched::from(
        edge.request(Method::HEAD, "localhost", "/k?cc=max-age%3D60")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(cold.cache, "MISS");
    assert!(cold.body.is_empty());
    let after = edge.fetch("/k?cc=max-age%3D60").await;
    assert_eq!(after.cache, "HIT");
    assert!(after.body.starts_with("/k #1"), "{}", after.body);
    let log = origin.log().await;
    let k: Vec<_> = log.iter().filter(|e| e["path"] == "/k").collect();
    assert_eq!(k.len(), 1);
    assert_eq!(k[0]["method"], "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_selects_the_stored_variant() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let path = "/l?cc=max-age%3D60&vary=X-Variant";
    let fetch = |variant: Option<&'static str>| {
        let mut request = edge.get(path);
        if let Some(variant) = variant {
            request = request.header("x-variant", variant);
        }
        async move { Fetched::from(request.send().await.unwrap()).await }
    };
    let a = fetch(Some("a")).await;
    assert_eq!(a.cache, "MISS");
    let b = fetch(Some("b")).await;
    assert_eq!(b.cache, "MISS");
    assert_ne!(a.body, b.body);
    let a_again = fetch(Some("a")).await;
    assert_eq!((a_again.cache.as_str(), &a_again.body), ("HIT", &a.body));
    let b_again = fetch(Some("b")).await;
    assert_eq!((b_again.cache.as_str(), &b_again.body), ("HIT", &b.body));
    assert_eq!(fetch(None).await.cache, "MISS");
    assert_eq!(origin.count("/l").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ttl_applies_only_without_cache_control() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |r| r.cache.default_ttl = 60).await;
    let mut zero = EnvironmentRoute::new(vec!["zero.localhost".into()], vec![origin.url()]);
    zero.cache.default_ttl = 0;
    edge.put("zero", &zero).await;
    edge.wait_nodes("zero", NodeState::Open).await;

    // No Cache-Control: default_ttl.
    assert_eq!(edge.fetch("/m").await.cache, "MISS");
    assert_eq!(edge.fetch("/m").await.cache, "HIT");
    // A Cache-Control of its own wins, even one that stores nothing.
    for path in ["/n?cc=max-age%3D0", "/o?cc=public"] {
        assert_eq!(edge.fetch(path).await.cache, "MISS");
        assert_eq!(edge.fetch(path).await.cache, "MISS", "{path}");
    }
    // default_ttl 0: not stored.
    for _ in 0..2 {
        let answer = Fetched::from(
            edge.request(Method::GET, "zero.localhost", "/p")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(answer.cache, "MISS");
    }
    assert_eq!(origin.count("/m").await, 1);
    assert_eq!(origin.count("/p").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headers_rule_joins_the_key() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let mut device = EnvironmentRoute::new(vec!["device.localhost".into()], vec![origin.url()]);
    device.cache.headers = vec!["X-Device".into()];
    edge.put("device", &device).await;
    edge.wait_nodes("device", NodeState::Open).await;

    let fetch = |host: &'static str, name: &'static str, value: &'static str| {
        let request = edge
            .request(Method::GET, host, "/q?cc=max-age%3D60")
            .header(name, value);
        async move { Fetched::from(request.send().await.unwrap()).await }
    };
    // The default rule: Accept and Accept-Language.
    assert_eq!(
        fetch("localhost", "accept-language", "en").await.cache,
        "MISS"
    );
    assert_eq!(
        fetch("localhost", "accept-language", "fr").await.cache,
        "MISS"
    );
    let en = fetch("localhost", "accept-language", "en").await;
    assert_eq!(en.cache, "HIT");
    assert!(en.body.contains("lang en"), "{}", en.body);

    // A rule of one's own: headers it does not list are not in the key.
    assert_eq!(
        fetch("device.localhost", "x-device", "phone").await.cache,
        "MISS"
    );
    assert_eq!(
        fetch("device.localhost", "x-device", "desktop").await.cache,
        "MISS"
    );
    assert_eq!(
        fetch("device.localhost", "x-device", "phone").await.cache,
        "HIT"
    );
    let other_language = Fetched::from(
        edge.request(Method::GET, "device.localhost", "/q?cc=max-age%3D60")
            .header("x-device", "phone")
            .header("accept-language", "de")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(other_language.cache, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_stays_within_its_memory_bound() {
    let origin = Origin::start().await;
    let edge = TestEdge::start_with(EdgeOptions {
        cache_bytes: 200_000,
        ..options()
    })
    .await;
    edge.put("main", &route(&[&origin])).await;
    edge.wait_nodes("main", NodeState::Open).await;
    let path = |i: usize| format!("/r{i}?cc=max-age%3D60&size=20000");
    for i in 0..20 {
        assert_eq!(edge.fetch(&path(i)).await.body.len(), 20_000);
    }
    let metrics = edge.metrics().await;
    let bytes = metric(&metrics, "lockstep_edge_cache_bytes", &[]);
    assert!(bytes > 100_000.0 && bytes <= 200_000.0, "{bytes}");
    let keys = metric(&metrics, "lockstep_edge_cache_keys", &[]);
    assert!((1.0..20.0).contains(&keys), "{keys} keys stored");
    // Until one misses, nothing is inserted, so the first miss shows what was not kept.
    let mut first_miss = None;
    for i in 0..20 {
        if edge.fetch(&path(i)).await.cache == "MISS" {
            first_miss = Some(i);
            break;
        }
    }
    assert!(first_miss.is_some(), "every response was kept");

    // One response may take a quarter of the store at most.
    for _ in 0..2 {
        let big = edge.fetch("/big?cc=max-age%3D60&size=60000").await;
        assert_eq!((big.body.len(), big.cache.as_str()), (60_000, "MISS"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_refreshes_stored_responses() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |_| {}).await;
    let first = edge.fetch("/s?cc=max-age%3D60").await;
    assert!(first.body.contains("gen 1"));
    assert_eq!(edge.fetch("/s?cc=max-age%3D60").await.cache, "HIT");
    origin.set(json!({"generation": 2})).await;
    edge.gate("main", GateState::Open, Some(Generation(2)))
        .await;
    let after = edge.fetch("/s?cc=max-age%3D60").await;
    assert_eq!(after.cache, "MISS");
    assert!(after.body.contains("gen 2"), "{}", after.body);
    assert_eq!(edge.fetch("/s?cc=max-age%3D60").await.cache, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_cache_passes_everything() {
    let origin = Origin::start().await;
    let edge = TestEdge::with(&[&origin], |r| r.cache.enabled = false).await;
    for _ in 0..2 {
        let answer = edge.fetch("/off?cc=max-age%3D60").await;
        assert_eq!((answer.status, answer.cache.as_str()), (200, "PASS"));
    }
    assert_eq!(origin.count("/off").await, 2);
}
