//! What both stages share: reading in batches, publishing outputs and waiting for them,
//! dead letters with stable ids, and the error that makes a stage start over.

use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::watch;
use tollgate_eventlog::{EventLog, LogError, PendingAck, Record, Subscription};
use tollgate_schemas::topics::Keyed;
use tollgate_schemas::{DeadLetter, DeadLetterReason, Event, SourceOffset, derived_id};

/// Why a stage stopped. The stage is started again from its committed or checkpointed
/// position, so nothing is lost; outputs it had published are published again and
/// dropped downstream by their stable ids.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error(transparent)]
    Archive(#[from] tollgate_archive::ArchiveError),
}

/// Waits for a first record, then takes every record already available, up to `max`.
/// `None` when `shutdown` turns true; an empty batch when `idle` passes with no record.
pub async fn next_batch(
    subscription: &mut dyn Subscription,
    max: usize,
    shutdown: &mut watch::Receiver<bool>,
    idle: Duration,
) -> Result<Option<Vec<Record>>, LogError> {
    if *shutdown.borrow() {
        return Ok(None);
    }
    let first = tokio::select! {
        record = subscription.next() => record?,
        _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
        () = tokio::time::sleep(idle) => return Ok(Some(Vec::new())),
    };
    let mut batch = Vec::with_capacity(max.min(4096));
    batch.push(first);
    while batch.len() < max {
        // `next` is cancel-safe: a record not ready now stays for the next batch.
        match subscription.next().now_or_never() {
            Some(record) => batch.push(record?),
            None => break,
        }
    }
    Ok(Some(batch))
}

/// Outputs of one batch: enqueued as they are made, awaited together.
#[derive(Debug, Default)]
pub struct Outputs {
    pending: Vec<PendingAck>,
}

impl Outputs {
    /// Enqueues `event` on its topic under its key.
    pub async fn event<E: Event + Keyed>(&mut self, log: &dyn EventLog, event: &E) -> Result<(), LogError> {
        match tollgate_schemas::encode(event) {
            Ok(payload) => self.raw(log, E::TOPIC, event.message_key().as_bytes(), &payload).await,
            // Only a broken invariant inside a governance value can fail to encode.
            Err(error) => {
                tracing::error!(%error, "an output could not be encoded; it is skipped");
                Ok(())
            }
        }
    }

    /// Enqueues raw bytes, waiting out a full local queue.
    pub async fn raw(&mut self, log: &dyn EventLog, topic: &str, key: &[u8], payload: &[u8]) -> Result<(), LogError> {
        let mut backoff = Duration::from_millis(1);
        loop {
            match log.publish(topic, key, payload) {
                Ok(pending) => {
                    self.pending.push(pending);
                    return Ok(());
                }
                Err(LogError::QueueFull) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Waits until every output is durable. The first failure is returned.
    ///
    /// The acknowledgements are awaited in publish order, one after the other: they
    /// arrive in about that order, so by the time the first is in most of the others
    /// are too and each costs one poll (a `join_all` over thousands of them wakes each
    /// one and schedules it through `FuturesUnordered`'s ready queue).
    pub async fn acknowledged(self) -> Result<usize, LogError> {
        let count = self.pending.len();
        for pending in self.pending {
            pending.await?;
        }
        Ok(count)
    }
}

/// The most of a record a dead letter keeps when the record's output was too large for
/// the log (before base64).
const TOO_LARGE_KEPT_BYTES: usize = 64 * 1024;

/// A dead letter for `record`, with an id derived from where the record was, so a record
/// processed twice is dead-lettered once. For [`DeadLetterReason::TooLarge`] it keeps a
/// reduced form of the record (see [`DeadLetter::too_large`]).
pub fn dead_letter(record: &Record, group: &str, reason: DeadLetterReason, error: String) -> DeadLetter {
    let source = SourceOffset { topic: record.topic.clone(), partition: record.partition, offset: record.offset };
    let key = record.key.as_deref();
    let mut letter = match reason {
        DeadLetterReason::TooLarge => {
            DeadLetter::too_large(source, group, key, &record.payload, error, TOO_LARGE_KEPT_BYTES)
        }
        _ => DeadLetter::new(source, group, key, &record.payload, reason, error),
    };
    letter.id = derived_id(
        record.timestamp_millis.saturating_mul(1000),
        &[
            b"dead-letter",
            group.as_bytes(),
            record.topic.as_bytes(),
            &record.partition.to_be_bytes(),
            &record.offset.to_be_bytes(),
        ],
    );
    letter
}

/// Publishes a dead letter for `record` on the dead-letter topic.
pub async fn send_dead_letter(
    outputs: &mut Outputs,
    log: &dyn EventLog,
    record: &Record,
    group: &str,
    reason: DeadLetterReason,
    error: String,
) -> Result<(), LogError> {
    tracing::warn!(
        topic = %record.topic, partition = record.partition, offset = record.offset, %error,
        "record sent to the dead-letter topic"
    );
    let letter = dead_letter(record, group, reason, error);
    outputs.event(log, &letter).await
}
