//! The provider routes: authenticate, check, route with retries and fallbacks, forward,
//! and record one `Interaction` whatever happens.
//!
//! Order of checks, each answered in the route's provider dialect: key (401), recording
//! available (503 when the spool is full and the policy fails closed), content type
//! (415), body size (413), body shape (400), model allow-list of key and team (403),
//! `max_tokens` cap (400), known model (404), PII guard (400 in block mode; redact mode
//! rewrites the prompt), rate limits (429 with `Retry-After`), budgets (429). Nothing
//! reaches an upstream until all of them pass.
//!
//! Routing tries the model's targets in order. On one target, connect errors, timeouts,
//! 429 and 5xx are retried with exponential backoff and full jitter (`backon`), honouring
//! `Retry-After` / `retry-after-ms` up to a configured ceiling; then the next target is
//! tried. A target whose circuit breaker is open is skipped. An upstream's 4xx other than
//! 429 is the client's problem and is passed back as it came. Once a stream's first byte
//! has gone to the client nothing is retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backon::BackoffBuilder;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tollgate_schemas::{BreakerTransition, GenAiOperation, MAX_HEALTH_REASON_BYTES, OutcomeStatus, UpstreamHealth};

use crate::app::GatewayState;
use crate::breaker::BreakerChange;
use crate::config::{Target, UpstreamKind};
use crate::draft::{Draft, Ending, trace_context};
use crate::error::{ApiError, Dialect, ErrorClass};
use crate::metrics::{AttemptLabels, RequestLabels, RouteLabels};
use crate::policy::{PiiMode, guard_prompt};
use crate::request::{ChatCompletionRequest, named_model, parse_chat_completion, parse_embeddings, parse_messages};
use crate::stream::MeteredStream;
use crate::upstream::{Routes, UpstreamClient, is_passed_back};
use crate::usage;

/// Header carrying the id of the recorded interaction, for looking it up later.
pub const INTERACTION_ID_HEADER: &str = "x-tollgate-interaction-id";

/// The provider endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    Messages,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Messages => "/v1/messages",
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Endpoint::ChatCompletions | Endpoint::Embeddings => Dialect::OpenAi,
            Endpoint::Messages => Dialect::Anthropic,
        }
    }

    fn operation(self) -> GenAiOperation {
        match self {
            Endpoint::ChatCompletions | Endpoint::Messages => GenAiOperation::Chat,
            Endpoint::Embeddings => GenAiOperation::Embeddings,
        }
    }

    /// The kind of upstream that serves this endpoint.
    fn upstream_kind(self) -> UpstreamKind {
        match self {
            Endpoint::ChatCompletions | Endpoint::Embeddings => UpstreamKind::Openai,
            Endpoint::Messages => UpstreamKind::Anthropic,
        }
    }

    fn parse(self, bytes: &Bytes) -> Result<Parsed, ApiError> {
        let (body, model, stream, max_tokens, client_requested_usage, choices) = match self {
            Endpoint::ChatCompletions => {
                let request = parse_chat_completion(bytes)?;
                let ChatCompletionRequest { body, model, stream, max_tokens, client_requested_usage, choices } =
                    request;
                (body, model, stream, max_tokens, client_requested_usage, choices)
            }
            Endpoint::Embeddings => {
                let request = parse_embeddings(bytes)?;
                (request.body, request.model, false, None, false, 1)
            }
            Endpoint::Messages => {
                let request = parse_messages(bytes)?;
                // Anthropic streams always carry usage.
                (request.body, request.model, request.stream, Some(request.max_tokens), true, 1)
            }
        };
        Ok(Parsed {
            original: bytes.clone(),
            changed: false,
            body,
            model,
            stream,
            max_tokens,
            imposed_max_tokens: None,
            client_requested_usage,
            choices,
        })
    }

    /// Whether a request on this endpoint generates output that `max_tokens` limits.
    fn generates(self) -> bool {
        self != Endpoint::Embeddings
    }
}

/// What the handler needs of a parsed body, whatever the endpoint.
#[derive(Debug)]
struct Parsed {
    /// The body as the client sent it, forwarded as is when nothing in it must change.
    original: Bytes,
    /// Whether `body` was changed after parsing (PII redaction), so `original` is stale.
    changed: bool,
    body: Map<String, Value>,
    model: String,
    stream: bool,
    /// The output limit per choice: the client's, or the key's cap when the client set
    /// none.
    max_tokens: Option<u64>,
    /// Set when the gateway put the key's cap in place of a limit the client did not set;
    /// written into each upstream's body under the name its provider reads.
    imposed_max_tokens: Option<u64>,
    client_requested_usage: bool,
    /// Choices generated (`n`), each up to `max_tokens`.
    choices: u64,
}

/// Serves one request on `endpoint`.
pub async fn handle(state: Arc<GatewayState>, endpoint: Endpoint, request: Request) -> Response {
    let started = Instant::now();
    let dialect = endpoint.dialect();
    let (parts, body) = request.into_parts();
    let key = match state.keys().authenticate(&parts.headers) {
        Ok(key) => key,
        Err(error) => {
            tracing::info!(route = endpoint.path(), code = error.code, "request refused: no valid key");
            state.metrics.unauthenticated.get_or_create(&RouteLabels { route: endpoint.path() }).inc();
            return error.into_response(dialect);
        }
    };
    if !state.recorder.accepting() {
        let error = ApiError::new(
            ErrorClass::Unavailable,
            "The gateway cannot record requests right now (its local spool is full); try again shortly.",
        )
        .with_code("recording_unavailable");
        // Not recordable, so counted here: it has no event.
        let labels = RequestLabels { route: endpoint.path(), outcome: "recording_unavailable" };
        state.metrics.requests.get_or_create(&labels).inc();
        return error.into_response(dialect);
    }
    let mut draft = Draft::new(
        Arc::clone(&state),
        started,
        key.principal.clone(),
        endpoint.operation(),
        endpoint.path(),
        trace_context(&parts.headers),
    );

    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE)
        && !is_json(content_type)
    {
        let error = ApiError::new(
            ErrorClass::UnsupportedMediaType,
            format!(
                "Unsupported content type {:?}; send the body as application/json.",
                String::from_utf8_lossy(content_type.as_bytes())
            ),
        )
        .with_code("unsupported_media_type");
        return refuse(draft, dialect, error, OutcomeStatus::InvalidRequest);
    }

    let limit = state.config.max_body_bytes;
    let bytes = match read_body(&parts.headers, body, limit).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            let error = ApiError::new(
                ErrorClass::RequestTooLarge,
                format!("The request body is larger than this gateway accepts ({limit} bytes)."),
            )
            .with_code("request_too_large");
            return refuse(draft, dialect, error, OutcomeStatus::BlockedByPolicy);
        }
        Err(BodyError::Read(message)) => {
            let tap = draft.response_tap();
            draft.finish(
                Ending::new(OutcomeStatus::ClientDisconnected, None).with_error("client_disconnected", message),
                tap,
            );
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    draft.set_request(&bytes);

    let mut parsed = match endpoint.parse(&bytes) {
        Ok(parsed) => parsed,
        Err(error) => {
            draft.request_model = named_model(&bytes).unwrap_or_default();
            return refuse(draft, dialect, error, OutcomeStatus::InvalidRequest);
        }
    };
    draft.request_model = parsed.model.clone();
    draft.streaming = parsed.stream;
    draft.request_max_tokens = parsed.max_tokens;

    if !key.may_use(&parsed.model) {
        let error = ApiError::new(
            ErrorClass::PermissionDenied,
            format!("The key '{}' may not use the model '{}'.", key.principal.key_id, parsed.model),
        )
        .with_code("model_not_allowed");
        return refuse(
            draft,
            dialect,
            ApiError { param: Some("model".into()), ..error },
            OutcomeStatus::BlockedByPolicy,
        );
    }
    if let (Some(cap), Some(asked)) = (key.max_tokens_cap, parsed.max_tokens)
        && asked > cap
    {
        let param = if endpoint == Endpoint::ChatCompletions && parsed.body.contains_key("max_completion_tokens") {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        let error = ApiError::invalid(param, format!("{param} is {asked}, above this key's limit of {cap}."))
            .with_code("max_tokens_above_limit");
        return refuse(draft, dialect, error, OutcomeStatus::BlockedByPolicy);
    }
    // A request that sets no output limit is held to the key's cap all the same.
    if let (Some(cap), None) = (key.max_tokens_cap, parsed.max_tokens)
        && endpoint.generates()
    {
        parsed.max_tokens = Some(cap);
        parsed.imposed_max_tokens = Some(cap);
        parsed.changed = true;
    }
    let routes = state.routes.load();
    let targets: Vec<Target> = routes
        .models
        .get(&parsed.model)
        .into_iter()
        .flatten()
        .filter(|target| {
            routes
                .upstreams
                .get(&target.upstream)
                .is_some_and(|upstream| upstream.config.kind == endpoint.upstream_kind())
        })
        .cloned()
        .collect();
    if targets.is_empty() {
        let message = if routes.models.contains_key(&parsed.model) {
            format!("The model '{}' is not served on {}.", parsed.model, endpoint.path())
        } else {
            format!("The model '{}' does not exist or you do not have access to it.", parsed.model)
        };
        let error = ApiError { param: Some("model".into()), ..ApiError::new(ErrorClass::NotFound, message) }
            .with_code("model_not_found");
        return refuse(draft, dialect, error, OutcomeStatus::InvalidRequest);
    }

    let guard = guard_prompt(&mut parsed.body, key.pii_guard);
    if key.pii_guard == PiiMode::Block && !guard.kinds.is_empty() {
        let kinds: Vec<&str> = guard.kinds.iter().map(|kind| kind.label()).collect();
        let error = ApiError::invalid(
            "messages",
            format!(
                "The request was blocked by policy: the prompt contains {} (found by the gateway's PII guard).",
                kinds.join(", ")
            ),
        )
        .with_code("pii_detected");
        return refuse(draft, dialect, error, OutcomeStatus::BlockedByPolicy);
    }
    if guard.redacted {
        parsed.changed = true;
        tracing::debug!(kinds = ?guard.kinds, "PII redacted from the prompt");
    }

    // Rate limits and budgets; the prompt's tokens are counted at most once, and only
    // when a token limit or a hard budget needs them. (A block, so nothing here is held
    // across the upstream call.)
    {
        let prompt_tokens = std::cell::OnceCell::new();
        let count_prompt = || *prompt_tokens.get_or_init(|| usage::count_tokens(&usage::prompt_text(&parsed.body)));
        if let Some(limits) = &key.rate_limits {
            let tokens =
                || count_prompt().saturating_add(parsed.max_tokens.unwrap_or(0).saturating_mul(parsed.choices));
            if let Err(over) = limits.check(tokens) {
                let mut error = ApiError::new(ErrorClass::RateLimited, over.message).with_code("rate_limit_exceeded");
                if over.retry_after.is_none() {
                    // It can never fit: a 429 would make SDKs retry in vain.
                    error = ApiError { class: ErrorClass::InvalidRequest, param: Some("max_tokens".into()), ..error };
                }
                let mut response = refuse(draft, dialect, error, OutcomeStatus::RateLimited);
                if let Some(wait) = over.retry_after {
                    let headers = response.headers_mut();
                    if let Ok(value) = HeaderValue::from_str(&wait.as_secs().saturating_add(1).to_string()) {
                        headers.insert(header::RETRY_AFTER, value);
                    }
                    if let Ok(value) = HeaderValue::from_str(&wait.as_millis().to_string()) {
                        headers.insert("retry-after-ms", value);
                    }
                }
                return response;
            }
        }

        let worst_case = || worst_case_cost(&state, &routes, &targets, &parsed, count_prompt());
        match state.quota.admit(&key.principal, worst_case, tollgate_schemas::now_unix_micros()) {
            // Settling prices the call, so it is kept only when a budget governs it.
            Ok(admission) if admission.governs() => draft.quota = Some((admission, state.quota.catalog())),
            Ok(_) => {}
            Err(refusal) => {
                tracing::info!(subject = %refusal.subject, budget = %refusal.budget_id, "request refused by budget");
                let error = ApiError::new(ErrorClass::BudgetExceeded, refusal.message).with_code("budget_exceeded");
                return refuse(draft, dialect, error, OutcomeStatus::BlockedByBudget);
            }
        }
    }

    forward(&state, &routes, endpoint, &parts.headers, parsed, &targets, draft).await
}

/// Output tokens assumed for a request that sets no limit, for a model whose catalog
/// entry gives no maximum.
const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4_096;

/// The most the call can cost at the dearest of its targets: its prompt's tokens and its
/// output limit at catalog prices. Zero for models the catalog does not price.
fn worst_case_cost(
    state: &GatewayState,
    routes: &Routes,
    targets: &[Target],
    parsed: &Parsed,
    input_tokens: u64,
) -> tollgate_schemas::Nanodollars {
    let catalog = state.quota.catalog();
    targets
        .iter()
        .filter_map(|target| {
            let upstream = routes.upstreams.get(&target.upstream)?;
            let price = catalog.model(&upstream.config.provider, &target.model)?;
            let per_choice = parsed.max_tokens.or(price.max_output_tokens).unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
            Some(price.worst_case(input_tokens, per_choice.saturating_mul(parsed.choices)))
        })
        .max()
        .unwrap_or_default()
}

fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(text) = content_type.to_str() else { return false };
    let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

enum BodyError {
    TooLarge,
    Read(String),
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return Err(BodyError::TooLarge);
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(error) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>())
                || error.to_string().contains("length limit");
            if too_large { Err(BodyError::TooLarge) } else { Err(BodyError::Read(error.to_string())) }
        }
    }
}

/// Records a refused call and answers with `error`.
fn refuse(draft: Draft, dialect: Dialect, error: ApiError, status: OutcomeStatus) -> Response {
    let id = draft.id;
    let error_type = error.code.map_or_else(|| status.as_str().to_owned(), str::to_owned);
    let ending = Ending::new(status, Some(error.status().as_u16())).with_error(error_type, error.message.clone());
    let body = serde_json::to_vec(&error.body(dialect)).unwrap_or_default();
    let mut tap = draft.response_tap();
    tap.sent(&body);
    draft.finish(ending, tap);
    with_interaction_id((error.status(), [(header::CONTENT_TYPE, "application/json")], body).into_response(), id)
}

fn with_interaction_id(mut response: Response, id: uuid::Uuid) -> Response {
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(INTERACTION_ID_HEADER, value);
    }
    response
}

/// Why an attempt failed, when it is worth another try.
#[derive(Debug)]
enum Failure {
    /// The upstream answered 429 or 5xx. Kept so the last one can be passed back.
    Status {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        retry_after: Option<Duration>,
    },
    Timeout,
    Unreachable(String),
}

/// A finished attempt.
enum Attempt {
    /// 2xx with a complete body, or a 4xx to pass back.
    Complete {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// 2xx event stream, not yet read.
    Stream(reqwest::Response),
    Retry(Failure),
}

/// Sends the call to `targets` in order over `routes`, the snapshot the request started with.
async fn forward(
    state: &GatewayState,
    routes: &Routes,
    endpoint: Endpoint,
    client_headers: &HeaderMap,
    mut parsed: Parsed,
    targets: &[Target],
    mut draft: Draft,
) -> Response {
    let dialect = endpoint.dialect();
    let routing = &state.config.routing;
    // Usage for OpenAI streams comes in an extra chunk the client may not have asked for.
    let inject_usage = endpoint == Endpoint::ChatCompletions && parsed.stream && !parsed.client_requested_usage;
    let traceparent = draft.trace.traceparent();
    let mut last_failure: Option<Failure> = None;
    draft.preferred_upstream = targets.first().map(|target| target.upstream.clone());

    'targets: for (index, target) in targets.iter().enumerate() {
        let Some(upstream) = routes.upstreams.get(&target.upstream) else { continue };
        let body = if target.model == parsed.model && !inject_usage && !parsed.changed {
            // Nothing to change: the client's bytes go upstream untouched.
            parsed.original.clone()
        } else {
            let limit = parsed.imposed_max_tokens.map(|cap| (output_limit_field(&upstream.config.provider), cap));
            upstream_body(&parsed.body, &target.model, inject_usage, limit)
        };
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(routing.backoff_initial)
            .with_max_delay(routing.backoff_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        for attempt_on_target in 0..routing.attempts_per_target {
            let Some(admission) = upstream.breaker.admit(Instant::now()) else {
                tracing::debug!(upstream = %upstream.config.name, "circuit breaker open; skipping target");
                continue 'targets;
            };
            draft.attempts += 1;
            draft.fallback_used = index > 0;
            draft.upstream = Some(upstream.config.name.clone());
            draft.provider = Some(upstream.config.provider.clone());
            draft.routed_model = Some(target.model.clone());

            let sent = Instant::now();
            let attempt = attempt(upstream, endpoint, client_headers, &traceparent, body.clone(), parsed.stream).await;
            draft.waited += sent.elapsed();
            let healthy = !matches!(attempt, Attempt::Retry(_));
            let result = match &attempt {
                Attempt::Complete { status, .. } if status.is_success() => "ok",
                Attempt::Stream(_) => "ok",
                Attempt::Complete { .. } => "client_error",
                Attempt::Retry(Failure::Status { status, .. }) if *status == StatusCode::TOO_MANY_REQUESTS => {
                    "rate_limited"
                }
                Attempt::Retry(Failure::Status { .. }) => "server_error",
                Attempt::Retry(Failure::Timeout) => "timeout",
                Attempt::Retry(Failure::Unreachable(_)) => "unreachable",
            };
            state
                .metrics
                .upstream_attempts
                .get_or_create(&AttemptLabels { upstream: upstream.config.name.clone(), result })
                .inc();
            if let Some(change) = upstream.breaker.record(admission, healthy, Instant::now()) {
                let reason = match &attempt {
                    Attempt::Retry(failure) => Some(failure_summary(failure)),
                    _ => None,
                };
                breaker_moved(state, upstream, change, reason);
            }
            let failure = match attempt {
                Attempt::Complete { status, headers, body } => {
                    return complete(draft, dialect, &parsed.body, status, &headers, body);
                }
                Attempt::Stream(response) => {
                    let request_body = std::mem::take(&mut parsed.body);
                    let id = draft.id;
                    let mut builder = Response::builder().status(response.status());
                    for (name, value) in response.headers() {
                        if is_passed_back(name) {
                            builder = builder.header(name, value);
                        }
                    }
                    let idle_timeout = upstream.config.request_timeout;
                    let stream = MeteredStream::new(response, dialect, inject_usage, request_body, idle_timeout, draft);
                    let response = builder.body(Body::from_stream(stream)).unwrap_or_else(|error| {
                        tracing::error!(%error, "could not build the streaming response");
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    });
                    return with_interaction_id(response, id);
                }
                Attempt::Retry(failure) => failure,
            };
            tracing::info!(
                upstream = %upstream.config.name,
                attempt = draft.attempts,
                failure = ?failure_summary(&failure),
                "upstream attempt failed"
            );
            let retry_after = match &failure {
                Failure::Status { retry_after, .. } => *retry_after,
                _ => None,
            };
            last_failure = Some(failure);
            if attempt_on_target + 1 >= routing.attempts_per_target {
                break;
            }
            let delay = match retry_after {
                Some(wait) if wait > routing.max_retry_after => continue 'targets,
                Some(wait) => wait,
                None => delays.next().unwrap_or(routing.backoff_max),
            };
            let slept = Instant::now();
            tokio::time::sleep(delay).await;
            draft.waited += slept.elapsed();
        }
    }

    match last_failure {
        Some(Failure::Status { status, headers, body, .. }) => {
            // The provider's own error, passed back as it came.
            let error_message = String::from_utf8_lossy(&body).chars().take(512).collect::<String>();
            let ending = Ending::new(OutcomeStatus::UpstreamError, Some(status.as_u16()))
                .with_error("upstream_error", error_message);
            let id = draft.id;
            let mut tap = draft.response_tap();
            tap.sent(&body);
            draft.finish(ending, tap);
            with_interaction_id(passthrough(status, &headers, body), id)
        }
        Some(Failure::Timeout) => {
            let error = ApiError::new(ErrorClass::UpstreamTimeout, "The upstream provider did not answer in time.")
                .with_code("upstream_timeout");
            refuse(draft, dialect, error, OutcomeStatus::Timeout)
        }
        Some(Failure::Unreachable(detail)) => {
            tracing::warn!(%detail, "no upstream could be reached");
            let error = ApiError::new(ErrorClass::Upstream, "The upstream provider could not be reached.")
                .with_code("upstream_unreachable");
            refuse(draft, dialect, error, OutcomeStatus::UpstreamUnreachable)
        }
        None => {
            let error = ApiError::new(
                ErrorClass::Unavailable,
                format!("Every upstream for '{}' is failing; try again shortly.", parsed.model),
            )
            .with_code("upstream_unavailable");
            refuse(draft, dialect, error, OutcomeStatus::UpstreamUnreachable)
        }
    }
}

fn failure_summary(failure: &Failure) -> String {
    match failure {
        Failure::Status { status, .. } => format!("status {status}"),
        Failure::Timeout => "timeout".to_owned(),
        Failure::Unreachable(detail) => format!("unreachable: {detail}"),
    }
}

/// Logs a breaker's change and records the start or end of an outage window as an
/// [`UpstreamHealth`] event.
fn breaker_moved(state: &GatewayState, upstream: &UpstreamClient, change: BreakerChange, reason: Option<String>) {
    let name = &upstream.config.name;
    let transition = if change.opened() {
        tracing::warn!(upstream = %name, failures = change.consecutive_failures, reason = reason.as_deref().unwrap_or(""), "circuit breaker opened");
        BreakerTransition::Opened
    } else if change.closed() {
        tracing::info!(upstream = %name, "circuit breaker closed");
        BreakerTransition::Closed
    } else {
        tracing::debug!(upstream = %name, from = change.from.as_str(), to = change.to.as_str(), "circuit breaker moved");
        return;
    };
    let opened = transition == BreakerTransition::Opened;
    let reason = reason.filter(|_| opened);
    let failures = if opened { change.consecutive_failures } else { 0 };
    state.recorder.record_health(&health_event(state, upstream, transition, failures, reason));
}

/// An [`UpstreamHealth`] event of this gateway instance for `upstream`, now.
pub(crate) fn health_event(
    state: &GatewayState,
    upstream: &UpstreamClient,
    transition: BreakerTransition,
    consecutive_failures: u32,
    reason: Option<String>,
) -> UpstreamHealth {
    UpstreamHealth {
        schema_version: tollgate_schemas::SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: tollgate_schemas::now_unix_micros(),
        gateway_instance: state.instance.to_string(),
        upstream: upstream.config.name.clone(),
        provider: upstream.config.provider.clone(),
        transition,
        consecutive_failures,
        cool_down_millis: u64::try_from(upstream.breaker.cool_down().as_millis()).unwrap_or(u64::MAX),
        reason: reason.map(|reason| tollgate_schemas::prefix_within(&reason, MAX_HEALTH_REASON_BYTES).to_owned()),
    }
}

/// The field an OpenAI-compatible upstream of `provider` reads the output limit from:
/// OpenAI's own API refuses `max_tokens` for its reasoning models, while self-hosted
/// servers read `max_tokens`, which some know alone.
fn output_limit_field(provider: &str) -> &'static str {
    match provider {
        "openai" | "azure" | "azure.ai.openai" => "max_completion_tokens",
        _ => "max_tokens",
    }
}

/// The body sent to one target: the client's, with the routed model name, the output
/// `limit` (field, tokens) the gateway imposes, and, when the gateway needs usage the
/// client did not ask for, `stream_options.include_usage`.
fn upstream_body(
    client_body: &Map<String, Value>,
    model: &str,
    inject_usage: bool,
    limit: Option<(&str, u64)>,
) -> Bytes {
    let mut body = client_body.clone();
    body.insert("model".to_owned(), Value::String(model.to_owned()));
    if let Some((field, tokens)) = limit {
        body.insert(field.to_owned(), Value::from(tokens));
    }
    if inject_usage {
        let options = body.entry("stream_options").or_insert_with(|| json!({}));
        if let Value::Object(options) = options {
            options.insert("include_usage".to_owned(), Value::Bool(true));
        } else {
            *options = json!({"include_usage": true});
        }
    }
    Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default())
}

async fn attempt(
    upstream: &UpstreamClient,
    endpoint: Endpoint,
    client_headers: &HeaderMap,
    traceparent: &str,
    body: Bytes,
    stream: bool,
) -> Attempt {
    let deadline = tokio::time::Instant::now() + upstream.config.request_timeout;
    let request = upstream.post(endpoint.path(), client_headers, Some(traceparent), body);
    let response = match tokio::time::timeout_at(deadline, request.send()).await {
        Err(_elapsed) => return Attempt::Retry(Failure::Timeout),
        Ok(Err(error)) if error.is_timeout() => return Attempt::Retry(Failure::Timeout),
        Ok(Err(error)) => return Attempt::Retry(Failure::Unreachable(error_chain(&error))),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    let is_event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    if status.is_success() && stream && is_event_stream {
        return Attempt::Stream(response);
    }
    let headers = response.headers().clone();
    let body = match tokio::time::timeout_at(deadline, response.bytes()).await {
        Err(_elapsed) => return Attempt::Retry(Failure::Timeout),
        Ok(Err(error)) if error.is_timeout() => return Attempt::Retry(Failure::Timeout),
        Ok(Err(error)) => return Attempt::Retry(Failure::Unreachable(error_chain(&error))),
        Ok(Ok(body)) => body,
    };
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let retry_after = retry_after(&headers);
        return Attempt::Retry(Failure::Status { status, headers, body, retry_after });
    }
    Attempt::Complete { status, headers, body }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How long the upstream asked to be left alone: `retry-after-ms` (OpenAI), or
/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(millis) =
        headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok())
        && let Ok(wait) = Duration::try_from_secs_f64(millis / 1000.0)
    {
        // `try_from`: a negative, infinite or absurdly large value is ignored, not a panic.
        return Some(wait);
    }
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

fn passthrough(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        if is_passed_back(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// Records and passes back a complete (non-streamed) upstream answer.
fn complete(
    draft: Draft,
    dialect: Dialect,
    request_body: &Map<String, Value>,
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let id = draft.id;
    let mut ending = if status.is_success() {
        Ending::new(OutcomeStatus::Ok, Some(status.as_u16()))
    } else {
        let message = String::from_utf8_lossy(&body).chars().take(512).collect::<String>();
        Ending::new(OutcomeStatus::UpstreamError, Some(status.as_u16())).with_error("upstream_error", message)
    };
    if status.is_success() {
        // Only the model and the usage are read; the rest of the answer is skipped
        // without being built.
        #[derive(serde::Deserialize)]
        struct Metered {
            model: Option<String>,
            usage: Option<Value>,
        }
        let metered: Option<Metered> = serde_json::from_slice(&body).ok();
        let (model, reported) = match metered {
            Some(Metered { model, usage }) => (
                model,
                usage.as_ref().and_then(|usage| match dialect {
                    Dialect::OpenAi => usage::from_openai(usage),
                    Dialect::Anthropic => usage::from_anthropic(usage),
                }),
            ),
            None => (None, None),
        };
        ending.response_model = model;
        ending.usage = reported.unwrap_or_else(|| {
            let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            estimate_complete(request_body, &parsed)
        });
    }
    let mut tap = draft.response_tap();
    tap.sent(&body);
    draft.finish(ending, tap);
    with_interaction_id(passthrough(status, headers, body), id)
}

/// Usage counted with the tokenizer for a complete answer that reported none.
fn estimate_complete(request_body: &Map<String, Value>, response: &Value) -> tollgate_schemas::Usage {
    let mut output = String::new();
    for choice in response.get("choices").and_then(Value::as_array).into_iter().flatten() {
        if let Some(text) = choice.get("message").and_then(|m| m.get("content")).and_then(Value::as_str) {
            output.push_str(text);
        }
    }
    for block in response.get("content").and_then(Value::as_array).into_iter().flatten() {
        if let Some(text) = block.get("text").and_then(Value::as_str) {
            output.push_str(text);
        }
    }
    tollgate_schemas::Usage {
        input_tokens: usage::count_tokens(&usage::prompt_text(request_body)),
        output_tokens: usage::count_tokens(&output),
        estimated: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_milliseconds_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        headers.remove("retry-after-ms");
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30), "{wait:?}");
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
        for hostile in ["1e300", "-5", "inf", "NaN"] {
            headers.insert("retry-after-ms", HeaderValue::from_static(hostile));
            assert_eq!(retry_after(&headers), None, "{hostile}");
        }
    }

    #[test]
    fn the_upstream_body_gets_the_routed_model_and_usage_when_needed() {
        let client = json!({"model": "public", "stream": true, "stream_options": {"x": 1}, "tools": [1]});
        let Value::Object(client) = client else { unreachable!() };
        let body: Value = serde_json::from_slice(&upstream_body(&client, "routed", true, None)).unwrap();
        assert_eq!(body["model"], "routed");
        assert_eq!(body["stream_options"], json!({"x": 1, "include_usage": true}));
        assert_eq!(body["tools"], json!([1]));
        let untouched: Value = serde_json::from_slice(&upstream_body(&client, "routed", false, None)).unwrap();
        assert_eq!(untouched["stream_options"], json!({"x": 1}));
        assert!(untouched.get("max_tokens").is_none() && untouched.get("max_completion_tokens").is_none());
        let capped = upstream_body(&client, "routed", false, Some((output_limit_field("openai"), 512)));
        let capped: Value = serde_json::from_slice(&capped).unwrap();
        assert_eq!(capped["max_completion_tokens"], 512);
        let capped = upstream_body(&client, "routed", false, Some((output_limit_field("vllm"), 512)));
        assert_eq!(serde_json::from_slice::<Value>(&capped).unwrap()["max_tokens"], 512);
    }

    #[test]
    fn json_content_types() {
        for good in
            ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.x+json"]
        {
            assert!(is_json(&HeaderValue::from_static(good)), "{good}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            assert!(!is_json(&HeaderValue::from_static(bad)), "{bad}");
        }
    }
}
