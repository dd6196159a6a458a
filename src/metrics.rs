//! Prometheus metrics (prometheus-client), served as text on the admin
//! listener's `/metrics`. One `Metrics` lives for the whole process: a
//! reload hands it to the new `App`, so counters never restart.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: Arc<String>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub route: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// Every metric authgate exports. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub auth_failures: Family<Reason, Counter>,
    pub upstream_seconds: Family<Route, Histogram>,
    pub logins: Family<Outcome, Counter>,
    pub rate_limited: Family<Route, Counter>,
    pub open_connections: Gauge<i64, AtomicI64>,
    /// HTTP/1 connections parked between requests (see `server.rs`).
    pub parked_connections: Gauge<i64, AtomicI64>,
    pub store_errors: Counter,
    /// The route label of requests that match no route or that authgate
    /// answers itself (`/token`, JWKS, `/auth/verify`, CORS preflights).
    pub none: Arc<String>,
    /// The `rate_limited` label of the login limits.
    pub login: Arc<String>,
}

fn upstream_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("authgate");
        let requests = Family::<RouteStatus, Counter>::default();
        let auth_failures = Family::<Reason, Counter>::default();
        let upstream_seconds = Family::<Route, Histogram>::new_with_constructor(upstream_histogram as fn() -> Histogram);
        let logins = Family::<Outcome, Counter>::default();
        let rate_limited = Family::<Route, Counter>::default();
        let open_connections = Gauge::<i64, AtomicI64>::default();
        let parked_connections = Gauge::<i64, AtomicI64>::default();
        let store_errors = Counter::default();
        registry.register("requests", "Requests answered, by route and status", requests.clone());
        registry.register("auth_failures", "Requests refused by authentication, by reason", auth_failures.clone());
        registry.register("upstream_duration_seconds", "Time to the upstream's response head, by route", upstream_seconds.clone());
        registry.register("login_attempts", "Token endpoint grants, by outcome", logins.clone());
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by route (\"login\" for the login limits)",
            rate_limited.clone(),
        );
        registry.register("open_connections", "Client connections open now", open_connections.clone());
        registry.register(
            "parked_connections",
            "Idle HTTP/1 connections parked between requests, holding no HTTP buffers",
            parked_connections.clone(),
        );
        registry.register("store_errors", "Store operations that failed", store_errors.clone());
        Metrics {
            registry,
            requests,
            auth_failures,
            upstream_seconds,
            logins,
            rate_limited,
            open_connections,
            parked_connections,
            store_errors,
            none: Arc::new("none".into()),
            login: Arc::new("login".into()),
        }
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn request(&self, route: &Arc<String>, status: u16) {
        self.requests.get_or_create(&RouteStatus { route: route.clone(), status }).inc();
    }

    pub fn upstream(&self, route: &Arc<String>, seconds: f64) {
        self.upstream_seconds.get_or_create(&Route { route: route.clone() }).observe(seconds);
    }

    pub fn rate_limited(&self, route: &Arc<String>) {
        self.rate_limited.get_or_create(&Route { route: route.clone() }).inc();
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&Reason { reason }).inc();
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn parked(self: &Arc<Self>) -> ParkedGuard {
        self.parked_connections.inc();
        ParkedGuard(self.clone())
    }

    /// +1 open connection until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.open_connections.inc();
        ConnectionGuard(self.clone())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// +1 parked connection until dropped.
pub struct ParkedGuard(Arc<Metrics>);

impl Drop for ParkedGuard {
    fn drop(&mut self) {
        self.0.parked_connections.dec();
    }
}

pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}
