//! [`GovernanceChange`]: who changed which key, budget, policy, provider or price catalog.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One change to the rules Tollgate enforces. Published on [`crate::topics::GOVERNANCE`];
/// every service builds its view of keys, budgets, policies, providers and prices by
/// replaying this topic, so the topic is also the audit trail of who changed what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GovernanceChange {
    pub schema_version: u16,
    /// UUIDv7 of this change.
    pub id: Uuid,
    pub time_unix_micros: i64,
    pub actor: Actor,
    pub target: GovernanceTarget,
    pub action: ChangeAction,
    /// The new state of the target as a JSON document (its layout depends on
    /// `target.kind`); `null` (and omitted) for deletions and revocations. Secrets never
    /// appear here: keys are carried as hashes.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub value: serde_json::Value,
    /// Why, in the actor's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Actor {
    pub kind: ActorKind,
    /// The admin's identity, the service name, or the config file path.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A person through the admin API or CLI.
    Admin,
    /// A Tollgate service acting on its own (for example a scheduled key expiry).
    Service,
    /// Loaded from a configuration file at start-up.
    Config,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Admin => "admin",
            ActorKind::Service => "service",
            ActorKind::Config => "config",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(ActorKind::Admin),
            "service" => Some(ActorKind::Service),
            "config" => Some(ActorKind::Config),
            _ => None,
        }
    }
}

/// What was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GovernanceTarget {
    pub kind: TargetKind,
    pub id: String,
}

impl GovernanceTarget {
    /// The message key of changes to this target: `"{kind}:{id}"`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    VirtualKey,
    Budget,
    Policy,
    Provider,
    PriceCatalog,
    McpServer,
    /// A query API token (`value`: `{"name", "role", "sha256"}`).
    ApiToken,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::VirtualKey => "virtual_key",
            TargetKind::Budget => "budget",
            TargetKind::Policy => "policy",
            TargetKind::Provider => "provider",
            TargetKind::PriceCatalog => "price_catalog",
            TargetKind::McpServer => "mcp_server",
            TargetKind::ApiToken => "api_token",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "virtual_key" => Some(TargetKind::VirtualKey),
            "budget" => Some(TargetKind::Budget),
            "policy" => Some(TargetKind::Policy),
            "provider" => Some(TargetKind::Provider),
            "price_catalog" => Some(TargetKind::PriceCatalog),
            "mcp_server" => Some(TargetKind::McpServer),
            "api_token" => Some(TargetKind::ApiToken),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    Created,
    Updated,
    /// A key's secret was replaced; the old secret stops working.
    Rotated,
    Revoked,
    Deleted,
}

impl ChangeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Created => "created",
            ChangeAction::Updated => "updated",
            ChangeAction::Rotated => "rotated",
            ChangeAction::Revoked => "revoked",
            ChangeAction::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "created" => Some(ChangeAction::Created),
            "updated" => Some(ChangeAction::Updated),
            "rotated" => Some(ChangeAction::Rotated),
            "revoked" => Some(ChangeAction::Revoked),
            "deleted" => Some(ChangeAction::Deleted),
            _ => None,
        }
    }
}

impl GovernanceChange {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.actor.id.is_empty() {
            return Err("actor.id must not be empty".to_owned());
        }
        if self.target.id.is_empty() {
            return Err("target.id must not be empty".to_owned());
        }
        Ok(())
    }
}
