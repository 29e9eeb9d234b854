//! The admin endpoints that change what the gateway and the processor enforce: virtual
//! keys, team policies, budgets and price catalog versions.
//!
//! | route | what |
//! | --- | --- |
//! | `GET, POST /v1/admin/keys` | list keys (never secrets); make one (the secret is in the answer, once) |
//! | `PATCH, DELETE /v1/admin/keys/{id}` | change a key's owner, allow-lists and limits; revoke it |
//! | `POST /v1/admin/keys/{id}/rotate` | a new secret; the old one stops working |
//! | `GET /v1/admin/teams`, `PUT, DELETE /v1/admin/teams/{id}` | team policies: model and tool allow-lists, PII guard |
//! | `GET /v1/admin/budgets`, `PUT, DELETE /v1/admin/budgets/{id}` | set, change and lift budgets |
//! | `GET /v1/admin/providers`, `PUT, DELETE /v1/admin/providers/{name}` | register model providers and the models they serve |
//! | `GET, POST /v1/admin/catalogs` | price catalog versions; publish a new one (JSON, or TOML with `Content-Type: application/toml`) |
//!
//! Each change is one governance event whose actor is the admin's token name, with the
//! `x-tollgate-reason` header as its reason. A request is checked whole before anything is
//! published: a bad one gets 400 naming the problem and changes nothing. The call returns
//! once this replica has read the change back from the log.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};
use tollgate_schemas::pricing::{PriceCatalog, PriceCatalogDocument};
use tollgate_schemas::{
    Actor, ActorKind, BudgetSpec, ChangeAction, GovernanceChange, GovernanceTarget, ProviderSpec, SCHEMA_VERSION,
    TargetKind, TeamPolicySpec, VirtualKeySpec,
};

use crate::auth::{Caller, Role};
use crate::params::ApiError;
use crate::server::AppState;

/// Longest reason kept with a change.
const MAX_REASON_BYTES: usize = 1024;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/admin/keys", get(list_keys).post(create_key))
        .route("/v1/admin/keys/{id}", axum::routing::patch(update_key).delete(revoke_key))
        .route("/v1/admin/keys/{id}/rotate", post(rotate_key))
        .route("/v1/admin/teams", get(list_teams))
        .route("/v1/admin/teams/{id}", put(set_team).delete(delete_team))
        .route("/v1/admin/budgets", get(list_budgets))
        .route("/v1/admin/budgets/{id}", put(set_budget).delete(lift_budget))
        .route("/v1/admin/providers", get(list_providers))
        .route("/v1/admin/providers/{name}", put(set_provider).delete(delete_provider))
        .route("/v1/admin/catalogs", get(list_catalogs).post(publish_catalog))
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("governance administration is for admin tokens"))
    }
}

fn reason(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("x-tollgate-reason") else { return Ok(None) };
    let text =
        value.to_str().map_err(|_| ApiError::bad_parameter("x-tollgate-reason", "must be visible ASCII text"))?;
    if text.len() > MAX_REASON_BYTES {
        return Err(ApiError::bad_parameter("x-tollgate-reason", format!("at most {MAX_REASON_BYTES} bytes")));
    }
    Ok(Some(text.to_owned()).filter(|text| !text.trim().is_empty()))
}

/// A JSON object from `body`, or a 400 that says what is wrong with it.
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_parameter("body", "expected a JSON object")),
        Err(error) => Err(ApiError::bad_parameter("body", format!("not JSON: {error}"))),
    }
}

/// The JSON object `body` with `field` set to `path_id`, the id in the request's path (a
/// body may repeat it, but not name another).
fn named(body: &[u8], field: &str, path_id: &str) -> Result<Value, ApiError> {
    let mut fields = object(body)?;
    if fields.get(field).is_some_and(|given| given.as_str() != Some(path_id)) {
        return Err(ApiError::bad_parameter(field, format!("the {field} is the one in the path, `{path_id}`")));
    }
    fields.insert(field.to_owned(), Value::String(path_id.to_owned()));
    Ok(Value::Object(fields))
}

/// `value` as `T`, or a 400 naming the field at fault.
fn typed<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let parameter = if path == "." { "body".to_owned() } else { path };
        ApiError::bad_parameter(&parameter, format!("not a valid {what}: {}", error.inner()))
    })
}

fn invalid(problems: Vec<String>) -> Result<(), ApiError> {
    if problems.is_empty() { Ok(()) } else { Err(ApiError::bad_parameter("body", problems.join("; "))) }
}

fn conflict(message: String) -> ApiError {
    ApiError { status: StatusCode::CONFLICT, code: "conflict", message, parameter: None }
}

async fn publish(
    state: &AppState,
    caller: &Caller,
    target: (TargetKind, &str),
    action: ChangeAction,
    value: Value,
    reason: Option<String>,
) -> Result<GovernanceChange, ApiError> {
    let change = GovernanceChange {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: tollgate_schemas::now_unix_micros(),
        actor: Actor { kind: ActorKind::Admin, id: caller.name.clone() },
        target: GovernanceTarget { kind: target.0, id: target.1.to_owned() },
        action,
        value,
        reason,
    };
    crate::admin::publish(state.log.as_ref(), &state.tokens, change.clone()).await?;
    Ok(change)
}

/// Publishes the deletion of `target` by an admin, or answers 404 with `missing` when
/// `exists` is false; the answer is `{done: id}`.
async fn remove(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    target: (TargetKind, &str),
    exists: impl FnOnce(&tollgate_schemas::Directory) -> bool,
    missing: String,
    done: &str,
) -> Result<Response, ApiError> {
    require_admin(caller)?;
    let reason = reason(headers)?;
    if !exists(&state.tokens.directory()) {
        return Err(ApiError::not_found(missing));
    }
    publish(state, caller, target, ChangeAction::Deleted, Value::Null, reason).await?;
    Ok(answer(StatusCode::OK, json!({ done: target.1 })))
}

fn answer(status: StatusCode, body: Value) -> Response {
    crate::server::counted((status, Json(body)).into_response(), 1)
}

/// A new key secret: 128 random bits, recognisable as a Tollgate key.
fn new_secret() -> String {
    format!("tg-{}", uuid::Uuid::new_v4().simple())
}

/// The fields of a key an admin sets; the id and the secret are the API's.
const KEY_FIELDS: &[&str] = &[
    "org",
    "team",
    "user",
    "project",
    "allowed_models",
    "max_tokens",
    "requests_per_minute",
    "tokens_per_minute",
    "pii_guard",
    "allowed_tools",
    "denied_tools",
];

fn only_key_fields(body: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(field) = body.keys().find(|field| !KEY_FIELDS.contains(&field.as_str()) && *field != "id") {
        let message = if field == "secret_sha256" {
            "the secret is made by the API; rotate a key to replace it".to_owned()
        } else {
            format!("unknown field; a key has {}", KEY_FIELDS.join(", "))
        };
        return Err(ApiError::bad_parameter(field, message));
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/admin/keys", responses(
    (status = 200, description = "Every virtual key, revoked ones included, with who changed it last; never a secret."),
    (status = 403, description = "Admin tokens only.", body = crate::server::ErrorBody),
))]
pub(crate) async fn list_keys(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let keys: Vec<_> = state.tokens.directory().keys().values().cloned().collect();
    let count = keys.len();
    Ok(crate::server::counted(Json(json!({ "keys": keys })).into_response(), count))
}

#[utoipa::path(post, path = "/v1/admin/keys", responses(
    (status = 201, description = "The key and its secret, shown this once."),
    (status = 400, description = "The body names an unknown field or a bad value.", body = crate::server::ErrorBody),
    (status = 409, description = "A key with this id exists.", body = crate::server::ErrorBody),
))]
pub(crate) async fn create_key(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let reason = reason(&headers)?;
    let mut fields = object(&body)?;
    only_key_fields(&fields)?;
    let id = match fields.remove("id") {
        Some(Value::String(id)) => id,
        Some(_) => return Err(ApiError::bad_parameter("id", "must be a string")),
        None => format!("key_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
    };
    if state.tokens.directory().keys().contains_key(&id) {
        return Err(conflict(format!("key `{id}` exists; rotate it for a new secret, or choose another id")));
    }
    let secret = new_secret();
    fields.insert("id".to_owned(), Value::String(id.clone()));
    fields.insert("secret_sha256".to_owned(), Value::String(crate::auth::token_hash(&secret)));
    let spec: VirtualKeySpec = typed(Value::Object(fields), "key")?;
    invalid(spec.problems())?;
    let change = publish(
        &state,
        &caller,
        (TargetKind::VirtualKey, &id),
        ChangeAction::Created,
        serde_json::to_value(&spec).unwrap_or_default(),
        reason,
    )
    .await?;
    Ok(answer(StatusCode::CREATED, json!({ "key": spec, "secret": secret, "change_id": change.id })))
}

#[utoipa::path(patch, path = "/v1/admin/keys/{id}", params(("id" = String, Path, description = "The key id")), responses(
    (status = 200, description = "The key as changed. Fields given replace the key's; `null` clears one."),
    (status = 400, description = "The body names an unknown field or a bad value.", body = crate::server::ErrorBody),
    (status = 404, description = "No such key.", body = crate::server::ErrorBody),
))]
pub(crate) async fn update_key(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let reason = reason(&headers)?;
    let edits = object(&body)?;
    only_key_fields(&edits)?;
    if edits.get("id").is_some_and(|given| given.as_str() != Some(id.as_str())) {
        return Err(ApiError::bad_parameter("id", "a key's id cannot change"));
    }
    let current = state
        .tokens
        .directory()
        .keys()
        .get(&id)
        .map(|key| key.spec.clone())
        .ok_or_else(|| ApiError::not_found(format!("no key `{id}`")))?;
    let Value::Object(mut fields) = serde_json::to_value(&current).unwrap_or_default() else {
        return Err(ApiError::internal("a key is not an object"));
    };
    for (field, value) in edits {
        if value.is_null() {
            fields.remove(&field);
        } else {
            fields.insert(field, value);
        }
    }
    let spec: VirtualKeySpec = typed(Value::Object(fields), "key")?;
    invalid(spec.problems())?;
    publish(
        &state,
        &caller,
        (TargetKind::VirtualKey, &id),
        ChangeAction::Updated,
        serde_json::to_value(&spec).unwrap_or_default(),
        reason,
    )
    .await?;
    Ok(answer(StatusCode::OK, json!({ "key": spec })))
}

#[utoipa::path(post, path = "/v1/admin/keys/{id}/rotate", params(("id" = String, Path, description = "The key id")), responses(
    (status = 200, description = "The key's new secret, shown this once; the old secret stops working (a revoked key is usable again)."),
    (status = 404, description = "No such key.", body = crate::server::ErrorBody),
))]
pub(crate) async fn rotate_key(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let reason = reason(&headers)?;
    let mut spec = state
        .tokens
        .directory()
        .keys()
        .get(&id)
        .map(|key| key.spec.clone())
        .ok_or_else(|| ApiError::not_found(format!("no key `{id}`")))?;
    let secret = new_secret();
    spec.secret_sha256 = crate::auth::token_hash(&secret);
    publish(
        &state,
        &caller,
        (TargetKind::VirtualKey, &id),
        ChangeAction::Rotated,
        serde_json::to_value(&spec).unwrap_or_default(),
        reason,
    )
    .await?;
    Ok(answer(StatusCode::OK, json!({ "key": spec, "secret": secret })))
}

#[utoipa::path(delete, path = "/v1/admin/keys/{id}", params(("id" = String, Path, description = "The key id")), responses(
    (status = 200, description = "Revoked: every gateway refuses the key from when it reads the change."),
    (status = 404, description = "No such key.", body = crate::server::ErrorBody),
    (status = 409, description = "Already revoked.", body = crate::server::ErrorBody),
))]
pub(crate) async fn revoke_key(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let reason = reason(&headers)?;
    let revoked = state.tokens.directory().keys().get(&id).map(|key| key.revoked);
    match revoked {
        None => return Err(ApiError::not_found(format!("no key `{id}`"))),
        Some(true) => return Err(conflict(format!("key `{id}` is already revoked"))),
        Some(false) => {}
    }
    publish(&state, &caller, (TargetKind::VirtualKey, &id), ChangeAction::Revoked, Value::Null, reason).await?;
    Ok(answer(StatusCode::OK, json!({ "revoked": id })))
}

#[utoipa::path(get, path = "/v1/admin/teams", responses(
    (status = 200, description = "Every team policy."),
    (status = 403, description = "Admin tokens only.", body = crate::server::ErrorBody),
))]
pub(crate) async fn list_teams(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let teams: Vec<_> = state.tokens.directory().teams().values().cloned().collect();
    let count = teams.len();
    Ok(crate::server::counted(Json(json!({ "teams": teams })).into_response(), count))
}

#[utoipa::path(put, path = "/v1/admin/teams/{id}", params(("id" = String, Path, description = "The team id")), responses(
    (status = 200, description = "The team's policy, replaced whole."),
    (status = 400, description = "The body names an unknown field or a bad value.", body = crate::server::ErrorBody),
))]
pub(crate) async fn set_team(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let reason = reason(&headers)?;
    let spec: TeamPolicySpec = typed(named(&body, "id", &id)?, "team policy")?;
    invalid(spec.problems())?;
    let action =
        if state.tokens.directory().teams().contains_key(&id) { ChangeAction::Updated } else { ChangeAction::Created };
    publish(
        &state,
        &caller,
        (TargetKind::Policy, &id),
        action,
        serde_json::to_value(&spec).unwrap_or_default(),
        reason,
    )
    .await?;
    Ok(answer(StatusCode::OK, json!({ "team": spec })))
}

#[utoipa::path(delete, path = "/v1/admin/teams/{id}", params(("id" = String, Path, description = "The team id")), responses(
    (status = 200, description = "The team's policy is removed; its keys keep only their own lists."),
    (status = 404, description = "No policy for the team.", body = crate::server::ErrorBody),
))]
pub(crate) async fn delete_team(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = format!("no policy for team `{id}`");
    remove(
        &state,
        &caller,
        &headers,
        (TargetKind::Policy, &id),
        |directory| directory.teams().contains_key(&id),
        missing,
        "deleted",
    )
    .await
}

#[utoipa::path(get, path = "/v1/admin/budgets", responses(
    (status = 200, description = "Every budget in force, by id (their spend is at /v1/budgets)."),
    (status = 403, description = "Admin tokens only.", body = crate::server::ErrorBody),
))]
pub(crate) async fn list_budgets(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let budgets: Vec<_> = state
        .tokens
        .directory()
        .budgets()
        .iter()
        .map(|(id, spec)| {
            let mut value = serde_json::to_value(spec).unwrap_or_default();
            value["id"] = Value::String(id.clone());
            value
        })
        .collect();
    let count = budgets.len();
    Ok(crate::server::counted(Json(json!({ "budgets": budgets })).into_response(), count))
}

#[utoipa::path(put, path = "/v1/admin/budgets/{id}", params(("id" = String, Path, description = "The budget id")), responses(
    (status = 200, description = "The budget, set or replaced; the processor publishes the decisions it implies."),
    (status = 400, description = "An unknown field, a bad value, or a subject no key belongs to.", body = crate::server::ErrorBody),
))]
pub(crate) async fn set_budget(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let reason = reason(&headers)?;
    if !tollgate_schemas::directory::valid_id(&id) {
        return Err(ApiError::bad_parameter("id", "1 to 128 of A-Z a-z 0-9 . _ : @ -"));
    }
    let spec: BudgetSpec = typed(Value::Object(object(&body)?), "budget")?;
    spec.validate().map_err(|problem| ApiError::bad_parameter("body", problem))?;
    let action = {
        let directory = state.tokens.directory();
        if !directory.knows(&spec.subject) {
            return Err(ApiError::bad_parameter(
                "subject",
                format!("no key belongs to {} `{}`", spec.subject.kind.as_str(), spec.subject.id),
            ));
        }
        if directory.budgets().contains_key(&id) { ChangeAction::Updated } else { ChangeAction::Created }
    };
    publish(
        &state,
        &caller,
        (TargetKind::Budget, &id),
        action,
        serde_json::to_value(&spec).unwrap_or_default(),
        reason,
    )
    .await?;
    let mut body = serde_json::to_value(&spec).unwrap_or_default();
    body["id"] = Value::String(id);
    Ok(answer(StatusCode::OK, json!({ "budget": body })))
}

#[utoipa::path(delete, path = "/v1/admin/budgets/{id}", params(("id" = String, Path, description = "The budget id")), responses(
    (status = 200, description = "Lifted: a subject it blocked is unblocked once the processor's decision arrives."),
    (status = 404, description = "No budget of that id in force.", body = crate::server::ErrorBody),
))]
pub(crate) async fn lift_budget(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = format!("no budget `{id}` in force");
    remove(
        &state,
        &caller,
        &headers,
        (TargetKind::Budget, &id),
        |directory| directory.budgets().contains_key(&id),
        missing,
        "lifted",
    )
    .await
}

#[utoipa::path(get, path = "/v1/admin/providers", responses(
    (status = 200, description = "Every provider registered through governance."),
    (status = 403, description = "Admin tokens only.", body = crate::server::ErrorBody),
))]
pub(crate) async fn list_providers(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let providers: Vec<_> = state.tokens.directory().providers().values().cloned().collect();
    let count = providers.len();
    Ok(crate::server::counted(Json(json!({ "providers": providers })).into_response(), count))
}

#[utoipa::path(put, path = "/v1/admin/providers/{name}", params(("name" = String, Path, description = "The provider's upstream name")), responses(
    (status = 200, description = "The provider, registered or replaced; gateways route its models to it once they read the change."),
    (status = 400, description = "The body names an unknown field or a bad value.", body = crate::server::ErrorBody),
))]
pub(crate) async fn set_provider(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let reason = reason(&headers)?;
    let spec: ProviderSpec = typed(named(&body, "name", &name)?, "provider")?;
    invalid(spec.problems())?;
    let action = if state.tokens.directory().providers().contains_key(&name) {
        ChangeAction::Updated
    } else {
        ChangeAction::Created
    };
    let value = serde_json::to_value(&spec).unwrap_or_default();
    publish(&state, &caller, (TargetKind::Provider, &name), action, value, reason).await?;
    Ok(answer(StatusCode::OK, json!({ "provider": spec })))
}

#[utoipa::path(delete, path = "/v1/admin/providers/{name}", params(("name" = String, Path, description = "The provider's upstream name")), responses(
    (status = 200, description = "Removed: gateways stop routing to it once they read the change."),
    (status = 404, description = "No provider of that name is registered.", body = crate::server::ErrorBody),
))]
pub(crate) async fn delete_provider(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = format!("no provider `{name}` is registered");
    let exists = |directory: &tollgate_schemas::Directory| directory.providers().contains_key(&name);
    remove(&state, &caller, &headers, (TargetKind::Provider, &name), exists, missing, "deleted").await
}

#[utoipa::path(get, path = "/v1/admin/catalogs", responses(
    (status = 200, description = "The price catalog versions published on the governance topic."),
    (status = 403, description = "Admin tokens only.", body = crate::server::ErrorBody),
))]
pub(crate) async fn list_catalogs(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let versions: Vec<_> = state.tokens.directory().catalog_versions().iter().cloned().collect();
    let count = versions.len();
    Ok(crate::server::counted(Json(json!({ "versions": versions })).into_response(), count))
}

#[utoipa::path(post, path = "/v1/admin/catalogs", responses(
    (status = 201, description = "The catalog version is published; the processor prices with it from its `effective_from`."),
    (status = 400, description = "Not a valid catalog; the body names the problem.", body = crate::server::ErrorBody),
    (status = 409, description = "This version was published before.", body = crate::server::ErrorBody),
))]
pub(crate) async fn publish_catalog(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let reason = reason(&headers)?;
    let toml = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/toml") || value.starts_with("text/toml"));
    let document: PriceCatalogDocument = if toml {
        let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_parameter("body", "TOML must be UTF-8"))?;
        toml::from_str(text)
            .map_err(|error| ApiError::bad_parameter("body", format!("not a price catalog: {error}")))?
    } else {
        typed(Value::Object(object(&body)?), "price catalog")?
    };
    PriceCatalog::from_document(&document).map_err(|error| {
        ApiError::bad_parameter("body", format!("invalid price catalog: {}", error.problems.join("; ")))
    })?;
    if state.tokens.directory().catalog_versions().contains(&document.version) {
        return Err(conflict(format!(
            "price catalog version `{}` is published already; give the new one a new version",
            document.version
        )));
    }
    let version = document.version.clone();
    let value = serde_json::to_value(&document).map_err(|error| ApiError::internal(error.to_string()))?;
    publish(&state, &caller, (TargetKind::PriceCatalog, &version), ChangeAction::Created, value, reason).await?;
    Ok(answer(
        StatusCode::CREATED,
        json!({ "version": version, "models": document.models.len(), "tools": document.tools.len() }),
    ))
}
