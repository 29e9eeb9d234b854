//! The ClickHouse stage: priced interactions, policy violations, quota decisions and
//! governance changes inserted into ClickHouse ([`crate::sink::clickhouse`]), for the query
//! API's ClickHouse backend.
//!
//! A consumer group (`<prefix>-clickhouse`) over the four topics, in the layout of
//! [`tollgate_schemas::archive::TABLES`]. Records are gathered across partitions and
//! inserted, one `INSERT` per table, once [`WarehouseConfig::batch_max_rows`] are waiting
//! or [`WarehouseConfig::flush_interval`] has passed, at a rebalance and at shutdown. The
//! group offsets are committed only after the inserts succeed.
//!
//! A ClickHouse outage stops the stage reading: the insert is retried with a growing
//! pause (up to ten seconds) until it succeeds, and nothing is committed meanwhile, so
//! nothing is lost. Every table is a `ReplacingMergeTree` keyed on the record's id and read
//! with `FINAL`, so rows inserted again after a crash or a rebalance, and copies the
//! pricing stage published again, are seen once. A record that does not decode goes to the
//! dead-letter topic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tollgate_eventlog::{EventLog, Position, Record};
use tollgate_schemas::archive::{self, Table};
use tollgate_schemas::arrow::{JsonRow, StoredRecord};
use tollgate_schemas::{
    AccessEvent, DeadLetterReason, Event, GovernanceChange, PolicyViolation, PricedInteraction, QuotaDecision,
    UpstreamHealth,
};

use crate::config::{ProcessorConfig, WarehouseConfig};
use crate::metrics::{DeadLetterLabels, ProcessorMetrics, StageLabels, TableLabels};
use crate::pricing::reason_label;
use crate::sink::clickhouse::{ClickHouseSink, PreparedRows};
use crate::stage::{Outputs, StageError, next_batch, send_dead_letter};

const STAGE: &str = "clickhouse";

/// Runs the ClickHouse stage until `shutdown` turns true or the log fails.
pub async fn run(
    log: Arc<dyn EventLog>,
    sink: ClickHouseSink,
    metrics: Arc<ProcessorMetrics>,
    config: ProcessorConfig,
    settings: WarehouseConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StageError> {
    if !retry(&metrics, &mut shutdown, "migrating the ClickHouse schema", || sink.migrate()).await {
        return Ok(());
    }
    let group = config.clickhouse_group();
    let topics: Vec<&str> = archive::TABLES.iter().map(|table| table.topic).collect();
    let mut subscription = log.subscribe(&group, &topics).await?;
    let mut pending: Vec<Record> = Vec::new();
    let mut opened = Instant::now();
    let mut generation = subscription.generation();
    let idle = (settings.flush_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let batch = next_batch(subscription.as_mut(), config.batch_max_records, &mut shutdown, idle).await?;
        let rebalanced = generation != subscription.generation();
        generation = subscription.generation();
        let stopping = batch.is_none();
        if let Some(batch) = batch {
            metrics.records.get_or_create(&StageLabels { stage: STAGE }).inc_by(batch.len() as u64);
            if pending.is_empty() {
                opened = Instant::now();
            }
            pending.extend(batch);
        }
        let due = pending.len() >= settings.batch_max_rows
            || (!pending.is_empty() && opened.elapsed() >= settings.flush_interval);
        if due || stopping || rebalanced {
            let records = std::mem::take(&mut pending);
            let inserted = flush(log.as_ref(), &sink, &metrics, &group, &records, &mut shutdown).await?;
            if inserted {
                let assigned = subscription.assignment();
                let mut positions: BTreeMap<(String, i32), Position> = BTreeMap::new();
                for record in &records {
                    positions.insert((record.topic.clone(), record.partition), record.next_position());
                }
                positions.retain(|key, _| assigned.contains(key));
                let positions: Vec<Position> = positions.into_values().collect();
                if let Err(error) = subscription.commit(&positions).await {
                    tracing::debug!(%error, "committing ClickHouse-stage offsets failed; those rows are inserted again");
                }
            }
        }
        if stopping {
            return Ok(());
        }
    }
}

/// Decodes `records` and inserts them, table by table, retrying through an outage.
/// `false` if shutdown came first (nothing may be committed).
async fn flush(
    log: &dyn EventLog,
    sink: &ClickHouseSink,
    metrics: &ProcessorMetrics,
    group: &str,
    records: &[Record],
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, StageError> {
    let mut by_table: BTreeMap<&'static str, Vec<JsonRow>> = BTreeMap::new();
    let mut outputs = Outputs::default();
    for record in records {
        let Some(table) = Table::for_topic(&record.topic) else { continue };
        let row = match table {
            archive::PRICED_INTERACTIONS => json_row::<PricedInteraction>(record),
            archive::POLICY_VIOLATIONS => json_row::<PolicyViolation>(record),
            archive::QUOTA_DECISIONS => json_row::<QuotaDecision>(record),
            archive::GOVERNANCE_CHANGES => json_row::<GovernanceChange>(record),
            archive::ACCESS_EVENTS => json_row::<AccessEvent>(record),
            // archive::UPSTREAM_HEALTH, the last of archive::TABLES.
            _ => json_row::<UpstreamHealth>(record),
        };
        match row {
            Ok(row) => by_table.entry(table.name).or_default().push(row),
            Err((reason, error)) => {
                metrics
                    .dead_letters
                    .get_or_create(&DeadLetterLabels { stage: STAGE, reason: reason_label(reason) })
                    .inc();
                send_dead_letter(&mut outputs, log, record, group, reason, error).await?;
            }
        }
    }
    outputs.acknowledged().await?;
    for (table, rows) in by_table {
        let prepared = PreparedRows::new(table, rows)?;
        let what = format!("inserting into ClickHouse table {table}");
        if !retry(metrics, shutdown, &what, || sink.insert_prepared(&prepared)).await {
            return Ok(false);
        }
        metrics.clickhouse_rows.get_or_create(&TableLabels { table }).inc_by(prepared.len() as u64);
    }
    Ok(true)
}

/// The flat row of `record` decoded as `E`, or why it cannot be stored.
fn json_row<E: Event + StoredRecord>(record: &Record) -> Result<JsonRow, (DeadLetterReason, String)> {
    let event = tollgate_schemas::decode::<E>(&record.payload)
        .map_err(|error| (error.dead_letter_reason(), error.to_string()))?;
    E::to_json_rows(std::slice::from_ref(&event))
        .map_err(|error| (DeadLetterReason::ProcessingFailed, format!("not storable: {error}")))?
        .pop()
        .ok_or((DeadLetterReason::ProcessingFailed, "no row".to_owned()))
}

/// Runs `attempt` until it succeeds, pausing longer after each failure (up to ten
/// seconds). `false` if shutdown came first.
async fn retry<F, Fut>(
    metrics: &ProcessorMetrics,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
    mut attempt: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), crate::sink::SinkError>>,
{
    let mut pause = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(()) => return true,
            Err(error) => {
                metrics.clickhouse_insert_failures.inc();
                tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "{what} failed; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|stop| *stop) => return false,
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}
