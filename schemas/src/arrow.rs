//! Arrow schemas of the stored records and their conversion to and from `RecordBatch`.
//!
//! Stored records are flat: one column per leaf field, named after the OpenTelemetry
//! attribute where one exists (`.` replaced by `_`), so Parquet files read naturally in
//! DataFusion, DuckDB and pyarrow, and SQL needs no quoting. Times are
//! `Timestamp(Microsecond, "UTC")`; money is `Int64` nano-dollars in `*_nanos` columns.
//!
//! Each record type implements [`StoredRecord`]; the Parquet sink and the query layer use
//! nothing else to move between events and batches.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    AccessEvent, Actor, ActorKind, BreakerTransition, BudgetWindow, Call, CapturedContent, ChangeAction, ContentRecord,
    Cost, Detector, GenAiOperation, GovernanceChange, GovernanceTarget, Interaction, InteractionKind, ModelCall,
    Nanodollars, Outcome, OutcomeStatus, PolicyViolation, PricedInteraction, Principal, QuotaDecision, QuotaState,
    Severity, SourceOffset, Subject, SubjectKind, TargetKind, Timing, ToolCall, TraceContext, UpstreamHealth, Usage,
    ViolationAction, WindowKind,
};

/// Why a batch could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordBatchError {
    #[error("arrow conversion failed: {0}")]
    Arrow(#[from] serde_arrow::Error),
    #[error("record batch does not match the {record} schema: {message}")]
    Schema { record: &'static str, message: String },
    #[error("row {row} is not a valid {record}: {message}")]
    InvalidRow { record: &'static str, row: usize, message: String },
}

/// A record type with a fixed Arrow layout.
pub trait StoredRecord: Sized {
    /// Name used in errors, for example `interaction`.
    const RECORD: &'static str;

    /// The Arrow schema of this record's batches.
    fn arrow_schema() -> SchemaRef;

    /// One batch holding `records`, in order.
    fn to_record_batch(records: &[Self]) -> Result<RecordBatch, RecordBatchError>;

    /// The records of `batch`, in order. The batch may carry its columns in any order and
    /// may carry extra columns; the ones of [`StoredRecord::arrow_schema`] must be present.
    fn from_record_batch(batch: &RecordBatch) -> Result<Vec<Self>, RecordBatchError>;

    /// The records as flat JSON rows, in order: one object per record whose keys are the
    /// columns of [`StoredRecord::arrow_schema`] and whose values are the same values
    /// (times as integer microseconds, booleans as booleans, lists as arrays). For stores
    /// that take JSON rows, such as ClickHouse's `JSONEachRow`, so that they hold exactly
    /// what the Parquet files hold.
    fn to_json_rows(records: &[Self]) -> Result<Vec<JsonRow>, RecordBatchError>;
}

/// One flat row as a JSON object, column name to value.
pub type JsonRow = serde_json::Map<String, serde_json::Value>;

fn json_row<Row: Serialize>(row: &Row, record: &'static str) -> Result<JsonRow, RecordBatchError> {
    match serde_json::to_value(row) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(RecordBatchError::Schema { record, message: "a row is not a JSON object".to_owned() }),
        Err(error) => Err(RecordBatchError::Schema { record, message: error.to_string() }),
    }
}

fn timestamp_field(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), nullable)
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// Columns of `batch` named in `fields`, in that order, as a new batch.
/// The columns `fields` names, in that order. A nullable column that a file written
/// before it existed lacks is left out: its rows read it as absent.
fn project(batch: &RecordBatch, fields: &[FieldRef], record: &'static str) -> Result<RecordBatch, RecordBatchError> {
    let schema = batch.schema();
    let mut indices = Vec::with_capacity(fields.len());
    for field in fields {
        match schema.index_of(field.name()) {
            Ok(index) => indices.push(index),
            Err(_) if field.is_nullable() => {}
            Err(_) => {
                return Err(RecordBatchError::Schema {
                    record,
                    message: format!("column `{}` is missing", field.name()),
                });
            }
        }
    }
    batch.project(&indices).map_err(|error| RecordBatchError::Schema { record, message: error.to_string() })
}

fn invalid(record: &'static str, row: usize) -> impl Fn(String) -> RecordBatchError {
    move |message| RecordBatchError::InvalidRow { record, row, message }
}

fn parse_uuid(text: &str, column: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text).map_err(|error| format!("{column}: {error}"))
}

fn parse_enum<T>(text: &str, column: &str, parse: fn(&str) -> Option<T>) -> Result<T, String> {
    parse(text).ok_or_else(|| format!("{column}: unknown value `{text}`"))
}

// ---------------------------------------------------------------------------------------
// Interaction

fn interaction_fields() -> Vec<Field> {
    vec![
        utf8("id", false),
        timestamp_field("time", false),
        Field::new("schema_version", DataType::UInt16, false),
        utf8("gateway_instance", false),
        utf8("org_id", false),
        utf8("team_id", true),
        utf8("user_id", true),
        utf8("project_id", true),
        utf8("key_id", false),
        utf8("kind", false),
        utf8("gen_ai_operation_name", true),
        utf8("gen_ai_provider_name", true),
        utf8("upstream", true),
        utf8("preferred_upstream", true),
        utf8("gen_ai_request_model", true),
        utf8("routed_model", true),
        utf8("gen_ai_response_model", true),
        utf8("http_route", true),
        Field::new("streaming", DataType::Boolean, true),
        Field::new("gen_ai_request_max_tokens", DataType::UInt64, true),
        utf8("mcp_server", true),
        utf8("mcp_method_name", true),
        utf8("gen_ai_tool_name", true),
        utf8("mcp_session_id", true),
        utf8("request_sha256", true),
        utf8("response_sha256", true),
        Field::new("request_bytes", DataType::UInt64, false),
        Field::new("response_bytes", DataType::UInt64, false),
        utf8("captured_request", true),
        utf8("captured_response", true),
        Field::new("content_redacted", DataType::Boolean, false),
        utf8("outcome", false),
        Field::new("http_response_status_code", DataType::UInt16, true),
        utf8("error_type", true),
        utf8("error_message", true),
        Field::new("attempts", DataType::UInt32, false),
        Field::new("fallback_used", DataType::Boolean, false),
        Field::new("gen_ai_usage_input_tokens", DataType::UInt64, false),
        Field::new("gen_ai_usage_output_tokens", DataType::UInt64, false),
        Field::new("gen_ai_usage_cache_read_input_tokens", DataType::UInt64, false),
        Field::new("gen_ai_usage_cache_creation_input_tokens", DataType::UInt64, false),
        Field::new("gen_ai_usage_reasoning_output_tokens", DataType::UInt64, false),
        Field::new("usage_estimated", DataType::Boolean, false),
        Field::new("duration_us", DataType::UInt64, false),
        Field::new("time_to_first_token_us", DataType::UInt64, true),
        Field::new("gateway_overhead_us", DataType::UInt64, false),
        utf8("trace_id", true),
        utf8("span_id", true),
        Field::new("trace_flags", DataType::UInt8, true),
        utf8("tracestate", true),
    ]
}

/// The flat row of an [`Interaction`]; field order and names match [`interaction_fields`].
#[derive(Debug, Serialize, Deserialize)]
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
    streaming: Option<bool>,
    gen_ai_request_max_tokens: Option<u64>,
    mcp_server: Option<String>,
    mcp_method_name: Option<String>,
    gen_ai_tool_name: Option<String>,
    mcp_session_id: Option<String>,
    request_sha256: Option<String>,
    response_sha256: Option<String>,
    request_bytes: u64,
    response_bytes: u64,
    captured_request: Option<String>,
    captured_response: Option<String>,
    content_redacted: bool,
    outcome: String,
    http_response_status_code: Option<u16>,
    error_type: Option<String>,
    error_message: Option<String>,
    attempts: u32,
    fallback_used: bool,
    gen_ai_usage_input_tokens: u64,
    gen_ai_usage_output_tokens: u64,
    gen_ai_usage_cache_read_input_tokens: u64,
    gen_ai_usage_cache_creation_input_tokens: u64,
    gen_ai_usage_reasoning_output_tokens: u64,
    usage_estimated: bool,
    duration_us: u64,
    time_to_first_token_us: Option<u64>,
    gateway_overhead_us: u64,
    trace_id: Option<String>,
    span_id: Option<String>,
    trace_flags: Option<u8>,
    tracestate: Option<String>,
}

impl InteractionRow {
    fn from_event(event: &Interaction) -> Self {
        let (model, tool) = match &event.call {
            Call::ModelCall(model) => (Some(model), None),
            Call::ToolCall(tool) => (None, Some(tool)),
        };
        let captured = event.content.captured.as_ref();
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
            streaming: model.map(|model| model.streaming),
            gen_ai_request_max_tokens: model.and_then(|model| model.request_max_tokens),
            mcp_server: tool.map(|tool| tool.server.clone()),
            mcp_method_name: tool.map(|tool| tool.method.clone()),
            gen_ai_tool_name: tool.and_then(|tool| tool.tool.clone()),
            mcp_session_id: tool.and_then(|tool| tool.session_id.clone()),
            request_sha256: event.content.request_sha256.clone(),
            response_sha256: event.content.response_sha256.clone(),
            request_bytes: event.content.request_bytes,
            response_bytes: event.content.response_bytes,
            captured_request: captured.map(|captured| captured.request.clone()),
            captured_response: captured.and_then(|captured| captured.response.clone()),
            content_redacted: captured.is_some_and(|captured| captured.redacted),
            outcome: event.outcome.status.as_str().to_owned(),
            http_response_status_code: event.outcome.http_status,
            error_type: event.outcome.error_type.clone(),
            error_message: event.outcome.error_message.clone(),
            attempts: event.outcome.attempts,
            fallback_used: event.outcome.fallback_used,
            gen_ai_usage_input_tokens: event.usage.input_tokens,
            gen_ai_usage_output_tokens: event.usage.output_tokens,
            gen_ai_usage_cache_read_input_tokens: event.usage.cache_read_input_tokens,
            gen_ai_usage_cache_creation_input_tokens: event.usage.cache_creation_input_tokens,
            gen_ai_usage_reasoning_output_tokens: event.usage.reasoning_output_tokens,
            usage_estimated: event.usage.estimated,
            duration_us: event.timing.duration_micros,
            time_to_first_token_us: event.timing.time_to_first_token_micros,
            gateway_overhead_us: event.timing.gateway_overhead_micros,
            trace_id: trace.map(|trace| trace.trace_id.clone()),
            span_id: trace.map(|trace| trace.span_id.clone()),
            trace_flags: trace.map(|trace| trace.trace_flags),
            tracestate: trace.and_then(|trace| trace.tracestate.clone()),
        }
    }

    fn into_event(self) -> Result<Interaction, String> {
        let kind = parse_enum(&self.kind, "kind", InteractionKind::parse)?;
        let call = match kind {
            InteractionKind::ModelCall => Call::ModelCall(ModelCall {
                operation: parse_enum(
                    self.gen_ai_operation_name.as_deref().ok_or("gen_ai_operation_name is null for a model call")?,
                    "gen_ai_operation_name",
                    GenAiOperation::parse,
                )?,
                provider: self.gen_ai_provider_name,
                upstream: self.upstream,
                preferred_upstream: self.preferred_upstream,
                request_model: self.gen_ai_request_model.ok_or("gen_ai_request_model is null for a model call")?,
                routed_model: self.routed_model,
                response_model: self.gen_ai_response_model,
                endpoint: self.http_route.ok_or("http_route is null for a model call")?,
                streaming: self.streaming.ok_or("streaming is null for a model call")?,
                request_max_tokens: self.gen_ai_request_max_tokens,
            }),
            InteractionKind::ToolCall => Call::ToolCall(ToolCall {
                server: self.mcp_server.ok_or("mcp_server is null for a tool call")?,
                method: self.mcp_method_name.ok_or("mcp_method_name is null for a tool call")?,
                tool: self.gen_ai_tool_name,
                session_id: self.mcp_session_id,
            }),
        };
        let captured = self.captured_request.map(|request| CapturedContent {
            request,
            response: self.captured_response,
            redacted: self.content_redacted,
        });
        let trace = match (self.trace_id, self.span_id, self.trace_flags) {
            (Some(trace_id), Some(span_id), Some(trace_flags)) => {
                Some(TraceContext { trace_id, span_id, trace_flags, tracestate: self.tracestate })
            }
            (None, None, None) => None,
            _ => return Err("trace_id, span_id and trace_flags must be all set or all null".to_owned()),
        };
        Ok(Interaction {
            schema_version: self.schema_version,
            id: parse_uuid(&self.id, "id")?,
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
                captured,
            },
            outcome: Outcome {
                status: parse_enum(&self.outcome, "outcome", OutcomeStatus::parse)?,
                http_status: self.http_response_status_code,
                error_type: self.error_type,
                error_message: self.error_message,
                attempts: self.attempts,
                fallback_used: self.fallback_used,
            },
            usage: Usage {
                input_tokens: self.gen_ai_usage_input_tokens,
                output_tokens: self.gen_ai_usage_output_tokens,
                cache_read_input_tokens: self.gen_ai_usage_cache_read_input_tokens,
                cache_creation_input_tokens: self.gen_ai_usage_cache_creation_input_tokens,
                reasoning_output_tokens: self.gen_ai_usage_reasoning_output_tokens,
                estimated: self.usage_estimated,
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

/// Shared plumbing: rows of type `Row` <-> batch with `fields`.
/// Records of `R` from flat rows in the shape ClickHouse returns them (`JSONEachRow` of
/// a table made after [`StoredRecord::arrow_schema`]): booleans as `0`/`1`, a list of
/// objects as one array per field named `column.field` (a `Nested` column), and columns
/// the table keeps elsewhere (captured content) absent, read as null or false.
pub fn from_json_rows<R: StoredRecord>(rows: Vec<JsonRow>) -> Result<Vec<R>, RecordBatchError> {
    let schema = R::arrow_schema();
    let mut normalized = Vec::with_capacity(rows.len());
    for mut row in rows {
        for field in schema.fields() {
            let name = field.name();
            match field.data_type() {
                DataType::Boolean => {
                    let value = match row.get(name) {
                        Some(serde_json::Value::Number(number)) => serde_json::Value::Bool(number.as_u64() != Some(0)),
                        Some(value @ serde_json::Value::Bool(_)) => value.clone(),
                        _ if field.is_nullable() => serde_json::Value::Null,
                        _ => serde_json::Value::Bool(false),
                    };
                    row.insert(name.clone(), value);
                }
                DataType::List(item) => {
                    if let DataType::Struct(members) = item.data_type() {
                        let mut items: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
                        for member in members {
                            let key = format!("{name}.{}", member.name());
                            if let Some(serde_json::Value::Array(values)) = row.remove(&key) {
                                items.resize_with(items.len().max(values.len()), Default::default);
                                for (item, value) in items.iter_mut().zip(values) {
                                    item.insert(member.name().clone(), value);
                                }
                            }
                        }
                        if !row.contains_key(name) {
                            let items = items.into_iter().map(serde_json::Value::Object).collect();
                            row.insert(name.clone(), serde_json::Value::Array(items));
                        }
                    }
                }
                _ => {
                    if !row.contains_key(name) {
                        row.insert(name.clone(), serde_json::Value::Null);
                    }
                }
            }
        }
        // Columns the layout does not have (a table may carry more) are not read.
        row.retain(|name, _| schema.field_with_name(name).is_ok());
        normalized.push(row);
    }
    let signed: Vec<Signed<'_>> = normalized.iter().map(Signed::Object).collect();
    let batch = rows_to_batch(schema.fields(), &signed)?;
    R::from_record_batch(&batch)
}

/// A JSON value that serializes its whole numbers as `i64` where they fit (serde_json
/// holds every non-negative number as `u64`, which Arrow's signed and timestamp builders
/// refuse).
enum Signed<'a> {
    Object(&'a serde_json::Map<String, serde_json::Value>),
    Value(&'a serde_json::Value),
}

impl Serialize for Signed<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let object = |map: &serde_json::Map<String, serde_json::Value>, serializer: S| {
            let mut out = serializer.serialize_map(Some(map.len()))?;
            for (key, value) in map {
                out.serialize_entry(key, &Signed::Value(value))?;
            }
            out.end()
        };
        match self {
            Signed::Object(map) => object(map, serializer),
            Signed::Value(serde_json::Value::Object(map)) => object(map, serializer),
            Signed::Value(serde_json::Value::Array(items)) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Signed::Value(item))?;
                }
                out.end()
            }
            Signed::Value(serde_json::Value::Number(number)) => match (number.as_i64(), number.as_u64()) {
                (Some(signed), _) => serializer.serialize_i64(signed),
                (None, Some(unsigned)) => serializer.serialize_u64(unsigned),
                _ => serializer.serialize_f64(number.as_f64().unwrap_or(f64::NAN)),
            },
            Signed::Value(value) => value.serialize(serializer),
        }
    }
}

fn rows_to_batch<Row: Serialize>(fields: &[FieldRef], rows: &[Row]) -> Result<RecordBatch, RecordBatchError> {
    Ok(serde_arrow::to_record_batch(fields, &rows)?)
}

fn batch_to_rows<Row: for<'de> Deserialize<'de>>(
    batch: &RecordBatch,
    fields: &[FieldRef],
    record: &'static str,
) -> Result<Vec<Row>, RecordBatchError> {
    let projected = project(batch, fields, record)?;
    Ok(serde_arrow::from_record_batch(&projected)?)
}

fn field_refs(fields: Vec<Field>) -> Vec<FieldRef> {
    fields.into_iter().map(Arc::new).collect()
}

impl StoredRecord for Interaction {
    const RECORD: &'static str = "interaction";

    fn arrow_schema() -> SchemaRef {
        Arc::new(Schema::new(interaction_fields()))
    }

    fn to_record_batch(records: &[Self]) -> Result<RecordBatch, RecordBatchError> {
        let rows: Vec<InteractionRow> = records.iter().map(InteractionRow::from_event).collect();
        rows_to_batch(&field_refs(interaction_fields()), &rows)
    }

    fn to_json_rows(records: &[Self]) -> Result<Vec<JsonRow>, RecordBatchError> {
        records.iter().map(|record| json_row(&InteractionRow::from_event(record), Self::RECORD)).collect()
    }

    fn from_record_batch(batch: &RecordBatch) -> Result<Vec<Self>, RecordBatchError> {
        let rows: Vec<InteractionRow> = batch_to_rows(batch, &field_refs(interaction_fields()), Self::RECORD)?;
        rows.into_iter()
            .enumerate()
            .map(|(row, values)| values.into_event().map_err(invalid(Self::RECORD, row)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// PricedInteraction: the interaction columns followed by the cost columns.

fn cost_fields() -> Vec<Field> {
    vec![
        Field::new("cost_total_nanos", DataType::Int64, false),
        Field::new("cost_input_nanos", DataType::Int64, false),
        Field::new("cost_output_nanos", DataType::Int64, false),
        Field::new("cost_cache_read_input_nanos", DataType::Int64, false),
        Field::new("cost_cache_creation_input_nanos", DataType::Int64, false),
        Field::new("cost_reasoning_output_nanos", DataType::Int64, false),
        Field::new("cost_per_call_nanos", DataType::Int64, false),
        utf8("price_catalog_version", false),
        Field::new("priced", DataType::Boolean, false),
        timestamp_field("priced_at", false),
        utf8("source_topic", true),
        Field::new("source_partition", DataType::Int32, true),
        Field::new("source_offset", DataType::Int64, true),
    ]
}

#[derive(Debug, Serialize, Deserialize)]
struct CostRow {
    cost_total_nanos: i64,
    cost_input_nanos: i64,
    cost_output_nanos: i64,
    cost_cache_read_input_nanos: i64,
    cost_cache_creation_input_nanos: i64,
    cost_reasoning_output_nanos: i64,
    cost_per_call_nanos: i64,
    price_catalog_version: String,
    priced: bool,
    priced_at: i64,
    source_topic: Option<String>,
    source_partition: Option<i32>,
    source_offset: Option<i64>,
}

impl CostRow {
    fn from_event(record: &PricedInteraction) -> Self {
        CostRow {
            cost_total_nanos: record.cost.total.0,
            cost_input_nanos: record.cost.input.0,
            cost_output_nanos: record.cost.output.0,
            cost_cache_read_input_nanos: record.cost.cache_read_input.0,
            cost_cache_creation_input_nanos: record.cost.cache_creation_input.0,
            cost_reasoning_output_nanos: record.cost.reasoning_output.0,
            cost_per_call_nanos: record.cost.per_call.0,
            price_catalog_version: record.price_catalog_version.clone(),
            priced: record.priced,
            priced_at: record.priced_at_unix_micros,
            source_topic: record.source.as_ref().map(|source| source.topic.clone()),
            source_partition: record.source.as_ref().map(|source| source.partition),
            source_offset: record.source.as_ref().map(|source| source.offset),
        }
    }
}

impl StoredRecord for PricedInteraction {
    const RECORD: &'static str = "priced_interaction";

    fn arrow_schema() -> SchemaRef {
        let mut fields = interaction_fields();
        fields.extend(cost_fields());
        Arc::new(Schema::new(fields))
    }

    fn to_record_batch(records: &[Self]) -> Result<RecordBatch, RecordBatchError> {
        let interactions: Vec<InteractionRow> =
            records.iter().map(|record| InteractionRow::from_event(&record.interaction)).collect();
        let costs: Vec<CostRow> = records.iter().map(CostRow::from_event).collect();
        let interaction_batch = rows_to_batch(&field_refs(interaction_fields()), &interactions)?;
        let cost_batch = rows_to_batch(&field_refs(cost_fields()), &costs)?;
        let mut columns = interaction_batch.columns().to_vec();
        columns.extend(cost_batch.columns().iter().cloned());
        RecordBatch::try_new(Self::arrow_schema(), columns)
            .map_err(|error| RecordBatchError::Schema { record: Self::RECORD, message: error.to_string() })
    }

    fn to_json_rows(records: &[Self]) -> Result<Vec<JsonRow>, RecordBatchError> {
        records
            .iter()
            .map(|record| {
                let mut row = json_row(&InteractionRow::from_event(&record.interaction), Self::RECORD)?;
                row.extend(json_row(&CostRow::from_event(record), Self::RECORD)?);
                Ok(row)
            })
            .collect()
    }

    fn from_record_batch(batch: &RecordBatch) -> Result<Vec<Self>, RecordBatchError> {
        let interactions = Interaction::from_record_batch(batch)?;
        let costs: Vec<CostRow> = batch_to_rows(batch, &field_refs(cost_fields()), Self::RECORD)?;
        Ok(interactions
            .into_iter()
            .zip(costs)
            .map(|(interaction, cost)| PricedInteraction {
                schema_version: interaction.schema_version,
                interaction,
                cost: Cost {
                    total: Nanodollars(cost.cost_total_nanos),
                    input: Nanodollars(cost.cost_input_nanos),
                    output: Nanodollars(cost.cost_output_nanos),
                    cache_read_input: Nanodollars(cost.cost_cache_read_input_nanos),
                    cache_creation_input: Nanodollars(cost.cost_cache_creation_input_nanos),
                    reasoning_output: Nanodollars(cost.cost_reasoning_output_nanos),
                    per_call: Nanodollars(cost.cost_per_call_nanos),
                },
                price_catalog_version: cost.price_catalog_version,
                priced: cost.priced,
                priced_at_unix_micros: cost.priced_at,
                source: match (cost.source_topic, cost.source_partition, cost.source_offset) {
                    (Some(topic), Some(partition), Some(offset)) => Some(SourceOffset { topic, partition, offset }),
                    _ => None,
                },
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------
// QuotaDecision

fn quota_decision_fields() -> Vec<Field> {
    let offset_fields = Fields::from(vec![
        utf8("topic", false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
    ]);
    vec![
        utf8("id", false),
        timestamp_field("time", false),
        Field::new("schema_version", DataType::UInt16, false),
        utf8("subject_kind", false),
        utf8("subject_id", false),
        utf8("budget_id", false),
        utf8("window_kind", false),
        timestamp_field("window_start", false),
        timestamp_field("window_end", true),
        Field::new("budget_nanos", DataType::Int64, false),
        Field::new("spent_nanos", DataType::Int64, false),
        Field::new("remaining_nanos", DataType::Int64, false),
        utf8("state", false),
        Field::new("hard", DataType::Boolean, false),
        Field::new("version", DataType::UInt64, false),
        Field::new(
            "source_offsets",
            DataType::List(Arc::new(Field::new("element", DataType::Struct(offset_fields), false))),
            false,
        ),
        utf8("reason", true),
    ]
}

#[derive(Debug, Serialize, Deserialize)]
struct QuotaDecisionRow {
    id: String,
    time: i64,
    schema_version: u16,
    subject_kind: String,
    subject_id: String,
    budget_id: String,
    window_kind: String,
    window_start: i64,
    window_end: Option<i64>,
    budget_nanos: i64,
    spent_nanos: i64,
    remaining_nanos: i64,
    state: String,
    hard: bool,
    version: u64,
    source_offsets: Vec<SourceOffset>,
    reason: Option<String>,
}

impl QuotaDecisionRow {
    fn from_event(decision: &QuotaDecision) -> Self {
        QuotaDecisionRow {
            id: decision.id.to_string(),
            time: decision.time_unix_micros,
            schema_version: decision.schema_version,
            subject_kind: decision.subject.kind.as_str().to_owned(),
            subject_id: decision.subject.id.clone(),
            budget_id: decision.budget_id.clone(),
            window_kind: decision.window.kind.as_str().to_owned(),
            window_start: decision.window.start_unix_micros,
            window_end: decision.window.end_unix_micros,
            budget_nanos: decision.budget.0,
            spent_nanos: decision.spent.0,
            remaining_nanos: decision.remaining.0,
            state: decision.state.as_str().to_owned(),
            hard: decision.hard,
            version: decision.version,
            source_offsets: decision.source_offsets.clone(),
            reason: decision.reason.clone(),
        }
    }
}

impl StoredRecord for QuotaDecision {
    const RECORD: &'static str = "quota_decision";

    fn arrow_schema() -> SchemaRef {
        Arc::new(Schema::new(quota_decision_fields()))
    }

    fn to_record_batch(records: &[Self]) -> Result<RecordBatch, RecordBatchError> {
        let rows: Vec<QuotaDecisionRow> = records.iter().map(QuotaDecisionRow::from_event).collect();
        rows_to_batch(&field_refs(quota_decision_fields()), &rows)
    }

    fn to_json_rows(records: &[Self]) -> Result<Vec<JsonRow>, RecordBatchError> {
        records.iter().map(|record| json_row(&QuotaDecisionRow::from_event(record), Self::RECORD)).collect()
    }

    fn from_record_batch(batch: &RecordBatch) -> Result<Vec<Self>, RecordBatchError> {
        let rows: Vec<QuotaDecisionRow> = batch_to_rows(batch, &field_refs(quota_decision_fields()), Self::RECORD)?;
        rows.into_iter()
            .enumerate()
            .map(|(index, row)| quota_decision_from_row(row).map_err(invalid(Self::RECORD, index)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// PolicyViolation

fn policy_violation_fields() -> Vec<Field> {
    vec![
        utf8("id", false),
        timestamp_field("time", false),
        Field::new("schema_version", DataType::UInt16, false),
        utf8("interaction_id", true),
        utf8("org_id", false),
        utf8("team_id", true),
        utf8("user_id", true),
        utf8("project_id", true),
        utf8("key_id", false),
        utf8("rule_id", false),
        utf8("severity", false),
        utf8("detector", false),
        utf8("action", false),
        utf8("summary", false),
        utf8("evidence", true),
    ]
}

#[derive(Debug, Serialize, Deserialize)]
struct PolicyViolationRow {
    id: String,
    time: i64,
    schema_version: u16,
    interaction_id: Option<String>,
    org_id: String,
    team_id: Option<String>,
    user_id: Option<String>,
    project_id: Option<String>,
    key_id: String,
    rule_id: String,
    severity: String,
    detector: String,
    action: String,
    summary: String,
    evidence: Option<String>,
}

impl PolicyViolationRow {
    fn from_event(violation: &PolicyViolation) -> Self {
        PolicyViolationRow {
            id: violation.id.to_string(),
            time: violation.time_unix_micros,
            schema_version: violation.schema_version,
            interaction_id: violation.interaction_id.map(|id| id.to_string()),
            org_id: violation.principal.org_id.clone(),
            team_id: violation.principal.team_id.clone(),
            user_id: violation.principal.user_id.clone(),
            project_id: violation.principal.project_id.clone(),
            key_id: violation.principal.key_id.clone(),
            rule_id: violation.rule_id.clone(),
            severity: violation.severity.as_str().to_owned(),
            detector: violation.detector.as_str().to_owned(),
            action: violation.action.as_str().to_owned(),
            summary: violation.summary.clone(),
            evidence: violation.evidence.clone(),
        }
    }
}

impl StoredRecord for PolicyViolation {
    const RECORD: &'static str = "policy_violation";

    fn arrow_schema() -> SchemaRef {
        Arc::new(Schema::new(policy_violation_fields()))
    }

    fn to_record_batch(records: &[Self]) -> Result<RecordBatch, RecordBatchError> {
        let rows: Vec<PolicyViolationRow> = records.iter().map(PolicyViolationRow::from_event).collect();
        rows_to_batch(&field_refs(policy_violation_fields()), &rows)
    }

    fn to_json_rows(records: &[Self]) -> Result<Vec<JsonRow>, RecordBatchError> {
        records.iter().map(|record| json_row(&PolicyViolationRow::from_event(record), Self::RECORD)).collect()
    }

    fn from_record_batch(batch: &RecordBatch) -> Result<Vec<Self>, RecordBatchError> {
        let rows: Vec<PolicyViolationRow> = batch_to_rows(batch, &field_refs(policy_violation_fields()), Self::RECORD)?;
        rows.into_iter()
            .enumerate()
            .map(|(index, row)| policy_violation_from_row(row).map_err(invalid(Self::RECORD, index)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// GovernanceChange

fn governance_change_fields() -> Vec<Field> {
    vec![
        utf8("id", false),
        timestamp_field("time", false),
        Field::new("schema_version", DataType::UInt16, false),
        utf8("actor_kind", false),
        utf8("actor_id", false),
        utf8("target_kind", false),
        utf8("target_id", false),
        utf8("action", false),
        utf8("value_json", true),
        utf8("reason", true),
    ]
}

#[derive(Debug, Serialize, Deserialize)]
struct GovernanceChangeRow {
    id: String,
    time: i64,
    schema_version: u16,
    actor_kind: String,
    actor_id: String,
    target_kind: String,
    target_id: String,
    action: String,
    value_json: Option<String>,
    reason: Option<String>,
}

impl GovernanceChangeRow {
    fn from_event(change: &GovernanceChange) -> Self {
        GovernanceChangeRow {
            id: change.id.to_string(),
            time: change.time_unix_micros,
            schema_version: change.schema_version,
            actor_kind: change.actor.kind.as_str().to_owned(),
            actor_id: change.actor.id.clone(),
            target_kind: change.target.kind.as_str().to_owned(),
            target_id: change.target.id.clone(),
            action: change.action.as_str().to_owned(),
            value_json: (!change.value.is_null()).then(|| change.value.to_string()),
            reason: change.reason.clone(),
        }
    }
}

impl StoredRecord for GovernanceChange {
    const RECORD: &'static str = "governance_change";

    fn arrow_schema() -> SchemaRef {
        Arc::new(Schema::new(governance_change_fields()))
    }

    fn to_record_batch(records: &[Self]) -> Result<RecordBatch, RecordBatchError> {
        let rows: Vec<GovernanceChangeRow> = records.iter().map(GovernanceChangeRow::from_event).collect();
        rows_to_batch(&field_refs(governance_change_fields()), &rows)
    }

    fn to_json_rows(records: &[Self]) -> Result<Vec<JsonRow>, RecordBatchError> {
        records.iter().map(|record| json_row(&GovernanceChangeRow::from_event(record), Self::RECORD)).collect()
    }

    fn from_record_batch(batch: &RecordBatch) -> Result<Vec<Self>, RecordBatchError> {
        let rows: Vec<GovernanceChangeRow> =
            batch_to_rows(batch, &field_refs(governance_change_fields()), Self::RECORD)?;
        rows.into_iter()
            .enumerate()
            .map(|(index, row)| governance_change_from_row(row).map_err(invalid(Self::RECORD, index)))
            .collect()
    }
}

fn quota_decision_from_row(row: QuotaDecisionRow) -> Result<QuotaDecision, String> {
    Ok(QuotaDecision {
        schema_version: row.schema_version,
        id: parse_uuid(&row.id, "id")?,
        time_unix_micros: row.time,
        subject: Subject {
            kind: parse_enum(&row.subject_kind, "subject_kind", SubjectKind::parse)?,
            id: row.subject_id,
        },
        budget_id: row.budget_id,
        window: BudgetWindow {
            kind: parse_enum(&row.window_kind, "window_kind", WindowKind::parse)?,
            start_unix_micros: row.window_start,
            end_unix_micros: row.window_end,
        },
        budget: Nanodollars(row.budget_nanos),
        spent: Nanodollars(row.spent_nanos),
        remaining: Nanodollars(row.remaining_nanos),
        state: parse_enum(&row.state, "state", QuotaState::parse)?,
        hard: row.hard,
        version: row.version,
        source_offsets: row.source_offsets,
        reason: row.reason,
    })
}

fn policy_violation_from_row(row: PolicyViolationRow) -> Result<PolicyViolation, String> {
    Ok(PolicyViolation {
        schema_version: row.schema_version,
        id: parse_uuid(&row.id, "id")?,
        time_unix_micros: row.time,
        interaction_id: row.interaction_id.map(|id| parse_uuid(&id, "interaction_id")).transpose()?,
        principal: Principal {
            org_id: row.org_id,
            team_id: row.team_id,
            user_id: row.user_id,
            project_id: row.project_id,
            key_id: row.key_id,
        },
        rule_id: row.rule_id,
        severity: parse_enum(&row.severity, "severity", Severity::parse)?,
        detector: parse_enum(&row.detector, "detector", Detector::parse)?,
        action: parse_enum(&row.action, "action", ViolationAction::parse)?,
        summary: row.summary,
        evidence: row.evidence,
    })
}

fn governance_change_from_row(row: GovernanceChangeRow) -> Result<GovernanceChange, String> {
    Ok(GovernanceChange {
        schema_version: row.schema_version,
        id: parse_uuid(&row.id, "id")?,
        time_unix_micros: row.time,
        actor: Actor { kind: parse_enum(&row.actor_kind, "actor_kind", ActorKind::parse)?, id: row.actor_id },
        target: GovernanceTarget {
            kind: parse_enum(&row.target_kind, "target_kind", TargetKind::parse)?,
            id: row.target_id,
        },
        action: parse_enum(&row.action, "action", ChangeAction::parse)?,
        value: row
            .value_json
            .map(|text| serde_json::from_str(&text).map_err(|error| format!("value_json: {error}")))
            .transpose()?
            .unwrap_or(serde_json::Value::Null),
        reason: row.reason,
    })
}

// ---------------------------------------------------------------------------------------
// AccessEvent

fn access_event_fields() -> Vec<Field> {
    vec![
        utf8("id", false),
        timestamp_field("time", false),
        Field::new("schema_version", DataType::UInt16, false),
        utf8("token_name", false),
        utf8("role", false),
        utf8("method", false),
        utf8("path", false),
        utf8("query", true),
        Field::new("status", DataType::UInt16, false),
        Field::new("results", DataType::UInt64, true),
        Field::new("duration_micros", DataType::Int64, false),
        utf8("client_address", true),
    ]
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessEventRow {
    id: String,
    time: i64,
    schema_version: u16,
    token_name: String,
    role: String,
    method: String,
    path: String,
    query: Option<String>,
    status: u16,
    results: Option<u64>,
    duration_micros: i64,
    client_address: Option<String>,
}

impl AccessEventRow {
    fn from_event(event: &AccessEvent) -> Self {
        AccessEventRow {
            id: event.id.to_string(),
            time: event.time_unix_micros,
            schema_version: event.schema_version,
            token_name: event.token_name.clone(),
            role: event.role.clone(),
            method: event.method.clone(),
            path: event.path.clone(),
            query: event.query.clone(),
            status: event.status,
            results: event.results,
            duration_micros: event.duration_micros,
            client_address: event.client_address.clone(),
        }
    }

    fn into_event(self) -> Result<AccessEvent, String> {
        Ok(AccessEvent {
            schema_version: self.schema_version,
            id: parse_uuid(&self.id, "id")?,
            time_unix_micros: self.time,
            token_name: self.token_name,
            role: self.role,
            method: self.method,
            path: self.path,
            query: self.query,
            status: self.status,
            results: self.results,
            duration_micros: self.duration_micros,
            client_address: self.client_address,
        })
    }
}

impl StoredRecord for AccessEvent {
    const RECORD: &'static str = "access_event";

    fn arrow_schema() -> SchemaRef {
        Arc::new(Schema::new(access_event_fields()))
    }

    fn to_record_batch(records: &[Self]) -> Result<RecordBatch, RecordBatchError> {
        let rows: Vec<AccessEventRow> = records.iter().map(AccessEventRow::from_event).collect();
        rows_to_batch(&field_refs(access_event_fields()), &rows)
    }

    fn to_json_rows(records: &[Self]) -> Result<Vec<JsonRow>, RecordBatchError> {
        records.iter().map(|record| json_row(&AccessEventRow::from_event(record), Self::RECORD)).collect()
    }

    fn from_record_batch(batch: &RecordBatch) -> Result<Vec<Self>, RecordBatchError> {
        let rows: Vec<AccessEventRow> = batch_to_rows(batch, &field_refs(access_event_fields()), Self::RECORD)?;
        rows.into_iter()
            .enumerate()
            .map(|(index, row)| row.into_event().map_err(invalid(Self::RECORD, index)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// UpstreamHealth

fn upstream_health_fields() -> Vec<Field> {
    vec![
        utf8("id", false),
        timestamp_field("time", false),
        Field::new("schema_version", DataType::UInt16, false),
        utf8("gateway_instance", false),
        utf8("upstream", false),
        utf8("gen_ai_provider_name", false),
        utf8("transition", false),
        Field::new("consecutive_failures", DataType::UInt32, false),
        Field::new("cool_down_millis", DataType::UInt64, false),
        utf8("reason", true),
    ]
}

#[derive(Debug, Serialize, Deserialize)]
struct UpstreamHealthRow {
    id: String,
    time: i64,
    schema_version: u16,
    gateway_instance: String,
    upstream: String,
    gen_ai_provider_name: String,
    transition: String,
    consecutive_failures: u32,
    cool_down_millis: u64,
    reason: Option<String>,
}

impl UpstreamHealthRow {
    fn from_event(event: &UpstreamHealth) -> Self {
        UpstreamHealthRow {
            id: event.id.to_string(),
            time: event.time_unix_micros,
            schema_version: event.schema_version,
            gateway_instance: event.gateway_instance.clone(),
            upstream: event.upstream.clone(),
            gen_ai_provider_name: event.provider.clone(),
            transition: event.transition.as_str().to_owned(),
            consecutive_failures: event.consecutive_failures,
            cool_down_millis: event.cool_down_millis,
            reason: event.reason.clone(),
        }
    }

    fn into_event(self) -> Result<UpstreamHealth, String> {
        Ok(UpstreamHealth {
            schema_version: self.schema_version,
            id: parse_uuid(&self.id, "id")?,
            time_unix_micros: self.time,
            gateway_instance: self.gateway_instance,
            upstream: self.upstream,
            provider: self.gen_ai_provider_name,
            transition: parse_enum(&self.transition, "transition", BreakerTransition::parse)?,
            consecutive_failures: self.consecutive_failures,
            cool_down_millis: self.cool_down_millis,
            reason: self.reason,
        })
    }
}

impl StoredRecord for UpstreamHealth {
    const RECORD: &'static str = "upstream_health";

    fn arrow_schema() -> SchemaRef {
        Arc::new(Schema::new(upstream_health_fields()))
    }

    fn to_record_batch(records: &[Self]) -> Result<RecordBatch, RecordBatchError> {
        let rows: Vec<UpstreamHealthRow> = records.iter().map(UpstreamHealthRow::from_event).collect();
        rows_to_batch(&field_refs(upstream_health_fields()), &rows)
    }

    fn to_json_rows(records: &[Self]) -> Result<Vec<JsonRow>, RecordBatchError> {
        records.iter().map(|record| json_row(&UpstreamHealthRow::from_event(record), Self::RECORD)).collect()
    }

    fn from_record_batch(batch: &RecordBatch) -> Result<Vec<Self>, RecordBatchError> {
        let rows: Vec<UpstreamHealthRow> = batch_to_rows(batch, &field_refs(upstream_health_fields()), Self::RECORD)?;
        rows.into_iter()
            .enumerate()
            .map(|(index, row)| row.into_event().map_err(invalid(Self::RECORD, index)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Where archived priced interactions sit in their partition's Merkle log

/// Column of the archived priced interactions: the partition whose Merkle log holds the
/// row. Null when the archive keeps no Merkle log.
pub const MERKLE_PARTITION: &str = "merkle_partition";
/// Column of the archived priced interactions: the row's leaf index in that log.
pub const MERKLE_LEAF: &str = "merkle_leaf";

/// The Arrow schema of archived priced interactions: [`PricedInteraction`]'s layout and the
/// two Merkle log columns, which are not part of the event (nor of its leaf hash).
pub fn archived_priced_schema() -> SchemaRef {
    let mut fields: Vec<Field> =
        PricedInteraction::arrow_schema().fields().iter().map(|field| (**field).clone()).collect();
    fields.push(Field::new(MERKLE_PARTITION, DataType::Int32, true));
    fields.push(Field::new(MERKLE_LEAF, DataType::UInt64, true));
    Arc::new(Schema::new(fields))
}

/// `batch` of priced interactions with the Merkle log columns added: its rows are leaves
/// `first_leaf..` of `partition`'s log, in row order.
pub fn with_merkle_position(
    batch: &RecordBatch,
    partition: i32,
    first_leaf: u64,
) -> Result<RecordBatch, RecordBatchError> {
    use arrow::array::{ArrayRef, Int32Array, UInt64Array};
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(Int32Array::from(vec![partition; rows])));
    columns.push(Arc::new(UInt64Array::from_iter_values((0..rows as u64).map(|row| first_leaf + row))));
    RecordBatch::try_new(archived_priced_schema(), columns)
        .map_err(|error| RecordBatchError::Schema { record: PricedInteraction::RECORD, message: error.to_string() })
}
