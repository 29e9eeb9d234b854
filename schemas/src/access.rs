//! [`AccessEvent`]: who read what from the query API, and when.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest query string the query API answers; a longer one is refused (414) and its
/// access event records no query.
pub const MAX_ACCESS_QUERY_BYTES: usize = 4_096;

/// The longest `query` an access event holds: the parameters of a query string of
/// [`MAX_ACCESS_QUERY_BYTES`], decoded and encoded again (each byte as at most three).
/// Events of earlier versions hold a query cut to [`MAX_ACCESS_QUERY_BYTES`] and `…`.
const MAX_RECORDED_QUERY_BYTES: usize = 3 * MAX_ACCESS_QUERY_BYTES;

/// One authenticated request to the query API. Published on [`crate::topics::ACCESS`]
/// before the answer is sent (a request whose event cannot be recorded gets no answer),
/// archived like every other event, and readable by auditors: the record of who looked at
/// what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccessEvent {
    pub schema_version: u16,
    /// UUIDv7 of this access.
    pub id: Uuid,
    /// When the request arrived.
    pub time_unix_micros: i64,
    /// The API token's configured name.
    pub token_name: String,
    /// The token's role: `finance`, `auditor` or `admin`.
    pub role: String,
    pub method: String,
    /// The request path, for example `/v1/interactions/0193...`.
    pub path: String,
    /// The query's parameters as the API read them, in the order sent: decoded, then
    /// encoded again as `application/x-www-form-urlencoded`, so two spellings of one
    /// query are recorded alike and every parameter is recorded in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// How many records the answer held (lines of a report, interactions of a page), when
    /// it held any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<u64>,
    pub duration_micros: i64,
    /// The peer address of the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
}

impl AccessEvent {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.token_name.is_empty() {
            return Err("token_name: must not be empty".to_owned());
        }
        if !self.path.starts_with('/') {
            return Err(format!("path: `{}` does not start with `/`", self.path));
        }
        if self.query.as_ref().is_some_and(|query| query.len() > MAX_RECORDED_QUERY_BYTES) {
            return Err(format!("query: longer than {MAX_RECORDED_QUERY_BYTES} bytes"));
        }
        Ok(())
    }
}
