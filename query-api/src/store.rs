//! The reports and searches, answered by DataFusion over the Parquet archive.
//!
//! Every value a caller gives reaches SQL as a bound parameter (`$1`, `$2`, ...); the
//! only text put into SQL is chosen from fixed lists (columns, bucket sizes), a validated
//! time zone name, or a number.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType, UInt64Type};
use datafusion::scalar::ScalarValue;
use serde::Serialize;
use tollgate_schemas::{Nanodollars, PolicyViolation, PricedInteraction, QuotaDecision};

use crate::params::{ApiError, Bucket, Cursor, GroupBy, TimeRange};
use crate::parquet::ParquetStore;

/// A cost report request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostQuery {
    pub range: TimeRange,
    pub group_by: Vec<GroupBy>,
    pub bucket: Option<Bucket>,
    /// IANA name or offset; buckets start at this zone's midnights and month starts.
    pub time_zone: String,
}

/// How many violations of one rule at one severity a time range holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViolationCount {
    pub rule_id: String,
    pub severity: String,
    pub violations: i64,
}

/// One line of a cost report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CostLine {
    /// Start of the bucket, as an RFC 3339 UTC time, when the report is bucketed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_start: Option<String>,
    /// The grouping values, by grouping name (`team`, `model`, ...); null where the
    /// interactions have none (a model call has no tool).
    #[serde(flatten)]
    pub groups: BTreeMap<&'static str, Option<String>>,
    pub interactions: i64,
    pub cost_nanos: i64,
    /// The same cost in dollars, exact: nine decimal places.
    pub cost_usd: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Interaction search filters, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    pub range: Option<TimeRange>,
    /// Equality filters on stored columns (`org_id`, `gen_ai_request_model`, ...).
    pub equals: Vec<(&'static str, String)>,
    /// Interactions that raised a violation of this rule.
    pub rule: Option<String>,
    /// Text contained in the captured request or response.
    pub text: Option<String>,
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// A page of interactions in time order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub interactions: Vec<PricedInteraction>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One interaction with what concerns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InteractionDetail {
    pub interaction: PricedInteraction,
    pub violations: Vec<PolicyViolation>,
    /// For each subject the interaction counts toward, the newest quota decision made
    /// at or before its time.
    pub decisions: Vec<QuotaDecision>,
}

/// Cuts a page fetched with one row more than `limit` and says where the next starts.
pub(crate) fn cut<T>(rows: &mut Vec<T>, limit: usize, key: impl Fn(&T) -> (i64, uuid::Uuid)) -> Option<String> {
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(|last| {
        let (time_unix_micros, id) = key(last);
        Cursor { time_unix_micros, id: id.to_string() }.encode()
    })
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) }
}

fn engine(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("query failed: {error}"))
}

fn timestamp(micros: i64) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(micros), Some("UTC".into()))
}

fn text(value: &str) -> ScalarValue {
    ScalarValue::Utf8(Some(value.to_owned()))
}

/// Bound parameters, numbered as they are added.
#[derive(Default)]
pub(crate) struct Bind {
    values: Vec<ScalarValue>,
}

impl Bind {
    /// Adds `value` and returns its placeholder.
    pub(crate) fn add(&mut self, value: ScalarValue) -> String {
        self.values.push(value);
        format!("${}", self.values.len())
    }

    /// Conditions for an optional time range and equality filters.
    fn filters(&mut self, range: Option<TimeRange>, equals: &[(&'static str, String)]) -> Vec<String> {
        let mut conditions = Vec::new();
        if let Some(range) = range {
            conditions.push(self.range(range));
        }
        for (column, value) in equals {
            let placeholder = self.add(text(value));
            conditions.push(format!("{column} = {placeholder}"));
        }
        conditions
    }

    /// The condition that keeps rows after `cursor` in `(time, id)` order.
    fn after(&mut self, cursor: &Cursor) -> String {
        let time = self.add(timestamp(cursor.time_unix_micros));
        let id = self.add(text(&cursor.id));
        format!("(time > {time} OR (time = {time} AND id > {id}))")
    }

    /// The time range as conditions, with the date partitions it touches.
    pub(crate) fn range(&mut self, range: TimeRange) -> String {
        let from = self.add(timestamp(range.from));
        let to = self.add(timestamp(range.to));
        let first = self.add(text(&tollgate_schemas::archive::date_partition(range.from)));
        let last = self.add(text(&tollgate_schemas::archive::date_partition(range.to)));
        format!("time >= {from} AND time < {to} AND date >= {first} AND date <= {last}")
    }
}

impl ParquetStore {
    pub(crate) async fn bound(&self, sql: &str, bind: Bind) -> Result<Vec<RecordBatch>, ApiError> {
        let frame = self.context().sql(sql).await.map_err(engine)?;
        let frame = frame.with_param_values(bind.values).map_err(engine)?;
        frame.collect().await.map_err(engine)
    }

    async fn bound_records<R: tollgate_schemas::arrow::StoredRecord>(
        &self,
        sql: &str,
        bind: Bind,
    ) -> Result<Vec<R>, ApiError> {
        let mut records = Vec::new();
        for batch in self.bound(sql, bind).await? {
            records.extend(R::from_record_batch(&batch).map_err(engine)?);
        }
        Ok(records)
    }

    /// Spend, interactions and tokens over `query.range`, grouped and bucketed.
    pub async fn cost_report(&self, query: &CostQuery) -> Result<Vec<CostLine>, ApiError> {
        let mut bind = Bind::default();
        let mut select = Vec::new();
        let mut group = Vec::new();
        if let Some(bucket) = query.bucket {
            // The time zone was checked against the time zone database; it cannot hold a quote.
            select.push(format!(
                "date_trunc('{}', arrow_cast(time, 'Timestamp(Microsecond, Some(\"{}\"))')) AS bucket_start",
                bucket.as_str(),
                query.time_zone
            ));
            group.push("bucket_start".to_owned());
        }
        for grouping in &query.group_by {
            select.push(format!("{} AS \"{}\"", grouping.column(), grouping.as_str()));
            group.push(format!("\"{}\"", grouping.as_str()));
        }
        select.extend([
            "count(*) AS interactions".to_owned(),
            "sum(cost_total_nanos) AS cost_nanos".to_owned(),
            "CAST(sum(gen_ai_usage_input_tokens) AS BIGINT) AS input_tokens".to_owned(),
            "CAST(sum(gen_ai_usage_output_tokens) AS BIGINT) AS output_tokens".to_owned(),
        ]);
        let condition = bind.range(query.range);
        let mut sql = format!("SELECT {} FROM priced_interactions WHERE {condition}", select.join(", "));
        if !group.is_empty() {
            // Missing values (a model call has no tool) sort last, as in every backend.
            let order: Vec<String> = group.iter().map(|column| format!("{column} NULLS LAST")).collect();
            sql.push_str(&format!(" GROUP BY {} ORDER BY {}", group.join(", "), order.join(", ")));
        }
        let mut lines = Vec::new();
        for batch in self.bound(&sql, bind).await? {
            for row in 0..batch.num_rows() {
                let cost_nanos = int(&batch, "cost_nanos", row);
                let mut groups = BTreeMap::new();
                for grouping in &query.group_by {
                    groups.insert(grouping.as_str(), string(&batch, grouping.as_str(), row));
                }
                lines.push(CostLine {
                    bucket_start: query.bucket.and_then(|_| micros(&batch, "bucket_start", row)).map(rfc3339),
                    groups,
                    interactions: int(&batch, "interactions", row),
                    cost_nanos,
                    cost_usd: Nanodollars(cost_nanos).to_string(),
                    input_tokens: int(&batch, "input_tokens", row),
                    output_tokens: int(&batch, "output_tokens", row),
                })
            }
        }
        Ok(lines)
    }

    /// Interactions matching `query`, oldest first, a page at a time.
    pub async fn search(&self, query: &SearchQuery) -> Result<Page, ApiError> {
        let mut bind = Bind::default();
        let mut conditions = bind.filters(query.range, &query.equals);
        if let Some(rule) = &query.rule {
            let placeholder = bind.add(text(rule));
            conditions.push(format!(
                "id IN (SELECT interaction_id FROM policy_violations WHERE rule_id = {placeholder} AND interaction_id IS NOT NULL)"
            ));
        }
        if let Some(needle) = &query.text {
            let placeholder = bind.add(text(needle));
            conditions.push(format!(
                "(strpos(coalesce(captured_request, ''), {placeholder}) > 0 OR strpos(coalesce(captured_response, ''), {placeholder}) > 0)"
            ));
        }
        if let Some(cursor) = &query.after {
            conditions.push(bind.after(cursor));
        }
        let sql = format!(
            "SELECT * FROM priced_interactions{} ORDER BY time, id LIMIT {}",
            where_clause(&conditions),
            query.limit + 1
        );
        let mut interactions: Vec<PricedInteraction> = self.bound_records(&sql, bind).await?;
        let next_cursor =
            cut(&mut interactions, query.limit, |last| (last.interaction.time_unix_micros, last.interaction.id));
        Ok(Page { interactions, next_cursor })
    }

    /// One interaction, with its violations and the decisions in force for its subjects.
    pub async fn interaction(&self, id: uuid::Uuid) -> Result<Option<InteractionDetail>, ApiError> {
        let mut bind = Bind::default();
        let placeholder = bind.add(text(&id.to_string()));
        let sql = format!("SELECT * FROM priced_interactions WHERE id = {placeholder} LIMIT 1");
        let Some(interaction) = self.bound_records::<PricedInteraction>(&sql, bind).await?.pop() else {
            return Ok(None);
        };
        let mut bind = Bind::default();
        let placeholder = bind.add(text(&id.to_string()));
        let sql = format!("SELECT * FROM policy_violations WHERE interaction_id = {placeholder} ORDER BY time, id");
        let mut violations: Vec<PolicyViolation> = self.bound_records(&sql, bind).await?;
        violations.dedup_by_key(|violation| violation.id);
        let mut decisions = Vec::new();
        for subject in interaction.interaction.principal.subjects() {
            let mut bind = Bind::default();
            let kind = bind.add(text(subject.kind.as_str()));
            let subject_id = bind.add(text(&subject.id));
            let time = bind.add(timestamp(interaction.interaction.time_unix_micros));
            let sql = format!(
                "SELECT * FROM quota_decisions WHERE subject_kind = {kind} AND subject_id = {subject_id} AND time <= {time} \
                 ORDER BY version DESC LIMIT 1"
            );
            decisions.extend(self.bound_records::<QuotaDecision>(&sql, bind).await?);
        }
        Ok(Some(InteractionDetail { interaction, violations, decisions }))
    }
}

impl ParquetStore {
    /// Where interaction `id` sits in its partition's Merkle log: `(partition, leaf
    /// index)`, or `None` when the archive keeps no log (or has no such interaction).
    pub async fn merkle_position(&self, id: uuid::Uuid) -> Result<Option<(i32, u64)>, ApiError> {
        use datafusion::arrow::array::{Array, Int32Array, UInt64Array};
        let mut bind = Bind::default();
        let placeholder = bind.add(text(&id.to_string()));
        let sql = format!(
            "SELECT merkle_partition, merkle_leaf FROM priced_interactions \
             WHERE id = {placeholder} AND merkle_leaf IS NOT NULL LIMIT 1"
        );
        for batch in self.bound(&sql, bind).await? {
            let partitions = batch.column(0).as_any().downcast_ref::<Int32Array>();
            let leaves = batch.column(1).as_any().downcast_ref::<UInt64Array>();
            if let (Some(partitions), Some(leaves)) = (partitions, leaves)
                && !partitions.is_empty()
                && partitions.is_valid(0)
                && leaves.is_valid(0)
            {
                return Ok(Some((partitions.value(0), leaves.value(0))));
            }
        }
        Ok(None)
    }
}

/// A listing of one of the event tables (violations, decisions, governance changes),
/// validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub range: Option<TimeRange>,
    pub equals: Vec<(&'static str, String)>,
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// A page of events in time order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventPage<E> {
    pub items: Vec<E>,
    pub next_cursor: Option<String>,
}

/// Where a budget stands: its newest decision and where the window is heading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetStatus {
    pub subject: String,
    pub budget_id: String,
    pub window: tollgate_schemas::WindowKind,
    pub window_start_unix_micros: i64,
    pub window_end_unix_micros: Option<i64>,
    pub budget_nanos: i64,
    pub spent_nanos: i64,
    pub remaining_nanos: i64,
    pub state: tollgate_schemas::QuotaState,
    pub hard: bool,
    /// Spend at the window's end if it goes on at the window's average rate so far
    /// (calendar windows only).
    pub forecast_nanos: Option<i64>,
    pub as_of_unix_micros: i64,
}

/// A stored event with the time and id that order listings.
pub trait Listed: tollgate_schemas::arrow::StoredRecord {
    const TABLE: &'static str;
    fn time_unix_micros(&self) -> i64;
    fn id(&self) -> uuid::Uuid;
}

impl Listed for PolicyViolation {
    const TABLE: &'static str = "policy_violations";
    fn time_unix_micros(&self) -> i64 {
        self.time_unix_micros
    }
    fn id(&self) -> uuid::Uuid {
        self.id
    }
}

impl Listed for QuotaDecision {
    const TABLE: &'static str = "quota_decisions";
    fn time_unix_micros(&self) -> i64 {
        self.time_unix_micros
    }
    fn id(&self) -> uuid::Uuid {
        self.id
    }
}

impl Listed for tollgate_schemas::GovernanceChange {
    const TABLE: &'static str = "governance_changes";
    fn time_unix_micros(&self) -> i64 {
        self.time_unix_micros
    }
    fn id(&self) -> uuid::Uuid {
        self.id
    }
}

impl Listed for tollgate_schemas::UpstreamHealth {
    const TABLE: &'static str = "upstream_health";
    fn time_unix_micros(&self) -> i64 {
        self.time_unix_micros
    }
    fn id(&self) -> uuid::Uuid {
        self.id
    }
}

impl Listed for tollgate_schemas::AccessEvent {
    const TABLE: &'static str = "access_events";
    fn time_unix_micros(&self) -> i64 {
        self.time_unix_micros
    }
    fn id(&self) -> uuid::Uuid {
        self.id
    }
}

impl ParquetStore {
    /// Events of `E`'s table matching `query`, one per id (the archive keeps every
    /// published copy), oldest first, a page at a time.
    pub async fn list<E: Listed>(&self, query: &ListQuery) -> Result<EventPage<E>, ApiError> {
        let mut bind = Bind::default();
        let filter = where_clause(&bind.filters(query.range, &query.equals));
        let outer = match &query.after {
            Some(cursor) => format!(" AND {}", bind.after(cursor)),
            None => String::new(),
        };
        let sql = format!(
            "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY time) AS copy FROM {}{filter}) \
             WHERE copy = 1{outer} ORDER BY time, id LIMIT {}",
            E::TABLE,
            query.limit + 1
        );
        let mut items: Vec<E> = self.bound_records(&sql, bind).await?;
        let next_cursor = cut(&mut items, query.limit, |last| (last.time_unix_micros(), last.id()));
        Ok(EventPage { items, next_cursor })
    }

    /// Violations in `range` by rule and severity, most frequent first.
    pub async fn violation_counts(&self, range: TimeRange) -> Result<Vec<ViolationCount>, ApiError> {
        let mut bind = Bind::default();
        let condition = bind.range(range);
        let sql = format!(
            "SELECT rule_id, severity, CAST(count(DISTINCT id) AS BIGINT) AS violations FROM policy_violations \
             WHERE {condition} GROUP BY rule_id, severity ORDER BY violations DESC, rule_id, severity"
        );
        let mut counts = Vec::new();
        for batch in self.bound(&sql, bind).await? {
            for row in 0..batch.num_rows() {
                counts.push(ViolationCount {
                    rule_id: string(&batch, "rule_id", row).unwrap_or_default(),
                    severity: string(&batch, "severity", row).unwrap_or_default(),
                    violations: int(&batch, "violations", row),
                });
            }
        }
        Ok(counts)
    }

    /// The newest decision of every budget (optionally of one subject), as of `now`.
    pub async fn budget_status(
        &self,
        subject: Option<(String, String)>,
        now: i64,
    ) -> Result<Vec<BudgetStatus>, ApiError> {
        let mut bind = Bind::default();
        let filter = match &subject {
            Some((kind, id)) => {
                let kind = bind.add(text(kind));
                let id = bind.add(text(id));
                format!(" WHERE subject_kind = {kind} AND subject_id = {id}")
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY subject_kind, subject_id, budget_id \
             ORDER BY version DESC, time DESC) AS newest FROM quota_decisions{filter}) WHERE newest = 1 \
             ORDER BY subject_kind, subject_id, budget_id"
        );
        let decisions: Vec<QuotaDecision> = self.bound_records(&sql, bind).await?;
        Ok(decisions.into_iter().map(|decision| budget_status(decision, now)).collect())
    }
}

/// Where the budget of `decision` (its newest) stands at `now`, with the spend forecast to
/// the end of its window at the window's average rate so far.
pub(crate) fn budget_status(decision: QuotaDecision, now: i64) -> BudgetStatus {
    let start = decision.window.start_unix_micros;
    let forecast = decision.window.end_unix_micros.and_then(|end| {
        let elapsed = now.clamp(start, end) - start;
        (elapsed > 0).then(|| {
            let projected = i128::from(decision.spent.0) * i128::from(end - start) / i128::from(elapsed);
            i64::try_from(projected).unwrap_or(i64::MAX)
        })
    });
    BudgetStatus {
        subject: decision.subject.key(),
        budget_id: decision.budget_id,
        window: decision.window.kind,
        window_start_unix_micros: start,
        window_end_unix_micros: decision.window.end_unix_micros,
        budget_nanos: decision.budget.0,
        spent_nanos: decision.spent.0,
        remaining_nanos: decision.remaining.0,
        state: decision.state,
        hard: decision.hard,
        forecast_nanos: forecast,
        as_of_unix_micros: decision.time_unix_micros,
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a dyn Array> {
    batch.column_by_name(name).map(|array| array.as_ref())
}

pub(crate) fn int(batch: &RecordBatch, name: &str, row: usize) -> i64 {
    let Some(array) = column(batch, name) else { return 0 };
    if array.is_null(row) {
        return 0;
    }
    match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row),
        DataType::UInt64 => i64::try_from(array.as_primitive::<UInt64Type>().value(row)).unwrap_or(i64::MAX),
        _ => 0,
    }
}

pub(crate) fn string(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
    let array = column(batch, name)?;
    if array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Some(array.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Some(array.as_string_view().value(row).to_owned()),
        _ => None,
    }
}

pub(crate) fn micros(batch: &RecordBatch, name: &str, row: usize) -> Option<i64> {
    let array = column(batch, name)?;
    match array.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, _) if !array.is_null(row) => {
            Some(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        _ => None,
    }
}

/// A floating-point cell (percentiles); `None` when null.
pub(crate) fn float(batch: &RecordBatch, name: &str, row: usize) -> Option<f64> {
    let array = column(batch, name)?;
    if array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Float64 => Some(array.as_primitive::<datafusion::arrow::datatypes::Float64Type>().value(row)),
        DataType::Int64 | DataType::UInt64 => Some(int(batch, name, row) as f64),
        _ => None,
    }
}

pub(crate) fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
