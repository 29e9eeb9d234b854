//! Reports answered by ClickHouse, from the tables the processor's ClickHouse stage loads
//! (read with `FINAL`, so rows inserted twice count once). Today: the cost report, with
//! answers identical to [`crate::parquet::ParquetStore::cost_report`] on the same data.
//!
//! Caller values are bound with the client's `?` parameters, which it sends as escaped
//! literals; column names come from fixed lists.

use serde::Deserialize;

use crate::params::{ApiError, Bucket};
use crate::store::{CostLine, CostQuery};

/// How to reach ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConnection {
    /// HTTP interface, for example `http://127.0.0.1:8123`.
    pub url: String,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

fn default_database() -> String {
    "tollgate".to_owned()
}

/// A ClickHouse client for reports.
#[derive(Clone)]
pub struct ClickHouseQueries {
    client: clickhouse::Client,
}

impl std::fmt::Debug for ClickHouseQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseQueries").finish_non_exhaustive()
    }
}

fn engine(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("ClickHouse query failed: {error}"))
}

impl ClickHouseQueries {
    pub fn new(connection: &ClickHouseConnection) -> Self {
        // Validation needs `RowBinaryWithNamesAndTypes`, which ClickHouse 18 lacks.
        let mut client = clickhouse::Client::default()
            .with_url(&connection.url)
            .with_database(&connection.database)
            .with_validation(false);
        if let Some(user) = &connection.user {
            client = client.with_user(user);
        }
        if let Some(password) = &connection.password {
            client = client.with_password(password);
        }
        ClickHouseQueries { client }
    }

    /// See [`crate::parquet::ParquetStore::cost_report`].
    pub async fn cost_report(&self, query: &CostQuery) -> Result<Vec<CostLine>, ApiError> {
        if query.bucket.is_some() && query.time_zone.starts_with(['+', '-']) {
            return Err(ApiError::bad_parameter("tz", "ClickHouse takes time zone names, not offsets"));
        }
        let mut select = Vec::new();
        let mut group = Vec::new();
        if let Some(bucket) = query.bucket {
            let local = "toDateTime(intDiv(time, 1000000), ?)";
            let start = match bucket {
                Bucket::Hour => format!("toStartOfHour({local})"),
                Bucket::Day => format!("toStartOfDay({local})"),
                Bucket::Month => format!("toDateTime(toStartOfMonth({local}), ?)"),
            };
            select.push(format!("toUnixTimestamp({start}) * 1000000 AS bucket_start"));
            group.push("bucket_start".to_owned());
        }
        for grouping in &query.group_by {
            select.push(format!("{} AS `{}`", grouping.column(), grouping.as_str()));
            group.push(format!("`{}`", grouping.as_str()));
        }
        select.extend([
            "count() AS interactions".to_owned(),
            "sum(cost_total_nanos) AS cost_nanos".to_owned(),
            "sum(gen_ai_usage_input_tokens) AS input_tokens".to_owned(),
            "sum(gen_ai_usage_output_tokens) AS output_tokens".to_owned(),
        ]);
        let mut sql =
            format!("SELECT {} FROM priced_interactions FINAL WHERE time >= ? AND time < ?", select.join(", "));
        if !group.is_empty() {
            let order: Vec<String> = group.iter().map(|column| format!("{column} NULLS LAST")).collect();
            sql.push_str(&format!(" GROUP BY {} ORDER BY {}", group.join(", "), order.join(", ")));
        }
        let mut statement = self.client.query(&sql);
        if let Some(bucket) = query.bucket {
            statement = statement.bind(query.time_zone.as_str());
            if bucket == Bucket::Month {
                statement = statement.bind(query.time_zone.as_str());
            }
        }
        statement = statement.bind(query.range.from).bind(query.range.to);
        let mut cursor = statement
            .with_setting("output_format_json_quote_64bit_integers", "0")
            .fetch_bytes("JSONEachRow")
            .map_err(engine)?;
        let bytes = cursor.collect().await.map_err(engine)?;
        let mut lines = Vec::new();
        for line in bytes.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
            let row: serde_json::Value = serde_json::from_slice(line).map_err(engine)?;
            let int = |name: &str| row[name].as_i64().unwrap_or(0);
            let mut groups = std::collections::BTreeMap::new();
            for grouping in &query.group_by {
                groups.insert(grouping.as_str(), row[grouping.as_str()].as_str().map(str::to_owned));
            }
            let cost_nanos = int("cost_nanos");
            lines.push(CostLine {
                bucket_start: query.bucket.map(|_| crate::store::rfc3339(int("bucket_start"))),
                groups,
                interactions: int("interactions"),
                cost_nanos,
                cost_usd: tollgate_schemas::Nanodollars(cost_nanos).to_string(),
                input_tokens: int("input_tokens"),
                output_tokens: int("output_tokens"),
            });
        }
        Ok(lines)
    }
}
