//! [`QuotaDecision`]: the processor's verdict on one budget subject, enforced by gateways.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::common::{Nanodollars, SourceOffset, Subject};

/// The current state of one budget for one subject.
///
/// Published on the compacted [`crate::topics::QUOTA_DECISIONS`] topic keyed by
/// [`Subject::key`], so the latest decision per subject is what a gateway reads on
/// start-up. `version` only increases per subject; a gateway ignores a decision whose
/// version is not above the one it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuotaDecision {
    pub schema_version: u16,
    /// UUIDv7 of this decision.
    pub id: Uuid,
    /// When the processor made the decision.
    pub time_unix_micros: i64,
    pub subject: Subject,
    /// The budget this decision applies.
    pub budget_id: String,
    pub window: BudgetWindow,
    pub budget: Nanodollars,
    pub spent: Nanodollars,
    /// `budget - spent`; negative when overspent.
    pub remaining: Nanodollars,
    pub state: QuotaState,
    /// Whether the budget is hard (requests are refused once it is reached) rather than
    /// soft (a warning only). Between decisions a gateway refuses a hard budget's requests
    /// once `spent` plus its own spend since `source_offsets` reaches `budget`.
    #[serde(default)]
    pub hard: bool,
    /// Monotonically increasing per subject.
    pub version: u64,
    /// For each input partition, the next offset not yet reflected in `spent`. A gateway
    /// adds its own spend since these offsets to `spent`.
    pub source_offsets: Vec<SourceOffset>,
    /// Why the state is what it is, in words (for example "hard budget reached 100%").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a gateway does with requests from the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaState {
    Allow,
    /// A soft budget or an alert threshold was crossed; requests still pass.
    Warn,
    /// A hard budget is exhausted; requests are refused with 429.
    Block,
}

impl QuotaState {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaState::Allow => "allow",
            QuotaState::Warn => "warn",
            QuotaState::Block => "block",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(QuotaState::Allow),
            "warn" => Some(QuotaState::Warn),
            "block" => Some(QuotaState::Block),
            _ => None,
        }
    }
}

/// The accounting window of a budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BudgetWindow {
    pub kind: WindowKind,
    /// Inclusive start (UTC).
    pub start_unix_micros: i64,
    /// Exclusive end (UTC); absent for lifetime budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_unix_micros: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
    Lifetime,
}

impl WindowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Day => "day",
            WindowKind::Month => "month",
            WindowKind::Lifetime => "lifetime",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "day" => Some(WindowKind::Day),
            "month" => Some(WindowKind::Month),
            "lifetime" => Some(WindowKind::Lifetime),
            _ => None,
        }
    }
}

impl QuotaDecision {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.subject.id.is_empty() {
            return Err("subject.id must not be empty".to_owned());
        }
        if let Some(end) = self.window.end_unix_micros
            && end <= self.window.start_unix_micros
        {
            return Err("window.end_unix_micros must be after window.start_unix_micros".to_owned());
        }
        Ok(())
    }
}
