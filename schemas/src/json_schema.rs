//! JSON Schema documents for every event, generated from the Rust types.
//!
//! The committed copies live in `schemas/json/`; a test regenerates them and fails when
//! they differ, so the files never drift from the code. Regenerate with
//! `TOLLGATE_UPDATE_SCHEMAS=1 cargo test -p tollgate-schemas json_schema`.

use schemars::{JsonSchema, schema_for};

use crate::{
    AccessEvent, BudgetSpec, DeadLetter, Event, GovernanceChange, Interaction, PolicyViolation, PricedInteraction,
    QuotaDecision, SubjectUpdate, UpstreamHealth,
};

/// `(file name, pretty-printed schema)` for every event type.
pub fn all() -> Vec<(String, String)> {
    vec![
        document::<Interaction>(),
        document::<PricedInteraction>(),
        document::<QuotaDecision>(),
        document::<PolicyViolation>(),
        document::<GovernanceChange>(),
        document::<AccessEvent>(),
        document::<UpstreamHealth>(),
        document::<DeadLetter>(),
        document::<SubjectUpdate>(),
        value_document::<BudgetSpec>("budget_spec"),
    ]
}

/// The schema of a document carried inside an event (a governance change's `value`).
fn value_document<T: JsonSchema>(name: &str) -> (String, String) {
    let mut schema = schema_for!(T);
    schema.insert("$id".to_owned(), serde_json::Value::String(format!("urn:tollgate:value:{name}")));
    let text = serde_json::to_string_pretty(&schema).unwrap_or_else(|_| schema.as_value().to_string());
    (
        format!("{name}.json"),
        text + "
",
    )
}

fn document<E: Event + JsonSchema>() -> (String, String) {
    let mut schema = schema_for!(E);
    schema.insert(
        "$id".to_owned(),
        serde_json::Value::String(format!("urn:tollgate:event:{}:v{}", E::NAME, crate::SCHEMA_VERSION)),
    );
    // Pretty JSON of a schemars document cannot fail (string keys only); fall back to the
    // compact form rather than panic if it ever did.
    let text = serde_json::to_string_pretty(&schema).unwrap_or_else(|_| schema.as_value().to_string());
    (format!("{}.json", E::NAME), text + "\n")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn json_schema_files_are_current() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
        let update = std::env::var_os("TOLLGATE_UPDATE_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (name, text) in super::all() {
            let path = dir.join(&name);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(committed) if committed == text => {}
                _ => stale.push(name),
            }
        }
        assert!(
            stale.is_empty(),
            "schemas/json is stale for {stale:?}; regenerate with \
             `TOLLGATE_UPDATE_SCHEMAS=1 cargo test -p tollgate-schemas json_schema` and commit"
        );
    }

    #[test]
    fn every_event_schema_requires_schema_version() {
        for (name, text) in super::all().into_iter().filter(|(name, _)| name != "budget_spec.json") {
            let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
            let required = schema["required"].as_array().unwrap();
            assert!(required.iter().any(|field| field == "schema_version"), "{name} does not require schema_version");
        }
    }
}
