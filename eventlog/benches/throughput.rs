//! Publish and consume throughput of both event-log implementations, side by side in one
//! run: the embedded log (SQLite, group commit, fsync per commit) and Kafka (the broker
//! named by `TOLLGATE_TEST_KAFKA_BROKERS`; `scripts/bench-eventlog` starts one).
//!
//! Each run publishes `EVENTS` payloads of `PAYLOAD_BYTES` bytes over 64 keys into an
//! 8-partition topic, all enqueued at once and acknowledged as they complete, then reads
//! them back as one consumer group member.
//!
//! Usage: scripts/bench-eventlog [events]

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A benchmark fails by panicking.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_eventlog::testing::unique_name;
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog, KafkaConfig, KafkaLog, LogError};

const PAYLOAD_BYTES: usize = 1024;
const PARTITIONS: i32 = 8;
const KEYS: usize = 64;

struct Measured {
    publish: Duration,
    consume: Duration,
}

async fn measure(log: Arc<dyn EventLog>, events: usize) -> Measured {
    let topic = unique_name("bench");
    log.ensure_topic(&topic, PARTITIONS, false).await.unwrap();
    let payload = vec![b'x'; PAYLOAD_BYTES];
    let keys: Vec<String> = (0..KEYS).map(|key| format!("key-{key}")).collect();

    let started = Instant::now();
    let mut pending = Vec::with_capacity(events);
    for sequence in 0..events {
        let key = keys[sequence % KEYS].as_bytes();
        loop {
            match log.publish(&topic, key, &payload) {
                Ok(ack) => {
                    pending.push(ack);
                    break;
                }
                // Local queue full: let earlier events drain, then publish the same event.
                Err(LogError::QueueFull) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(error) => panic!("publish failed: {error}"),
            }
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
    let publish = started.elapsed();

    let started = Instant::now();
    let mut subscription = log.subscribe(&unique_name("bench-reader"), &[&topic]).await.unwrap();
    for _ in 0..events {
        tokio::time::timeout(Duration::from_secs(120), subscription.next()).await.unwrap().unwrap();
    }
    let consume = started.elapsed();
    Measured { publish, consume }
}

fn rate(events: usize, elapsed: Duration) -> String {
    let per_second = events as f64 / elapsed.as_secs_f64();
    let megabytes = per_second * PAYLOAD_BYTES as f64 / 1_048_576.0;
    format!("{per_second:>10.0} events/s {megabytes:>7.1} MiB/s ({:>7.2?})", elapsed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events: usize = std::env::args().skip(1).find_map(|argument| argument.parse().ok()).unwrap_or(200_000);
    println!("event log throughput: {events} events of {PAYLOAD_BYTES} B, {KEYS} keys, {PARTITIONS} partitions");

    let dir = tempfile::tempdir().unwrap();
    let embedded = measure(Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).unwrap()), events).await;
    println!("embedded publish {}", rate(events, embedded.publish));
    println!("embedded consume {}", rate(events, embedded.consume));

    match std::env::var("TOLLGATE_TEST_KAFKA_BROKERS") {
        Ok(brokers) => {
            let mut config = KafkaConfig::new(brokers);
            config.replication_factor = 1;
            let kafka = measure(Arc::new(KafkaLog::connect(config).unwrap()), events).await;
            println!("kafka    publish {}", rate(events, kafka.publish));
            println!("kafka    consume {}", rate(events, kafka.consume));
        }
        Err(_) => println!("kafka    skipped: TOLLGATE_TEST_KAFKA_BROKERS is not set (scripts/bench-eventlog sets it)"),
    }
}
