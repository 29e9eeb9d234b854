//! The same data in both stores gives the same answers: the processor writes the Parquet
//! archive and loads the real ClickHouse from one log, and a fixed set of cost reports
//! (groupings with and without missing values, hour, day and month buckets in three time
//! zones, a narrow range) must be identical from DataFusion and from ClickHouse, and
//! equal to the priced events; so must interaction searches (by principal, model, tool,
//! outcome, rule and content text, page by page), interaction details, the violation,
//! decision and governance listings, violation counts, budget status, and the provider
//! health timeline (windows closed, reopened after a restart and still open, with the
//! traffic they moved).

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
use tollgate_processor::testing::{Running, team_budget, workload};
use tollgate_query_api::auth::{Role, TokenConfig, token_hash};
use tollgate_query_api::clickhouse::{ClickHouseConnection, ClickHouseQueries};
use tollgate_query_api::health::HealthQuery;
use tollgate_query_api::params::{Bucket, Cursor, GroupBy, TimeRange};
use tollgate_query_api::parquet::ParquetStore;
use tollgate_query_api::server::{BackendKind, QueryApiConfig};
use tollgate_query_api::store::{CostQuery, ListQuery, SearchQuery};
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::UPSTREAM_HEALTH;
use tollgate_schemas::{
    AccessEvent, BreakerTransition, GovernanceChange, PolicyViolation, QuotaDecision, UpstreamHealth,
};

/// 2026-11-30T23:59:59Z: the interactions (1 ms apart) cross into December, UTC.
const START: i64 = 1_796_083_200_000_000 - 1_000_000;
const COUNT: usize = 2_500;

/// Breaker transitions over the workload's 2.5 s: openai open on the workload's gateway
/// from 0.4 s to 1.3 s; anthropic opened twice on another (a restart) and closed; openai
/// still open on a third; anthropic open on a fourth until it started again.
fn health_events() -> Vec<UpstreamHealth> {
    let event = |at: i64, instance: &str, upstream: &str, transition| UpstreamHealth {
        schema_version: tollgate_schemas::SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: START + at * 1_000,
        gateway_instance: instance.to_owned(),
        upstream: upstream.to_owned(),
        provider: upstream.to_owned(),
        transition,
        consecutive_failures: if transition == BreakerTransition::Opened { 5 } else { 0 },
        cool_down_millis: 30_000,
        reason: (transition == BreakerTransition::Opened).then(|| "status 503 Service Unavailable".to_owned()),
    };
    use BreakerTransition::{Closed, Opened, Reset};
    vec![
        event(100, "gateway-b", "anthropic", Opened),
        event(300, "gateway-b", "anthropic", Opened),
        event(400, "gateway-test", "openai", Opened),
        event(900, "gateway-c", "openai", Opened),
        event(1_300, "gateway-test", "openai", Closed),
        event(1_500, "gateway-d", "anthropic", Opened),
        event(1_800, "gateway-d", "anthropic", Reset),
        event(2_000, "gateway-b", "anthropic", Closed),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_and_clickhouse_give_the_same_answers() {
    let clickhouse_url = required_env(CLICKHOUSE_URL_ENV);
    let database = unique_name("differential").replace('-', "_");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive").display().to_string();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path().join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let mut interactions = workload(COUNT, 29, START);
    // While openai's breaker was open on this gateway, some of its calls went elsewhere.
    for interaction in interactions.iter_mut().skip(500).take(700).step_by(3) {
        if let tollgate_schemas::Call::ModelCall(call) = &mut interaction.call
            && call.upstream.as_deref() == Some("openai")
        {
            call.upstream = Some("azure-backup".to_owned());
            interaction.outcome.fallback_used = true;
        }
    }
    tollgate_processor::testing::publish(log.as_ref(), &interactions).await.unwrap();
    let breaker = health_events();
    for event in &breaker {
        let payload = tollgate_schemas::encode(event).unwrap();
        tollgate_eventlog::publish_and_wait(log.as_ref(), UPSTREAM_HEALTH, event.upstream.as_bytes(), &payload)
            .await
            .unwrap();
    }

    let mut warehouse = WarehouseConfig::new(&clickhouse_url);
    warehouse.connection.database = database.clone();
    warehouse.flush_interval = Duration::from_millis(300);
    let config = ProcessorConfig {
        budgets: vec![team_budget("team-0", 1), team_budget("team-1", 1_000)],
        archive: Some(ArchiveConfig { roll_interval: Duration::from_millis(300), ..ArchiveConfig::new(&root) }),
        clickhouse: Some(warehouse),
        ..ProcessorConfig::default()
    };
    let processor = Running::start(Arc::clone(&log), config, "differential").unwrap();

    let parquet = ParquetStore::new();
    parquet.register_archive(std::path::Path::new(&root)).await.unwrap();
    let connection = ClickHouseConnection { url: clickhouse_url, database, user: None, password: None };
    let clickhouse = ClickHouseQueries::new(&connection);
    let everything = TimeRange { from: START - 3_600_000_000, to: START + 3_600_000_000 };
    let total = CostQuery { range: everything, group_by: vec![], bucket: None, time_zone: "UTC".to_owned() };
    // Both stores hold everything once the interaction counts agree with the log.
    let store = tollgate_archive::Archive::open(&root, &BTreeMap::new()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let stored = |lines: Result<Vec<tollgate_query_api::store::CostLine>, _>| {
            lines.ok().and_then(|lines| lines.first().map(|line| line.interactions)).unwrap_or(0)
        };
        let windows = |report: Result<tollgate_query_api::health::HealthReport, _>| {
            report.ok().map_or(0, |report| report.upstreams.iter().map(|u| u.windows.len()).sum::<usize>())
        };
        let health = HealthQuery { range: everything, upstream: None, now: START + 2_400_000 };
        if caught_up(log.as_ref(), &store).await.unwrap()
            && stored(parquet.cost_report(&total).await) == COUNT as i64
            && stored(clickhouse.cost_report(&total).await) == COUNT as i64
            && windows(parquet.health(&health).await) == 5
            && windows(clickhouse.health(&health).await) == 5
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

    // Searches, page by page: the same pages and cursors from both stores.
    let search = |equals: &[(&'static str, &str)], limit: usize| SearchQuery {
        equals: equals.iter().map(|(column, value)| (*column, (*value).to_owned())).collect(),
        limit,
        ..SearchQuery::default()
    };
    let searches = [
        search(&[], 400),
        SearchQuery { range: Some(narrow), ..search(&[("team_id", "team-1")], 50) },
        search(&[("gen_ai_request_model", "gpt-4.1"), ("org_id", "org-0")], 20),
        search(&[("gen_ai_tool_name", "web"), ("mcp_server", "search")], 25),
        search(&[("outcome", "ok"), ("key_id", "key-3")], 7),
        SearchQuery { rule: Some("unpriced_model".to_owned()), ..search(&[], 30) },
        SearchQuery { text: Some("@example.com".to_owned()), ..search(&[], 5) },
    ];
    let mut seen = std::collections::BTreeSet::new();
    for first in &searches {
        let mut query = first.clone();
        let mut found = 0;
        loop {
            let from_parquet = parquet.search(&query).await.unwrap();
            let from_clickhouse = clickhouse.search(&query).await.unwrap();
            assert_eq!(from_parquet, from_clickhouse, "{query:?}");
            found += from_parquet.interactions.len();
            seen.extend(from_parquet.interactions.iter().map(|record| record.interaction.id));
            match from_parquet.next_cursor {
                Some(cursor) => query.after = Some(Cursor::decode(&cursor).unwrap()),
                None => break,
            }
        }
        assert!(found > 0, "{first:?} found nothing");
    }
    assert_eq!(seen.len(), COUNT, "paging through everything saw every interaction once");
    let with_content = interactions.iter().filter(|interaction| interaction.content.captured.is_some()).count();
    assert!(with_content > 0);

    // Details: the interaction, its violations and the decisions in force.
    let mut details = 0;
    for interaction in
        interactions.iter().step_by(97).chain(interactions.iter().filter(|i| i.content.captured.is_some()))
    {
        let from_parquet = parquet.interaction(interaction.id).await.unwrap().unwrap();
        let from_clickhouse = clickhouse.interaction(interaction.id).await.unwrap().unwrap();
        assert_eq!(from_parquet, from_clickhouse, "{}", interaction.id);
        assert_eq!(from_parquet.interaction.interaction, *interaction);
        details += 1;
    }
    assert!(details > 25);

    // Listings, page by page (decisions carry the time they were made), and budget status.
    async fn pages<E: tollgate_query_api::store::Listed + PartialEq + std::fmt::Debug>(
        parquet: &ParquetStore,
        clickhouse: &ClickHouseQueries,
        first: ListQuery,
    ) -> usize {
        let mut query = first;
        let mut count = 0;
        loop {
            let from_parquet = parquet.list::<E>(&query).await.unwrap();
            let from_clickhouse = clickhouse.list::<E>(&query).await.unwrap();
            assert_eq!(from_parquet, from_clickhouse, "{query:?}");
            count += from_parquet.items.len();
            match from_parquet.next_cursor {
                Some(cursor) => query.after = Some(Cursor::decode(&cursor).unwrap()),
                None => return count,
            }
        }
    }
    let list = |limit: usize| ListQuery { limit, ..ListQuery::default() };
    assert!(pages::<PolicyViolation>(&parquet, &clickhouse, list(40)).await > 0);
    let unpriced = ListQuery { equals: vec![("rule_id", "unpriced_model".to_owned())], ..list(10) };
    assert!(pages::<PolicyViolation>(&parquet, &clickhouse, unpriced).await > 0);
    assert!(pages::<QuotaDecision>(&parquet, &clickhouse, list(3)).await > 0);
    let team0 =
        ListQuery { equals: vec![("subject_kind", "team".to_owned()), ("subject_id", "team-0".to_owned())], ..list(2) };
    assert!(pages::<QuotaDecision>(&parquet, &clickhouse, team0).await > 0);
    assert!(pages::<GovernanceChange>(&parquet, &clickhouse, list(5)).await > 0);
    assert_eq!(pages::<AccessEvent>(&parquet, &clickhouse, list(5)).await, 0);
    let now = tollgate_schemas::now_unix_micros();
    let budgets = parquet.budget_status(None, now).await.unwrap();
    assert!(!budgets.is_empty());
    assert_eq!(budgets, clickhouse.budget_status(None, now).await.unwrap());
    let one = Some(("team".to_owned(), "team-1".to_owned()));
    assert_eq!(
        parquet.budget_status(one.clone(), now).await.unwrap(),
        clickhouse.budget_status(one, now).await.unwrap()
    );

    // The provider health timeline, with an ongoing window ended by `now`.
    let health = HealthQuery { range: everything, upstream: None, now: START + 2_400_000 };
    let timeline = parquet.health(&health).await.unwrap();
    assert_eq!(timeline, clickhouse.health(&health).await.unwrap());
    let windows: Vec<_> =
        timeline.upstreams.iter().flat_map(|u| u.windows.iter().map(move |w| (u.upstream.as_str(), w))).collect();
    assert_eq!(windows.len(), 5, "{timeline:?}");
    let restarted = windows.iter().find(|(_, w)| w.gateway_instance == "gateway-d").unwrap().1;
    assert_eq!((restarted.closed_by, restarted.duration_seconds), (Some("restart"), 0.3), "{restarted:?}");
    let openai =
        windows.iter().find(|(upstream, w)| *upstream == "openai" && w.gateway_instance == "gateway-test").unwrap().1;
    let moved: Vec<_> = interactions
        .iter()
        .filter(|interaction| (START + 400_000..START + 1_300_000).contains(&interaction.time_unix_micros))
        .filter(|interaction| match &interaction.call {
            tollgate_schemas::Call::ModelCall(call) => call.upstream.as_deref() == Some("azure-backup"),
            tollgate_schemas::Call::ToolCall(_) => false,
        })
        .collect();
    let ok =
        moved.iter().filter(|interaction| interaction.outcome.status == tollgate_schemas::OutcomeStatus::Ok).count();
    assert!(ok > 0);
    assert_eq!(
        (openai.moved.requests, openai.moved.served_elsewhere, openai.moved.failed),
        (moved.len() as i64, ok as i64, (moved.len() - ok) as i64),
        "{openai:?}"
    );
    assert!(windows.iter().any(|(_, w)| w.ongoing), "{timeline:?}");
    let only = HealthQuery { upstream: Some("anthropic".to_owned()), ..health.clone() };
    assert_eq!(parquet.health(&only).await.unwrap(), clickhouse.health(&only).await.unwrap());
    assert_eq!(parquet.health(&only).await.unwrap().upstreams.len(), 1);

    // Violation counts by rule and severity, as the dashboard charts them.
    let counts = parquet.violation_counts(everything).await.unwrap();
    assert!(counts.iter().map(|count| count.violations).sum::<i64>() > 0);
    assert_eq!(counts, clickhouse.violation_counts(everything).await.unwrap());

    // The API itself, once per backend: the same bodies.
    let mut bodies = Vec::new();
    for backend in [BackendKind::Parquet, BackendKind::Clickhouse] {
        let config = QueryApiConfig {
            archive: root.clone(),
            backend,
            clickhouse: Some(connection.clone()),
            tokens: vec![TokenConfig {
                name: "auditor".into(),
                sha256: token_hash("auditor-token"),
                role: Role::Auditor,
            }],
            ..QueryApiConfig::default()
        };
        let base = tollgate_query_api::server::serve_in_background(&config, Arc::clone(&log)).await.unwrap();
        let client = reqwest::Client::new();
        let mut answers = Vec::new();
        for path in [
            "/v1/reports/cost?from=2026-11-30&to=2026-12-02&group_by=team,model&bucket=hour",
            "/v1/reports/chargeback?from=2026-11-30&to=2026-12-02&format=json",
            "/v1/interactions?team=team-1&limit=50",
            "/v1/interactions?text=%40example.com",
            "/v1/violations?limit=20",
            "/v1/budgets",
        ] {
            let response = client.get(format!("{base}{path}")).bearer_auth("auditor-token").send().await.unwrap();
            assert!(response.status().is_success(), "{backend:?} {path}");
            answers.push(response.text().await.unwrap());
        }
        bodies.push(answers);
    }
    assert_eq!(bodies[0], bodies[1]);
}
