//! The edge as a plain shared HTTP cache in front of one origin, for the HTTP caching test suite
//! (http-tests/cache-tests, npm `http-cache-tests`); see docs/cache-tests/README.md.
//!
//! Run: `cargo run -p lockstep-edge --example cache_tests_proxy -- [PORT] [ORIGIN_URL]`
//! (defaults: 8080 and http://127.0.0.1:8000). Serves until killed (Ctrl-C or SIGTERM).
//! No admin API: the route is given here.

use std::time::Duration;

use lockstep_edge::{CacheRules, Edge, EdgeOptions, EnvironmentRoute};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "lockstep_edge=info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map_or(Ok(8080), |p| p.parse())?;
    let origin = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());

    let edge = Edge::new(EdgeOptions {
        origin_timeout: Duration::from_secs(30),
        ..EdgeOptions::default()
    });
    // The suite's client sends `Host: localhost:PORT` (the base URL's host); the edge matches
    // hosts without their port.
    let mut route = EnvironmentRoute::new(
        vec!["localhost".into(), "127.0.0.1".into()],
        vec![origin.clone()],
    );
    // A plain shared HTTP cache: no cookie or request-header rules beyond the response's Vary.
    route.cache = CacheRules {
        enabled: true,
        default_ttl: 0,
        cookies: vec![],
        headers: vec![],
    };
    edge.put_environment("cache-tests", route)?;

    let public = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("cache_tests_proxy: http://localhost:{port}/ -> {origin}");
    edge.serve(public, None, shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
