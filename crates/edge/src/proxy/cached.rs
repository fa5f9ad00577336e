//! The cacheable path: the store, request coalescing, grace and background refresh.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, request};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::Ctx;
use super::answers::{closed_response, error_response, serve};
use crate::cache::CacheResult;
use crate::cache::flight::{self, Join, Leader, Outcome};
use crate::cache::policy::{self, Verdict};
use crate::cache::store::{Stored, Usability};
use crate::cache::tee::{Pending, Tee};
use crate::client::{Body, empty};
use crate::error::OriginError;
use crate::headers;
use crate::hold::Turn;
use lockstep_proto::edge::{ClosedMode, EffectiveState};

/// How many times a cacheable request goes round (hold, wait for another fetch) before it
/// fetches on its own.
const MAX_ROUNDS: u32 = 4;
/// How much longer than the origin timeout a request waits for another request's fetch.
const LOCK_SLACK: Duration = Duration::from_millis(500);

/// A cacheable request: from the store when it can be, else fetched (once per key at a time).
pub(super) async fn cached(
    ctx: &Ctx,
    parts: request::Parts,
    key: String,
) -> (Response<Body>, CacheResult) {
    let head = parts.method == Method::HEAD;
    let now = std::time::Instant::now();
    let stored = ctx.edge.store.lookup(&key, &parts.headers);
    if let Some(s) = &stored {
        let usability = s.usability(now, ctx.env.gate.generation());
        if usability == Usability::Fresh {
            return (serve(s, head, now), CacheResult::Hit);
        }
        let closed = ctx.env.gate.state(ctx.app.as_deref()) == EffectiveState::Closed;
        if usability == Usability::Revalidate && !closed {
            refresh_in_background(ctx, &parts, &key, s.clone());
            return (serve(s, head, now), CacheResult::Stale);
        }
        if closed && s.servable_while_closed(now) {
            return (serve(s, head, now), CacheResult::Stale);
        }
    }
    fill(ctx, parts, key, stored).await
}

/// What a fetch came to.
enum Fetched {
    Done(Response<Body>, CacheResult),
    /// Every node is closed and nothing stored can stand in: hold, then try again.
    Closed,
}

/// Fetches a cacheable request's response, leading or joining the key's fetch.
async fn fill(
    ctx: &Ctx,
    parts: request::Parts,
    key: String,
    mut stored: Option<Arc<Stored>>,
) -> (Response<Body>, CacheResult) {
    let head = parts.method == Method::HEAD;
    let deadline = Instant::now() + ctx.config.max_hold;
    let hold = ctx.config.closed_mode == ClosedMode::Hold;
    let mut coalesce = true;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let turn = if hold {
            match ctx.hold_if_closed(deadline).await {
                Some(turn) => turn,
                None => return (closed_response(ctx), CacheResult::Miss),
            }
        } else {
            None
        };
        if rounds > MAX_ROUNDS || ctx.edge.store.is_uncacheable(&key) {
            coalesce = false;
        }
        let leader = if coalesce {
            match ctx.edge.flights.join(&key) {
                Join::Leader(leader) => Some(leader),
                Join::Waiter(slot) => {
                    drop(turn);
                    ctx.edge.metrics.coalesced(&ctx.env.name);
                    let limit = ctx.edge.options.origin_timeout + LOCK_SLACK;
                    let outcome = flight::wait(slot, limit).await;
                    let now = std::time::Instant::now();
                    let current = ctx.edge.store.lookup(&key, &parts.headers);
                    match outcome {
                        Outcome::Stored => {
                            if let Some(s) = &current
                                && s.usability(now, ctx.env.gate.generation()) == Usability::Fresh
                            {
                                return (serve(s, head, now), CacheResult::Hit);
                            }
                        }
                        Outcome::Failed => {
                            let standin = current.as_ref().or(stored.as_ref());
                            if let Some(s) = standin.filter(|s| s.within_grace(now)) {
                                return (serve(s, head, now), CacheResult::Stale);
                            }
                            coalesce = false;
                        }
                        Outcome::Uncacheable => coalesce = false,
                        Outcome::Abandoned => {}
                    }
                    if current.is_some() {
                        stored = current;
                    }
                    continue;
                }
            }
        } else {
            None
        };
        match fetch(ctx, &parts, &key, stored.clone(), leader, turn).await {
            Fetched::Done(response, result) => return (response, result),
            Fetched::Closed if Instant::now() >= deadline || !hold => {
                return (closed_response(ctx), CacheResult::Miss);
            }
            Fetched::Closed => {}
        }
    }
}

fn finish(leader: Option<Leader>, outcome: Outcome) {
    if let Some(leader) = leader {
        leader.finish(outcome);
    }
}

/// Fetches from the nodes, stores what may be stored, and falls back on the stored response
/// (grace) when the origin fails. A 5xx never replaces a stored response.
async fn fetch(
    ctx: &Ctx,
    parts: &request::Parts,
    key: &str,
    stored: Option<Arc<Stored>>,
    leader: Option<Leader>,
    turn: Option<Turn>,
) -> Fetched {
    let head = parts.method == Method::HEAD;
    let store = &ctx.edge.store;
    let outgoing = fill_request(parts, stored.as_deref());
    let any_node = ctx.config.closed_mode == ClosedMode::Error;
    let sent = ctx
        .edge
        .origin
        .send(&ctx.env.gate, &outgoing, None, ctx.dispatch(any_node, turn))
        .await;
    let now = std::time::Instant::now();
    let reply = match sent {
        Ok(reply) => reply,
        Err(OriginError::AllClosed) => {
            drop(leader);
            if let Some(s) = stored.as_ref().filter(|s| s.servable_while_closed(now)) {
                return Fetched::Done(serve(s, head, now), CacheResult::Stale);
            }
            return Fetched::Closed;
        }
        Err(error) => {
            finish(leader, Outcome::Failed);
            if let Some(s) = stored.as_ref().filter(|s| s.within_grace(now)) {
                tracing::info!(environment = %ctx.env.name, %error, "origin failed: serving stale");
                return Fetched::Done(serve(s, head, now), CacheResult::Stale);
            }
            return Fetched::Done(error_response(ctx, &error), CacheResult::Miss);
        }
    };
    let generation = reply.generation;
    let (mut answer, body) = reply.response.into_parts();
    headers::strip_hop_by_hop(&mut answer.headers, false);
    headers::strip_gate_headers(&mut answer.headers);
    let defaults = ctx.config.defaults;

    if answer.status == StatusCode::NOT_MODIFIED
        && let Some(s) = &stored
    {
        let merged = policy::merge_not_modified(&s.headers, &answer.headers);
        let mut judged = answer.clone();
        judged.status = s.status;
        judged.headers = merged.clone();
        let response = match policy::evaluate(&outgoing, &judged, defaults, SystemTime::now()) {
            Verdict::Store(timers) => {
                let refreshed = s.refreshed(merged, &parts.headers, timers, generation, now);
                let response = serve(&refreshed, head, now);
                let outcome = if store.insert(key, refreshed) {
                    Outcome::Stored
                } else {
                    Outcome::Uncacheable
                };
                finish(leader, outcome);
                response
            }
            Verdict::DontStore(reason) => {
                tracing::debug!(key, reason, "revalidated response no longer stored");
                store.remove_variant(key, &parts.headers);
                store.mark_uncacheable(key);
                finish(leader, Outcome::Uncacheable);
                let mut response = serve(s, head, now);
                *response.headers_mut() = merged;
                response
            }
        };
        return Fetched::Done(response, CacheResult::Miss);
    }

    if answer.status.is_server_error() {
        finish(leader, Outcome::Failed);
        if let Some(s) = stored.as_ref().filter(|s| s.within_grace(now)) {
            tracing::info!(environment = %ctx.env.name, status = %answer.status, "origin failed: serving stale");
            return Fetched::Done(serve(s, head, now), CacheResult::Stale);
        }
        let body = if head { empty() } else { body.boxed() };
        return Fetched::Done(Response::from_parts(answer, body), CacheResult::Miss);
    }

    let verdict = match policy::evaluate(&outgoing, &answer, defaults, SystemTime::now()) {
        Verdict::Store(_)
            if content_length(&answer.headers).is_some_and(|n| n > store.max_object()) =>
        {
            Verdict::DontStore("larger than the store takes")
        }
        verdict => verdict,
    };
    match verdict {
        Verdict::DontStore(reason) => {
            tracing::debug!(key, reason, "not stored");
            store.remove_variant(key, &parts.headers);
            store.mark_uncacheable(key);
            finish(leader, Outcome::Uncacheable);
            let body = if head { empty() } else { body.boxed() };
            Fetched::Done(Response::from_parts(answer, body), CacheResult::Miss)
        }
        Verdict::Store(timers) => {
            let pending = Pending {
                store: store.clone(),
                key: key.to_owned(),
                status: answer.status,
                headers: answer.headers.clone(),
                request_headers: parts.headers.clone(),
                timers,
                generation,
                received: now,
                leader,
            };
            answer
                .headers
                .insert(header::AGE, HeaderValue::from(timers.age.as_secs()));
            let tee = Tee::new(body, store.max_object(), pending);
            if head {
                // The whole body goes to the store; the client gets the headers.
                if let Ok(collected) = tee.collect().await {
                    let length = collected.to_bytes().len();
                    answer
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
                }
                Fetched::Done(Response::from_parts(answer, empty()), CacheResult::Miss)
            } else {
                Fetched::Done(Response::from_parts(answer, tee.boxed()), CacheResult::Miss)
            }
        }
    }
}

/// Refreshes a stale response without making anyone wait (stale-while-revalidate), unless a
/// fetch of the key is already under way.
fn refresh_in_background(ctx: &Ctx, parts: &request::Parts, key: &str, stored: Arc<Stored>) {
    let Join::Leader(leader) = ctx.edge.flights.join(key) else {
        return;
    };
    let ctx = ctx.clone();
    let mut parts = parts.clone();
    parts.method = Method::GET;
    let key = key.to_owned();
    tokio::spawn(async move {
        if let Fetched::Done(response, _) =
            fetch(&ctx, &parts, &key, Some(stored), Some(leader), None).await
        {
            // Reading the body to its end stores it.
            let _ = response.into_body().collect().await;
        }
    });
}

/// The request that fills the cache: always a GET (a HEAD is answered from it), without the
/// client's conditions, with the stored response's validators.
fn fill_request(parts: &request::Parts, stored: Option<&Stored>) -> request::Parts {
    let mut outgoing = parts.clone();
    outgoing.method = Method::GET;
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        outgoing.headers.remove(name);
    }
    if let Some(s) = stored {
        if let Some(etag) = s.etag() {
            outgoing.headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = s.last_modified() {
            outgoing
                .headers
                .insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
    }
    outgoing
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
