//! The event-log contract, run against both implementations: the embedded log (on a
//! temporary directory) and Kafka (on the broker `scripts/test` starts).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tollgate_eventlog::testing::{KAFKA_BROKERS_ENV, required_env, unique_name};
use tollgate_eventlog::{
    Ack, EmbeddedLog, EmbeddedLogConfig, EventLog, KafkaConfig, KafkaLog, LogError, PendingAck, Position, Record,
    Subscription,
};

/// Opens a log, and opens it again after the previous handle was dropped ("restart").
trait Harness: Send + Sync {
    fn open(&self) -> Arc<dyn EventLog>;
}

struct Embedded {
    dir: tempfile::TempDir,
}

impl Harness for Embedded {
    fn open(&self) -> Arc<dyn EventLog> {
        let mut config = EmbeddedLogConfig::new(self.dir.path());
        config.max_record_bytes = RECORD_LIMIT;
        Arc::new(EmbeddedLog::open(config).unwrap())
    }
}

struct Kafka {
    brokers: String,
    one_batch_in_flight: bool,
}

impl Harness for Kafka {
    fn open(&self) -> Arc<dyn EventLog> {
        let mut config = KafkaConfig::new(&self.brokers);
        config.replication_factor = 1;
        config.one_batch_in_flight = self.one_batch_in_flight;
        // Small groups in tests: rebalance quickly instead of waiting out Kafka defaults.
        config.consumer_properties.insert("session.timeout.ms".into(), "10000".into());
        config.consumer_properties.insert("heartbeat.interval.ms".into(), "500".into());
        Arc::new(KafkaLog::connect(config).unwrap())
    }
}

fn embedded() -> Embedded {
    Embedded { dir: tempfile::tempdir().unwrap() }
}

fn kafka() -> Kafka {
    Kafka { brokers: required_env(KAFKA_BROKERS_ENV), one_batch_in_flight: false }
}

/// As the gateway publishes: one batch in flight at a time.
fn kafka_one_batch() -> Kafka {
    Kafka { brokers: required_env(KAFKA_BROKERS_ENV), one_batch_in_flight: true }
}

const WAIT: Duration = Duration::from_secs(60);
/// The largest record every harness accepts: librdkafka's default `message.max.bytes`,
/// and the embedded log set to match.
const RECORD_LIMIT: usize = 1_000_000;

async fn next_within(subscription: &mut dyn Subscription, limit: Duration) -> Option<Record> {
    match tokio::time::timeout(limit, subscription.next()).await {
        Ok(result) => Some(result.unwrap()),
        Err(_elapsed) => None,
    }
}

async fn read_exactly(subscription: &mut dyn Subscription, count: usize) -> Vec<Record> {
    let mut records = Vec::with_capacity(count);
    while records.len() < count {
        match next_within(subscription, WAIT).await {
            Some(record) => records.push(record),
            None => panic!("only {} of {count} records arrived within {WAIT:?}", records.len()),
        }
    }
    records
}

/// The highest position read in each partition.
fn positions_after(records: &[Record]) -> Vec<Position> {
    let mut latest: BTreeMap<(String, i32), Position> = BTreeMap::new();
    for record in records {
        let position = record.next_position();
        let entry = latest.entry((record.topic.clone(), record.partition)).or_insert_with(|| position.clone());
        if position.next_offset > entry.next_offset {
            *entry = position;
        }
    }
    latest.into_values().collect()
}

async fn acknowledged_events_survive_a_restart(harness: &dyn Harness) {
    let topic = unique_name("survive");
    let mut acks = HashMap::new();
    {
        let log = harness.open();
        log.ensure_topic(&topic, 3, false).await.unwrap();
        let mut pending = Vec::new();
        for sequence in 0..300 {
            let payload = format!("event-{sequence}");
            let key = format!("key-{}", sequence % 10);
            pending.push((payload.clone(), log.publish(&topic, key.as_bytes(), payload.as_bytes()).unwrap()));
        }
        for (payload, ack) in pending {
            let ack = ack.await.unwrap();
            acks.insert(payload, (ack.partition, ack.offset));
        }
    }
    let log = harness.open();
    let ends = log.end_offsets(&topic).await.unwrap();
    assert_eq!(ends.iter().map(|(_, end)| end).sum::<i64>(), 300, "end offsets {ends:?}");
    let mut subscription = log.subscribe(&unique_name("reader"), &[&topic]).await.unwrap();
    let records = read_exactly(subscription.as_mut(), 300).await;
    let mut seen = HashMap::new();
    for record in records {
        let payload = String::from_utf8(record.payload).unwrap();
        assert!(seen.insert(payload, (record.partition, record.offset)).is_none(), "a record was read twice");
    }
    assert_eq!(seen, acks, "every acknowledged event is present, where its ack said");
}

async fn a_group_resumes_exactly_after_its_last_commit(harness: &dyn Harness) {
    let topic = unique_name("resume");
    let group = unique_name("group");
    let log = harness.open();
    log.ensure_topic(&topic, 2, false).await.unwrap();
    for sequence in 0..40 {
        let key = format!("key-{}", sequence % 4);
        tollgate_eventlog::publish_and_wait(log.as_ref(), &topic, key.as_bytes(), format!("{sequence}").as_bytes())
            .await
            .unwrap();
    }
    let committed_records;
    {
        let mut subscription = log.subscribe(&group, &[&topic]).await.unwrap();
        committed_records = read_exactly(subscription.as_mut(), 15).await;
        subscription.commit(&positions_after(&committed_records)).await.unwrap();
        // Read more without committing: these must be delivered again.
        let uncommitted = read_exactly(subscription.as_mut(), 5).await;
        assert!(uncommitted.iter().all(|record| !committed_records.contains(record)));
    }
    drop(log);
    let log = harness.open();
    let mut subscription = log.subscribe(&group, &[&topic]).await.unwrap();
    let rest = read_exactly(subscription.as_mut(), 25).await;
    let committed: BTreeSet<(i32, i64)> = committed_records.iter().map(|r| (r.partition, r.offset)).collect();
    let resumed: BTreeSet<(i32, i64)> = rest.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(resumed.len(), 25, "no record is delivered twice after resuming");
    assert!(committed.is_disjoint(&resumed), "committed records are not delivered again");
    // Each partition resumes at exactly its committed position.
    for position in positions_after(&committed_records) {
        let first = rest.iter().filter(|r| r.partition == position.partition).map(|r| r.offset).min();
        if let Some(first) = first {
            assert_eq!(first, position.next_offset, "partition {} resumed at its commit", position.partition);
        }
    }
    assert!(next_within(subscription.as_mut(), Duration::from_secs(2)).await.is_none(), "nothing beyond the 40");
}

async fn per_key_order_holds(harness: &dyn Harness) {
    let topic = unique_name("order");
    let log = harness.open();
    log.ensure_topic(&topic, 4, false).await.unwrap();
    let keys = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let per_key = 50;
    let mut pending = Vec::new();
    for sequence in 0..per_key {
        for key in keys {
            let payload = format!("{key}:{sequence}");
            pending.push(log.publish(&topic, key.as_bytes(), payload.as_bytes()).unwrap());
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
    let mut subscription = log.subscribe(&unique_name("reader"), &[&topic]).await.unwrap();
    let records = read_exactly(subscription.as_mut(), keys.len() * per_key).await;
    let mut sequences: HashMap<String, Vec<usize>> = HashMap::new();
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    for record in records {
        let text = String::from_utf8(record.payload).unwrap();
        let (key, sequence) = text.split_once(':').unwrap();
        assert_eq!(record.key.as_deref(), Some(key.as_bytes()));
        let partition = *partition_of_key.entry(key.to_owned()).or_insert(record.partition);
        assert_eq!(partition, record.partition, "all events of key {key} share a partition");
        sequences.entry(key.to_owned()).or_default().push(sequence.parse().unwrap());
    }
    for key in keys {
        assert_eq!(sequences[key], (0..per_key).collect::<Vec<_>>(), "events of key {key} arrive in publish order");
    }
}

/// Reads from a subscription in a task, reporting records and the assignment as it changes.
fn spawn_reader(
    mut subscription: Box<dyn Subscription>,
    records: tokio::sync::mpsc::UnboundedSender<Record>,
) -> (watch::Receiver<Vec<(String, i32)>>, tokio::task::JoinHandle<()>) {
    let (assignment_tx, assignment_rx) = watch::channel(Vec::new());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                record = subscription.next() => {
                    if records.send(record.unwrap()).is_err() { return; }
                }
                _ = tick.tick() => {
                    let mut assignment = subscription.assignment();
                    assignment.sort();
                    assignment_tx.send_if_modified(|current| {
                        let changed = *current != assignment;
                        *current = assignment.clone();
                        changed
                    });
                }
            }
        }
    });
    (assignment_rx, task)
}

async fn two_members_of_a_group_split_the_partitions(harness: &dyn Harness) {
    let topic = unique_name("split");
    let group = unique_name("group");
    let partitions = 4;
    let log = harness.open();
    log.ensure_topic(&topic, partitions, false).await.unwrap();
    let (sender_a, mut records_a) = tokio::sync::mpsc::unbounded_channel();
    let (sender_b, mut records_b) = tokio::sync::mpsc::unbounded_channel();
    let (mut assignment_a, task_a) = spawn_reader(log.subscribe(&group, &[&topic]).await.unwrap(), sender_a);
    let (mut assignment_b, task_b) = spawn_reader(log.subscribe(&group, &[&topic]).await.unwrap(), sender_b);

    // Wait until the group is stable: both members own partitions, together all of them.
    let stable = tokio::time::timeout(WAIT, async {
        loop {
            let a: BTreeSet<_> = assignment_a.borrow_and_update().iter().cloned().collect();
            let b: BTreeSet<_> = assignment_b.borrow_and_update().iter().cloned().collect();
            if !a.is_empty() && !b.is_empty() && a.is_disjoint(&b) && a.len() + b.len() == partitions as usize {
                return (a, b);
            }
            tokio::select! {
                _ = assignment_a.changed() => {}
                _ = assignment_b.changed() => {}
            }
        }
    })
    .await;
    let (owned_a, owned_b) = stable.expect("the two members never split the partitions between them");

    let total = 400;
    for sequence in 0..total {
        let key = format!("key-{}", sequence % 40);
        log.publish(&topic, key.as_bytes(), format!("{sequence}").as_bytes()).unwrap().await.unwrap();
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got_a.len() + got_b.len() < total {
            tokio::select! {
                Some(record) = records_a.recv() => got_a.push(record),
                Some(record) = records_b.recv() => got_b.push(record),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {total} records arrived", got_a.len() + got_b.len()));
    task_a.abort();
    task_b.abort();

    assert!(!got_a.is_empty() && !got_b.is_empty(), "both members received records");
    assert!(got_a.iter().all(|record| owned_a.contains(&(record.topic.clone(), record.partition))));
    assert!(got_b.iter().all(|record| owned_b.contains(&(record.topic.clone(), record.partition))));
    let mut payloads: Vec<usize> =
        got_a.iter().chain(&got_b).map(|record| String::from_utf8_lossy(&record.payload).parse().unwrap()).collect();
    payloads.sort_unstable();
    assert_eq!(payloads, (0..total).collect::<Vec<_>>(), "every record exactly once across the group");
}

async fn partitions_are_written_and_read_directly(harness: &dyn Harness) {
    let topic = unique_name("direct");
    let log = harness.open();
    log.ensure_topic(&topic, 3, false).await.unwrap();
    for sequence in 0..10 {
        let ack = log.publish_to(&topic, 2, b"any-key", format!("p2-{sequence}").as_bytes()).unwrap().await.unwrap();
        assert_eq!((ack.partition, ack.offset), (2, sequence), "the partition asked for, in order");
    }
    // The producer knows the topic's partitions and nothing is in flight: refused at once.
    let refused = log.publish_to(&topic, 3, b"k", b"v");
    assert!(
        matches!(&refused, Err(LogError::UnknownPartition { partition: 3, .. })),
        "there is no partition 3: {refused:?}"
    );

    let payloads = |records: &[Record]| -> Vec<(i64, String)> {
        records.iter().map(|r| (r.offset, String::from_utf8(r.payload.clone()).unwrap())).collect()
    };
    let middle = log.read(&topic, 2, 3, 4).await.unwrap();
    assert_eq!(payloads(&middle), [3, 4, 5, 6].map(|offset| (offset, format!("p2-{offset}"))));
    assert!(middle.iter().all(|record| record.topic == topic && record.partition == 2));
    let tail = log.read(&topic, 2, 8, 100).await.unwrap();
    assert_eq!(payloads(&tail), [(8, "p2-8".to_owned()), (9, "p2-9".to_owned())], "fewer when the partition ends");
    assert!(log.read(&topic, 2, 10, 5).await.unwrap().is_empty(), "nothing past the end");
    assert!(log.read(&topic, 0, 0, 5).await.unwrap().is_empty(), "an empty partition");
}

/// Asserts that a record for `partition`, which `topic` does not have, failed with
/// [`LogError::UnknownPartition`]: when published, or through its ack.
async fn fails_as_unknown_partition(published: Result<PendingAck, LogError>, topic: &str, partition: i32) {
    let error = match published {
        Err(error) => error,
        Ok(ack) => tokio::time::timeout(WAIT, ack)
            .await
            .expect("the ack of a record for a partition that does not exist resolves")
            .expect_err("a record for a partition that does not exist was acknowledged"),
    };
    assert!(
        matches!(&error, LogError::UnknownPartition { topic: named, partition: number }
            if named == topic && *number == partition),
        "a record for {topic}/{partition}: {error:?}"
    );
}

async fn acknowledged_within(ack: PendingAck) -> Ack {
    tokio::time::timeout(WAIT, ack).await.expect("the ack resolves").unwrap()
}

/// Right after the topic is created, and from a log that has not looked the topic up
/// yet, a record for a partition the topic lacks fails and the next record is stored.
async fn an_unknown_partition_fails_right_after_ensure_topic(harness: &dyn Harness) {
    let topic = unique_name("fresh");
    let log = harness.open();
    log.ensure_topic(&topic, 2, false).await.unwrap();
    let refused = log.publish_to(&topic, 2, b"k", b"nowhere");
    let after = log.publish_to(&topic, 1, b"k", b"after").unwrap();
    fails_as_unknown_partition(refused, &topic, 2).await;
    let ack = acknowledged_within(after).await;
    assert_eq!((ack.partition, ack.offset), (1, 0));
    fails_as_unknown_partition(log.publish_to(&topic, -1, b"k", b"nowhere"), &topic, -1).await;
    drop(log);

    let reopened = harness.open();
    let refused = reopened.publish_to(&topic, 5, b"k", b"nowhere");
    let after = reopened.publish_to(&topic, 0, b"k", b"after").unwrap();
    fails_as_unknown_partition(refused, &topic, 5).await;
    let ack = acknowledged_within(after).await;
    assert_eq!((ack.partition, ack.offset), (0, 0));
    let stored: Vec<i64> = reopened.end_offsets(&topic).await.unwrap().into_iter().map(|(_, end)| end).collect();
    assert_eq!(stored, [1, 1], "one record in each partition, nothing else");
}

/// A record for a partition the topic lacks, published while earlier records are
/// unacknowledged, fails without holding up the records published after it: every one
/// of those is stored, in order.
async fn an_unknown_partition_fails_while_a_batch_is_in_flight(harness: &dyn Harness) {
    let topic = unique_name("inflight");
    let log = harness.open();
    log.ensure_topic(&topic, 2, false).await.unwrap();
    let before: Vec<_> =
        (0..200).map(|n| log.publish_to(&topic, 0, b"k", format!("before-{n}").as_bytes()).unwrap()).collect();
    let refused = log.publish_to(&topic, 7, b"k", b"nowhere");
    let after: Vec<_> =
        (0..200).map(|n| log.publish_to(&topic, 0, b"k", format!("after-{n}").as_bytes()).unwrap()).collect();
    fails_as_unknown_partition(refused, &topic, 7).await;
    let mut offsets = Vec::new();
    for ack in before.into_iter().chain(after) {
        let ack = acknowledged_within(ack).await;
        assert_eq!(ack.partition, 0);
        offsets.push(ack.offset);
    }
    assert_eq!(offsets, (0..400).collect::<Vec<_>>(), "every record after the refused one, in order");
    let stored = log.read(&topic, 0, 0, 1_000).await.unwrap();
    let payloads: Vec<String> =
        stored.iter().map(|record| String::from_utf8(record.payload.clone()).unwrap()).collect();
    let expected: Vec<String> =
        (0..200).map(|n| format!("before-{n}")).chain((0..200).map(|n| format!("after-{n}"))).collect();
    assert_eq!(payloads, expected);
}

/// A record over the log's size limit fails as too large, alone or behind records in
/// flight, and never holds up the records published after it.
async fn a_record_over_the_size_limit_fails_and_the_next_go_on(harness: &dyn Harness) {
    let topic = unique_name("large");
    let log = harness.open();
    log.ensure_topic(&topic, 1, false).await.unwrap();
    let large = vec![b'x'; RECORD_LIMIT + 1];
    let before: Vec<_> =
        (0..50).map(|n| log.publish(&topic, b"k", format!("before-{n}").as_bytes()).unwrap()).collect();
    let refused = log.publish(&topic, b"k", &large);
    let after: Vec<_> = (0..50).map(|n| log.publish(&topic, b"k", format!("after-{n}").as_bytes()).unwrap()).collect();
    let error = match refused {
        Err(error) => error,
        Ok(ack) => tokio::time::timeout(WAIT, ack)
            .await
            .expect("the ack of a record over the limit resolves")
            .expect_err("a record over the size limit was acknowledged"),
    };
    assert!(
        matches!(&error, LogError::TooLarge { topic: named, bytes } if named == &topic && *bytes >= large.len()),
        "{error:?}"
    );
    let mut offsets = Vec::new();
    for ack in before.into_iter().chain(after) {
        offsets.push(acknowledged_within(ack).await.offset);
    }
    assert_eq!(offsets, (0..100).collect::<Vec<_>>(), "every record but the large one, in order");
    let stored = log.read(&topic, 0, 0, 1_000).await.unwrap();
    assert_eq!(stored.len(), 100);
    assert!(stored.iter().all(|record| record.payload.len() < 100), "the large record was not stored");
}

async fn a_member_seeks_and_notices_rebalances(harness: &dyn Harness) {
    let topic = unique_name("seek");
    let group = unique_name("group");
    let log = harness.open();
    log.ensure_topic(&topic, 1, false).await.unwrap();
    for sequence in 0..10 {
        log.publish(&topic, b"k", format!("{sequence}").as_bytes()).unwrap().await.unwrap();
    }
    let mut member = log.subscribe(&group, &[&topic]).await.unwrap();
    let first = read_exactly(member.as_mut(), 10).await;
    assert_eq!(first.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());

    member.seek(&topic, 0, 3).await.unwrap();
    let again = read_exactly(member.as_mut(), 2).await;
    assert_eq!(again.iter().map(|r| r.offset).collect::<Vec<_>>(), [3, 4], "back to the offset asked for");
    member.seek(&topic, 0, 9).await.unwrap();
    assert_eq!(read_exactly(member.as_mut(), 1).await[0].offset, 9, "and forward");
    assert!(member.seek(&topic, 5, 0).await.is_err(), "a partition the member does not own");

    // A second member joins: the first sees its generation change.
    let before = member.generation();
    let (sender, _records) = tokio::sync::mpsc::unbounded_channel();
    let (_assignment, other) = spawn_reader(log.subscribe(&group, &[&topic]).await.unwrap(), sender);
    let changed = tokio::time::timeout(WAIT, async {
        while member.generation() == before {
            let _ = next_within(member.as_mut(), Duration::from_millis(200)).await;
        }
    })
    .await;
    other.abort();
    assert!(changed.is_ok(), "the generation never changed after a second member joined");
}

macro_rules! contract_suite {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn acknowledged_events_survive_a_restart() {
                super::acknowledged_events_survive_a_restart(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_group_resumes_exactly_after_its_last_commit() {
                super::a_group_resumes_exactly_after_its_last_commit(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn per_key_order_holds() {
                super::per_key_order_holds(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_members_of_a_group_split_the_partitions() {
                super::two_members_of_a_group_split_the_partitions(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn partitions_are_written_and_read_directly() {
                super::partitions_are_written_and_read_directly(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_unknown_partition_fails_right_after_ensure_topic() {
                super::an_unknown_partition_fails_right_after_ensure_topic(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_unknown_partition_fails_while_a_batch_is_in_flight() {
                super::an_unknown_partition_fails_while_a_batch_is_in_flight(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_member_seeks_and_notices_rebalances() {
                super::a_member_seeks_and_notices_rebalances(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_record_over_the_size_limit_fails_and_the_next_go_on() {
                super::a_record_over_the_size_limit_fails_and_the_next_go_on(&$harness).await;
            }
        }
    };
}

contract_suite!(embedded_log, embedded());
contract_suite!(kafka_log, kafka());
contract_suite!(kafka_log_one_batch_in_flight, kafka_one_batch());

#[tokio::test]
async fn embedded_log_refuses_unknown_topics_and_a_second_opener() {
    let harness = embedded();
    let log = harness.open();
    let error = log.publish("no-such-topic", b"k", b"v").unwrap_err();
    assert!(error.to_string().contains("no-such-topic"), "{error}");
    let second = EmbeddedLog::open(EmbeddedLogConfig::new(harness.dir.path()));
    assert!(matches!(second, Err(tollgate_eventlog::LogError::Locked { .. })), "{second:?}");
}

/// A broker of the test's own (so it can be stopped) and a log on it.
fn own_broker() -> (tollgate_eventlog::testing::TestBroker, Arc<dyn EventLog>) {
    let broker = tollgate_eventlog::testing::TestBroker::start();
    let log = Kafka { brokers: broker.address.clone(), one_batch_in_flight: false }.open();
    (broker, log)
}

/// With the broker gone, a commit fails within a bounded time instead of waiting for a
/// coordinator forever, a second one says the first is still unanswered, and the runtime
/// (whose shutdown waits for its blocking threads) still ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_without_a_broker_fails_in_bounded_time() {
    let (broker, log) = own_broker();
    let topic = unique_name("orphan");
    log.ensure_topic(&topic, 1, false).await.unwrap();
    tollgate_eventlog::publish_and_wait(log.as_ref(), &topic, b"k", b"v").await.unwrap();
    let mut subscription = log.subscribe(&unique_name("group"), &[&topic]).await.unwrap();
    let record = read_exactly(subscription.as_mut(), 1).await.remove(0);
    subscription.commit(&[record.next_position()]).await.unwrap();
    drop(broker);

    let started = std::time::Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(30), subscription.commit(&[record.next_position()])).await;
    let waited = started.elapsed();
    assert!(
        matches!(first, Ok(Err(tollgate_eventlog::LogError::CommitTimeout(_)))),
        "a commit with no broker: {first:?} after {waited:?}"
    );
    let second = tokio::time::timeout(Duration::from_secs(1), subscription.commit(&[record.next_position()])).await;
    assert!(matches!(second, Ok(Err(tollgate_eventlog::LogError::CommitPending))), "{second:?}");
}

/// Records published while earlier ones are unacknowledged wait in front of librdkafka
/// and follow as the next batch: every one is acknowledged, each key's offsets rise in
/// publish order, the topic holds exactly what was published, and `flush` returns only
/// once the waiting records are acknowledged too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_published_behind_a_batch_in_flight_all_arrive_in_order() {
    let mut config = KafkaConfig::new(required_env(KAFKA_BROKERS_ENV));
    config.replication_factor = 1;
    config.one_batch_in_flight = true;
    // Small requests, so the records waiting split into many batches.
    config.producer_properties.insert("batch.num.messages".into(), "100".into());
    let log = KafkaLog::connect(config).unwrap();
    let topic = unique_name("gate");
    log.ensure_topic(&topic, 4, false).await.unwrap();
    let keys = ["alpha", "bravo", "charlie"];
    let rounds = 2_000;
    let mut pending = Vec::new();
    for sequence in 0..rounds {
        for key in keys {
            let payload = format!("{key}:{sequence}");
            pending.push((key, log.publish(&topic, key.as_bytes(), payload.as_bytes()).unwrap()));
        }
    }
    let flusher = log.clone();
    let flushed = tokio::task::spawn_blocking(move || flusher.flush(Duration::from_secs(60))).await.unwrap();
    flushed.unwrap();
    let mut last_offset: HashMap<&str, i64> = HashMap::new();
    for (key, ack) in pending {
        // Already acknowledged: flush waited for every record, waiting ones included.
        let ack = tokio::time::timeout(Duration::from_millis(100), ack).await.expect("flush returned early").unwrap();
        let previous = last_offset.insert(key, ack.offset);
        assert!(
            previous.is_none_or(|previous| previous < ack.offset),
            "key {key}: offset {} after {previous:?}",
            ack.offset
        );
    }
    let ends: i64 = log.end_offsets(&topic).await.unwrap().iter().map(|(_, end)| end).sum();
    assert_eq!(ends, i64::try_from(keys.len() * rounds).unwrap(), "the topic holds exactly what was published");
}

/// With the broker gone, records waiting behind the stuck batch fail when the
/// unacknowledged ones are abandoned, as librdkafka's own queued records do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_abandoning_fails_the_records_waiting_behind_a_stuck_batch() {
    let broker = tollgate_eventlog::testing::TestBroker::start();
    let mut config = KafkaConfig::new(&broker.address);
    config.replication_factor = 1;
    config.producer_properties.insert("message.timeout.ms".into(), "0".into());
    config.one_batch_in_flight = true;
    let log = KafkaLog::connect(config).unwrap();
    let topic = unique_name("stuck");
    log.ensure_topic(&topic, 1, false).await.unwrap();
    tollgate_eventlog::publish_and_wait(&log, &topic, b"k", b"before").await.unwrap();
    drop(broker);

    let pending: Vec<_> =
        (0..100).map(|n| log.publish(&topic, b"k", format!("after:{n}").as_bytes()).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    log.abandon_unacknowledged();
    let outcomes = tokio::time::timeout(Duration::from_secs(30), await_all(pending)).await.expect("every ack resolves");
    assert_eq!(outcomes.len(), 100);
    assert!(outcomes.iter().all(Result::is_err), "no record was acknowledged without a broker: {outcomes:?}");
}

async fn await_all(
    pending: Vec<tollgate_eventlog::PendingAck>,
) -> Vec<Result<tollgate_eventlog::Ack, tollgate_eventlog::LogError>> {
    let mut outcomes = Vec::with_capacity(pending.len());
    for ack in pending {
        outcomes.push(ack.await);
    }
    outcomes
}

/// Stops `broker` now and starts it again after `down`, on a blocking thread.
fn restart_in(
    mut broker: tollgate_eventlog::testing::TestBroker,
    down: Duration,
) -> tokio::task::JoinHandle<tollgate_eventlog::testing::TestBroker> {
    broker.stop();
    tokio::task::spawn_blocking(move || {
        std::thread::sleep(down);
        broker.start_again();
        broker
    })
}

/// A read that starts while the broker is down returns everything once the broker is back
/// within the read's deadline: librdkafka's reports of lost connections do not end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_read_rides_out_a_broker_restart() {
    let (broker, log) = own_broker();
    let topic = unique_name("reread");
    log.ensure_topic(&topic, 1, false).await.unwrap();
    let pending: Vec<_> = (0..100).map(|n| log.publish(&topic, b"k", format!("{n}").as_bytes()).unwrap()).collect();
    for ack in pending {
        ack.await.unwrap();
    }

    let restarted = restart_in(broker, Duration::from_secs(3));
    let records = log.read(&topic, 0, 0, 100).await.expect("the read waits out the restart");
    let _broker = restarted.await.unwrap();
    let payloads: Vec<String> =
        records.iter().map(|record| String::from_utf8(record.payload.clone()).unwrap()).collect();
    let expected: Vec<String> = (0..100).map(|n| n.to_string()).collect();
    assert_eq!(payloads, expected);
}

/// A member reading while the broker restarts carries on with the next record once the
/// broker is back: librdkafka's reports of lost connections are not read errors, and the
/// group member does not have to be started again. The restart may make the member
/// rejoin its group (when the broker is slow to come back, it does), so it resumes at
/// the position it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_subscription_rides_out_a_broker_restart() {
    let (broker, log) = own_broker();
    let topic = unique_name("follow");
    log.ensure_topic(&topic, 1, false).await.unwrap();
    tollgate_eventlog::publish_and_wait(log.as_ref(), &topic, b"k", b"before").await.unwrap();
    let mut subscription = log.subscribe(&unique_name("group"), &[&topic]).await.unwrap();
    let before = read_exactly(subscription.as_mut(), 1).await.remove(0);
    assert_eq!(before.payload, b"before");
    subscription.commit(&[before.next_position()]).await.unwrap();

    let restarted = restart_in(broker, Duration::from_secs(3));
    let publisher = Arc::clone(&log);
    let published = {
        let topic = topic.clone();
        tokio::spawn(
            async move { tollgate_eventlog::publish_and_wait(publisher.as_ref(), &topic, b"k", b"after").await },
        )
    };
    // `next_within` fails the test on any error from `next`.
    let record = next_within(subscription.as_mut(), WAIT).await.expect("the record published after the restart");
    assert_eq!(record.payload, b"after");
    assert_eq!(record.offset, 1);
    published.await.unwrap().unwrap();
    let _broker = restarted.await.unwrap();
}
