//! Token administration: admins create, replace and revoke the API's tokens.
//!
//! A change is a [`GovernanceChange`] on the governance topic (target `api_token`, actor
//! the admin's token name, value `{"name", "role", "sha256"}`), so auditors see who made
//! or revoked which token in `/v1/governance`. Every replica builds its tokens from the
//! configuration and then those changes, followed from the topic's beginning
//! ([`follow`]): a token made on one replica works on all of them, a revoked one nowhere,
//! and a restarted replica does not answer until it has read every change made so far.
//! The token itself is returned once, when it is made; only its SHA-256 is published.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_eventlog::EventLog;
use tollgate_schemas::topics::{GOVERNANCE, Keyed};
use tollgate_schemas::{
    Actor, ActorKind, ChangeAction, GovernanceChange, GovernanceTarget, SCHEMA_VERSION, TargetKind,
};

use crate::auth::{Caller, Role, TokenConfig, Tokens, token_hash};
use crate::params::ApiError;

/// The tokens in force, shared by the request handlers and the follower.
#[derive(Debug)]
pub struct TokenBook {
    tokens: RwLock<Tokens>,
    /// Per governance partition, the offset after the last change applied.
    applied: tokio::sync::watch::Sender<std::collections::BTreeMap<i32, i64>>,
}

/// The value of an `api_token` governance change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenValue {
    pub name: String,
    pub role: Role,
    pub sha256: String,
}

impl TokenBook {
    /// The configured tokens, before any change from the log.
    pub fn new(configured: &[TokenConfig]) -> Result<Self, String> {
        let (applied, _) = tokio::sync::watch::channel(std::collections::BTreeMap::new());
        Ok(TokenBook { tokens: RwLock::new(Tokens::new(configured)?), applied })
    }

    /// The caller presenting `token`.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        self.tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner).caller(token).cloned()
    }

    pub fn callers(&self) -> Vec<Caller> {
        self.tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner).callers()
    }

    /// Applies one governance change; changes to other targets are not this book's.
    pub fn apply(&self, change: &GovernanceChange) {
        if change.target.kind != TargetKind::ApiToken {
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
}

/// Reads the governance topic from its beginning into `book`, and keeps following it.
/// `caught_up` is sent once every change present at the start has been applied.
pub async fn follow(
    log: Arc<dyn EventLog>,
    book: Arc<TokenBook>,
    caught_up: tokio::sync::watch::Sender<bool>,
) -> Result<(), tollgate_eventlog::LogError> {
    // A group of its own, never committed: every start reads the whole topic.
    let group = format!("tollgate-query-api-tokens-{}", uuid::Uuid::now_v7().simple());
    let mut behind: std::collections::HashMap<i32, i64> =
        log.end_offsets(GOVERNANCE).await?.into_iter().filter(|(_, end)| *end > 0).collect();
    if behind.is_empty() {
        caught_up.send_replace(true);
    }
    let mut subscription = log.subscribe(&group, &[GOVERNANCE]).await?;
    loop {
        let record = subscription.next().await?;
        // After a restart of the follower, what was applied before is not applied again
        // (an old change applied anew would undo a newer one until it came by).
        let seen = book.applied.borrow().get(&record.partition).is_some_and(|next| record.offset < *next);
        match tollgate_schemas::decode::<GovernanceChange>(&record.payload) {
            Ok(_) if seen => {}
            Ok(change) => book.apply(&change),
            // The processor dead-letters what it cannot decode; here it is only skipped.
            Err(error) => tracing::warn!(%error, offset = record.offset, "undecodable governance change skipped"),
        }
        book.applied.send_modify(|applied| {
            applied.insert(record.partition, record.offset + 1);
        });
        if !behind.is_empty() {
            if behind.get(&record.partition).is_some_and(|end| record.offset + 1 >= *end) {
                behind.remove(&record.partition);
            }
            if behind.is_empty() {
                caught_up.send_replace(true);
                tracing::info!("API token changes caught up");
            }
        }
    }
}

/// [`follow`], started again after a failure.
pub async fn follow_forever(log: Arc<dyn EventLog>, book: Arc<TokenBook>, caught_up: tokio::sync::watch::Sender<bool>) {
    let mut pause = Duration::from_millis(200);
    loop {
        if let Err(error) = follow(Arc::clone(&log), Arc::clone(&book), caught_up.clone()).await {
            tracing::warn!(%error, "following API token changes failed; starting again");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// Publishes `change`, waits until the log has it and until this replica's follower has
/// applied it (changes apply in log order only, so an older change can never undo a
/// newer one), and returns.
pub async fn publish(log: &dyn EventLog, book: &TokenBook, change: GovernanceChange) -> Result<(), ApiError> {
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
            tracing::error!(%error, "publishing an API token change failed");
            unavailable("the change could not be recorded on the log; nothing was changed")
        })?;
    let mut applied = book.applied.subscribe();
    let wait = applied.wait_for(|applied| applied.get(&ack.partition).is_some_and(|next| *next > ack.offset));
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(unavailable("the change is recorded but was not applied here within 30 s; it will be")),
    }
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
        let book = TokenBook::new(&[TokenConfig {
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
