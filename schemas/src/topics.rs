//! Topic names, their layout, and the message key of each event.
//!
//! Both log implementations create topics from [`ALL`], so a fresh Kafka cluster and a
//! fresh embedded log have the same layout.

use crate::{
    AccessEvent, DeadLetter, GovernanceChange, Interaction, PolicyViolation, PricedInteraction, QuotaDecision,
    SubjectUpdate, UpstreamHealth,
};

/// Every model and tool interaction, from the gateways. Keyed by key id.
pub const INTERACTIONS: &str = "tollgate.interactions";
/// Interactions with their cost, from the processor. Keyed by key id.
pub const PRICED_INTERACTIONS: &str = "tollgate.priced-interactions";
/// Latest budget state per subject, from the processor. Compacted; keyed by subject.
pub const QUOTA_DECISIONS: &str = "tollgate.quota-decisions";
/// Policy rules that fired, from gateways and the processor. Keyed by org id.
pub const POLICY_VIOLATIONS: &str = "tollgate.policy-violations";
/// Changes to keys, budgets, policies, providers and prices. One partition, so every
/// service applies changes in the same order. Keyed by target.
pub const GOVERNANCE: &str = "tollgate.governance";
/// Every authenticated query API request: who read what, and when. Keyed by token name.
pub const ACCESS: &str = "tollgate.access";
/// Circuit-breaker transitions of every gateway's upstreams. Keyed by upstream.
pub const UPSTREAM_HEALTH: &str = "tollgate.upstream-health";
/// Messages a consumer could not use, with the reason. Keyed like the original.
pub const DEAD_LETTER: &str = "tollgate.dead-letter";
/// The processor's repartition topic: spend and budget changes re-keyed by budget subject
/// (`kind:id`), so each subject's whole history is in one partition.
pub const SUBJECT_UPDATES: &str = "tollgate.subject-updates";
/// The processor's budget-stage checkpoints: its state with the offset of
/// [`SUBJECT_UPDATES`] it reflects, in the partition of the input partition it
/// describes. Must have as many partitions as [`SUBJECT_UPDATES`].
pub const PROCESSOR_CHECKPOINTS: &str = "tollgate.processor-checkpoints";

/// How a topic is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: &'static str,
    pub partitions: i32,
    /// Log compaction (keep the latest message per key) instead of time retention.
    pub compacted: bool,
}

/// Every topic Tollgate uses, with its default layout.
pub const ALL: [TopicSpec; 10] = [
    TopicSpec { name: INTERACTIONS, partitions: 8, compacted: false },
    TopicSpec { name: PRICED_INTERACTIONS, partitions: 8, compacted: false },
    TopicSpec { name: QUOTA_DECISIONS, partitions: 4, compacted: true },
    TopicSpec { name: POLICY_VIOLATIONS, partitions: 4, compacted: false },
    TopicSpec { name: GOVERNANCE, partitions: 1, compacted: false },
    TopicSpec { name: ACCESS, partitions: 1, compacted: false },
    TopicSpec { name: UPSTREAM_HEALTH, partitions: 1, compacted: false },
    TopicSpec { name: DEAD_LETTER, partitions: 1, compacted: false },
    TopicSpec { name: SUBJECT_UPDATES, partitions: 8, compacted: false },
    TopicSpec { name: PROCESSOR_CHECKPOINTS, partitions: 8, compacted: false },
];

/// The topic an event type travels on, and the key it is published under.
pub trait Keyed {
    const TOPIC: &'static str;
    fn message_key(&self) -> String;
}

impl Keyed for Interaction {
    const TOPIC: &'static str = INTERACTIONS;
    fn message_key(&self) -> String {
        self.principal.key_id.clone()
    }
}

impl Keyed for PricedInteraction {
    const TOPIC: &'static str = PRICED_INTERACTIONS;
    fn message_key(&self) -> String {
        self.interaction.principal.key_id.clone()
    }
}

impl Keyed for QuotaDecision {
    const TOPIC: &'static str = QUOTA_DECISIONS;
    fn message_key(&self) -> String {
        self.subject.key()
    }
}

impl Keyed for PolicyViolation {
    const TOPIC: &'static str = POLICY_VIOLATIONS;
    fn message_key(&self) -> String {
        self.principal.org_id.clone()
    }
}

impl Keyed for GovernanceChange {
    const TOPIC: &'static str = GOVERNANCE;
    fn message_key(&self) -> String {
        self.target.key()
    }
}

impl Keyed for SubjectUpdate {
    const TOPIC: &'static str = SUBJECT_UPDATES;
    fn message_key(&self) -> String {
        self.subject.key()
    }
}

impl Keyed for AccessEvent {
    const TOPIC: &'static str = ACCESS;
    fn message_key(&self) -> String {
        self.token_name.clone()
    }
}

impl Keyed for UpstreamHealth {
    const TOPIC: &'static str = UPSTREAM_HEALTH;
    fn message_key(&self) -> String {
        self.upstream.clone()
    }
}

impl Keyed for DeadLetter {
    const TOPIC: &'static str = DEAD_LETTER;
    fn message_key(&self) -> String {
        format!("{}/{}", self.source.topic, self.source.partition)
    }
}
