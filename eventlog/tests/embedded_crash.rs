//! A publisher killed with SIGKILL loses no event it had an acknowledgement for.
//!
//! The test re-runs its own binary as a child process that publishes as fast as it can
//! and prints one line per acknowledged event. The parent kills it mid-stream, reopens
//! the log and checks that every acknowledged event is there, where the ack said.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog};

const CHILD_DIR_ENV: &str = "TOLLGATE_CRASH_TEST_CHILD_DIR";
const TOPIC: &str = "crash-test";

/// The child: publishes forever, in waves of concurrent publishes, printing each ack.
/// Does nothing when run as an ordinary test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_publisher() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else { return };
    let log = EmbeddedLog::open(EmbeddedLogConfig::new(dir)).unwrap();
    log.ensure_topic(TOPIC, 4, false).await.unwrap();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready").unwrap();
    stdout.flush().unwrap();
    let mut sequence = 0u64;
    loop {
        let mut wave = Vec::new();
        for _ in 0..64 {
            let key = format!("key-{}", sequence % 16);
            let payload = format!("event-{sequence}");
            wave.push((sequence, log.publish(TOPIC, key.as_bytes(), payload.as_bytes()).unwrap()));
            sequence += 1;
        }
        for (sequence, pending) in wave {
            let ack = pending.await.unwrap();
            writeln!(stdout, "ack {sequence} {} {}", ack.partition, ack.offset).unwrap();
        }
        stdout.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_publish_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_publisher", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acked = HashMap::new();
        let mut killer = Some(child);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let ["ack", sequence, partition, offset] = fields[..] {
                acked.insert(
                    sequence.parse::<u64>().unwrap(),
                    (partition.parse::<i32>().unwrap(), offset.parse::<i64>().unwrap()),
                );
            }
            // Kill in the middle of a wave, once a fair amount is on disk.
            if acked.len() >= 5_000
                && let Some(mut child) = killer.take()
            {
                child.kill().unwrap(); // SIGKILL on Unix
                child.wait().unwrap();
            }
        }
        if let Some(mut child) = killer {
            child.kill().ok();
            child.wait().ok();
        }
        acked
    });
    let acked = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
    assert!(acked.len() >= 5_000, "the child acknowledged only {} events before dying", acked.len());

    let log = EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).unwrap();
    let ends = log.end_offsets(TOPIC).await.unwrap();
    let stored: i64 = ends.iter().map(|(_, end)| end).sum();
    assert!(stored >= acked.len() as i64, "{stored} stored < {} acknowledged", acked.len());

    let mut subscription = log.subscribe("verify", &[TOPIC]).await.unwrap();
    let mut found = HashMap::new();
    for _ in 0..stored {
        let record = tokio::time::timeout(Duration::from_secs(30), subscription.next()).await.unwrap().unwrap();
        let payload = String::from_utf8(record.payload).unwrap();
        let sequence: u64 = payload.strip_prefix("event-").unwrap().parse().unwrap();
        assert!(found.insert(sequence, (record.partition, record.offset)).is_none(), "event {sequence} stored twice");
    }
    let lost: Vec<_> = acked.iter().filter(|(sequence, place)| found.get(sequence) != Some(place)).collect();
    assert!(lost.is_empty(), "{} acknowledged events lost or moved, e.g. {:?}", lost.len(), lost.first());
    eprintln!("child killed after {} acks; {} events stored; none lost", acked.len(), stored);
}
