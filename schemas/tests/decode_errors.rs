//! Malformed messages yield a typed error that names the problem, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod strategies;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use tollgate_schemas::{DeadLetterReason, DecodeError, Interaction, QuotaDecision, decode, encode};

fn sample_interaction_json() -> serde_json::Value {
    let mut runner = TestRunner::deterministic();
    let event = strategies::interaction().new_tree(&mut runner).unwrap().current();
    serde_json::from_slice(&encode(&event).unwrap()).unwrap()
}

fn decode_value(value: &serde_json::Value) -> Result<Interaction, DecodeError> {
    decode(value.to_string().as_bytes())
}

#[test]
fn not_json_is_named() {
    let error = decode::<Interaction>(b"\x00\x01 definitely not json").unwrap_err();
    assert!(matches!(error, DecodeError::NotJson { event: "interaction", .. }), "{error:?}");
    assert_eq!(error.dead_letter_reason(), DeadLetterReason::NotJson);
    assert!(error.to_string().starts_with("interaction: payload is not a JSON document"), "{error}");
}

#[test]
fn invalid_utf8_is_not_json_even_in_a_field_nobody_reads() {
    let mut value = sample_interaction_json();
    value["added_in_a_later_minor_release"] = serde_json::json!("MARK");
    let text = value.to_string();
    let at = text.find("MARK").unwrap();
    let mut bytes = text.into_bytes();
    bytes[at] = 0xff;
    let error = decode::<Interaction>(&bytes).unwrap_err();
    assert!(matches!(error, DecodeError::NotJson { event: "interaction", .. }), "{error:?}");
    assert_eq!(error.dead_letter_reason(), DeadLetterReason::NotJson);
    assert!(error.to_string().contains("not UTF-8"), "{error}");
    // The same document with the byte restored decodes: the extra field is not the problem.
    bytes[at] = b'M';
    assert!(decode::<Interaction>(&bytes).is_ok());
}

#[test]
fn truncated_json_is_not_json() {
    let text = sample_interaction_json().to_string();
    let error = decode::<Interaction>(&text.as_bytes()[..text.len() / 2]).unwrap_err();
    assert!(matches!(error, DecodeError::NotJson { .. }), "{error:?}");
}

#[test]
fn trailing_garbage_is_not_json() {
    let text = sample_interaction_json().to_string() + " {}";
    let error = decode::<Interaction>(text.as_bytes()).unwrap_err();
    assert!(matches!(error, DecodeError::NotJson { .. }), "{error:?}");
}

#[test]
fn json_that_is_not_an_object_is_named() {
    for payload in ["[1,2,3]", "\"interaction\"", "42", "null"] {
        let error = decode::<Interaction>(payload.as_bytes()).unwrap_err();
        assert!(matches!(error, DecodeError::NotAnObject { .. }), "{payload}: {error:?}");
    }
}

#[test]
fn missing_schema_version_is_named() {
    let mut value = sample_interaction_json();
    value.as_object_mut().unwrap().remove("schema_version");
    let error = decode_value(&value).unwrap_err();
    assert_eq!(error, DecodeError::MissingSchemaVersion { event: "interaction" });
    assert_eq!(error.dead_letter_reason(), DeadLetterReason::UnsupportedSchemaVersion);
}

#[test]
fn wrong_schema_version_is_named_with_both_versions() {
    for found in [serde_json::json!(2), serde_json::json!(0), serde_json::json!("1"), serde_json::json!(-1)] {
        let mut value = sample_interaction_json();
        value["schema_version"] = found.clone();
        let error = decode_value(&value).unwrap_err();
        assert_eq!(
            error,
            DecodeError::UnsupportedSchemaVersion { event: "interaction", found: found.to_string(), supported: 1 }
        );
        assert!(error.to_string().contains("this build reads 1"), "{error}");
    }
}

#[test]
fn a_future_version_is_refused_even_when_its_fields_happen_to_parse() {
    let mut value = sample_interaction_json();
    value["schema_version"] = serde_json::json!(7);
    let error = decode_value(&value).unwrap_err();
    assert!(matches!(error, DecodeError::UnsupportedSchemaVersion { .. }), "{error:?}");
}

#[test]
fn missing_field_names_its_path() {
    let mut value = sample_interaction_json();
    value["principal"].as_object_mut().unwrap().remove("org_id");
    let error = decode_value(&value).unwrap_err();
    match &error {
        DecodeError::InvalidField { event, path, message } => {
            assert_eq!(*event, "interaction");
            assert_eq!(path, "principal");
            assert!(message.contains("missing field `org_id`"), "{message}");
        }
        other => panic!("expected InvalidField, got {other:?}"),
    }
    assert_eq!(error.dead_letter_reason(), DeadLetterReason::InvalidEvent);
}

#[test]
fn wrongly_typed_field_names_its_path() {
    let mut value = sample_interaction_json();
    value["usage"]["input_tokens"] = serde_json::json!("twelve");
    let error = decode_value(&value).unwrap_err();
    match error {
        DecodeError::InvalidField { path, message, .. } => {
            assert_eq!(path, "usage.input_tokens");
            assert!(message.contains("invalid type"), "{message}");
        }
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

#[test]
fn negative_token_count_is_refused() {
    let mut value = sample_interaction_json();
    value["usage"]["output_tokens"] = serde_json::json!(-5);
    assert!(matches!(decode_value(&value), Err(DecodeError::InvalidField { .. })));
}

#[test]
fn unknown_call_kind_is_named() {
    let mut value = sample_interaction_json();
    value["call"]["kind"] = serde_json::json!("telepathy");
    let error = decode_value(&value).unwrap_err();
    assert!(matches!(&error, DecodeError::InvalidField { path, .. } if path.starts_with("call")), "{error:?}");
}

#[test]
fn non_v7_id_breaks_an_invariant() {
    let mut value = sample_interaction_json();
    value["id"] = serde_json::json!("67e55044-10b1-426f-9247-bb680e5fe0c8"); // v4
    let error = decode_value(&value).unwrap_err();
    assert!(matches!(&error, DecodeError::Invariant { message, .. } if message.contains("UUIDv7")), "{error:?}");
}

#[test]
fn bad_digest_breaks_an_invariant() {
    let mut value = sample_interaction_json();
    value["content"]["request_sha256"] = serde_json::json!("not-a-digest");
    let error = decode_value(&value).unwrap_err();
    assert!(matches!(&error, DecodeError::Invariant { message, .. } if message.contains("request_sha256")));
}

#[test]
fn unknown_extra_fields_are_accepted_for_forward_compatibility() {
    let mut value = sample_interaction_json();
    value["added_in_a_later_minor_release"] = serde_json::json!({"x": 1});
    assert!(decode_value(&value).is_ok());
}

#[test]
fn an_interaction_is_not_a_quota_decision() {
    let value = sample_interaction_json();
    let error = decode::<QuotaDecision>(value.to_string().as_bytes()).unwrap_err();
    assert!(matches!(error, DecodeError::InvalidField { event: "quota_decision", .. }), "{error:?}");
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let payload = "[".repeat(100_000);
    assert!(decode::<Interaction>(payload.as_bytes()).is_err());
}

#[test]
fn a_subject_update_missing_what_its_kind_needs_is_named() {
    let update = serde_json::json!({
        "schema_version": tollgate_schemas::SCHEMA_VERSION,
        "subject": {"kind": "team", "id": "team-1"},
        "org_id": "org-1",
        "source_topic": "tollgate.interactions",
        "source_partition": 0,
        "change": {"kind": "budget", "source_offset": 4, "budget_id": "b-1"},
    });
    let error = decode::<tollgate_schemas::SubjectUpdate>(update.to_string().as_bytes()).unwrap_err();
    match &error {
        DecodeError::InvalidField { path, message, .. } => {
            assert_eq!(path, "change");
            assert!(message.contains("missing field `change_id`"), "{message}");
        }
        other => panic!("expected InvalidField, got {other:?}"),
    }

    let mut spend = update;
    spend["change"] = serde_json::json!({"kind": "spend"});
    let error = decode::<tollgate_schemas::SubjectUpdate>(spend.to_string().as_bytes()).unwrap_err();
    assert!(error.to_string().contains("missing field `entries`"), "{error}");

    spend["change"] = serde_json::json!({"kind": "refund", "entries": []});
    let error = decode::<tollgate_schemas::SubjectUpdate>(spend.to_string().as_bytes()).unwrap_err();
    assert!(matches!(&error, DecodeError::InvalidField { path, .. } if path.starts_with("change")), "{error:?}");
}
