//! The HTTP API: routes, authentication, roles, and the JSON and CSV bodies.
//!
//! | route | roles | what |
//! | --- | --- | --- |
//! | `GET /healthz` | none | liveness |
//! | `GET /v1/reports/cost` | all | spend by group and time bucket (`format=csv` for CSV) |
//! | `GET /v1/reports/chargeback` | all | spend as FinOps FOCUS rows (CSV, or `format=json`) |
//! | `GET /v1/interactions` | all (`text` and `rule` auditor and admin only) | interaction search, oldest first, cursor pages |
//! | `GET /v1/interactions/{id}` | all (violations auditor and admin only) | one interaction with its violations, decisions and inclusion proof |
//! | `GET /v1/budgets` | all | every budget's newest state, with a forecast to the window's end |
//! | `GET /v1/decisions` | all | quota decision history |
//! | `GET /v1/violations` | auditor, admin | policy violations |
//! | `GET /v1/reports/violations` | auditor, admin | violation counts by rule and severity |
//! | `GET /v1/reports/latency` | all | latency percentiles of model calls by provider, upstream or model (see [`crate::performance`]) |
//! | `GET /v1/reports/reliability` | all | outcomes, error, retry and fallback rates, fallback targets |
//! | `GET /v1/reports/health` | all | circuit-breaker outage windows per upstream and the traffic they moved (see [`crate::health`]) |
//! | `GET /v1/whoami` | all | the caller's token name and role |
//! | `GET /`, `GET /dashboard/{file}` | none (the page asks for a token) | the dashboard (see [`crate::dashboard`]) |
//! | `GET /v1/governance` | auditor, admin | governance change history (who changed what) |
//! | `GET /v1/access` | auditor, admin | the access log: every authenticated request (see [`crate::access`]) |
//! | `GET /v1/checkpoints` | auditor, admin | the Merkle log's newest signed checkpoint per partition |
//! | `GET /v1/proofs/consistency` | auditor, admin | a consistency proof between two signed checkpoints |
//! | `GET /v1/verify` | auditor, admin | the whole archive checked against the signed checkpoints |
//! | `GET, POST /v1/admin/tokens`, `DELETE /v1/admin/tokens/{name}` | admin | list, make (or replace) and revoke tokens (see [`crate::admin`]) |
//! | `/v1/admin/keys`, `/v1/admin/teams`, `/v1/admin/budgets`, `/v1/admin/providers`, `/v1/admin/catalogs` | admin | virtual keys, team policies, budgets, providers, price catalogs (see [`crate::manage`]) |
//!
//! Finance tokens never receive captured content, upstream error bodies or violations:
//! they are removed from every interaction before the response is made.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tollgate_archive::Archive;
use tollgate_eventlog::EventLog;

use crate::access::{AccessLog, Results};

use crate::auth::{Caller, TokenConfig};
use crate::params::{ApiError, Bucket, Cursor, GroupBy, Params};
use crate::parquet::ParquetStore;
use crate::store::{CostQuery, ListQuery, SearchQuery};
use tollgate_schemas::{AccessEvent, GovernanceChange, PolicyViolation, QuotaDecision};

/// The query API's configuration (`query-api.example.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryApiConfig {
    /// Where to listen.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The Parquet archive: a directory or an object store URL (`s3://bucket/prefix`).
    #[serde(default)]
    pub archive: String,
    /// Object store options for the archive (`aws_endpoint`, `aws_region`, ...).
    #[serde(default)]
    pub archive_options: BTreeMap<String, String>,
    /// The largest page an interaction search returns.
    #[serde(default = "default_max_page")]
    pub max_page_size: usize,
    /// The Kafka cluster the access log is published to (`bootstrap_servers`,
    /// `properties` for SASL/TLS, ...). Without it the binary uses the embedded log.
    #[serde(default)]
    pub kafka: Option<tollgate_eventlog::KafkaConfig>,
    /// Which store answers reports, searches and listings: `parquet` (DataFusion over the
    /// archive, the default) or `clickhouse` (the tables of `[clickhouse]`). Inclusion
    /// proofs and verification always come from the archive.
    #[serde(default)]
    pub backend: BackendKind,
    /// ClickHouse, for `backend = "clickhouse"`.
    #[serde(default)]
    pub clickhouse: Option<crate::clickhouse::ClickHouseConnection>,
    /// The verifier key of the archive's Merkle log (`name+id+key`, from `tollgate
    /// keygen`). With it the API checks the proofs it returns and serves `/v1/verify`.
    #[serde(default)]
    pub verifier_key: Option<String>,
    /// How long a request waits for the event log to take its access event before it is
    /// refused with 503 (milliseconds).
    #[serde(default = "default_access_log_timeout_ms")]
    pub access_log_timeout_ms: u64,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

fn default_access_log_timeout_ms() -> u64 {
    10_000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

fn default_max_page() -> usize {
    1_000
}

impl Default for QueryApiConfig {
    fn default() -> Self {
        QueryApiConfig {
            listen: default_listen(),
            archive: String::new(),
            archive_options: BTreeMap::new(),
            max_page_size: default_max_page(),
            kafka: None,
            backend: BackendKind::default(),
            clickhouse: None,
            verifier_key: None,
            access_log_timeout_ms: default_access_log_timeout_ms(),
            tokens: Vec::new(),
        }
    }
}

/// The store that answers queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    #[default]
    Parquet,
    Clickhouse,
}

/// The store that answers queries, by [`BackendKind`].
#[derive(Debug, Clone)]
enum Backend {
    Parquet(ParquetStore),
    ClickHouse(Box<crate::clickhouse::ClickHouseQueries>),
}

impl Backend {
    async fn cost_report(&self, query: &CostQuery) -> Result<Vec<crate::store::CostLine>, ApiError> {
        match self {
            Backend::Parquet(store) => store.cost_report(query).await,
            Backend::ClickHouse(store) => store.cost_report(query).await,
        }
    }

    async fn search(&self, query: &SearchQuery) -> Result<crate::store::Page, ApiError> {
        match self {
            Backend::Parquet(store) => store.search(query).await,
            Backend::ClickHouse(store) => store.search(query).await,
        }
    }

    async fn interaction(&self, id: uuid::Uuid) -> Result<Option<crate::store::InteractionDetail>, ApiError> {
        match self {
            Backend::Parquet(store) => store.interaction(id).await,
            Backend::ClickHouse(store) => store.interaction(id).await,
        }
    }

    async fn list<E: crate::store::Listed>(&self, query: &ListQuery) -> Result<crate::store::EventPage<E>, ApiError> {
        match self {
            Backend::Parquet(store) => store.list(query).await,
            Backend::ClickHouse(store) => store.list(query).await,
        }
    }

    async fn budget_status(
        &self,
        subject: Option<(String, String)>,
        now: i64,
    ) -> Result<Vec<crate::store::BudgetStatus>, ApiError> {
        match self {
            Backend::Parquet(store) => store.budget_status(subject, now).await,
            Backend::ClickHouse(store) => store.budget_status(subject, now).await,
        }
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("listening: {0}")]
    Listen(std::io::Error),
    #[error("tokens: {0}")]
    Tokens(String),
    #[error(transparent)]
    Archive(#[from] tollgate_archive::ArchiveError),
    #[error(transparent)]
    Query(#[from] crate::parquet::QueryError),
    #[error("archive location `{0}` is not a URL")]
    Location(String),
}

/// The error body of every endpoint.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Documents the body `ApiError` renders.
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// `invalid_parameter`, `unauthorized`, `forbidden`, `not_found` or `internal`.
    code: String,
    message: String,
    /// The query parameter at fault, for `invalid_parameter`.
    parameter: Option<String>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LatencyReportParams {
    /// Start of the range (inclusive): RFC 3339 or YYYY-MM-DD.
    #[param(example = "2026-11-26")]
    from: String,
    /// End of the range (exclusive), after `from`.
    #[param(example = "2026-11-28")]
    to: String,
    /// Comma-separated groupings: provider, upstream, model (the public name), routed_model.
    #[param(example = "provider,model")]
    group_by: Option<String>,
    /// Time buckets (UTC): hour or day.
    #[param(pattern = "^(hour|day)$")]
    bucket: Option<String>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct HealthReportParams {
    /// Start of the range (inclusive): RFC 3339 or YYYY-MM-DD.
    #[param(example = "2026-11-26")]
    from: String,
    /// End of the range (exclusive), after `from`.
    #[param(example = "2026-11-28")]
    to: String,
    /// One upstream (its configured name) only.
    #[param(example = "openai-primary")]
    upstream: Option<String>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ReliabilityReportParams {
    /// Start of the range (inclusive): RFC 3339 or YYYY-MM-DD.
    #[param(example = "2026-11-26")]
    from: String,
    /// End of the range (exclusive), after `from`.
    #[param(example = "2026-11-28")]
    to: String,
    /// Comma-separated groupings: provider, upstream, model (the public name), routed_model.
    #[param(example = "model")]
    group_by: Option<String>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ViolationReportParams {
    /// Start of the range (inclusive): RFC 3339 or YYYY-MM-DD.
    #[param(example = "2026-11-26")]
    from: String,
    /// End of the range (exclusive), after `from`.
    #[param(example = "2026-11-28")]
    to: String,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CostReportParams {
    /// Start of the range (inclusive): RFC 3339 or YYYY-MM-DD.
    #[param(example = "2026-11-26")]
    from: String,
    /// End of the range (exclusive), after `from`.
    #[param(example = "2026-11-28")]
    to: String,
    /// Comma-separated groupings: org, team, user, project, key, provider, model, tool,
    /// server (the MCP server of tool calls).
    #[param(example = "team,model")]
    group_by: Option<String>,
    /// Time buckets: hour, day or month.
    #[param(pattern = "^(hour|day|month)$")]
    bucket: Option<String>,
    /// Time zone of the buckets (IANA name or offset); UTC by default.
    #[param(example = "Europe/Paris")]
    tz: Option<String>,
    /// json (default) or csv.
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SearchParams {
    /// Start of the range (inclusive); give both ends or neither.
    from: Option<String>,
    /// End of the range (exclusive).
    to: Option<String>,
    org: Option<String>,
    team: Option<String>,
    user: Option<String>,
    project: Option<String>,
    key: Option<String>,
    provider: Option<String>,
    /// The model the caller asked for.
    model: Option<String>,
    tool: Option<String>,
    /// ok, tool_error, upstream_error, ... (the interaction outcomes).
    outcome: Option<String>,
    /// Interactions that raised a violation of this rule.
    rule: Option<String>,
    /// Text in the captured request or response (auditor and admin only).
    text: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to the configured maximum (default 100).
    limit: Option<u32>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct BudgetParams {
    /// `org:ID`, `team:ID`, `user:ID` or `key:ID`.
    subject: Option<String>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DecisionParams {
    from: Option<String>,
    to: Option<String>,
    /// `kind:id`.
    subject: Option<String>,
    budget: Option<String>,
    /// allow, warn or block.
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ViolationParams {
    from: Option<String>,
    to: Option<String>,
    org: Option<String>,
    team: Option<String>,
    user: Option<String>,
    key: Option<String>,
    rule: Option<String>,
    /// low, medium, high or critical.
    severity: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct GovernanceParams {
    from: Option<String>,
    to: Option<String>,
    /// key, budget, policy, provider, price_catalog, ...
    target_kind: Option<String>,
    target: Option<String>,
    actor: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// The names of the query parameters `P` documents: the only ones its endpoint accepts.
fn names<P: utoipa::IntoParams>() -> Vec<String> {
    P::into_params(|| None).into_iter().map(|parameter| parameter.name).collect()
}

/// The OpenAPI document of this API, served at `/openapi.json`.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tollgate query API",
        description = "Read-only compliance queries over Tollgate's record of AI traffic: cost reports for finance, interaction history for auditors."
    ),
    paths(
        cost_report,
        chargeback,
        search,
        interaction,
        budgets,
        decisions,
        violations,
        governance,
        access_log,
        checkpoints,
        consistency,
        verify,
        list_tokens,
        create_token,
        revoke_token,
        violation_report,
        latency_report,
        reliability_report,
        health_report,
        whoami,
        crate::manage::list_keys,
        crate::manage::create_key,
        crate::manage::update_key,
        crate::manage::rotate_key,
        crate::manage::revoke_key,
        crate::manage::list_teams,
        crate::manage::set_team,
        crate::manage::delete_team,
        crate::manage::list_budgets,
        crate::manage::set_budget,
        crate::manage::lift_budget,
        crate::manage::list_providers,
        crate::manage::set_provider,
        crate::manage::delete_provider,
        crate::manage::list_catalogs,
        crate::manage::publish_catalog
    ),
    components(schemas(ErrorBody, ErrorDetail, NewToken)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub(crate) struct AppState {
    pub(crate) log: Arc<dyn EventLog>,
    store: Backend,
    /// The archive's tables, for the Merkle log columns whatever the backend.
    parquet: ParquetStore,
    archive: Archive,
    verifier_key: Option<String>,
    pub(crate) tokens: Arc<crate::admin::GovernanceBook>,
    pub(crate) access: AccessLog,
    max_page: usize,
}

/// `response` marked with the number of records it holds, for the access log.
pub(crate) fn counted(mut response: Response, results: usize) -> Response {
    response.extensions_mut().insert(Results(results as u64));
    response
}

/// The API's routes over the archive `config.archive`, recording every authenticated
/// request on `log` (see [`crate::access`]).
pub async fn router(config: &QueryApiConfig, log: Arc<dyn EventLog>) -> Result<Router, StartError> {
    router_waiting_for(config, log, Vec::new()).await
}

/// [`router`], for a process that runs other services following governance on `log`:
/// an admin change returns once each of `followers` has applied it too (see
/// [`crate::admin::GovernanceBook::waiting_for`]).
pub async fn router_waiting_for(
    config: &QueryApiConfig,
    log: Arc<dyn EventLog>,
    followers: Vec<Arc<tollgate_eventlog::Follower>>,
) -> Result<Router, StartError> {
    let tokens =
        Arc::new(crate::admin::GovernanceBook::new(&config.tokens).map_err(StartError::Tokens)?.waiting_for(followers));
    let archive = Archive::open(&config.archive, &config.archive_options)?;
    let store = ParquetStore::new();
    if config.archive.contains("://") {
        let url = url::Url::parse(&config.archive).map_err(|_| StartError::Location(config.archive.clone()))?;
        store.register_archive_in(&url, Arc::clone(archive.store())).await?;
    } else {
        store.register_archive(std::path::Path::new(&config.archive)).await?;
    }
    let access = AccessLog::new(Arc::clone(&log), Duration::from_millis(config.access_log_timeout_ms.max(1)));
    if let Some(key) = &config.verifier_key {
        // A key that cannot verify anything is a configuration error, found at start.
        let probe = tollgate_archive::transparency::InclusionProof {
            partition: 0,
            leaf_index: 0,
            tree_size: 0,
            leaf_hash: String::new(),
            hashes: Vec::new(),
            checkpoint: String::new(),
        };
        tollgate_archive::transparency::check_inclusion_proof(&probe, key)
            .map_err(|error| StartError::Config(format!("verifier_key: {error}")))?;
    }
    let backend = match config.backend {
        BackendKind::Parquet => Backend::Parquet(store.clone()),
        BackendKind::Clickhouse => {
            let connection = config.clickhouse.as_ref().ok_or_else(|| {
                StartError::Config("backend = \"clickhouse\" needs a [clickhouse] section with its url".to_owned())
            })?;
            Backend::ClickHouse(Box::new(crate::clickhouse::ClickHouseQueries::new(connection)))
        }
    };
    // Token changes made through the API: read them all before answering anything, so a
    // revoked token is refused from the first request on.
    if !tokens.follow(Arc::clone(&log), Duration::from_secs(60)).await {
        return Err(StartError::Config("the governance topic could not be read within 60 s".to_owned()));
    }
    let state = Arc::new(AppState {
        log,
        store: backend,
        parquet: store,
        archive,
        verifier_key: config.verifier_key.clone(),
        tokens,
        access,
        max_page: config.max_page_size.max(1),
    });
    let v1 = Router::new()
        .route("/v1/reports/cost", get(cost_report))
        .route("/v1/reports/chargeback", get(chargeback))
        .route("/v1/reports/violations", get(violation_report))
        .route("/v1/reports/latency", get(latency_report))
        .route("/v1/reports/reliability", get(reliability_report))
        .route("/v1/reports/health", get(health_report))
        .route("/v1/whoami", get(whoami))
        .route("/v1/interactions", get(search))
        .route("/v1/interactions/{id}", get(interaction))
        .route("/v1/budgets", get(budgets))
        .route("/v1/decisions", get(decisions))
        .route("/v1/violations", get(violations))
        .route("/v1/governance", get(governance))
        .route("/v1/access", get(access_log))
        .route("/v1/checkpoints", get(checkpoints))
        .route("/v1/proofs/consistency", get(consistency))
        .route("/v1/verify", get(verify))
        .route("/v1/admin/tokens", get(list_tokens).post(create_token))
        .route("/v1/admin/tokens/{name}", axum::routing::delete(revoke_token))
        .merge(crate::manage::routes())
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&state), crate::access::guard));
    Ok(Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(|| async { Json(<ApiDoc as utoipa::OpenApi>::openapi()) }))
        .merge(crate::dashboard::routes())
        .merge(v1)
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state))
}

pub(crate) fn authorize(headers: &HeaderMap, tokens: &crate::admin::GovernanceBook) -> Result<Caller, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer TOKEN`"))?;
    // The scheme name is case-insensitive (RFC 9110).
    let token = value
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer TOKEN`"))?;
    tokens.caller(token.trim()).ok_or_else(|| ApiError::unauthorized("unknown token"))
}

fn pairs(query: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

#[utoipa::path(
    get,
    path = "/v1/reports/cost",
    params(CostReportParams),
    responses(
        (status = 200, description = "Cost lines and totals (JSON), or the lines as CSV with `format=csv`."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
    )
)]
async fn cost_report(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let params = Params::new(pairs(query), &names::<CostReportParams>())?;
    let range = params.time_range()?;
    let group_by = params.get("group_by").map(GroupBy::parse_list).transpose()?.unwrap_or_default();
    let bucket = params.get("bucket").map(Bucket::parse).transpose()?;
    let time_zone = params.get("tz").map(crate::params::time_zone).transpose()?.unwrap_or_else(|| "UTC".to_owned());
    let csv = match params.get("format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::bad_parameter("format", format!("`{other}` is not json or csv"))),
    };
    let query = CostQuery { range, group_by, bucket, time_zone };
    let lines = state.store.cost_report(&query).await?;
    if !csv {
        let total: i64 = lines.iter().map(|line| line.cost_nanos).sum();
        let count = lines.len();
        let body = Json(serde_json::json!({
            "total_cost_nanos": total,
            "total_cost_usd": tollgate_schemas::Nanodollars(total).to_string(),
            "lines": lines,
        }));
        return Ok(counted(body.into_response(), count));
    }
    let mut body = crate::export::CsvBody::new();
    let mut header_row: Vec<&str> = Vec::new();
    if query.bucket.is_some() {
        header_row.push("bucket_start");
    }
    header_row.extend(query.group_by.iter().map(|group| group.as_str()));
    header_row.extend(["interactions", "cost_nanos", "cost_usd", "input_tokens", "output_tokens"]);
    body.record(&header_row)?;
    for line in &lines {
        let mut row: Vec<String> = Vec::new();
        if query.bucket.is_some() {
            row.push(line.bucket_start.clone().unwrap_or_default());
        }
        for group in &query.group_by {
            row.push(line.groups.get(group.as_str()).cloned().flatten().unwrap_or_default());
        }
        row.extend([
            line.interactions.to_string(),
            line.cost_nanos.to_string(),
            line.cost_usd.clone(),
            line.input_tokens.to_string(),
            line.output_tokens.to_string(),
        ]);
        body.record(&row)?;
    }
    let body = body.finish()?;
    Ok(counted(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response(), lines.len()))
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ChargebackParams {
    /// Start of the range (inclusive): RFC 3339 or YYYY-MM-DD.
    #[param(example = "2026-11-01")]
    from: String,
    /// End of the range (exclusive), after `from`.
    #[param(example = "2026-12-01")]
    to: String,
    /// The charge period: hour, day (default) or month, in UTC.
    #[param(pattern = "^(hour|day|month)$")]
    granularity: Option<String>,
    /// csv (default) or json.
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/reports/chargeback",
    params(ChargebackParams),
    responses(
        (status = 200, description = "Spend as FinOps FOCUS 1.1 rows: one per charge period, org, team, user, project, key, and provider and model or MCP server and tool. CSV unless `format=json`."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
    )
)]
async fn chargeback(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let params = Params::new(pairs(query), &names::<ChargebackParams>())?;
    let range = params.time_range()?;
    let bucket = match params.get("granularity") {
        None => Bucket::Day,
        Some(text) => Bucket::parse(text)
            .map_err(|_| ApiError::bad_parameter("granularity", format!("`{text}` is not hour, day or month")))?,
    };
    let csv = match params.get("format") {
        None | Some("csv") => true,
        Some("json") => false,
        Some(other) => return Err(ApiError::bad_parameter("format", format!("`{other}` is not csv or json"))),
    };
    let group_by = GroupBy::parse_list(&crate::focus::GROUPINGS.join(","))?;
    let query = CostQuery { range, group_by, bucket: Some(bucket), time_zone: "UTC".to_owned() };
    let rows = crate::focus::rows(&state.store.cost_report(&query).await?, bucket)?;
    let count = rows.len();
    if !csv {
        return Ok(counted(Json(serde_json::json!({ "rows": rows })).into_response(), count));
    }
    let body = crate::export::CsvBody::from_rows(&rows)?;
    let headers = [
        (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
        (header::CONTENT_DISPOSITION, "attachment; filename=\"tollgate-focus.csv\""),
    ];
    Ok(counted((headers, body).into_response(), count))
}

/// The search parameters that filter on a stored column by equality.
const EQUALITY_FILTERS: [(&str, &str); 8] = [
    ("org", "org_id"),
    ("team", "team_id"),
    ("user", "user_id"),
    ("project", "project_id"),
    ("key", "key_id"),
    ("provider", "gen_ai_provider_name"),
    ("model", "gen_ai_request_model"),
    ("tool", "gen_ai_tool_name"),
];

#[utoipa::path(
    get,
    path = "/v1/interactions",
    params(SearchParams),
    responses(
        (status = 200, description = "A page of priced interactions, oldest first, and the cursor of the next page."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "`text` and `rule` need an auditor or admin token.", body = ErrorBody),
    )
)]
async fn search(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::new(pairs(query), &names::<SearchParams>())?;
    let range = match (params.get("from"), params.get("to")) {
        (None, None) => None,
        _ => Some(params.time_range()?),
    };
    let mut equals = Vec::new();
    for (name, column) in EQUALITY_FILTERS {
        if let Some(value) = params.get(name) {
            equals.push((column, value.to_owned()));
        }
    }
    if let Some(outcome) = params.get("outcome") {
        if tollgate_schemas::OutcomeStatus::parse(outcome).is_none() {
            return Err(ApiError::bad_parameter("outcome", format!("`{outcome}` is not an outcome")));
        }
        equals.push(("outcome", outcome.to_owned()));
    }
    let text = params.get("text").map(str::to_owned);
    if text.is_some() && !caller.role.sees_content() {
        return Err(ApiError::forbidden("searching captured content needs an auditor or admin token"));
    }
    if params.get("rule").is_some() && !caller.role.sees_content() {
        return Err(ApiError::forbidden("searching by violated rule needs an auditor or admin token"));
    }
    let query = SearchQuery {
        range,
        equals,
        rule: params.get("rule").map(str::to_owned),
        text,
        after: params.get("cursor").map(Cursor::decode).transpose()?,
        limit: params.limit(100.min(state.max_page), state.max_page)?,
    };
    let mut page = state.store.search(&query).await?;
    if !caller.role.sees_content() {
        for record in &mut page.interactions {
            withhold_content(&mut record.interaction);
        }
    }
    let count = page.interactions.len();
    Ok(counted(Json(page).into_response(), count))
}

#[utoipa::path(
    get,
    path = "/v1/interactions/{id}",
    params(("id" = uuid::Uuid, Path, description = "The interaction id")),
    responses(
        (status = 200, description = "The interaction, its violations and the decisions in force for its subjects."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 404, description = "No such interaction in the archive.", body = ErrorBody),
    )
)]
async fn interaction(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::bad_parameter("id", "not an interaction id (a UUID)"))?;
    let mut detail = state
        .store
        .interaction(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no interaction {id} in the archive")))?;
    let proof = inclusion(&state, &detail.interaction).await?;
    if !caller.role.sees_content() {
        withhold_content(&mut detail.interaction.interaction);
        // Violations are auditors' history (`/v1/violations`), and their evidence quotes
        // the prompt.
        detail.violations.clear();
    }
    let mut body = serde_json::to_value(&detail).map_err(|error| ApiError::internal(error.to_string()))?;
    body["inclusion_proof"] = serde_json::to_value(&proof).map_err(|error| ApiError::internal(error.to_string()))?;
    Ok(counted(Json(body).into_response(), 1))
}

/// Removes what only roles that see content may read: the captured request and response,
/// and the upstream's error body (which can quote the request).
fn withhold_content(interaction: &mut tollgate_schemas::Interaction) {
    interaction.content.captured = None;
    interaction.outcome.error_message = None;
}

/// Where an interaction stands in the archive's Merkle log.
#[derive(Debug, serde::Serialize)]
struct ProofAnswer {
    /// `included`: the proof is given; `pending`: the record is in the log but no signed
    /// checkpoint covers it yet; `not_logged`: the archive keeps no Merkle log;
    /// `unlocated`: the archive keeps a log but the stored row does not say where it is in
    /// it (written before the log was kept, or rewritten since), so nothing proves it.
    status: &'static str,
    #[serde(flatten)]
    proof: Option<tollgate_archive::transparency::InclusionProof>,
    /// Whether this server found the proof valid against the checkpoint signed with its
    /// configured verifier key; absent without one. Clients should check for themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    verified: Option<bool>,
}

async fn inclusion(state: &AppState, record: &tollgate_schemas::PricedInteraction) -> Result<ProofAnswer, ApiError> {
    use tollgate_archive::transparency;
    let internal = |error: tollgate_archive::ArchiveError| ApiError::internal(error.to_string());
    let Some((partition, leaf_index)) = state.parquet.merkle_position(record.interaction.id).await? else {
        // A stored row without its place in a log the archive keeps was written before
        // the log was, or was rewritten since: nothing can prove it.
        if transparency::keeps_log(&state.archive).await.map_err(internal)? {
            let verified = state.verifier_key.as_ref().map(|_| false);
            return Ok(ProofAnswer { status: "unlocated", proof: None, verified });
        }
        return Ok(ProofAnswer { status: "not_logged", proof: None, verified: None });
    };
    let leaf = transparency::leaf_hash(record).map_err(internal)?;
    let table = tollgate_schemas::archive::PRICED_INTERACTIONS;
    let Some(proof) =
        transparency::prove_inclusion(&state.archive, table, partition, leaf_index, leaf).await.map_err(internal)?
    else {
        return Ok(ProofAnswer { status: "pending", proof: None, verified: None });
    };
    let verified = match &state.verifier_key {
        Some(key) => Some(transparency::check_inclusion_proof(&proof, key).map_err(internal)?),
        None => None,
    };
    Ok(ProofAnswer { status: "included", proof: Some(proof), verified })
}

/// `kind:id`, as subjects are written.
fn subject(params: &Params) -> Result<Option<(String, String)>, ApiError> {
    let Some(text) = params.get("subject") else { return Ok(None) };
    let parsed = text
        .split_once(':')
        .filter(|(kind, id)| tollgate_schemas::SubjectKind::parse(kind).is_some() && !id.is_empty());
    match parsed {
        Some((kind, id)) => Ok(Some((kind.to_owned(), id.to_owned()))),
        None => Err(ApiError::bad_parameter(
            "subject",
            format!("`{text}` is not `org:ID`, `team:ID`, `user:ID` or `key:ID`"),
        )),
    }
}

/// The time range (optional, but both ends if either), cursor and page size of a listing.
fn listing(params: &Params, max_page: usize) -> Result<ListQuery, ApiError> {
    let range = match (params.get("from"), params.get("to")) {
        (None, None) => None,
        _ => Some(params.time_range()?),
    };
    Ok(ListQuery {
        range,
        equals: Vec::new(),
        after: params.get("cursor").map(Cursor::decode).transpose()?,
        limit: params.limit(100.min(max_page), max_page)?,
    })
}

#[utoipa::path(
    get,
    path = "/v1/reports/violations",
    params(ViolationReportParams),
    responses(
        (status = 200, description = "Violations in the range by rule and severity, most frequent first."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "Auditor and admin tokens only.", body = ErrorBody),
    )
)]
async fn violation_report(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_auditor(&caller)?;
    let params = Params::new(pairs(query), &names::<ViolationReportParams>())?;
    let range = params.time_range()?;
    let counts = match &state.store {
        Backend::Parquet(store) => store.violation_counts(range).await?,
        Backend::ClickHouse(store) => store.violation_counts(range).await?,
    };
    let total: i64 = counts.iter().map(|count| count.violations).sum();
    let lines = counts.len();
    Ok(counted(Json(serde_json::json!({ "counts": counts, "total": total })).into_response(), lines))
}

fn performance_query(params: &Params, buckets: bool) -> Result<crate::performance::PerformanceQuery, ApiError> {
    let range = params.time_range()?;
    let group_by = match params.get("group_by") {
        Some(text) => crate::performance::PerformanceGroup::parse_list(text)?,
        None => Vec::new(),
    };
    let bucket = match params.get("bucket") {
        None => None,
        Some(_) if !buckets => return Err(ApiError::bad_parameter("bucket", "this report has no time buckets")),
        Some("hour") => Some(Bucket::Hour),
        Some("day") => Some(Bucket::Day),
        Some(other) => return Err(ApiError::bad_parameter("bucket", format!("`{other}` is not hour or day"))),
    };
    Ok(crate::performance::PerformanceQuery { range, group_by, bucket })
}

#[utoipa::path(
    get,
    path = "/v1/reports/latency",
    params(LatencyReportParams),
    responses(
        (status = 200, description = "Latency of successful model calls per group and bucket: count, duration p50/p95/p99, time to first token p50/p95 (streams), gateway overhead p50/p95, output tokens per second."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
    )
)]
async fn latency_report(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let params = Params::new(pairs(query), &names::<LatencyReportParams>())?;
    let query = performance_query(&params, true)?;
    let lines = match &state.store {
        Backend::Parquet(store) => store.latency(&query).await?,
        Backend::ClickHouse(store) => store.latency(&query).await?,
    };
    let count = lines.len();
    Ok(counted(Json(serde_json::json!({ "lines": lines })).into_response(), count))
}

#[utoipa::path(
    get,
    path = "/v1/reports/reliability",
    params(ReliabilityReportParams),
    responses(
        (status = 200, description = "Model calls per group by outcome, with error, retry and fallback rates, and the fallback targets that served."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
    )
)]
async fn reliability_report(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::new(pairs(query), &names::<ReliabilityReportParams>())?;
    let query = performance_query(&params, false)?;
    let report = match &state.store {
        Backend::Parquet(store) => store.reliability(&query).await?,
        Backend::ClickHouse(store) => store.reliability(&query).await?,
    };
    let count = report.lines.len() + report.fallback_targets.len();
    Ok(counted(Json(report).into_response(), count))
}

#[utoipa::path(
    get,
    path = "/v1/reports/health",
    params(HealthReportParams),
    responses(
        (status = 200, description = "Per upstream, the windows when a gateway's circuit breaker was open, and the model calls that preferred it and were served elsewhere or failed meanwhile."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
    )
)]
async fn health_report(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let params = Params::new(pairs(query), &names::<HealthReportParams>())?;
    let query = crate::health::HealthQuery {
        range: params.time_range()?,
        upstream: params.get("upstream").map(str::to_owned),
        now: tollgate_schemas::now_unix_micros(),
    };
    let report = match &state.store {
        Backend::Parquet(store) => store.health(&query).await?,
        Backend::ClickHouse(store) => store.health(&query).await?,
    };
    let count = report.upstreams.iter().map(|timeline| timeline.windows.len()).sum();
    Ok(counted(Json(report).into_response(), count))
}

#[utoipa::path(
    get,
    path = "/v1/whoami",
    responses(
        (status = 200, description = "The caller's token name and role."),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
    )
)]
async fn whoami(Extension(caller): Extension<Caller>) -> Response {
    counted(Json(serde_json::json!({ "name": caller.name, "role": caller.role.as_str() })).into_response(), 1)
}

fn require_auditor(caller: &Caller) -> Result<(), ApiError> {
    if caller.role.sees_content() {
        Ok(())
    } else {
        Err(ApiError::forbidden("this history is for auditor and admin tokens"))
    }
}

#[utoipa::path(
    get,
    path = "/v1/budgets",
    params(BudgetParams),
    responses(
        (status = 200, description = "Each budget's newest state with a forecast to its window's end."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
    )
)]
async fn budgets(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let params = Params::new(pairs(query), &names::<BudgetParams>())?;
    let status = state.store.budget_status(subject(&params)?, tollgate_schemas::now_unix_micros()).await?;
    let count = status.len();
    Ok(counted(Json(serde_json::json!({ "budgets": status })).into_response(), count))
}

#[utoipa::path(
    get,
    path = "/v1/decisions",
    params(DecisionParams),
    responses(
        (status = 200, description = "A page of quota decisions in time order."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
    )
)]
async fn decisions(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let params = Params::new(pairs(query), &names::<DecisionParams>())?;
    let mut query = listing(&params, state.max_page)?;
    if let Some((kind, id)) = subject(&params)? {
        query.equals.push(("subject_kind", kind));
        query.equals.push(("subject_id", id));
    }
    if let Some(budget) = params.get("budget") {
        query.equals.push(("budget_id", budget.to_owned()));
    }
    if let Some(value) = params.get("state") {
        if tollgate_schemas::QuotaState::parse(value).is_none() {
            return Err(ApiError::bad_parameter("state", format!("`{value}` is not allow, warn or block")));
        }
        query.equals.push(("state", value.to_owned()));
    }
    let page = state.store.list::<QuotaDecision>(&query).await?;
    let count = page.items.len();
    Ok(counted(Json(page).into_response(), count))
}

#[utoipa::path(
    get,
    path = "/v1/violations",
    params(ViolationParams),
    responses(
        (status = 200, description = "A page of policy violations in time order."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "Auditor and admin tokens only.", body = ErrorBody),
    )
)]
async fn violations(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_auditor(&caller)?;
    let params = Params::new(pairs(query), &names::<ViolationParams>())?;
    let mut query = listing(&params, state.max_page)?;
    for (name, column) in
        [("org", "org_id"), ("team", "team_id"), ("user", "user_id"), ("key", "key_id"), ("rule", "rule_id")]
    {
        if let Some(value) = params.get(name) {
            query.equals.push((column, value.to_owned()));
        }
    }
    if let Some(value) = params.get("severity") {
        if !["low", "medium", "high", "critical"].contains(&value) {
            return Err(ApiError::bad_parameter("severity", format!("`{value}` is not low, medium, high or critical")));
        }
        query.equals.push(("severity", value.to_owned()));
    }
    let page = state.store.list::<PolicyViolation>(&query).await?;
    let count = page.items.len();
    Ok(counted(Json(page).into_response(), count))
}

#[utoipa::path(
    get,
    path = "/v1/governance",
    params(GovernanceParams),
    responses(
        (status = 200, description = "A page of governance changes in time order."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "Auditor and admin tokens only.", body = ErrorBody),
    )
)]
async fn governance(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_auditor(&caller)?;
    let params = Params::new(pairs(query), &names::<GovernanceParams>())?;
    let mut query = listing(&params, state.max_page)?;
    for (name, column) in [("target_kind", "target_kind"), ("target", "target_id"), ("actor", "actor_id")] {
        if let Some(value) = params.get(name) {
            query.equals.push((column, value.to_owned()));
        }
    }
    let page = state.store.list::<GovernanceChange>(&query).await?;
    let count = page.items.len();
    Ok(counted(Json(page).into_response(), count))
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AccessParams {
    from: Option<String>,
    to: Option<String>,
    /// The token's configured name.
    token: Option<String>,
    /// finance, auditor or admin.
    role: Option<String>,
    /// The request path, exactly (for example `/v1/interactions`).
    path: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/v1/access",
    params(AccessParams),
    responses(
        (status = 200, description = "A page of the access log (who queried what, when) in time order."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "Auditor and admin tokens only.", body = ErrorBody),
    )
)]
async fn access_log(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_auditor(&caller)?;
    let params = Params::new(pairs(query), &names::<AccessParams>())?;
    let mut query = listing(&params, state.max_page)?;
    for (name, column) in [("token", "token_name"), ("path", "path")] {
        if let Some(value) = params.get(name) {
            query.equals.push((column, value.to_owned()));
        }
    }
    if let Some(value) = params.get("role") {
        if !["finance", "auditor", "admin"].contains(&value) {
            return Err(ApiError::bad_parameter("role", format!("`{value}` is not finance, auditor or admin")));
        }
        query.equals.push(("role", value.to_owned()));
    }
    let page = state.store.list::<AccessEvent>(&query).await?;
    let count = page.items.len();
    Ok(counted(Json(page).into_response(), count))
}

#[utoipa::path(
    get,
    path = "/v1/checkpoints",
    responses(
        (status = 200, description = "For each partition of the Merkle log over the priced interactions: the newest signed checkpoint and the sizes of every checkpoint signed."),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "Auditor and admin tokens only.", body = ErrorBody),
    )
)]
async fn checkpoints(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    use tollgate_archive::transparency;
    require_auditor(&caller)?;
    Params::new(pairs(query), &[] as &[&str])?;
    let internal = |error: tollgate_archive::ArchiveError| ApiError::internal(error.to_string());
    let table = tollgate_schemas::archive::PRICED_INTERACTIONS;
    let mut partitions = Vec::new();
    for partition in transparency::partitions(&state.archive).await.map_err(internal)? {
        let Some(note) =
            transparency::read_checkpoint(&state.archive, table, partition, None).await.map_err(internal)?
        else {
            continue;
        };
        partitions.push(serde_json::json!({
            "partition": partition,
            "tree_size": transparency::checkpoint_size(&note).map_err(internal)?,
            "checkpoint": String::from_utf8_lossy(&note),
            "signed_sizes": transparency::checkpoint_sizes(&state.archive, table, partition).await.map_err(internal)?,
        }));
    }
    let count = partitions.len();
    Ok(counted(Json(serde_json::json!({ "partitions": partitions })).into_response(), count))
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ConsistencyParams {
    /// The Merkle log's partition.
    partition: i32,
    /// The size of the older signed checkpoint.
    old_size: u64,
    /// The size of the newer signed checkpoint, above `old_size`.
    new_size: u64,
}

#[utoipa::path(
    get,
    path = "/v1/proofs/consistency",
    params(ConsistencyParams),
    responses(
        (status = 200, description = "An RFC 9162 consistency proof between two signed checkpoints, with both checkpoints."),
        (status = 400, description = "A parameter is invalid; the body names it.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "Auditor and admin tokens only.", body = ErrorBody),
        (status = 404, description = "No checkpoint of one of the sizes.", body = ErrorBody),
    )
)]
async fn consistency(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_auditor(&caller)?;
    let params = Params::new(pairs(query), &names::<ConsistencyParams>())?;
    let number = |name: &str| -> Result<u64, ApiError> {
        params.whole_number(name)?.ok_or_else(|| ApiError::bad_parameter(name, "required"))
    };
    let partition = i32::try_from(number("partition")?)
        .map_err(|_| ApiError::bad_parameter("partition", "not a partition number"))?;
    let (old_size, new_size) = (number("old_size")?, number("new_size")?);
    if old_size == 0 || new_size <= old_size {
        return Err(ApiError::bad_parameter("new_size", "must be above old_size, which must be above 0"));
    }
    let table = tollgate_schemas::archive::PRICED_INTERACTIONS;
    let proof = tollgate_archive::transparency::prove_consistency(&state.archive, table, partition, old_size, new_size)
        .await
        .map_err(|error| ApiError::internal(error.to_string()))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "partition {partition} has no signed checkpoint of {old_size} or {new_size} leaves"
            ))
        })?;
    Ok(counted(Json(proof).into_response(), 1))
}

#[utoipa::path(
    get,
    path = "/v1/verify",
    responses(
        (status = 200, description = "Every partition of the archive checked against its signed checkpoint: altered, missing or reordered records are named. `ok` is false if any partition fails."),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "Auditor and admin tokens only.", body = ErrorBody),
        (status = 409, description = "No verifier key is configured.", body = ErrorBody),
    )
)]
async fn verify(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_auditor(&caller)?;
    Params::new(pairs(query), &[] as &[&str])?;
    let Some(key) = &state.verifier_key else {
        return Err(ApiError {
            status: axum::http::StatusCode::CONFLICT,
            code: "not_configured",
            message: "verification needs the log's verifier key: set `verifier_key` in the configuration".to_owned(),
            parameter: None,
        });
    };
    let reports = tollgate_archive::transparency::verify(&state.archive, key)
        .await
        .map_err(|error| ApiError::internal(error.to_string()))?;
    let ok = reports.iter().all(tollgate_archive::transparency::Report::ok);
    let count = reports.len();
    Ok(counted(Json(serde_json::json!({ "ok": ok, "partitions": reports })).into_response(), count))
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == crate::auth::Role::Admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("token administration is for admin tokens"))
    }
}

/// A token to make: its name (as the access log will name its holder) and role.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`. Making a token with the name of an existing one
    /// replaces it (rotation): the old token stops working.
    #[schema(example = "finance-eu")]
    name: String,
    /// finance, auditor or admin.
    #[schema(example = "finance")]
    role: String,
}

#[utoipa::path(
    get,
    path = "/v1/admin/tokens",
    responses(
        (status = 200, description = "The name and role of every token in force (never the token)."),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "Admin tokens only.", body = ErrorBody),
    )
)]
async fn list_tokens(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    Params::new(pairs(query), &[] as &[&str])?;
    let tokens = state.tokens.callers();
    let count = tokens.len();
    Ok(counted(Json(serde_json::json!({ "tokens": tokens })).into_response(), count))
}

#[utoipa::path(
    post,
    path = "/v1/admin/tokens",
    request_body = NewToken,
    responses(
        (status = 201, description = "The token, shown this once, with its name and role. The change is a governance event."),
        (status = 400, description = "The body is not a valid token request; the body names the field.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "Admin tokens only.", body = ErrorBody),
    )
)]
async fn create_token(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let request: NewToken = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_parameter("body", format!("expected {{\"name\", \"role\"}}: {error}")))?;
    if !crate::admin::valid_name(&request.name) {
        return Err(ApiError::bad_parameter("name", "1 to 64 of A-Z a-z 0-9 . _ -"));
    }
    let role: crate::auth::Role = serde_json::from_value(serde_json::Value::String(request.role.clone()))
        .map_err(|_| ApiError::bad_parameter("role", format!("`{}` is not finance, auditor or admin", request.role)))?;
    let replaces = state.tokens.callers().iter().any(|existing| existing.name == request.name);
    let action =
        if replaces { tollgate_schemas::ChangeAction::Rotated } else { tollgate_schemas::ChangeAction::Created };
    let (token, value) = crate::admin::new_token(&request.name, role);
    let change = crate::admin::change(&caller, &request.name, action, Some(&value));
    crate::admin::publish(state.log.as_ref(), &state.tokens, change).await?;
    let body = serde_json::json!({ "name": value.name, "role": role.as_str(), "token": token, "replaced": replaces });
    Ok(counted((axum::http::StatusCode::CREATED, Json(body)).into_response(), 1))
}

#[utoipa::path(
    delete,
    path = "/v1/admin/tokens/{name}",
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 200, description = "Revoked; the change is a governance event."),
        (status = 401, description = "No token, or an unknown one.", body = ErrorBody),
        (status = 403, description = "Admin tokens only.", body = ErrorBody),
        (status = 404, description = "No token of that name.", body = ErrorBody),
    )
)]
async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    if !state.tokens.callers().iter().any(|existing| existing.name == name) {
        return Err(ApiError::not_found(format!("no token named `{name}`")));
    }
    let change = crate::admin::change(&caller, &name, tollgate_schemas::ChangeAction::Revoked, None);
    crate::admin::publish(state.log.as_ref(), &state.tokens, change).await?;
    Ok(counted(Json(serde_json::json!({ "revoked": name })).into_response(), 1))
}

/// Builds the API for `config` and serves it in the background on a free loopback port
/// until the runtime stops; returns its base URL (`http://127.0.0.1:PORT`). For tests and
/// benchmarks that run the API in-process.
pub async fn serve_in_background(config: &QueryApiConfig, log: Arc<dyn EventLog>) -> Result<String, StartError> {
    let router = router(config, log).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(StartError::Listen)?;
    let base = format!("http://{}", listener.local_addr().map_err(StartError::Listen)?);
    tokio::spawn(serve(listener, router, std::future::pending()));
    Ok(base)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_valid() {
        let text = include_str!("../../query-api.example.toml");
        let config: QueryApiConfig = toml::from_str(text).unwrap();
        assert_eq!(config.backend, BackendKind::Parquet);
        assert_eq!(config.access_log_timeout_ms, 10_000);
        assert!(config.tokens.is_empty() && config.kafka.is_none() && config.verifier_key.is_none());
    }

    #[tokio::test]
    async fn an_empty_archive_answers_with_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueryApiConfig { archive: dir.path().display().to_string(), ..QueryApiConfig::default() };
        let log =
            tollgate_eventlog::EmbeddedLog::open(tollgate_eventlog::EmbeddedLogConfig::new(dir.path().join("log")));
        let log: Arc<dyn EventLog> = Arc::new(log.unwrap());
        tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
        let _router = router(&config, log).await.unwrap();
        let store = ParquetStore::new();
        store.register_archive(dir.path()).await.unwrap();
        let query = CostQuery {
            range: crate::params::TimeRange { from: 0, to: 1_000_000 },
            group_by: vec![GroupBy::Team],
            bucket: Some(Bucket::Day),
            time_zone: "UTC".to_owned(),
        };
        assert!(store.cost_report(&query).await.unwrap().is_empty());
        let page = store.search(&SearchQuery { limit: 10, ..SearchQuery::default() }).await.unwrap();
        assert!(page.interactions.is_empty() && page.next_cursor.is_none());
    }
}
