//! The access log: every authenticated request to the API becomes an
//! [`AccessEvent`] on the event log before its answer is sent.
//!
//! Recording is part of answering. `guard` authenticates the caller, runs the handler,
//! publishes the event (who, role, path and query, status, how many records, how long)
//! and waits until the log has it; only then does the answer leave. When the log cannot
//! take the event in time the caller gets `503 access_log_unavailable` instead of the
//! answer, so nothing is read without a record of the read. Requests without a valid
//! token get their 401 without an event (they read nothing); they are logged.
//!
//! The processor archives the access topic like every other, so auditors read the log
//! through `GET /v1/access`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tollgate_eventlog::EventLog;
use tollgate_schemas::topics::Keyed;
use tollgate_schemas::{AccessEvent, MAX_ACCESS_QUERY_BYTES, SCHEMA_VERSION};

use crate::params::ApiError;
use crate::server::AppState;

/// How many records an answer held, attached by handlers to their responses.
#[derive(Debug, Clone, Copy)]
pub struct Results(pub u64);

/// Publishes access events.
#[derive(Debug, Clone)]
pub struct AccessLog {
    log: Arc<dyn EventLog>,
    timeout: Duration,
}

impl AccessLog {
    /// Records on `log` (topic [`tollgate_schemas::topics::ACCESS`]), giving up on one
    /// event after `timeout`.
    pub fn new(log: Arc<dyn EventLog>, timeout: Duration) -> Self {
        AccessLog { log, timeout }
    }

    /// Publishes `event` and waits until the log has it.
    pub async fn record(&self, event: &AccessEvent) -> Result<(), ApiError> {
        let payload = tollgate_schemas::encode(event).map_err(|error| ApiError::internal(error.to_string()))?;
        let key = event.message_key();
        let publish =
            tollgate_eventlog::publish_and_wait(self.log.as_ref(), AccessEvent::TOPIC, key.as_bytes(), &payload);
        match tokio::time::timeout(self.timeout, publish).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => {
                tracing::error!(%error, path = %event.path, token = %event.token_name, "the access log refused an event");
                Err(unavailable())
            }
            Err(_) => {
                tracing::error!(timeout = ?self.timeout, path = %event.path, token = %event.token_name, "the access log did not take an event in time");
                Err(unavailable())
            }
        }
    }
}

fn unavailable() -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "access_log_unavailable",
        message: "the access log could not record this request, so it was not answered; try again".to_owned(),
        parameter: None,
    }
}

/// Middleware for every `/v1` route: authenticates, runs the handler with the
/// [`crate::auth::Caller`] in the request's extensions, and records the access.
pub(crate) async fn guard(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let time = tollgate_schemas::now_unix_micros();
    let caller = match crate::server::authorize(request.headers(), &state.tokens) {
        Ok(caller) => caller,
        Err(error) => {
            let client = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0);
            tracing::info!(path = %request.uri().path(), ?client, "request without a valid token refused");
            return error.into_response();
        }
    };
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let raw_query = request.uri().query().unwrap_or_default();
    let too_long = raw_query.len() > MAX_ACCESS_QUERY_BYTES;
    let query = (!raw_query.is_empty() && !too_long).then(|| normalized_query(raw_query));
    let client_address =
        request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(address)| address.to_string());
    request.extensions_mut().insert(caller.clone());
    let response = if too_long {
        // Refused before anything is read, so every answered query is recorded whole.
        ApiError {
            status: StatusCode::URI_TOO_LONG,
            code: "query_too_long",
            message: format!("the query string is longer than {MAX_ACCESS_QUERY_BYTES} bytes"),
            parameter: None,
        }
        .into_response()
    } else {
        next.run(request).await
    };
    let event = AccessEvent {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: time,
        token_name: caller.name,
        role: caller.role.as_str().to_owned(),
        method,
        path,
        query,
        status: response.status().as_u16(),
        results: response.extensions().get::<Results>().map(|Results(count)| *count),
        duration_micros: i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX),
        client_address,
    };
    match state.access.record(&event).await {
        Ok(()) => response,
        Err(error) => error.into_response(),
    }
}

/// The parameters of `query` as handlers read them (decoded, in order), encoded again:
/// `limit=5&text=se%63ret` and `limit=5&text=secret` are recorded alike.
fn normalized_query(query: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(url::form_urlencoded::parse(query.as_bytes()))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_recorded_as_they_are_read() {
        assert_eq!(normalized_query("limit=5&text=se%63ret"), "limit=5&text=secret");
        assert_eq!(normalized_query("text=a+b&text=%26%3D"), "text=a+b&text=%26%3D");
        assert_eq!(normalized_query("from=2026-11-26&group_by=team"), "from=2026-11-26&group_by=team");
    }
}
