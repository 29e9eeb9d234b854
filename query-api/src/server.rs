//! The HTTP API: routes, authentication, roles, and the JSON and CSV bodies.
//!
//! | route | roles | what |
//! | --- | --- | --- |
//! | `GET /healthz` | none | liveness |
//! | `GET /v1/reports/cost` | all | spend by group and time bucket (`format=csv` for CSV) |
//! | `GET /v1/interactions` | all (`text` auditor and admin only) | interaction search, oldest first, cursor pages |
//! | `GET /v1/interactions/{id}` | all | one interaction with its violations and decisions |
//! | `GET /v1/budgets` | all | every budget's newest state, with a forecast to the window's end |
//! | `GET /v1/decisions` | all | quota decision history |
//! | `GET /v1/violations` | auditor, admin | policy violations |
//! | `GET /v1/governance` | auditor, admin | governance change history (who changed what) |
//!
//! Finance tokens never receive captured content: it is removed from every interaction
//! before the response is made.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tollgate_archive::Archive;

use crate::auth::{Caller, TokenConfig, Tokens};
use crate::params::{ApiError, Bucket, Cursor, GroupBy, Params};
use crate::parquet::ParquetStore;
use crate::store::{CostQuery, ListQuery, SearchQuery};
use tollgate_schemas::{GovernanceChange, PolicyViolation, QuotaDecision};

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
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
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
            tokens: Vec::new(),
        }
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
pub struct CostReportParams {
    /// Start of the range (inclusive): RFC 3339 or YYYY-MM-DD.
    #[param(example = "2026-11-26")]
    from: String,
    /// End of the range (exclusive), after `from`.
    #[param(example = "2026-11-28")]
    to: String,
    /// Comma-separated groupings: org, team, user, project, key, provider, model, tool.
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
    paths(cost_report, search, interaction, budgets, decisions, violations, governance),
    components(schemas(ErrorBody, ErrorDetail)),
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

struct AppState {
    store: ParquetStore,
    tokens: Tokens,
    max_page: usize,
}

/// The API's routes over the archive `config.archive`.
pub async fn router(config: &QueryApiConfig) -> Result<Router, StartError> {
    let tokens = Tokens::new(&config.tokens).map_err(StartError::Tokens)?;
    let archive = Archive::open(&config.archive, &config.archive_options)?;
    let store = ParquetStore::new();
    if config.archive.contains("://") {
        let url = url::Url::parse(&config.archive).map_err(|_| StartError::Location(config.archive.clone()))?;
        store.register_archive_in(&url, Arc::clone(archive.store())).await?;
    } else {
        store.register_archive(std::path::Path::new(&config.archive)).await?;
    }
    let state = Arc::new(AppState { store, tokens, max_page: config.max_page_size.max(1) });
    Ok(Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(|| async { Json(<ApiDoc as utoipa::OpenApi>::openapi()) }))
        .route("/v1/reports/cost", get(cost_report))
        .route("/v1/interactions", get(search))
        .route("/v1/interactions/{id}", get(interaction))
        .route("/v1/budgets", get(budgets))
        .route("/v1/decisions", get(decisions))
        .route("/v1/violations", get(violations))
        .route("/v1/governance", get(governance))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state))
}

fn authorize(headers: &HeaderMap, tokens: &Tokens) -> Result<Caller, ApiError> {
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
    tokens.caller(token.trim()).cloned().ok_or_else(|| ApiError::unauthorized("unknown token"))
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
async fn cost_report(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.tokens)?;
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
        return Ok(Json(serde_json::json!({
            "total_cost_nanos": total,
            "total_cost_usd": tollgate_schemas::Nanodollars(total).to_string(),
            "lines": lines,
        }))
        .into_response());
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header_row: Vec<&str> = Vec::new();
    if query.bucket.is_some() {
        header_row.push("bucket_start");
    }
    header_row.extend(query.group_by.iter().map(|group| group.as_str()));
    header_row.extend(["interactions", "cost_nanos", "cost_usd", "input_tokens", "output_tokens"]);
    let csv_error = |error: csv::Error| ApiError::internal(error.to_string());
    writer.write_record(&header_row).map_err(csv_error)?;
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
        writer.write_record(&row).map_err(csv_error)?;
    }
    let body = writer.into_inner().map_err(|error| ApiError::internal(error.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response())
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
        (status = 403, description = "`text` needs an auditor or admin token.", body = ErrorBody),
    )
)]
async fn search(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let caller = authorize(&headers, &state.tokens)?;
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
            record.interaction.content.captured = None;
        }
    }
    Ok(Json(page).into_response())
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = authorize(&headers, &state.tokens)?;
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::bad_parameter("id", "not an interaction id (a UUID)"))?;
    let mut detail = state
        .store
        .interaction(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no interaction {id} in the archive")))?;
    if !caller.role.sees_content() {
        detail.interaction.interaction.content.captured = None;
    }
    Ok(Json(detail).into_response())
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
async fn budgets(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.tokens)?;
    let params = Params::new(pairs(query), &names::<BudgetParams>())?;
    let status = state.store.budget_status(subject(&params)?, tollgate_schemas::now_unix_micros()).await?;
    Ok(Json(serde_json::json!({ "budgets": status })).into_response())
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
async fn decisions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.tokens)?;
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
    Ok(Json(state.store.list::<QuotaDecision>(&query).await?).into_response())
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
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_auditor(&authorize(&headers, &state.tokens)?)?;
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
    Ok(Json(state.store.list::<PolicyViolation>(&query).await?).into_response())
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
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_auditor(&authorize(&headers, &state.tokens)?)?;
    let params = Params::new(pairs(query), &names::<GovernanceParams>())?;
    let mut query = listing(&params, state.max_page)?;
    for (name, column) in [("target_kind", "target_kind"), ("target", "target_id"), ("actor", "actor_id")] {
        if let Some(value) = params.get(name) {
            query.equals.push((column, value.to_owned()));
        }
    }
    Ok(Json(state.store.list::<GovernanceChange>(&query).await?).into_response())
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_archive_answers_with_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueryApiConfig { archive: dir.path().display().to_string(), ..QueryApiConfig::default() };
        let _router = router(&config).await.unwrap();
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
