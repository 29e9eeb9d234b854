//! Checkpoints of the budget stage: a [`PartitionLedger`] with the input offset it
//! reflects, kept on the log itself so any instance can resume any partition.
//!
//! The checkpoint of subject-updates partition `p` goes to partition `p` of the
//! checkpoints topic as chunk records (the ledger's JSON cut into pieces of at most
//! [`CHUNK_BYTES`], keyed `chunk:<id>:<n>`) followed by one manifest (keyed
//! `manifest:<id>`) naming the chunks' offsets and the ledger's `next_offset`. A
//! checkpoint counts once its manifest is acknowledged; chunks without a manifest (a
//! crash mid-write) are ignored.
//!
//! [`load`] reads the partition backwards from its end and takes, among the manifests of
//! the newest stretch that has any, the one with the highest `next_offset`. Because the
//! ledger is a deterministic function of the input, every checkpoint is a valid state
//! whichever instance wrote it; a late write from an instance that has lost the
//! partition is at worst an older valid state, which the highest-offset rule passes over.

use serde::{Deserialize, Serialize};
use tollgate_eventlog::{EventLog, LogError, Record};
use tollgate_schemas::topics::PROCESSOR_CHECKPOINTS;

use crate::ledger::PartitionLedger;

/// Largest chunk of a checkpoint, well under Kafka's default 1 MiB message limit.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// Records read per step when looking backwards for manifests.
const SCAN_STEP: i64 = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    checkpoint_id: uuid::Uuid,
    partition: i32,
    next_offset: i64,
    first_chunk_offset: i64,
    chunks: u32,
    bytes: u64,
    written_unix_micros: i64,
    instance: String,
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("checkpoint {checkpoint_id} of partition {partition}: {problem}")]
    Corrupt { checkpoint_id: uuid::Uuid, partition: i32, problem: String },
    #[error("encoding a checkpoint: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Writes `ledger` as the checkpoint of `partition` and waits until it is durable.
/// Returns the number of bytes written.
pub async fn write(
    log: &dyn EventLog,
    partition: i32,
    ledger: &PartitionLedger,
    instance: &str,
) -> Result<u64, CheckpointError> {
    let bytes = serde_json::to_vec(ledger)?;
    let checkpoint_id = uuid::Uuid::now_v7();
    let mut pending = Vec::new();
    for (index, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
        let key = format!("chunk:{checkpoint_id}:{index}");
        pending.push(publish(log, partition, key.as_bytes(), chunk).await?);
    }
    let mut first_chunk_offset = None;
    for ack in pending {
        let ack = ack.await?;
        first_chunk_offset = Some(first_chunk_offset.map_or(ack.offset, |first: i64| first.min(ack.offset)));
    }
    let manifest = Manifest {
        checkpoint_id,
        partition,
        next_offset: ledger.next_offset,
        first_chunk_offset: first_chunk_offset.unwrap_or(0),
        chunks: u32::try_from(bytes.len().div_ceil(CHUNK_BYTES)).unwrap_or(u32::MAX),
        bytes: bytes.len() as u64,
        written_unix_micros: tollgate_schemas::now_unix_micros(),
        instance: instance.to_owned(),
    };
    let key = format!("manifest:{checkpoint_id}");
    publish(log, partition, key.as_bytes(), &serde_json::to_vec(&manifest)?).await?.await?;
    Ok(manifest.bytes)
}

/// Publishes into `partition`, waiting out a full local queue.
async fn publish(
    log: &dyn EventLog,
    partition: i32,
    key: &[u8],
    payload: &[u8],
) -> Result<tollgate_eventlog::PendingAck, LogError> {
    let mut backoff = std::time::Duration::from_millis(1);
    loop {
        match log.publish_to(PROCESSOR_CHECKPOINTS, partition, key, payload) {
            Err(LogError::QueueFull) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The best checkpoint of `partition`, if any was written.
pub async fn load(log: &dyn EventLog, partition: i32) -> Result<Option<PartitionLedger>, CheckpointError> {
    let end = log
        .end_offsets(PROCESSOR_CHECKPOINTS)
        .await?
        .into_iter()
        .find(|(number, _)| *number == partition)
        .map_or(0, |(_, end)| end);
    let mut upper = end;
    while upper > 0 {
        let lower = (upper - SCAN_STEP).max(0);
        let records =
            log.read(PROCESSOR_CHECKPOINTS, partition, lower, usize::try_from(upper - lower).unwrap_or(0)).await?;
        let mut manifests: Vec<Manifest> = records
            .iter()
            .filter(|record| record.key.as_deref().is_some_and(|key| key.starts_with(b"manifest:")))
            .filter_map(|record| serde_json::from_slice::<Manifest>(&record.payload).ok())
            .filter(|manifest| manifest.partition == partition)
            .collect();
        // Highest next_offset first; the newest of equals first.
        manifests.sort_by(|a, b| b.next_offset.cmp(&a.next_offset).then(b.checkpoint_id.cmp(&a.checkpoint_id)));
        for manifest in &manifests {
            match read_checkpoint(log, manifest).await {
                Ok(ledger) => return Ok(Some(ledger)),
                Err(error) => tracing::warn!(%error, partition, "checkpoint unusable; trying an older one"),
            }
        }
        upper = lower;
    }
    Ok(None)
}

async fn read_checkpoint(log: &dyn EventLog, manifest: &Manifest) -> Result<PartitionLedger, CheckpointError> {
    let corrupt = |problem: String| CheckpointError::Corrupt {
        checkpoint_id: manifest.checkpoint_id,
        partition: manifest.partition,
        problem,
    };
    let mut records: Vec<Record> = Vec::new();
    let wanted = usize::try_from(manifest.chunks).unwrap_or(0);
    // Other writers' records may sit between the chunks: read on until all are found.
    let mut from = manifest.first_chunk_offset;
    let prefix = format!("chunk:{}:", manifest.checkpoint_id);
    while records.len() < wanted {
        let batch = log.read(PROCESSOR_CHECKPOINTS, manifest.partition, from, 64).await?;
        let Some(last) = batch.last() else {
            return Err(corrupt(format!("only {} of {wanted} chunks found", records.len())));
        };
        from = last.offset + 1;
        records.extend(
            batch
                .into_iter()
                .filter(|record| record.key.as_deref().is_some_and(|key| key.starts_with(prefix.as_bytes()))),
        );
    }
    let mut bytes = Vec::with_capacity(usize::try_from(manifest.bytes).unwrap_or(0));
    for (index, record) in records.iter().take(wanted).enumerate() {
        let expected = format!("{prefix}{index}");
        if record.key.as_deref() != Some(expected.as_bytes()) {
            return Err(corrupt(format!("chunk {index} is missing or out of order")));
        }
        bytes.extend_from_slice(&record.payload);
    }
    if bytes.len() as u64 != manifest.bytes {
        return Err(corrupt(format!("{} bytes instead of {}", bytes.len(), manifest.bytes)));
    }
    let ledger: PartitionLedger = serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
    if ledger.next_offset != manifest.next_offset {
        return Err(corrupt("the state does not match its manifest".to_owned()));
    }
    Ok(ledger)
}
