//! The budget stage: subject updates in; quota decisions and spend-anomaly violations out.
//!
//! A consumer group (`<prefix>-budgets`) over the subject-updates topic. Each owned
//! partition has a [`PartitionLedger`] (see [`crate::ledger`] for what it decides and
//! why its outputs have stable identities). The stage keeps its input offsets with its
//! state rather than in the group:
//!
//! - When a partition is assigned (a start, a rebalance), its ledger is loaded from the
//!   latest checkpoint ([`crate::checkpoint`]) and the member seeks to the ledger's
//!   `next_offset`; without a checkpoint it starts from offset 0 and rebuilds the state
//!   by replaying the retained log. A partition this member kept across a rebalance keeps
//!   its in-memory ledger and seeks to its `next_offset`.
//! - Records of a partition are applied only from the ledger's `next_offset` on, so a
//!   record fetched before a seek took effect is never applied twice.
//! - After each batch the outputs are published and acknowledged; then, every
//!   `checkpoint_interval`, each changed partition's ledger is checkpointed and the group
//!   offset committed (for lag tooling; the checkpoint is what counts). An unchanged
//!   partition is checkpointed again every six hours, so its newest checkpoint is always
//!   within the checkpoints topic's retention.
//!
//! A crash anywhere loses only the work since the last checkpoint, which is redone from
//! the log with the same results: decisions carry the same versions and ids, violations
//! the same ids.
//!
//! Once a second the stage also publishes a decision for each subject whose budget window
//! (a UTC day or month) ended with no update since ([`PartitionLedger::rollovers`]), so
//! gateways see the new window's state without waiting for the subject's next call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tollgate_eventlog::{EventLog, LogError, Position, Subscription};
use tollgate_schemas::SubjectUpdate;
use tollgate_schemas::topics::SUBJECT_UPDATES;

use crate::config::ProcessorConfig;
use crate::ledger::{Output, PartitionLedger};
use crate::metrics::{DeadLetterLabels, PartitionLabels, ProcessorMetrics, RuleLabels, StageLabels, StateLabels};
use crate::pricing::{reason_label, report_lag};
use crate::stage::{Outputs, StageError, next_batch, send_dead_letter};

const STAGE: &str = "budgets";

/// A partition this member owns.
#[derive(Debug)]
struct Owned {
    ledger: PartitionLedger,
    /// Set after a seek until the record at `ledger.next_offset` arrives: anything else
    /// from this partition was fetched before the seek and is skipped.
    awaiting_seek: bool,
    /// Applied updates not yet in a checkpoint.
    dirty: bool,
    checkpointed_at: Instant,
}

/// Runs the budget stage until `shutdown` turns true or the log fails.
pub async fn run(
    log: Arc<dyn EventLog>,
    metrics: Arc<ProcessorMetrics>,
    config: ProcessorConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StageError> {
    let group = config.budgets_group();
    let mut subscription = log.subscribe(&group, &[SUBJECT_UPDATES]).await?;
    let mut owned: BTreeMap<i32, Owned> = BTreeMap::new();
    let mut generation = None;
    let mut lag_checked = Instant::now();
    let mut rollovers_checked = Instant::now();
    // The rollover decisions already published, by subject key: version.
    let mut rolled_over: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let idle = (config.checkpoint_interval / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let batch = next_batch(subscription.as_mut(), config.batch_max_records, &mut shutdown, idle).await?;
        if generation != Some(subscription.generation()) || batch.is_none() {
            generation = Some(subscription.generation());
            reconcile(log.as_ref(), subscription.as_mut(), &mut owned, &config.instance_id).await?;
        }
        let Some(batch) = batch else {
            // Shutting down: keep what was done.
            checkpoint(log.as_ref(), subscription.as_mut(), &mut owned, &metrics, &config, Duration::ZERO).await?;
            return Ok(());
        };
        let started = Instant::now();
        let mut outputs = Outputs::default();
        let now = tollgate_schemas::now_unix_micros();
        for record in &batch {
            let Some(partition) = owned.get_mut(&record.partition) else { continue };
            if partition.awaiting_seek {
                if record.offset != partition.ledger.next_offset {
                    continue;
                }
                partition.awaiting_seek = false;
            }
            if record.offset < partition.ledger.next_offset {
                continue;
            }
            partition.dirty = true;
            let update = match tollgate_schemas::decode::<SubjectUpdate>(&record.payload) {
                Ok(update) => update,
                Err(error) => {
                    partition.ledger.skip(record.offset);
                    let reason = error.dead_letter_reason();
                    let labels = DeadLetterLabels { stage: STAGE, reason: reason_label(reason) };
                    metrics.dead_letters.get_or_create(&labels).inc();
                    send_dead_letter(&mut outputs, log.as_ref(), record, &group, reason, error.to_string()).await?;
                    continue;
                }
            };
            for output in partition.ledger.apply(record.offset, &update, &config.anomaly, now) {
                match output {
                    Output::Decision(decision) => {
                        metrics.decisions.get_or_create(&StateLabels { state: decision.state.as_str() }).inc();
                        outputs.event(log.as_ref(), &decision).await?;
                    }
                    Output::Violation(violation) => {
                        metrics.violations.get_or_create(&RuleLabels { rule: violation.rule_id.clone() }).inc();
                        outputs.event(log.as_ref(), &violation).await?;
                    }
                }
            }
        }
        if rollovers_checked.elapsed() >= ROLLOVER_CHECK {
            rollovers_checked = Instant::now();
            for partition in owned.values() {
                for decision in partition.ledger.rollovers(now) {
                    let key = decision.subject.key();
                    if rolled_over.get(&key) == Some(&decision.version) {
                        continue;
                    }
                    metrics.decisions.get_or_create(&StateLabels { state: decision.state.as_str() }).inc();
                    outputs.event(log.as_ref(), &decision).await?;
                    rolled_over.insert(key, decision.version);
                }
            }
        }
        outputs.acknowledged().await?;
        if !batch.is_empty() {
            let labels = StageLabels { stage: STAGE };
            metrics.records.get_or_create(&labels).inc_by(batch.len() as u64);
            metrics.batch_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        }
        checkpoint(log.as_ref(), subscription.as_mut(), &mut owned, &metrics, &config, config.checkpoint_interval)
            .await?;
        if lag_checked.elapsed() >= Duration::from_secs(5) {
            lag_checked = Instant::now();
            let positions = owned
                .iter()
                .map(|(partition, owned)| ((SUBJECT_UPDATES.to_owned(), *partition), owned.ledger.next_offset))
                .collect();
            report_lag(log.as_ref(), &metrics, subscription.assignment(), &positions).await;
        }
    }
}

/// How often a partition that has not changed is checkpointed anyway, so its newest
/// checkpoint never ages out of the checkpoints topic's retention.
const CHECKPOINT_REFRESH: Duration = Duration::from_secs(6 * 3600);

/// How often the stage looks for budget windows that ended without an update.
const ROLLOVER_CHECK: Duration = Duration::from_secs(1);

/// Brings the owned partitions in line with the assignment after a rebalance.
async fn reconcile(
    log: &dyn EventLog,
    subscription: &mut dyn Subscription,
    owned: &mut BTreeMap<i32, Owned>,
    instance: &str,
) -> Result<(), StageError> {
    let assigned: Vec<i32> = subscription
        .assignment()
        .into_iter()
        .filter(|(topic, _)| topic == SUBJECT_UPDATES)
        .map(|(_, partition)| partition)
        .collect();
    let revoked: Vec<i32> = owned.keys().copied().filter(|partition| !assigned.contains(partition)).collect();
    for partition in revoked {
        if let Some(lost) = owned.remove(&partition)
            && lost.dirty
        {
            // Handing over: a checkpoint saves the new owner a replay. Harmless if late.
            if let Err(error) = crate::checkpoint::write(log, partition, &lost.ledger, instance).await {
                tracing::warn!(%error, partition, "checkpoint of a revoked partition failed");
            }
        }
        tracing::info!(partition, "subject-updates partition revoked");
    }
    for partition in assigned {
        if let std::collections::btree_map::Entry::Vacant(slot) = owned.entry(partition) {
            let ledger = crate::checkpoint::load(log, partition).await?.unwrap_or_default();
            tracing::info!(partition, next_offset = ledger.next_offset, "subject-updates partition assigned");
            slot.insert(Owned { ledger, awaiting_seek: true, dirty: false, checkpointed_at: Instant::now() });
        }
        if let Some(state) = owned.get_mut(&partition) {
            seek(subscription, partition, state.ledger.next_offset).await?;
            state.awaiting_seek = true;
        }
    }
    Ok(())
}

/// Seeks, retrying briefly: right after an assignment the fetcher may not be ready.
async fn seek(subscription: &mut dyn Subscription, partition: i32, offset: i64) -> Result<(), LogError> {
    let mut attempt = 0;
    loop {
        match subscription.seek(SUBJECT_UPDATES, partition, offset).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < 20 => {
                attempt += 1;
                tracing::debug!(%error, partition, offset, "seek failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Checkpoints every changed partition whose last checkpoint is older than `interval`.
async fn checkpoint(
    log: &dyn EventLog,
    subscription: &mut dyn Subscription,
    owned: &mut BTreeMap<i32, Owned>,
    metrics: &ProcessorMetrics,
    config: &ProcessorConfig,
    interval: Duration,
) -> Result<(), StageError> {
    let mut committed = Vec::new();
    for (partition, state) in owned.iter_mut() {
        metrics
            .checkpoint_age_seconds
            .get_or_create(&PartitionLabels { partition: *partition })
            .set(i64::try_from(state.checkpointed_at.elapsed().as_secs()).unwrap_or(i64::MAX));
        let due = if state.dirty { interval } else { CHECKPOINT_REFRESH };
        if state.checkpointed_at.elapsed() < due {
            continue;
        }
        crate::checkpoint::write(log, *partition, &state.ledger, &config.instance_id).await?;
        metrics.checkpoints.inc();
        state.dirty = false;
        state.checkpointed_at = Instant::now();
        committed.push(Position {
            topic: SUBJECT_UPDATES.to_owned(),
            partition: *partition,
            next_offset: state.ledger.next_offset,
        });
    }
    match subscription.commit(&committed).await {
        // Lost in a rebalance: the checkpoint is what counts; the new owner seeks.
        Ok(()) | Err(LogError::NotAssigned { .. }) => Ok(()),
        Err(error) => {
            tracing::debug!(%error, "committing budget-stage offsets failed; the checkpoints stand");
            Ok(())
        }
    }
}
