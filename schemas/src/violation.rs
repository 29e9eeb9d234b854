//! [`PolicyViolation`]: a rule that fired on an interaction or on a spend pattern.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::common::Principal;

/// One policy rule that fired. Published on [`crate::topics::POLICY_VIOLATIONS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyViolation {
    pub schema_version: u16,
    /// UUIDv7 of this violation.
    pub id: Uuid,
    pub time_unix_micros: i64,
    /// The interaction that triggered it; absent for rules over aggregates (spend anomaly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction_id: Option<Uuid>,
    pub principal: Principal,
    /// Stable rule identifier, for example `pii.email` or `unpriced_model`.
    pub rule_id: String,
    pub severity: Severity,
    /// Where the rule ran.
    pub detector: Detector,
    /// What was done about it.
    pub action: ViolationAction,
    /// One line for humans.
    pub summary: String,
    /// What matched, with sensitive parts masked (`j***@example.com`). Never raw PII.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// The gateway's request-time guard.
    Gateway,
    /// The processor's stream detectors.
    Processor,
}

impl Detector {
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Gateway => "gateway",
            Detector::Processor => "processor",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "gateway" => Some(Detector::Gateway),
            "processor" => Some(Detector::Processor),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ViolationAction {
    /// Recorded only.
    Logged,
    /// The offending text was redacted and the request went on.
    Redacted,
    /// The request was refused.
    Blocked,
}

impl ViolationAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationAction::Logged => "logged",
            ViolationAction::Redacted => "redacted",
            ViolationAction::Blocked => "blocked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "logged" => Some(ViolationAction::Logged),
            "redacted" => Some(ViolationAction::Redacted),
            "blocked" => Some(ViolationAction::Blocked),
            _ => None,
        }
    }
}

impl PolicyViolation {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.rule_id.is_empty() {
            return Err("rule_id must not be empty".to_owned());
        }
        Ok(())
    }
}
