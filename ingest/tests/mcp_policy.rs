//! Tool policy on the MCP proxy, driven by the `rmcp` SDK's client against a Streamable
//! HTTP server built with the same SDK: allow and deny lists, the PII guard on arguments
//! (block and redact), per-tool rate limits, and budgets charged with the catalog's tool
//! prices. Every request is one recorded event with the outcome the client saw.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt};
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use tollgate_ingest::app::GatewayState;
use tollgate_ingest::config::GatewayConfig;
use tollgate_ingest::keys::hash_secret;
use tollgate_ingest::recorder::{Recorder, RecorderConfig};
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::{
    BudgetWindow, Call, Nanodollars, QuotaDecision, QuotaState, SCHEMA_VERSION, Subject, SubjectKind, WindowKind,
};

/// Answers with its `text` argument, as the server received it.
#[derive(Debug, Clone)]
struct Echo;

impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let serde_json::Value::Object(schema) = serde_json::json!({"type": "object"}) else { unreachable!() };
        let tools = ["echo", "shout", "delete_all"].map(|name| Tool::new(name, "test tool", schema.clone()));
        Ok(ListToolsResult::with_all_items(tools.to_vec()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let text = request.arguments.as_ref().and_then(|a| a.get("text")).and_then(|t| t.as_str()).unwrap_or_default();
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

const BLOCKING_KEY: &str = "tg-test-blocking";
const REDACTING_KEY: &str = "tg-test-redacting";
/// The catalog price of `echo/shout`.
const SHOUT_PRICE: i64 = 10_000_000;

async fn connect(url: &str, key: &str) -> RunningService<RoleClient, ()> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
    let transport =
        StreamableHttpClientTransport::with_client(http, StreamableHttpClientTransportConfig::with_uri(url));
    ().serve(transport).await.unwrap()
}

/// Calls `tool` with `text`: the text the server answered with, or the JSON-RPC error code.
async fn call(client: &RunningService<RoleClient, ()>, tool: &'static str, text: &str) -> Result<String, i32> {
    let mut arguments = serde_json::Map::new();
    arguments.insert("text".into(), text.into());
    match client.call_tool(CallToolRequestParams::new(tool).with_arguments(arguments)).await {
        Ok(result) => Ok(result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|text| text.text.clone()))
            .collect::<String>()),
        Err(ServiceError::McpError(error)) => Err(error.code.0),
        Err(other) => panic!("{other}"),
    }
}

fn decision(state: QuotaState, budget: i64, spent: i64, version: u64) -> QuotaDecision {
    QuotaDecision {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: tollgate_schemas::now_unix_micros(),
        subject: Subject::new(SubjectKind::Team, "redactors"),
        budget_id: "tools-monthly".to_owned(),
        window: BudgetWindow { kind: WindowKind::Month, start_unix_micros: 0, end_unix_micros: None },
        budget: Nanodollars(budget),
        spent: Nanodollars(spent),
        remaining: Nanodollars(budget - spent),
        state,
        hard: true,
        version,
        source_offsets: Vec::new(),
        reason: (state == QuotaState::Block).then(|| "hard budget reached 100%".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_policy_guard_limits_and_budgets() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/mcp", listener.local_addr().unwrap());
    let service = StreamableHttpService::new(
        || Ok(Echo),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    tokio::spawn(axum::serve(listener, axum::Router::new().nest_service("/mcp", service)).into_future());

    let config = GatewayConfig::from_toml(
        &format!(
            r#"
            [server]
            instance_id = "mcp-policy"

            [[keys]]
            id = "key_blocking"
            secret_sha256 = "{blocking}"
            org = "acme"
            team = "agents"
            allowed_tools = ["echo/*"]
            denied_tools = ["echo/delete_*"]
            pii_guard = "block"

            [[keys]]
            id = "key_redacting"
            secret_sha256 = "{redacting}"
            org = "acme"
            team = "redactors"
            pii_guard = "redact"

            [[mcp_servers]]
            name = "echo"
            url = "{upstream}"
            tool_calls_per_minute = {{ echo = 3, "*" = 1000 }}
            "#,
            blocking = hash_secret(BLOCKING_KEY),
            redacting = hash_secret(REDACTING_KEY),
        ),
        &HashMap::new(),
    )
    .unwrap();
    let catalog = PriceCatalog::from_toml(
        r#"
        version = "test-tools"
        effective_from = "2026-11-01"

        [[tools]]
        server = "echo"
        tool = "shout"
        per_call = "0.01"
        "#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path().join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let recorder = Recorder::start(Arc::clone(&log), None, RecorderConfig::default()).await.unwrap();
    let state = Arc::new(GatewayState::new(config, recorder, catalog).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}/mcp/echo", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tollgate_ingest::run(listener, Arc::clone(&state), async move {
        let _ = stopped.await;
    }));

    // Allow and deny lists, the blocking guard, the per-tool limit.
    let blocking = connect(&gateway, BLOCKING_KEY).await;
    let tools = blocking.list_tools(None).await.unwrap();
    let mut names: Vec<String> = tools.tools.iter().map(|tool| tool.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["echo", "shout"], "delete_all is denied, so not listed");
    assert_eq!(call(&blocking, "delete_all", "now").await, Err(-32003));
    assert_eq!(call(&blocking, "echo", "hello").await, Ok("hello".to_owned()));
    assert_eq!(call(&blocking, "echo", "write to ada@example.com").await, Err(-32003), "PII blocked");
    assert_eq!(call(&blocking, "echo", "two").await, Ok("two".to_owned()));
    assert_eq!(call(&blocking, "echo", "three").await, Ok("three".to_owned()));
    assert_eq!(call(&blocking, "echo", "four").await, Err(-32005), "three echo calls a minute");
    assert_eq!(call(&blocking, "shout", "other tools have their own limit").await.map(|_| ()), Ok(()));

    // The redacting guard: the server sees the placeholder, not the address.
    let redacting = connect(&gateway, REDACTING_KEY).await;
    let answer = call(&redacting, "echo", "write to ada@example.com").await.unwrap();
    assert!(!answer.contains("ada@example.com") && answer.contains("REDACTED"), "{answer}");

    // Budgets: a block decision refuses the team's tool calls. Under a hard budget with
    // half a call's worth left, a call is admitted (the budget is not reached yet) and
    // settles at the catalog price; the next is refused because that spend counts.
    assert!(state.quota.apply(decision(QuotaState::Block, 1_000_000_000, 1_000_000_000, 1)));
    assert_eq!(call(&redacting, "shout", "blocked").await, Err(-32004));
    assert!(state.quota.apply(decision(QuotaState::Allow, 1_000_000_000, 1_000_000_000 - SHOUT_PRICE / 2, 2)));
    assert_eq!(call(&redacting, "shout", "first").await, Ok("first".to_owned()));
    assert_eq!(call(&redacting, "shout", "second").await, Err(-32004), "the first call's price counts");
    assert_eq!(
        call(&redacting, "echo", "unpriced, but the budget is reached").await,
        Err(-32004),
        "a principal at its hard budget is refused every call"
    );

    blocking.cancel().await.unwrap();
    redacting.cancel().await.unwrap();
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    let events = support::read_interactions(log.as_ref(), "mcp-policy", 15).await;
    let mut outcomes: BTreeMap<(String, String, &str), usize> = BTreeMap::new();
    for event in &events {
        let Call::ToolCall(call) = &event.call else { panic!("{event:?}") };
        let name = format!("{}:{}", call.method, call.tool.as_deref().unwrap_or(""));
        *outcomes.entry((event.principal.key_id.clone(), name, event.outcome.status.as_str())).or_default() += 1;
    }
    let expected: BTreeMap<(String, String, &str), usize> = [
        (("key_blocking", "initialize:", "ok"), 1),
        (("key_blocking", "tools/list:", "ok"), 1),
        (("key_blocking", "tools/call:delete_all", "blocked_by_policy"), 1),
        (("key_blocking", "tools/call:echo", "ok"), 3),
        (("key_blocking", "tools/call:echo", "blocked_by_policy"), 1),
        (("key_blocking", "tools/call:echo", "rate_limited"), 1),
        (("key_blocking", "tools/call:shout", "ok"), 1),
        (("key_redacting", "initialize:", "ok"), 1),
        (("key_redacting", "tools/call:echo", "ok"), 1),
        (("key_redacting", "tools/call:echo", "blocked_by_budget"), 1),
        (("key_redacting", "tools/call:shout", "blocked_by_budget"), 2),
        (("key_redacting", "tools/call:shout", "ok"), 1),
    ]
    .into_iter()
    .map(|((key, name, status), count)| ((key.to_owned(), name.to_owned(), status), count))
    .collect();
    assert_eq!(outcomes, expected);
    assert_eq!(events.len(), 15, "one event per JSON-RPC request: 9 with the blocking key, 6 with the redacting key");
}
