//! Publishing one `Interaction` per call without making the request wait, and without
//! losing any when the log is unreachable.
//!
//! [`Recorder::record`] encodes the event and hands it to the log at once (the Kafka
//! producer batches; the request never waits for an acknowledgement). A background task
//! tracks the acknowledgements. When the log stops acknowledging (nothing acked for
//! `spool_after` while events are outstanding) or refuses an event, the recorder switches
//! to the local durable spool (an embedded log on disk): from then on every event goes to
//! the spool, in order. A drainer forwards the spool to the log once everything published
//! directly before the switch has been acknowledged, and switches back to direct
//! publishing when the spool is empty. Because the spool only starts forwarding after the
//! direct events are acknowledged, and the switch back happens only when the spool is
//! empty, events of one key reach the log in the order they were recorded.
//!
//! An event the log refuses as larger than it accepts ([`LogError::TooLarge`]) can never
//! be published, however often it is retried: it goes to the dead-letter topic instead, in
//! a reduced form (without its captured content, see [`DeadLetter::too_large`]), and the
//! events after it go on. The gateway bounds every field of an event (see
//! [`tollgate_schemas::limits`]), so this takes a log whose record limit is below the
//! capture policy's.
//!
//! The producer must not give up on events by itself (the gateway sets the Kafka
//! producer's `message.timeout.ms` to 0, unlimited): an event it dropped on a timeout
//! would be spooled behind newer ones. An event the log rejects outright is spooled too.
//!
//! A spool holding `spool_max_events` is full. What then happens is configured: fail
//! open (keep serving, count each event that could not be kept as dropped, log it) or
//! fail closed ([`Recorder::accepting`] turns false and the gateway answers 503 until the
//! spool has room).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tollgate_eventlog::{EventLog, LogError, PendingAck};
use tollgate_schemas::topics::{DEAD_LETTER, INTERACTIONS, Keyed, UPSTREAM_HEALTH};
use tollgate_schemas::{DeadLetter, Interaction, SourceOffset, UpstreamHealth};

use crate::quota::{Placement, Receipt};

/// Sets the Kafka client properties the gateway relies on, keeping any the operator set:
/// the producer never gives up on an event by itself (`message.timeout.ms=0`, see the
/// module docs), and quota decisions are fetched without the consumer's default
/// half-second wait. Interactions are handed to the producer one batch at a time
/// ([`tollgate_eventlog::KafkaConfig::one_batch_in_flight`]): published a request at a
/// time, they would otherwise keep librdkafka's broker thread spinning while each batch
/// waits for the broker, on the cores that serve requests. `linger.ms` stays at the
/// log's default of 5.
pub fn gateway_kafka_config(kafka: &mut tollgate_eventlog::KafkaConfig) {
    kafka.one_batch_in_flight = true;
    kafka.producer_properties.entry("message.timeout.ms".to_owned()).or_insert_with(|| "0".to_owned());
    kafka.consumer_properties.entry("fetch.wait.max.ms".to_owned()).or_insert_with(|| "50".to_owned());
}

/// The spool's one topic; one partition keeps every key's order.
pub const SPOOL_TOPIC: &str = "tollgate.gateway-spool";
const SPOOL_GROUP: &str = "gateway-spool-drainer";
/// Events forwarded from the spool before waiting for their acknowledgements.
const DRAIN_BATCH: usize = 512;
/// The consumer group named in the gateway's dead letters.
const RECORDER_GROUP: &str = "gateway-recorder";
/// The most of an oversized event a dead letter keeps (before base64).
const DEAD_LETTER_KEPT_BYTES: usize = 64 * 1024;

/// What to do when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullSpoolPolicy {
    /// Keep serving requests; events that cannot be kept are counted as dropped.
    FailOpen,
    /// Refuse requests with 503 until the spool has room again.
    FailClosed,
}

/// How the recorder behaves when the log misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderConfig {
    /// No acknowledgement for this long, with events outstanding, means the log is
    /// unreachable: new events go to the spool.
    pub spool_after: Duration,
    /// Events the spool may hold before it is full.
    pub spool_max_events: u64,
    pub on_full_spool: FullSpoolPolicy,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            spool_after: Duration::from_secs(2),
            spool_max_events: 10_000_000,
            on_full_spool: FullSpoolPolicy::FailOpen,
        }
    }
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Events handed to the log directly.
    pub published: u64,
    /// Direct events the log acknowledged.
    pub acknowledged: u64,
    /// Events written to the spool.
    pub spooled: u64,
    /// Spooled events forwarded to the log and acknowledged.
    pub drained: u64,
    /// Events lost: no spool, or a full spool failing open, or an encoding fault.
    pub dropped: u64,
    /// Events the log refused as too large, published as dead letters instead.
    pub dead_lettered: u64,
    /// Whether new events currently go to the spool.
    pub spooling: bool,
}

/// Publishes interactions; cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Acknowledgements are followed on this runtime, so `record` works from any thread
    /// (a response body is dropped wherever the server drops it).
    runtime: tokio::runtime::Handle,
    log: Arc<dyn EventLog>,
    spool: Option<Arc<dyn EventLog>>,
    config: RecorderConfig,
    /// Read without the lock on the hot path; changed only under `switch`.
    spooling: AtomicBool,
    /// Serializes spool appends with the switch back to direct publishing.
    switch: Mutex<()>,
    in_flight: AtomicU64,
    published: AtomicU64,
    acknowledged: AtomicU64,
    /// Direct publishes the log failed (each was spooled instead).
    direct_failed: AtomicU64,
    spooled: AtomicU64,
    drained: AtomicU64,
    dropped: AtomicU64,
    dead_lettered: AtomicU64,
    /// When an acknowledgement last arrived (or the first outstanding event was sent).
    last_progress: Mutex<Instant>,
    changed: Notify,
    closed: AtomicBool,
}

impl Recorder {
    /// Starts recording to `log` (call inside a tokio runtime), with `spool` (an embedded log on local disk) for when
    /// `log` is unreachable. Without a spool an unreachable log loses events (counted).
    pub async fn start(
        log: Arc<dyn EventLog>,
        spool: Option<Arc<dyn EventLog>>,
        config: RecorderConfig,
    ) -> Result<Recorder, LogError> {
        if let Some(spool) = &spool {
            spool.ensure_topic(SPOOL_TOPIC, 1, false).await?;
        }
        let recorder = Recorder {
            inner: Arc::new(Inner {
                runtime: tokio::runtime::Handle::current(),
                log,
                spool,
                config,
                spooling: AtomicBool::new(false),
                switch: Mutex::new(()),
                in_flight: AtomicU64::new(0),
                published: AtomicU64::new(0),
                acknowledged: AtomicU64::new(0),
                direct_failed: AtomicU64::new(0),
                spooled: AtomicU64::new(0),
                drained: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                dead_lettered: AtomicU64::new(0),
                last_progress: Mutex::new(Instant::now()),
                changed: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        };
        if let Some(spool) = recorder.inner.spool.clone() {
            // A spool left over from an earlier run is drained first (the drainer resumes
            // at its committed position and switches to direct publishing once caught up).
            let leftover = spool.end_offsets(SPOOL_TOPIC).await?.iter().map(|(_, end)| *end).sum::<i64>();
            let subscription = spool.subscribe(SPOOL_GROUP, &[SPOOL_TOPIC]).await?;
            if leftover > 0 {
                recorder.inner.spooling.store(true, Ordering::SeqCst);
            }
            tokio::spawn(drain(Arc::clone(&recorder.inner), subscription));
            tokio::spawn(watch_progress(Arc::downgrade(&recorder.inner)));
        }
        Ok(recorder)
    }

    /// Records one interaction. Never waits on the log. The receipt is filled with the
    /// event's placement: its partition and offset once the log acknowledges it, or
    /// `Spooled` when it went to the spool.
    pub fn record(&self, interaction: &Interaction) -> Receipt {
        let receipt = Receipt::default();
        let payload = match tollgate_schemas::encode(interaction) {
            Ok(payload) => payload,
            Err(error) => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, interaction_id = %interaction.id, "interaction could not be encoded; dropped");
                return receipt;
            }
        };
        let key = interaction.message_key().into_bytes();
        self.inner.submit(key, payload, Arc::clone(&receipt));
        receipt
    }

    /// Publishes a circuit-breaker transition on its own topic. Never waits: a task hands
    /// it to the log and follows its acknowledgement (the gateway's producer never gives
    /// up on an event, so an outage of the log delays it rather than losing it). Not
    /// spooled: the spool keeps interactions only.
    pub fn record_health(&self, event: &UpstreamHealth) {
        let payload = match tollgate_schemas::encode(event) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, upstream = %event.upstream, "upstream health event could not be encoded; dropped");
                return;
            }
        };
        let key = event.message_key().into_bytes();
        let log = Arc::clone(&self.inner.log);
        let upstream = event.upstream.clone();
        self.inner.runtime.spawn(async move {
            if let Err(error) = tollgate_eventlog::publish_and_wait(log.as_ref(), UPSTREAM_HEALTH, &key, &payload).await
            {
                tracing::error!(%error, %upstream, "the log refused an upstream health event");
            }
        });
    }

    /// False while the spool is full and the policy is to fail closed.
    pub fn accepting(&self) -> bool {
        self.inner.config.on_full_spool == FullSpoolPolicy::FailOpen || !self.inner.spool_full()
    }

    pub fn stats(&self) -> RecorderStats {
        let inner = &self.inner;
        RecorderStats {
            published: inner.published.load(Ordering::Relaxed),
            acknowledged: inner.acknowledged.load(Ordering::Relaxed),
            spooled: inner.spooled.load(Ordering::Relaxed),
            drained: inner.drained.load(Ordering::Relaxed),
            dropped: inner.dropped.load(Ordering::Relaxed),
            dead_lettered: inner.dead_lettered.load(Ordering::Relaxed),
            spooling: inner.spooling.load(Ordering::Relaxed),
        }
    }

    /// Waits until every event recorded so far is acknowledged by the log or durable in
    /// the spool, or `timeout` passes. Returns whether everything was settled.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            if self.inner.in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inner.in_flight.load(Ordering::SeqCst) == 0;
            }
        }
    }

    /// Stops the background tasks after a final [`Recorder::flush`]. Events the log has
    /// still not acknowledged by then are taken back from it and written to the spool, so
    /// a shutdown during an outage loses nothing; the next start drains them.
    pub async fn close(&self, timeout: Duration) -> bool {
        let mut settled = self.flush(timeout).await;
        let outstanding = self.inner.direct_outstanding();
        if !settled && outstanding > 0 && self.inner.spool.is_some() {
            tracing::warn!(outstanding, "the log has not acknowledged some events; moving them to the spool");
            self.inner.start_spooling();
            self.inner.log.abandon_unacknowledged();
            settled = self.flush(Duration::from_secs(10)).await;
        }
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
        settled
    }
}

impl Inner {
    /// Direct publishes neither acknowledged nor failed yet.
    fn direct_outstanding(&self) -> u64 {
        let settled = self.acknowledged.load(Ordering::SeqCst) + self.direct_failed.load(Ordering::SeqCst);
        self.published.load(Ordering::SeqCst).saturating_sub(settled)
    }

    fn spool_full(&self) -> bool {
        let held = self.spooled.load(Ordering::Relaxed).saturating_sub(self.drained.load(Ordering::Relaxed));
        held >= self.config.spool_max_events
    }

    fn submit(self: &Arc<Self>, key: Vec<u8>, payload: Vec<u8>, receipt: Receipt) {
        if !self.spooling.load(Ordering::Acquire) {
            match self.log.publish(INTERACTIONS, &key, &payload) {
                Ok(pending) => {
                    self.track(pending, key, payload, receipt);
                    return;
                }
                Err(error @ LogError::TooLarge { .. }) => {
                    // Its spend is counted locally for a while, as a spooled event's is.
                    let _ = receipt.set(Placement::Spooled);
                    self.in_flight.fetch_add(1, Ordering::SeqCst);
                    let inner = Arc::clone(self);
                    self.runtime.spawn(async move {
                        inner.dead_letter_or_spool(&key, &payload, &error).await;
                        inner.in_flight.fetch_sub(1, Ordering::SeqCst);
                        inner.changed.notify_waiters();
                    });
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "the log refused an interaction; switching to the spool");
                    self.start_spooling();
                }
            }
        }
        self.append_to_spool(&key, &payload);
        let _ = receipt.set(Placement::Spooled);
    }

    /// Follows one direct publish until the log acknowledges it or gives up on it.
    fn track(self: &Arc<Self>, pending: PendingAck, key: Vec<u8>, payload: Vec<u8>, receipt: Receipt) {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0
            && let Ok(mut last) = self.last_progress.lock()
        {
            *last = Instant::now();
        }
        self.published.fetch_add(1, Ordering::SeqCst);
        let inner = Arc::clone(self);
        // On the caller's runtime (a serving thread's, see `crate::serve`), which outlives
        // `Recorder::close`; elsewhere on the recorder's.
        let runtime = tokio::runtime::Handle::try_current().unwrap_or_else(|_| self.runtime.clone());
        runtime.spawn(async move {
            match pending.await {
                Ok(ack) => {
                    let _ = receipt.set(Placement::Logged { partition: ack.partition, offset: ack.offset });
                    inner.acknowledged.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut last) = inner.last_progress.lock() {
                        *last = Instant::now();
                    }
                }
                Err(error @ LogError::TooLarge { .. }) => {
                    let _ = receipt.set(Placement::Spooled);
                    inner.dead_letter_or_spool(&key, &payload, &error).await;
                    inner.direct_failed.fetch_add(1, Ordering::SeqCst);
                }
                Err(error) => {
                    tracing::warn!(%error, "the log failed an interaction; switching to the spool");
                    inner.start_spooling();
                    inner.append_to_spool(&key, &payload);
                    let _ = receipt.set(Placement::Spooled);
                    inner.direct_failed.fetch_add(1, Ordering::SeqCst);
                }
            }
            inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            inner.changed.notify_waiters();
        });
    }

    /// Publishes a dead letter for an interaction the log refused with `error` (too
    /// large), read at `source`, and waits until the log has it.
    async fn dead_letter(
        &self,
        source: SourceOffset,
        key: &[u8],
        payload: &[u8],
        error: &LogError,
    ) -> Result<(), LogError> {
        let letter = DeadLetter::too_large(
            source,
            RECORDER_GROUP,
            Some(key),
            payload,
            error.to_string(),
            DEAD_LETTER_KEPT_BYTES,
        );
        let encoded = tollgate_schemas::encode(&letter).map_err(|error| LogError::Config(error.to_string()))?;
        let letter_key = letter.message_key();
        tollgate_eventlog::publish_and_wait(self.log.as_ref(), DEAD_LETTER, letter_key.as_bytes(), &encoded).await?;
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            %error,
            dead_letter = %letter.id,
            "an interaction larger than the log accepts was published to the dead-letter topic without its \
             captured content; lower `capture.max_bytes` or raise the log's record limit"
        );
        Ok(())
    }

    /// [`Inner::dead_letter`] for a directly published interaction. Should the dead letter
    /// fail too, the interaction goes to the spool, whose drainer tries again; without a
    /// spool it is dropped.
    async fn dead_letter_or_spool(self: &Arc<Self>, key: &[u8], payload: &[u8], error: &LogError) {
        // Never read from a log: no position.
        let source = SourceOffset { topic: INTERACTIONS.to_owned(), partition: -1, offset: -1 };
        match self.dead_letter(source, key, payload, error).await {
            Ok(()) => {}
            Err(LogError::TooLarge { .. }) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!("even the reduced dead letter of an oversized interaction is too large; dropped");
            }
            Err(failure) => {
                tracing::warn!(%failure, "the dead letter of an oversized interaction failed; spooling it");
                self.start_spooling();
                self.append_to_spool(key, payload);
            }
        }
    }

    fn start_spooling(&self) {
        if self.spool.is_some() && !self.spooling.swap(true, Ordering::AcqRel) {
            tracing::warn!("interactions now go to the local spool until the log is reachable again");
            self.changed.notify_waiters();
        }
    }

    fn append_to_spool(self: &Arc<Self>, key: &[u8], payload: &[u8]) {
        let Some(spool) = &self.spool else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("the log is unreachable and no spool is configured; interaction dropped");
            return;
        };
        if self.spool_full() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                capacity = self.config.spool_max_events,
                "the spool is full; interaction dropped (set the full-spool policy to fail_closed to refuse requests instead)"
            );
            return;
        }
        let _order = self.switch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let pending = loop {
            match spool.publish(SPOOL_TOPIC, key, payload) {
                Ok(pending) => break Some(pending),
                // The spool's queue drains in milliseconds; waiting keeps the order.
                Err(LogError::QueueFull) => std::thread::sleep(Duration::from_millis(1)),
                Err(error) => {
                    tracing::error!(%error, "the spool refused an interaction; dropped");
                    break None;
                }
            }
        };
        let Some(pending) = pending else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.spooled.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let inner = Arc::clone(self);
        self.runtime.spawn(async move {
            if let Err(error) = pending.await {
                inner.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "the spool could not make an interaction durable; dropped");
            }
            inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            inner.changed.notify_waiters();
        });
    }
}

/// Switches to the spool when the log stops acknowledging.
async fn watch_progress(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let outstanding = inner.direct_outstanding() > 0;
        let stalled =
            inner.last_progress.lock().map(|last| last.elapsed() >= inner.config.spool_after).unwrap_or(false);
        if outstanding && stalled && !inner.spooling.load(Ordering::Acquire) {
            tracing::warn!(after = ?inner.config.spool_after, "the log has acknowledged nothing lately");
            inner.start_spooling();
        }
    }
}

/// Forwards the spool to the log, in order, once everything published directly before
/// the switch is acknowledged; switches back to direct publishing when the spool is empty.
async fn drain(inner: Arc<Inner>, mut subscription: Box<dyn tollgate_eventlog::Subscription>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        if !inner.spooling.load(Ordering::Acquire) {
            let notified = inner.changed.notified();
            if !inner.spooling.load(Ordering::Acquire) {
                let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
            }
            continue;
        }
        // Direct events still outstanding are older than anything in the spool.
        if inner.direct_outstanding() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut batch = Vec::with_capacity(DRAIN_BATCH);
        while batch.len() < DRAIN_BATCH {
            let wait = if batch.is_empty() { Duration::from_millis(200) } else { Duration::ZERO };
            match tokio::time::timeout(wait, subscription.next()).await {
                Ok(Ok(record)) => batch.push(record),
                Ok(Err(error)) => {
                    tracing::error!(%error, "reading the spool failed");
                    tokio::time::sleep(backoff).await;
                    break;
                }
                Err(_elapsed) => break,
            }
        }
        if batch.is_empty() {
            // Everything spooled so far has been forwarded: go back to publishing
            // directly, unless an append slipped in (it holds the lock while appending).
            let _order = inner.switch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if inner.drained.load(Ordering::SeqCst) >= inner.spooled.load(Ordering::SeqCst) {
                inner.spooling.store(false, Ordering::Release);
                tracing::info!("the spool is drained; interactions go to the log directly again");
            }
            continue;
        }
        // Forward the batch; on any failure wait and forward it again from the start
        // (the log may then hold a duplicate, which every sink drops by event id).
        loop {
            if inner.closed.load(Ordering::SeqCst) {
                return;
            }
            match forward(&inner, &batch).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, events = batch.len(), "forwarding the spool failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let forwarded = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        if let Some(last) = batch.last()
            && let Err(error) = subscription.commit(&[last.next_position()]).await
        {
            tracing::warn!(%error, "committing the spool position failed; the batch may be forwarded again");
        }
        inner.drained.fetch_add(forwarded, Ordering::SeqCst);
        inner.changed.notify_waiters();
    }
}

/// Forwards `batch` to the log and waits for every acknowledgement. An event the log
/// refuses as too large is dead-lettered instead; any other failure fails the batch.
async fn forward(inner: &Inner, batch: &[tollgate_eventlog::Record]) -> Result<(), LogError> {
    let log = inner.log.as_ref();
    let mut pending = Vec::with_capacity(batch.len());
    for record in batch {
        let key = record.key.as_deref().unwrap_or_default();
        let published = loop {
            match log.publish(INTERACTIONS, key, &record.payload) {
                Err(LogError::QueueFull) => tokio::time::sleep(Duration::from_millis(5)).await,
                other => break other,
            }
        };
        pending.push((record, published));
    }
    for (record, published) in pending {
        let acknowledged = match published {
            Ok(ack) => ack.await.map(drop),
            Err(error) => Err(error),
        };
        match acknowledged {
            Ok(()) => {}
            Err(error @ LogError::TooLarge { .. }) => {
                let source =
                    SourceOffset { topic: SPOOL_TOPIC.to_owned(), partition: record.partition, offset: record.offset };
                let key = record.key.as_deref().unwrap_or_default();
                match inner.dead_letter(source, key, &record.payload, &error).await {
                    Ok(()) => {}
                    Err(LogError::TooLarge { .. }) => {
                        inner.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            "even the reduced dead letter of an oversized interaction is too large; dropped"
                        );
                    }
                    Err(failure) => return Err(failure),
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
