//! The edge's Prometheus metrics, served on the admin listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cache::CacheResult;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    environment: String,
    cache: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvLabels {
    environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedirectLabels {
    environment: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HoldLabels {
    environment: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    environment: String,
    node: String,
    kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn hold_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    unknown_host: Counter,
    redirects: Family<RedirectLabels, Counter>,
    no_route: Family<EnvLabels, Counter>,
    held: Family<EnvLabels, Gauge>,
    hold_outcomes: Family<HoldLabels, Counter>,
    hold_seconds: HistogramFamily<EnvLabels>,
    origin_errors: Family<OriginLabels, Counter>,
    coalesced: Family<EnvLabels, Counter>,
    cache_bytes: Gauge,
    cache_objects: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lockstep_edge");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by environment and cache result (HIT, MISS, STALE, PASS)",
            requests.clone(),
        );
        let unknown_host = Counter::default();
        registry.register(
            "unknown_host_requests",
            "Requests for a host no environment is served at",
            unknown_host.clone(),
        );
        let redirects = Family::<RedirectLabels, Counter>::default();
        registry.register(
            "redirects",
            "Requests the edge answered itself with a redirect route, by environment and status code",
            redirects.clone(),
        );
        let no_route = Family::<EnvLabels, Counter>::default();
        registry.register(
            "no_route_requests",
            "Requests for a host whose routes have none for the request's path",
            no_route.clone(),
        );
        let held = Family::<EnvLabels, Gauge>::default();
        registry.register(
            "held_requests",
            "Requests now waiting for a closed environment to open",
            held.clone(),
        );
        let hold_outcomes = Family::<HoldLabels, Counter>::default();
        registry.register(
            "holds",
            "Requests that were held, by outcome (released, timed_out, dropped)",
            hold_outcomes.clone(),
        );
        let hold_seconds: HistogramFamily<EnvLabels> =
            Family::new_with_constructor(hold_histogram as fn() -> Histogram);
        registry.register(
            "hold_seconds",
            "How long held requests waited",
            hold_seconds.clone(),
        );
        let origin_errors = Family::<OriginLabels, Counter>::default();
        registry.register(
            "origin_errors",
            "Failed origin requests by kind (connect, timeout, transport, status_5xx, closed)",
            origin_errors.clone(),
        );
        let coalesced = Family::<EnvLabels, Counter>::default();
        registry.register(
            "coalesced_requests",
            "Requests that waited for another request's origin fetch of the same key",
            coalesced.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes held by the cache (its weighted size)",
            cache_bytes.clone(),
        );
        let cache_objects = Gauge::default();
        registry.register(
            "cache_keys",
            "Cache keys stored (each with one or more Vary variants)",
            cache_objects.clone(),
        );
        Metrics {
            registry,
            requests,
            unknown_host,
            redirects,
            no_route,
            held,
            hold_outcomes,
            hold_seconds,
            origin_errors,
            coalesced,
            cache_bytes,
            cache_objects,
        }
    }

    pub(crate) fn request(&self, environment: &str, result: CacheResult) {
        self.requests
            .get_or_create(&RequestLabels {
                environment: environment.to_owned(),
                cache: result.as_str().to_owned(),
            })
            .inc();
    }

    pub(crate) fn unknown_host(&self) {
        self.unknown_host.inc();
    }

    pub(crate) fn redirect(&self, environment: &str, code: u16) {
        self.redirects
            .get_or_create(&RedirectLabels {
                environment: environment.to_owned(),
                code,
            })
            .inc();
    }

    pub(crate) fn no_route(&self, environment: &str) {
        self.no_route.get_or_create(&env(environment)).inc();
    }

    pub(crate) fn hold_started(&self, environment: &str) {
        self.held.get_or_create(&env(environment)).inc();
    }

    pub(crate) fn hold_ended(&self, environment: &str, outcome: &str, seconds: f64) {
        self.held.get_or_create(&env(environment)).dec();
        self.hold_outcomes
            .get_or_create(&HoldLabels {
                environment: environment.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.hold_seconds
            .get_or_create(&env(environment))
            .observe(seconds);
    }

    pub(crate) fn origin_error(&self, environment: &str, node: &str, kind: &str) {
        self.origin_errors
            .get_or_create(&OriginLabels {
                environment: environment.to_owned(),
                node: node.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub(crate) fn coalesced(&self, environment: &str) {
        self.coalesced.get_or_create(&env(environment)).inc();
    }

    pub(crate) fn encode(&self, cache_bytes: u64, cache_keys: u64) -> String {
        self.cache_bytes
            .set(i64::try_from(cache_bytes).unwrap_or(i64::MAX));
        self.cache_objects
            .set(i64::try_from(cache_keys).unwrap_or(i64::MAX));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

fn env(environment: &str) -> EnvLabels {
    EnvLabels {
        environment: environment.to_owned(),
    }
}
