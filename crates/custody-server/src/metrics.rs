//! Prometheus metrics: requests, latency, decisions by outcome, audit failures.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use custody_core::Action;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    action: &'static str,
    outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The server's metrics, rendered in the Prometheus text format at `/metrics`.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    decisions: Family<DecisionLabels, Counter>,
    audit_failures: Counter,
    witness_cosigned_size: Gauge,
    witness_quorum_failures: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("custody");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let decisions = Family::<DecisionLabels, Counter>::default();
        let audit_failures = Counter::default();
        registry.register("http_requests", "HTTP requests by route, method and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by route", latency.clone());
        registry.register("decisions", "Per-data-class policy decisions by action and outcome", decisions.clone());
        registry.register(
            "audit_failures",
            "Requests failed closed because the audit sink failed",
            audit_failures.clone(),
        );
        let witness_cosigned_size = Gauge::default();
        let witness_quorum_failures = Counter::default();
        registry.register(
            "witness_cosigned_size",
            "Tree size of the latest checkpoint published with a witness quorum",
            witness_cosigned_size.clone(),
        );
        registry.register(
            "witness_quorum_failures",
            "Checkpoints offered to the witnesses that did not reach the quorum",
            witness_quorum_failures.clone(),
        );
        Self { registry, requests, latency, decisions, audit_failures, witness_cosigned_size, witness_quorum_failures }
    }

    /// Counts one finished request.
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { route: route.to_string(), method: method.to_string(), status })
            .inc();
        self.latency.get_or_create(&RouteLabels { route: route.to_string() }).observe(seconds);
    }

    /// Counts one class decision.
    pub fn decision(&self, action: Action, permit: bool) {
        let outcome = if permit { "permit" } else { "deny" };
        self.decisions.get_or_create(&DecisionLabels { action: action.as_str(), outcome }).inc();
    }

    /// Counts a request failed closed by the audit sink.
    pub fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    /// Records the size of the latest checkpoint published with a witness quorum.
    pub fn witness_cosigned_size(&self, size: u64) {
        self.witness_cosigned_size.set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// Counts a checkpoint that did not reach the witness quorum.
    pub fn witness_quorum_failure(&self) {
        self.witness_quorum_failures.inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
