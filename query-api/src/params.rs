//! Query parameters, checked before any query runs: every problem is a 400 that names the
//! parameter. Values reach SQL only as bound parameters, except the few that are chosen
//! from fixed lists here (group-by columns, bucket sizes) or validated time zone names.

use std::collections::HashMap;
use std::str::FromStr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The error body of every endpoint: `{"error": {"code", "message", "parameter"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub parameter: Option<String>,
}

impl ApiError {
    pub fn bad_parameter(parameter: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_parameter",
            message: message.into(),
            parameter: Some(parameter.to_owned()),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::UNAUTHORIZED, code: "unauthorized", message: message.into(), parameter: None }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::FORBIDDEN, code: "forbidden", message: message.into(), parameter: None }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into(), parameter: None }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
            parameter: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message, "parameter": self.parameter }
        });
        (self.status, axum::Json(body)).into_response()
    }
}

/// The raw query string, with each parameter taken at most once and unknown ones refused.
#[derive(Debug)]
pub struct Params {
    values: HashMap<String, String>,
}

impl Params {
    /// `pairs` as given; `allowed` are the parameters the endpoint knows.
    pub fn new(pairs: Vec<(String, String)>, allowed: &[impl AsRef<str>]) -> Result<Self, ApiError> {
        let mut values = HashMap::new();
        for (name, value) in pairs {
            if !allowed.iter().any(|known| known.as_ref() == name) {
                let allowed: Vec<&str> = allowed.iter().map(AsRef::as_ref).collect();
                return Err(ApiError::bad_parameter(
                    &name,
                    format!("unknown parameter; known: {}", allowed.join(", ")),
                ));
            }
            if values.insert(name.clone(), value).is_some() {
                return Err(ApiError::bad_parameter(&name, "given more than once"));
            }
        }
        Ok(Params { values })
    }

    /// A parameter's value, if given and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str).filter(|value| !value.is_empty())
    }

    /// A parameter that is required.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name).ok_or_else(|| ApiError::bad_parameter(name, "required"))
    }

    /// A time, as RFC 3339 (`2026-11-26T10:00:00Z`) or a UTC date (`2026-11-26`), in
    /// microseconds since the epoch.
    pub fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|text| {
                tollgate_schemas::pricing::parse_utc_time(text).ok_or_else(|| {
                    ApiError::bad_parameter(name, format!("`{text}` is not an RFC 3339 time or a YYYY-MM-DD date"))
                })
            })
            .transpose()
    }

    /// `from` and `to`, both required, `from` before `to`.
    pub fn time_range(&self) -> Result<TimeRange, ApiError> {
        let from = self.time("from")?.ok_or_else(|| ApiError::bad_parameter("from", "required"))?;
        let to = self.time("to")?.ok_or_else(|| ApiError::bad_parameter("to", "required"))?;
        if to <= from {
            return Err(ApiError::bad_parameter("to", "must be after `from`"));
        }
        Ok(TimeRange { from, to })
    }

    /// A whole number, written plainly: digits only, no sign, no leading zeros.
    pub fn whole_number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        let Some(text) = self.get(name) else { return Ok(None) };
        let plain = text.bytes().all(|byte| byte.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
        match text.parse::<u64>() {
            Ok(number) if plain => Ok(Some(number)),
            _ => Err(ApiError::bad_parameter(
                name,
                format!("`{}` is not a whole number written without sign or leading zeros", cut(text)),
            )),
        }
    }

    /// A page size between 1 and `max`, `default` when absent.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(limit) = self.whole_number("limit")? else { return Ok(default) };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if limit == 0 || limit > max {
            return Err(ApiError::bad_parameter("limit", format!("must be between 1 and {max}")));
        }
        Ok(limit)
    }
}

/// `text` for an error message: its first 40 characters.
fn cut(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A half-open time range `[from, to)`, microseconds since the epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: i64,
    pub to: i64,
}

/// What a cost report can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Org,
    Team,
    User,
    Project,
    Key,
    Provider,
    Model,
    Tool,
    /// The MCP server of a tool call.
    Server,
}

impl GroupBy {
    pub const ALL: [GroupBy; 9] = [
        GroupBy::Org,
        GroupBy::Team,
        GroupBy::User,
        GroupBy::Project,
        GroupBy::Key,
        GroupBy::Provider,
        GroupBy::Model,
        GroupBy::Tool,
        GroupBy::Server,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Org => "org",
            GroupBy::Team => "team",
            GroupBy::User => "user",
            GroupBy::Project => "project",
            GroupBy::Key => "key",
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
            GroupBy::Tool => "tool",
            GroupBy::Server => "server",
        }
    }

    /// The stored column.
    pub fn column(self) -> &'static str {
        match self {
            GroupBy::Org => "org_id",
            GroupBy::Team => "team_id",
            GroupBy::User => "user_id",
            GroupBy::Project => "project_id",
            GroupBy::Key => "key_id",
            GroupBy::Provider => "gen_ai_provider_name",
            GroupBy::Model => "gen_ai_request_model",
            GroupBy::Tool => "gen_ai_tool_name",
            GroupBy::Server => "mcp_server",
        }
    }

    /// `org,team` as a list, in the order given, each at most once.
    pub fn parse_list(text: &str) -> Result<Vec<GroupBy>, ApiError> {
        let mut list = Vec::new();
        for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            let Some(group) = GroupBy::ALL.into_iter().find(|group| group.as_str() == name) else {
                let known: Vec<&str> = GroupBy::ALL.iter().map(|group| group.as_str()).collect();
                return Err(ApiError::bad_parameter(
                    "group_by",
                    format!("`{name}` is not a grouping; known: {}", known.join(", ")),
                ));
            };
            if list.contains(&group) {
                return Err(ApiError::bad_parameter("group_by", format!("`{name}` is given twice")));
            }
            list.push(group);
        }
        Ok(list)
    }
}

/// Time buckets of a cost report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Hour,
    Day,
    Month,
}

impl Bucket {
    pub fn parse(text: &str) -> Result<Bucket, ApiError> {
        match text {
            "hour" => Ok(Bucket::Hour),
            "day" => Ok(Bucket::Day),
            "month" => Ok(Bucket::Month),
            _ => Err(ApiError::bad_parameter("bucket", format!("`{text}` is not hour, day or month"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
            Bucket::Month => "month",
        }
    }
}

/// A time zone name (`Europe/Paris`) or offset (`+05:30`), checked against the time zone
/// database.
pub fn time_zone(text: &str) -> Result<String, ApiError> {
    datafusion::arrow::array::timezone::Tz::from_str(text)
        .map(|_| text.to_owned())
        .map_err(|_| ApiError::bad_parameter("tz", format!("`{text}` is not a time zone name or offset")))
}

/// Where a page of results ends: the time and id of its last row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "t")]
    pub time_unix_micros: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(text: &str) -> Result<Cursor, ApiError> {
        let invalid = || ApiError::bad_parameter("cursor", "not a cursor returned by this API");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        uuid::Uuid::parse_str(&cursor.id).map_err(|_| invalid())?;
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)], allowed: &[&str]) -> Result<Params, ApiError> {
        Params::new(pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(), allowed)
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let allowed = ["from", "to", "limit", "group_by"];
        assert_eq!(params(&[("form", "x")], &allowed).err().unwrap().parameter.as_deref(), Some("form"));
        assert_eq!(params(&[("to", "1"), ("to", "2")], &allowed).err().unwrap().parameter.as_deref(), Some("to"));
        let given = params(&[("from", "2026-11-27"), ("to", "2026-11-26")], &allowed).unwrap();
        assert_eq!(given.time_range().unwrap_err().parameter.as_deref(), Some("to"));
        let given = params(&[("from", "yesterday"), ("to", "2026-11-26")], &allowed).unwrap();
        assert_eq!(given.time_range().unwrap_err().parameter.as_deref(), Some("from"));
        let given = params(&[("limit", "1000000")], &allowed).unwrap();
        assert_eq!(given.limit(100, 1000).unwrap_err().parameter.as_deref(), Some("limit"));
        for padded in ["-1", "+5", "007", "00000000000000000000000000005", " 5", "5e2", ""] {
            let given = params(&[("limit", padded)], &allowed).unwrap();
            let limit = given.limit(100, 1000);
            assert!(limit.is_err() || padded.is_empty(), "`{padded}`: {limit:?}");
        }
        assert_eq!(params(&[("limit", "10")], &allowed).unwrap().limit(100, 1000).unwrap(), 10);
        let long = format!("{}1", "0".repeat(100));
        let error = params(&[("limit", &long)], &allowed).unwrap().limit(100, 1000).unwrap_err();
        assert!(error.message.len() < 120, "the error does not echo the whole value: {}", error.message);
        assert_eq!(GroupBy::parse_list("team,model").unwrap(), vec![GroupBy::Team, GroupBy::Model]);
        assert!(GroupBy::parse_list("team; DROP TABLE x").unwrap_err().message.contains("not a grouping"));
        assert!(GroupBy::parse_list("team,team").is_err());
        assert!(time_zone("Europe/Paris").is_ok());
        assert!(time_zone("+05:30").is_ok());
        assert!(time_zone("Mars/Olympus'").is_err());
        assert_eq!(Cursor::decode("bm9wZQ").unwrap_err().parameter.as_deref(), Some("cursor"));
        let cursor = Cursor { time_unix_micros: 5, id: uuid::Uuid::now_v7().to_string() };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
    }
}
