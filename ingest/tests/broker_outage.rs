//! Outage drill: the gateway keeps serving while its Kafka broker is down, spools every
//! event to local disk, and delivers all of them, in per-key order, once the broker is back.
//!
//! The test runs a broker of its own (the `tansu` binary `scripts/test` installs, with
//! SQLite storage in a temporary directory) so it can kill and restart it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::{TestGateway, http, read_interactions};
use tollgate_eventlog::testing::required_env;
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog, KafkaConfig, KafkaLog};
use tollgate_ingest::keys::hash_secret;
use tollgate_ingest::recorder::RecorderConfig;

const TANSU_ENV: &str = "TOLLGATE_TEST_TANSU";
const KEYS: usize = 8;

fn start_broker(tansu: &str, dir: &Path, port: u16) -> std::process::Child {
    let url = format!("tcp://127.0.0.1:{port}");
    std::process::Command::new(tansu)
        .current_dir(dir)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .stdout(std::fs::File::create(dir.join("tansu.log")).unwrap())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn wait_for_port(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the broker did not listen on {port}");
}

/// `per_key` requests on each key, one after another per key, the keys in parallel.
/// Returns how many succeeded.
async fn load(gateway: &TestGateway, per_key: usize) -> usize {
    let client = http();
    let mut tasks = Vec::new();
    for key in 0..KEYS {
        let client = client.clone();
        let url = gateway.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for request in 0..per_key {
                let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("key {key} request {request}")}]});
                let response =
                    client.post(&url).bearer_auth(format!("tg-load-{key}")).json(&body).send().await.unwrap();
                if response.status().is_success() {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += task.await.unwrap();
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_broker_outage_in_per_key_order() {
    let tansu = required_env(TANSU_ENV);
    let broker_dir = tempfile::tempdir().unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut broker = start_broker(&tansu, broker_dir.path(), port);
    wait_for_port(port).await;

    let mut kafka = KafkaConfig::new(format!("127.0.0.1:{port}"));
    tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
    kafka.producer_properties.insert("reconnect.backoff.max.ms".into(), "500".into());
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
    let spool: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(spool_dir.path())).unwrap());
    let recording = RecorderConfig { spool_after: Duration::from_millis(500), ..RecorderConfig::default() };
    let keys: String = (0..KEYS)
        .map(|key| {
            format!(
                "[[keys]]\nid = \"key_load_{key}\"\nsecret_sha256 = \"{}\"\norg = \"acme\"\nteam = \"load\"\n",
                hash_secret(&format!("tg-load-{key}"))
            )
        })
        .collect();
    let mut gateway = TestGateway::start_with(&keys, Some(Arc::clone(&log)), Some((spool, recording))).await;

    let before = load(&gateway, 50).await;
    assert_eq!(before, KEYS * 50);

    broker.kill().unwrap();
    broker.wait().unwrap();
    let during = load(&gateway, 250).await;
    assert_eq!(during, KEYS * 250, "clients saw no failure while the broker was down");
    let stats = gateway.state.recorder.stats();
    assert!(stats.spooling && stats.spooled > 0, "events went to the spool: {stats:?}");

    let mut broker = start_broker(&tansu, broker_dir.path(), port);
    wait_for_port(port).await;
    let after = load(&gateway, 25).await;
    assert_eq!(after, KEYS * 25);

    let total = before + during + after;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let stats = gateway.state.recorder.stats();
        if !stats.spooling && stats.drained >= stats.spooled && stats.acknowledged + stats.drained >= total as u64 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the spool did not drain: {stats:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.stop().await;
    let stats = gateway.state.recorder.stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    eprintln!("recorder after the drill: {stats:?}");

    let events = read_interactions(log.as_ref(), &gateway.instance, total).await;
    let distinct: HashSet<_> = events.iter().map(|event| event.id).collect();
    assert_eq!(distinct.len(), total, "every event arrived");
    assert_eq!(events.len(), total, "and none twice");
    // Requests on one key were sequential, so their ids (UUIDv7, taken on arrival) must
    // come off the broker in increasing order.
    let mut last_by_key: BTreeMap<String, uuid::Uuid> = BTreeMap::new();
    for event in &events {
        if let Some(previous) = last_by_key.insert(event.principal.key_id.clone(), event.id) {
            assert!(previous < event.id, "key {} out of order", event.principal.key_id);
        }
    }
    assert_eq!(last_by_key.len(), KEYS);
    broker.kill().unwrap();
    broker.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_fails_closed_when_configured_to() {
    let (log, spool, _spool_dir) = unreachable_log_and_spool();
    let recording = RecorderConfig {
        spool_after: Duration::from_millis(200),
        spool_max_events: 5,
        on_full_spool: tollgate_ingest::recorder::FullSpoolPolicy::FailClosed,
    };
    let gateway = TestGateway::start_with("", Some(log), Some((spool, recording))).await;
    let client = http();
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let response = client
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(support::TEAM_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 503 {
            let error: serde_json::Value = response.json().await.unwrap();
            assert_eq!(error["error"]["code"], "recording_unavailable", "{error}");
        }
        statuses.push(status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = gateway.state.recorder.stats();
    assert!(stats.spooling, "{stats:?}");
    assert_eq!(stats.spooled, 5, "the spool took what it holds: {stats:?}");
    assert_eq!(stats.dropped, 0, "failing closed loses nothing: {stats:?}");
    assert!(statuses.contains(&200) && statuses.ends_with(&[503, 503]), "{statuses:?}");
    let ready = http().get(gateway.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let metrics = http().get(gateway.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let refused = statuses.iter().filter(|status| **status == 503).count();
    let line = format!(
        r#"tollgate_gateway_requests_total{{route="/v1/chat/completions",outcome="recording_unavailable"}} {refused}"#
    );
    assert!(metrics.lines().any(|got| got == line), "missing `{line}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_during_an_outage_moves_unacknowledged_events_to_the_spool() {
    let (log, spool, _spool_dir) = unreachable_log_and_spool();
    // The watchdog never fires: every event waits in the producer for the broker.
    let recording = RecorderConfig { spool_after: Duration::from_secs(3_600), ..RecorderConfig::default() };
    let gateway = TestGateway::start_with("", Some(log), Some((Arc::clone(&spool), recording))).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..5 {
        let response = http()
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(support::TEAM_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(gateway.state.recorder.stats().spooled, 0, "nothing spooled before shutdown");
    assert!(gateway.state.recorder.close(Duration::from_millis(500)).await, "everything settled at close");
    let stats = gateway.state.recorder.stats();
    assert_eq!((stats.spooled, stats.dropped), (5, 0), "{stats:?}");
    let spooled = spool.end_offsets(tollgate_ingest::recorder::SPOOL_TOPIC).await.unwrap();
    assert_eq!(spooled.iter().map(|(_, end)| end).sum::<i64>(), 5, "the five events are on disk in the spool");
}

/// A Kafka log whose broker address nothing listens on (nothing is ever acknowledged),
/// and an empty spool.
fn unreachable_log_and_spool() -> (Arc<dyn EventLog>, Arc<dyn EventLog>, tempfile::TempDir) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut kafka = KafkaConfig::new(format!("127.0.0.1:{port}"));
    tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
    let spool_dir = tempfile::tempdir().unwrap();
    let spool: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(spool_dir.path())).unwrap());
    (log, spool, spool_dir)
}
