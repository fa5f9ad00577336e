//! Active health checks: each node router's own `GET /.lockstep/gate`, never the app.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::client::Origin;
use crate::routing::Environment;

/// Checks every router of every app of the environment each `interval`, and at once when
/// woken. Runs until aborted.
pub(crate) async fn check_forever(env: Arc<Environment>, origin: Arc<Origin>, interval: Duration) {
    let limit = interval.clamp(Duration::from_millis(250), Duration::from_secs(2));
    loop {
        let mut checks = JoinSet::new();
        for url in env.gate.node_urls() {
            let origin = origin.clone();
            checks.spawn(async move {
                let started = Instant::now();
                let answer = origin.check(&url, limit).await;
                (url, answer, started)
            });
        }
        while let Some(result) = checks.join_next().await {
            if let Ok((url, answer, started)) = result {
                env.gate.learn(&url, answer, Some(started));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = env.check_now.notified() => {}
        }
    }
}
