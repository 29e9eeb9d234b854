//! The JSON wire encoding shared by every event type, and its typed decode errors.

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::dead_letter::DeadLetterReason;
use crate::{
    AccessEvent, DeadLetter, GovernanceChange, Interaction, PolicyViolation, PricedInteraction, QuotaDecision,
    SCHEMA_VERSION, SubjectUpdate, UpstreamHealth,
};

/// An event that travels over the log as JSON.
pub trait Event: Serialize + DeserializeOwned + JsonSchema + Sized {
    /// Short name used in errors and schema file names, for example `interaction`.
    const NAME: &'static str;

    /// The `schema_version` this value carries.
    fn schema_version(&self) -> u16;

    /// Invariants beyond what the types express (UUIDv7 ids, hex digests, sums).
    fn validate(&self) -> Result<(), String>;
}

/// Why bytes read from a topic are not a usable event. Every variant names the event
/// type and the problem, so a dead-letter entry or a log line is enough to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{event}: payload is not a JSON document: {message}")]
    NotJson { event: &'static str, message: String },
    #[error("{event}: payload is JSON but not an object")]
    NotAnObject { event: &'static str },
    #[error("{event}: `schema_version` is missing")]
    MissingSchemaVersion { event: &'static str },
    #[error("{event}: `schema_version` {found} is not supported; this build reads {supported}")]
    UnsupportedSchemaVersion { event: &'static str, found: String, supported: u16 },
    #[error("{event}: field `{path}`: {message}")]
    InvalidField { event: &'static str, path: String, message: String },
    #[error("{event}: {message}")]
    Invariant { event: &'static str, message: String },
}

impl DecodeError {
    /// The dead-letter classification of this error.
    pub fn dead_letter_reason(&self) -> DeadLetterReason {
        match self {
            DecodeError::NotJson { .. } | DecodeError::NotAnObject { .. } => DeadLetterReason::NotJson,
            DecodeError::MissingSchemaVersion { .. } | DecodeError::UnsupportedSchemaVersion { .. } => {
                DeadLetterReason::UnsupportedSchemaVersion
            }
            DecodeError::InvalidField { .. } | DecodeError::Invariant { .. } => DeadLetterReason::InvalidEvent,
        }
    }
}

/// Why an event could not be encoded. Only reachable through a broken invariant (a
/// non-string map key inside a governance value), never through ordinary data.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {event}: {source}")]
pub struct EncodeError {
    event: &'static str,
    #[source]
    source: serde_json::Error,
}

/// Encodes an event as compact JSON.
pub fn encode<E: Event>(event: &E) -> Result<Vec<u8>, EncodeError> {
    // Room for a typical interaction up front (serde_json starts at 128 bytes and doubles,
    // copying the document three times on the way to an interaction's size).
    let mut bytes = Vec::with_capacity(1024);
    serde_json::to_writer(&mut bytes, event).map_err(|source| EncodeError { event: E::NAME, source })?;
    Ok(bytes)
}

/// Decodes and validates an event. Never panics, whatever the bytes.
///
/// The happy path parses once, without tracking the path (consumers decode every event,
/// so this is the hot path). It checks the whole document's UTF-8 once up front and
/// then parses it as text: parsing bytes would check each string, key or value, on its
/// own, which costs more than the one pass over an event of short strings. Only when
/// that fails is the document parsed again, with path tracking, to name the field at
/// fault and tell a version mismatch from a malformed field.
pub fn decode<E: Event>(bytes: &[u8]) -> Result<E, DecodeError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        // JSON is UTF-8 (RFC 8259), in the strings it ignores too.
        Err(error) => return Err(DecodeError::NotJson { event: E::NAME, message: format!("not UTF-8: {error}") }),
    };
    let event = match serde_json::from_str::<E>(text) {
        Ok(event) => event,
        Err(_) => return Err(explain_failure::<E>(bytes)),
    };
    if event.schema_version() != SCHEMA_VERSION {
        return Err(DecodeError::UnsupportedSchemaVersion {
            event: E::NAME,
            found: event.schema_version().to_string(),
            supported: SCHEMA_VERSION,
        });
    }
    event.validate().map_err(|message| DecodeError::Invariant { event: E::NAME, message })?;
    Ok(event)
}

/// Why `bytes` did not decode as `E`, found by decoding again with path tracking.
fn explain_failure<E: Event>(bytes: &[u8]) -> DecodeError {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let result: Result<E, _> = serde_path_to_error::deserialize(&mut deserializer);
    match result {
        Err(error) => classify_failure::<E>(bytes, error),
        // The event itself parsed: what failed is the end of the input.
        Ok(_) => match deserializer.end() {
            Err(error) => DecodeError::NotJson { event: E::NAME, message: error.to_string() },
            Ok(()) => DecodeError::NotJson { event: E::NAME, message: "undecodable payload".to_owned() },
        },
    }
}

fn classify_failure<E: Event>(bytes: &[u8], error: serde_path_to_error::Error<serde_json::Error>) -> DecodeError {
    let event = E::NAME;
    if !error.inner().is_data() {
        return DecodeError::NotJson { event, message: error.inner().to_string() };
    }
    let document: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(document) => document,
        Err(parse_error) => return DecodeError::NotJson { event, message: parse_error.to_string() },
    };
    let Some(object) = document.as_object() else {
        return DecodeError::NotAnObject { event };
    };
    match object.get("schema_version") {
        None => return DecodeError::MissingSchemaVersion { event },
        Some(found) if found.as_u64() != Some(u64::from(SCHEMA_VERSION)) => {
            return DecodeError::UnsupportedSchemaVersion {
                event,
                found: found.to_string(),
                supported: SCHEMA_VERSION,
            };
        }
        Some(_) => {}
    }
    let path = error.path().to_string();
    let message = error.into_inner().to_string();
    DecodeError::InvalidField { event, path, message }
}

macro_rules! impl_event {
    ($type:ty, $name:literal, $validate:expr) => {
        impl Event for $type {
            const NAME: &'static str = $name;

            fn schema_version(&self) -> u16 {
                self.schema_version
            }

            fn validate(&self) -> Result<(), String> {
                let validate: fn(&$type) -> Result<(), String> = $validate;
                validate(self)
            }
        }
    };
}

impl_event!(Interaction, "interaction", Interaction::validate);
impl_event!(PricedInteraction, "priced_interaction", PricedInteraction::validate);
impl_event!(QuotaDecision, "quota_decision", QuotaDecision::validate);
impl_event!(PolicyViolation, "policy_violation", PolicyViolation::validate);
impl_event!(GovernanceChange, "governance_change", GovernanceChange::validate);
impl_event!(AccessEvent, "access_event", AccessEvent::validate);
impl_event!(UpstreamHealth, "upstream_health", UpstreamHealth::validate);
impl_event!(DeadLetter, "dead_letter", |_| Ok(()));
impl_event!(SubjectUpdate, "subject_update", SubjectUpdate::validate);
