//! The processor's ClickHouse stage against the real ClickHouse server that `scripts/test`
//! starts: its tables have exactly the columns of the stored-record layouts the Parquet
//! archive uses; a ClickHouse outage delays the inserts and loses nothing; inserts made
//! twice are read once; a poison record goes to the dead-letter topic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tollgate_eventlog::testing::{CLICKHOUSE_URL_ENV, required_env, unique_name};
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use tollgate_processor::ProcessorConfig;
use tollgate_processor::config::WarehouseConfig;
use tollgate_processor::pricer::Pricer;
use tollgate_processor::sink::clickhouse::{ClickHouseConfig, ClickHouseSink};
use tollgate_processor::testing::{Running, workload};
use tollgate_schemas::arrow::StoredRecord;
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{DEAD_LETTER, GOVERNANCE};
use tollgate_schemas::{DeadLetter, GovernanceChange, PolicyViolation, PricedInteraction, QuotaDecision};

/// A TCP forwarder to ClickHouse that can be switched off: while off it drops every
/// connection it accepts, as a server that is down or unreachable does.
struct Switch {
    url: String,
    up: Arc<AtomicBool>,
}

impl Switch {
    async fn start(target: String) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(false));
        let state = Arc::clone(&up);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !state.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Switch { url, up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

fn sink(url: &str, database: &str) -> ClickHouseSink {
    ClickHouseSink::new(&ClickHouseConfig {
        url: url.to_owned(),
        database: database.to_owned(),
        user: None,
        password: None,
    })
}

async fn single(sink: &ClickHouseSink, sql: &str) -> serde_json::Value {
    sink.query_json(sql).await.unwrap().into_iter().next().unwrap()
}

/// Column names of `table` as ClickHouse describes them (a Nested column shows as its
/// `name.field` arrays), without the materialized partition date.
async fn columns(sink: &ClickHouseSink, table: &str) -> BTreeSet<String> {
    let sql = format!(
        "SELECT name FROM system.columns WHERE database = '{}' AND table = '{table}' AND name != 'event_date'",
        sink.database()
    );
    sink.query_json(&sql).await.unwrap().into_iter().map(|row| row["name"].as_str().unwrap().to_owned()).collect()
}

fn layout<R: StoredRecord>(leave_out: &[&str]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for field in R::arrow_schema().fields() {
        if leave_out.contains(&field.name().as_str()) {
            continue;
        }
        match field.data_type() {
            datafusion::arrow::datatypes::DataType::List(item) => match item.data_type() {
                datafusion::arrow::datatypes::DataType::Struct(fields) => {
                    names.extend(fields.iter().map(|inner| format!("{}.{}", field.name(), inner.name())));
                }
                other => panic!("list of {other:?}"),
            },
            _ => {
                names.insert(field.name().clone());
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_the_load_and_loses_nothing() {
    let clickhouse = required_env(CLICKHOUSE_URL_ENV);
    let database = unique_name("load").replace('-', "_");
    let switch = Switch::start(clickhouse.trim_start_matches("http://").to_owned()).await;
    let direct = sink(&clickhouse, &database);

    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path().join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let interactions = workload(2_000, 3, tollgate_schemas::now_unix_micros() - 60_000_000);
    tollgate_processor::testing::publish(log.as_ref(), &interactions).await.unwrap();
    // A poison record on a loaded topic.
    tollgate_eventlog::publish_and_wait(log.as_ref(), GOVERNANCE, b"budget:x", b"[1, 2").await.unwrap();

    let mut settings = WarehouseConfig::new(&switch.url);
    settings.connection.database = database.clone();
    settings.batch_max_rows = 700;
    settings.flush_interval = Duration::from_millis(300);
    let budget = tollgate_schemas::BudgetSpec {
        subject: tollgate_schemas::Subject::new(tollgate_schemas::SubjectKind::Team, "team-1"),
        window: tollgate_schemas::WindowKind::Month,
        limit: tollgate_schemas::Nanodollars(tollgate_schemas::Nanodollars::PER_DOLLAR),
        hard: true,
        alert_thresholds_percent: vec![50, 80],
    };
    let config = ProcessorConfig {
        clickhouse: Some(settings),
        budgets: vec![("team-1-monthly".to_owned(), budget)],
        ..ProcessorConfig::default()
    };
    let processor = Running::start(Arc::clone(&log), config, "load-test").unwrap();
    let metrics = Arc::clone(&processor.metrics);

    // ClickHouse is unreachable: the stage keeps retrying (a second failed insert is a
    // retry) and inserts nothing.
    let failures = |text: &str| -> u64 {
        text.lines()
            .find(|line| line.starts_with("tollgate_processor_clickhouse_insert_failures_total "))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = metrics.encode();
        if failures(&text) >= 2 {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stage did not retry within 60 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!text.contains("tollgate_processor_clickhouse_rows_total{"), "nothing can have been inserted:\n{text}");

    // Back up: everything arrives.
    switch.set(true);
    let pricer = Pricer::new(PriceCatalog::shipped().unwrap());
    let expected_cost: i64 = interactions.iter().map(|interaction| pricer.price(interaction).cost.total.0).sum();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready =
            direct.query_json("EXISTS TABLE priced_interactions").await.is_ok_and(|rows| rows[0]["result"] == 1);
        if ready {
            let row = single(&direct, "SELECT count() AS rows FROM priced_interactions FINAL").await;
            if row["rows"] == 2_000 {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the load did not finish after ClickHouse came back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    processor.stop().await.unwrap();

    let row = single(
        &direct,
        "SELECT count() AS rows, uniqExact(id) AS ids, sum(cost_total_nanos) AS cost FROM priced_interactions FINAL",
    )
    .await;
    assert_eq!(row["rows"], 2_000);
    assert_eq!(row["ids"], 2_000);
    assert_eq!(row["cost"], expected_cost);
    // Content lives apart from the metering rows.
    let captured = interactions.iter().filter(|interaction| interaction.content.captured.is_some()).count();
    let row = single(&direct, "SELECT count() AS rows FROM interaction_content FINAL").await;
    assert_eq!(row["rows"], captured);
    let violations = single(&direct, "SELECT count() AS rows, uniqExact(id) AS ids FROM policy_violations FINAL").await;
    assert_eq!(violations["rows"], violations["ids"]);
    assert!(violations["rows"].as_u64().unwrap() > 0);
    let decisions =
        single(&direct, "SELECT count() AS rows, max(spent_nanos) AS spent FROM quota_decisions FINAL").await;
    assert!(decisions["rows"].as_u64().unwrap() >= 2, "{decisions}");
    let row = single(&direct, "SELECT count() AS rows FROM governance_changes FINAL").await;
    assert_eq!(row["rows"], 1, "the configured budget");

    // The poison record was dead-lettered by the ClickHouse stage.
    let letters: Vec<DeadLetter> = log
        .read(DEAD_LETTER, 0, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|record| tollgate_schemas::decode(&record.payload).unwrap())
        .collect();
    assert!(
        letters
            .iter()
            .any(|letter| letter.consumer_group.ends_with("-clickhouse") && letter.source.topic == GOVERNANCE),
        "{letters:?}"
    );

    // Inserting every priced interaction again changes no answer read with FINAL.
    let priced: Vec<PricedInteraction> = log_records(log.as_ref(), tollgate_schemas::topics::PRICED_INTERACTIONS).await;
    direct.insert_records("priced_interactions", &priced).await.unwrap();
    let row =
        single(&direct, "SELECT count() AS rows, sum(cost_total_nanos) AS cost FROM priced_interactions FINAL").await;
    assert_eq!(row["rows"], 2_000);
    assert_eq!(row["cost"], expected_cost);

    // The tables hold the columns of the stored layouts, content aside.
    let content = ["captured_request", "captured_response", "content_redacted"];
    assert_eq!(columns(&direct, "priced_interactions").await, layout::<PricedInteraction>(&content));
    assert_eq!(columns(&direct, "policy_violations").await, layout::<PolicyViolation>(&[]));
    assert_eq!(columns(&direct, "quota_decisions").await, layout::<QuotaDecision>(&[]));
    assert_eq!(columns(&direct, "governance_changes").await, layout::<GovernanceChange>(&[]));
}

async fn log_records<E: tollgate_schemas::Event>(log: &dyn EventLog, topic: &str) -> Vec<E> {
    let mut events = Vec::new();
    for (partition, end) in log.end_offsets(topic).await.unwrap() {
        let mut offset = 0;
        while offset < end {
            let records = log.read(topic, partition, offset, 1_000).await.unwrap();
            offset = records.last().map_or(end, |record| record.offset + 1);
            events.extend(records.iter().filter_map(|record| tollgate_schemas::decode(&record.payload).ok()));
        }
    }
    events
}
