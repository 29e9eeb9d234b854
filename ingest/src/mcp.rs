//! The MCP proxy: `/mcp/{server}` serves each configured MCP server over the Streamable
//! HTTP transport, with the same virtual keys, policy, budgets and recording as model
//! traffic.
//!
//! The protocol work is the official Rust SDK's (`rmcp`): its Streamable HTTP service
//! speaks to clients (sessions, the GET stream, DELETE, protocol version negotiation) and
//! its client speaks to the upstream server, a local program over stdio or a remote
//! Streamable HTTP endpoint. Between the two sits [`Governed`], which authorizes, guards,
//! forwards and records each request.
//!
//! Each upstream server has one connection shared by every client session, kept by a
//! supervisor task that (re)starts it with backoff; a request in flight when the server
//! dies gets a JSON-RPC error saying so, and the next one waits for the restart. The
//! gateway announces no client capabilities upstream, so a server cannot ask the client
//! for sampling, roots or elicitation through it, and server notifications are not relayed.
//!
//! In front of the SDK, [`handle`] authenticates the key and checks the body as JSON-RPC
//! 2.0, so bad input gets the codes the JSON-RPC spec prescribes (`-32700` parse error,
//! `-32600` invalid request, `-32602` invalid params) in a JSON-RPC body, whatever the
//! status. Gateway refusals use codes from the implementation-defined range: see
//! [`codes`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backon::BackoffBuilder;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::BodyExt;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, ClientRequest,
    CompleteRequest, CompleteRequestParams, CompleteResult, CustomRequest, CustomResult, ErrorCode, GetPromptRequest,
    GetPromptRequestParams, GetPromptResponse, Implementation, InitializeRequestParams, InitializeResult,
    ListPromptsRequest, ListPromptsResult, ListResourceTemplatesRequest, ListResourceTemplatesResult,
    ListResourcesRequest, ListResourcesResult, ListToolsRequest, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequest, ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
    ServerResult,
};
use rmcp::service::{Peer, PeerRequestOptions, RequestContext, RunningService, ServiceError};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ErrorData as McpError, RoleClient, RoleServer, ServerHandler, ServiceExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tollgate_schemas::limits::{MAX_ID_BYTES, MAX_NAME_BYTES};
use tollgate_schemas::{GenAiOperation, OutcomeStatus, ToolCall};

use crate::app::GatewayState;
use crate::config::{McpServerConfig, McpTransport};
use crate::draft::{Draft, Ending, trace_context};
use crate::keys::VirtualKey;
use crate::policy::{PiiMode, guard_json};

/// JSON-RPC error codes the gateway itself answers with. The standard ones come from the
/// JSON-RPC 2.0 specification; the rest are in its implementation-defined server range.
pub mod codes {
    use rmcp::model::ErrorCode;

    pub const PARSE_ERROR: ErrorCode = ErrorCode::PARSE_ERROR;
    pub const INVALID_REQUEST: ErrorCode = ErrorCode::INVALID_REQUEST;
    pub const INVALID_PARAMS: ErrorCode = ErrorCode::INVALID_PARAMS;
    /// No key, or an unknown or revoked one (HTTP 401).
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(-32001);
    /// Refused by policy: a denied tool, or PII in the arguments under the `block` guard.
    pub const DENIED_BY_POLICY: ErrorCode = ErrorCode(-32003);
    /// A hard budget of the caller is exhausted.
    pub const BUDGET_EXCEEDED: ErrorCode = ErrorCode(-32004);
    /// A per-tool rate limit; `data.retry_after_ms` says when to retry.
    pub const RATE_LIMITED: ErrorCode = ErrorCode(-32005);
    /// The upstream MCP server cannot be reached (not started yet, exited, refused).
    pub const UPSTREAM_UNAVAILABLE: ErrorCode = ErrorCode(-32010);
    /// The upstream MCP server did not answer within the server's `call_timeout_ms`.
    pub const UPSTREAM_TIMEOUT: ErrorCode = ErrorCode(-32011);
}

/// The route label of MCP requests in metrics.
const ROUTE: &str = "/mcp";
/// How long a request waits for its server to (re)connect before giving up.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long the upstream `initialize` handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The configured MCP servers and their Streamable HTTP services.
pub struct McpServers {
    servers: BTreeMap<String, Arc<McpServer>>,
    services: BTreeMap<String, StreamableHttpService<Governed, LocalSessionManager>>,
    state: Arc<Mutex<Option<std::sync::Weak<GatewayState>>>>,
}

impl std::fmt::Debug for McpServers {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("McpServers").field("servers", &self.servers.keys().collect::<Vec<_>>()).finish()
    }
}

impl McpServers {
    /// The servers of `configs`; nothing starts until [`McpServers::start`] or the first
    /// request.
    pub fn new(configs: &BTreeMap<String, McpServerConfig>, allowed_hosts: &[String]) -> Self {
        let state: Arc<Mutex<Option<std::sync::Weak<GatewayState>>>> = Arc::new(Mutex::new(None));
        let mut servers = BTreeMap::new();
        let mut services = BTreeMap::new();
        for (name, config) in configs {
            let server = Arc::new(McpServer::new(config.clone()));
            let factory_server = Arc::clone(&server);
            let factory_state = Arc::clone(&state);
            let service = StreamableHttpService::new(
                move || {
                    let state = factory_state
                        .lock()
                        .map_err(|_| std::io::Error::other("gateway state lock poisoned"))?
                        .as_ref()
                        .and_then(std::sync::Weak::upgrade)
                        .ok_or_else(|| std::io::Error::other("the gateway is shutting down"))?;
                    Ok(Governed { state, server: Arc::clone(&factory_server) })
                },
                Arc::new(LocalSessionManager::default()),
                StreamableHttpServerConfig::default().with_allowed_hosts(allowed_hosts.iter().cloned()),
            );
            servers.insert(name.clone(), server);
            services.insert(name.clone(), service);
        }
        McpServers { servers, services, state }
    }

    /// Ties the services to the gateway they serve and starts every server's supervisor.
    /// Must run inside the Tokio runtime.
    pub fn start(&self, state: &Arc<GatewayState>) {
        if let Ok(mut slot) = self.state.lock() {
            *slot = Some(Arc::downgrade(state));
        }
        for server in self.servers.values() {
            server.start();
        }
    }

    pub fn server(&self, name: &str) -> Option<&Arc<McpServer>> {
        self.servers.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }
}

/// What the upstream connection currently is.
#[derive(Clone)]
struct Connection {
    peer: Peer<RoleClient>,
    capabilities: ServerCapabilities,
    server_info: Option<Implementation>,
    instructions: Option<String>,
}

/// One upstream MCP server and its supervisor.
pub struct McpServer {
    pub config: McpServerConfig,
    connection: watch::Sender<Option<Connection>>,
    started: Once,
    /// Why the last connection attempt failed or ended.
    last_problem: Mutex<Option<String>>,
    /// Connections made so far (1 after the first start, +1 per restart).
    connections: AtomicU64,
    /// Per-key limiters, by tool name (`*` for the rest).
    limiters: BTreeMap<String, DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("McpServer")
            .field("name", &self.config.name)
            .field("connections", &self.connections.load(Ordering::Relaxed))
            .finish()
    }
}

impl McpServer {
    fn new(config: McpServerConfig) -> Self {
        let limiters = config
            .tool_calls_per_minute
            .iter()
            .map(|(tool, limit)| (tool.clone(), RateLimiter::keyed(Quota::per_minute(*limit))))
            .collect();
        McpServer {
            config,
            connection: watch::Sender::new(None),
            started: Once::new(),
            last_problem: Mutex::new(None),
            connections: AtomicU64::new(0),
            limiters,
            clock: DefaultClock::default(),
        }
    }

    /// Starts the supervisor once.
    fn start(self: &Arc<Self>) {
        self.started.call_once(|| {
            tokio::spawn(supervise(Arc::clone(self)));
        });
    }

    /// How many times the server has been connected (restarts plus one).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether the upstream connection is up now.
    pub fn connected(&self) -> bool {
        self.connection.borrow().is_some()
    }

    fn set_problem(&self, problem: String) {
        if let Ok(mut slot) = self.last_problem.lock() {
            *slot = Some(problem);
        }
    }

    /// The live connection, waiting for a (re)start for up to [`CONNECT_WAIT`].
    async fn connection(self: &Arc<Self>) -> Result<Connection, Failure> {
        self.start();
        let mut receiver = self.connection.subscribe();
        let wait = CONNECT_WAIT.min(self.config.call_timeout);
        match tokio::time::timeout(wait, receiver.wait_for(Option::is_some)).await {
            Ok(Ok(connection)) => connection.clone().ok_or_else(|| self.unavailable("no connection")),
            _ => {
                let problem = self.last_problem.lock().ok().and_then(|slot| slot.clone());
                Err(self.unavailable(problem.as_deref().unwrap_or("it has not connected yet")))
            }
        }
    }

    fn unavailable(&self, why: &str) -> Failure {
        Failure::new(
            codes::UPSTREAM_UNAVAILABLE,
            format!("MCP server `{}` is unavailable: {why}. Retry shortly.", self.config.name),
            OutcomeStatus::UpstreamUnreachable,
        )
    }

    /// The wait before `tool` may be called again by `key_id`, if its limit is reached.
    fn over_limit(&self, key_id: &str, tool: &str) -> Option<Duration> {
        let limiter = self.limiters.get(tool).or_else(|| self.limiters.get("*"))?;
        limiter.check_key(&key_id.to_owned()).err().map(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// What the gateway tells clients about the server in `initialize`: the upstream's
    /// identity and the capabilities the proxy relays.
    fn downstream_info(&self) -> ServerConfig {
        let connection = self.connection.borrow();
        let mut capabilities = ServerCapabilities::default();
        let (server_info, instructions) = match connection.as_ref() {
            Some(connection) => {
                capabilities.tools = connection.capabilities.tools.clone();
                capabilities.prompts = connection.capabilities.prompts.clone();
                capabilities.resources = connection.capabilities.resources.clone().map(|mut resources| {
                    resources.subscribe = None;
                    resources
                });
                capabilities.completions = connection.capabilities.completions.clone();
                (connection.server_info.clone(), connection.instructions.clone())
            }
            None => {
                capabilities = ServerCapabilities::builder().enable_tools().build();
                (None, None)
            }
        };
        let info = server_info.unwrap_or_else(|| Implementation::new(self.config.name.clone(), "unknown"));
        let result = InitializeResult::new(capabilities).with_server_info(info);
        match instructions {
            Some(instructions) => result.with_instructions(instructions),
            None => result,
        }
    }
}

/// Keeps one connection to the server, restarting it with backoff whenever it ends.
async fn supervise(server: Arc<McpServer>) {
    let backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    loop {
        match connect(&server.config).await {
            Ok(running) => {
                delays = backoff();
                let peer = running.peer().clone();
                let info = peer.peer_info();
                let count = server.connections.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(server = %server.config.name, connection = count, "MCP server connected");
                server.connection.send_replace(Some(Connection {
                    capabilities: info.as_ref().map(|info| info.capabilities.clone()).unwrap_or_default(),
                    server_info: info.as_ref().and_then(|info| info.server_info.clone()),
                    instructions: info.as_ref().and_then(|info| info.instructions.clone()),
                    peer,
                }));
                let reason = running.waiting().await;
                server.connection.send_replace(None);
                let problem = match &server.config.transport {
                    McpTransport::Stdio { .. } => "its process exited; the gateway is restarting it".to_owned(),
                    McpTransport::Http { .. } => "the connection ended; the gateway is reconnecting".to_owned(),
                };
                tracing::warn!(server = %server.config.name, ?reason, "MCP server connection ended; restarting");
                server.set_problem(problem);
            }
            Err(problem) => {
                tracing::warn!(server = %server.config.name, %problem, "MCP server could not be started");
                server.set_problem(problem);
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        tokio::time::sleep(delay).await;
    }
}

type Upstream = RunningService<RoleClient, ClientConfig>;

/// Starts or reaches the server and performs the `initialize` handshake.
async fn connect(config: &McpServerConfig) -> Result<Upstream, String> {
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("tollgate-gateway", env!("CARGO_PKG_VERSION")),
    );
    let handshake = match &config.transport {
        McpTransport::Stdio { command, args, pass_env, env } => {
            let process =
                crate::mcp_transport::stdio_command(command, args, pass_env, env, |name| std::env::var_os(name));
            let (transport, stderr) = TokioChildProcess::builder(process)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|error| format!("`{command}` could not be started: {error}"))?;
            if let Some(stderr) = stderr {
                let name = config.name.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncBufReadExt;
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::debug!(server = %name, "{line}");
                    }
                });
            }
            tokio::time::timeout(HANDSHAKE_TIMEOUT, client.serve(transport)).await
        }
        McpTransport::Http { url, bearer_token } => {
            let mut transport_config =
                rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url.as_str());
            if let Some(token) = bearer_token {
                transport_config = transport_config.auth_header(token.clone());
            }
            let http = crate::mcp_transport::http_client()
                .map_err(|error| format!("the HTTP client could not be built: {error}"))?;
            let transport = StreamableHttpClientTransport::with_client(http, transport_config);
            tokio::time::timeout(HANDSHAKE_TIMEOUT, client.serve(transport)).await
        }
    };
    match handshake {
        Ok(Ok(running)) => Ok(running),
        Ok(Err(error)) => Err(format!("the initialize handshake failed: {error}")),
        Err(_) => Err(format!("the initialize handshake took longer than {} s", HANDSHAKE_TIMEOUT.as_secs())),
    }
}

/// A refusal or failure, with how it is recorded.
#[derive(Debug)]
struct Failure {
    error: McpError,
    status: OutcomeStatus,
    /// The recorded `error_type` when it is one of the gateway's own refusals (the names
    /// the model routes use: `tool_not_allowed`, `pii_detected`, ...); otherwise
    /// `jsonrpc_<code>`.
    error_type: Option<&'static str>,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>, status: OutcomeStatus) -> Self {
        Failure { error: McpError::new(code, message.into(), None), status, error_type: None }
    }

    fn typed(mut self, error_type: &'static str) -> Self {
        self.error_type = Some(error_type);
        self
    }
}

/// Who is calling, put on the HTTP request by [`handle`] for [`Governed`] to find.
#[derive(Debug, Clone)]
struct Caller {
    key: Arc<VirtualKey>,
    started: Instant,
    /// Set once the request is recorded, so [`handle`] records only what the SDK refused
    /// before the handler saw it.
    recorded: Arc<AtomicBool>,
}

/// The governed proxy for one client session.
#[derive(Clone)]
pub struct Governed {
    state: Arc<GatewayState>,
    server: Arc<McpServer>,
}

impl std::fmt::Debug for Governed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Governed").field("server", &self.server.config.name).finish()
    }
}

/// One request being served: its draft event and its caller.
struct Served {
    draft: Draft,
    key: Arc<VirtualKey>,
    recorded: Arc<AtomicBool>,
}

impl Governed {
    /// Starts the record of a request with `method` (and `tool`) whose params serialize to
    /// `params`.
    fn begin(
        &self,
        context: &RequestContext<RoleServer>,
        method: &str,
        tool: Option<String>,
        params: &impl Serialize,
    ) -> Result<Served, McpError> {
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let caller = parts
            .and_then(|parts| parts.extensions.get::<Caller>())
            .ok_or_else(|| McpError::new(codes::UNAUTHORIZED, "the request carries no authenticated caller", None))?;
        let session_id = parts
            .and_then(|parts| parts.headers.get("mcp-session-id"))
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let trace =
            parts.map(|parts| trace_context(&parts.headers)).unwrap_or_else(|| trace_context(&HeaderMap::new()));
        let mut draft = Draft::new(
            Arc::clone(&self.state),
            caller.started,
            caller.key.principal.clone(),
            GenAiOperation::ExecuteTool,
            ROUTE,
            trace,
        );
        draft.tool =
            Some(ToolCall { server: self.server.config.name.clone(), method: method.to_owned(), tool, session_id });
        draft.set_request(&serde_json::to_vec(params).unwrap_or_default());
        Ok(Served { draft, key: Arc::clone(&caller.key), recorded: Arc::clone(&caller.recorded) })
    }

    /// Records `result` and hands it back as the SDK wants it.
    /// `describe` gives a result's outcome and its bytes as sent.
    fn finish<T>(
        &self,
        served: Served,
        result: Result<T, Failure>,
        describe: impl Fn(&T) -> (OutcomeStatus, Vec<u8>),
    ) -> Result<T, McpError> {
        let mut tap = served.draft.response_tap();
        let outcome = match &result {
            Ok(value) => {
                let (status, bytes) = describe(value);
                tap.sent(&bytes);
                Ending::new(status, None)
            }
            Err(failure) => {
                tap.sent(&serde_json::to_vec(&failure.error).unwrap_or_default());
                let error_type =
                    failure.error_type.map_or_else(|| format!("jsonrpc_{}", failure.error.code.0), str::to_owned);
                Ending::new(failure.status, None).with_error(error_type, failure.error.message.to_string())
            }
        };
        served.recorded.store(true, Ordering::Release);
        served.draft.finish(outcome, tap);
        result.map_err(|failure| failure.error)
    }

    /// Sends `request` upstream and waits for the answer.
    async fn forward(
        &self,
        request: ClientRequest,
        draft: &mut Draft,
        tool_call: bool,
    ) -> Result<ServerResult, Failure> {
        let connection = self.server.connection().await?;
        let started = Instant::now();
        draft.attempts = 1;
        draft.upstream = Some(self.server.config.name.clone());
        let options = PeerRequestOptions::with_timeout(self.server.config.call_timeout);
        let answer = match connection.peer.send_request_with_option(request, options).await {
            Ok(handle) => handle.await_response().await,
            Err(error) => Err(error),
        };
        draft.waited += started.elapsed();
        answer.map_err(|error| self.upstream_failure(error, tool_call))
    }

    fn upstream_failure(&self, error: ServiceError, tool_call: bool) -> Failure {
        let name = &self.server.config.name;
        match error {
            // The server's own JSON-RPC error goes back to the client as it is.
            ServiceError::McpError(error) => Failure {
                error,
                status: if tool_call { OutcomeStatus::ToolError } else { OutcomeStatus::UpstreamError },
                error_type: None,
            },
            ServiceError::Timeout { timeout } => Failure::new(
                codes::UPSTREAM_TIMEOUT,
                format!("MCP server `{name}` did not answer within {} ms.", timeout.as_millis()),
                OutcomeStatus::Timeout,
            ),
            ServiceError::TransportClosed | ServiceError::TransportSend(_) | ServiceError::Cancelled { .. } => {
                let why = match self.server.config.transport {
                    McpTransport::Stdio { .. } => {
                        "the connection was lost while the request was in flight (the server process exited); the \
                         gateway is restarting it"
                    }
                    McpTransport::Http { .. } => {
                        "the connection was lost while the request was in flight; the gateway is reconnecting"
                    }
                };
                self.server.unavailable(why)
            }
            other => Failure::new(
                ErrorCode::INTERNAL_ERROR,
                format!("MCP server `{name}` gave an unexpected answer: {other}"),
                OutcomeStatus::UpstreamError,
            ),
        }
    }

    /// Forwards a request whose only policy is the recording, expecting one result shape.
    async fn relay<T>(
        &self,
        context: &RequestContext<RoleServer>,
        method: &str,
        params: &impl Serialize,
        request: ClientRequest,
        pick: impl FnOnce(ServerResult) -> Option<(T, Vec<u8>)>,
    ) -> Result<T, McpError> {
        let mut served = self.begin(context, method, None, params)?;
        let mut sent = Vec::new();
        let result = self.forward(request, &mut served.draft, false).await.and_then(|answer| {
            pick(answer)
                .map(|(value, bytes)| {
                    sent = bytes;
                    value
                })
                .ok_or_else(|| {
                    Failure::new(
                        ErrorCode::INTERNAL_ERROR,
                        format!("MCP server `{}` answered {method} with an unexpected result", self.server.config.name),
                        OutcomeStatus::UpstreamError,
                    )
                })
        });
        self.finish(served, result, |_| (OutcomeStatus::Ok, sent.clone()))
    }

    /// The checks on a `tools/call` before it goes upstream.
    fn admit_tool_call(&self, served: &mut Served, params: &mut CallToolRequestParams) -> Result<(), Failure> {
        let server = &self.server.config.name;
        let tool = params.name.to_string();
        if !served.key.tools.allows(server, &tool) {
            return Err(Failure::new(
                codes::DENIED_BY_POLICY,
                format!("Tool `{tool}` of MCP server `{server}` is denied by policy for this key."),
                OutcomeStatus::BlockedByPolicy,
            )
            .typed("tool_not_allowed"));
        }
        if let Some(arguments) = params.arguments.take() {
            let mut value = Value::Object(arguments);
            let report = guard_json(&mut value, served.key.pii_guard);
            if served.key.pii_guard == PiiMode::Block && !report.kinds.is_empty() {
                let kinds: Vec<&str> = report.kinds.iter().map(|kind| kind.label()).collect();
                return Err(Failure::new(
                    codes::DENIED_BY_POLICY,
                    format!(
                        "The tool call was blocked by policy: its arguments contain {} (found by the gateway's PII \
                         guard).",
                        kinds.join(", ")
                    ),
                    OutcomeStatus::BlockedByPolicy,
                )
                .typed("pii_detected"));
            }
            if let Value::Object(arguments) = value {
                params.arguments = Some(arguments);
            }
        }
        if let Some(wait) = self.server.over_limit(&served.key.principal.key_id, &tool) {
            let mut failure = Failure::new(
                codes::RATE_LIMITED,
                format!(
                    "Rate limit reached for tool `{tool}` of MCP server `{server}` on this key; try again in {:.1} s.",
                    wait.as_secs_f64()
                ),
                OutcomeStatus::RateLimited,
            )
            .typed("rate_limit_exceeded");
            failure.error.data = Some(json!({ "retry_after_ms": wait.as_millis() }));
            return Err(failure);
        }
        let catalog = self.state.quota.catalog();
        let price = catalog.tool(server, &tool).unwrap_or_default();
        match self.state.quota.admit(&served.key.principal, || price, tollgate_schemas::now_unix_micros()) {
            Ok(admission) if admission.governs() => served.draft.quota = Some((admission, catalog)),
            Ok(_) => {}
            Err(refusal) => {
                let mut failure = Failure::new(codes::BUDGET_EXCEEDED, refusal.message, OutcomeStatus::BlockedByBudget)
                    .typed("budget_exceeded");
                failure.error.data =
                    Some(json!({ "budget_id": refusal.budget_id, "subject": refusal.subject.to_string() }));
                return Err(failure);
            }
        }
        Ok(())
    }
}

impl ServerHandler for Governed {
    fn get_info(&self) -> ServerConfig {
        self.server.downstream_info()
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        let served = self.begin(&context, "initialize", None, &request)?;
        context.peer.set_peer_info(request.clone());
        let result = match self.server.connection().await {
            Ok(_) => self.negotiate_initialize(&request).map_err(|error| Failure {
                error,
                status: OutcomeStatus::InvalidRequest,
                error_type: None,
            }),
            Err(failure) => Err(failure),
        };
        self.finish(served, result, |value| (OutcomeStatus::Ok, json_bytes(value)))
    }

    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), McpError> {
        let served = self.begin(&context, "ping", None, &Value::Null)?;
        self.finish(served, Ok(()), |_| (OutcomeStatus::Ok, b"{}".to_vec()))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let mut served = self.begin(&context, "tools/list", None, &request)?;
        let forwarded = ClientRequest::ListToolsRequest(ListToolsRequest {
            method: Default::default(),
            params: request,
            extensions: Default::default(),
        });
        let server = self.server.config.name.clone();
        let key = Arc::clone(&served.key);
        let result = self.forward(forwarded, &mut served.draft, false).await.and_then(|answer| match answer {
            ServerResult::ListToolsResult(mut list) => {
                list.tools.retain(|tool| key.tools.allows(&server, &tool.name));
                Ok(list)
            }
            _ => Err(Failure::new(
                ErrorCode::INTERNAL_ERROR,
                format!("MCP server `{server}` answered tools/list with an unexpected result"),
                OutcomeStatus::UpstreamError,
            )),
        });
        self.finish(served, result, |value| (OutcomeStatus::Ok, json_bytes(value)))
    }

    async fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let mut served = self.begin(&context, "tools/call", Some(request.name.to_string()), &request.arguments)?;
        let result = match self.admit_tool_call(&mut served, &mut request) {
            Err(failure) => Err(failure),
            Ok(()) => {
                let forwarded = ClientRequest::CallToolRequest(CallToolRequest::new(request));
                let name = self.server.config.name.clone();
                self.forward(forwarded, &mut served.draft, true).await.and_then(|answer| match answer {
                    ServerResult::CallToolResult(result) => Ok(CallToolResponse::Complete(result)),
                    ServerResult::InputRequiredResult(result) => Ok(CallToolResponse::InputRequired(result)),
                    ServerResult::CreateTaskResult(result) => Ok(CallToolResponse::Task(result)),
                    _ => Err(Failure::new(
                        ErrorCode::INTERNAL_ERROR,
                        format!("MCP server `{name}` answered tools/call with an unexpected result"),
                        OutcomeStatus::UpstreamError,
                    )),
                })
            }
        };
        self.finish(served, result, |response| match response {
            CallToolResponse::Complete(result) if result.is_error == Some(true) => {
                (OutcomeStatus::ToolError, json_bytes(result))
            }
            CallToolResponse::Complete(result) => (OutcomeStatus::Ok, json_bytes(result)),
            CallToolResponse::InputRequired(result) => (OutcomeStatus::Ok, json_bytes(result)),
            CallToolResponse::Task(result) => (OutcomeStatus::Ok, json_bytes(result)),
            _ => (OutcomeStatus::Ok, Vec::new()),
        })
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let forwarded = ClientRequest::ListPromptsRequest(ListPromptsRequest {
            method: Default::default(),
            params: request.clone(),
            extensions: Default::default(),
        });
        self.relay(&context, "prompts/list", &request, forwarded, |answer| match answer {
            ServerResult::ListPromptsResult(result) => Some(with_bytes(result)),
            _ => None,
        })
        .await
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let params = request.clone();
        let forwarded = ClientRequest::GetPromptRequest(GetPromptRequest::new(request));
        self.relay(&context, "prompts/get", &params, forwarded, |answer| match answer {
            ServerResult::GetPromptResult(result) => {
                let bytes = json_bytes(&result);
                Some((GetPromptResponse::Complete(result), bytes))
            }
            ServerResult::InputRequiredResult(result) => {
                let bytes = json_bytes(&result);
                Some((GetPromptResponse::InputRequired(result), bytes))
            }
            _ => None,
        })
        .await
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let forwarded = ClientRequest::ListResourcesRequest(ListResourcesRequest {
            method: Default::default(),
            params: request.clone(),
            extensions: Default::default(),
        });
        self.relay(&context, "resources/list", &request, forwarded, |answer| match answer {
            ServerResult::ListResourcesResult(result) => Some(with_bytes(result)),
            _ => None,
        })
        .await
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let forwarded = ClientRequest::ListResourceTemplatesRequest(ListResourceTemplatesRequest {
            method: Default::default(),
            params: request.clone(),
            extensions: Default::default(),
        });
        self.relay(&context, "resources/templates/list", &request, forwarded, |answer| match answer {
            ServerResult::ListResourceTemplatesResult(result) => Some(with_bytes(result)),
            _ => None,
        })
        .await
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let params = request.clone();
        let forwarded = ClientRequest::ReadResourceRequest(ReadResourceRequest::new(request));
        self.relay(&context, "resources/read", &params, forwarded, |answer| match answer {
            ServerResult::ReadResourceResult(result) => {
                let bytes = json_bytes(&result);
                Some((ReadResourceResponse::Complete(result), bytes))
            }
            ServerResult::InputRequiredResult(result) => {
                let bytes = json_bytes(&result);
                Some((ReadResourceResponse::InputRequired(result), bytes))
            }
            _ => None,
        })
        .await
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let params = request.clone();
        let forwarded = ClientRequest::CompleteRequest(CompleteRequest::new(request));
        self.relay(&context, "completion/complete", &params, forwarded, |answer| match answer {
            ServerResult::CompleteResult(result) => Some(with_bytes(result)),
            _ => None,
        })
        .await
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, McpError> {
        let method = request.method.clone();
        let params = request.params.clone();
        self.relay(&context, &method, &params, ClientRequest::CustomRequest(request), |answer| match answer {
            ServerResult::CustomResult(result) => Some(with_bytes(result)),
            other => serde_json::to_value(other).ok().map(CustomResult).map(with_bytes),
        })
        .await
    }
}

fn json_bytes(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn with_bytes<T: Serialize>(value: T) -> (T, Vec<u8>) {
    let bytes = json_bytes(&value);
    (value, bytes)
}

/// A JSON-RPC error response body.
fn jsonrpc_error(status: StatusCode, id: Value, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code.0, "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

/// What a POST body is, once checked as JSON-RPC 2.0.
enum Checked {
    /// A request (has `id` and `method`).
    Request { method: String, tool: Option<String> },
    /// A notification or a response to a server request: not recorded.
    Other,
}

/// A JSON-RPC message refused before the SDK: the status, the id to echo, the code and why.
type Refused = (StatusCode, Value, ErrorCode, String, Option<String>);

/// Checks one JSON-RPC 2.0 message the way the specification describes it.
fn check_message(body: &[u8]) -> Result<Checked, Refused> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        (StatusCode::BAD_REQUEST, Value::Null, codes::PARSE_ERROR, format!("Parse error: {error}"), None)
    })?;
    let object = match value {
        Value::Object(object) => object,
        Value::Array(_) => {
            return Err((
                StatusCode::BAD_REQUEST,
                Value::Null,
                codes::INVALID_REQUEST,
                "Invalid Request: batches are not supported (MCP removed JSON-RPC batching in protocol version \
                 2025-06-18); send one message per HTTP request"
                    .to_owned(),
                None,
            ));
        }
        _ => {
            return Err((
                StatusCode::BAD_REQUEST,
                Value::Null,
                codes::INVALID_REQUEST,
                "Invalid Request: a JSON-RPC message is a JSON object".to_owned(),
                None,
            ));
        }
    };
    let id = object.get("id").cloned();
    let echo = match &id {
        Some(Value::String(_)) => id.clone().unwrap_or(Value::Null),
        Some(Value::Number(number)) if number.is_i64() || number.is_u64() => id.clone().unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let method = object.get("method").and_then(Value::as_str).map(str::to_owned);
    let refuse = |code: ErrorCode, message: &str| {
        Err((StatusCode::BAD_REQUEST, echo.clone(), code, format!("Invalid Request: {message}"), method.clone()))
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return refuse(codes::INVALID_REQUEST, "`jsonrpc` must be exactly \"2.0\"");
    }
    if let Some(id) = &id
        && echo.is_null()
    {
        let _ = id;
        return refuse(codes::INVALID_REQUEST, "`id` must be a string or an integer");
    }
    match object.get("method") {
        Some(Value::String(name)) if name.len() > MAX_NAME_BYTES => {
            return refuse(codes::INVALID_REQUEST, &format!("`method` is longer than {MAX_NAME_BYTES} bytes"));
        }
        Some(Value::String(name)) if !name.is_empty() => {}
        Some(_) => return refuse(codes::INVALID_REQUEST, "`method` must be a non-empty string"),
        None => {
            let is_response = id.is_some() && (object.contains_key("result") ^ object.contains_key("error"));
            if is_response {
                return Ok(Checked::Other);
            }
            return refuse(codes::INVALID_REQUEST, "`method` is missing");
        }
    }
    if let Some(params) = object.get("params")
        && !params.is_object()
    {
        return Err((
            StatusCode::BAD_REQUEST,
            echo,
            codes::INVALID_PARAMS,
            "Invalid params: `params` must be an object".to_owned(),
            method,
        ));
    }
    match (id, method) {
        (Some(_), Some(method)) => {
            let tool = (method == "tools/call")
                .then(|| object.get("params").and_then(|params| params.get("name")).and_then(Value::as_str))
                .flatten()
                .map(str::to_owned);
            if let Some(tool) = &tool
                && tool.len() > MAX_NAME_BYTES
            {
                return Err((
                    StatusCode::BAD_REQUEST,
                    echo,
                    codes::INVALID_PARAMS,
                    format!("Invalid params: the tool name is longer than {MAX_NAME_BYTES} bytes"),
                    Some(method),
                ));
            }
            Ok(Checked::Request { method, tool })
        }
        _ => Ok(Checked::Other),
    }
}

/// `/mcp/{server}`: authenticates, checks the message, and hands it to the SDK's
/// Streamable HTTP service for the server.
pub async fn handle(State(state): State<Arc<GatewayState>>, Path(name): Path<String>, request: Request) -> Response {
    let started = Instant::now();
    let Some(service) = state.mcp.services.get(&name) else {
        let known: Vec<&str> = state.mcp.names().collect();
        return jsonrpc_error(
            StatusCode::NOT_FOUND,
            Value::Null,
            codes::INVALID_REQUEST,
            format!("No MCP server named `{name}`; this gateway serves: {}.", known.join(", ")),
        );
    };
    let key = match state.keys().authenticate(request.headers()) {
        Ok(key) => key,
        Err(error) => {
            state.metrics.unauthenticated.get_or_create(&crate::metrics::RouteLabels { route: ROUTE }).inc();
            return jsonrpc_error(StatusCode::UNAUTHORIZED, Value::Null, codes::UNAUTHORIZED, error.message);
        }
    };
    let caller = Caller { key, started, recorded: Arc::new(AtomicBool::new(false)) };
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(caller.clone());

    if let Some(session) = parts.headers.get("mcp-session-id")
        && session.len() > MAX_ID_BYTES
    {
        let message = format!("Invalid Request: the Mcp-Session-Id header is longer than {MAX_ID_BYTES} bytes");
        record_refusal(
            &state,
            &name,
            &caller,
            &parts.headers,
            None,
            None,
            &[],
            OutcomeStatus::InvalidRequest,
            &message,
        );
        return jsonrpc_error(StatusCode::BAD_REQUEST, Value::Null, codes::INVALID_REQUEST, message);
    }

    if parts.method != Method::POST {
        // GET (the server's stream) and DELETE (end of session) carry no message.
        let response = service.handle(Request::from_parts(parts, body)).await;
        return jsonrpc_errors(response.map(Body::new), Value::Null).await;
    }

    let limit = state.config.max_body_bytes;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let too_large = error.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            let (status, message) = if too_large {
                (StatusCode::PAYLOAD_TOO_LARGE, format!("Invalid Request: the body exceeds the limit of {limit} bytes"))
            } else {
                (StatusCode::BAD_REQUEST, format!("Invalid Request: the body could not be read: {error}"))
            };
            record_refusal(
                &state,
                &name,
                &caller,
                &parts.headers,
                None,
                None,
                &[],
                OutcomeStatus::InvalidRequest,
                &message,
            );
            return jsonrpc_error(status, Value::Null, codes::INVALID_REQUEST, message);
        }
    };
    let checked = match check_message(&bytes) {
        Ok(checked) => checked,
        Err((status, id, code, message, method)) => {
            record_refusal(
                &state,
                &name,
                &caller,
                &parts.headers,
                method,
                None,
                &bytes,
                OutcomeStatus::InvalidRequest,
                &message,
            );
            return jsonrpc_error(status, id, code, message);
        }
    };
    let id =
        serde_json::from_slice::<Value>(&bytes).ok().and_then(|value| value.get("id").cloned()).unwrap_or_default();
    let headers = parts.headers.clone();
    let response = service.handle(Request::from_parts(parts, Body::from(bytes.clone()))).await;
    let status = response.status();
    let response = jsonrpc_errors(response.map(Body::new), id).await;
    if let Checked::Request { method, tool } = checked
        && !status.is_success()
        && !caller.recorded.load(Ordering::Acquire)
    {
        let message = format!("refused by the MCP transport with HTTP {}", status.as_u16());
        record_refusal(
            &state,
            &name,
            &caller,
            &headers,
            Some(method),
            tool,
            &bytes,
            OutcomeStatus::InvalidRequest,
            &message,
        );
    }
    response
}

/// Turns the SDK's plain-text HTTP errors into JSON-RPC error bodies with the same status
/// (a body that fails to deserialize becomes 400 with `-32600`, not 415).
async fn jsonrpc_errors(response: Response, id: Value) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if status.is_success() || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match body.collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let (status, code) = if text.starts_with("fail to deserialize") {
        (StatusCode::BAD_REQUEST, codes::INVALID_REQUEST)
    } else if status.is_server_error() {
        (status, ErrorCode::INTERNAL_ERROR)
    } else {
        (status, codes::INVALID_REQUEST)
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    let mut rebuilt = jsonrpc_error(status, id, code, message);
    for name in [header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            rebuilt.headers_mut().insert(name, value.clone());
        }
    }
    rebuilt
}

/// Records a request refused before the handler ran.
#[allow(clippy::too_many_arguments)]
fn record_refusal(
    state: &Arc<GatewayState>,
    server: &str,
    caller: &Caller,
    headers: &HeaderMap,
    method: Option<String>,
    tool: Option<String>,
    body: &[u8],
    status: OutcomeStatus,
    message: &str,
) {
    let mut draft = Draft::new(
        Arc::clone(state),
        caller.started,
        caller.key.principal.clone(),
        GenAiOperation::ExecuteTool,
        ROUTE,
        trace_context(headers),
    );
    let session_id = headers.get("mcp-session-id").and_then(|value| value.to_str().ok()).map(str::to_owned);
    draft.tool = Some(ToolCall { server: server.to_owned(), method: method.unwrap_or_default(), tool, session_id });
    draft.set_request(body);
    let mut tap = draft.response_tap();
    tap.sent(message.as_bytes());
    caller.recorded.store(true, Ordering::Release);
    draft.finish(Ending::new(status, None).with_error("invalid_request", message), tap);
}
