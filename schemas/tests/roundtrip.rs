//! Every event survives JSON encoding unchanged, and every stored record survives a trip
//! through an Arrow `RecordBatch` unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod strategies;

use proptest::collection::vec;
use proptest::prelude::*;
use tollgate_schemas::arrow::StoredRecord;
use tollgate_schemas::{Event, decode, encode};

fn json_round_trip<E: Event + PartialEq + std::fmt::Debug>(event: &E) -> Result<(), TestCaseError> {
    let bytes = encode(event).map_err(|error| TestCaseError::fail(error.to_string()))?;
    let decoded: E = decode(&bytes).map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert_eq!(&decoded, event);
    Ok(())
}

fn arrow_round_trip<R: StoredRecord + PartialEq + std::fmt::Debug>(records: &[R]) -> Result<(), TestCaseError> {
    let batch = R::to_record_batch(records).map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert_eq!(batch.num_rows(), records.len());
    prop_assert_eq!(batch.schema(), R::arrow_schema());
    let decoded = R::from_record_batch(&batch).map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert_eq!(decoded.as_slice(), records);
    // The JSON rows carry exactly the columns of the batch.
    let rows = R::to_json_rows(records).map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert_eq!(rows.len(), records.len());
    let columns: std::collections::BTreeSet<String> =
        R::arrow_schema().fields().iter().map(|field| field.name().clone()).collect();
    for row in &rows {
        prop_assert_eq!(&row.keys().cloned().collect::<std::collections::BTreeSet<_>>(), &columns);
    }
    // And the rows as ClickHouse returns them read back unchanged.
    let from_clickhouse: Vec<R> =
        tollgate_schemas::arrow::from_json_rows(rows.into_iter().map(clickhouse_shape).collect())
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert_eq!(from_clickhouse.as_slice(), records);
    Ok(())
}

/// A flat row as ClickHouse's `JSONEachRow` gives it back: booleans as 0/1, a list of
/// objects as one array per field (`column.field`), nulls of nullable columns as null.
fn clickhouse_shape(row: tollgate_schemas::arrow::JsonRow) -> tollgate_schemas::arrow::JsonRow {
    use serde_json::Value;
    let mut shaped = serde_json::Map::new();
    for (name, value) in row {
        match value {
            Value::Bool(flag) => {
                shaped.insert(name, Value::from(u8::from(flag)));
            }
            Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
                let mut columns: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
                for item in items {
                    if let Value::Object(fields) = item {
                        for (field, value) in fields {
                            columns.entry(format!("{name}.{field}")).or_default().push(value);
                        }
                    }
                }
                for (column, values) in columns {
                    shaped.insert(column, Value::Array(values));
                }
            }
            other => {
                shaped.insert(name, other);
            }
        }
    }
    shaped
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn interaction_json(event in strategies::interaction()) { json_round_trip(&event)?; }

    #[test]
    fn priced_interaction_json(event in strategies::priced_interaction()) { json_round_trip(&event)?; }

    #[test]
    fn quota_decision_json(event in strategies::quota_decision()) { json_round_trip(&event)?; }

    #[test]
    fn policy_violation_json(event in strategies::policy_violation()) { json_round_trip(&event)?; }

    #[test]
    fn governance_change_json(event in strategies::governance_change()) { json_round_trip(&event)?; }

    #[test]
    fn access_event_json(event in strategies::access_event()) { json_round_trip(&event)?; }

    #[test]
    fn subject_update_json(event in strategies::subject_update()) { json_round_trip(&event)?; }

    #[test]
    fn upstream_health_json(event in strategies::upstream_health()) { json_round_trip(&event)?; }

    #[test]
    fn upstream_health_arrow(events in vec(strategies::upstream_health(), 0..8)) { arrow_round_trip(&events)?; }

    #[test]
    fn dead_letter_json(event in strategies::dead_letter()) { json_round_trip(&event)?; }

    #[test]
    fn interaction_arrow(events in vec(strategies::interaction(), 0..8)) { arrow_round_trip(&events)?; }

    #[test]
    fn priced_interaction_arrow(events in vec(strategies::priced_interaction(), 0..8)) { arrow_round_trip(&events)?; }

    #[test]
    fn quota_decision_arrow(events in vec(strategies::quota_decision(), 0..8)) { arrow_round_trip(&events)?; }

    #[test]
    fn policy_violation_arrow(events in vec(strategies::policy_violation(), 0..8)) { arrow_round_trip(&events)?; }

    #[test]
    fn governance_change_arrow(events in vec(strategies::governance_change(), 0..8)) { arrow_round_trip(&events)?; }

    #[test]
    fn access_event_arrow(events in vec(strategies::access_event(), 0..8)) { arrow_round_trip(&events)?; }

    /// Decoding arbitrary bytes never panics; it returns an event or a typed error.
    #[test]
    fn decode_never_panics(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode::<tollgate_schemas::Interaction>(&bytes);
        let _ = decode::<tollgate_schemas::QuotaDecision>(&bytes);
    }
}

#[test]
fn dead_letter_keeps_payload_bytes_exactly() {
    let payload = [0u8, 159, 146, 150, b'{', b'}'];
    let letter = tollgate_schemas::DeadLetter::new(
        tollgate_schemas::SourceOffset { topic: "t".into(), partition: 3, offset: 42 },
        "group",
        Some(b"key"),
        &payload,
        tollgate_schemas::DeadLetterReason::NotJson,
        "not JSON",
    );
    assert_eq!(letter.payload().unwrap(), payload);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// A message too large for the log keeps every fact but its captured text when that
    /// fits, else its first bytes; either way its size and digest name the original.
    #[test]
    fn an_oversized_message_is_dead_lettered_in_a_reduced_form(mut interaction in strategies::interaction()) {
        use sha2::{Digest, Sha256};
        use tollgate_schemas::{DeadLetter, KeptPart, SourceOffset};
        interaction.content.captured =
            Some(tollgate_schemas::CapturedContent { request: "x".repeat(200_000), response: None, redacted: false });
        let payload = encode(&interaction).unwrap();
        let source = SourceOffset { topic: "spool".into(), partition: 0, offset: 7 };
        let letter = DeadLetter::too_large(source.clone(), "gateway", Some(b"k"), &payload, "too large", 100_000);
        prop_assert_eq!(letter.reason, tollgate_schemas::DeadLetterReason::TooLarge);
        let original = letter.original.clone().unwrap();
        prop_assert_eq!(original.bytes, payload.len() as u64);
        prop_assert_eq!(original.sha256, hex::encode(Sha256::digest(&payload)));
        prop_assert_eq!(original.kept, KeptPart::WithoutCapturedContent);
        let mut slim: tollgate_schemas::Interaction = decode(&letter.payload().unwrap()).unwrap();
        prop_assert!(slim.content.captured.is_none());
        slim.content.captured = interaction.content.captured.clone();
        prop_assert_eq!(slim, interaction, "nothing but the captured content was left out");
        let decoded: DeadLetter = decode(&encode(&letter).unwrap()).unwrap();
        prop_assert_eq!(decoded, letter, "the reduced form round-trips");

        let prefix = DeadLetter::too_large(source, "gateway", None, &payload, "too large", 100);
        prop_assert_eq!(prefix.original.as_ref().map(|original| original.kept), Some(KeptPart::Prefix));
        prop_assert_eq!(prefix.payload().unwrap(), payload[..100].to_vec());
    }
}

#[test]
fn dead_letter_reasons_are_labelled_as_they_are_encoded() {
    use tollgate_schemas::DeadLetterReason::*;
    for reason in [NotJson, UnsupportedSchemaVersion, InvalidEvent, ProcessingFailed, TooLarge] {
        assert_eq!(serde_json::to_value(reason).unwrap(), serde_json::Value::from(reason.as_str()));
    }
}

proptest! {
    /// A batch written before a nullable column existed (an older archive file) still
    /// reads: the events read the column as absent. A missing required column is an
    /// error that names it.
    #[test]
    fn files_without_a_newer_nullable_column_still_read(events in vec(strategies::interaction(), 1..6)) {
        let batch = tollgate_schemas::Interaction::to_record_batch(&events)
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        let without = |name: &str| {
            let keep: Vec<usize> =
                (0..batch.num_columns()).filter(|&index| batch.schema().field(index).name() != name).collect();
            batch.project(&keep).unwrap()
        };
        let older = tollgate_schemas::Interaction::from_record_batch(&without("preferred_upstream"))
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        let expected: Vec<_> = events
            .iter()
            .cloned()
            .map(|mut event| {
                if let tollgate_schemas::Call::ModelCall(call) = &mut event.call {
                    call.preferred_upstream = None;
                }
                event
            })
            .collect();
        prop_assert_eq!(older, expected);
        let error = tollgate_schemas::Interaction::from_record_batch(&without("outcome")).unwrap_err();
        prop_assert!(error.to_string().contains("`outcome`"), "{}", error);
    }
}
