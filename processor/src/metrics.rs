//! The processor's Prometheus metrics, served at `/metrics` (OpenMetrics text) when
//! `processor.metrics_listen` is set, next to `/healthz`.
//!
//! Every metric is declared here, once. Labels stay low-cardinality: stage names,
//! partitions, decision states, rule ids (a fixed set), dead-letter reasons.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `tollgate_processor_records_total` | counter | `stage` (`pricing`, `budgets`, `archive`, `clickhouse`) |
//! | `tollgate_processor_dead_letters_total` | counter | `stage`, `reason` |
//! | `tollgate_processor_priced_interactions_total` | counter | `priced` (`true`, `false`) |
//! | `tollgate_processor_decisions_total` | counter | `state` |
//! | `tollgate_processor_violations_total` | counter | `rule` |
//! | `tollgate_processor_checkpoints_total` | counter | |
//! | `tollgate_processor_checkpoint_age_seconds` | gauge | `partition` (subject-updates partitions owned) |
//! | `tollgate_processor_lag_records` | gauge | `topic`, `partition` (records not yet processed, per owned partition) |
//! | `tollgate_processor_batch_seconds` | histogram | `stage` |
//! | `tollgate_processor_archived_rows_total` | counter | `table` |
//! | `tollgate_processor_archive_files_total` | counter | `table` (Parquet files written) |
//! | `tollgate_processor_archive_duplicates_total` | counter | `table` (replayed copies left out) |
//! | `tollgate_processor_clickhouse_rows_total` | counter | `table` (rows inserted) |
//! | `tollgate_processor_clickhouse_insert_failures_total` | counter | (inserts that failed and are retried) |

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub stage: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PricedLabels {
    pub priced: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub partition: i32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub topic: &'static str,
    pub partition: i32,
}

/// The instruments the stages update, and the registry `/metrics` encodes.
#[derive(Debug)]
pub struct ProcessorMetrics {
    registry: Registry,
    pub records: Family<StageLabels, Counter>,
    pub dead_letters: Family<DeadLetterLabels, Counter>,
    pub priced: Family<PricedLabels, Counter>,
    pub decisions: Family<StateLabels, Counter>,
    pub violations: Family<RuleLabels, Counter>,
    pub checkpoints: Counter,
    pub checkpoint_age_seconds: Family<PartitionLabels, Gauge>,
    pub lag: Family<LagLabels, Gauge>,
    pub batch_seconds: Family<StageLabels, Histogram>,
    pub archived_rows: Family<TableLabels, Counter>,
    pub archive_files: Family<TableLabels, Counter>,
    pub archive_duplicates: Family<TableLabels, Counter>,
    pub clickhouse_rows: Family<TableLabels, Counter>,
    pub clickhouse_insert_failures: Counter,
}

impl Default for ProcessorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tollgate_processor");
        let records = Family::<StageLabels, Counter>::default();
        registry.register("records", "Records consumed, by stage", records.clone());
        let dead_letters = Family::<DeadLetterLabels, Counter>::default();
        registry.register("dead_letters", "Records sent to the dead-letter topic", dead_letters.clone());
        let priced = Family::<PricedLabels, Counter>::default();
        registry.register(
            "priced_interactions",
            "Interactions priced (false: model not in the catalog)",
            priced.clone(),
        );
        let decisions = Family::<StateLabels, Counter>::default();
        registry.register("decisions", "Quota decisions published, by state", decisions.clone());
        let violations = Family::<RuleLabels, Counter>::default();
        registry.register("violations", "Policy violations published, by rule", violations.clone());
        let checkpoints = Counter::default();
        registry.register("checkpoints", "Budget-stage checkpoints written", checkpoints.clone());
        let checkpoint_age_seconds = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "checkpoint_age_seconds",
            "Seconds since the last checkpoint of an owned subject-updates partition",
            checkpoint_age_seconds.clone(),
        );
        let lag = Family::<LagLabels, Gauge>::default();
        registry.register("lag_records", "Records behind the end of an owned partition", lag.clone());
        let batch_seconds = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
        });
        registry.register(
            "batch_seconds",
            "Time to process a batch and have its outputs acknowledged",
            batch_seconds.clone(),
        );
        let archived_rows = Family::<TableLabels, Counter>::default();
        registry.register("archived_rows", "Rows written to the Parquet archive, by table", archived_rows.clone());
        let archive_files = Family::<TableLabels, Counter>::default();
        registry.register("archive_files", "Parquet files written to the archive, by table", archive_files.clone());
        let archive_duplicates = Family::<TableLabels, Counter>::default();
        registry.register(
            "archive_duplicates",
            "Copies of records published again after a crash, left out of the archive",
            archive_duplicates.clone(),
        );
        let clickhouse_rows = Family::<TableLabels, Counter>::default();
        registry.register("clickhouse_rows", "Rows inserted into ClickHouse, by table", clickhouse_rows.clone());
        let clickhouse_insert_failures = Counter::default();
        registry.register(
            "clickhouse_insert_failures",
            "ClickHouse inserts that failed and are being retried",
            clickhouse_insert_failures.clone(),
        );
        ProcessorMetrics {
            registry,
            records,
            dead_letters,
            priced,
            decisions,
            violations,
            checkpoints,
            checkpoint_age_seconds,
            lag,
            batch_seconds,
            archived_rows,
            archive_files,
            archive_duplicates,
            clickhouse_rows,
            clickhouse_insert_failures,
        }
    }
}

impl ProcessorMetrics {
    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            tracing::error!("encoding processor metrics failed");
        }
        text
    }
}

/// `/metrics` and `/healthz`.
pub fn router(metrics: Arc<ProcessorMetrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}
