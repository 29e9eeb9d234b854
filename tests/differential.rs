//! The same data in both stores gives the same answers: the processor writes the Parquet
//! archive and loads the real ClickHouse from one log, and a fixed set of cost reports
//! (groupings with and without missing values, hour, day and month buckets in three time
//! zones, a narrow range) must be identical from DataFusion and from ClickHouse, and
//! equal to the priced events.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tollgate_eventlog::testing::{CLICKHOUSE_URL_ENV, required_env, unique_name};
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use tollgate_processor::ProcessorConfig;
use tollgate_processor::archive::caught_up;
use tollgate_processor::config::{ArchiveConfig, WarehouseConfig};
use tollgate_processor::pricer::Pricer;
use tollgate_processor::testing::{Running, workload};
use tollgate_query_api::clickhouse::{ClickHouseConnection, ClickHouseQueries};
use tollgate_query_api::params::{Bucket, GroupBy, TimeRange};
use tollgate_query_api::parquet::ParquetStore;
use tollgate_query_api::store::CostQuery;
use tollgate_schemas::pricing::PriceCatalog;

/// 2026-11-30T23:59:59Z: the interactions (1 ms apart) cross into December, UTC.
const START: i64 = 1_796_083_200_000_000 - 1_000_000;
const COUNT: usize = 2_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_and_clickhouse_give_the_same_cost_reports() {
    let clickhouse_url = required_env(CLICKHOUSE_URL_ENV);
    let database = unique_name("differential").replace('-', "_");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive").display().to_string();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path().join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let interactions = workload(COUNT, 29, START);
    tollgate_processor::testing::publish(log.as_ref(), &interactions).await.unwrap();

    let mut warehouse = WarehouseConfig::new(&clickhouse_url);
    warehouse.connection.database = database.clone();
    warehouse.flush_interval = Duration::from_millis(300);
    let config = ProcessorConfig {
        archive: Some(ArchiveConfig { roll_interval: Duration::from_millis(300), ..ArchiveConfig::new(&root) }),
        clickhouse: Some(warehouse),
        ..ProcessorConfig::default()
    };
    let processor = Running::start(Arc::clone(&log), config, "differential").unwrap();

    let parquet = ParquetStore::new();
    parquet.register_archive(std::path::Path::new(&root)).await.unwrap();
    let clickhouse =
        ClickHouseQueries::new(&ClickHouseConnection { url: clickhouse_url, database, user: None, password: None });
    let everything = TimeRange { from: START - 3_600_000_000, to: START + 3_600_000_000 };
    let total = CostQuery { range: everything, group_by: vec![], bucket: None, time_zone: "UTC".to_owned() };
    // Both stores hold everything once the interaction counts agree with the log.
    let store = tollgate_archive::Archive::open(&root, &BTreeMap::new()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let stored = |lines: Result<Vec<tollgate_query_api::store::CostLine>, _>| {
            lines.ok().and_then(|lines| lines.first().map(|line| line.interactions)).unwrap_or(0)
        };
        if caught_up(log.as_ref(), &store).await.unwrap()
            && stored(parquet.cost_report(&total).await) == COUNT as i64
            && stored(clickhouse.cost_report(&total).await) == COUNT as i64
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stores did not fill within 90 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    processor.stop().await.unwrap();

    let pricer = Pricer::new(PriceCatalog::shipped().unwrap());
    let expected: i64 = interactions.iter().map(|interaction| pricer.price(interaction).cost.total.0).sum();
    let query = |group_by: &[GroupBy], bucket: Option<Bucket>, time_zone: &str, range: TimeRange| CostQuery {
        range,
        group_by: group_by.to_vec(),
        bucket,
        time_zone: time_zone.to_owned(),
    };
    let narrow = TimeRange { from: START + 500_000, to: START + 1_700_000 };
    let queries = [
        query(&[], None, "UTC", everything),
        query(&[GroupBy::Team, GroupBy::Model], None, "UTC", everything),
        query(&[GroupBy::Org, GroupBy::Provider, GroupBy::Tool], None, "UTC", everything),
        query(&[GroupBy::User, GroupBy::Project], None, "UTC", everything),
        query(&[GroupBy::Key], Some(Bucket::Hour), "UTC", everything),
        query(&[GroupBy::Team], Some(Bucket::Day), "America/New_York", everything),
        query(&[], Some(Bucket::Day), "UTC", everything),
        query(&[GroupBy::Org], Some(Bucket::Month), "Europe/Paris", everything),
        query(&[GroupBy::Model], Some(Bucket::Month), "UTC", everything),
        query(&[GroupBy::Team, GroupBy::Tool], Some(Bucket::Hour), "Asia/Kolkata", narrow),
    ];
    for query in &queries {
        let from_parquet = parquet.cost_report(query).await.unwrap();
        let from_clickhouse = clickhouse.cost_report(query).await.unwrap();
        assert!(!from_parquet.is_empty(), "{query:?}");
        assert_eq!(from_parquet, from_clickhouse, "{query:?}");
        if query.range == everything {
            assert_eq!(from_parquet.iter().map(|line| line.cost_nanos).sum::<i64>(), expected, "{query:?}");
        }
    }
    // The month buckets split at the month boundary of each zone: two in UTC (November
    // and December), one in Paris, where both sides of UTC midnight are December 1st.
    let months = |lines: &[tollgate_query_api::store::CostLine]| {
        let mut starts: Vec<String> = lines.iter().filter_map(|line| line.bucket_start.clone()).collect();
        starts.dedup();
        starts
    };
    let utc = parquet.cost_report(&queries[8]).await.unwrap();
    assert_eq!(months(&utc), ["2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"]);
    let paris = parquet.cost_report(&queries[7]).await.unwrap();
    assert_eq!(months(&paris), ["2026-11-30T23:00:00Z"]);
}
