//! [`AccessEvent`]: who read what from the query API, and when.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest query string an access event keeps; a longer one is cut at a character
/// boundary and marked with `…`.
pub const MAX_ACCESS_QUERY_BYTES: usize = 4_096;

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
    /// The query string as sent (cut to [`MAX_ACCESS_QUERY_BYTES`]).
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
        if self.query.as_ref().is_some_and(|query| query.len() > MAX_ACCESS_QUERY_BYTES + '…'.len_utf8()) {
            return Err(format!("query: longer than {MAX_ACCESS_QUERY_BYTES} bytes"));
        }
        Ok(())
    }
}

/// `query` cut to [`MAX_ACCESS_QUERY_BYTES`] at a character boundary, marked with `…` when
/// cut.
pub fn cut_access_query(query: &str) -> String {
    if query.len() <= MAX_ACCESS_QUERY_BYTES {
        return query.to_owned();
    }
    format!("{}…", crate::prefix_within(query, MAX_ACCESS_QUERY_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_queries_are_cut_at_a_character_boundary() {
        let query = "é".repeat(MAX_ACCESS_QUERY_BYTES);
        let cut = cut_access_query(&query);
        assert!(cut.ends_with('…'));
        assert!(cut.len() <= MAX_ACCESS_QUERY_BYTES + '…'.len_utf8());
        assert_eq!(cut_access_query("from=2026-11-26"), "from=2026-11-26");
    }
}
