//! Performance and reliability across models: latency percentiles, error and retry rates,
//! fallbacks, from the timing and outcome facts every interaction carries.
//!
//! Both reports cover model calls only (tool calls are not routed to providers).
//!
//! - Latency (`ParquetStore::latency`, `ClickHouseQueries::latency`): for successful model calls, per group and optional hour or
//!   day bucket (UTC): the count, p50/p95/p99 of the total duration, p50/p95 of the time
//!   to first token (streams only), p50/p95 of the gateway's own overhead, and output
//!   tokens per second of generation (output tokens over the time after the first token,
//!   or the whole duration for answers that were not streamed).
//! - Reliability (`reliability` on both): for every model call, per group: the count by
//!   outcome, the error rate (anything not `ok`), how many needed a retry (more than one
//!   attempt) and how many were served by a fallback target; and, for fallbacks, which
//!   upstream and model served each public model.
//!
//! Percentiles are exact and defined the same way on both backends: linear interpolation
//! between the closest ranks (SQL's `percentile_cont`, which DataFusion has; ClickHouse
//! computes the same from the sorted values). The engines' floating-point steps differ,
//! so values are rounded to whole microseconds and may differ by one between backends;
//! counts and sums are exact.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clickhouse::{ClickHouseQueries, Value};
use crate::params::{ApiError, Bucket, TimeRange};
use crate::parquet::ParquetStore;
use crate::store::{Bind, float, int, micros, rfc3339, string};

/// What the performance reports group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerformanceGroup {
    /// `gen_ai.provider.name` of the upstream that answered.
    Provider,
    /// The configured upstream that answered.
    Upstream,
    /// The public model name the client asked for.
    Model,
    /// The model name sent to the upstream.
    RoutedModel,
}

impl PerformanceGroup {
    pub fn as_str(self) -> &'static str {
        match self {
            PerformanceGroup::Provider => "provider",
            PerformanceGroup::Upstream => "upstream",
            PerformanceGroup::Model => "model",
            PerformanceGroup::RoutedModel => "routed_model",
        }
    }

    fn column(self) -> &'static str {
        match self {
            PerformanceGroup::Provider => "gen_ai_provider_name",
            PerformanceGroup::Upstream => "upstream",
            PerformanceGroup::Model => "gen_ai_request_model",
            PerformanceGroup::RoutedModel => "routed_model",
        }
    }

    /// A comma-separated list of groupings, each at most once.
    pub fn parse_list(text: &str) -> Result<Vec<PerformanceGroup>, ApiError> {
        let mut groups = Vec::new();
        for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            let group = match name {
                "provider" => PerformanceGroup::Provider,
                "upstream" => PerformanceGroup::Upstream,
                "model" => PerformanceGroup::Model,
                "routed_model" => PerformanceGroup::RoutedModel,
                other => {
                    return Err(ApiError::bad_parameter(
                        "group_by",
                        format!("`{other}` is not provider, upstream, model or routed_model"),
                    ));
                }
            };
            if groups.contains(&group) {
                return Err(ApiError::bad_parameter("group_by", format!("`{name}` is given twice")));
            }
            groups.push(group);
        }
        Ok(groups)
    }
}

/// A latency or reliability report's question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerformanceQuery {
    pub range: TimeRange,
    pub group_by: Vec<PerformanceGroup>,
    /// Hour or day buckets, UTC (latency only).
    pub bucket: Option<Bucket>,
}

/// Latency of one group in one bucket. Durations in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyLine {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_start: Option<String>,
    #[serde(flatten)]
    pub groups: BTreeMap<&'static str, Option<String>>,
    pub requests: i64,
    pub duration_p50_us: Option<i64>,
    pub duration_p95_us: Option<i64>,
    pub duration_p99_us: Option<i64>,
    /// Streamed answers only; absent when there were none.
    pub streams: i64,
    pub time_to_first_token_p50_us: Option<i64>,
    pub time_to_first_token_p95_us: Option<i64>,
    pub gateway_overhead_p50_us: Option<i64>,
    pub gateway_overhead_p95_us: Option<i64>,
    pub output_tokens: i64,
    /// Microseconds spent generating output: after the first token for streams, the
    /// whole call otherwise.
    pub generation_us: i64,
    /// `output_tokens` per second of `generation_us`.
    pub output_tokens_per_second: Option<f64>,
}

/// Reliability of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReliabilityLine {
    #[serde(flatten)]
    pub groups: BTreeMap<&'static str, Option<String>>,
    pub requests: i64,
    /// Calls by outcome (`ok`, `upstream_error`, `timeout`, `blocked_by_budget`, ...).
    pub outcomes: BTreeMap<String, i64>,
    /// Calls whose outcome is not `ok`.
    pub errors: i64,
    pub error_rate: f64,
    /// Calls that took more than one attempt.
    pub retried: i64,
    pub retry_rate: f64,
    /// Calls a fallback target served.
    pub fallbacks: i64,
    pub fallback_rate: f64,
}

/// Which target served a public model when its primary did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FallbackLine {
    pub model: Option<String>,
    pub served_by_upstream: Option<String>,
    pub served_by_model: Option<String>,
    pub requests: i64,
}

/// The reliability report: per group, and the fallback targets that served.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReliabilityReport {
    pub lines: Vec<ReliabilityLine>,
    pub fallback_targets: Vec<FallbackLine>,
}

/// The percentiles the latency report gives: (column alias, source column, level).
const PERCENTILES: [(&str, &str, f64); 7] = [
    ("duration_p50", "duration_us", 0.5),
    ("duration_p95", "duration_us", 0.95),
    ("duration_p99", "duration_us", 0.99),
    ("ttft_p50", "time_to_first_token_us", 0.5),
    ("ttft_p95", "time_to_first_token_us", 0.95),
    ("overhead_p50", "gateway_overhead_us", 0.5),
    ("overhead_p95", "gateway_overhead_us", 0.95),
];

/// Output tokens and the time spent generating them, as one SQL expression each.
const GENERATION_US: &str = "CASE WHEN time_to_first_token_us IS NULL THEN duration_us \
                             ELSE duration_us - time_to_first_token_us END";

fn rate(part: i64, whole: i64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

fn round(value: Option<f64>) -> Option<i64> {
    value.filter(|value| value.is_finite()).map(|value| value.round() as i64)
}

fn line_from(
    bucket_start: Option<String>,
    groups: BTreeMap<&'static str, Option<String>>,
    counts: [i64; 4],
    percentiles: [Option<f64>; 7],
) -> LatencyLine {
    let [requests, streams, output_tokens, generation_us] = counts;
    LatencyLine {
        bucket_start,
        groups,
        requests,
        duration_p50_us: round(percentiles[0]),
        duration_p95_us: round(percentiles[1]),
        duration_p99_us: round(percentiles[2]),
        streams,
        time_to_first_token_p50_us: round(percentiles[3]),
        time_to_first_token_p95_us: round(percentiles[4]),
        gateway_overhead_p50_us: round(percentiles[5]),
        gateway_overhead_p95_us: round(percentiles[6]),
        output_tokens,
        generation_us,
        output_tokens_per_second: (generation_us > 0)
            .then(|| (output_tokens as f64 * 1e6 / generation_us as f64 * 100.0).round() / 100.0),
    }
}

/// The values of a line's groupings, by grouping name.
type Groups = BTreeMap<&'static str, Option<String>>;

/// One row of the reliability query: a group, an outcome, and the calls, retried calls
/// and fallbacks with it.
type OutcomeRow = (Groups, String, [i64; 3]);

fn reliability_from(rows: Vec<OutcomeRow>) -> Vec<ReliabilityLine> {
    let mut lines: BTreeMap<Vec<Option<String>>, ReliabilityLine> = BTreeMap::new();
    for (groups, outcome, [count, retried, fallbacks]) in rows {
        let key: Vec<Option<String>> = groups.values().cloned().collect();
        let line = lines.entry(key).or_insert_with(|| ReliabilityLine {
            groups,
            requests: 0,
            outcomes: BTreeMap::new(),
            errors: 0,
            error_rate: 0.0,
            retried: 0,
            retry_rate: 0.0,
            fallbacks: 0,
            fallback_rate: 0.0,
        });
        line.requests += count;
        if outcome != "ok" {
            line.errors += count;
        }
        *line.outcomes.entry(outcome).or_insert(0) += count;
        line.retried += retried;
        line.fallbacks += fallbacks;
    }
    let mut lines: Vec<ReliabilityLine> = lines.into_values().collect();
    for line in &mut lines {
        line.error_rate = rate(line.errors, line.requests);
        line.retry_rate = rate(line.retried, line.requests);
        line.fallback_rate = rate(line.fallbacks, line.requests);
    }
    lines
}

/// The report's groups in the order asked, nulls last, as both engines sort them.
fn order_by(columns: &[String]) -> String {
    columns.iter().map(|column| format!("{column} NULLS LAST")).collect::<Vec<_>>().join(", ")
}

impl ParquetStore {
    /// See [`crate::performance`].
    pub async fn latency(&self, query: &PerformanceQuery) -> Result<Vec<LatencyLine>, ApiError> {
        let mut bind = Bind::default();
        let mut select = Vec::new();
        let mut group = Vec::new();
        if let Some(bucket) = query.bucket {
            select.push(format!("date_trunc('{}', time) AS bucket_start", bucket.as_str()));
            group.push("bucket_start".to_owned());
        }
        for grouping in &query.group_by {
            select.push(format!("{} AS \"{}\"", grouping.column(), grouping.as_str()));
            group.push(format!("\"{}\"", grouping.as_str()));
        }
        select.extend([
            "count(*) AS requests".to_owned(),
            "CAST(count(time_to_first_token_us) AS BIGINT) AS streams".to_owned(),
            "CAST(sum(gen_ai_usage_output_tokens) AS BIGINT) AS output_tokens".to_owned(),
            format!("CAST(sum(CASE WHEN gen_ai_usage_output_tokens > 0 THEN {GENERATION_US} ELSE 0 END) AS BIGINT) AS generation_us"),
        ]);
        for (alias, column, level) in PERCENTILES {
            select
                .push(format!("percentile_cont({level}) WITHIN GROUP (ORDER BY CAST({column} AS DOUBLE)) AS {alias}"));
        }
        let condition = bind.range(query.range);
        let mut sql = format!(
            "SELECT {} FROM priced_interactions WHERE {condition} AND kind = 'model_call' AND outcome = 'ok'",
            select.join(", ")
        );
        if !group.is_empty() {
            sql.push_str(&format!(" GROUP BY {} ORDER BY {}", group.join(", "), order_by(&group)));
        }
        let mut lines = Vec::new();
        for batch in self.bound(&sql, bind).await? {
            for row in 0..batch.num_rows() {
                let requests = int(&batch, "requests", row);
                if requests == 0 {
                    continue;
                }
                let groups = query.group_by.iter().map(|g| (g.as_str(), string(&batch, g.as_str(), row))).collect();
                let counts = [
                    requests,
                    int(&batch, "streams", row),
                    int(&batch, "output_tokens", row),
                    int(&batch, "generation_us", row),
                ];
                let percentiles = PERCENTILES.map(|(alias, _, _)| float(&batch, alias, row));
                let bucket = query.bucket.and_then(|_| micros(&batch, "bucket_start", row)).map(rfc3339);
                lines.push(line_from(bucket, groups, counts, percentiles));
            }
        }
        Ok(lines)
    }

    /// See [`crate::performance`].
    pub async fn reliability(&self, query: &PerformanceQuery) -> Result<ReliabilityReport, ApiError> {
        let mut bind = Bind::default();
        let condition = bind.range(query.range);
        let mut select = Vec::new();
        let mut group = Vec::new();
        for grouping in &query.group_by {
            select.push(format!("{} AS \"{}\"", grouping.column(), grouping.as_str()));
            group.push(format!("\"{}\"", grouping.as_str()));
        }
        group.push("outcome".to_owned());
        let sql = format!(
            "SELECT {}outcome, count(*) AS requests, \
             CAST(sum(CASE WHEN attempts > 1 THEN 1 ELSE 0 END) AS BIGINT) AS retried, \
             CAST(sum(CASE WHEN fallback_used THEN 1 ELSE 0 END) AS BIGINT) AS fallbacks \
             FROM priced_interactions WHERE {condition} AND kind = 'model_call' GROUP BY {} ORDER BY {}",
            select.iter().map(|column| format!("{column}, ")).collect::<String>(),
            group.join(", "),
            order_by(&group)
        );
        let mut rows = Vec::new();
        for batch in self.bound(&sql, bind).await? {
            for row in 0..batch.num_rows() {
                let groups = query.group_by.iter().map(|g| (g.as_str(), string(&batch, g.as_str(), row))).collect();
                let counts = [int(&batch, "requests", row), int(&batch, "retried", row), int(&batch, "fallbacks", row)];
                rows.push((groups, string(&batch, "outcome", row).unwrap_or_default(), counts));
            }
        }
        let mut bind = Bind::default();
        let condition = bind.range(query.range);
        let sql = format!(
            "SELECT gen_ai_request_model AS model, upstream, routed_model, count(*) AS requests \
             FROM priced_interactions WHERE {condition} AND kind = 'model_call' AND fallback_used \
             GROUP BY gen_ai_request_model, upstream, routed_model \
             ORDER BY {}",
            order_by(&["model".to_owned(), "upstream".to_owned(), "routed_model".to_owned()])
        );
        let mut fallback_targets = Vec::new();
        for batch in self.bound(&sql, bind).await? {
            for row in 0..batch.num_rows() {
                fallback_targets.push(FallbackLine {
                    model: string(&batch, "model", row),
                    served_by_upstream: string(&batch, "upstream", row),
                    served_by_model: string(&batch, "routed_model", row),
                    requests: int(&batch, "requests", row),
                });
            }
        }
        Ok(ReliabilityReport { lines: reliability_from(rows), fallback_targets })
    }
}

/// `level`'s percentile of the sorted array `values`, by linear interpolation between
/// the closest ranks; NULL for an empty array.
fn clickhouse_percentile(values: &str, level: f64) -> String {
    let rank = format!("((length({values}) - 1) * {level})");
    let at = |index: &str| format!("arrayElement({values}, toUInt64({index}({rank})) + 1)");
    format!(
        "if(empty({values}), NULL, {lower} + ({upper} - {lower}) * ({rank} - floor({rank})))",
        lower = at("floor"),
        upper = at("ceil"),
    )
}

pub(crate) fn json_int(row: &tollgate_schemas::arrow::JsonRow, name: &str) -> i64 {
    match row.get(name) {
        Some(serde_json::Value::String(text)) => text.parse().unwrap_or(0),
        Some(value) => value.as_i64().unwrap_or(0),
        None => 0,
    }
}

fn json_float(row: &tollgate_schemas::arrow::JsonRow, name: &str) -> Option<f64> {
    match row.get(name) {
        Some(serde_json::Value::String(text)) => text.parse().ok(),
        Some(value) => value.as_f64(),
        None => None,
    }
}

pub(crate) fn json_text(row: &tollgate_schemas::arrow::JsonRow, name: &str) -> Option<String> {
    row.get(name).and_then(serde_json::Value::as_str).map(str::to_owned)
}

impl ClickHouseQueries {
    /// See [`crate::performance`].
    pub async fn latency(&self, query: &PerformanceQuery) -> Result<Vec<LatencyLine>, ApiError> {
        let mut inner = Vec::new();
        let mut outer = Vec::new();
        let mut group = Vec::new();
        if let Some(bucket) = query.bucket {
            let start = match bucket {
                Bucket::Hour => "toStartOfHour",
                _ => "toStartOfDay",
            };
            inner.push(format!(
                "toUnixTimestamp({start}(toDateTime(intDiv(time, 1000000), 'UTC'))) * 1000000 AS bucket_start"
            ));
            outer.push("bucket_start".to_owned());
            group.push("bucket_start".to_owned());
        }
        for grouping in &query.group_by {
            inner.push(format!("{} AS `{}`", grouping.column(), grouping.as_str()));
            outer.push(format!("`{}`", grouping.as_str()));
            group.push(format!("`{}`", grouping.as_str()));
        }
        inner.extend([
            "count() AS requests".to_owned(),
            "count(time_to_first_token_us) AS streams".to_owned(),
            "sum(gen_ai_usage_output_tokens) AS output_tokens".to_owned(),
            "sum(if(gen_ai_usage_output_tokens > 0, toInt64(duration_us) - toInt64(ifNull(time_to_first_token_us, 0)), \
             toInt64(0))) AS generation_us"
                .to_owned(),
            "arraySort(groupArray(toFloat64(duration_us))) AS durations".to_owned(),
            "arraySort(groupArray(toFloat64(time_to_first_token_us))) AS ttfts".to_owned(),
            "arraySort(groupArray(toFloat64(gateway_overhead_us))) AS overheads".to_owned(),
        ]);
        outer.extend(["requests", "streams", "output_tokens", "generation_us"].map(str::to_owned));
        for (alias, column, level) in PERCENTILES {
            let values = match column {
                "duration_us" => "durations",
                "time_to_first_token_us" => "ttfts",
                _ => "overheads",
            };
            outer.push(format!("{} AS {alias}", clickhouse_percentile(values, level)));
        }
        let grouping = if group.is_empty() { String::new() } else { format!(" GROUP BY {}", group.join(", ")) };
        let ordering = if group.is_empty() { String::new() } else { format!(" ORDER BY {}", order_by(&group)) };
        let sql = format!(
            "SELECT {} FROM (SELECT {} FROM priced_interactions FINAL WHERE time >= ? AND time < ? \
             AND kind = 'model_call' AND outcome = 'ok'{grouping}){ordering}",
            outer.join(", "),
            inner.join(", ")
        );
        let rows = self.rows(&sql, vec![Value::Int(query.range.from), Value::Int(query.range.to)]).await?;
        let mut lines = Vec::new();
        for row in rows {
            let requests = json_int(&row, "requests");
            if requests == 0 {
                continue;
            }
            let groups = query.group_by.iter().map(|g| (g.as_str(), json_text(&row, g.as_str()))).collect();
            let counts =
                [requests, json_int(&row, "streams"), json_int(&row, "output_tokens"), json_int(&row, "generation_us")];
            let percentiles = PERCENTILES.map(|(alias, _, _)| json_float(&row, alias));
            let bucket = query.bucket.map(|_| rfc3339(json_int(&row, "bucket_start")));
            lines.push(line_from(bucket, groups, counts, percentiles));
        }
        Ok(lines)
    }

    /// See [`crate::performance`].
    pub async fn reliability(&self, query: &PerformanceQuery) -> Result<ReliabilityReport, ApiError> {
        let mut select = Vec::new();
        let mut group = Vec::new();
        for grouping in &query.group_by {
            select.push(format!("{} AS `{}`, ", grouping.column(), grouping.as_str()));
            group.push(format!("`{}`", grouping.as_str()));
        }
        group.push("outcome".to_owned());
        let sql = format!(
            "SELECT {}outcome, count() AS requests, countIf(attempts > 1) AS retried, countIf(fallback_used = 1) AS fallbacks \
             FROM priced_interactions FINAL WHERE time >= ? AND time < ? AND kind = 'model_call' GROUP BY {} ORDER BY {}",
            select.concat(),
            group.join(", "),
            order_by(&group)
        );
        let range = || vec![Value::Int(query.range.from), Value::Int(query.range.to)];
        let mut rows = Vec::new();
        for row in self.rows(&sql, range()).await? {
            let groups = query.group_by.iter().map(|g| (g.as_str(), json_text(&row, g.as_str()))).collect();
            let counts = [json_int(&row, "requests"), json_int(&row, "retried"), json_int(&row, "fallbacks")];
            rows.push((groups, json_text(&row, "outcome").unwrap_or_default(), counts));
        }
        let sql = format!(
            "SELECT gen_ai_request_model AS model, upstream, routed_model, count() AS requests \
             FROM priced_interactions FINAL WHERE time >= ? AND time < ? AND kind = 'model_call' AND fallback_used = 1 \
             GROUP BY model, upstream, routed_model ORDER BY {}",
            order_by(&["model".to_owned(), "upstream".to_owned(), "routed_model".to_owned()])
        );
        let fallback_targets = self
            .rows(&sql, range())
            .await?
            .into_iter()
            .map(|row| FallbackLine {
                model: json_text(&row, "model"),
                served_by_upstream: json_text(&row, "upstream"),
                served_by_model: json_text(&row, "routed_model"),
                requests: json_int(&row, "requests"),
            })
            .collect();
        Ok(ReliabilityReport { lines: reliability_from(rows), fallback_targets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groupings_are_checked() {
        assert_eq!(
            PerformanceGroup::parse_list("provider, routed_model").unwrap(),
            [PerformanceGroup::Provider, PerformanceGroup::RoutedModel]
        );
        assert_eq!(PerformanceGroup::parse_list("team").unwrap_err().parameter.as_deref(), Some("group_by"));
        assert!(PerformanceGroup::parse_list("model,model").is_err());
    }

    #[test]
    fn reliability_adds_outcomes_up_per_group() {
        let group = |model: &str| BTreeMap::from([("model", Some(model.to_owned()))]);
        let lines = reliability_from(vec![
            (group("a"), "ok".to_owned(), [8, 1, 2]),
            (group("a"), "timeout".to_owned(), [2, 2, 0]),
            (group("b"), "ok".to_owned(), [5, 0, 0]),
        ]);
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].requests, lines[0].errors, lines[0].retried, lines[0].fallbacks), (10, 2, 3, 2));
        assert!((lines[0].error_rate - 0.2).abs() < 1e-12 && (lines[0].fallback_rate - 0.2).abs() < 1e-12);
        assert_eq!(lines[1].error_rate, 0.0);
    }
}
