//! Request parsing over generated bodies: whatever arrives, the parsers answer with a
//! request or a provider-style error, and never panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use proptest::prelude::*;
use serde_json::{Value, json};
use support::json_value;
use tollgate_ingest::error::{ApiError, Dialect, ErrorClass};
use tollgate_ingest::request::{named_model, parse_chat_completion, parse_embeddings, parse_messages};

/// Every error a parser returns is a 400 whose bodies have the providers' layouts.
fn check_error(error: &ApiError) -> Result<(), TestCaseError> {
    prop_assert_eq!(error.class, ErrorClass::InvalidRequest);
    prop_assert!(!error.message.is_empty());
    let openai = error.body(Dialect::OpenAi);
    prop_assert!(openai["error"]["message"].is_string() && openai["error"]["type"] == "invalid_request_error");
    let anthropic = error.body(Dialect::Anthropic);
    prop_assert!(anthropic["type"] == "error" && anthropic["error"]["type"] == "invalid_request_error");
    Ok(())
}

fn check_all_parsers(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = named_model(bytes);
    if let Err(error) = parse_chat_completion(bytes) {
        check_error(&error)?;
    }
    if let Err(error) = parse_embeddings(bytes) {
        check_error(&error)?;
    }
    if let Err(error) = parse_messages(bytes) {
        check_error(&error)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_all_parsers(&bytes)?;
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        check_all_parsers(value.to_string().as_bytes())?;
    }

    /// Whatever else a body holds, the model it names is the one the parser reads when
    /// it accepts the body, and a string `model` in any JSON object is found.
    #[test]
    fn the_named_model_is_the_one_the_parser_reads(value in json_value(), model in ".{0,40}") {
        let bytes = value.to_string().into_bytes();
        if let Ok(request) = parse_chat_completion(&bytes) {
            prop_assert_eq!(named_model(&bytes), Some(request.model));
        }
        let expected = value.get("model").and_then(Value::as_str).map(str::to_owned);
        prop_assert_eq!(named_model(&bytes), expected);
        let mut with_model = match value {
            Value::Object(members) => members,
            _ => serde_json::Map::new(),
        };
        with_model.insert("model".to_owned(), Value::String(model.clone()));
        prop_assert_eq!(named_model(Value::Object(with_model).to_string().as_bytes()), Some(model));
    }

    /// A body cut anywhere after its `model` member still names that model.
    #[test]
    fn a_truncated_body_still_names_its_model(model in "[a-z0-9.:-]{1,30}", rest in json_value(), cut in 0usize..400) {
        let body = format!(r#"{{"model": {}, "rest": {rest}}}"#, Value::String(model.clone()));
        let model_end = body.find(", \"rest\"").unwrap();
        let cut = (model_end + cut).min(body.len());
        prop_assert_eq!(named_model(&body.as_bytes()[..cut]), Some(model));
    }

    /// A valid body with one field replaced by anything is accepted or refused with that
    /// field named; a body that is accepted keeps every field it came with.
    #[test]
    fn one_bad_field_is_named(field in prop_oneof![Just("model"), Just("messages"), Just("stream"), Just("max_tokens"), Just("extra")], value in json_value()) {
        let mut body = json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hello"}],
            "stream": false,
            "max_tokens": 16,
        });
        body[field] = value;
        match parse_chat_completion(body.to_string().as_bytes()) {
            Ok(request) => prop_assert_eq!(Value::Object(request.body), body),
            Err(error) => {
                check_error(&error)?;
                let param = error.param.unwrap_or_default();
                prop_assert!(param.starts_with(field), "{} named {} for a bad {}", error.message, param, field);
            }
        }
    }
}

#[test]
fn error_classes_map_to_the_statuses_and_types_the_sdks_expect() {
    let cases = [
        (ErrorClass::InvalidRequest, 400, "invalid_request_error", "invalid_request_error"),
        (ErrorClass::Authentication, 401, "invalid_request_error", "authentication_error"),
        (ErrorClass::PermissionDenied, 403, "invalid_request_error", "permission_error"),
        (ErrorClass::NotFound, 404, "invalid_request_error", "not_found_error"),
        (ErrorClass::RequestTooLarge, 413, "invalid_request_error", "request_too_large"),
        (ErrorClass::UnsupportedMediaType, 415, "invalid_request_error", "invalid_request_error"),
        (ErrorClass::RateLimited, 429, "requests", "rate_limit_error"),
        (ErrorClass::BudgetExceeded, 429, "insufficient_quota", "rate_limit_error"),
        (ErrorClass::Upstream, 502, "server_error", "api_error"),
        (ErrorClass::UpstreamTimeout, 504, "server_error", "api_error"),
        (ErrorClass::Unavailable, 503, "server_error", "overloaded_error"),
        (ErrorClass::Internal, 500, "server_error", "api_error"),
    ];
    for (class, status, openai_type, anthropic_type) in cases {
        let error = ApiError::new(class, "message").with_code("some_code");
        assert_eq!(error.status().as_u16(), status, "{class:?}");
        let openai = error.body(Dialect::OpenAi);
        assert_eq!(
            openai,
            json!({"error": {"message": "message", "type": openai_type, "param": null, "code": "some_code"}})
        );
        let anthropic = error.body(Dialect::Anthropic);
        assert_eq!(anthropic, json!({"type": "error", "error": {"type": anthropic_type, "message": "message"}}));
    }
}
