//! One publish/consume interface over two logs: Kafka (through rdkafka) for distributed
//! deployments, and an embedded durable log (SQLite in WAL mode) for a single machine.
//!
//! The contract, which the `contract` test suite checks against both implementations:
//!
//! - [`EventLog::publish`] enqueues at once and returns a [`PendingAck`]; the event is
//!   durable once that future resolves to `Ok`. Enqueueing first and awaiting later lets
//!   both implementations batch (librdkafka's linger, the embedded log's group commit).
//! - Events with the same key go to the same partition and are read in publish order.
//! - A [`Subscription`] reads as a named consumer group: the group's members split the
//!   partitions, and a member that joins later resumes each partition at the group's
//!   committed offset (or at the beginning when nothing was committed).
//! - Delivery is at least once: anything read but not committed is read again after a
//!   restart or a rebalance. Consumers make their effects idempotent (stable event ids).
//!
//! This crate moves bytes. It does not encode or decode events (that is
//! `tollgate-schemas`), and it does not retry failed publishes: callers decide what a
//! failure means (the gateway spools, the processor stops and resumes from its offsets).

mod embedded;
pub mod follow;
mod kafka;
mod producer;
pub mod testing;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use embedded::{DEFAULT_MAX_RECORD_BYTES, EmbeddedLog, EmbeddedLogConfig};
pub use follow::Follower;
pub use kafka::{KafkaConfig, KafkaLog, KafkaProperties};
use tollgate_schemas::topics::TopicSpec;

/// One message read from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch, as stamped by the producer.
    pub timestamp_millis: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Record {
    /// The position to commit once this record has been fully processed.
    pub fn next_position(&self) -> Position {
        Position { topic: self.topic.clone(), partition: self.partition, next_offset: self.offset + 1 }
    }
}

/// A committed consumer position: the next offset to read in a topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// Where a published event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub partition: i32,
    pub offset: i64,
}

/// Everything that can go wrong talking to a log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("topic `{0}` does not exist; services create their topics at start-up")]
    UnknownTopic(String),
    #[error("topic `{topic}` has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("a record of {bytes} bytes for topic `{topic}` is larger than the log accepts")]
    TooLarge { topic: String, bytes: usize },
    #[error("the local publish queue is full; retry after the queued events are acknowledged")]
    QueueFull,
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("embedded log storage: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("embedded log at {path} is already open in another process")]
    Locked { path: String },
    #[error("the log was closed")]
    Closed,
    #[error("cannot commit {topic}/{partition}: not assigned to this consumer (the group rebalanced)")]
    NotAssigned { topic: String, partition: i32 },
    #[error("the group coordinator did not answer an offset commit within {0:?}; the next commit covers its offsets")]
    CommitTimeout(std::time::Duration),
    #[error(
        "an earlier offset commit is still waiting for the group coordinator; the next commit covers these offsets"
    )]
    CommitPending,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid log configuration: {0}")]
    Config(String),
}

/// The publishing and consuming side of a log. Cheap to share behind an `Arc`.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// Creates the topic if it does not exist. An existing topic is left as it is.
    async fn ensure_topic(&self, name: &str, partitions: i32, compacted: bool) -> Result<(), LogError>;

    /// Enqueues one event now and returns a future that resolves once it is durable.
    ///
    /// Never blocks. [`LogError::QueueFull`] means nothing was enqueued: wait for earlier
    /// acks and publish the same event again before any later event with the same key, so
    /// per-key order holds.
    ///
    /// A record larger than the log accepts (Kafka's `message.max.bytes`, on the producer
    /// or the broker; [`EmbeddedLogConfig::max_record_bytes`]) fails with
    /// [`LogError::TooLarge`], here or through the returned [`PendingAck`]; it is never
    /// retried, and the events published after it go on.
    fn publish(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<PendingAck, LogError>;

    /// Like [`EventLog::publish`], into the given partition instead of the key's. For
    /// per-partition side logs (the processor's checkpoints sit in the partition of the
    /// input partition they describe). A partition the topic does not have fails with
    /// [`LogError::UnknownPartition`], either here or through the returned
    /// [`PendingAck`] (on Kafka, when the producer has not looked the topic up yet or the
    /// event waits behind a batch in flight); the events published after it go on.
    fn publish_to(&self, topic: &str, partition: i32, key: &[u8], payload: &[u8]) -> Result<PendingAck, LogError>;

    /// Up to `max` records of one partition from `from_offset` on, in offset order,
    /// without a consumer group; fewer (possibly none) when the partition ends sooner.
    async fn read(&self, topic: &str, partition: i32, from_offset: i64, max: usize) -> Result<Vec<Record>, LogError>;

    /// Joins `group` as a new member reading `topics`.
    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Subscription>, LogError>;

    /// The next offset that would be written in each partition of `topic`.
    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, LogError>;

    /// Gives up on every published event not yet acknowledged: their [`PendingAck`]s
    /// resolve with an error soon after, so the publisher can keep them elsewhere (the
    /// gateway's spool at shutdown during an outage). An event already sent may still
    /// have been stored, so keeping it elsewhere can make a duplicate, which consumers
    /// drop by event id. The embedded log acknowledges everything it accepted, so for it
    /// this does nothing.
    fn abandon_unacknowledged(&self) {}
}

/// A consumer-group member. Dropping it leaves the group.
#[async_trait::async_trait]
pub trait Subscription: Send + std::fmt::Debug {
    /// The next record from one of this member's partitions. Waits while there is none.
    /// Cancel-safe: dropping the future loses nothing.
    async fn next(&mut self) -> Result<Record, LogError>;

    /// Commits positions for the group, durably. Pass [`Record::next_position`] of the
    /// last record processed in each partition. Bounded in time: while the group's
    /// coordinator is unreachable it fails with [`LogError::CommitTimeout`] (and then
    /// [`LogError::CommitPending`] until that commit is answered) rather than waiting.
    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError>;

    /// The partitions this member currently reads.
    fn assignment(&self) -> Vec<(String, i32)>;

    /// Moves this member's position in one of its partitions: the next record it reads
    /// from that partition is at `next_offset`. For consumers that keep their offsets
    /// with their own state (the processor's checkpoints) rather than in the group.
    /// Records of that partition already fetched are discarded; a record handed out
    /// after the call is at `next_offset` or later.
    async fn seek(&mut self, topic: &str, partition: i32, next_offset: i64) -> Result<(), LogError>;

    /// A number that changes whenever this member's assignment may have changed (a
    /// rebalance). A consumer that keeps per-partition state compares it after each
    /// [`Subscription::next`] and reconciles its state with [`Subscription::assignment`].
    fn generation(&self) -> u64;
}

/// Creates every topic in `specs`.
pub async fn ensure_topics(log: &dyn EventLog, specs: &[TopicSpec]) -> Result<(), LogError> {
    for spec in specs {
        log.ensure_topic(spec.name, spec.partitions, spec.compacted).await?;
    }
    Ok(())
}

/// Publishes one event and waits until it is durable, waiting out a full local queue.
pub async fn publish_and_wait(log: &dyn EventLog, topic: &str, key: &[u8], payload: &[u8]) -> Result<Ack, LogError> {
    let mut backoff = std::time::Duration::from_millis(1);
    loop {
        match log.publish(topic, key, payload) {
            Ok(pending) => return pending.await,
            Err(LogError::QueueFull) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_millis(100));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Resolves once a published event is durable (or definitely failed).
#[derive(Debug)]
#[must_use = "an unawaited ack says nothing about durability"]
pub struct PendingAck(tokio::sync::oneshot::Receiver<Result<Ack, LogError>>);

impl PendingAck {
    fn new(answer: tokio::sync::oneshot::Receiver<Result<Ack, LogError>>) -> Self {
        PendingAck(answer)
    }
}

impl Future for PendingAck {
    type Output = Result<Ack, LogError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|answer| answer.unwrap_or(Err(LogError::Closed)))
    }
}

/// The partition of `key` in a topic of `partitions` partitions: CRC32 of the key, as
/// librdkafka's default `consistent_random` partitioner does for non-empty keys.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let partitions = partitions.max(1).unsigned_abs();
    // The remainder is below `partitions`, which came from an i32.
    i32::try_from(crc32fast::hash(key) % partitions).unwrap_or(0)
}
