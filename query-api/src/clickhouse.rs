//! The query API's questions answered by ClickHouse, from the tables the processor's
//! ClickHouse stage loads (read with `FINAL`, so rows inserted twice count once): the
//! cost report, the interaction search and detail, the event listings and budget status,
//! each with answers identical to [`crate::parquet::ParquetStore`]'s on the same data
//! (`tests/differential.rs`). Captured content lives in `interaction_content`, apart from
//! the metering rows; it is read only for the interactions of an answer.
//!
//! Caller values are bound with the client's `?` parameters, which it sends as escaped
//! literals; column names come from fixed lists.

use serde::Deserialize;

use crate::params::{ApiError, Bucket};
use crate::store::{
    BudgetStatus, CostLine, CostQuery, EventPage, InteractionDetail, ListQuery, Listed, Page, SearchQuery,
};
use tollgate_schemas::arrow::JsonRow;
use tollgate_schemas::{PolicyViolation, PricedInteraction, QuotaDecision};

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
        let mut lines = Vec::new();
        for row in json_rows(statement).await? {
            let int = |name: &str| row.get(name).and_then(serde_json::Value::as_i64).unwrap_or(0);
            let mut groups = std::collections::BTreeMap::new();
            for grouping in &query.group_by {
                let value = row.get(grouping.as_str()).and_then(serde_json::Value::as_str).map(str::to_owned);
                groups.insert(grouping.as_str(), value);
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

    /// Rows of `statement` (with `?` placeholders bound by `bind`) as JSON objects.
    pub(crate) async fn rows(&self, sql: &str, bind: Vec<Value>) -> Result<Vec<JsonRow>, ApiError> {
        let mut statement = self.client.query(sql);
        for value in &bind {
            statement = match value {
                Value::Text(text) => statement.bind(text.as_str()),
                Value::Int(number) => statement.bind(*number),
            };
        }
        json_rows(statement).await
    }

    async fn records<R: tollgate_schemas::arrow::StoredRecord>(
        &self,
        sql: &str,
        bind: Vec<Value>,
    ) -> Result<Vec<R>, ApiError> {
        tollgate_schemas::arrow::from_json_rows(self.rows(sql, bind).await?).map_err(engine)
    }

    /// Priced interactions by `sql`, with their captured content from `interaction_content`.
    async fn interactions(&self, sql: &str, bind: Vec<Value>) -> Result<Vec<PricedInteraction>, ApiError> {
        let mut rows = self.rows(sql, bind).await?;
        let ids: Vec<String> = rows
            .iter()
            .filter_map(|row| row.get("id").and_then(serde_json::Value::as_str).map(str::to_owned))
            .collect();
        if !ids.is_empty() {
            let mut contents: std::collections::HashMap<String, JsonRow> = std::collections::HashMap::new();
            let mut statement = self.client.query(
                "SELECT id, captured_request, captured_response, content_redacted FROM interaction_content FINAL WHERE has(?, id)",
            );
            statement = statement.bind(&ids);
            for content in json_rows(statement).await? {
                if let Some(id) = content.get("id").and_then(serde_json::Value::as_str) {
                    contents.insert(id.to_owned(), content);
                }
            }
            for row in &mut rows {
                let id = row.get("id").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
                if let Some(mut content) = contents.remove(&id) {
                    content.remove("id");
                    row.extend(content);
                }
            }
        }
        tollgate_schemas::arrow::from_json_rows(rows).map_err(engine)
    }

    /// See [`crate::parquet::ParquetStore::search`].
    pub async fn search(&self, query: &SearchQuery) -> Result<Page, ApiError> {
        let mut bind = Vec::new();
        let mut conditions = filters(&mut bind, query.range.map(|range| (range.from, range.to)), &query.equals);
        if let Some(rule) = &query.rule {
            bind.push(Value::Text(rule.clone()));
            conditions.push(
                "id IN (SELECT assumeNotNull(interaction_id) FROM policy_violations FINAL \
                 WHERE rule_id = ? AND isNotNull(interaction_id))"
                    .to_owned(),
            );
        }
        if let Some(needle) = &query.text {
            bind.push(Value::Text(needle.clone()));
            bind.push(Value::Text(needle.clone()));
            conditions.push(
                "id IN (SELECT id FROM interaction_content FINAL \
                 WHERE position(captured_request, ?) > 0 OR position(ifNull(captured_response, ''), ?) > 0)"
                    .to_owned(),
            );
        }
        if let Some(cursor) = &query.after {
            conditions.push(after(&mut bind, cursor));
        }
        let sql = format!(
            "SELECT * FROM priced_interactions FINAL{} ORDER BY time, id LIMIT {}",
            where_clause(&conditions),
            query.limit + 1
        );
        let mut interactions = self.interactions(&sql, bind).await?;
        let next_cursor = crate::store::cut(&mut interactions, query.limit, |last| {
            (last.interaction.time_unix_micros, last.interaction.id)
        });
        Ok(Page { interactions, next_cursor })
    }

    /// See [`crate::parquet::ParquetStore::interaction`].
    pub async fn interaction(&self, id: uuid::Uuid) -> Result<Option<InteractionDetail>, ApiError> {
        let id = id.to_string();
        let sql = "SELECT * FROM priced_interactions FINAL WHERE id = ? LIMIT 1";
        let Some(interaction) = self.interactions(sql, vec![Value::Text(id.clone())]).await?.pop() else {
            return Ok(None);
        };
        let sql = "SELECT * FROM policy_violations FINAL WHERE interaction_id = ? ORDER BY time, id";
        let violations: Vec<PolicyViolation> = self.records(sql, vec![Value::Text(id)]).await?;
        let mut decisions = Vec::new();
        for subject in interaction.interaction.principal.subjects() {
            let sql = "SELECT * FROM quota_decisions FINAL WHERE subject_kind = ? AND subject_id = ? AND time <= ? \
                       ORDER BY version DESC LIMIT 1";
            let bind = vec![
                Value::Text(subject.kind.as_str().to_owned()),
                Value::Text(subject.id.clone()),
                Value::Int(interaction.interaction.time_unix_micros),
            ];
            decisions.extend(self.records::<QuotaDecision>(sql, bind).await?);
        }
        Ok(Some(InteractionDetail { interaction, violations, decisions }))
    }

    /// See [`crate::parquet::ParquetStore::list`]. `FINAL` keeps one row per id.
    pub async fn list<E: Listed>(&self, query: &ListQuery) -> Result<EventPage<E>, ApiError> {
        let mut bind = Vec::new();
        let mut conditions = filters(&mut bind, query.range.map(|range| (range.from, range.to)), &query.equals);
        if let Some(cursor) = &query.after {
            conditions.push(after(&mut bind, cursor));
        }
        let sql = format!(
            "SELECT * FROM {} FINAL{} ORDER BY time, id LIMIT {}",
            E::TABLE,
            where_clause(&conditions),
            query.limit + 1
        );
        let mut items: Vec<E> = self.records(&sql, bind).await?;
        let next_cursor = crate::store::cut(&mut items, query.limit, |last| (last.time_unix_micros(), last.id()));
        Ok(EventPage { items, next_cursor })
    }

    /// See [`crate::parquet::ParquetStore::violation_counts`].
    pub async fn violation_counts(
        &self,
        range: crate::params::TimeRange,
    ) -> Result<Vec<crate::store::ViolationCount>, ApiError> {
        let sql = "SELECT rule_id, severity, uniqExact(id) AS violations FROM policy_violations \
                   WHERE time >= ? AND time < ? GROUP BY rule_id, severity ORDER BY violations DESC, rule_id, severity";
        let rows = self.rows(sql, vec![Value::Int(range.from), Value::Int(range.to)]).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let text =
                    |name: &str| row.get(name).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
                let violations = match row.get("violations") {
                    Some(serde_json::Value::String(number)) => number.parse().unwrap_or(0),
                    Some(value) => value.as_i64().unwrap_or(0),
                    None => 0,
                };
                crate::store::ViolationCount { rule_id: text("rule_id"), severity: text("severity"), violations }
            })
            .collect())
    }

    /// See [`crate::parquet::ParquetStore::budget_status`].
    pub async fn budget_status(
        &self,
        subject: Option<(String, String)>,
        now: i64,
    ) -> Result<Vec<BudgetStatus>, ApiError> {
        let mut bind = Vec::new();
        let filter = match subject {
            Some((kind, id)) => {
                bind.push(Value::Text(kind));
                bind.push(Value::Text(id));
                " WHERE subject_kind = ? AND subject_id = ?"
            }
            None => "",
        };
        let sql = format!(
            "SELECT * FROM quota_decisions FINAL{filter} \
             ORDER BY subject_kind, subject_id, budget_id, version DESC, time DESC \
             LIMIT 1 BY subject_kind, subject_id, budget_id"
        );
        let decisions: Vec<QuotaDecision> = self.records(&sql, bind).await?;
        Ok(decisions.into_iter().map(|decision| crate::store::budget_status(decision, now)).collect())
    }
}

/// The rows of `statement` as JSON objects (`JSONEachRow`, 64-bit integers unquoted).
async fn json_rows(statement: clickhouse::query::Query) -> Result<Vec<JsonRow>, ApiError> {
    let mut cursor = statement
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes("JSONEachRow")
        .map_err(engine)?;
    let bytes = cursor.collect().await.map_err(engine)?;
    bytes
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(engine))
        .collect()
}

/// A bound value.
pub(crate) enum Value {
    Text(String),
    Int(i64),
}

/// Conditions for an optional time range `[from, to)` and equality filters on columns
/// from the API's fixed lists.
fn filters(bind: &mut Vec<Value>, range: Option<(i64, i64)>, equals: &[(&'static str, String)]) -> Vec<String> {
    let mut conditions = Vec::new();
    if let Some((from, to)) = range {
        bind.push(Value::Int(from));
        bind.push(Value::Int(to));
        conditions.push("time >= ? AND time < ?".to_owned());
    }
    for (column, value) in equals {
        bind.push(Value::Text(value.clone()));
        conditions.push(format!("{column} = ?"));
    }
    conditions
}

/// The condition that keeps rows after `cursor` in `(time, id)` order.
fn after(bind: &mut Vec<Value>, cursor: &crate::params::Cursor) -> String {
    bind.push(Value::Int(cursor.time_unix_micros));
    bind.push(Value::Int(cursor.time_unix_micros));
    bind.push(Value::Text(cursor.id.clone()));
    "(time > ? OR (time = ? AND id > ?))".to_owned()
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) }
}
