//! [`BudgetSpec`]: a spending limit on one subject, as governance changes carry it, and
//! [`SubjectUpdate`]: what the processor's pricing stage sends, keyed by subject, to the
//! stage that keeps budgets.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::common::{Nanodollars, Subject};
use crate::quota::WindowKind;

/// One budget: how much a subject may spend per window. The `value` of a
/// [`crate::GovernanceChange`] whose target kind is `budget` (the target id is the budget
/// id); a change with no value (deleted, revoked) lifts the budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Who the budget limits. A key's spend counts toward its user, team and org, so a
    /// team budget limits every key of the team together.
    pub subject: Subject,
    /// The accounting window: a UTC calendar day, a UTC calendar month, or for ever.
    pub window: WindowKind,
    /// The limit for one window.
    pub limit: Nanodollars,
    /// Hard budgets refuse the subject's requests once spend reaches the limit; soft
    /// budgets only warn.
    #[serde(default)]
    pub hard: bool,
    /// Percentages of the limit at which a warning decision is published, ascending (for
    /// example `[50, 80]`). Reaching 100% always changes the state.
    #[serde(default)]
    pub alert_thresholds_percent: Vec<u16>,
}

impl BudgetSpec {
    /// Checks the spec; the problem in words when it is not usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.subject.id.is_empty() {
            return Err("subject.id must not be empty".to_owned());
        }
        if self.limit.0 <= 0 {
            return Err(format!("limit must be above zero, not {}", self.limit));
        }
        if self.alert_thresholds_percent.iter().any(|percent| *percent == 0 || *percent > 1000) {
            return Err("alert_thresholds_percent must each be between 1 and 1000".to_owned());
        }
        if self.alert_thresholds_percent.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err("alert_thresholds_percent must be strictly ascending".to_owned());
        }
        Ok(())
    }
}

/// A change to one budget subject, re-keyed by that subject so that every change to it
/// lands in one partition of [`crate::topics::SUBJECT_UPDATES`], whichever partition of
/// the source topic it came from.
///
/// Each update names the source partition it came from and carries the source offsets,
/// so the budget stage applies every source record at most once per subject however
/// often the pricing stage re-sends it after a crash or a rebalance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubjectUpdate {
    pub schema_version: u16,
    pub subject: Subject,
    /// The org the subject belongs to (for violations about the subject).
    pub org_id: String,
    /// The topic the change came from: interactions (spend) or governance (budgets).
    pub source_topic: String,
    pub source_partition: i32,
    pub change: SubjectChange,
}

/// What changed for the subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SubjectChange {
    /// Priced interactions of the subject from one source partition, in offset order.
    Spend { entries: Vec<SpendEntry> },
    /// A budget of the subject was set, changed or lifted (`spec` absent).
    Budget {
        /// Offset of the governance change in its partition.
        source_offset: i64,
        change_id: Uuid,
        budget_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spec: Option<BudgetSpec>,
    },
}

// Decoding is written out rather than derived, as for `Call`: serde's derived decoding of
// an internally tagged enum first copies the whole object, every spend entry included,
// into an intermediate tree to find the tag. That copy was over half of the budget
// stage's decoding time.
impl<'de> Deserialize<'de> for SubjectChange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;

        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Kind {
            Spend,
            Budget,
        }

        /// Every field of either kind; what the kind does not use is ignored, as unknown
        /// fields are.
        #[derive(Deserialize)]
        struct Fields {
            kind: Kind,
            entries: Option<Vec<SpendEntry>>,
            source_offset: Option<i64>,
            change_id: Option<Uuid>,
            budget_id: Option<String>,
            #[serde(default)]
            spec: Option<BudgetSpec>,
        }

        let fields = Fields::deserialize(deserializer)?;
        match fields.kind {
            Kind::Spend => {
                Ok(SubjectChange::Spend { entries: fields.entries.ok_or_else(|| D::Error::missing_field("entries"))? })
            }
            Kind::Budget => Ok(SubjectChange::Budget {
                source_offset: fields.source_offset.ok_or_else(|| D::Error::missing_field("source_offset"))?,
                change_id: fields.change_id.ok_or_else(|| D::Error::missing_field("change_id"))?,
                budget_id: fields.budget_id.ok_or_else(|| D::Error::missing_field("budget_id"))?,
                spec: fields.spec,
            }),
        }
    }
}

/// The cost of one priced interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SpendEntry {
    /// Offset of the interaction in its source partition.
    pub offset: i64,
    /// When the interaction happened (its event time; windows are assigned by it).
    pub time_unix_micros: i64,
    pub cost: Nanodollars,
}

impl SubjectUpdate {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.subject.id.is_empty() {
            return Err("subject.id must not be empty".to_owned());
        }
        match &self.change {
            SubjectChange::Spend { entries } => {
                if entries.windows(2).any(|pair| pair[0].offset >= pair[1].offset) {
                    return Err("change.entries must be in strictly ascending offset order".to_owned());
                }
                if entries.iter().any(|entry| entry.cost.0 < 0) {
                    return Err("change.entries: a cost must not be negative".to_owned());
                }
            }
            SubjectChange::Budget { spec: Some(spec), .. } => {
                spec.validate().map_err(|problem| format!("change.spec: {problem}"))?;
                if spec.subject != self.subject {
                    return Err("change.spec.subject must be the update's subject".to_owned());
                }
            }
            SubjectChange::Budget { spec: None, .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SubjectKind;

    fn spec() -> BudgetSpec {
        BudgetSpec {
            subject: Subject::new(SubjectKind::Team, "ml"),
            window: WindowKind::Month,
            limit: Nanodollars(100 * Nanodollars::PER_DOLLAR),
            hard: true,
            alert_thresholds_percent: vec![50, 80],
        }
    }

    #[test]
    fn budget_specs_are_checked() {
        assert_eq!(spec().validate(), Ok(()));
        let zero = BudgetSpec { limit: Nanodollars::ZERO, ..spec() };
        assert!(zero.validate().unwrap_err().contains("above zero"));
        let unordered = BudgetSpec { alert_thresholds_percent: vec![80, 50], ..spec() };
        assert!(unordered.validate().unwrap_err().contains("ascending"));
        let huge = BudgetSpec { alert_thresholds_percent: vec![5000], ..spec() };
        assert!(huge.validate().unwrap_err().contains("between 1 and 1000"));
    }
}
