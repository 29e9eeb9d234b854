//! [`Draft`]: the facts of one call gathered while it runs, turned into exactly one
//! `Interaction` when it ends.
//!
//! A draft is created once the caller is authenticated (a request without a valid key
//! has no principal to record against; those are counted in metrics and logs). Every path
//! out of the handler, and the end of every stream (including a client that went away),
//! consumes the draft, so each call is recorded once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tollgate_schemas::limits;
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::{
    Call, CapturedContent, ContentRecord, GenAiOperation, Interaction, ModelCall, Nanodollars, Outcome, OutcomeStatus,
    Principal, SCHEMA_VERSION, Timing, ToolCall, TraceContext, Usage,
};
use uuid::Uuid;

use crate::app::GatewayState;
use crate::config::CaptureMode;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::quota::Admission;

/// Micros in a duration, saturating.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The response side as it went to the client: size, digest, and text when captured
/// (its first [`kept_bytes`] only).
#[derive(Debug)]
pub struct ResponseTap {
    mode: CaptureMode,
    bytes: u64,
    hasher: Option<Sha256>,
    text: Option<Vec<u8>>,
    keep: usize,
}

/// How much of a body is kept for capture when `max_bytes` of its text are recorded: the
/// recorded text is at most that as JSON, which is never shorter than the raw text, and
/// redaction may shorten it; the rest is slack so a secret at the cut is still found.
fn kept_bytes(max_bytes: usize) -> usize {
    max_bytes.saturating_mul(2).saturating_add(4096)
}

impl ResponseTap {
    pub fn new(mode: CaptureMode, max_bytes: usize) -> Self {
        ResponseTap {
            mode,
            bytes: 0,
            hasher: (mode != CaptureMode::Off).then(Sha256::new),
            text: matches!(mode, CaptureMode::Full | CaptureMode::Redacted).then(Vec::new),
            keep: kept_bytes(max_bytes),
        }
    }

    /// Takes in bytes sent to the client.
    pub fn sent(&mut self, bytes: &[u8]) {
        self.bytes = self.bytes.saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
        if let Some(hasher) = &mut self.hasher {
            hasher.update(bytes);
        }
        if let Some(text) = &mut self.text {
            let room = self.keep.saturating_sub(text.len());
            text.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }
}

/// One call in progress.
#[derive(Debug)]
pub struct Draft {
    state: Arc<GatewayState>,
    capture: CaptureMode,
    capture_max_bytes: usize,
    pub id: Uuid,
    pub started: Instant,
    time_unix_micros: i64,
    principal: Principal,
    pub operation: GenAiOperation,
    pub endpoint: &'static str,
    pub request_model: String,
    pub routed_model: Option<String>,
    pub provider: Option<String>,
    pub upstream: Option<String>,
    /// The upstream of the route's first target.
    pub preferred_upstream: Option<String>,
    pub streaming: bool,
    pub request_max_tokens: Option<u64>,
    request_bytes: u64,
    request_sha256: Option<String>,
    request_text: Option<(String, bool)>,
    pub attempts: u32,
    pub fallback_used: bool,
    /// Time spent waiting on upstreams or sleeping between retries: not gateway overhead.
    pub waited: Duration,
    pub trace: TraceContext,
    /// The budget reservation, settled to the actual cost when the call is recorded.
    pub quota: Option<(Admission, Arc<PriceCatalog>)>,
    /// Set for an MCP request: the event is a tool call rather than a model call.
    pub tool: Option<ToolCall>,
}

/// How a call ended.
#[derive(Debug)]
pub struct Ending {
    pub status: OutcomeStatus,
    pub http_status: Option<u16>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub usage: Usage,
    pub response_model: Option<String>,
    pub time_to_first_token: Option<Duration>,
}

impl Ending {
    pub fn new(status: OutcomeStatus, http_status: Option<u16>) -> Self {
        Ending {
            status,
            http_status,
            error_type: None,
            error_message: None,
            usage: Usage::default(),
            response_model: None,
            time_to_first_token: None,
        }
    }

    pub fn with_error(mut self, error_type: impl Into<String>, message: impl Into<String>) -> Self {
        self.error_type = Some(error_type.into());
        self.error_message = Some(message.into());
        self
    }
}

impl Draft {
    pub fn new(
        state: Arc<GatewayState>,
        started: Instant,
        principal: Principal,
        operation: GenAiOperation,
        endpoint: &'static str,
        trace: TraceContext,
    ) -> Self {
        Draft {
            capture: state.config.capture,
            capture_max_bytes: state.config.capture_max_bytes,
            state,
            id: Uuid::now_v7(),
            started,
            time_unix_micros: tollgate_schemas::now_unix_micros(),
            principal,
            operation,
            endpoint,
            request_model: String::new(),
            routed_model: None,
            provider: None,
            upstream: None,
            preferred_upstream: None,
            streaming: false,
            request_max_tokens: None,
            request_bytes: 0,
            request_sha256: None,
            request_text: None,
            attempts: 0,
            fallback_used: false,
            waited: Duration::ZERO,
            trace,
            quota: None,
            tool: None,
        }
    }

    /// A tap for this call's response, capturing as the call's policy says.
    pub fn response_tap(&self) -> ResponseTap {
        ResponseTap::new(self.capture, self.capture_max_bytes)
    }

    /// Takes in the request body as received.
    pub fn set_request(&mut self, body: &[u8]) {
        self.request_bytes = u64::try_from(body.len()).unwrap_or(u64::MAX);
        if self.capture != CaptureMode::Off {
            self.request_sha256 = Some(hex::encode(Sha256::digest(body)));
        }
        self.request_text = captured(self.capture, body, self.capture_max_bytes);
    }

    /// Records the call with `ending` and what was sent back, consuming the draft.
    pub fn finish(self, ending: Ending, response: ResponseTap) {
        let duration = self.started.elapsed();
        let actual_cost = self.quota.as_ref().map(|(_, catalog)| match &self.tool {
            // A tool call costs its per-call price once the server has run it.
            Some(tool) => match (ending.status, tool.tool.as_deref()) {
                (OutcomeStatus::Ok | OutcomeStatus::ToolError, Some(name)) => {
                    catalog.tool(&tool.server, name).unwrap_or(Nanodollars::ZERO)
                }
                _ => Nanodollars::ZERO,
            },
            None => {
                let model = self.routed_model.as_deref().or(ending.response_model.as_deref()).unwrap_or_default();
                self.provider
                    .as_deref()
                    .and_then(|provider| catalog.model(provider, model))
                    .map_or(Nanodollars::ZERO, |price| price.cost(&ending.usage).total)
            }
        });
        let response_sha256 = response.hasher.map(|hasher| hex::encode(hasher.finalize()));
        let response_text = response.text.and_then(|text| {
            let (mut text, redacted) = capture_text(response.mode, &text)?;
            let cut = response.bytes > u64::try_from(response.keep).unwrap_or(u64::MAX);
            limits::bound_captured(&mut text, self.capture_max_bytes, response.bytes, cut);
            Some((text, redacted))
        });
        let captured = self.request_text.map(|(request, request_redacted)| {
            let response_redacted = response_text.as_ref().is_some_and(|(_, redacted)| *redacted);
            CapturedContent {
                request,
                response: response_text.map(|(text, _)| text),
                redacted: request_redacted || response_redacted,
            }
        });
        let mut interaction = Interaction {
            schema_version: SCHEMA_VERSION,
            id: self.id,
            time_unix_micros: self.time_unix_micros,
            gateway_instance: self.state.instance.to_string(),
            principal: self.principal,
            call: match self.tool {
                Some(tool) => Call::ToolCall(tool),
                None => Call::ModelCall(ModelCall {
                    operation: self.operation,
                    provider: self.provider,
                    upstream: self.upstream,
                    preferred_upstream: self.preferred_upstream,
                    request_model: self.request_model,
                    routed_model: self.routed_model,
                    response_model: ending.response_model,
                    endpoint: self.endpoint.to_owned(),
                    streaming: self.streaming,
                    request_max_tokens: self.request_max_tokens,
                }),
            },
            content: ContentRecord {
                request_sha256: self.request_sha256,
                response_sha256,
                request_bytes: self.request_bytes,
                response_bytes: response.bytes,
                captured,
            },
            outcome: Outcome {
                status: ending.status,
                http_status: ending.http_status,
                error_type: ending.error_type,
                error_message: ending.error_message,
                attempts: self.attempts,
                fallback_used: self.fallback_used,
            },
            usage: ending.usage,
            timing: Timing {
                duration_micros: micros(duration),
                time_to_first_token_micros: ending.time_to_first_token.map(micros),
                gateway_overhead_micros: micros(duration.saturating_sub(self.waited)),
            },
            trace: Some(self.trace),
        };
        interaction.enforce_bounds(self.capture_max_bytes);
        let metrics = &self.state.metrics;
        metrics
            .requests
            .get_or_create(&RequestLabels { route: self.endpoint, outcome: interaction.outcome.status.as_str() })
            .inc();
        metrics.duration.get_or_create(&RouteLabels { route: self.endpoint }).observe(duration.as_secs_f64());
        let receipt = self.state.recorder.record(&interaction);
        if let (Some((admission, _)), Some(cost)) = (self.quota, actual_cost) {
            admission.settle(cost, receipt);
        }
    }
}

/// The captured text of a request `body` under `mode`, bounded to `max_bytes` as JSON,
/// and whether anything was redacted.
fn captured(mode: CaptureMode, body: &[u8], max_bytes: usize) -> Option<(String, bool)> {
    let keep = kept_bytes(max_bytes);
    let (mut text, redacted) = capture_text(mode, &body[..body.len().min(keep)])?;
    let original = u64::try_from(body.len()).unwrap_or(u64::MAX);
    limits::bound_captured(&mut text, max_bytes, original, body.len() > keep);
    Some((text, redacted))
}

/// The text to keep under `mode`, and whether anything was redacted.
fn capture_text(mode: CaptureMode, bytes: &[u8]) -> Option<(String, bool)> {
    match mode {
        CaptureMode::Off | CaptureMode::Digests => None,
        CaptureMode::Full => Some((String::from_utf8_lossy(bytes).into_owned(), false)),
        CaptureMode::Redacted => {
            let text = String::from_utf8_lossy(bytes);
            let (redacted, findings) = tollgate_guard::Detectors::shared().redact(&text);
            Some((redacted.into_owned(), !findings.is_empty()))
        }
    }
}

/// The trace context for a call: the client's trace (from `traceparent`) with a new span
/// for the gateway, or a new trace when the client sent none or an invalid one.
pub fn trace_context(headers: &axum::http::HeaderMap) -> TraceContext {
    let span_id = format!("{:016x}", rand::random::<u64>().max(1));
    let parent = headers.get("traceparent").and_then(|value| value.to_str().ok()).and_then(parse_traceparent);
    let tracestate = headers.get("tracestate").and_then(|value| value.to_str().ok()).map(str::to_owned);
    match parent {
        Some((trace_id, trace_flags)) => TraceContext { trace_id, span_id, trace_flags, tracestate },
        None => TraceContext {
            trace_id: format!("{:032x}", rand::random::<u128>().max(1)),
            span_id,
            trace_flags: 1,
            tracestate: None,
        },
    }
}

/// `00-<trace id>-<parent id>-<flags>` per W3C Trace Context; all-zero ids are invalid.
fn parse_traceparent(value: &str) -> Option<(String, u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |text: &str, len: usize| {
        text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = lower_hex(version, 2)
        && version != "ff"
        && lower_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && lower_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && lower_hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    if !valid {
        return None;
    }
    Some((trace_id.to_owned(), u8::from_str_radix(flags, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    #[test]
    fn a_valid_traceparent_keeps_the_trace_and_gets_a_new_span() {
        let mut headers = HeaderMap::new();
        headers
            .insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let context = trace_context(&headers);
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(context.span_id, "00f067aa0ba902b7");
        assert_eq!(context.trace_flags, 1);
        assert!(context.traceparent().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        let context = trace_context(&HeaderMap::new());
        assert_eq!((context.trace_id.len(), context.span_id.len()), (32, 16));
    }
}
