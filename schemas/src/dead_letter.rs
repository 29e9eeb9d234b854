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
    /// Present when the message was too large to keep whole (reason `too_large`):
    /// `payload_base64` then holds the reduced form described here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<OriginalMessage>,
}

/// The message a reduced dead letter stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OriginalMessage {
    /// The original payload's size.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the original payload.
    pub sha256: String,
    /// What `payload_base64` keeps of it.
    pub kept: KeptPart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeptPart {
    /// The event as it was, without `content.captured`: every fact but the captured text.
    WithoutCapturedContent,
    /// The first bytes of the payload (not valid JSON by itself).
    Prefix,
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
    /// The log refused the message as larger than it accepts.
    TooLarge,
}

impl DeadLetterReason {
    /// The reason as it is encoded, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::NotJson => "not_json",
            DeadLetterReason::UnsupportedSchemaVersion => "unsupported_schema_version",
            DeadLetterReason::InvalidEvent => "invalid_event",
            DeadLetterReason::ProcessingFailed => "processing_failed",
            DeadLetterReason::TooLarge => "too_large",
        }
    }
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
            original: None,
        }
    }

    /// Builds a dead letter for a message the log refused as too large, keeping at most
    /// `max_kept_bytes` of it: the event without its captured content when that fits,
    /// else the payload's first bytes.
    pub fn too_large(
        source: SourceOffset,
        consumer_group: impl Into<String>,
        key: Option<&[u8]>,
        payload: &[u8],
        error: impl Into<String>,
        max_kept_bytes: usize,
    ) -> Self {
        use sha2::{Digest, Sha256};
        let slim = serde_json::from_slice::<serde_json::Value>(payload).ok().and_then(|mut event| {
            event.get_mut("content")?.as_object_mut()?.remove("captured");
            serde_json::to_vec(&event).ok().filter(|slim| slim.len() <= max_kept_bytes)
        });
        let (kept, part) = match slim {
            Some(slim) => (slim, KeptPart::WithoutCapturedContent),
            None => (payload[..payload.len().min(max_kept_bytes)].to_vec(), KeptPart::Prefix),
        };
        let mut letter = DeadLetter::new(source, consumer_group, key, &kept, DeadLetterReason::TooLarge, error);
        letter.original = Some(OriginalMessage {
            bytes: u64::try_from(payload.len()).unwrap_or(u64::MAX),
            sha256: hex::encode(Sha256::digest(payload)),
            kept: part,
        });
        letter
    }
}
