//! The gateway's HTTP surface.
//!
//! Routes answer in their provider's dialect: Anthropic-style errors under `/v1/messages`,
//! OpenAI-style everywhere else, including unknown routes and wrong methods, so a client
//! SDK always gets a body it can parse.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};

use crate::config::GatewayConfig;
use crate::error::{ApiError, Dialect, ErrorClass};
use crate::keys::KeyStore;
use crate::mcp::McpServers;
use crate::metrics::GatewayMetrics;
use crate::proxy::{Endpoint, handle};
use crate::quota::QuotaBook;
use crate::recorder::Recorder;
use crate::upstream::{RouteTable, Routes, Upstreams};
use tollgate_schemas::pricing::PriceCatalog;

/// What every handler shares.
#[derive(Debug)]
pub struct GatewayState {
    pub config: GatewayConfig,
    /// Upstreams and model routes: the configuration's, plus providers registered
    /// through governance ([`crate::governance`]).
    pub routes: Arc<RouteTable>,
    pub recorder: Recorder,
    /// Quota decisions in force and this replica's spend since them.
    pub quota: Arc<QuotaBook>,
    pub metrics: GatewayMetrics,
    /// `config.instance_id`, shared by every recorded event.
    pub instance: Arc<str>,
    /// The MCP servers behind `/mcp/{server}`.
    pub mcp: McpServers,
    /// The virtual keys in force: the configuration's, or those the governance topic
    /// gives when the gateway follows it ([`crate::governance`]).
    keys: std::sync::RwLock<Arc<KeyStore>>,
}

impl GatewayState {
    /// Builds the upstream clients for `config`; events go to `recorder`; worst-case
    /// reservations and settled spend are priced with `catalog`.
    pub fn new(config: GatewayConfig, recorder: Recorder, catalog: PriceCatalog) -> Result<Self, reqwest::Error> {
        let upstreams = Upstreams::new(&config)?;
        let routes = Arc::new(RouteTable::new(Routes { upstreams, models: config.models.clone() }));
        let instance = Arc::from(config.instance_id.as_str());
        let quota = Arc::new(QuotaBook::new(catalog));
        let metrics = GatewayMetrics::new(recorder.clone(), Arc::clone(&quota), Arc::clone(&routes));
        let mcp = McpServers::new(&config.mcp_servers, &config.mcp_allowed_hosts);
        let keys = std::sync::RwLock::new(Arc::new(config.keys.clone()));
        Ok(GatewayState { config, routes, recorder, quota, metrics, instance, mcp, keys })
    }

    /// The virtual keys in force now.
    pub fn keys(&self) -> Arc<KeyStore> {
        Arc::clone(&self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Puts `keys` in force for every request that starts from now on.
    pub fn set_keys(&self, keys: KeyStore) {
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
    }
}

/// The gateway's router. Starts the MCP servers' supervisors, so it must be called
/// inside the Tokio runtime.
pub fn app(state: Arc<GatewayState>) -> Router {
    state.mcp.start(&state);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(messages))
        .route("/mcp/{server}", any(crate::mcp::handle))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

/// Ready once the quota decisions present at start-up are applied and the recorder can
/// take events; a load balancer should send traffic only then.
async fn ready(State(state): State<Arc<GatewayState>>) -> Response {
    let mut problems = Vec::new();
    if !state.quota.caught_up() {
        problems.push("quota decisions are still being read");
    }
    if !state.recorder.accepting() {
        problems.push("the recording spool is full");
    }
    if problems.is_empty() {
        (axum::http::StatusCode::OK, "ready").into_response()
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, problems.join("; ")).into_response()
    }
}

async fn metrics(State(state): State<Arc<GatewayState>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
        .into_response()
}

async fn chat_completions(State(state): State<Arc<GatewayState>>, request: Request) -> Response {
    handle(state, Endpoint::ChatCompletions, request).await
}

async fn embeddings(State(state): State<Arc<GatewayState>>, request: Request) -> Response {
    handle(state, Endpoint::Embeddings, request).await
}

async fn messages(State(state): State<Arc<GatewayState>>, request: Request) -> Response {
    handle(state, Endpoint::Messages, request).await
}

/// The dialect of errors on `path`.
fn dialect_of(path: &str) -> Dialect {
    if path.starts_with("/v1/messages") { Dialect::Anthropic } else { Dialect::OpenAi }
}

/// `GET /v1/models`: the public models the caller's key may use.
async fn list_models(State(state): State<Arc<GatewayState>>, headers: HeaderMap) -> Response {
    let key = match state.keys().authenticate(&headers) {
        Ok(key) => key,
        Err(error) => return error.into_response(Dialect::OpenAi),
    };
    let routes = state.routes.load();
    let data: Vec<Value> = routes
        .models
        .iter()
        .filter(|(name, _)| key.may_use(name))
        .map(|(name, targets)| {
            let owned_by = targets
                .first()
                .and_then(|target| routes.upstreams.get(&target.upstream))
                .map_or("tollgate", |upstream| upstream.config.provider.as_str());
            json!({"id": name, "object": "model", "created": 0, "owned_by": owned_by})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn unknown_route(method: Method, uri: Uri) -> Response {
    ApiError::new(ErrorClass::NotFound, format!("Unknown request URL: {method} {}.", uri.path()))
        .with_code("unknown_url")
        .into_response(dialect_of(uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    let error =
        ApiError::new(ErrorClass::InvalidRequest, format!("Method {method} is not allowed for {}.", uri.path()))
            .with_code("method_not_allowed");
    let mut response = error.into_response(dialect_of(uri.path()));
    *response.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    response
}
