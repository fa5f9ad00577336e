//! The caching edge: one public port for every environment, in front of the environments' node
//! routers, with an admin API for the controller.
//!
//! It owns: routing by host, and by path prefix to an environment's routes (redirect routes
//! it answers itself, an upstream route's requests go to its app's node routers); the pooled
//! keep-alive connections to the nodes, load balancing over an app's open routers with active
//! health checks, retries on another router of the app; the HTTP cache (Platform.sh
//! `routes.yaml` cache rules, RFC 9111 freshness, `Vary`, grace, stale-while-revalidate, request
//! coalescing, a memory bound in bytes); what it knows of each environment's gate, from the
//! controller and from the routers; holding requests while an environment is closed for their
//! app.
//!
//! It must never:
//! - serve a response from one environment to another (every cache key starts with the
//!   environment and its incarnation);
//! - let a 5xx replace a stored response, or store a response with `Set-Cookie`, `private`,
//!   `no-store` or `no-cache`, or a response to a request with `Authorization` or with cookies
//!   the `cookies` rule does not ignore;
//! - contact a node for a request it can answer from the store while the environment is closed;
//! - send a request to a node that said it is closed (except with `closed_mode: error`), or to a
//!   node at an older generation than another open node of its app;
//! - send a request for one app to another app's routers;
//! - send a request with a body twice, or retry a non-idempotent request;
//! - decide the gate: it only follows the controller and the nodes.
//!
//! Code map: `routing` (environments and hosts; an environment's routes are the
//! `lockstep_routes` crate's), `proxy` (the request pipeline; `cached` the
//! cacheable path, `answers` the edge's own responses), `client` (node connections, choice of
//! node, retries), `gate` (the gate, each router's state and each app's), `hold` (held
//! requests), `health` (active checks), `cache` (`rules` and keys, `policy`, `store`, `flight`
//! coalescing, `tee`), `admin` (the API, whose types are `lockstep_proto::edge`), `metrics`,
//! `headers`, `error`; `fuzzing` (entry points of the fuzz targets, with `--cfg fuzzing` only).
//!
//! The integration tests (`tests/integration`) run the edge against real origin processes,
//! `tests/origin.py`, which speak the node routers' gate protocol.

mod admin;
mod cache;
mod client;
mod error;
#[cfg(fuzzing)]
pub mod fuzzing;
mod gate;
mod headers;
mod health;
mod hold;
mod metrics;
mod proxy;
mod routing;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use cache::CacheResult;
pub use error::{OriginError, RouteError};
pub use headers::CACHE_HEADER;
pub use lockstep_proto::edge::{
    CacheRules, ClosedMode, EffectiveState, EnvironmentRoute, EnvironmentView, ErrorBody,
    GateCommand, GateState, HostRoute, NodeState, NodeView, RouteAction,
};

use crate::cache::flight::Flights;
use crate::cache::store::Store;
use crate::client::Origin;
use crate::metrics::Metrics;
use crate::routing::Router;

/// How long `serve` waits for open connections to finish after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The edge's settings.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// `<env>.<domain>` is an environment's host when its route names none. `localhost` in the
    /// embedded default.
    pub domain: String,
    /// The cache's memory bound. One response may take at most a quarter of it (and 64 MiB).
    pub cache_bytes: u64,
    /// How long a node may take to send a response's head.
    pub origin_timeout: Duration,
    /// How long connecting to a node may take.
    pub connect_timeout: Duration,
    /// How often each node's gate is checked.
    pub health_interval: Duration,
    /// Where the routes the controller gave are kept, so that a restarted edge serves its
    /// environments at once instead of answering 404 until the controller speaks again.
    pub saved_routes: Option<PathBuf>,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions {
            domain: "localhost".into(),
            cache_bytes: 256 << 20,
            origin_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            health_interval: Duration::from_secs(1),
            saved_routes: None,
        }
    }
}

pub struct Edge {
    options: EdgeOptions,
    /// The edge's certificate, when enrolled: for the admin API and the nodes' routers.
    identity: Option<Arc<lockstep_transport::RenewableIdentity>>,
    router: Router,
    store: Arc<Store>,
    flights: Arc<Flights>,
    origin: Arc<Origin>,
    metrics: Arc<Metrics>,
    /// Taken while the routes are saved, so that the file always holds the latest table.
    saving: Mutex<()>,
}

impl Edge {
    /// An edge with no identity: no admin API, and plain HTTP to the nodes (tests, tools).
    pub fn new(options: EdgeOptions) -> Arc<Edge> {
        let no_certificate = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("the provider's protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Edge::build(options, no_certificate, None)
    }

    /// An enrolled edge: its admin API for the controller and its calls to the nodes' routers
    /// over mutual TLS, with `identity` (renewed when the controller asks).
    pub fn with_identity(
        options: EdgeOptions,
        identity: Arc<lockstep_transport::RenewableIdentity>,
    ) -> Result<Arc<Edge>, lockstep_transport::TransportError> {
        let tls = identity.server().client_config()?;
        Ok(Edge::build(options, tls, Some(identity)))
    }

    fn build(
        options: EdgeOptions,
        tls: rustls::ClientConfig,
        identity: Option<Arc<lockstep_transport::RenewableIdentity>>,
    ) -> Arc<Edge> {
        let metrics = Arc::new(Metrics::new());
        let origin = Arc::new(Origin::new(
            options.origin_timeout,
            options.connect_timeout,
            metrics.clone(),
            tls,
        ));
        Arc::new(Edge {
            identity,
            store: Arc::new(Store::new(options.cache_bytes)),
            options,
            router: Router::default(),
            flights: Arc::new(Flights::default()),
            origin,
            metrics,
            saving: Mutex::new(()),
        })
    }

    pub fn options(&self) -> &EdgeOptions {
        &self.options
    }

    /// Serves public traffic on `public`, and the admin API on `admin` (an enrolled edge's) to
    /// the controller alone, over mutual TLS, until `shutdown`; then lets open connections
    /// finish (for at most 10 s). Starts with the saved routes, if any.
    pub async fn serve(
        self: Arc<Self>,
        public: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let admin = match (admin, &self.identity) {
            (Some(admin), Some(identity)) => Some((admin, identity.clone())),
            (Some(_), None) => {
                return Err(std::io::Error::other(
                    "an admin API needs the edge's identity (Edge::with_identity)",
                ));
            }
            (None, _) => None,
        };
        self.restore_routes();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        tracing::info!(public = %public.local_addr()?, "edge listening");
        let admin_server = admin.map(|(admin, identity)| {
            let mut stopped = stopped.clone();
            let app = admin::router(self.clone(), identity.clone());
            tokio::spawn(lockstep_transport::serve(
                admin,
                identity.server(),
                app,
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ))
        });
        let public_result = self.clone().serve_public(public, stopped).await;
        let admin_result = match admin_server {
            Some(server) => server
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        };
        public_result.and(admin_result)
    }

    async fn serve_public(
        self: Arc<Self>,
        listener: TcpListener,
        mut stopped: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let (open, mut all_closed) = mpsc::channel::<()>(1);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let edge = self.clone();
                        let open = open.clone();
                        let stopped = stopped.clone();
                        tokio::spawn(async move {
                            let _ = stream.set_nodelay(true);
                            edge.connection(stream, peer, stopped).await;
                            drop(open);
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = stop_signal(&mut stopped) => break,
            }
        }
        drop(listener);
        drop(open);
        // Held requests get their answer now, so that connections can finish.
        for env in self.router.all() {
            env.stop();
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, all_closed.recv())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the shutdown grace period");
        }
        Ok(())
    }

    /// Serves one client connection: a TCP stream, or any byte stream (the fuzzer's).
    async fn connection<Io>(
        self: Arc<Self>,
        stream: Io,
        peer: SocketAddr,
        mut stopped: watch::Receiver<bool>,
    ) where
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let edge = self.clone();
        let service = hyper::service::service_fn(move |request| {
            let edge = edge.clone();
            async move {
                // The answer speaks the client's HTTP version, whatever the node spoke.
                let version = request.version();
                let mut response = proxy::handle(edge, request, peer.ip()).await;
                *response.version_mut() = version;
                Ok::<_, Infallible>(response)
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
            }
            () = stop_signal(&mut stopped) => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.as_mut().await;
            }
        }
    }

    /// Creates or replaces an environment (`PUT /v1/environments/{env}`). Call within a Tokio
    /// runtime: a new environment starts its health checks.
    pub fn put_environment(
        &self,
        name: &str,
        route: EnvironmentRoute,
    ) -> Result<EnvironmentView, RouteError> {
        let put = self.router.put(name, route, &self.options.domain)?;
        let env = put.environment;
        if put.created {
            tracing::info!(environment = %env.name, "environment added");
            env.add_task(tokio::spawn(health::check_forever(
                env.clone(),
                self.origin.clone(),
                self.options.health_interval,
            )));
            let releaser = env.clone();
            env.add_task(tokio::spawn(async move {
                let open = |app: Option<&str>| releaser.gate.state(app) == EffectiveState::Open;
                releaser.held.release(releaser.gate.subscribe(), open).await;
            }));
        }
        self.save_routes();
        Ok(env.view())
    }

    /// The controller's word on a gate (`POST /v1/environments/{env}/gate`).
    pub fn set_gate(
        &self,
        name: &str,
        command: GateCommand,
    ) -> Result<EnvironmentView, RouteError> {
        let env = self
            .router
            .by_name(name)
            .ok_or_else(|| RouteError::UnknownEnvironment(name.to_owned()))?;
        tracing::info!(environment = %env.name, state = ?command.state, generation = ?command.generation, "gate set by the controller");
        env.gate.command(command.state, command.generation);
        env.check_now.notify_one();
        self.save_routes();
        Ok(env.view())
    }

    /// Forgets an environment and its stored responses (`DELETE /v1/environments/{env}`).
    /// Returns whether it existed.
    pub fn delete_environment(&self, name: &str) -> bool {
        match self.router.delete(name) {
            Some(env) => {
                env.stop();
                self.store.forget_scope(&env.scope);
                tracing::info!(environment = %env.name, "environment removed");
                self.save_routes();
                true
            }
            None => false,
        }
    }

    pub fn environment(&self, name: &str) -> Option<EnvironmentView> {
        self.router.by_name(name).map(|env| env.view())
    }

    /// Every environment, sorted by name (`GET /v1/environments`).
    pub fn environments(&self) -> Vec<EnvironmentView> {
        self.router.all().iter().map(|env| env.view()).collect()
    }

    /// Writes every environment's route, with the controller's gate, to `saved_routes`. A
    /// failure costs only the head start after a restart: it is logged, never returned.
    fn save_routes(&self) {
        let Some(path) = &self.options.saved_routes else {
            return;
        };
        let _saving = self.saving.lock().expect("saving lock");
        let routes: BTreeMap<String, EnvironmentRoute> = self
            .router
            .all()
            .iter()
            .map(|env| (env.name.clone(), env.view().route))
            .collect();
        if let Err(error) = lockstep_durable::write_json(path, &routes) {
            tracing::warn!(path = %path.display(), %error, "cannot save the routes");
        }
    }

    /// Serves the routes saved by an earlier run until the controller says otherwise.
    fn restore_routes(&self) {
        let Some(path) = &self.options.saved_routes else {
            return;
        };
        let routes: BTreeMap<String, EnvironmentRoute> = match lockstep_durable::read_json(path) {
            Ok(routes) => routes.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "the saved routes are unreadable; starting with none");
                return;
            }
        };
        for (name, route) in routes {
            match self.put_environment(&name, route) {
                Ok(_) => tracing::info!(environment = %name, "saved route restored"),
                Err(error) => {
                    tracing::warn!(environment = %name, %error, "a saved route is refused")
                }
            }
        }
    }

    /// The metrics in the OpenMetrics text format (`GET /metrics`).
    pub fn metrics_text(&self) -> String {
        let (bytes, keys) = self.store.usage();
        self.metrics.encode(bytes, keys)
    }
}

/// Resolves when the shutdown signal is given (or can no longer be).
async fn stop_signal(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}
