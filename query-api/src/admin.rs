//! Governance administration: admins make, replace and revoke the API's tokens and the
//! gateway's virtual keys, set team policies and budgets, and publish price catalogs.
//!
//! A change is a [`GovernanceChange`] on the governance topic with the admin's token name
//! as actor, so auditors see who changed what in `/v1/governance`. Every replica (of this
//! API and of the gateway) builds its view from the configuration and then those changes,
//! followed from the topic's beginning: a token or key made on one replica works on all of
//! them, a revoked one nowhere, and a restarted replica does not answer until it has read
//! every change made so far. Secrets (tokens, key secrets) are returned once, when made;
//! only their SHA-256 is published.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_eventlog::{EventLog, Follower, Record};
use tollgate_schemas::topics::{GOVERNANCE, Keyed};
use tollgate_schemas::{
    Actor, ActorKind, ChangeAction, Directory, GovernanceChange, GovernanceTarget, SCHEMA_VERSION, TargetKind,
};

use crate::auth::{Caller, Role, TokenConfig, Tokens, token_hash};
use crate::params::ApiError;

/// The API's tokens and the governed state admins change, shared by the request handlers
/// and the follower.
#[derive(Debug)]
pub struct GovernanceBook {
    tokens: RwLock<Tokens>,
    directory: RwLock<Directory>,
    follower: Arc<Follower>,
    /// Followers of the same log in this process whose view a change must reach too
    /// before its call returns (the gateway's, in `tollgate up`).
    in_process: Vec<Arc<Follower>>,
}

/// The value of an `api_token` governance change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenValue {
    pub name: String,
    pub role: Role,
    pub sha256: String,
}

impl GovernanceBook {
    /// The configured tokens, before any change from the log.
    pub fn new(configured: &[TokenConfig]) -> Result<Self, String> {
        Ok(GovernanceBook {
            tokens: RwLock::new(Tokens::new(configured)?),
            directory: RwLock::new(Directory::default()),
            follower: Follower::new(GOVERNANCE),
            in_process: Vec::new(),
        })
    }

    /// A change made here also waits until each of `followers` has applied it: services
    /// in this process following governance on the same log (the gateway's keys and
    /// routes, in `tollgate up`), so a change is in force in all of them when its call
    /// returns. Replicas elsewhere apply it as their own followers reach it.
    #[must_use]
    pub fn waiting_for(mut self, followers: Vec<Arc<Follower>>) -> Self {
        self.in_process = followers;
        self
    }

    /// The caller presenting `token`.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        self.tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner).caller(token).cloned()
    }

    pub fn callers(&self) -> Vec<Caller> {
        self.tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner).callers()
    }

    /// Keys, team policies, budgets and catalogs as governance has them now.
    pub fn directory(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies one governance change.
    pub fn apply(&self, change: &GovernanceChange) {
        if change.target.kind != TargetKind::ApiToken {
            if let Err(error) = self.directory.write().unwrap_or_else(std::sync::PoisonError::into_inner).apply(change)
            {
                tracing::warn!(%error, change = %change.id, "a governance change could not be applied");
            }
            return;
        }
        let mut tokens = self.tokens.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match change.action {
            ChangeAction::Created | ChangeAction::Updated | ChangeAction::Rotated => {
                match serde_json::from_value::<TokenValue>(change.value.clone()) {
                    Ok(value) => {
                        if let Err(error) = tokens.insert(&value.name, value.role, &value.sha256) {
                            tracing::warn!(%error, change = %change.id, "an API token change could not be applied");
                        }
                    }
                    Err(error) => tracing::warn!(%error, change = %change.id, "an API token change has no valid value"),
                }
            }
            ChangeAction::Revoked | ChangeAction::Deleted => {
                tokens.revoke(&change.target.id);
            }
        }
    }

    /// Reads the governance topic from its beginning into this book, and keeps following
    /// it in a task of its own. Returns once every change present at the start has been
    /// applied, or `false` if that took longer than `timeout`.
    pub async fn follow(self: &Arc<Self>, log: Arc<dyn EventLog>, timeout: Duration) -> bool {
        let book = Arc::clone(self);
        let apply = move |record: &Record| match tollgate_schemas::decode::<GovernanceChange>(&record.payload) {
            Ok(change) => book.apply(&change),
            // The processor dead-letters what it cannot decode; here it is only skipped.
            Err(error) => tracing::warn!(%error, offset = record.offset, "undecodable governance change skipped"),
        };
        tokio::spawn(Arc::clone(&self.follower).follow_forever(
            log,
            "tollgate-query-api-governance".to_owned(),
            Box::new(apply),
        ));
        self.follower.wait_caught_up(timeout).await
    }
}

/// Publishes `change`, waits until the log has it and until this replica (and the
/// services in this process the book waits for) has applied it (changes apply in log
/// order only, so an older change can never undo a newer one), and returns.
pub async fn publish(log: &dyn EventLog, book: &GovernanceBook, change: GovernanceChange) -> Result<(), ApiError> {
    let unavailable = |message: &str| ApiError {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        code: "log_unavailable",
        message: message.to_owned(),
        parameter: None,
    };
    let payload = tollgate_schemas::encode(&change).map_err(|error| ApiError::internal(error.to_string()))?;
    let key = change.message_key();
    let ack =
        tollgate_eventlog::publish_and_wait(log, GOVERNANCE, key.as_bytes(), &payload).await.map_err(|error| {
            tracing::error!(%error, "publishing a governance change failed");
            unavailable("the change could not be recorded on the log; nothing was changed")
        })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for follower in std::iter::once(&book.follower).chain(&book.in_process) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !follower.wait_applied(ack, left).await {
            return Err(unavailable("the change is recorded but was not applied here within 30 s; it will be"));
        }
    }
    Ok(())
}

/// A token change by `actor`.
pub fn change(actor: &Caller, name: &str, action: ChangeAction, value: Option<&TokenValue>) -> GovernanceChange {
    GovernanceChange {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: tollgate_schemas::now_unix_micros(),
        actor: Actor { kind: ActorKind::Admin, id: actor.name.clone() },
        target: GovernanceTarget { kind: TargetKind::ApiToken, id: name.to_owned() },
        action,
        value: value.and_then(|value| serde_json::to_value(value).ok()).unwrap_or(serde_json::Value::Null),
        reason: None,
    }
}

/// A new token's secret and its published value.
pub fn new_token(name: &str, role: Role) -> (String, TokenValue) {
    let token = format!("tg_{}", uuid::Uuid::new_v4().simple());
    let value = TokenValue { name: name.to_owned(), role, sha256: token_hash(&token) };
    (token, value)
}

/// Whether `name` is a usable token name: 1 to 64 of `A-Za-z0-9._-`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_make_replace_and_revoke_tokens() {
        let book = GovernanceBook::new(&[TokenConfig {
            name: "ops".to_owned(),
            sha256: token_hash("configured"),
            role: Role::Admin,
        }])
        .unwrap();
        let admin = book.caller("configured").unwrap();
        let (first, value) = new_token("ledger", Role::Finance);
        book.apply(&change(&admin, "ledger", ChangeAction::Created, Some(&value)));
        assert_eq!(book.caller(&first).map(|caller| caller.role), Some(Role::Finance));
        let (second, value) = new_token("ledger", Role::Auditor);
        book.apply(&change(&admin, "ledger", ChangeAction::Rotated, Some(&value)));
        assert!(book.caller(&first).is_none(), "a replaced token stops working");
        assert_eq!(book.caller(&second).map(|caller| caller.role), Some(Role::Auditor));
        book.apply(&change(&admin, "ledger", ChangeAction::Revoked, None));
        assert!(book.caller(&second).is_none());
        // A configured token can be revoked too; other targets are not tokens.
        book.apply(&change(&admin, "ops", ChangeAction::Revoked, None));
        assert!(book.caller("configured").is_none());
        assert!(valid_name("finance-eu.2") && !valid_name("") && !valid_name("a b") && !valid_name(&"x".repeat(65)));
    }
}
