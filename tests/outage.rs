//! The outage drill: traffic flows through the gateway to two simulated upstreams while
//! the preferred one fails for a few seconds. No client request fails (the gateway falls
//! back, then its circuit breaker keeps traffic away); the breaker's opening and closing
//! are recorded; and the health timeline and the reliability report, on both backends,
//! show the outage window and the traffic the fallback served, as the test counts it
//! itself from the events on the log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tollgate_eventlog::testing::{CLICKHOUSE_URL_ENV, required_env, unique_name, within};
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use tollgate_ingest::app::GatewayState;
use tollgate_ingest::config::GatewayConfig;
use tollgate_ingest::keys::hash_secret;
use tollgate_ingest::recorder::{Recorder, RecorderConfig};
use tollgate_ingest::simulator::SimulatorControl;
use tollgate_processor::ProcessorConfig;
use tollgate_processor::config::{ArchiveConfig, WarehouseConfig};
use tollgate_processor::testing::Running;
use tollgate_query_api::clickhouse::{ClickHouseConnection, ClickHouseQueries};
use tollgate_query_api::health::{HealthQuery, HealthReport};
use tollgate_query_api::params::TimeRange;
use tollgate_query_api::parquet::ParquetStore;
use tollgate_query_api::performance::{PerformanceQuery, ReliabilityReport};
use tollgate_schemas::topics::{PRICED_INTERACTIONS, UPSTREAM_HEALTH};
use tollgate_schemas::{BreakerTransition, Call, PricedInteraction, UpstreamHealth};

const KEY: &str = "tg-drill-key";
const INSTANCE: &str = "drill-gateway";
const CLIENTS: usize = 4;

async fn simulator(control: &Arc<SimulatorControl>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(tollgate_ingest::simulator::serve(
        listener,
        tollgate_ingest::simulator::router(Arc::clone(control)),
        std::future::pending(),
    ));
    format!("http://{address}")
}

fn gateway_config(primary: &str, backup: &str) -> String {
    format!(
        r#"
        [server]
        instance_id = "{INSTANCE}"
        [routing]
        attempts_per_target = 1
        breaker_failure_threshold = 3
        breaker_cool_down_ms = 400
        [[upstreams]]
        name = "primary"
        kind = "openai"
        provider = "openai"
        base_url = "{primary}"
        [[upstreams]]
        name = "backup"
        kind = "openai"
        provider = "azure.ai.openai"
        base_url = "{backup}"
        [[models]]
        name = "gpt-4o-mini"
        targets = [{{ upstream = "primary" }}, {{ upstream = "backup", model = "gpt-4o-mini-2024-07-18" }}]
        [[keys]]
        id = "key_drill"
        secret_sha256 = "{}"
        org = "acme"
        team = "support"
        "#,
        hash_secret(KEY)
    )
}

/// One client: chat completions, every third streamed, until `stop`. Returns the
/// statuses of its requests (a stream counts as answered once read to the end).
async fn client(gateway: String, stop: Arc<AtomicBool>, number: usize) -> Vec<u16> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut statuses = Vec::new();
    let mut index = number;
    while !stop.load(Ordering::SeqCst) {
        let stream = index.is_multiple_of(3);
        let body = json!({
            "model": "gpt-4o-mini", "stream": stream,
            "messages": [{ "role": "user", "content": format!("Status of ticket {index}?") }],
        });
        let response =
            http.post(format!("{gateway}/v1/chat/completions")).bearer_auth(KEY).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if stream && status == 200 {
            assert!(text.contains("[DONE]"), "a stream that ended early: {text}");
        }
        statuses.push(status);
        index += CLIENTS;
    }
    statuses
}

fn model(record: &PricedInteraction) -> &tollgate_schemas::ModelCall {
    match &record.interaction.call {
        Call::ModelCall(call) => call,
        Call::ToolCall(_) => panic!("only model calls were sent"),
    }
}

/// Reads `topic` from the start until `count` records, decoded as `E`.
async fn read_all<E: tollgate_schemas::Event>(log: &dyn EventLog, topic: &str, count: usize) -> Vec<E> {
    let mut subscription = log.subscribe(&unique_name("drill-reader"), &[topic]).await.unwrap();
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let record =
            within(Duration::from_secs(60), &format!("record {} of {topic}", events.len()), subscription.next())
                .await
                .unwrap();
        events.push(tollgate_schemas::decode(&record.payload).unwrap());
    }
    events
}

async fn total(log: &dyn EventLog, topic: &str) -> usize {
    log.end_offsets(topic).await.unwrap().iter().map(|(_, end)| usize::try_from(*end).unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_moves_traffic_to_the_fallback_and_the_reports_show_it() {
    let clickhouse_url = required_env(CLICKHOUSE_URL_ENV);
    let database = unique_name("outage").replace('-', "_");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive").display().to_string();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path().join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();

    // Two simulated upstreams, a gateway in front, the processor behind.
    let (primary, backup) = (Arc::new(SimulatorControl::default()), Arc::new(SimulatorControl::default()));
    primary.set_delay(Duration::from_millis(15));
    backup.set_delay(Duration::from_millis(15));
    let text = gateway_config(&simulator(&primary).await, &simulator(&backup).await);
    let config = GatewayConfig::from_toml(&text, &HashMap::new()).unwrap();
    let recorder = Recorder::start(Arc::clone(&log), None, RecorderConfig::default()).await.unwrap();
    let state = Arc::new(
        GatewayState::new(config, recorder, tollgate_schemas::pricing::PriceCatalog::shipped().unwrap()).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tollgate_ingest::run(listener, Arc::clone(&state), std::future::pending()));
    let mut warehouse = WarehouseConfig::new(&clickhouse_url);
    warehouse.connection.database = database.clone();
    warehouse.flush_interval = Duration::from_millis(300);
    let processor_config = ProcessorConfig {
        archive: Some(ArchiveConfig { roll_interval: Duration::from_millis(300), ..ArchiveConfig::new(&root) }),
        clickhouse: Some(warehouse),
        ..ProcessorConfig::default()
    };
    let processor = Running::start(Arc::clone(&log), processor_config, "drill").unwrap();

    // Load; the primary fails with 503 for three seconds in the middle.
    let started = tollgate_schemas::now_unix_micros();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> =
        (0..CLIENTS).map(|number| tokio::spawn(client(gateway.clone(), Arc::clone(&stop), number))).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    primary.fail_with(Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));
    tokio::time::sleep(Duration::from_secs(3)).await;
    primary.fail_with(None);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for client in clients {
        statuses.extend(within(Duration::from_secs(60), "a client's last request", client).await.unwrap());
    }
    let sent = statuses.len();
    assert!(sent > 50, "only {sent} requests were sent");
    assert!(statuses.iter().all(|status| *status == 200), "a client request failed: {statuses:?}");

    // The log holds one interaction per request, and the breakers' resets at the
    // gateway's start followed by the primary's two transitions.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while total(log.as_ref(), PRICED_INTERACTIONS).await < sent || total(log.as_ref(), UPSTREAM_HEALTH).await < 4 {
        assert!(tokio::time::Instant::now() < deadline, "the interactions were not priced within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut health: Vec<UpstreamHealth> = read_all(log.as_ref(), UPSTREAM_HEALTH, 4).await;
    assert_eq!(total(log.as_ref(), UPSTREAM_HEALTH).await, 4, "two resets, one opening, one closing: {health:?}");
    let mut resets: Vec<&str> = health[..2]
        .iter()
        .filter(|event| event.transition == BreakerTransition::Reset)
        .map(|event| event.upstream.as_str())
        .collect();
    resets.sort_unstable();
    assert_eq!(resets, ["backup", "primary"], "every breaker is reset when the gateway starts: {health:?}");
    health.drain(..2);
    assert_eq!(
        health.iter().map(|event| (event.upstream.as_str(), event.transition)).collect::<Vec<_>>(),
        [("primary", BreakerTransition::Opened), ("primary", BreakerTransition::Closed)]
    );
    assert_eq!(health[0].consecutive_failures, 3);
    assert_eq!(health[0].reason.as_deref(), Some("status 503 Service Unavailable"));
    let (opened, closed) = (health[0].time_unix_micros, health[1].time_unix_micros);
    let priced: Vec<PricedInteraction> = read_all(log.as_ref(), PRICED_INTERACTIONS, sent).await;
    assert_eq!(total(log.as_ref(), PRICED_INTERACTIONS).await, sent, "exactly one event per request");

    // What the test expects, counted from the events.
    let in_window: Vec<&PricedInteraction> = priced
        .iter()
        .filter(|record| (opened..closed).contains(&record.interaction.time_unix_micros))
        .filter(|record| model(record).upstream.as_deref() != Some("primary"))
        .collect();
    assert!(!in_window.is_empty(), "traffic moved during the outage");
    assert!(in_window.iter().all(|record| model(record).preferred_upstream.as_deref() == Some("primary")));
    let moved_to_backup = in_window.iter().filter(|record| model(record).upstream.as_deref() == Some("backup")).count();
    assert_eq!(moved_to_backup, in_window.len(), "the backup served everything that moved");
    let fallbacks = priced.iter().filter(|record| record.interaction.outcome.fallback_used).count() as i64;
    assert!(fallbacks >= in_window.len() as i64, "the failures that opened the breaker fell back too");
    assert!(
        priced.iter().any(|record| model(record).upstream.as_deref() == Some("primary")),
        "primary served before and after"
    );

    // Both stores, both backends.
    let parquet = ParquetStore::new();
    parquet.register_archive(std::path::Path::new(&root)).await.unwrap();
    let clickhouse =
        ClickHouseQueries::new(&ClickHouseConnection { url: clickhouse_url, database, user: None, password: None });
    let range = TimeRange { from: started - 60_000_000, to: tollgate_schemas::now_unix_micros() + 60_000_000 };
    let all = PerformanceQuery { range, group_by: vec![], bucket: None };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let stored = |report: Result<ReliabilityReport, _>| {
            report.ok().map_or(0, |report| report.lines.iter().map(|line| line.requests).sum::<i64>())
        };
        let windows = |report: Result<HealthReport, _>| {
            report.ok().map_or(0, |report| report.upstreams.iter().map(|u| u.windows.len()).sum::<usize>())
        };
        let query = HealthQuery { range, upstream: None, now: range.to };
        if stored(parquet.reliability(&all).await) == sent as i64
            && stored(clickhouse.reliability(&all).await) == sent as i64
            && windows(parquet.health(&query).await) == 1
            && windows(clickhouse.health(&query).await) == 1
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stores did not fill within 90 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    processor.stop().await.unwrap();

    let query = HealthQuery { range, upstream: None, now: range.to };
    let from_parquet = parquet.health(&query).await.unwrap();
    let from_clickhouse = clickhouse.health(&query).await.unwrap();
    assert_eq!(from_parquet, from_clickhouse, "both backends give the same timeline");
    assert!(!from_parquet.truncated);
    assert_eq!(from_parquet.upstreams.len(), 1, "{from_parquet:?}");
    let timeline = &from_parquet.upstreams[0];
    assert_eq!((timeline.upstream.as_str(), timeline.provider.as_str()), ("primary", "openai"));
    let window = &timeline.windows[0];
    assert_eq!(window.gateway_instance, INSTANCE);
    assert!(!window.ongoing && window.closed_at.is_some());
    assert_eq!(window.closed_by, Some("probe"));
    assert!((window.duration_seconds - (closed - opened) as f64 / 1e6).abs() < 1e-6, "{window:?}");
    assert!((timeline.open_seconds - window.duration_seconds).abs() < 1e-6);
    assert!(window.duration_seconds >= 2.0, "the breaker stayed open while the primary failed: {window:?}");
    assert_eq!(window.consecutive_failures, 3);
    assert_eq!(window.moved.requests, in_window.len() as i64, "{window:?}");
    assert_eq!((window.moved.served_elsewhere, window.moved.failed), (in_window.len() as i64, 0));
    assert_eq!(window.moved.served_by.len(), 1);
    assert_eq!(window.moved.served_by[0].upstream.as_deref(), Some("backup"));
    // Asking for another upstream finds nothing.
    let other = HealthQuery { upstream: Some("backup".to_owned()), ..query.clone() };
    assert!(parquet.health(&other).await.unwrap().upstreams.is_empty());
    assert!(clickhouse.health(&other).await.unwrap().upstreams.is_empty());

    // The reliability report: no call failed, and the fallback target served the fallbacks.
    for (backend, report) in
        [("datafusion", parquet.reliability(&all).await), ("clickhouse", clickhouse.reliability(&all).await)]
    {
        let report = report.unwrap();
        let outcomes: BTreeMap<&str, i64> =
            report.lines.iter().flat_map(|line| line.outcomes.iter().map(|(k, v)| (k.as_str(), *v))).collect();
        assert_eq!(outcomes, BTreeMap::from([("ok", sent as i64)]), "{backend}");
        assert_eq!(report.fallback_targets.len(), 1, "{backend}: {:?}", report.fallback_targets);
        let target = &report.fallback_targets[0];
        assert_eq!(
            (target.served_by_upstream.as_deref(), target.served_by_model.as_deref(), target.requests),
            (Some("backup"), Some("gpt-4o-mini-2024-07-18"), fallbacks),
            "{backend}"
        );
    }
}
