//! A simulated model provider that speaks the OpenAI and Anthropic wire formats, for tests
//! and demos on machines that cannot reach a real provider.
//!
//! It serves `POST /v1/chat/completions` (JSON and SSE, with the usage chunk when
//! `stream_options.include_usage` is set), `POST /v1/embeddings`, `GET /v1/models` and
//! `POST /v1/messages` (JSON and the Anthropic event stream). Replies are deterministic:
//! the text echoes the last 60 characters of the prompt (system text and message text),
//! and usage is counted from the text (about four characters a token), so a test can
//! predict it.
//!
//! A [`SimulatorControl`] shared with the router lets a test inject failures and latency
//! and count the requests that reached the upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

use crate::error::{ApiError, Dialect, ErrorClass};
use crate::request::{parse_chat_completion, parse_embeddings, parse_messages};

/// Knobs a test turns while the simulator runs.
#[derive(Debug, Default)]
pub struct SimulatorControl {
    /// When non-zero, every request is answered with this status and a provider error body.
    fail_with_status: AtomicU16,
    /// Delay before answering, and between stream chunks, in milliseconds.
    delay_millis: AtomicU64,
    /// Extra delay between stream chunks only, in milliseconds (a stream that stalls).
    stream_gap_millis: AtomicU64,
    /// Requests received, failed ones included.
    requests: AtomicU64,
    /// Headers of the last chat completion request, for tests of what the gateway sends.
    last_headers: std::sync::Mutex<axum::http::HeaderMap>,
    /// Body of the last chat completion request, likewise.
    last_body: std::sync::Mutex<Bytes>,
    /// Behave like a real provider: replies of varied length, a time to first token and a
    /// pace per chunk that vary, and now and then a 429 or 503.
    realistic: AtomicBool,
}

impl SimulatorControl {
    /// A simulator that behaves like a real provider (for demonstrations): replies of
    /// 20 to 300 words, 80 to 400 ms before the first token and 10 to 40 ms per chunk,
    /// and about one request in fifty answered with a 429 or a 503.
    pub fn realistic() -> Self {
        let control = SimulatorControl::default();
        control.realistic.store(true, Ordering::SeqCst);
        control
    }

    fn is_realistic(&self) -> bool {
        self.realistic.load(Ordering::Relaxed)
    }

    pub fn fail_with(&self, status: Option<StatusCode>) {
        self.fail_with_status.store(status.map_or(0, |status| status.as_u16()), Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_millis.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Adds `gap` between stream chunks, on top of the delay, once the stream has begun.
    pub fn set_stream_gap(&self, gap: Duration) {
        self.stream_gap_millis.store(u64::try_from(gap.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    fn chunk_delay(&self) -> Duration {
        let pace =
            if self.is_realistic() { Duration::from_millis(rand::random_range(10..=40)) } else { Duration::ZERO };
        self.delay() + pace + Duration::from_millis(self.stream_gap_millis.load(Ordering::SeqCst))
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The headers of the last chat completion request received.
    pub fn last_headers(&self) -> axum::http::HeaderMap {
        self.last_headers.lock().map(|headers| headers.clone()).unwrap_or_default()
    }

    /// The body of the last chat completion request received.
    pub fn last_body(&self) -> Bytes {
        self.last_body.lock().map(|body| body.clone()).unwrap_or_default()
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_millis.load(Ordering::SeqCst))
    }

    /// Counts the request, waits the configured delay, and returns the injected failure.
    async fn arrive(&self, dialect: Dialect) -> Result<(), Response> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut delay = self.delay();
        let mut failure = self.fail_with_status.load(Ordering::SeqCst);
        if self.is_realistic() {
            delay += Duration::from_millis(rand::random_range(80..=400));
            if failure == 0 && rand::random_ratio(1, 50) {
                failure = if rand::random_bool(0.5) { 429 } else { 503 };
            }
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match failure {
            0 => Ok(()),
            code => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let class = match status.as_u16() {
                    401 => ErrorClass::Authentication,
                    403 => ErrorClass::PermissionDenied,
                    404 => ErrorClass::NotFound,
                    413 => ErrorClass::RequestTooLarge,
                    429 => ErrorClass::RateLimited,
                    503 => ErrorClass::Unavailable,
                    400..=499 => ErrorClass::InvalidRequest,
                    _ => ErrorClass::Internal,
                };
                let error = ApiError::new(class, format!("simulated upstream failure ({status})"));
                Err((status, axum::Json(error.body(dialect))).into_response())
            }
        }
    }
}

/// Counts the request, applies injected delay and failure, then parses the body with
/// `parse`; either step's failure is the response to send, in `dialect`'s layout.
async fn admit<T>(
    control: &SimulatorControl,
    dialect: Dialect,
    body: &[u8],
    parse: fn(&[u8]) -> Result<T, ApiError>,
) -> Result<T, Response> {
    control.arrive(dialect).await?;
    parse(body).map_err(|error| error.into_response(dialect))
}

/// The models the simulator lists; it answers for any model name.
const MODELS: [&str; 4] = ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4-5"];

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// The simulator's routes, sharing `control`: the providers' under `/v1`, and a
/// simulated CRM tool server ([`SimulatedCrm`]) over MCP Streamable HTTP at `/mcp`.
pub fn router(control: Arc<SimulatorControl>) -> Router {
    let crm = StreamableHttpService::new(
        || Ok(SimulatedCrm),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/messages", post(messages))
        .with_state(control)
        .nest_service("/mcp", crm)
}

/// A simulated CRM behind MCP, with three tools: `lookup_customer` (its answer carries a
/// customer's email and phone number), `search_tickets`, and `delete_customer` (for
/// trying tool deny-lists).
#[derive(Debug, Clone, Copy)]
pub struct SimulatedCrm;

impl ServerHandler for SimulatedCrm {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = |property: &str| {
            let mut schema = serde_json::Map::new();
            schema.insert("type".to_owned(), json!("object"));
            schema.insert("properties".to_owned(), json!({ property: {"type": "string"} }));
            schema.insert("required".to_owned(), json!([property]));
            schema
        };
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("lookup_customer", "A customer's record by id.", schema("customer_id")),
            Tool::new("search_tickets", "Support tickets matching a query.", schema("query")),
            Tool::new("delete_customer", "Deletes a customer's record.", schema("customer_id")),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let argument = |name: &str| {
            request.arguments.as_ref().and_then(|arguments| arguments.get(name)).and_then(Value::as_str).unwrap_or("")
        };
        tokio::time::sleep(Duration::from_millis(rand::random_range(5..=60))).await;
        let text = match request.name.as_ref() {
            "lookup_customer" => format!(
                "Customer {}: Ada Lovelace, ada.lovelace@example.com, +44 20 7946 0958, plan enterprise",
                argument("customer_id")
            ),
            "search_tickets" => {
                format!("3 tickets match `{}`: #4411 (open), #4398 (pending), #4207 (closed)", argument("query"))
            }
            "delete_customer" => format!("customer {} deleted", argument("customer_id")),
            other => return Err(ErrorData::invalid_params(format!("no tool `{other}`"), None)),
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// Tokens in `text` as the simulator counts them: about four characters a token.
pub fn simulated_tokens(text: &str) -> u64 {
    u64::try_from(text.chars().count().div_ceil(4)).unwrap_or(u64::MAX)
}

fn prompt_text(body: &serde_json::Map<String, Value>) -> String {
    let mut text = String::new();
    if let Some(system) = body.get("system").and_then(Value::as_str) {
        text.push_str(system);
    }
    for message in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        match message.get("content") {
            Some(Value::String(content)) => text.push_str(content),
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(part_text) = part.get("text").and_then(Value::as_str) {
                        text.push_str(part_text);
                    }
                }
            }
            _ => {}
        }
    }
    text
}

fn reply_to(prompt: &str, realistic: bool) -> String {
    let echoed: String = prompt.chars().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
    let mut reply = format!("Simulated reply. You said: {echoed}");
    if realistic {
        const WORDS: &[&str] = &[
            "the", "budget", "model", "answer", "request", "team", "policy", "report", "token", "latency", "provider",
            "summary", "customer", "quarter", "forecast", "because", "and", "with", "which", "should", "review",
        ];
        for _ in 0..rand::random_range(20..=300) {
            reply.push(' ');
            reply.push_str(WORDS[rand::random_range(0..WORDS.len())]);
        }
        reply.push('.');
    }
    reply
}

/// The reply split into stream chunks of a few words each.
fn chunks(reply: &str) -> Vec<String> {
    let words: Vec<&str> = reply.split_inclusive(' ').collect();
    words.chunks(3).map(|chunk| chunk.concat()).collect()
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn sse_stream(events: Vec<Event>, delay: Duration) -> Response {
    let stream = futures::stream::iter(events).then(move |event| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, Infallible>(event)
    });
    Sse::new(stream).into_response()
}

async fn chat_completions(
    State(control): State<Arc<SimulatorControl>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    if let Ok(mut last) = control.last_headers.lock() {
        *last = headers;
    }
    if let Ok(mut last) = control.last_body.lock() {
        *last = body.clone();
    }
    let request = match admit(&control, Dialect::OpenAi, &body, parse_chat_completion).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let prompt = prompt_text(&request.body);
    let reply = reply_to(&prompt, control.is_realistic());
    let prompt_tokens = simulated_tokens(&prompt);
    let completion_tokens = simulated_tokens(&reply);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    });
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let created = unix_seconds();
    if !request.stream {
        return axum::Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": request.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish_reason: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": request.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    events.extend(chunks(&reply).into_iter().map(|text| chunk(json!({"content": text}), Value::Null)));
    events.push(chunk(json!({}), json!("stop")));
    if request.client_requested_usage {
        events.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": request.model,
            "choices": [], "usage": usage,
        }));
    }
    let mut sse: Vec<Event> = events.iter().map(|event| Event::default().data(event.to_string())).collect();
    sse.push(Event::default().data("[DONE]"));
    sse_stream(sse, control.chunk_delay())
}

async fn embeddings(State(control): State<Arc<SimulatorControl>>, body: Bytes) -> Response {
    let request = match admit(&control, Dialect::OpenAi, &body, parse_embeddings).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let inputs: Vec<String> = match request.body.get("input") {
        Some(Value::Array(items)) => items.iter().map(Value::to_string).collect(),
        Some(other) => vec![other.to_string()],
        None => Vec::new(),
    };
    let prompt_tokens: u64 = inputs.iter().map(|input| simulated_tokens(input)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            // A small deterministic vector derived from the input's bytes.
            let vector: Vec<f64> = (0..8)
                .map(|dimension| {
                    let byte = input.as_bytes().get(dimension).copied().unwrap_or(0);
                    f64::from(byte) / 255.0
                })
                .collect();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response()
}

async fn models(State(control): State<Arc<SimulatorControl>>) -> Response {
    if let Err(failure) = control.arrive(Dialect::OpenAi).await {
        return failure;
    }
    let data: Vec<Value> = MODELS
        .iter()
        .map(|model| json!({"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "simulator"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn messages(State(control): State<Arc<SimulatorControl>>, body: Bytes) -> Response {
    let request = match admit(&control, Dialect::Anthropic, &body, parse_messages).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let prompt = prompt_text(&request.body);
    let reply = reply_to(&prompt, control.is_realistic());
    let input_tokens = simulated_tokens(&prompt);
    let output_tokens = simulated_tokens(&reply);
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    if !request.stream {
        return axum::Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }))
        .into_response();
    }
    let event = |name: &str, data: Value| Event::default().event(name).data(data.to_string());
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": request.model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            }}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    events.extend(chunks(&reply).into_iter().map(|text| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        )
    }));
    events.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    sse_stream(events, control.chunk_delay())
}
