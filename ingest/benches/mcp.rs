//! The MCP proxy's added latency: a `tools/call` through the gateway against the same call
//! sent directly to the same Streamable HTTP server, side by side in one run.
//!
//! `scripts/bench-mcp` starts a Kafka-API broker. This program runs, in one process, a
//! small Streamable HTTP MCP server (an `echo` tool, built with the same `rmcp` SDK the
//! gateway uses) and the gateway in front of it, with a virtual key, a tool allow-list,
//! the PII guard in redact mode on the arguments, a hard team budget in force, digests of
//! every request and response, and one event per request published to the real broker.
//! The client is `rmcp`'s own, one session per path, calls one at a time.
//!
//! Rounds alternate direct and gateway so machine noise hits both alike. The last line is
//! `added_p50_us=N added_p99_us=N`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A benchmark fails by panicking.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use tollgate_eventlog::{EventLog, KafkaConfig, KafkaLog};
use tollgate_ingest::app::GatewayState;
use tollgate_ingest::config::GatewayConfig;
use tollgate_ingest::keys::hash_secret;
use tollgate_ingest::recorder::{Recorder, RecorderConfig};
use tollgate_schemas::pricing::PriceCatalog;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 3;
const WARM_UP_CALLS: usize = 100;

/// A server with one tool that answers with its `text` argument.
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
        let schema = serde_json::json!({"type": "object", "properties": {"text": {"type": "string"}}});
        let serde_json::Value::Object(schema) = schema else { unreachable!() };
        Ok(ListToolsResult::with_all_items(vec![Tool::new("echo", "Answers with its text argument.", schema)]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let text = request.arguments.as_ref().and_then(|arguments| arguments.get("text")).and_then(|t| t.as_str());
        Ok(CallToolResult::success(vec![ContentBlock::text(text.unwrap_or_default())]).into())
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

/// Makes `calls` calls one after another on a fresh session to `url`; p50 and p99 in us.
async fn measure(url: &str, key: &str, calls: usize) -> (f64, f64) {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
    let transport =
        StreamableHttpClientTransport::with_client(http, StreamableHttpClientTransportConfig::with_uri(url));
    let client = ().serve(transport).await.unwrap();
    let mut arguments = serde_json::Map::new();
    arguments.insert("text".into(), "status of order 4411 for the weekly report".into());
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let result =
            client.call_tool(CallToolRequestParams::new("echo").with_arguments(arguments.clone())).await.unwrap();
        latencies.push(started.elapsed());
        assert_ne!(result.is_error, Some(true));
    }
    client.cancel().await.unwrap();
    latencies.sort();
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let brokers =
        std::env::var("TOLLGATE_TEST_KAFKA_BROKERS").expect("TOLLGATE_TEST_KAFKA_BROKERS; run scripts/bench-mcp");
    let calls_per_round: usize =
        std::env::var("TOLLGATE_BENCH_CALLS").ok().and_then(|calls| calls.parse().ok()).unwrap_or(2_000);
    let workers = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap();
    runtime.block_on(async {
        // The upstream server.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = format!("http://{}/mcp", listener.local_addr().unwrap());
        let service = StreamableHttpService::new(
            || Ok(Echo),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            let _ = stream.set_nodelay(true);
        });
        tokio::spawn(axum::serve(listener, axum::Router::new().nest_service("/mcp", service)).into_future());

        let config_text = format!(
            r#"
            [server]
            instance_id = "bench-mcp"
            [capture]
            mode = "digests"
            [guard]
            pii = "redact"

            [[keys]]
            id = "key_bench"
            secret_sha256 = "{secret}"
            org = "bench-org"
            team = "bench-team"
            allowed_tools = ["echo/*"]
            denied_tools = ["echo/delete_*"]

            [[mcp_servers]]
            name = "echo"
            url = "{upstream}"
            "#,
            secret = hash_secret("tg-bench"),
        );
        let config = GatewayConfig::from_toml(&config_text, &HashMap::new()).unwrap();
        let mut kafka = KafkaConfig::new(brokers);
        tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
        let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
        tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
        let recorder = Recorder::start(Arc::clone(&log), None, RecorderConfig::default()).await.unwrap();
        let state = Arc::new(GatewayState::new(config, recorder, PriceCatalog::shipped().unwrap()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = format!("http://{}/mcp/echo", listener.local_addr().unwrap());
        tokio::spawn(tollgate_ingest::run(listener, Arc::clone(&state), std::future::pending()));

        measure(&upstream, "tg-bench", WARM_UP_CALLS).await;
        measure(&gateway, "tg-bench", WARM_UP_CALLS).await;
        let published_before = state.recorder.stats().published;
        println!(
            "tools/call, one at a time, {calls_per_round} calls per run, {ROUNDS} rounds (latency in microseconds):"
        );
        println!(
            "{:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "round", "direct50", "direct99", "gw50", "gw99", "added50", "added99"
        );
        let (mut added_p50, mut added_p99) = (Vec::new(), Vec::new());
        for round in 1..=ROUNDS {
            let (direct50, direct99) = measure(&upstream, "tg-bench", calls_per_round).await;
            let (gateway50, gateway99) = measure(&gateway, "tg-bench", calls_per_round).await;
            added_p50.push(gateway50 - direct50);
            added_p99.push(gateway99 - direct99);
            println!(
                "{round:>6} {direct50:>10.0} {direct99:>10.0} {gateway50:>10.0} {gateway99:>10.0} {:>10.0} {:>10.0}",
                gateway50 - direct50,
                gateway99 - direct99
            );
        }
        let flushed = state.recorder.flush(Duration::from_secs(30)).await;
        let stats = state.recorder.stats();
        // Each measured session is initialize + its calls (+ nothing else the gateway records).
        let sessions_requests = ROUNDS * (calls_per_round + 1);
        println!(
            "events: {} published for {sessions_requests} gateway requests; all acknowledged: {flushed}; dropped {}",
            stats.published - published_before,
            stats.dropped
        );
        assert_eq!(stats.dropped, 0);
        println!("added_p50_us={:.0} added_p99_us={:.0}", median(&mut added_p50), median(&mut added_p99));
    });
}
