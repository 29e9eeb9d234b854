//! The gateway's Prometheus metrics, served at `/metrics` in the OpenMetrics text format.
//!
//! Every metric is declared here, once. Labels stay low-cardinality: route templates,
//! outcome classes, configured upstream names; never keys, users or models.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `tollgate_gateway_requests_total` | counter | `route`, `outcome` (an `OutcomeStatus`, or `recording_unavailable` for a request refused because its event could not be kept) |
//! | `tollgate_gateway_request_duration_seconds` | histogram | `route` |
//! | `tollgate_gateway_unauthenticated_requests_total` | counter | `route` |
//! | `tollgate_gateway_upstream_attempts_total` | counter | `upstream`, `result` |
//! | `tollgate_gateway_events_published_total` | counter | |
//! | `tollgate_gateway_events_acknowledged_total` | counter | |
//! | `tollgate_gateway_events_spooled_total` | counter | |
//! | `tollgate_gateway_events_drained_total` | counter | |
//! | `tollgate_gateway_events_dropped_total` | counter | |
//! | `tollgate_gateway_events_dead_lettered_total` | counter | |
//! | `tollgate_gateway_spool_events` | gauge | |
//! | `tollgate_gateway_spooling` | gauge (0/1) | |
//! | `tollgate_gateway_quota_decisions_applied_total` | counter | |
//! | `tollgate_gateway_quota_decisions_rejected_total` | counter | |
//! | `tollgate_gateway_circuit_breaker_open` | gauge (0/1) | `upstream` |
//! | `tollgate_gateway_connections_accepted_total` | counter | `thread` (a serving thread's index, see [`crate::serve`]) |

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::breaker::BreakerState;
use crate::quota::QuotaBook;
use crate::recorder::Recorder;
use crate::upstream::RouteTable;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub upstream: String,
    /// `ok`, `client_error`, `rate_limited`, `server_error`, `timeout`, `unreachable`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThreadLabels {
    /// The serving thread's index, `0..server.threads`.
    pub thread: String,
}

/// The instruments handlers update, and the registry `/metrics` encodes.
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram>,
    pub unauthenticated: Family<RouteLabels, Counter>,
    pub upstream_attempts: Family<AttemptLabels, Counter>,
    pub connections: Family<ThreadLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    // 100 us to about 105 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

impl GatewayMetrics {
    pub fn new(recorder: Recorder, quota: Arc<QuotaBook>, routes: Arc<RouteTable>) -> Self {
        let mut registry = Registry::with_prefix("tollgate_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests on provider routes by route and recorded outcome", requests.clone());
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to the last byte of its response (streams included)",
            duration.clone(),
        );
        let unauthenticated = Family::<RouteLabels, Counter>::default();
        registry.register(
            "unauthenticated_requests",
            "Requests refused for a missing, unknown or revoked key (not recorded as interactions)",
            unauthenticated.clone(),
        );
        let upstream_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register("upstream_attempts", "Attempts sent to each upstream, by result", upstream_attempts.clone());
        let connections = Family::<ThreadLabels, Counter>::default();
        registry.register(
            "connections_accepted",
            "Client connections accepted, by the serving thread that serves them",
            connections.clone(),
        );
        registry.register_collector(Box::new(StateCollector { recorder, quota, routes }));
        GatewayMetrics { registry, requests, duration, unauthenticated, upstream_attempts, connections }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        text
    }
}

/// Reads the recorder's, the quota book's and the breakers' state at scrape time.
#[derive(Debug)]
struct StateCollector {
    recorder: Recorder,
    quota: Arc<QuotaBook>,
    routes: Arc<RouteTable>,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.recorder.stats();
        let (applied, rejected) = self.quota.counts();
        let counters = [
            ("events_published", "Events handed to the log directly", stats.published),
            ("events_acknowledged", "Directly published events the log acknowledged", stats.acknowledged),
            ("events_spooled", "Events written to the local spool while the log was unreachable", stats.spooled),
            ("events_drained", "Spooled events forwarded to the log", stats.drained),
            ("events_dropped", "Events lost (no spool, full spool failing open, or encoding fault)", stats.dropped),
            (
                "events_dead_lettered",
                "Events larger than the log accepts, published to the dead-letter topic in a reduced form",
                stats.dead_lettered,
            ),
            ("quota_decisions_applied", "Quota decisions applied", applied),
            ("quota_decisions_rejected", "Quota decisions ignored: undecodable or not newer", rejected),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let held = i64::try_from(stats.spooled.saturating_sub(stats.drained)).unwrap_or(i64::MAX);
        let gauges = [
            ("spool_events", "Events in the local spool not yet forwarded", held),
            ("spooling", "1 while new events go to the spool", i64::from(stats.spooling)),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        let mut breakers = encoder.encode_descriptor(
            "circuit_breaker_open",
            "1 while an upstream's circuit breaker keeps traffic away",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let routes = self.routes.load();
        for upstream in routes.upstreams.iter() {
            let open = i64::from(upstream.breaker.state() != BreakerState::Closed);
            let labels = [("upstream", upstream.config.name.as_str())];
            ConstGauge::new(open).encode(breakers.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
