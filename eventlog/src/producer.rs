//! The producer behind [`crate::KafkaLog`]: librdkafka's producer, handed one batch of
//! records at a time when [`crate::KafkaConfig::one_batch_in_flight`] asks for it and the
//! producer is idempotent.
//!
//! librdkafka's idempotent producer keeps one produce request per partition in flight
//! (its limit counts messages, five at most). Records published meanwhile join the
//! partition's transmit queue; once their `linger.ms` has passed the batch is ready, the
//! partition asks the broker thread for an immediate wake-up, and only then does the
//! in-flight limit stop it from sending (librdkafka 2.12, `rd_kafka_toppar_producer_serve`).
//! So the broker thread polls its socket without sleeping until the broker answers. A
//! service publishing a record at a time to a broker slower to answer than `linger.ms`
//! loses most of a core to it: at the gateway's saturation benchmark that thread used
//! 3.05 s of CPU in 8 s, against 0.23 s with idempotence off.
//!
//! Here, records published while any record handed to librdkafka is unacknowledged wait
//! in this queue instead. The last acknowledgement hands over what waited, in publish
//! order, at most one produce request's worth (`batch.num.messages`, `batch.size`,
//! `message.max.bytes`), so no ready batch is left behind the request in flight.
//! librdkafka still batches by `linger.ms`; its broker thread sleeps while it waits.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use tokio::sync::oneshot;

use crate::{Ack, LogError, PendingAck};

/// librdkafka's default `queue.buffering.max.messages`.
const DEFAULT_MAX_MESSAGES: usize = 100_000;
/// librdkafka's default `queue.buffering.max.kbytes` (1 GiB).
const DEFAULT_MAX_KBYTES: usize = 1_048_576;

/// librdkafka's default `batch.num.messages`.
const DEFAULT_BATCH_MESSAGES: usize = 10_000;
/// librdkafka's default `batch.size` and `message.max.bytes`.
const DEFAULT_BATCH_BYTES: usize = 1_000_000;

type Reply = oneshot::Sender<Result<Ack, LogError>>;

/// A record waiting for the batch before it to be acknowledged.
struct Held {
    topic: String,
    partition: Option<i32>,
    key: Vec<u8>,
    payload: Vec<u8>,
    reply: Reply,
}

#[derive(Default)]
struct GateState {
    /// Records handed to librdkafka whose delivery has not been reported yet.
    outstanding: usize,
    held: VecDeque<Held>,
    held_bytes: usize,
}

struct Gate {
    /// Whether records wait for the batch before them (the producer is idempotent).
    holds: bool,
    /// At most this many records, and this many bytes, wait here (half of librdkafka's
    /// queue limits); beyond that `publish` answers `QueueFull`, as librdkafka would.
    max_held: usize,
    max_held_bytes: usize,
    /// At most this many records, and this many bytes, are handed over at once: what
    /// one produce request carries (`batch.num.messages`; `batch.size` and
    /// `message.max.bytes`, less a margin for framing). More would leave a ready batch
    /// behind the request in flight, which is what makes the broker thread spin.
    batch_messages: usize,
    batch_bytes: usize,
    state: Mutex<GateState>,
    /// Set once, right after the producer is created; upgraded only during a delivery
    /// report, while the polling thread holds the producer, so never the last reference.
    producer: OnceLock<Weak<BaseProducer<GateContext>>>,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands waiting records to librdkafka, one produce request's worth, once nothing
    /// is outstanding.
    fn release(&self, producer: &BaseProducer<GateContext>) {
        loop {
            let batch = {
                let mut state = self.lock();
                if state.outstanding > 0 || state.held.is_empty() {
                    return;
                }
                let mut count = 0;
                let mut bytes = 0;
                for held in &state.held {
                    let size = record_size(&held.key, &held.payload);
                    if count > 0 && (count == self.batch_messages || bytes + size > self.batch_bytes) {
                        break;
                    }
                    count += 1;
                    bytes += size;
                }
                state.held_bytes -= bytes;
                state.outstanding = count;
                state.held.drain(..count).collect::<Vec<_>>()
            };
            // Records published meanwhile see `outstanding > 0` and wait behind this batch.
            let mut refused = 0;
            for held in batch {
                let held_bytes = held.key.len() + held.payload.len();
                let mut record = BaseRecord::with_opaque_to(&held.topic, Box::new(held.reply))
                    .key(held.key.as_slice())
                    .payload(held.payload.as_slice());
                if let Some(partition) = held.partition {
                    record = record.partition(partition);
                }
                if let Err((error, record)) = producer.send(record) {
                    refused += 1;
                    let _ = record.delivery_opaque.send(Err(refusal(error, &held.topic, held.partition, held_bytes)));
                }
            }
            if refused == 0 {
                return;
            }
            self.lock().outstanding -= refused;
        }
    }
}

/// A record's size as the batch limits count it, framing included (an estimate on the
/// high side).
fn record_size(key: &[u8], payload: &[u8]) -> usize {
    key.len() + payload.len() + 64
}

/// The [`LogError`] for librdkafka's refusal or failure of a record for `topic` (and
/// `partition`, when one was asked for).
fn refusal(error: KafkaError, topic: &str, partition: Option<i32>, bytes: usize) -> LogError {
    match (error.rdkafka_error_code(), partition) {
        (Some(RDKafkaErrorCode::QueueFull), _) => LogError::QueueFull,
        (Some(RDKafkaErrorCode::UnknownPartition), Some(partition)) => {
            LogError::UnknownPartition { topic: topic.to_owned(), partition }
        }
        (Some(RDKafkaErrorCode::UnknownTopic), _) => LogError::UnknownTopic(topic.to_owned()),
        // Over the producer's `message.max.bytes` (refused at once) or the broker's (in
        // the delivery report): the same code either way.
        (Some(RDKafkaErrorCode::MessageSizeTooLarge), _) => LogError::TooLarge { topic: topic.to_owned(), bytes },
        _ => LogError::Kafka(error),
    }
}

/// Answers each record's [`PendingAck`] and releases the next batch after the last
/// acknowledgement of the current one.
pub(crate) struct GateContext {
    gate: Arc<Gate>,
}

impl ClientContext for GateContext {}

impl ProducerContext for GateContext {
    type DeliveryOpaque = Box<Reply>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Box<Reply>) {
        let outcome = match result {
            Ok(message) => Ok(Ack { partition: message.partition(), offset: message.offset() }),
            Err((error, message)) => {
                let partition = (message.partition() >= 0).then(|| message.partition());
                Err(refusal(error.clone(), message.topic(), partition, message.payload_len() + message.key_len()))
            }
        };
        // Counted before the publisher hears of it: a record it publishes on hearing goes
        // straight to librdkafka (and is refused at once if it must be), instead of
        // waiting behind the one just reported.
        let release = {
            let mut state = self.gate.lock();
            state.outstanding = state.outstanding.saturating_sub(1);
            state.outstanding == 0 && !state.held.is_empty()
        };
        // The publisher may have stopped waiting; the outcome is then nobody's concern.
        let _ = reply.send(outcome);
        if release && let Some(producer) = self.gate.producer.get().and_then(Weak::upgrade) {
            self.gate.release(&producer);
        }
    }
}

/// librdkafka's producer with the gate in front of it, and a thread serving its
/// delivery reports.
pub(crate) struct GatedProducer {
    producer: Arc<BaseProducer<GateContext>>,
    gate: Arc<Gate>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl GatedProducer {
    /// Creates the producer from `config`; `properties` are the producer properties it
    /// was built from (they say whether it is idempotent and how much it may queue and
    /// send at once). Records wait for the batch before them only if
    /// `one_batch_in_flight` and the producer is idempotent.
    pub(crate) fn create(
        config: &ClientConfig,
        properties: &BTreeMap<String, String>,
        one_batch_in_flight: bool,
    ) -> Result<Self, LogError> {
        let setting = |name: &str| properties.get(name).map(String::as_str);
        let idempotent = matches!(setting("enable.idempotence"), Some("true")) || setting("transactional.id").is_some();
        let holds = one_batch_in_flight && idempotent;
        let number = |name: &str, default: usize| setting(name).and_then(|value| value.parse().ok()).unwrap_or(default);
        let max_messages = number("queue.buffering.max.messages", DEFAULT_MAX_MESSAGES);
        let max_kbytes = number("queue.buffering.max.kbytes", DEFAULT_MAX_KBYTES);
        let request_bytes =
            number("batch.size", DEFAULT_BATCH_BYTES).min(number("message.max.bytes", DEFAULT_BATCH_BYTES));
        let gate = Arc::new(Gate {
            holds,
            max_held: (max_messages / 2).max(1),
            max_held_bytes: max_kbytes.saturating_mul(512).max(1),
            batch_messages: number("batch.num.messages", DEFAULT_BATCH_MESSAGES).max(1),
            batch_bytes: request_bytes / 10 * 9,
            state: Mutex::new(GateState::default()),
            producer: OnceLock::new(),
        });
        let producer: Arc<BaseProducer<GateContext>> =
            Arc::new(config.create_with_context(GateContext { gate: Arc::clone(&gate) })?);
        let _ = gate.producer.set(Arc::downgrade(&producer));
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let producer = Arc::clone(&producer);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("producer polling".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(Duration::from_millis(100));
                    }
                })
                .map_err(LogError::Io)?
        };
        Ok(GatedProducer { producer, gate, stop, poller: Some(poller) })
    }

    /// Enqueues a record: to librdkafka now, or behind the unacknowledged batch.
    pub(crate) fn publish(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
    ) -> Result<PendingAck, LogError> {
        let (reply, answer) = oneshot::channel();
        let mut state = self.gate.lock();
        if self.gate.holds && (state.outstanding > 0 || !state.held.is_empty()) {
            let bytes = record_size(key, payload);
            if state.held.len() >= self.gate.max_held || state.held_bytes + bytes > self.gate.max_held_bytes {
                return Err(LogError::QueueFull);
            }
            state.held_bytes += bytes;
            state.held.push_back(Held {
                topic: topic.to_owned(),
                partition,
                key: key.to_vec(),
                payload: payload.to_vec(),
                reply,
            });
            return Ok(PendingAck::new(answer));
        }
        // Counted before librdkafka can report it; the lock keeps a release from
        // overtaking this record.
        state.outstanding += 1;
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(reply)).key(key).payload(payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        match self.producer.send(record) {
            Ok(()) => Ok(PendingAck::new(answer)),
            Err((error, _record)) => {
                state.outstanding -= 1;
                Err(refusal(error, topic, partition, key.len() + payload.len()))
            }
        }
    }

    /// Waits until every published record is acknowledged or `timeout` passes. Blocks
    /// the calling thread.
    pub(crate) fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let flushed = self.producer.flush(left.min(Duration::from_millis(100)));
            let settled = {
                let state = self.gate.lock();
                state.outstanding == 0 && state.held.is_empty()
            };
            if settled {
                return Ok(());
            }
            if left.is_zero() {
                flushed?;
                return Err(LogError::Kafka(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)));
            }
        }
    }

    /// Fails every record not yet acknowledged: the waiting ones here, then librdkafka's
    /// queued and in-flight ones (their delivery reports follow).
    pub(crate) fn abandon_unacknowledged(&self) {
        let held = {
            let mut state = self.gate.lock();
            state.held_bytes = 0;
            std::mem::take(&mut state.held)
        };
        for record in held {
            let _ =
                record.reply.send(Err(LogError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue))));
        }
        self.producer.purge(PurgeConfig::default().queue().inflight());
    }

    pub(crate) fn client(&self) -> &rdkafka::client::Client<GateContext> {
        self.producer.client()
    }
}

impl Drop for GatedProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            // Joined so that librdkafka is destroyed here, as it was before the gate.
            let _ = poller.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

    use super::*;

    fn producer(one_batch_in_flight: bool) -> GatedProducer {
        let properties = BTreeMap::from([("enable.idempotence".to_owned(), "true".to_owned())]);
        let mut config = ClientConfig::new();
        // Nothing listens on port 1: every record stays unacknowledged.
        config.set("bootstrap.servers", "127.0.0.1:1").set("enable.idempotence", "true");
        GatedProducer::create(&config, &properties, one_batch_in_flight).unwrap()
    }

    #[tokio::test]
    async fn records_wait_behind_an_unacknowledged_one_and_fail_when_abandoned() {
        let producer = producer(true);
        let pending: Vec<_> =
            (0..3).map(|n| producer.publish("topic", None, b"key", format!("{n}").as_bytes()).unwrap()).collect();
        {
            let state = producer.gate.lock();
            assert_eq!(state.outstanding, 1, "the first record went to librdkafka");
            assert_eq!(state.held.len(), 2, "the others wait behind it");
            assert_eq!(state.held_bytes, 2 * record_size(b"key", b"0"));
        }
        producer.abandon_unacknowledged();
        assert!(producer.gate.lock().held.is_empty());
        for ack in pending {
            let outcome = tokio::time::timeout(Duration::from_secs(10), ack).await.expect("the ack resolves");
            assert!(outcome.is_err(), "{outcome:?}");
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let producer = producer(true);
        let _first = producer.publish("topic", None, b"k", b"v").unwrap();
        let max = producer.gate.max_held;
        let _waiting: Vec<_> = (0..max).map(|_| producer.publish("topic", None, b"k", b"v").unwrap()).collect();
        assert!(matches!(producer.publish("topic", None, b"k", b"v"), Err(LogError::QueueFull)));
        producer.abandon_unacknowledged();
    }

    #[tokio::test]
    async fn without_one_batch_in_flight_records_go_straight_to_librdkafka() {
        let producer = producer(false);
        let _pending: Vec<_> = (0..3).map(|_| producer.publish("topic", None, b"k", b"v").unwrap()).collect();
        let state = producer.gate.lock();
        assert_eq!((state.outstanding, state.held.len()), (3, 0));
    }
}
