//! [`KafkaLog`]: the event log on Apache Kafka (or any Kafka-API broker) through rdkafka.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::producer::GatedProducer;
use crate::{EventLog, LogError, PendingAck, Position, Record, Subscription};

/// How to reach the Kafka cluster.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// `client.id` reported to the brokers.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Replication factor for topics Tollgate creates; `-1` uses the broker's default.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// librdkafka properties applied to every client, after Tollgate's defaults: put
    /// `security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.location` and similar here.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for producers only (for example `linger.ms`).
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties for consumers only (for example `session.timeout.ms`).
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// Hand records to the idempotent producer one batch at a time: records published
    /// while a batch is unacknowledged wait for it (the `producer` module says why). For a
    /// service that publishes a record at a time and shares its cores with its request
    /// path (the gateway); a service that publishes in bursts gains nothing from it.
    #[serde(skip)]
    pub one_batch_in_flight: bool,
}

/// librdkafka properties from a service's configuration file (`[kafka.properties]`,
/// `[kafka.producer_properties]`, `[kafka.consumer_properties]`), to lay over a
/// [`KafkaConfig`]: `security.protocol`, `sasl.*` and `ssl.*` for every client, tuning
/// such as `compression.type` or `linger.ms` for producers.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaProperties {
    /// For every client.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// For producers only.
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// For consumers only.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
}

impl KafkaProperties {
    /// Adds these properties to `kafka`; they win over what it holds.
    pub fn apply(&self, kafka: &mut KafkaConfig) {
        kafka.properties.extend(self.properties.clone());
        kafka.producer_properties.extend(self.producer_properties.clone());
        kafka.consumer_properties.extend(self.consumer_properties.clone());
    }
}

fn default_client_id() -> String {
    "tollgate".to_owned()
}

fn default_replication_factor() -> i32 {
    -1
}

impl KafkaConfig {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: default_client_id(),
            replication_factor: default_replication_factor(),
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            one_batch_in_flight: false,
        }
    }

    fn client_config(&self, specific: &BTreeMap<String, String>) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers).set("client.id", &self.client_id);
        for (name, value) in self.properties.iter().chain(specific) {
            config.set(name, value);
        }
        config
    }
}

/// The Kafka implementation of [`EventLog`].
///
/// The producer is idempotent with `acks=all`, so a retried send never duplicates or
/// reorders within a partition; publishes are batched by librdkafka (`linger.ms`), and
/// with [`KafkaConfig::one_batch_in_flight`] handed over one batch at a time.
#[derive(Clone)]
pub struct KafkaLog {
    config: Arc<KafkaConfig>,
    producer: Arc<GatedProducer>,
    admin: Arc<AdminClient<DefaultClientContext>>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog").field("bootstrap_servers", &self.config.bootstrap_servers).finish()
    }
}

impl KafkaLog {
    /// Creates the clients. Does not contact the brokers until first use.
    pub fn connect(config: KafkaConfig) -> Result<Self, LogError> {
        let mut producer_defaults = BTreeMap::from([
            ("enable.idempotence".to_owned(), "true".to_owned()),
            ("acks".to_owned(), "all".to_owned()),
            ("linger.ms".to_owned(), "5".to_owned()),
            ("compression.type".to_owned(), "lz4".to_owned()),
            ("message.timeout.ms".to_owned(), "30000".to_owned()),
        ]);
        producer_defaults.extend(config.producer_properties.clone());
        let producer = Arc::new(GatedProducer::create(
            &config.client_config(&producer_defaults),
            &producer_defaults,
            config.one_batch_in_flight,
        )?);
        let admin: AdminClient<DefaultClientContext> = config.client_config(&BTreeMap::new()).create()?;
        Ok(KafkaLog { config: Arc::new(config), producer, admin: Arc::new(admin) })
    }

    /// Waits until every enqueued event is acknowledged or `timeout` passes. Blocks the
    /// calling thread: call it from `spawn_blocking` or at shutdown.
    pub fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        self.producer.flush(timeout)
    }
}

#[async_trait::async_trait]
impl EventLog for KafkaLog {
    fn abandon_unacknowledged(&self) {
        self.producer.abandon_unacknowledged();
    }

    async fn ensure_topic(&self, name: &str, partitions: i32, compacted: bool) -> Result<(), LogError> {
        let cleanup_policy = if compacted { "compact" } else { "delete" };
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(self.config.replication_factor))
            .set("cleanup.policy", cleanup_policy);
        let options = AdminOptions::new().operation_timeout(Some(TOPIC_CREATION_TIMEOUT));
        let results = self.admin.create_topics([&topic], &options).await?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::error!(%topic, %code, "creating topic failed");
                    return Err(LogError::Kafka(KafkaError::AdminOp(code)));
                }
            }
        }
        // The producer looks the topic up now, so that its first records neither wait
        // for the lookup nor, for a partition the topic does not have, fail only later.
        // A broker can answer a creation before its metadata shows the topic.
        let lookup = || {
            let producer = Arc::clone(&self.producer);
            let name = name.to_owned();
            async move {
                tokio::task::spawn_blocking(move || {
                    described_partitions(producer.client(), &name, Duration::from_secs(5))?
                        .ok_or(LogError::UnknownTopic(name))
                })
                .await
                .map_err(|join_error| LogError::Io(std::io::Error::other(join_error)))?
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(500))
            .without_max_times()
            .with_total_delay(Some(TOPIC_CREATION_TIMEOUT));
        lookup
            .retry(backoff)
            .notify(|error, pause| tracing::debug!(%error, topic = name, ?pause, "looking up a topic just created"))
            .await?;
        Ok(())
    }

    fn publish(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<PendingAck, LogError> {
        self.producer.publish(topic, None, key, payload)
    }

    fn publish_to(&self, topic: &str, partition: i32, key: &[u8], payload: &[u8]) -> Result<PendingAck, LogError> {
        // To librdkafka a negative partition means "let the partitioner choose".
        if partition < 0 {
            return Err(LogError::UnknownPartition { topic: topic.to_owned(), partition });
        }
        self.producer.publish(topic, Some(partition), key, payload)
    }

    async fn read(&self, topic: &str, partition: i32, from_offset: i64, max: usize) -> Result<Vec<Record>, LogError> {
        let mut properties = BTreeMap::from([
            // librdkafka wants a group id for any consumer; nothing is ever committed.
            ("group.id".to_owned(), "tollgate-partition-reader".to_owned()),
            ("enable.auto.commit".to_owned(), "false".to_owned()),
            ("enable.partition.eof".to_owned(), "false".to_owned()),
        ]);
        properties.extend(self.config.consumer_properties.clone());
        let consumer: BaseConsumer = self.config.client_config(&properties).create()?;
        let topic = topic.to_owned();
        let timeout = Duration::from_secs(10);
        tokio::task::spawn_blocking(move || {
            let (_low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
            let mut records = Vec::new();
            if from_offset >= high || max == 0 {
                return Ok(records);
            }
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&topic, partition, Offset::Offset(from_offset.max(0)))?;
            consumer.assign(&list)?;
            let deadline = std::time::Instant::now() + timeout;
            while records.len() < max {
                let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                    return Err(LogError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("reading {topic}/{partition} from offset {from_offset} timed out"),
                    )));
                };
                let message = match consumer.poll(left) {
                    None => continue,
                    Some(Ok(message)) => message,
                    // librdkafka reconnects by itself; the deadline bounds the wait.
                    Some(Err(error)) if is_connection_report(&error) => {
                        tracing::debug!(%error, %topic, partition, "reading through a lost broker connection");
                        continue;
                    }
                    Some(Err(error)) => return Err(error.into()),
                };
                records.push(Record {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp_millis: message.timestamp().to_millis().unwrap_or(0),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                });
                if message.offset() + 1 >= high {
                    break;
                }
            }
            Ok(records)
        })
        .await
        .map_err(|join_error| LogError::Io(std::io::Error::other(join_error)))?
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Subscription>, LogError> {
        let mut consumer_defaults = BTreeMap::from([
            ("group.id".to_owned(), group.to_owned()),
            ("enable.auto.commit".to_owned(), "false".to_owned()),
            ("auto.offset.reset".to_owned(), "earliest".to_owned()),
            ("enable.partition.eof".to_owned(), "false".to_owned()),
        ]);
        consumer_defaults.extend(self.config.consumer_properties.clone());
        let context = GroupContext { generation: AtomicU64::new(0) };
        let consumer: StreamConsumer<GroupContext> =
            self.config.client_config(&consumer_defaults).create_with_context(context)?;
        consumer.subscribe(topics)?;
        Ok(Box::new(KafkaSubscription { consumer: Arc::new(consumer), unanswered_commit: None }))
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, LogError> {
        let producer = Arc::clone(&self.producer);
        let topic = topic.to_owned();
        let timeout = Duration::from_secs(10);
        // Metadata and watermark calls block the calling thread.
        tokio::task::spawn_blocking(move || {
            let client = producer.client();
            let Some(partitions) = described_partitions(client, &topic, timeout)? else {
                return Err(LogError::UnknownTopic(topic));
            };
            let mut ends = Vec::new();
            for partition in partitions {
                let (_low, high) = client.fetch_watermarks(&topic, partition, timeout)?;
                ends.push((partition, high));
            }
            ends.sort_unstable();
            Ok(ends)
        })
        .await
        .map_err(|join_error| LogError::Io(std::io::Error::other(join_error)))?
    }
}

/// How long creating a topic, and seeing it in the cluster's metadata, may take.
const TOPIC_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The partitions of `topic` in the cluster's metadata as `client` fetches it, or `None`
/// while the topic is not there (or has no partitions yet). Fetching also refreshes the
/// client's cache of the topic, which its producer checks each record's partition
/// against. Blocks the calling thread.
fn described_partitions<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<Vec<i32>>, LogError> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let Some(described) = metadata.topics().iter().find(|candidate| candidate.name() == topic) else {
        return Ok(None);
    };
    if described.error().is_some() || described.partitions().is_empty() {
        return Ok(None);
    }
    Ok(Some(described.partitions().iter().map(|partition| partition.id()).collect()))
}

/// Counts the rebalances a group member goes through, for [`Subscription::generation`].
struct GroupContext {
    generation: AtomicU64,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_) | Rebalance::Revoke(_)) {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct KafkaSubscription {
    consumer: Arc<StreamConsumer<GroupContext>>,
    /// A commit still waiting for the group coordinator after [`COMMIT_TIMEOUT`].
    unanswered_commit: Option<tokio::sync::oneshot::Receiver<KafkaResult<()>>>,
}

/// How long a caller waits for the group coordinator to answer an offset commit.
///
/// librdkafka's synchronous commit waits without limit while no coordinator is reachable
/// (a broker outage). The caller gets [`LogError::CommitTimeout`] instead and goes on; the
/// commit keeps waiting on a thread of its own, outside the async runtime's blocking pool
/// so that it never holds up the runtime's shutdown, and no second commit starts until it
/// is answered. Commits are cumulative, so the next one covers what this one carried.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Record, LogError> {
        let message = loop {
            match self.consumer.recv().await {
                Ok(message) => break message,
                // librdkafka reconnects by itself and the member keeps its partitions
                // through a short outage: ending here would make every caller rejoin.
                Err(error) if is_connection_report(&error) => {
                    tracing::debug!(%error, "reading through a lost broker connection");
                }
                Err(error) => return Err(error.into()),
            }
        };
        Ok(Record {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_millis: message.timestamp().to_millis().unwrap_or(0),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        })
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for position in positions {
            list.add_partition_offset(&position.topic, position.partition, Offset::Offset(position.next_offset))?;
        }
        if let Some(earlier) = self.unanswered_commit.as_mut() {
            match earlier.try_recv() {
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return Err(LogError::CommitPending),
                // Answered (either way) or abandoned: the new commit supersedes it.
                Ok(_) | Err(tokio::sync::oneshot::error::TryRecvError::Closed) => self.unanswered_commit = None,
            }
        }
        let consumer = Arc::clone(&self.consumer);
        let (answer, answered) = tokio::sync::oneshot::channel();
        // A synchronous commit blocks until the coordinator answers: keep it off the runtime.
        std::thread::Builder::new().name("tollgate-commit".to_owned()).spawn(move || {
            let _ = answer.send(consumer.commit(&list, CommitMode::Sync));
        })?;
        let answered = self.unanswered_commit.insert(answered);
        match tokio::time::timeout(COMMIT_TIMEOUT, answered).await {
            Ok(result) => {
                self.unanswered_commit = None;
                let result = result.map_err(|_| LogError::Io(std::io::Error::other("the commit thread ended")))?;
                Ok(result?)
            }
            Err(_) => Err(LogError::CommitTimeout(COMMIT_TIMEOUT)),
        }
    }

    fn assignment(&self) -> Vec<(String, i32)> {
        match self.consumer.assignment() {
            Ok(list) => {
                list.elements().iter().map(|element| (element.topic().to_owned(), element.partition())).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    async fn seek(&mut self, topic: &str, partition: i32, next_offset: i64) -> Result<(), LogError> {
        if !self.assignment().iter().any(|(assigned, number)| assigned == topic && *number == partition) {
            return Err(LogError::NotAssigned { topic: topic.to_owned(), partition });
        }
        let consumer = Arc::clone(&self.consumer);
        let topic = topic.to_owned();
        // The seek waits for the fetcher to restart at the new offset: keep it off the runtime.
        tokio::task::spawn_blocking(move || {
            consumer.seek(&topic, partition, Offset::Offset(next_offset.max(0)), Duration::from_secs(10))
        })
        .await
        .map_err(|join_error| LogError::Io(std::io::Error::other(join_error)))??;
        Ok(())
    }

    fn generation(&self) -> u64 {
        self.consumer.context().generation.load(Ordering::SeqCst)
    }
}

/// Whether `error` is librdkafka reporting the state of its broker connections (lost,
/// all down) rather than a problem with what is being read. librdkafka reconnects on its
/// own, so a reader that gets one keeps polling.
fn is_connection_report(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_reports_are_told_from_read_errors() {
        for code in [RDKafkaErrorCode::AllBrokersDown, RDKafkaErrorCode::BrokerTransportFailure] {
            assert!(is_connection_report(&KafkaError::MessageConsumption(code)), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::OffsetOutOfRange,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(!is_connection_report(&KafkaError::MessageConsumption(code)), "{code:?}");
        }
    }
}
