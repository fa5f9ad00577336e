//! Stored responses, in memory, bounded in bytes (moka, TinyLFU admission and eviction).
//!
//! One moka entry per cache key holds the key's variants: one stored response per combination
//! of the request headers its `Vary` names. An entry lives until the last of its variants is
//! past its freshness plus its stale windows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName};
use lockstep_proto::Generation;
use moka::Expiry;
use moka::ops::compute::Op;

use super::policy::Timers;
use crate::headers;

/// The most variants kept per key; the oldest goes first.
const MAX_VARIANTS: usize = 16;
/// Bookkeeping bytes counted per stored response, besides its headers and body.
const OVERHEAD: u64 = 256;
/// Room for headers beyond the largest body the store takes.
const MAX_HEADER_ALLOWANCE: u64 = 64 * 1024;
/// How long a key whose response could not be stored skips request coalescing.
const UNCACHEABLE_FOR: Duration = Duration::from_secs(60);

/// How a stored response may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usability {
    /// Fresh: served without asking the origin.
    Fresh,
    /// Stale within its stale-while-revalidate window: served, and refreshed in the background.
    Revalidate,
    /// Must be fetched again first (it may still stand in for a failed fetch: `within_grace`).
    Refetch,
}

/// One stored response.
#[derive(Debug)]
pub(crate) struct Stored {
    pub status: StatusCode,
    /// The origin's headers without hop-by-hop, gate and `Age` headers.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request headers the response's `Vary` names, with the values that selected it.
    vary: Vec<(HeaderName, Option<String>)>,
    received: Instant,
    timers: Timers,
    /// The generation of the release that produced it, when the node said.
    generation: Option<Generation>,
}

impl Stored {
    pub(crate) fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        request_headers: &HeaderMap,
        timers: Timers,
        generation: Option<Generation>,
        received: Instant,
    ) -> Stored {
        headers.remove(header::AGE);
        let vary = vary_names(&headers)
            .into_iter()
            .map(|name| {
                let value = vary_value(request_headers, &name);
                (name, value)
            })
            .collect();
        Stored {
            status,
            headers,
            body,
            vary,
            received,
            timers,
            generation,
        }
    }

    /// A copy with new headers and timers and the same body: a `304` refreshed it.
    pub(crate) fn refreshed(
        &self,
        headers: HeaderMap,
        request_headers: &HeaderMap,
        timers: Timers,
        generation: Option<Generation>,
        received: Instant,
    ) -> Stored {
        Stored::new(
            self.status,
            headers,
            self.body.clone(),
            request_headers,
            timers,
            generation.or(self.generation),
            received,
        )
    }

    fn matches(&self, request_headers: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| vary_value(request_headers, name) == *value)
    }

    fn same_variant(&self, other: &Stored) -> bool {
        self.vary == other.vary
    }

    /// The response's age now, for the `Age` header.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.timers.age + now.saturating_duration_since(self.received)
    }

    fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.received)
    }

    /// How the response may be used now, given the generation the environment's nodes are open
    /// at: a response from an older release is fetched again before it is served.
    pub(crate) fn usability(&self, now: Instant, current: Option<Generation>) -> Usability {
        let outdated = matches!((self.generation, current), (Some(mine), Some(now)) if mine < now);
        let elapsed = self.elapsed(now);
        if outdated {
            Usability::Refetch
        } else if elapsed < self.timers.fresh_for {
            Usability::Fresh
        } else if elapsed < self.timers.fresh_for + self.timers.swr {
            Usability::Revalidate
        } else {
            Usability::Refetch
        }
    }

    /// Whether it may stand in for a failed fetch (grace).
    pub(crate) fn within_grace(&self, now: Instant) -> bool {
        self.elapsed(now) < self.timers.fresh_for + self.timers.grace
    }

    /// Whether it may be served while the environment is closed: while it is fresh or within
    /// either stale window.
    pub(crate) fn servable_while_closed(&self, now: Instant) -> bool {
        self.elapsed(now) < self.lifetime()
    }

    pub(crate) fn etag(&self) -> Option<&http::HeaderValue> {
        self.headers.get(header::ETAG)
    }

    pub(crate) fn last_modified(&self) -> Option<&http::HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }

    fn lifetime(&self) -> Duration {
        self.timers.fresh_for + self.timers.swr.max(self.timers.grace)
    }

    fn expires_at(&self) -> Instant {
        self.received + self.lifetime()
    }

    fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        self.body.len() as u64 + headers as u64 + OVERHEAD
    }
}

/// The names a response's `Vary` lists, lower-cased.
fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// A request header's value as `Vary` compares it; `Accept-Encoding` is normalised (case and
/// spaces) so equivalent spellings share a variant.
fn vary_value(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let value = headers::joined(headers, name)?;
    if name == header::ACCEPT_ENCODING {
        Some(
            value
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase(),
        )
    } else {
        Some(value)
    }
}

/// The variants stored under one key.
#[derive(Debug)]
struct Variants {
    items: Vec<Arc<Stored>>,
}

impl Variants {
    fn weight(&self, key: &str) -> u32 {
        let bytes = key.len() as u64 + self.items.iter().map(|s| s.weight()).sum::<u64>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    fn expires_at(&self) -> Option<Instant> {
        self.items.iter().map(|s| s.expires_at()).max()
    }
}

struct ByLifetime;

impl Expiry<String, Arc<Variants>> for ByLifetime {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Variants>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.expires_at().map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(created_at)
        }))
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Arc<Variants>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// The cache's storage.
pub(crate) struct Store {
    entries: moka::sync::Cache<String, Arc<Variants>>,
    uncacheable: moka::sync::Cache<String, ()>,
    max_object: u64,
}

impl Store {
    /// A store of at most `capacity` bytes. One response may take at most a quarter of it
    /// (and 64 MiB).
    pub(crate) fn new(capacity: u64) -> Store {
        let entries = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|key: &String, value: &Arc<Variants>| value.weight(key))
            .expire_after(ByLifetime)
            .support_invalidation_closures()
            .build();
        let uncacheable = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(UNCACHEABLE_FOR)
            .build();
        Store {
            entries,
            uncacheable,
            max_object: (capacity / 4).min(64 << 20),
        }
    }

    /// The largest body the store takes.
    pub(crate) fn max_object(&self) -> u64 {
        self.max_object
    }

    /// The stored response for this key that the request's headers select, if any.
    pub(crate) fn lookup(&self, key: &str, request_headers: &HeaderMap) -> Option<Arc<Stored>> {
        let variants = self.entries.get(key)?;
        variants
            .items
            .iter()
            .find(|s| s.matches(request_headers))
            .cloned()
    }

    /// Stores a response, replacing the variant it stands for. False when it is too large.
    pub(crate) fn insert(&self, key: &str, stored: Stored) -> bool {
        if stored.weight() > self.max_object + MAX_HEADER_ALLOWANCE {
            return false;
        }
        let stored = Arc::new(stored);
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let mut items: Vec<Arc<Stored>> = current
                    .map(|entry| entry.into_value().items.clone())
                    .unwrap_or_default();
                items.retain(|s| !s.same_variant(&stored));
                items.push(stored.clone());
                if items.len() > MAX_VARIANTS {
                    let excess = items.len() - MAX_VARIANTS;
                    items.drain(..excess);
                }
                Op::Put(Arc::new(Variants { items }))
            });
        self.uncacheable.invalidate(key);
        true
    }

    /// Forgets the variant these request headers select: its origin now says it must not be
    /// stored.
    pub(crate) fn remove_variant(&self, key: &str, request_headers: &HeaderMap) {
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|current| match current {
                None => Op::Nop,
                Some(entry) => {
                    let items: Vec<Arc<Stored>> = entry
                        .value()
                        .items
                        .iter()
                        .filter(|s| !s.matches(request_headers))
                        .cloned()
                        .collect();
                    if items.is_empty() {
                        Op::Remove
                    } else if items.len() == entry.value().items.len() {
                        Op::Nop
                    } else {
                        Op::Put(Arc::new(Variants { items }))
                    }
                }
            });
    }

    /// Remembers that this key's response could not be stored, so its requests skip coalescing.
    pub(crate) fn mark_uncacheable(&self, key: &str) {
        self.uncacheable.insert(key.to_owned(), ());
    }

    pub(crate) fn is_uncacheable(&self, key: &str) -> bool {
        self.uncacheable.contains_key(key)
    }

    /// Drops every response stored under keys that start with `scope` (a deleted environment).
    pub(crate) fn forget_scope(&self, scope: &str) {
        let prefix = format!("{scope}\n");
        let _ = self
            .entries
            .invalidate_entries_if(move |key, _| key.starts_with(&prefix));
    }

    /// Bytes and keys held now.
    pub(crate) fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.weighted_size(), self.entries.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers(fresh: u64) -> Timers {
        Timers {
            fresh_for: Duration::from_secs(fresh),
            age: Duration::ZERO,
            swr: Duration::from_secs(10),
            grace: Duration::from_secs(100),
        }
    }

    fn stored(body: &'static str, vary: Option<&str>, request: &HeaderMap) -> Stored {
        let mut headers = HeaderMap::new();
        if let Some(vary) = vary {
            headers.insert(header::VARY, vary.parse().unwrap());
        }
        Stored::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(body.as_bytes()),
            request,
            timers(60),
            Some(Generation(1)),
            Instant::now(),
        )
    }

    fn request(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn vary_selects_the_variant() {
        let store = Store::new(1 << 20);
        let en = request(&[("x-lang", "en")]);
        let fr = request(&[("x-lang", "fr")]);
        store.insert("k", stored("en", Some("X-Lang"), &en));
        assert!(store.lookup("k", &fr).is_none());
        store.insert("k", stored("fr", Some("X-Lang"), &fr));
        assert_eq!(store.lookup("k", &en).unwrap().body, "en");
        assert_eq!(store.lookup("k", &fr).unwrap().body, "fr");
        store.remove_variant("k", &fr);
        assert!(store.lookup("k", &fr).is_none());
        assert!(store.lookup("k", &en).is_some());
    }

    #[test]
    fn usability_follows_timers_and_generation() {
        let now = Instant::now();
        let s = stored("x", None, &HeaderMap::new());
        assert_eq!(s.usability(now, Some(Generation(1))), Usability::Fresh);
        assert_eq!(s.usability(now, Some(Generation(2))), Usability::Refetch);
        assert!(s.within_grace(now));
        let later = now + Duration::from_secs(65);
        assert_eq!(
            s.usability(later, Some(Generation(1))),
            Usability::Revalidate
        );
        let much_later = now + Duration::from_secs(90);
        assert_eq!(
            s.usability(much_later, Some(Generation(1))),
            Usability::Refetch
        );
        assert!(s.within_grace(much_later));
        assert!(!s.within_grace(now + Duration::from_secs(200)));
    }

    #[test]
    fn the_store_stays_within_its_bytes() {
        let store = Store::new(64 * 1024);
        let body = Bytes::from(vec![b'x'; 8 * 1024]);
        for i in 0..64 {
            let s = Stored::new(
                StatusCode::OK,
                HeaderMap::new(),
                body.clone(),
                &HeaderMap::new(),
                timers(60),
                None,
                Instant::now(),
            );
            store.insert(&format!("key{i}"), s);
        }
        let (bytes, _) = store.usage();
        assert!(bytes <= 64 * 1024, "{bytes}");
    }
}
