//! Provider-style error responses.
//!
//! Clients use the official OpenAI and Anthropic SDKs, which turn an HTTP status and a
//! provider-shaped body into their own typed exceptions. Every error the gateway returns on
//! a provider route therefore has the status and body layout that provider uses:
//!
//! - OpenAI: `{"error": {"message", "type", "param", "code"}}`
//! - Anthropic: `{"type": "error", "error": {"type", "message"}}`

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Which provider's error layout a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

/// The classes of error the gateway reports; each has one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 400: the request is malformed or breaks a rule of the API.
    InvalidRequest,
    /// 401: no key, or an unknown or revoked key.
    Authentication,
    /// 403: the key may not use this model or tool, or policy refused the content.
    PermissionDenied,
    /// 404: unknown route or unknown model.
    NotFound,
    /// 413: the body is larger than the configured limit.
    RequestTooLarge,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 429: a request or token rate limit.
    RateLimited,
    /// 429: a hard budget is exhausted.
    BudgetExceeded,
    /// 502: every upstream attempt failed.
    Upstream,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 503: the gateway cannot take the request now.
    Unavailable,
    /// 500: a fault in the gateway itself.
    Internal,
}

impl ErrorClass {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorClass::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorClass::Authentication => StatusCode::UNAUTHORIZED,
            ErrorClass::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorClass::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorClass::RateLimited | ErrorClass::BudgetExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorClass::Upstream => StatusCode::BAD_GATEWAY,
            ErrorClass::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `type` field.
    fn openai_type(self) -> &'static str {
        match self {
            ErrorClass::InvalidRequest
            | ErrorClass::Authentication
            | ErrorClass::PermissionDenied
            | ErrorClass::NotFound
            | ErrorClass::RequestTooLarge
            | ErrorClass::UnsupportedMediaType => "invalid_request_error",
            ErrorClass::RateLimited => "requests",
            ErrorClass::BudgetExceeded => "insufficient_quota",
            ErrorClass::Upstream | ErrorClass::UpstreamTimeout | ErrorClass::Unavailable | ErrorClass::Internal => {
                "server_error"
            }
        }
    }

    /// The Anthropic `error.type` field.
    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorClass::InvalidRequest | ErrorClass::UnsupportedMediaType => "invalid_request_error",
            ErrorClass::Authentication => "authentication_error",
            ErrorClass::PermissionDenied => "permission_error",
            ErrorClass::NotFound => "not_found_error",
            ErrorClass::RequestTooLarge => "request_too_large",
            ErrorClass::RateLimited | ErrorClass::BudgetExceeded => "rate_limit_error",
            ErrorClass::Upstream | ErrorClass::UpstreamTimeout | ErrorClass::Internal => "api_error",
            ErrorClass::Unavailable => "overloaded_error",
        }
    }
}

/// An error to return to a client, before it is given a dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub class: ErrorClass,
    pub message: String,
    /// The request parameter at fault (OpenAI's `param`), for example `messages`.
    pub param: Option<String>,
    /// A machine-readable code (OpenAI's `code`), for example `model_not_found`.
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        ApiError { class, message: message.into(), param: None, code: None }
    }

    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError { param: Some(param.to_owned()), ..ApiError::new(ErrorClass::InvalidRequest, message) }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.class.status()
    }

    /// The JSON body in `dialect`'s layout.
    pub fn body(&self, dialect: Dialect) -> Value {
        match dialect {
            Dialect::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.class.openai_type(),
                    "param": self.param,
                    "code": self.code,
                }
            }),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": { "type": self.class.anthropic_type(), "message": self.message },
            }),
        }
    }

    /// The HTTP response in `dialect`'s layout.
    pub fn into_response(self, dialect: Dialect) -> Response {
        (self.status(), axum::Json(self.body(dialect))).into_response()
    }
}
