//! The query API's two heaviest questions on one generated month of priced interactions,
//! answered side by side in one run by DataFusion over the Parquet archive (the API's
//! default backend), by ClickHouse holding the same rows, and by DuckDB reading the same
//! Parquet files as an outside reference:
//!
//! - a month cost report grouped by team and model;
//! - a filtered auditor search: one team, one model, one day, the first page of 100.
//!
//! The archive is written in the processor's layout and format (zstd Parquet, one file
//! per partition, offset range and date, 100,000 rows each). DataFusion and DuckDB are
//! measured first; ClickHouse is loaded with the same rows afterwards, so its background
//! merges do not disturb them. Each query runs once to warm up, then
//! `TOLLGATE_BENCH_RUNS` times (default 5); the median is reported. The last
//! line is `rows=N cost_report_ms=N search_ms=N duckdb_cost_report_ms=N duckdb_search_ms=N`.
//!
//! Environment: `TOLLGATE_BENCH_ROWS` (default 10,000,000), `TOLLGATE_BENCH_PYTHON` (a
//! Python with `duckdb`; DuckDB is skipped without it), `TOLLGATE_BENCH_CLICKHOUSE_URL`
//! (ClickHouse is skipped without it). `scripts/bench-query` sets them all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A benchmark fails by panicking.

use std::path::Path;
use std::time::{Duration, Instant};

use tollgate_processor::pricer::Pricer;
use tollgate_processor::sink::clickhouse::{ClickHouseConfig, ClickHouseSink};
use tollgate_processor::testing::workload;
use tollgate_query_api::clickhouse::{ClickHouseConnection, ClickHouseQueries};
use tollgate_query_api::params::{GroupBy, TimeRange};
use tollgate_query_api::parquet::ParquetStore;
use tollgate_query_api::store::{CostQuery, SearchQuery};
use tollgate_schemas::archive::{self, PRICED_INTERACTIONS};
use tollgate_schemas::arrow::StoredRecord;
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::{PricedInteraction, SourceOffset};

/// 2026-10-01T00:00:00Z and the month after it.
const MONTH_START: i64 = 1_790_812_800_000_000;
const MONTH_END: i64 = 1_793_491_200_000_000;
/// The searched day: 2026-10-15.
const DAY_START: i64 = MONTH_START + 14 * 86_400_000_000;
const FILE_ROWS: usize = 100_000;
const PARTITIONS: i32 = 8;
const TEAM: &str = "team-3";
const MODEL: &str = "gpt-4.1";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |value| value.replace('_', "").parse().expect(name))
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// Runs `run` once to warm up, then `runs` times; the median in milliseconds.
async fn time<F, Fut, T>(runs: usize, mut run: F) -> (f64, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut result = run().await;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        result = run().await;
        samples.push(started.elapsed());
    }
    (median(samples), result)
}

/// Priced interactions `first..first + count` of `total`, spread evenly over the month.
fn chunk(pricer: &Pricer, first: usize, count: usize, total: usize) -> Vec<PricedInteraction> {
    let spacing = (MONTH_END - MONTH_START) / total as i64;
    workload(count, first as u64 + 1, MONTH_START)
        .into_iter()
        .enumerate()
        .map(|(index, mut interaction)| {
            let position = first + index;
            interaction.time_unix_micros = MONTH_START + position as i64 * spacing;
            let (mut priced, _) = pricer.priced_interaction(interaction, MONTH_START);
            priced.source = Some(SourceOffset {
                topic: tollgate_schemas::topics::INTERACTIONS.to_owned(),
                partition: (position / FILE_ROWS) as i32 % PARTITIONS,
                offset: position as i64,
            });
            priced
        })
        .collect()
}

/// Writes the archive under `root`; returns the bytes of Parquet written.
fn generate(root: &Path, rows: usize) -> u64 {
    let pricer = Pricer::new(PriceCatalog::shipped().unwrap());
    let mut bytes = 0;
    let mut next_offset = [0i64; PARTITIONS as usize];
    for (file, first) in (0..rows).step_by(FILE_ROWS).enumerate() {
        let count = FILE_ROWS.min(rows - first);
        let records = chunk(&pricer, first, count, rows);
        let partition = file as i32 % PARTITIONS;
        let offset = &mut next_offset[partition as usize];
        let (first_offset, last_offset) = (*offset, *offset + count as i64 - 1);
        *offset += count as i64;
        let mut by_date: std::collections::BTreeMap<String, Vec<PricedInteraction>> = Default::default();
        for record in &records {
            by_date
                .entry(archive::date_partition(record.interaction.time_unix_micros))
                .or_default()
                .push(record.clone());
        }
        for (date, records) in by_date {
            let batch = PricedInteraction::to_record_batch(&records).unwrap();
            let data = tollgate_processor::sink::parquet::to_bytes(&[batch], Vec::new()).unwrap();
            bytes += data.len() as u64;
            let path = root.join(PRICED_INTERACTIONS.file_path(&date, partition, first_offset, last_offset));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        eprint!("\rgenerated {} of {rows} rows", first + count);
    }
    eprintln!();
    bytes
}

/// Loads the same records (generated again, identically) into ClickHouse.
async fn load(sink: &ClickHouseSink, rows: usize) {
    let pricer = Pricer::new(PriceCatalog::shipped().unwrap());
    for first in (0..rows).step_by(FILE_ROWS) {
        let records = chunk(&pricer, first, FILE_ROWS.min(rows - first), rows);
        for part in records.chunks(20_000) {
            sink.insert_records("priced_interactions", part).await.unwrap();
        }
        eprint!("\rloaded {} of {rows} rows into ClickHouse", first + records.len());
    }
    eprintln!();
}

fn cost_query() -> CostQuery {
    CostQuery {
        range: TimeRange { from: MONTH_START, to: MONTH_END },
        group_by: vec![GroupBy::Team, GroupBy::Model],
        bucket: None,
        time_zone: "UTC".to_owned(),
    }
}

fn search_query() -> SearchQuery {
    SearchQuery {
        range: Some(TimeRange { from: DAY_START, to: DAY_START + 86_400_000_000 }),
        equals: vec![("team_id", TEAM.to_owned()), ("gen_ai_request_model", MODEL.to_owned())],
        limit: 100,
        ..SearchQuery::default()
    }
}

/// DuckDB's medians for the same two questions over the same files, from `python`.
fn duckdb(python: &str, root: &Path, runs: usize) -> (f64, f64, usize, usize) {
    let script = format!(
        r#"
import statistics, time, duckdb
con = duckdb.connect()
files = "{root}/priced_interactions/*/*.parquet"
lo, hi = "{lo}", "{hi}"
day_lo, day_hi = "{day_lo}", "{day_hi}"
report = f"""SELECT team_id, gen_ai_request_model, count(*), sum(cost_total_nanos),
  sum(gen_ai_usage_input_tokens), sum(gen_ai_usage_output_tokens)
  FROM read_parquet('{{files}}', hive_partitioning = true)
  WHERE time >= TIMESTAMPTZ '{{lo}}' AND time < TIMESTAMPTZ '{{hi}}'
  GROUP BY team_id, gen_ai_request_model ORDER BY 1 NULLS LAST, 2 NULLS LAST"""
search = f"""SELECT * FROM read_parquet('{{files}}', hive_partitioning = true)
  WHERE team_id = '{team}' AND gen_ai_request_model = '{model}'
  AND time >= TIMESTAMPTZ '{{day_lo}}' AND time < TIMESTAMPTZ '{{day_hi}}'
  ORDER BY time, id LIMIT 101"""
def timed(sql):
    rows = con.sql(sql).fetchall()
    samples = []
    for _ in range({runs}):
        started = time.perf_counter()
        rows = con.sql(sql).fetchall()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3, len(rows)
report_ms, report_rows = timed(report)
search_ms, search_rows = timed(search)
print(f"{{report_ms:.1f}} {{search_ms:.1f}} {{report_rows}} {{search_rows}}")
"#,
        root = root.display(),
        lo = "2026-10-01 00:00:00+00",
        hi = "2026-11-01 00:00:00+00",
        day_lo = "2026-10-15 00:00:00+00",
        day_hi = "2026-10-16 00:00:00+00",
        team = TEAM,
        model = MODEL,
    );
    let output = std::process::Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(output.status.success(), "duckdb: {}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = printed.split_whitespace().collect();
    (fields[0].parse().unwrap(), fields[1].parse().unwrap(), fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        total += if metadata.is_dir() { du(&entry.path()) } else { metadata.len() };
    }
    total
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rows = env_number("TOLLGATE_BENCH_ROWS", 10_000_000);
    let runs = env_number("TOLLGATE_BENCH_RUNS", 5).max(1);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let clickhouse = std::env::var("TOLLGATE_BENCH_CLICKHOUSE_URL").ok().map(|url| {
        let database = format!("tollgate_bench_{}", std::process::id());
        (url, database)
    });
    let started = Instant::now();
    let parquet_bytes = generate(&root, rows);
    let millions = rows as f64 / 1e6;
    println!(
        "generated {rows} priced interactions (October 2026) in {:.0} s, archived as Parquet",
        started.elapsed().as_secs_f64()
    );
    println!(
        "parquet: {:.1} MiB in all, {:.1} MiB per million interactions",
        parquet_bytes as f64 / 1_048_576.0,
        parquet_bytes as f64 / 1_048_576.0 / millions
    );

    let store = ParquetStore::new();
    store.register_archive(&root).await.unwrap();
    let (cost_ms, lines) = time(runs, || async { store.cost_report(&cost_query()).await.unwrap() }).await;
    let (search_ms, page) = time(runs, || async { store.search(&search_query()).await.unwrap() }).await;
    let total: i64 = lines.iter().map(|line| line.interactions).sum();
    assert_eq!(total as usize, rows, "the month report counts every interaction");
    assert!(!page.interactions.is_empty(), "the search finds interactions");
    // Rows a `LIMIT 101` finds: the page and, when there is more, one.
    let search_rows = page.interactions.len() + usize::from(page.next_cursor.is_some());
    println!(
        "datafusion: cost report {cost_ms:.1} ms ({} lines), search {search_ms:.1} ms ({} rows)",
        lines.len(),
        page.interactions.len()
    );

    let (duck_cost_ms, duck_search_ms) = match std::env::var("TOLLGATE_BENCH_PYTHON") {
        Ok(python) => {
            let (report_ms, search_ms, report_rows, duck_rows) = duckdb(&python, &root, runs);
            assert_eq!(report_rows, lines.len(), "DuckDB finds as many report lines");
            assert_eq!(duck_rows, search_rows, "DuckDB finds as many rows");
            println!("duckdb: cost report {report_ms:.1} ms, search {search_ms:.1} ms (same files)");
            (report_ms, search_ms)
        }
        Err(_) => {
            println!("duckdb: skipped (TOLLGATE_BENCH_PYTHON is not set)");
            (0.0, 0.0)
        }
    };

    // ClickHouse last: loading it leaves background merges that would disturb the others.
    if let Some((url, database)) = &clickhouse {
        let sink = ClickHouseSink::new(&ClickHouseConfig {
            url: url.clone(),
            database: database.clone(),
            user: None,
            password: None,
        });
        sink.migrate().await.unwrap();
        let started = Instant::now();
        load(&sink, rows).await;
        println!("clickhouse: loaded in {:.0} s", started.elapsed().as_secs_f64());
        let queries = ClickHouseQueries::new(&ClickHouseConnection {
            url: url.clone(),
            database: database.clone(),
            user: None,
            password: None,
        });
        let (ch_cost_ms, ch_lines) = time(runs, || async { queries.cost_report(&cost_query()).await.unwrap() }).await;
        assert_eq!(ch_lines, lines, "ClickHouse answers the report as DataFusion does");
        let search_sql = format!(
            "SELECT * FROM priced_interactions FINAL WHERE team_id = '{TEAM}' AND gen_ai_request_model = '{MODEL}' \
             AND time >= {DAY_START} AND time < {} ORDER BY time, id LIMIT 101",
            DAY_START + 86_400_000_000
        );
        let (ch_search_ms, found) = time(runs, || async { sink.query_json(&search_sql).await.unwrap() }).await;
        assert_eq!(found.len(), search_rows, "ClickHouse finds as many rows");
        let sizes = sink
            .query_json(&format!(
                "SELECT toString(sum(bytes)) AS bytes FROM system.parts WHERE database = '{database}' AND active"
            ))
            .await
            .unwrap();
        let clickhouse_bytes: f64 = sizes[0]["bytes"].as_str().unwrap_or("0").parse().unwrap_or(0.0);
        println!(
            "clickhouse: cost report {ch_cost_ms:.1} ms, search {ch_search_ms:.1} ms; {:.1} MiB per million interactions on disk (all tables)",
            clickhouse_bytes / 1_048_576.0 / millions
        );
        sink.query_json(&format!("DROP DATABASE IF EXISTS {database}")).await.ok();
    } else {
        println!("clickhouse: skipped (TOLLGATE_BENCH_CLICKHOUSE_URL is not set)");
    }

    println!("on disk: {:.1} MiB under {}", du(&root) as f64 / 1_048_576.0, root.display());
    println!(
        "rows={rows} cost_report_ms={cost_ms:.0} search_ms={search_ms:.0} duckdb_cost_report_ms={duck_cost_ms:.0} duckdb_search_ms={duck_search_ms:.0}"
    );
}
