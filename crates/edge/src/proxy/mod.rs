//! The request pipeline: the host picks the environment, and with the path its route (a
//! redirect route is answered here, without a node); a request passes to the nodes or goes
//! through the cache (`cached`); while the environment is closed, stored responses answer and
//! the rest waits (or, with `closed_mode: error`, gets the nodes' answer at once). `answers`
//! makes the responses the edge writes itself.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, request};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

mod answers;
mod cached;

use self::answers::{closed_response, error_response, redirect_response, text, to_client};
use self::cached::cached;
use crate::Edge;
use crate::cache::CacheResult;
use crate::cache::rules::Classified;
use crate::client::{Body, Dispatch, Reply};
use crate::error::OriginError;
use crate::headers::{self, CACHE_HEADER};
use crate::hold::{Held, Turn};
use crate::routing::{EnvConfig, Environment, normalise_host};
use lockstep_proto::edge::{ClosedMode, EffectiveState};
use lockstep_routes::{Matched, host_port};

/// One request's environment, and the app whose routers take it (`None`: the first app's).
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) edge: Arc<Edge>,
    pub(super) env: Arc<Environment>,
    pub(super) config: Arc<EnvConfig>,
    pub(super) app: Option<String>,
}

/// Answers one public request.
pub(crate) async fn handle(
    edge: Arc<Edge>,
    mut request: Request<Incoming>,
    client: IpAddr,
) -> Response<Body> {
    // The Host header alone says where a request goes (and what it is cached as): a target
    // naming another host would route one way and reach the app as the other.
    let header_host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let target_host = request.uri().authority().map(|a| a.as_str().to_owned());
    let raw_host = match (header_host, target_host) {
        (Some(header), Some(target)) if normalise_host(&header) != normalise_host(&target) => {
            edge.metrics.unknown_host();
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "The request's target names host \"{target}\" but its Host header names \"{header}\".\n"
                ),
            );
        }
        (Some(header), _) => header,
        (None, Some(target)) => target,
        (None, None) => String::new(),
    };
    let host = normalise_host(&raw_host);
    let Some(env) = edge.router.by_host(&host) else {
        edge.metrics.unknown_host();
        return text(
            StatusCode::NOT_FOUND,
            format!("No environment is served at host \"{host}\" on this edge.\n"),
        );
    };
    let config = env.config();
    let app = match config.routes.find(&host, request.uri().path()) {
        Matched::Upstream(app) => app.map(str::to_owned),
        // Answered here, whether the environment is open or closed: no node is needed.
        Matched::Redirect { redirect, rest } => {
            let served_here = edge.router.by_host(&redirect.host).is_some();
            let location = redirect.location(
                rest,
                request.uri().query(),
                served_here,
                host_port(&raw_host),
            );
            edge.metrics.redirect(&env.name, redirect.code.as_u16());
            return redirect_response(redirect.code, &location, request.method() == Method::HEAD);
        }
        Matched::NoRoute => {
            edge.metrics.no_route(&env.name);
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "No route of this site matches \"{host}{}\" on this edge.\n",
                    request.uri().path()
                ),
            );
        }
    };
    let ctx = Ctx {
        edge,
        env,
        config,
        app,
    };
    let upgrade = headers::is_upgrade(request.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let class = ctx.config.rules.classify(&parts, &ctx.env.scope, &host);
    // Decided before `Transfer-Encoding` goes with the hop-by-hop headers.
    let body = headers::has_body(&parts.headers).then_some(body);
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::add_forwarded(&mut parts.headers, client, &raw_host);
    // A request that named its host in the target alone reaches the app with that host, never
    // with the node's address, which the app would write into pages cached for this host.
    if let Ok(value) = HeaderValue::from_str(&raw_host) {
        parts.headers.insert(header::HOST, value);
    }
    let (mut response, result) = match class {
        Classified::Pass(reason) => {
            tracing::debug!(environment = %ctx.env.name, uri = %parts.uri, reason, "pass");
            (pass(&ctx, parts, body, on_upgrade).await, CacheResult::Pass)
        }
        Classified::Cache(key) => {
            drop(body);
            cached(&ctx, parts, key).await
        }
    };
    response
        .headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(result.as_str()));
    ctx.edge.metrics.request(&ctx.env.name, result);
    response
}

impl Ctx {
    pub(super) fn dispatch(&self, any_node: bool, turn: Option<Turn>) -> Dispatch {
        Dispatch {
            environment: self.env.name.clone(),
            app: self.app.clone(),
            any_node,
            turn,
        }
    }

    /// Waits while the environment is closed for the request's app, or while earlier requests
    /// for it still wait. `None` when `max_hold` ran out.
    pub(super) async fn hold_if_closed(&self, deadline: Instant) -> Option<Option<Turn>> {
        let app = self.app.as_deref();
        if self.env.gate.state(app) != EffectiveState::Closed && !self.env.held.waiting(app) {
            return Some(None);
        }
        let mut record = HoldRecord::start(self);
        match self.env.held.wait(app, deadline).await {
            Held::Released(turn) => {
                record.end("released");
                Some(Some(turn))
            }
            Held::TimedOut => {
                record.end("timed_out");
                None
            }
        }
    }
}

/// Counts a held request in the metrics, including one whose client went away.
struct HoldRecord<'a> {
    ctx: &'a Ctx,
    started: Instant,
    ended: bool,
}

impl<'a> HoldRecord<'a> {
    fn start(ctx: &'a Ctx) -> HoldRecord<'a> {
        ctx.edge.metrics.hold_started(&ctx.env.name);
        HoldRecord {
            ctx,
            started: Instant::now(),
            ended: false,
        }
    }

    fn end(&mut self, outcome: &str) {
        if !self.ended {
            self.ended = true;
            let waited = self.started.elapsed().as_secs_f64();
            self.ctx
                .edge
                .metrics
                .hold_ended(&self.ctx.env.name, outcome, waited);
        }
    }
}

impl Drop for HoldRecord<'_> {
    fn drop(&mut self) {
        self.end("dropped");
    }
}

/// A request the cache does not take: to the nodes as it is, streamed both ways.
async fn pass(
    ctx: &Ctx,
    parts: request::Parts,
    body: Option<Incoming>,
    on_upgrade: Option<OnUpgrade>,
) -> Response<Body> {
    match reach(ctx, &parts, body).await {
        Ok(reply) => {
            let mut response = reply.response;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_side) = on_upgrade
            {
                let origin_side = hyper::upgrade::on(&mut response);
                tokio::spawn(splice(client_side, origin_side));
            }
            to_client(response, parts.method == Method::HEAD)
        }
        Err(response) => response,
    }
}

/// Sends a request to the nodes, holding it first while the environment is closed.
async fn reach(
    ctx: &Ctx,
    parts: &request::Parts,
    mut body: Option<Incoming>,
) -> Result<Reply, Response<Body>> {
    let deadline = Instant::now() + ctx.config.max_hold;
    let any_node = ctx.config.closed_mode == ClosedMode::Error;
    loop {
        let turn = if any_node {
            None
        } else {
            match ctx.hold_if_closed(deadline).await {
                Some(turn) => turn,
                None => return Err(closed_response(ctx)),
            }
        };
        let resend = body.is_none();
        let sent = ctx
            .edge
            .origin
            .send(
                &ctx.env.gate,
                parts,
                body.take(),
                ctx.dispatch(any_node, turn),
            )
            .await;
        match sent {
            Ok(reply) => return Ok(reply),
            Err(OriginError::AllClosed) if resend && Instant::now() < deadline => continue,
            Err(error) => return Err(error_response(ctx, &error)),
        }
    }
}

/// Copies bytes both ways between an upgraded client connection and node connection.
async fn splice(client: OnUpgrade, origin: OnUpgrade) {
    match tokio::try_join!(client, origin) {
        Ok((client, origin)) => {
            let mut client = TokioIo::new(client);
            let mut origin = TokioIo::new(origin);
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut origin).await {
                tracing::debug!(%error, "upgraded connection ended");
            }
        }
        Err(error) => tracing::warn!(%error, "protocol upgrade failed"),
    }
}
