//! The archive stage: priced interactions, policy violations, quota decisions and
//! governance changes written as Parquet files (zstd) to a directory or an object store,
//! in the layout of [`tollgate_schemas::archive`].
//!
//! A consumer group (`<prefix>-archive`) over the four topics. Records are gathered per
//! source partition and written when the partition's buffer reaches
//! [`ArchiveConfig::roll_max_records`] or [`ArchiveConfig::roll_max_bytes`], or has been
//! open for [`ArchiveConfig::roll_interval`], and at shutdown. A range is written in three
//! steps:
//!
//! 1. the partition's progress marker records the range as pending;
//! 2. one Parquet file per date in the range is written, named after the range;
//! 3. the marker moves past the range, and the group offset is committed.
//!
//! A member that takes over a partition starts from its marker. If the marker shows a
//! pending range, the first range written is cut at exactly the same offset, so its files
//! get the same names and replace whatever a crash left half done: a replay never adds a
//! duplicate file, whatever the batch sizes or timing were before. The group offset is
//! only ever committed up to the marker, so records before the marker's position that a
//! consumer reads again are skipped.
//!
//! A record that does not decode goes to the dead-letter topic and is left out of the
//! file. An object store that fails stops the stage, which starts again from the marker:
//! nothing is lost, and nothing is committed that is not stored.
//!
//! To rebuild an archive from the retained log, remove it and reset the consumer group
//! (or give the processor a new group prefix): the group's committed offsets would
//! otherwise skip what was archived before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parquet::file::metadata::KeyValue;
use tokio::sync::watch;
use tollgate_archive::transparency::{self, Hash, LogSigner, PartitionLog};
use tollgate_eventlog::{EventLog, Position, Record, Subscription};
use tollgate_schemas::archive::{self, Table};
use tollgate_schemas::arrow::StoredRecord;
use tollgate_schemas::{
    AccessEvent, DeadLetterReason, Event, GovernanceChange, PolicyViolation, PricedInteraction, QuotaDecision,
    SourceOffset, UpstreamHealth,
};

use crate::config::{ArchiveConfig, ProcessorConfig};
use crate::metrics::{DeadLetterLabels, ProcessorMetrics, StageLabels, TableLabels};
use crate::pricing::reason_label;
use crate::sink::SinkError;
use crate::stage::{Outputs, StageError, next_batch, send_dead_letter};

const STAGE: &str = "archive";

pub use tollgate_archive::{Archive, Progress};

/// Whether every partition of every archived topic is archived up to the end of the log
/// (each partition's marker at the log's end offset, with no range pending).
pub async fn caught_up(log: &dyn EventLog, archive: &Archive) -> Result<bool, StageError> {
    for table in archive::TABLES {
        for (partition, end) in log.end_offsets(table.topic).await? {
            if end == 0 {
                continue;
            }
            let progress = archive.progress(table, partition).await?;
            if !progress.is_some_and(|progress| progress.next_offset == end && progress.pending.is_none()) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// What the stage keeps for a partition it owns.
#[derive(Debug)]
struct Part {
    table: Table,
    partition: i32,
    /// Records before this offset are archived (or already buffered) and skipped.
    expected: i64,
    /// The last offset of a range left pending by an earlier owner: the buffer is cut
    /// exactly there.
    boundary: Option<i64>,
    buffer: Vec<Record>,
    bytes: usize,
    opened: Instant,
    /// The highest source offset seen per source partition, up to `expected`.
    sources: BTreeMap<(String, i32), i64>,
    /// The partition's Merkle log up to `expected`, when checkpoints are signed.
    log: Option<PartitionLog>,
}

/// Runs the archive stage until `shutdown` turns true or the log or the store fails.
pub async fn run(
    log: Arc<dyn EventLog>,
    archive: Arc<Archive>,
    metrics: Arc<ProcessorMetrics>,
    config: ProcessorConfig,
    settings: ArchiveConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StageError> {
    let group = config.archive_group();
    let topics: Vec<&str> = archive::TABLES.iter().map(|table| table.topic).collect();
    let mut subscription = log.subscribe(&group, &topics).await?;
    let mut parts: BTreeMap<(String, i32), Part> = BTreeMap::new();
    let mut generation = None;
    let signer = match &settings.signing_key {
        Some(key) => Some(LogSigner::new(key)?),
        None => None,
    };
    let writer = Writer {
        log: log.as_ref(),
        archive: &archive,
        metrics: &metrics,
        group: &group,
        instance: &config.instance_id,
        signer: signer.as_ref(),
    };
    let idle = (settings.roll_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let batch = next_batch(subscription.as_mut(), config.batch_max_records, &mut shutdown, idle).await?;
        if generation != Some(subscription.generation()) {
            generation = Some(subscription.generation());
            reconcile(&archive, subscription.assignment(), &mut parts, signer.is_some()).await?;
        }
        let Some(batch) = batch else {
            for part in parts.values_mut() {
                if part.boundary.is_none() {
                    writer.roll(subscription.as_mut(), part).await?;
                }
            }
            return Ok(());
        };
        metrics.records.get_or_create(&StageLabels { stage: STAGE }).inc_by(batch.len() as u64);
        for record in batch {
            let Some(part) = parts.get_mut(&(record.topic.clone(), record.partition)) else { continue };
            if record.offset < part.expected {
                continue;
            }
            if part.boundary.is_some_and(|boundary| record.offset > boundary) {
                // The pending range ends before this record (records in it may have been
                // compacted away): write what was read of it.
                writer.roll(subscription.as_mut(), part).await?;
                part.boundary = None;
            }
            if part.buffer.is_empty() {
                part.opened = Instant::now();
            }
            part.expected = record.offset + 1;
            part.bytes += record.payload.len();
            let at_boundary = part.boundary == Some(record.offset);
            part.buffer.push(record);
            let full = part.buffer.len() >= settings.roll_max_records || part.bytes >= settings.roll_max_bytes;
            if at_boundary || (part.boundary.is_none() && full) {
                writer.roll(subscription.as_mut(), part).await?;
                part.boundary = None;
            }
        }
        for part in parts.values_mut() {
            if part.boundary.is_none() && !part.buffer.is_empty() && part.opened.elapsed() >= settings.roll_interval {
                writer.roll(subscription.as_mut(), part).await?;
            }
        }
    }
}

/// Brings the owned partitions in line with the assignment after a rebalance. Buffers of
/// revoked partitions are dropped: their new owner reads them again from the marker.
async fn reconcile(
    archive: &Archive,
    assigned: Vec<(String, i32)>,
    parts: &mut BTreeMap<(String, i32), Part>,
    signed: bool,
) -> Result<(), StageError> {
    parts.retain(|key, _| assigned.contains(key));
    for (topic, partition) in assigned {
        let Some(table) = Table::for_topic(&topic) else { continue };
        let key = (topic, partition);
        if parts.contains_key(&key) {
            continue;
        }
        let progress = archive.progress(table, partition).await?;
        let (expected, boundary) = match &progress {
            Some(Progress { pending: Some([first, last]), .. }) => (*first, Some(*last)),
            Some(progress) => (progress.next_offset, None),
            None => (0, None),
        };
        let leaves = progress.as_ref().map_or(0, |progress| progress.leaves);
        let log = if signed && table == archive::PRICED_INTERACTIONS {
            Some(PartitionLog::load(archive, table, partition, leaves).await?)
        } else {
            None
        };
        let sources = progress
            .into_iter()
            .flat_map(|progress| progress.sources)
            .map(|source| ((source.topic, source.partition), source.offset))
            .collect();
        tracing::info!(table = table.name, partition, expected, ?boundary, "archive partition taken over");
        parts.insert(
            key,
            Part {
                table,
                partition,
                expected,
                boundary,
                buffer: Vec::new(),
                bytes: 0,
                opened: Instant::now(),
                sources,
                log,
            },
        );
    }
    Ok(())
}

/// Writes buffered ranges.
struct Writer<'a> {
    log: &'a dyn EventLog,
    archive: &'a Archive,
    metrics: &'a ProcessorMetrics,
    group: &'a str,
    instance: &'a str,
    signer: Option<&'a LogSigner>,
}

impl Writer<'_> {
    /// Writes the buffer of `part` as one range (see the module documentation) and
    /// empties it.
    async fn roll(&self, subscription: &mut dyn Subscription, part: &mut Part) -> Result<(), StageError> {
        let (Some(first), Some(last)) = (part.buffer.first(), part.buffer.last()) else { return Ok(()) };
        let (first, last) = (first.offset, last.offset);
        let table = part.table;
        let progress = |next_offset, pending, sources: &BTreeMap<(String, i32), i64>, leaves| Progress {
            next_offset,
            pending,
            leaves,
            sources: sources
                .iter()
                .map(|((topic, partition), offset)| SourceOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
            instance: self.instance.to_owned(),
            updated_unix_micros: tollgate_schemas::now_unix_micros(),
        };
        let leaves_before = part.log.as_ref().map_or(0, PartitionLog::size);
        let pending = progress(first, Some([first, last]), &part.sources, leaves_before);
        self.archive.set_progress(table, part.partition, &pending).await?;
        let mut outputs = Outputs::default();
        let records = std::mem::take(&mut part.buffer);
        part.bytes = 0;
        let sources = &mut part.sources;
        let (rows, leaves) = match table {
            archive::PRICED_INTERACTIONS => {
                let first_leaf = part.log.as_ref().map(PartitionLog::size);
                self.write::<PricedInteraction>(table, &records, sources, &mut outputs, first_leaf).await?
            }
            archive::POLICY_VIOLATIONS => {
                self.write::<PolicyViolation>(table, &records, sources, &mut outputs, None).await?
            }
            archive::QUOTA_DECISIONS => {
                self.write::<QuotaDecision>(table, &records, sources, &mut outputs, None).await?
            }
            archive::GOVERNANCE_CHANGES => {
                self.write::<GovernanceChange>(table, &records, sources, &mut outputs, None).await?
            }
            archive::ACCESS_EVENTS => self.write::<AccessEvent>(table, &records, sources, &mut outputs, None).await?,
            // archive::UPSTREAM_HEALTH, the last of archive::TABLES.
            _ => self.write::<UpstreamHealth>(table, &records, sources, &mut outputs, None).await?,
        };
        outputs.acknowledged().await?;
        if let (Some(log), Some(signer)) = (part.log.as_mut(), self.signer) {
            // The range's leaves, their hashes, then a checkpoint signing the new size.
            let first_leaf = log.size();
            for leaf in leaves {
                log.append(leaf)?;
            }
            log.save(self.archive, table, part.partition, first_leaf).await?;
            let now = tollgate_schemas::now_unix_micros();
            transparency::write_checkpoint(self.archive, signer, table, part.partition, log, now).await?;
        }
        let leaves_after = part.log.as_ref().map_or(0, PartitionLog::size);
        self.archive
            .set_progress(table, part.partition, &progress(last + 1, None, &part.sources, leaves_after))
            .await?;
        let position = Position { topic: table.topic.to_owned(), partition: part.partition, next_offset: last + 1 };
        if let Err(error) = subscription.commit(&[position]).await {
            // The marker is what counts; a member that reads these again skips them.
            tracing::debug!(%error, table = table.name, partition = part.partition, "committing archive offsets failed");
        }
        self.metrics.archived_rows.get_or_create(&TableLabels { table: table.name }).inc_by(rows as u64);
        tracing::debug!(table = table.name, partition = part.partition, first, last, rows, "archived a range");
        Ok(())
    }

    /// Decodes `records` as `E`, drops replayed copies (see [`Archived::source`]), and
    /// writes one file per date. Returns the rows written and, for events that are Merkle
    /// leaves, their leaf hashes in archive order (by date, then row). With `first_leaf`
    /// (the size of the partition's Merkle log), each row also records its place in the
    /// log ([`tollgate_schemas::arrow::MERKLE_LEAF`]): that is how the query API finds a
    /// record's inclusion proof.
    async fn write<E: Archived>(
        &self,
        table: Table,
        records: &[Record],
        sources: &mut BTreeMap<(String, i32), i64>,
        outputs: &mut Outputs,
        first_leaf: Option<u64>,
    ) -> Result<(usize, Vec<Hash>), StageError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else { return Ok((0, Vec::new())) };
        let (partition, first, last) = (first.partition, first.offset, last.offset);
        // Each event with the record it came from, by date.
        let mut by_date: BTreeMap<String, (Vec<E>, Vec<&Record>)> = BTreeMap::new();
        for record in records {
            match tollgate_schemas::decode::<E>(&record.payload) {
                Ok(event) => {
                    if let Some(source) = event.source() {
                        let seen = sources.entry((source.topic.clone(), source.partition)).or_insert(-1);
                        if source.offset <= *seen {
                            self.metrics.archive_duplicates.get_or_create(&TableLabels { table: table.name }).inc();
                            continue;
                        }
                        *seen = source.offset;
                    }
                    let (events, origins) =
                        by_date.entry(archive::date_partition(event.time_unix_micros())).or_default();
                    events.push(event);
                    origins.push(record);
                }
                Err(error) => {
                    let reason = error.dead_letter_reason();
                    self.dead_letter(record, outputs, reason, error.to_string()).await?;
                }
            }
        }
        let mut rows = 0;
        let mut leaves = Vec::new();
        for (date, (mut events, origins)) in by_date {
            let mut batch = E::to_record_batch(&events);
            if let Err(error) = &batch {
                // Every decoded event converts; if one does not, it is set aside rather
                // than holding up the partition.
                tracing::error!(%error, table = table.name, "a batch did not convert to Arrow; converting row by row");
                let mut kept = Vec::with_capacity(events.len());
                for (event, record) in events.into_iter().zip(origins) {
                    match E::to_record_batch(std::slice::from_ref(&event)) {
                        Ok(_) => kept.push(event),
                        Err(error) => {
                            let message = format!("not storable: {error}");
                            self.dead_letter(record, outputs, DeadLetterReason::ProcessingFailed, message).await?;
                        }
                    }
                }
                events = kept;
                batch = E::to_record_batch(&events);
            }
            let mut batch = batch.map_err(SinkError::from)?;
            if batch.num_rows() == 0 {
                continue;
            }
            if let (Some(first_leaf), Some(_)) = (first_leaf, self.signer) {
                let position = first_leaf + leaves.len() as u64;
                batch = tollgate_schemas::arrow::with_merkle_position(&batch, partition, position)
                    .map_err(SinkError::from)?;
            }
            let metadata = vec![
                KeyValue::new(archive::METADATA_TABLE.to_owned(), table.name.to_owned()),
                KeyValue::new(archive::METADATA_TOPIC.to_owned(), table.topic.to_owned()),
                KeyValue::new(archive::METADATA_PARTITION.to_owned(), partition.to_string()),
                KeyValue::new(archive::METADATA_FIRST_OFFSET.to_owned(), first.to_string()),
                KeyValue::new(archive::METADATA_LAST_OFFSET.to_owned(), last.to_string()),
            ];
            rows += batch.num_rows();
            if self.signer.is_some() {
                for event in &events {
                    if let Some(leaf) = event.leaf()? {
                        leaves.push(leaf);
                    }
                }
            }
            let bytes = crate::sink::parquet::to_bytes(&[batch], metadata)?;
            self.archive.put(&table.file_path(&date, partition, first, last), bytes).await?;
            self.metrics.archive_files.get_or_create(&TableLabels { table: table.name }).inc();
        }
        Ok((rows, leaves))
    }

    async fn dead_letter(
        &self,
        record: &Record,
        outputs: &mut Outputs,
        reason: DeadLetterReason,
        error: String,
    ) -> Result<(), StageError> {
        self.metrics.dead_letters.get_or_create(&DeadLetterLabels { stage: STAGE, reason: reason_label(reason) }).inc();
        Ok(send_dead_letter(outputs, self.log, record, self.group, reason, error).await?)
    }
}

/// An event stored in the archive.
trait Archived: Event + StoredRecord {
    /// The time that decides the record's date partition.
    fn time_unix_micros(&self) -> i64;

    /// Where the event was made from, for events whose copies from a replay are dropped
    /// in the archive: a record whose source offset is not above the highest already
    /// seen from that source partition is one. Events without a source (violations,
    /// decisions, governance changes, access events; few, with stable ids) keep every copy, and readers
    /// take one row per id.
    fn source(&self) -> Option<&SourceOffset> {
        None
    }

    /// The event's leaf hash, for events in the archive's Merkle log.
    fn leaf(&self) -> Result<Option<Hash>, tollgate_archive::ArchiveError> {
        Ok(None)
    }
}

impl Archived for PricedInteraction {
    fn time_unix_micros(&self) -> i64 {
        self.interaction.time_unix_micros
    }

    fn source(&self) -> Option<&SourceOffset> {
        self.source.as_ref()
    }

    fn leaf(&self) -> Result<Option<Hash>, tollgate_archive::ArchiveError> {
        transparency::leaf_hash(self).map(Some)
    }
}

impl Archived for PolicyViolation {
    fn time_unix_micros(&self) -> i64 {
        self.time_unix_micros
    }
}

impl Archived for QuotaDecision {
    fn time_unix_micros(&self) -> i64 {
        self.time_unix_micros
    }
}

impl Archived for GovernanceChange {
    fn time_unix_micros(&self) -> i64 {
        self.time_unix_micros
    }
}

impl Archived for AccessEvent {
    fn time_unix_micros(&self) -> i64 {
        self.time_unix_micros
    }
}

impl Archived for UpstreamHealth {
    fn time_unix_micros(&self) -> i64 {
        self.time_unix_micros
    }
}
