//! [`Interaction`]: one record per model call or tool call that reached the gateway.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::common::Principal;

/// One model call or one tool call, as the gateway saw it.
///
/// Published by the gateway on [`crate::topics::INTERACTIONS`] once the call has finished
/// (or failed, or was refused), keyed by the caller's key id. Times are microseconds since
/// the Unix epoch (UTC); durations are microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Interaction {
    /// Version of this document's layout; see [`crate::SCHEMA_VERSION`].
    pub schema_version: u16,
    /// Stable event id, a UUIDv7 (time-ordered). Every sink deduplicates on it.
    pub id: Uuid,
    /// When the gateway received the request.
    pub time_unix_micros: i64,
    /// Which gateway replica handled the call (`service.instance.id`).
    pub gateway_instance: String,
    /// Who made the call.
    pub principal: Principal,
    /// What was called: a model or a tool.
    pub call: Call,
    /// Digests, sizes and (when capture is on) the content itself.
    pub content: ContentRecord,
    /// How the call ended.
    pub outcome: Outcome,
    /// Tokens consumed. All zero for tool calls and for calls refused before routing.
    #[serde(default)]
    pub usage: Usage,
    /// Where the time went.
    pub timing: Timing,
    /// W3C trace context of the request, when the client sent one or the gateway began one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// Model call or tool call; mirrors the `kind` tag of [`Call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InteractionKind {
    ModelCall,
    ToolCall,
}

impl InteractionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InteractionKind::ModelCall => "model_call",
            InteractionKind::ToolCall => "tool_call",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "model_call" => Some(InteractionKind::ModelCall),
            "tool_call" => Some(InteractionKind::ToolCall),
            _ => None,
        }
    }
}

/// The request facts, by kind. Encoded with a `kind` tag: `{"kind": "model_call", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Call {
    ModelCall(ModelCall),
    ToolCall(ToolCall),
}

// Decoding is written out rather than derived: serde's derived decoding of an internally
// tagged enum first copies the whole object into an intermediate tree to find the tag,
// which was about a tenth of the processor's decoding time.
impl<'de> Deserialize<'de> for Call {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;

        /// Every field of either kind; what the kind does not use is ignored, as unknown
        /// fields are.
        #[derive(Deserialize)]
        struct Fields {
            kind: InteractionKind,
            operation: Option<GenAiOperation>,
            provider: Option<String>,
            upstream: Option<String>,
            preferred_upstream: Option<String>,
            request_model: Option<String>,
            routed_model: Option<String>,
            response_model: Option<String>,
            endpoint: Option<String>,
            streaming: Option<bool>,
            request_max_tokens: Option<u64>,
            server: Option<String>,
            method: Option<String>,
            tool: Option<String>,
            session_id: Option<String>,
        }

        let fields = Fields::deserialize(deserializer)?;
        match fields.kind {
            InteractionKind::ModelCall => Ok(Call::ModelCall(ModelCall {
                operation: fields.operation.ok_or_else(|| D::Error::missing_field("operation"))?,
                provider: fields.provider,
                upstream: fields.upstream,
                preferred_upstream: fields.preferred_upstream,
                request_model: fields.request_model.ok_or_else(|| D::Error::missing_field("request_model"))?,
                routed_model: fields.routed_model,
                response_model: fields.response_model,
                endpoint: fields.endpoint.ok_or_else(|| D::Error::missing_field("endpoint"))?,
                streaming: fields.streaming.ok_or_else(|| D::Error::missing_field("streaming"))?,
                request_max_tokens: fields.request_max_tokens,
            })),
            InteractionKind::ToolCall => Ok(Call::ToolCall(ToolCall {
                server: fields.server.ok_or_else(|| D::Error::missing_field("server"))?,
                method: fields.method.ok_or_else(|| D::Error::missing_field("method"))?,
                tool: fields.tool,
                session_id: fields.session_id,
            })),
        }
    }
}

impl Call {
    pub fn kind(&self) -> InteractionKind {
        match self {
            Call::ModelCall(_) => InteractionKind::ModelCall,
            Call::ToolCall(_) => InteractionKind::ToolCall,
        }
    }
}

/// A call to a model provider through one of the gateway's provider-compatible routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelCall {
    /// `gen_ai.operation.name`.
    pub operation: GenAiOperation,
    /// `gen_ai.provider.name` of the upstream that served (or last tried) the call, for
    /// example `openai` or `anthropic`. Absent when the call was refused before routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Name of the configured upstream target that served (or last tried) the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The upstream of the route's first target: where the call goes when that upstream
    /// is healthy. Differs from `upstream` when the call was served elsewhere (a fallback,
    /// or the first target's circuit breaker was open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_upstream: Option<String>,
    /// `gen_ai.request.model`: the model name the client asked for.
    pub request_model: String,
    /// The model name sent upstream after routing (may differ from `request_model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_model: Option<String>,
    /// `gen_ai.response.model`: the model name the provider reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_model: Option<String>,
    /// `http.route` of the gateway endpoint, for example `/v1/chat/completions`.
    pub endpoint: String,
    /// Whether the response was streamed (SSE).
    pub streaming: bool,
    /// `gen_ai.request.max_tokens` as sent by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_max_tokens: Option<u64>,
}

/// `gen_ai.operation.name` values the gateway produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GenAiOperation {
    /// Chat completions and Anthropic messages.
    Chat,
    /// Legacy text completions.
    TextCompletion,
    Embeddings,
    /// A tool invocation (`tools/call`) through MCP.
    ExecuteTool,
}

impl GenAiOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            GenAiOperation::Chat => "chat",
            GenAiOperation::TextCompletion => "text_completion",
            GenAiOperation::Embeddings => "embeddings",
            GenAiOperation::ExecuteTool => "execute_tool",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "chat" => Some(GenAiOperation::Chat),
            "text_completion" => Some(GenAiOperation::TextCompletion),
            "embeddings" => Some(GenAiOperation::Embeddings),
            "execute_tool" => Some(GenAiOperation::ExecuteTool),
            _ => None,
        }
    }
}

/// A JSON-RPC request to an MCP server through the gateway's MCP proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCall {
    /// Configured name of the MCP server (the `{server}` of `/mcp/{server}`).
    pub server: String,
    /// `mcp.method.name`, for example `tools/call` or `tools/list`.
    pub method: String,
    /// `gen_ai.tool.name`, for `tools/call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// `mcp.session.id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// What went in and what came out, as digests and sizes, plus the content itself when
/// capture is enabled for the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContentRecord {
    /// Lowercase hex SHA-256 of the request body as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sha256: Option<String>,
    /// Lowercase hex SHA-256 of the response body as sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_sha256: Option<String>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The captured content; absent when capture is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured: Option<CapturedContent>,
}

/// Captured request and response text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CapturedContent {
    pub request: String,
    /// Absent when no response was produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// True when the PII guard replaced parts of the text before capture.
    pub redacted: bool,
}

/// How the call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Outcome {
    pub status: OutcomeStatus,
    /// `http.response.status_code` returned to the client (absent for a client that left
    /// before a status was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// `error.type`: a short machine-readable class, for example `rate_limit_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// Human-readable error, as returned to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Upstream attempts made, including retries and fallbacks; 0 when refused before routing.
    pub attempts: u32,
    /// Whether a target other than the first in the route served the call.
    pub fallback_used: bool,
}

/// The outcome classes reports group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    Ok,
    /// The upstream answered with an error after all retries and fallbacks.
    UpstreamError,
    /// No upstream could be reached.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    Timeout,
    /// The MCP tool ran and reported an error (`isError` or a JSON-RPC error).
    ToolError,
    /// Refused by request-time policy (allow-list, PII guard, size limit, ...).
    BlockedByPolicy,
    /// Refused because a budget for the caller is exhausted.
    BlockedByBudget,
    /// Refused by a request or token rate limit.
    RateLimited,
    /// The request itself was malformed.
    InvalidRequest,
    /// The client went away before the response was complete.
    ClientDisconnected,
}

impl OutcomeStatus {
    pub const ALL: [OutcomeStatus; 10] = [
        OutcomeStatus::Ok,
        OutcomeStatus::UpstreamError,
        OutcomeStatus::UpstreamUnreachable,
        OutcomeStatus::Timeout,
        OutcomeStatus::ToolError,
        OutcomeStatus::BlockedByPolicy,
        OutcomeStatus::BlockedByBudget,
        OutcomeStatus::RateLimited,
        OutcomeStatus::InvalidRequest,
        OutcomeStatus::ClientDisconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Ok => "ok",
            OutcomeStatus::UpstreamError => "upstream_error",
            OutcomeStatus::UpstreamUnreachable => "upstream_unreachable",
            OutcomeStatus::Timeout => "timeout",
            OutcomeStatus::ToolError => "tool_error",
            OutcomeStatus::BlockedByPolicy => "blocked_by_policy",
            OutcomeStatus::BlockedByBudget => "blocked_by_budget",
            OutcomeStatus::RateLimited => "rate_limited",
            OutcomeStatus::InvalidRequest => "invalid_request",
            OutcomeStatus::ClientDisconnected => "client_disconnected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        OutcomeStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// Token usage, normalized across providers to the OpenTelemetry meaning: input tokens
/// include cache reads and cache writes; output tokens include reasoning tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// `gen_ai.usage.input_tokens`.
    pub input_tokens: u64,
    /// `gen_ai.usage.output_tokens`.
    pub output_tokens: u64,
    /// `gen_ai.usage.cache_read.input_tokens` (part of `input_tokens`).
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    /// `gen_ai.usage.cache_creation.input_tokens` (part of `input_tokens`).
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Reasoning tokens (part of `output_tokens`).
    #[serde(default)]
    pub reasoning_output_tokens: u64,
    /// True when the provider reported no usage and the gateway counted tokens itself.
    #[serde(default)]
    pub estimated: bool,
}

/// Where the time of a call went, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Timing {
    /// From the request's arrival to the last byte of the response.
    pub duration_micros: u64,
    /// From the request's arrival to the first content byte of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_token_micros: Option<u64>,
    /// Time spent in the gateway itself (duration minus time waiting on upstreams).
    pub gateway_overhead_micros: u64,
}

/// W3C trace context (`traceparent` split into fields, plus `tracestate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits: the gateway's span for this call.
    pub span_id: String,
    /// The trace flags byte (bit 0: sampled).
    pub trace_flags: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The `traceparent` header value for this context.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.trace_flags)
    }
}

impl Interaction {
    pub fn kind(&self) -> InteractionKind {
        self.call.kind()
    }

    /// Checks the invariants serde cannot express. Called by [`crate::decode`].
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.id.get_version_num() != 7 {
            return Err(format!("id {} is not a UUIDv7", self.id));
        }
        if self.principal.org_id.is_empty() || self.principal.key_id.is_empty() {
            return Err("principal.org_id and principal.key_id must not be empty".to_owned());
        }
        for (name, digest) in [
            ("content.request_sha256", &self.content.request_sha256),
            ("content.response_sha256", &self.content.response_sha256),
        ] {
            if let Some(digest) = digest
                && !is_lower_hex(digest, 64)
            {
                return Err(format!("{name} must be 64 lowercase hex digits"));
            }
        }
        if let Some(trace) = &self.trace {
            if !is_lower_hex(&trace.trace_id, 32) {
                return Err("trace.trace_id must be 32 lowercase hex digits".to_owned());
            }
            if !is_lower_hex(&trace.span_id, 16) {
                return Err("trace.span_id must be 16 lowercase hex digits".to_owned());
            }
        }
        Ok(())
    }
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
