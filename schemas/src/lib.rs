//! The contracts that cross Tollgate's process boundaries.
//!
//! Every event that travels over the log (Kafka or the embedded log) is defined here:
//! [`Interaction`], [`PricedInteraction`], [`QuotaDecision`], [`PolicyViolation`],
//! [`GovernanceChange`], [`AccessEvent`], [`UpstreamHealth`], [`DeadLetter`], and the
//! processor's internal [`SubjectUpdate`]. For each this crate owns
//!
//! - the JSON wire encoding ([`encode`] / [`decode`]), versioned by a `schema_version`
//!   field, with decode errors that name the problem instead of panicking;
//! - the topic it travels on and its message key ([`topics`]);
//! - for stored records, the Arrow schema and the conversion to and from a
//!   `RecordBatch` ([`arrow`]), which the Parquet and query layers share;
//! - the price catalog format and exact cost arithmetic ([`pricing`]);
//! - a generated JSON Schema document (committed under `schemas/json/`) for consumers
//!   that are not written in Rust.
//!
//! This crate does no I/O and starts no runtime: it is plain data and pure functions, so
//! every other crate (and every test) can depend on it freely.
//!
//! Field names follow the OpenTelemetry GenAI semantic conventions where one exists. The
//! JSON encoding groups fields by concept (`principal`, `call`, `usage`, ...); the flat
//! Arrow/ClickHouse columns use the OpenTelemetry attribute name with `.` replaced by `_`
//! (`gen_ai.request.model` becomes `gen_ai_request_model`), so SQL never needs quoting.

mod access;
pub mod archive;
pub mod arrow;
mod budget;
mod codec;
mod common;
mod dead_letter;
pub mod directory;
mod governance;
mod health;
mod interaction;
pub mod json_schema;
pub mod limits;
mod priced;
pub mod pricing;
mod quota;
pub mod topics;
mod violation;

pub use access::{AccessEvent, MAX_ACCESS_QUERY_BYTES};
pub use budget::{BudgetSpec, SpendEntry, SubjectChange, SubjectUpdate};
pub use codec::{DecodeError, EncodeError, Event, decode, encode};
pub use common::{Nanodollars, Principal, SourceOffset, Subject, SubjectKind, derived_id, now_unix_micros};
pub use dead_letter::{DeadLetter, DeadLetterReason, KeptPart, OriginalMessage};
pub use directory::{
    Directory, PiiGuardMode, ProviderKind, ProviderModelSpec, ProviderSpec, TeamPolicySpec, VirtualKeySpec,
};
pub use governance::{Actor, ActorKind, ChangeAction, GovernanceChange, GovernanceTarget, TargetKind};
pub use health::{BreakerTransition, MAX_HEALTH_REASON_BYTES, UpstreamHealth};
pub use interaction::{
    Call, CapturedContent, ContentRecord, GenAiOperation, Interaction, InteractionKind, ModelCall, Outcome,
    OutcomeStatus, Timing, ToolCall, TraceContext, Usage,
};
pub use limits::prefix_within;
pub use priced::{Cost, PricedInteraction};
pub use quota::{BudgetWindow, QuotaDecision, QuotaState, WindowKind};
pub use violation::{Detector, PolicyViolation, Severity, ViolationAction};

/// The `schema_version` every event type in this build writes and reads.
///
/// Adding an optional field does not change it (readers ignore fields they do not know and
/// default the ones that are missing); renaming, removing or retyping a field does.
pub const SCHEMA_VERSION: u16 = 1;
