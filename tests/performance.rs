//! The latency and reliability reports, on both backends, against values the test
//! computes itself from interactions with known durations and outcomes: counts exact,
//! percentiles (linear interpolation between closest ranks) within one microsecond.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tollgate_eventlog::testing::{CLICKHOUSE_URL_ENV, required_env, unique_name};
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use tollgate_processor::ProcessorConfig;
use tollgate_processor::config::{ArchiveConfig, WarehouseConfig};
use tollgate_processor::testing::{Running, model_call, tool_call};
use tollgate_query_api::clickhouse::{ClickHouseConnection, ClickHouseQueries};
use tollgate_query_api::params::{Bucket, TimeRange};
use tollgate_query_api::parquet::ParquetStore;
use tollgate_query_api::performance::{LatencyLine, PerformanceGroup, PerformanceQuery, ReliabilityReport};
use tollgate_schemas::{Call, Interaction, OutcomeStatus, Principal};

/// 2026-11-26T10:00:00Z; the interactions span two hours.
const START: i64 = 1_795_687_200_000_000;
const COUNT: usize = 1_200;

/// A deterministic stream of numbers (xorshift64*).
struct Numbers(u64);

impl Numbers {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % below
    }
}

/// Model calls of three public models on three upstreams, with known durations, first
/// tokens, overheads, outcomes, retries and fallbacks, and some tool calls the reports
/// must leave out.
fn interactions() -> Vec<Interaction> {
    let mut numbers = Numbers(0x5eed);
    let outcomes = [
        OutcomeStatus::UpstreamError,
        OutcomeStatus::Timeout,
        OutcomeStatus::BlockedByBudget,
        OutcomeStatus::BlockedByPolicy,
        OutcomeStatus::InvalidRequest,
        OutcomeStatus::ClientDisconnected,
    ];
    (0..COUNT)
        .map(|index| {
            let mut interaction = if index % 10 == 9 {
                tool_call("search", "web", OutcomeStatus::Ok)
            } else {
                let (provider, upstream, model) = match numbers.next(3) {
                    0 => ("openai", "openai-primary", "gpt-4o-mini"),
                    1 => ("anthropic", "anthropic", "claude-sonnet-4-5"),
                    _ => ("groq", "groq", "llama-3.3-70b-versatile"),
                };
                let mut call = model_call(provider, model, 100 + numbers.next(900), numbers.next(800));
                if let Call::ModelCall(model_call) = &mut call.call {
                    model_call.upstream = Some(upstream.to_owned());
                    model_call.streaming = numbers.next(2) == 0;
                    // Some gpt-4o-mini calls fell back to a second upstream and model.
                    if model == "gpt-4o-mini" && numbers.next(8) == 0 {
                        model_call.upstream = Some("azure-fallback".to_owned());
                        model_call.routed_model = Some("gpt-4o-mini-2024-07-18".to_owned());
                        call.outcome.fallback_used = true;
                        call.outcome.attempts = 3;
                    }
                    call.timing.time_to_first_token_micros =
                        model_call.streaming.then(|| 20_000 + numbers.next(400_000));
                }
                call.timing.duration_micros = 450_000 + numbers.next(3_000_000);
                call.timing.gateway_overhead_micros = 50 + numbers.next(900);
                if numbers.next(12) == 0 {
                    call.outcome.attempts = call.outcome.attempts.max(2);
                }
                if numbers.next(9) == 0 {
                    call.outcome.status = outcomes[usize::try_from(numbers.next(6)).unwrap()];
                    call.usage.output_tokens = 0;
                }
                call
            };
            interaction.time_unix_micros = START + i64::try_from(index).unwrap() * 6_000_000;
            interaction.principal = Principal {
                org_id: "acme".to_owned(),
                team_id: Some("research".to_owned()),
                user_id: None,
                project_id: None,
                key_id: format!("key-{}", index % 7),
            };
            interaction
        })
        .collect()
}

/// `level`'s percentile of `values` by linear interpolation between closest ranks.
fn percentile(values: &[u64], level: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() - 1) as f64 * level;
    let (lower, upper) = (sorted[rank.floor() as usize] as f64, sorted[rank.ceil() as usize] as f64);
    Some(lower + (upper - lower) * (rank - rank.floor()))
}

fn close(actual: Option<i64>, expected: Option<f64>, what: &str) {
    match (actual, expected) {
        (None, None) => {}
        (Some(actual), Some(expected)) => {
            assert!((actual as f64 - expected).abs() <= 1.0, "{what}: {actual} against {expected}");
        }
        _ => panic!("{what}: {actual:?} against {expected:?}"),
    }
}

fn model(interaction: &Interaction) -> Option<&tollgate_schemas::ModelCall> {
    match &interaction.call {
        Call::ModelCall(call) => Some(call),
        Call::ToolCall(_) => None,
    }
}

/// The latency line the test expects for the successful model calls in `calls`.
fn check_latency(line: &LatencyLine, calls: &[&Interaction], what: &str) {
    let ok: Vec<&&Interaction> = calls.iter().filter(|call| call.outcome.status == OutcomeStatus::Ok).collect();
    assert_eq!(line.requests, ok.len() as i64, "{what}");
    let durations: Vec<u64> = ok.iter().map(|call| call.timing.duration_micros).collect();
    let first_tokens: Vec<u64> = ok.iter().filter_map(|call| call.timing.time_to_first_token_micros).collect();
    let overheads: Vec<u64> = ok.iter().map(|call| call.timing.gateway_overhead_micros).collect();
    assert_eq!(line.streams, first_tokens.len() as i64, "{what}");
    close(line.duration_p50_us, percentile(&durations, 0.5), &format!("{what} duration p50"));
    close(line.duration_p95_us, percentile(&durations, 0.95), &format!("{what} duration p95"));
    close(line.duration_p99_us, percentile(&durations, 0.99), &format!("{what} duration p99"));
    close(line.time_to_first_token_p50_us, percentile(&first_tokens, 0.5), &format!("{what} ttft p50"));
    close(line.time_to_first_token_p95_us, percentile(&first_tokens, 0.95), &format!("{what} ttft p95"));
    close(line.gateway_overhead_p50_us, percentile(&overheads, 0.5), &format!("{what} overhead p50"));
    close(line.gateway_overhead_p95_us, percentile(&overheads, 0.95), &format!("{what} overhead p95"));
    let output: u64 = ok.iter().map(|call| call.usage.output_tokens).sum();
    let generating: u64 = ok
        .iter()
        .filter(|call| call.usage.output_tokens > 0)
        .map(|call| call.timing.duration_micros - call.timing.time_to_first_token_micros.unwrap_or(0))
        .sum();
    assert_eq!((line.output_tokens, line.generation_us), (output as i64, generating as i64), "{what}");
}

fn check_reliability(report: &ReliabilityReport, interactions: &[Interaction]) {
    let calls: Vec<&Interaction> = interactions.iter().filter(|call| model(call).is_some()).collect();
    let mut expected: BTreeMap<String, (i64, BTreeMap<String, i64>, i64, i64)> = BTreeMap::new();
    for call in &calls {
        let entry = expected.entry(model(call).unwrap().request_model.clone()).or_default();
        entry.0 += 1;
        *entry.1.entry(call.outcome.status.as_str().to_owned()).or_default() += 1;
        entry.2 += i64::from(call.outcome.attempts > 1);
        entry.3 += i64::from(call.outcome.fallback_used);
    }
    assert_eq!(report.lines.len(), expected.len());
    for line in &report.lines {
        let name = line.groups["model"].clone().unwrap();
        let (requests, outcomes, retried, fallbacks) = &expected[&name];
        assert_eq!(
            (&line.requests, &line.outcomes, &line.retried, &line.fallbacks),
            (requests, outcomes, retried, fallbacks),
            "{name}"
        );
        let errors: i64 = outcomes.iter().filter(|(outcome, _)| *outcome != "ok").map(|(_, count)| count).sum();
        assert_eq!(line.errors, errors, "{name}");
        assert!((line.error_rate - errors as f64 / *requests as f64).abs() < 1e-12, "{name}");
    }
    let fallbacks = calls.iter().filter(|call| call.outcome.fallback_used).count() as i64;
    assert!(fallbacks > 0);
    assert_eq!(report.fallback_targets.len(), 1, "{:?}", report.fallback_targets);
    let target = &report.fallback_targets[0];
    assert_eq!(
        (
            target.model.as_deref(),
            target.served_by_upstream.as_deref(),
            target.served_by_model.as_deref(),
            target.requests
        ),
        (Some("gpt-4o-mini"), Some("azure-fallback"), Some("gpt-4o-mini-2024-07-18"), fallbacks)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_reliability_match_an_independent_computation_on_both_backends() {
    let clickhouse_url = required_env(CLICKHOUSE_URL_ENV);
    let database = unique_name("performance").replace('-', "_");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive").display().to_string();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path().join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let interactions = interactions();
    tollgate_processor::testing::publish(log.as_ref(), &interactions).await.unwrap();
    let mut warehouse = WarehouseConfig::new(&clickhouse_url);
    warehouse.connection.database = database.clone();
    warehouse.flush_interval = Duration::from_millis(300);
    let config = ProcessorConfig {
        archive: Some(ArchiveConfig { roll_interval: Duration::from_millis(300), ..ArchiveConfig::new(&root) }),
        clickhouse: Some(warehouse),
        ..ProcessorConfig::default()
    };
    let processor = Running::start(Arc::clone(&log), config, "performance").unwrap();
    let parquet = ParquetStore::new();
    parquet.register_archive(std::path::Path::new(&root)).await.unwrap();
    let clickhouse =
        ClickHouseQueries::new(&ClickHouseConnection { url: clickhouse_url, database, user: None, password: None });
    let range = TimeRange { from: START, to: START + 3 * 3_600_000_000 };
    let all = PerformanceQuery { range, group_by: vec![], bucket: None };
    let model_calls = interactions.iter().filter(|call| model(call).is_some()).count() as i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let stored = |report: Result<ReliabilityReport, _>| {
            report.ok().map_or(0, |report| report.lines.iter().map(|line| line.requests).sum::<i64>())
        };
        if stored(parquet.reliability(&all).await) == model_calls
            && stored(clickhouse.reliability(&all).await) == model_calls
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stores did not fill within 90 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    processor.stop().await.unwrap();

    let calls: Vec<&Interaction> = interactions.iter().filter(|call| model(call).is_some()).collect();
    for backend in ["datafusion", "clickhouse"] {
        let latency = |query: PerformanceQuery| {
            let (parquet, clickhouse) = (&parquet, &clickhouse);
            async move {
                if backend == "datafusion" { parquet.latency(&query).await } else { clickhouse.latency(&query).await }
            }
        };
        // Everything together.
        let lines = latency(all.clone()).await.unwrap();
        assert_eq!(lines.len(), 1, "{backend}");
        check_latency(&lines[0], &calls, &format!("{backend} all"));
        // By upstream: the fallback upstream is a group of its own.
        let lines =
            latency(PerformanceQuery { group_by: vec![PerformanceGroup::Upstream], ..all.clone() }).await.unwrap();
        assert_eq!(lines.len(), 4, "{backend}: {lines:?}");
        for line in &lines {
            let upstream = line.groups["upstream"].clone();
            let group: Vec<&Interaction> =
                calls.iter().copied().filter(|call| model(call).unwrap().upstream == upstream).collect();
            check_latency(line, &group, &format!("{backend} {upstream:?}"));
        }
        // By public model and hour.
        let query =
            PerformanceQuery { group_by: vec![PerformanceGroup::Model], bucket: Some(Bucket::Hour), ..all.clone() };
        let lines = latency(query).await.unwrap();
        assert_eq!(lines.len(), 6, "{backend}: two hours of three models");
        for line in &lines {
            let hour_start = chrono_free_hour(line.bucket_start.as_deref().unwrap());
            let name = line.groups["model"].clone().unwrap();
            let group: Vec<&Interaction> = calls
                .iter()
                .copied()
                .filter(|call| model(call).unwrap().request_model == name)
                .filter(|call| {
                    (call.time_unix_micros - hour_start) >= 0 && call.time_unix_micros - hour_start < 3_600_000_000
                })
                .collect();
            check_latency(line, &group, &format!("{backend} {name} {:?}", line.bucket_start));
        }
        let reliability = PerformanceQuery { group_by: vec![PerformanceGroup::Model], ..all.clone() };
        let report = if backend == "datafusion" {
            parquet.reliability(&reliability).await.unwrap()
        } else {
            clickhouse.reliability(&reliability).await.unwrap()
        };
        check_reliability(&report, &interactions);
    }
    // Counts are equal across backends; percentiles within a microsecond.
    let by_provider =
        PerformanceQuery { group_by: vec![PerformanceGroup::Provider, PerformanceGroup::RoutedModel], ..all.clone() };
    let (left, right) = (parquet.latency(&by_provider).await.unwrap(), clickhouse.latency(&by_provider).await.unwrap());
    assert_eq!(left.len(), right.len());
    for (left, right) in left.iter().zip(&right) {
        assert_eq!(
            (&left.groups, left.requests, left.streams, left.output_tokens),
            (&right.groups, right.requests, right.streams, right.output_tokens)
        );
        for (a, b) in [
            (left.duration_p99_us, right.duration_p99_us),
            (left.time_to_first_token_p95_us, right.time_to_first_token_p95_us),
        ] {
            assert!(a.zip(b).is_some_and(|(a, b)| (a - b).abs() <= 1), "{a:?} {b:?}");
        }
    }
    assert_eq!(parquet.reliability(&by_provider).await.unwrap(), clickhouse.reliability(&by_provider).await.unwrap());
}

/// The microseconds of an RFC 3339 hour start like `2026-11-26T10:00:00Z` in this test's range.
fn chrono_free_hour(text: &str) -> i64 {
    let hour: i64 = text[11..13].parse().unwrap();
    assert_eq!(&text[..11], "2026-11-26T", "{text}");
    START + (hour - 10) * 3_600_000_000
}
