//! [`DeadLetter`]: a message a consumer could not use, kept with the reason.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::common::SourceOffset;

/// A message that a consumer could not decode or process, published on
/// [`crate::topics::DEAD_LETTER`] with the reason instead of being dropped. The original
/// bytes are kept exactly (base64), so the message can be repaired and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetter {
    pub schema_version: u16,
    /// UUIDv7 of this dead letter.
    pub id: Uuid,
    pub time_unix_micros: i64,
    /// Where the message was read.
    pub source: SourceOffset,
    /// The consumer group that gave up on it.
    pub consumer_group: String,
    /// The original message key, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// The original payload, base64 (standard alphabet, padded).
    pub payload_base64: String,
    pub reason: DeadLetterReason,
    /// The decode or processing error, in words.
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Not JSON, or not a JSON object.
    NotJson,
    /// `schema_version` missing or not one this build reads.
    UnsupportedSchemaVersion,
    /// A field is missing, has the wrong type, or breaks an invariant.
    InvalidEvent,
    /// Decoded, but processing failed permanently.
    ProcessingFailed,
}

impl DeadLetter {
    /// The payload bytes, decoded from base64.
    pub fn payload(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(&self.payload_base64)
    }

    /// Builds a dead letter for `payload` read at `source`.
    pub fn new(
        source: SourceOffset,
        consumer_group: impl Into<String>,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: DeadLetterReason,
        error: impl Into<String>,
    ) -> Self {
        use base64::Engine as _;
        let engine = &base64::engine::general_purpose::STANDARD;
        DeadLetter {
            schema_version: crate::SCHEMA_VERSION,
            id: Uuid::now_v7(),
            time_unix_micros: crate::now_unix_micros(),
            source,
            consumer_group: consumer_group.into(),
            key_base64: key.map(|key| engine.encode(key)),
            payload_base64: engine.encode(payload),
            reason,
            error: error.into(),
        }
    }
}
