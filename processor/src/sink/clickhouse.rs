//! The ClickHouse sink: versioned migrations and idempotent inserts of interactions,
//! priced interactions, policy violations, quota decisions and governance changes.
//!
//! The DDL stays inside what both ClickHouse 18.16 and current releases accept: no
//! `DateTime64`, `Map`, `JSON` or `LowCardinality`; times are `Int64` microseconds with a
//! materialized `Date` for partitioning; booleans are `UInt8`. Tables are
//! `ReplacingMergeTree` keyed on the event id, and readers use `FINAL`, so an event
//! written twice (a replay, a crash before the offset commit) is seen once.
//!
//! Captured request/response content lives in `interaction_content`, apart from the
//! metering rows in `interactions`, so cost queries never read it.

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use tollgate_schemas::arrow::{JsonRow, StoredRecord};
use tollgate_schemas::{
    Call, CapturedContent, ContentRecord, GenAiOperation, Interaction, InteractionKind, ModelCall, Outcome,
    OutcomeStatus, Principal, Timing, ToolCall, TraceContext, Usage,
};
use uuid::Uuid;

use super::SinkError;

/// How to reach ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP interface, for example `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding Tollgate's tables; created by the migrations.
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

/// One schema change, applied once, in order. Statements must be idempotent
/// (`IF NOT EXISTS`, or an `ADD COLUMN`, whose "already exists" counts as done) so two
/// processes migrating at once do no harm.
struct Migration {
    version: u32,
    name: &'static str,
    statements: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "interactions and interaction_content",
        statements: &[
            "CREATE TABLE IF NOT EXISTS interactions (
            id String,
            time Int64,
            event_date Date MATERIALIZED toDate(toDateTime(intDiv(time, 1000000))),
            schema_version UInt16,
            gateway_instance String,
            org_id String,
            team_id Nullable(String),
            user_id Nullable(String),
            project_id Nullable(String),
            key_id String,
            kind String,
            gen_ai_operation_name Nullable(String),
            gen_ai_provider_name Nullable(String),
            upstream Nullable(String),
            gen_ai_request_model Nullable(String),
            routed_model Nullable(String),
            gen_ai_response_model Nullable(String),
            http_route Nullable(String),
            streaming Nullable(UInt8),
            gen_ai_request_max_tokens Nullable(UInt64),
            mcp_server Nullable(String),
            mcp_method_name Nullable(String),
            gen_ai_tool_name Nullable(String),
            mcp_session_id Nullable(String),
            request_sha256 Nullable(String),
            response_sha256 Nullable(String),
            request_bytes UInt64,
            response_bytes UInt64,
            outcome String,
            http_response_status_code Nullable(UInt16),
            error_type Nullable(String),
            error_message Nullable(String),
            attempts UInt32,
            fallback_used UInt8,
            gen_ai_usage_input_tokens UInt64,
            gen_ai_usage_output_tokens UInt64,
            gen_ai_usage_cache_read_input_tokens UInt64,
            gen_ai_usage_cache_creation_input_tokens UInt64,
            gen_ai_usage_reasoning_output_tokens UInt64,
            usage_estimated UInt8,
            duration_us UInt64,
            time_to_first_token_us Nullable(UInt64),
            gateway_overhead_us UInt64,
            trace_id Nullable(String),
            span_id Nullable(String),
            trace_flags Nullable(UInt8),
            tracestate Nullable(String)
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(event_date)
        ORDER BY (org_id, event_date, id)",
            "CREATE TABLE IF NOT EXISTS interaction_content (
            id String,
            time Int64,
            event_date Date MATERIALIZED toDate(toDateTime(intDiv(time, 1000000))),
            org_id String,
            captured_request String,
            captured_response Nullable(String),
            content_redacted UInt8
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(event_date)
        ORDER BY (org_id, event_date, id)",
        ],
    },
    Migration {
        version: 2,
        name: "priced_interactions, policy_violations, quota_decisions, governance_changes",
        statements: &[
            // The columns of the stored-record layouts in `tollgate_schemas::arrow`, less
            // the captured content (in `interaction_content`), with times as Int64
            // microseconds, booleans as UInt8 and lists as Nested.
            "CREATE TABLE IF NOT EXISTS priced_interactions (
            id String,
            time Int64,
            event_date Date MATERIALIZED toDate(toDateTime(intDiv(time, 1000000))),
            schema_version UInt16,
            gateway_instance String,
            org_id String,
            team_id Nullable(String),
            user_id Nullable(String),
            project_id Nullable(String),
            key_id String,
            kind String,
            gen_ai_operation_name Nullable(String),
            gen_ai_provider_name Nullable(String),
            upstream Nullable(String),
            gen_ai_request_model Nullable(String),
            routed_model Nullable(String),
            gen_ai_response_model Nullable(String),
            http_route Nullable(String),
            streaming Nullable(UInt8),
            gen_ai_request_max_tokens Nullable(UInt64),
            mcp_server Nullable(String),
            mcp_method_name Nullable(String),
            gen_ai_tool_name Nullable(String),
            mcp_session_id Nullable(String),
            request_sha256 Nullable(String),
            response_sha256 Nullable(String),
            request_bytes UInt64,
            response_bytes UInt64,
            outcome String,
            http_response_status_code Nullable(UInt16),
            error_type Nullable(String),
            error_message Nullable(String),
            attempts UInt32,
            fallback_used UInt8,
            gen_ai_usage_input_tokens UInt64,
            gen_ai_usage_output_tokens UInt64,
            gen_ai_usage_cache_read_input_tokens UInt64,
            gen_ai_usage_cache_creation_input_tokens UInt64,
            gen_ai_usage_reasoning_output_tokens UInt64,
            usage_estimated UInt8,
            duration_us UInt64,
            time_to_first_token_us Nullable(UInt64),
            gateway_overhead_us UInt64,
            trace_id Nullable(String),
            span_id Nullable(String),
            trace_flags Nullable(UInt8),
            tracestate Nullable(String),
            cost_total_nanos Int64,
            cost_input_nanos Int64,
            cost_output_nanos Int64,
            cost_cache_read_input_nanos Int64,
            cost_cache_creation_input_nanos Int64,
            cost_reasoning_output_nanos Int64,
            cost_per_call_nanos Int64,
            price_catalog_version String,
            priced UInt8,
            priced_at Int64,
            source_topic Nullable(String),
            source_partition Nullable(Int32),
            source_offset Nullable(Int64)
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(event_date)
        ORDER BY (org_id, event_date, id)",
            "CREATE TABLE IF NOT EXISTS policy_violations (
            id String,
            time Int64,
            event_date Date MATERIALIZED toDate(toDateTime(intDiv(time, 1000000))),
            schema_version UInt16,
            interaction_id Nullable(String),
            org_id String,
            team_id Nullable(String),
            user_id Nullable(String),
            project_id Nullable(String),
            key_id String,
            rule_id String,
            severity String,
            detector String,
            action String,
            summary String,
            evidence Nullable(String)
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(event_date)
        ORDER BY (org_id, event_date, id)",
            "CREATE TABLE IF NOT EXISTS quota_decisions (
            id String,
            time Int64,
            event_date Date MATERIALIZED toDate(toDateTime(intDiv(time, 1000000))),
            schema_version UInt16,
            subject_kind String,
            subject_id String,
            budget_id String,
            window_kind String,
            window_start Int64,
            window_end Nullable(Int64),
            budget_nanos Int64,
            spent_nanos Int64,
            remaining_nanos Int64,
            state String,
            hard UInt8,
            version UInt64,
            source_offsets Nested(topic String, partition Int32, offset Int64),
            reason Nullable(String)
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(event_date)
        ORDER BY (subject_kind, subject_id, event_date, id)",
            "CREATE TABLE IF NOT EXISTS governance_changes (
            id String,
            time Int64,
            event_date Date MATERIALIZED toDate(toDateTime(intDiv(time, 1000000))),
            schema_version UInt16,
            actor_kind String,
            actor_id String,
            target_kind String,
            target_id String,
            action String,
            value_json Nullable(String),
            reason Nullable(String)
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(event_date)
        ORDER BY (event_date, id)",
        ],
    },
    Migration {
        version: 3,
        name: "access_events",
        statements: &["CREATE TABLE IF NOT EXISTS access_events (
            id String,
            time Int64,
            event_date Date MATERIALIZED toDate(toDateTime(intDiv(time, 1000000))),
            schema_version UInt16,
            token_name String,
            role String,
            method String,
            path String,
            query Nullable(String),
            status UInt16,
            results Nullable(UInt64),
            duration_micros Int64,
            client_address Nullable(String)
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(event_date)
        ORDER BY (event_date, token_name, id)"],
    },
    Migration {
        version: 4,
        name: "preferred_upstream, upstream_health",
        statements: &[
            // ClickHouse 18 has no `ADD COLUMN IF NOT EXISTS`: `migrate` treats "already
            // exists" as done for these.
            "ALTER TABLE interactions ADD COLUMN preferred_upstream Nullable(String) AFTER upstream",
            "ALTER TABLE priced_interactions ADD COLUMN preferred_upstream Nullable(String) AFTER upstream",
            "CREATE TABLE IF NOT EXISTS upstream_health (
            id String,
            time Int64,
            event_date Date MATERIALIZED toDate(toDateTime(intDiv(time, 1000000))),
            schema_version UInt16,
            gateway_instance String,
            upstream String,
            gen_ai_provider_name String,
            transition String,
            consecutive_failures UInt32,
            cool_down_millis UInt64,
            reason Nullable(String)
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(event_date)
        ORDER BY (event_date, upstream, id)",
        ],
    },
];

const MIGRATIONS_TABLE: &str = "tollgate_schema_migrations";

/// Writes interactions to ClickHouse.
#[derive(Clone)]
pub struct ClickHouseSink {
    /// Without a default database, for `CREATE DATABASE`.
    server: Client,
    client: Client,
    database: String,
}

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSink").field("database", &self.database).finish_non_exhaustive()
    }
}

impl ClickHouseSink {
    /// Creates the client. Does not contact the server; call [`ClickHouseSink::migrate`].
    pub fn new(config: &ClickHouseConfig) -> Self {
        // Validation fetches column types with `RowBinaryWithNamesAndTypes`, which older
        // servers lack; the row types below are checked by the round-trip tests instead.
        let mut server = Client::default().with_url(&config.url).with_validation(false);
        if let Some(user) = &config.user {
            server = server.with_user(user);
        }
        if let Some(password) = &config.password {
            server = server.with_password(password);
        }
        let client = server.clone().with_database(&config.database);
        ClickHouseSink { server, client, database: config.database.clone() }
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Creates the database and applies every migration not yet applied.
    pub async fn migrate(&self) -> Result<(), SinkError> {
        self.server.query(&format!("CREATE DATABASE IF NOT EXISTS `{}`", self.database)).execute().await?;
        self.client
            .query(&format!(
                "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version UInt32, name String, applied_at DateTime)
                 ENGINE = ReplacingMergeTree() ORDER BY version"
            ))
            .execute()
            .await?;
        let applied: Vec<u32> =
            self.client.query(&format!("SELECT DISTINCT version FROM {MIGRATIONS_TABLE}")).fetch_all().await?;
        for migration in MIGRATIONS.iter().filter(|migration| !applied.contains(&migration.version)) {
            tracing::info!(version = migration.version, name = migration.name, "applying ClickHouse migration");
            for statement in migration.statements {
                match self.client.query(statement).execute().await {
                    Ok(()) => {}
                    Err(error)
                        if statement.contains(" ADD COLUMN ")
                            && error.to_string().contains("column with this name already exists") => {}
                    Err(error) => return Err(error.into()),
                }
            }
            self.client
                .query(&format!("INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, now())"))
                .bind(migration.version)
                .bind(migration.name)
                .execute()
                .await?;
        }
        Ok(())
    }

    /// Versions of every migration this build knows, ascending.
    pub fn known_migrations() -> Vec<u32> {
        MIGRATIONS.iter().map(|migration| migration.version).collect()
    }

    /// Versions of the migrations applied so far, ascending.
    pub async fn applied_migrations(&self) -> Result<Vec<u32>, SinkError> {
        Ok(self
            .client
            .query(&format!("SELECT DISTINCT version FROM {MIGRATIONS_TABLE} ORDER BY version"))
            .fetch_all()
            .await?)
    }

    /// Inserts `interactions` in one `INSERT` per table. Writing the same interaction again
    /// is harmless: readers see one row per id.
    pub async fn insert_interactions(&self, interactions: &[Interaction]) -> Result<(), SinkError> {
        if interactions.is_empty() {
            return Ok(());
        }
        let mut metering = self.client.insert::<InteractionRow>("interactions").await?;
        for interaction in interactions {
            metering.write(&InteractionRow::from_event(interaction)).await?;
        }
        metering.end().await?;
        let captured: Vec<ContentRow> = interactions.iter().filter_map(ContentRow::from_event).collect();
        if !captured.is_empty() {
            let mut content = self.client.insert::<ContentRow>("interaction_content").await?;
            for row in &captured {
                content.write(row).await?;
            }
            content.end().await?;
        }
        Ok(())
    }

    /// Inserts `records` into `table` (one of the tables of migration 2) in one `INSERT`
    /// of JSON rows: the columns of the record's stored layout, so the table holds what
    /// the Parquet archive holds. For priced interactions the captured content goes to
    /// `interaction_content` instead. Writing a record again is harmless: readers of
    /// `FINAL` see one row per id.
    pub async fn insert_records<R: StoredRecord>(&self, table: &str, records: &[R]) -> Result<(), SinkError> {
        self.insert_json_rows(table, R::to_json_rows(records)?).await
    }

    /// [`ClickHouseSink::insert_records`] for rows already made with
    /// [`StoredRecord::to_json_rows`].
    pub async fn insert_json_rows(&self, table: &str, rows: Vec<JsonRow>) -> Result<(), SinkError> {
        self.insert_prepared(&PreparedRows::new(table, rows)?).await
    }

    /// Inserts rows made ready by [`PreparedRows::new`]; may be called again with the
    /// same rows after a failure.
    pub async fn insert_prepared(&self, prepared: &PreparedRows) -> Result<(), SinkError> {
        if prepared.rows == 0 {
            return Ok(());
        }
        let sql = format!("INSERT INTO {} FORMAT JSONEachRow", prepared.table);
        let mut insert = self.client.insert_formatted_with(sql);
        insert.send(prepared.body.clone()).await?;
        insert.end().await?;
        if !prepared.content.is_empty() {
            let mut insert = self.client.insert::<ContentRow>("interaction_content").await?;
            for row in &prepared.content {
                insert.write(row).await?;
            }
            insert.end().await?;
        }
        Ok(())
    }

    /// Runs `sql` and returns its rows as JSON objects (`JSONEachRow`, 64-bit integers
    /// unquoted). For checks and reports whose shape is not a fixed row type.
    pub async fn query_json(&self, sql: &str) -> Result<Vec<serde_json::Value>, SinkError> {
        let mut cursor = self
            .client
            .query(sql)
            .with_setting("output_format_json_quote_64bit_integers", "0")
            .fetch_bytes("JSONEachRow")?;
        let bytes = cursor.collect().await?;
        bytes
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).map_err(|error| SinkError::InvalidRow(error.to_string())))
            .collect()
    }

    /// Reads interactions back by id, content included, deduplicated.
    pub async fn fetch_interactions(&self, ids: &[Uuid]) -> Result<Vec<Interaction>, SinkError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows: Vec<InteractionRow> = self
            .client
            .query("SELECT ?fields FROM interactions FINAL WHERE has(?, id) ORDER BY time, id")
            .bind(&ids)
            .fetch_all()
            .await?;
        let contents: Vec<ContentRow> = self
            .client
            .query("SELECT ?fields FROM interaction_content FINAL WHERE has(?, id)")
            .bind(&ids)
            .fetch_all()
            .await?;
        let mut contents: std::collections::HashMap<String, ContentRow> =
            contents.into_iter().map(|row| (row.id.clone(), row)).collect();
        rows.into_iter()
            .map(|row| {
                let content = contents.remove(&row.id);
                row.into_event(content).map_err(SinkError::InvalidRow)
            })
            .collect()
    }
}

/// Rows for one table, encoded once: the `JSONEachRow` body, and the captured content
/// taken out of it for `interaction_content`.
#[derive(Debug, Clone)]
pub struct PreparedRows {
    table: String,
    body: bytes::Bytes,
    content: Vec<ContentRow>,
    rows: usize,
}

impl PreparedRows {
    /// `rows` for `table` (a table of migration 2).
    pub fn new(table: &str, rows: Vec<JsonRow>) -> Result<Self, SinkError> {
        let count = rows.len();
        let mut body = Vec::with_capacity(count * 512);
        let mut content = Vec::new();
        for mut row in rows {
            if let Some(row) = content_row(&mut row) {
                content.push(row);
            }
            nest_lists(&mut row);
            serde_json::to_writer(&mut body, &row).map_err(|error| SinkError::InvalidRow(error.to_string()))?;
            body.push(b'\n');
        }
        Ok(PreparedRows { table: table.to_owned(), body: bytes::Bytes::from(body), content, rows: count })
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// Takes the captured-content columns out of a flat priced-interaction row, as a row of
/// `interaction_content` if anything was captured.
fn content_row(row: &mut JsonRow) -> Option<ContentRow> {
    let request = row.remove("captured_request")?;
    let response = row.remove("captured_response");
    let redacted = row.remove("content_redacted");
    let text = |value: Option<&serde_json::Value>| value.and_then(serde_json::Value::as_str).map(str::to_owned);
    Some(ContentRow {
        id: text(row.get("id"))?,
        time: row.get("time").and_then(serde_json::Value::as_i64)?,
        org_id: text(row.get("org_id"))?,
        captured_request: request.as_str()?.to_owned(),
        captured_response: text(response.as_ref()),
        content_redacted: u8::from(redacted.and_then(|value| value.as_bool()).unwrap_or(false)),
    })
}

/// Turns each column holding a list of objects into one array column per field
/// (`source_offsets` into `source_offsets.topic`, `source_offsets.partition`, ...): the
/// JSON shape of a ClickHouse `Nested` column.
fn nest_lists(row: &mut JsonRow) {
    let lists: Vec<String> = row
        .iter()
        .filter(|(_, value)| value.as_array().is_some_and(|items| items.iter().all(serde_json::Value::is_object)))
        .map(|(name, _)| name.clone())
        .collect();
    for name in lists {
        let Some(serde_json::Value::Array(items)) = row.remove(&name) else { continue };
        let mut columns: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
        for item in items {
            if let serde_json::Value::Object(fields) = item {
                for (field, value) in fields {
                    columns.entry(format!("{name}.{field}")).or_default().push(value);
                }
            }
        }
        for (column, values) in columns {
            row.insert(column, serde_json::Value::Array(values));
        }
    }
}

/// A row of `interactions`: every field but the captured content.
#[derive(Debug, Row, Serialize, Deserialize)]
struct InteractionRow {
    id: String,
    time: i64,
    schema_version: u16,
    gateway_instance: String,
    org_id: String,
    team_id: Option<String>,
    user_id: Option<String>,
    project_id: Option<String>,
    key_id: String,
    kind: String,
    gen_ai_operation_name: Option<String>,
    gen_ai_provider_name: Option<String>,
    upstream: Option<String>,
    preferred_upstream: Option<String>,
    gen_ai_request_model: Option<String>,
    routed_model: Option<String>,
    gen_ai_response_model: Option<String>,
    http_route: Option<String>,
    streaming: Option<u8>,
    gen_ai_request_max_tokens: Option<u64>,
    mcp_server: Option<String>,
    mcp_method_name: Option<String>,
    gen_ai_tool_name: Option<String>,
    mcp_session_id: Option<String>,
    request_sha256: Option<String>,
    response_sha256: Option<String>,
    request_bytes: u64,
    response_bytes: u64,
    outcome: String,
    http_response_status_code: Option<u16>,
    error_type: Option<String>,
    error_message: Option<String>,
    attempts: u32,
    fallback_used: u8,
    gen_ai_usage_input_tokens: u64,
    gen_ai_usage_output_tokens: u64,
    gen_ai_usage_cache_read_input_tokens: u64,
    gen_ai_usage_cache_creation_input_tokens: u64,
    gen_ai_usage_reasoning_output_tokens: u64,
    usage_estimated: u8,
    duration_us: u64,
    time_to_first_token_us: Option<u64>,
    gateway_overhead_us: u64,
    trace_id: Option<String>,
    span_id: Option<String>,
    trace_flags: Option<u8>,
    tracestate: Option<String>,
}

/// A row of `interaction_content`: the captured text of one interaction.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct ContentRow {
    id: String,
    time: i64,
    org_id: String,
    captured_request: String,
    captured_response: Option<String>,
    content_redacted: u8,
}

impl ContentRow {
    fn from_event(event: &Interaction) -> Option<Self> {
        let captured = event.content.captured.as_ref()?;
        Some(ContentRow {
            id: event.id.to_string(),
            time: event.time_unix_micros,
            org_id: event.principal.org_id.clone(),
            captured_request: captured.request.clone(),
            captured_response: captured.response.clone(),
            content_redacted: u8::from(captured.redacted),
        })
    }
}

impl InteractionRow {
    fn from_event(event: &Interaction) -> Self {
        let (model, tool) = match &event.call {
            Call::ModelCall(model) => (Some(model), None),
            Call::ToolCall(tool) => (None, Some(tool)),
        };
        let trace = event.trace.as_ref();
        InteractionRow {
            id: event.id.to_string(),
            time: event.time_unix_micros,
            schema_version: event.schema_version,
            gateway_instance: event.gateway_instance.clone(),
            org_id: event.principal.org_id.clone(),
            team_id: event.principal.team_id.clone(),
            user_id: event.principal.user_id.clone(),
            project_id: event.principal.project_id.clone(),
            key_id: event.principal.key_id.clone(),
            kind: event.kind().as_str().to_owned(),
            gen_ai_operation_name: model.map(|model| model.operation.as_str().to_owned()),
            gen_ai_provider_name: model.and_then(|model| model.provider.clone()),
            upstream: model.and_then(|model| model.upstream.clone()),
            preferred_upstream: model.and_then(|model| model.preferred_upstream.clone()),
            gen_ai_request_model: model.map(|model| model.request_model.clone()),
            routed_model: model.and_then(|model| model.routed_model.clone()),
            gen_ai_response_model: model.and_then(|model| model.response_model.clone()),
            http_route: model.map(|model| model.endpoint.clone()),
            streaming: model.map(|model| u8::from(model.streaming)),
            gen_ai_request_max_tokens: model.and_then(|model| model.request_max_tokens),
            mcp_server: tool.map(|tool| tool.server.clone()),
            mcp_method_name: tool.map(|tool| tool.method.clone()),
            gen_ai_tool_name: tool.and_then(|tool| tool.tool.clone()),
            mcp_session_id: tool.and_then(|tool| tool.session_id.clone()),
            request_sha256: event.content.request_sha256.clone(),
            response_sha256: event.content.response_sha256.clone(),
            request_bytes: event.content.request_bytes,
            response_bytes: event.content.response_bytes,
            outcome: event.outcome.status.as_str().to_owned(),
            http_response_status_code: event.outcome.http_status,
            error_type: event.outcome.error_type.clone(),
            error_message: event.outcome.error_message.clone(),
            attempts: event.outcome.attempts,
            fallback_used: u8::from(event.outcome.fallback_used),
            gen_ai_usage_input_tokens: event.usage.input_tokens,
            gen_ai_usage_output_tokens: event.usage.output_tokens,
            gen_ai_usage_cache_read_input_tokens: event.usage.cache_read_input_tokens,
            gen_ai_usage_cache_creation_input_tokens: event.usage.cache_creation_input_tokens,
            gen_ai_usage_reasoning_output_tokens: event.usage.reasoning_output_tokens,
            usage_estimated: u8::from(event.usage.estimated),
            duration_us: event.timing.duration_micros,
            time_to_first_token_us: event.timing.time_to_first_token_micros,
            gateway_overhead_us: event.timing.gateway_overhead_micros,
            trace_id: trace.map(|trace| trace.trace_id.clone()),
            span_id: trace.map(|trace| trace.span_id.clone()),
            trace_flags: trace.map(|trace| trace.trace_flags),
            tracestate: trace.and_then(|trace| trace.tracestate.clone()),
        }
    }

    fn into_event(self, content: Option<ContentRow>) -> Result<Interaction, String> {
        let kind = InteractionKind::parse(&self.kind).ok_or_else(|| format!("unknown kind `{}`", self.kind))?;
        let call = match kind {
            InteractionKind::ModelCall => {
                let operation = self.gen_ai_operation_name.as_deref().ok_or("model call without operation")?;
                Call::ModelCall(ModelCall {
                    operation: GenAiOperation::parse(operation)
                        .ok_or_else(|| format!("unknown operation `{operation}`"))?,
                    provider: self.gen_ai_provider_name,
                    upstream: self.upstream,
                    preferred_upstream: self.preferred_upstream,
                    request_model: self.gen_ai_request_model.ok_or("model call without request model")?,
                    routed_model: self.routed_model,
                    response_model: self.gen_ai_response_model,
                    endpoint: self.http_route.ok_or("model call without http_route")?,
                    streaming: self.streaming.ok_or("model call without streaming flag")? != 0,
                    request_max_tokens: self.gen_ai_request_max_tokens,
                })
            }
            InteractionKind::ToolCall => Call::ToolCall(ToolCall {
                server: self.mcp_server.ok_or("tool call without mcp_server")?,
                method: self.mcp_method_name.ok_or("tool call without mcp_method_name")?,
                tool: self.gen_ai_tool_name,
                session_id: self.mcp_session_id,
            }),
        };
        let trace = match (self.trace_id, self.span_id, self.trace_flags) {
            (Some(trace_id), Some(span_id), Some(trace_flags)) => {
                Some(TraceContext { trace_id, span_id, trace_flags, tracestate: self.tracestate })
            }
            _ => None,
        };
        Ok(Interaction {
            schema_version: self.schema_version,
            id: Uuid::parse_str(&self.id).map_err(|error| format!("id: {error}"))?,
            time_unix_micros: self.time,
            gateway_instance: self.gateway_instance,
            principal: Principal {
                org_id: self.org_id,
                team_id: self.team_id,
                user_id: self.user_id,
                project_id: self.project_id,
                key_id: self.key_id,
            },
            call,
            content: ContentRecord {
                request_sha256: self.request_sha256,
                response_sha256: self.response_sha256,
                request_bytes: self.request_bytes,
                response_bytes: self.response_bytes,
                captured: content.map(|content| CapturedContent {
                    request: content.captured_request,
                    response: content.captured_response,
                    redacted: content.content_redacted != 0,
                }),
            },
            outcome: Outcome {
                status: OutcomeStatus::parse(&self.outcome)
                    .ok_or_else(|| format!("unknown outcome `{}`", self.outcome))?,
                http_status: self.http_response_status_code,
                error_type: self.error_type,
                error_message: self.error_message,
                attempts: self.attempts,
                fallback_used: self.fallback_used != 0,
            },
            usage: Usage {
                input_tokens: self.gen_ai_usage_input_tokens,
                output_tokens: self.gen_ai_usage_output_tokens,
                cache_read_input_tokens: self.gen_ai_usage_cache_read_input_tokens,
                cache_creation_input_tokens: self.gen_ai_usage_cache_creation_input_tokens,
                reasoning_output_tokens: self.gen_ai_usage_reasoning_output_tokens,
                estimated: self.usage_estimated != 0,
            },
            timing: Timing {
                duration_micros: self.duration_us,
                time_to_first_token_micros: self.time_to_first_token_us,
                gateway_overhead_micros: self.gateway_overhead_us,
            },
            trace,
        })
    }
}
