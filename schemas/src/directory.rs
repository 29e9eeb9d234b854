//! The values that governance changes carry for virtual keys and team policies, and
//! [`Directory`]: the state of keys, team policies, budgets and price catalog versions
//! that replaying the governance topic gives.
//!
//! Every service that needs this state (the gateway for the keys it accepts, the query
//! API to check and list what admins change) folds the same changes through
//! [`Directory::apply`], so all of them agree on it at every offset.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::budget::BudgetSpec;
use crate::common::{Subject, SubjectKind};
use crate::governance::{Actor, ActorKind, ChangeAction, GovernanceChange, GovernanceTarget, TargetKind};

/// What the prompt and tool-argument PII guard does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PiiGuardMode {
    /// Nothing: prompts pass as they are (violations are still detected downstream).
    #[default]
    Off,
    /// PII and secrets are replaced by placeholders before the prompt goes upstream.
    Redact,
    /// A prompt with PII or secrets is refused.
    Block,
}

/// One virtual key, without its secret: the `value` of a `virtual_key` governance change
/// (the target id is the key id), and the layout of a `[[keys]]` entry of the gateway's
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualKeySpec {
    /// Key id recorded in events (never the secret).
    pub id: String,
    /// Lowercase hex SHA-256 of the secret (`printf %s "$SECRET" | sha256sum`).
    pub secret_sha256: String,
    pub org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Glob patterns of public model names the key may use. Default: every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// Largest `max_tokens` a request may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute (prompt tokens plus each request's output limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
    /// The prompt PII guard for this key. Default: the team's, else the gateway's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii_guard: Option<PiiGuardMode>,
    /// `server/tool` glob patterns of MCP tools the key may call. Default: every tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    /// `server/tool` glob patterns of MCP tools the key may not call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_tools: Option<Vec<String>>,
}

/// The policy of one team: the `value` of a `policy` governance change (the target id is
/// the team id), and the layout of a `[[teams]]` entry of the gateway's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamPolicySpec {
    /// The `team` of the keys this applies to.
    pub id: String,
    /// Glob patterns of models the team's keys may use, on top of each key's own list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// The PII guard for the team's keys that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii_guard: Option<PiiGuardMode>,
    /// `server/tool` glob patterns of MCP tools the team's keys may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    /// `server/tool` glob patterns of MCP tools the team's keys may not call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_tools: Option<Vec<String>>,
}

/// What API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI and every server that speaks its API (Groq, Mistral, vLLM, Ollama, ...).
    Openai,
    Anthropic,
}

/// A public model name a registered provider serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderModelSpec {
    /// The name clients send.
    pub name: String,
    /// The name sent to the provider. Default: the public name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A model provider registered through governance: the `value` of a `provider` change
/// (the target id is its name). Gateways add it to the upstreams of their configuration
/// (replacing one of the same name) and route `models` to it, after the targets their
/// configuration gives those models. The credential is named, never carried: each
/// gateway reads it from the environment variable `api_key_env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The upstream's name: letters, digits, `-` and `_`.
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL without the `/v1` suffix, for example `https://api.groq.com/openai`.
    pub base_url: String,
    /// `gen_ai.provider.name` recorded for calls served here (it picks the prices).
    /// Default: the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Environment variable holding the credential on every gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    #[serde(default)]
    pub models: Vec<ProviderModelSpec>,
}

impl ProviderSpec {
    /// Every problem with the spec, in words; empty when it is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name_ok = |name: &str| {
            (1..=64).contains(&name.len())
                && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_".contains(&byte))
        };
        if !name_ok(&self.name) {
            problems.push(format!("name `{}` must be 1 to 64 of A-Z a-z 0-9 - _", self.name));
        }
        let url = &self.base_url;
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        if rest.is_none_or(|rest| rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace)) {
            problems.push(format!("base_url `{url}` must be an http:// or https:// URL"));
        }
        if let Some(variable) = &self.api_key_env
            && (variable.is_empty() || !variable.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_'))
        {
            problems.push(format!("api_key_env `{variable}` must be an environment variable name"));
        }
        for (field, value) in
            [("connect_timeout_ms", self.connect_timeout_ms), ("request_timeout_ms", self.request_timeout_ms)]
        {
            if value == Some(0) {
                problems.push(format!("{field} must be greater than zero"));
            }
        }
        let mut names = BTreeSet::new();
        for model in &self.models {
            if model.name.trim().is_empty() || model.model.as_deref().is_some_and(|name| name.trim().is_empty()) {
                problems.push("models: a model name must not be empty".to_owned());
            } else if !names.insert(model.name.as_str()) {
                problems.push(format!("models: `{}` is listed twice", model.name));
            }
        }
        problems
    }
}

/// Whether `id` is usable as a key, team, org or user id: 1 to 128 of `A-Za-z0-9._:@-`.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._:@-".contains(&byte))
}

fn check_patterns(field: &str, patterns: Option<&Vec<String>>, problems: &mut Vec<String>) {
    for pattern in patterns.into_iter().flatten() {
        if let Err(error) = globset::Glob::new(pattern) {
            problems.push(format!("{field}: `{pattern}` is not a glob pattern: {error}"));
        }
    }
}

impl VirtualKeySpec {
    /// Every problem with the spec, in words; empty when it is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !valid_id(&self.id) {
            problems.push(format!("id `{}` must be 1 to 128 of A-Z a-z 0-9 . _ : @ -", self.id));
        }
        let hash = &self.secret_sha256;
        if hash.len() != 64 || !hash.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            problems.push("secret_sha256 must be 64 hex digits".to_owned());
        }
        for (field, value) in [
            ("org", Some(&self.org)),
            ("team", self.team.as_ref()),
            ("user", self.user.as_ref()),
            ("project", self.project.as_ref()),
        ] {
            if let Some(value) = value
                && !valid_id(value)
            {
                problems.push(format!("{field} `{value}` must be 1 to 128 of A-Z a-z 0-9 . _ : @ -"));
            }
        }
        if self.max_tokens == Some(0) {
            problems.push("max_tokens must be greater than zero".to_owned());
        }
        if self.requests_per_minute == Some(0) {
            problems.push("requests_per_minute must be greater than zero".to_owned());
        }
        if self.tokens_per_minute == Some(0) {
            problems.push("tokens_per_minute must be greater than zero".to_owned());
        }
        check_patterns("allowed_models", self.allowed_models.as_ref(), &mut problems);
        check_patterns("allowed_tools", self.allowed_tools.as_ref(), &mut problems);
        check_patterns("denied_tools", self.denied_tools.as_ref(), &mut problems);
        problems
    }
}

impl TeamPolicySpec {
    /// Every problem with the spec, in words; empty when it is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !valid_id(&self.id) {
            problems.push(format!("id `{}` must be 1 to 128 of A-Z a-z 0-9 . _ : @ -", self.id));
        }
        check_patterns("allowed_models", self.allowed_models.as_ref(), &mut problems);
        check_patterns("allowed_tools", self.allowed_tools.as_ref(), &mut problems);
        check_patterns("denied_tools", self.denied_tools.as_ref(), &mut problems);
        problems
    }
}

/// A key as governance left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyState {
    #[serde(flatten)]
    pub spec: VirtualKeySpec,
    pub revoked: bool,
    /// When the key was last changed, and by whom.
    pub changed_unix_micros: i64,
    pub changed_by: Actor,
}

/// Keys, team policies, budgets and price catalog versions, as the governance changes
/// applied so far leave them.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    keys: BTreeMap<String, KeyState>,
    teams: BTreeMap<String, TeamPolicySpec>,
    budgets: BTreeMap<String, BudgetSpec>,
    providers: BTreeMap<String, ProviderSpec>,
    catalogs: BTreeSet<String>,
    /// Per target key, the value a configuration file last published for it.
    from_config: HashMap<String, serde_json::Value>,
}

impl Directory {
    /// Applies one change. A change whose value does not fit its target is left out, with
    /// the reason; changes to targets this view does not keep change nothing.
    pub fn apply(&mut self, change: &GovernanceChange) -> Result<(), String> {
        let id = &change.target.id;
        let removes = matches!(change.action, ChangeAction::Revoked | ChangeAction::Deleted);
        match change.target.kind {
            TargetKind::VirtualKey if removes => {
                if let Some(key) = self.keys.get_mut(id) {
                    key.revoked = true;
                    key.changed_unix_micros = change.time_unix_micros;
                    key.changed_by = change.actor.clone();
                }
            }
            TargetKind::VirtualKey => {
                let spec: VirtualKeySpec = serde_json::from_value(change.value.clone())
                    .map_err(|error| format!("virtual key `{id}`: {error}"))?;
                if spec.id != *id {
                    return Err(format!("virtual key `{id}`: the value is for key `{}`", spec.id));
                }
                // An update leaves a revoked key revoked; creating or rotating it makes it
                // usable again.
                let revoked =
                    change.action == ChangeAction::Updated && self.keys.get(id).is_some_and(|key| key.revoked);
                self.keys.insert(
                    id.clone(),
                    KeyState {
                        spec,
                        revoked,
                        changed_unix_micros: change.time_unix_micros,
                        changed_by: change.actor.clone(),
                    },
                );
            }
            TargetKind::Policy if removes => {
                self.teams.remove(id);
            }
            TargetKind::Policy => {
                let spec: TeamPolicySpec = serde_json::from_value(change.value.clone())
                    .map_err(|error| format!("team policy `{id}`: {error}"))?;
                self.teams.insert(id.clone(), spec);
            }
            TargetKind::Budget if change.value.is_null() => {
                self.budgets.remove(id);
            }
            TargetKind::Budget => {
                let spec: BudgetSpec =
                    serde_json::from_value(change.value.clone()).map_err(|error| format!("budget `{id}`: {error}"))?;
                self.budgets.insert(id.clone(), spec);
            }
            TargetKind::Provider if removes => {
                self.providers.remove(id);
            }
            TargetKind::Provider => {
                let spec: ProviderSpec = serde_json::from_value(change.value.clone())
                    .map_err(|error| format!("provider `{id}`: {error}"))?;
                if spec.name != *id {
                    return Err(format!("provider `{id}`: the value is for provider `{}`", spec.name));
                }
                self.providers.insert(id.clone(), spec);
            }
            TargetKind::PriceCatalog if !change.value.is_null() => {
                self.catalogs.insert(id.clone());
            }
            _ => {}
        }
        if change.actor.kind == ActorKind::Config {
            self.from_config.insert(change.target.key(), change.value.clone());
        }
        Ok(())
    }

    /// Every key, revoked ones included, by id.
    pub fn keys(&self) -> &BTreeMap<String, KeyState> {
        &self.keys
    }

    pub fn teams(&self) -> &BTreeMap<String, TeamPolicySpec> {
        &self.teams
    }

    /// The budgets in force, by id.
    pub fn budgets(&self) -> &BTreeMap<String, BudgetSpec> {
        &self.budgets
    }

    /// The providers registered, by name.
    pub fn providers(&self) -> &BTreeMap<String, ProviderSpec> {
        &self.providers
    }

    /// The price catalog versions published.
    pub fn catalog_versions(&self) -> &BTreeSet<String> {
        &self.catalogs
    }

    /// Whether some key (revoked or not) belongs to `subject`, or a team policy names it.
    pub fn knows(&self, subject: &Subject) -> bool {
        let id = subject.id.as_str();
        match subject.kind {
            SubjectKind::Key => self.keys.contains_key(id),
            SubjectKind::Org => self.keys.values().any(|key| key.spec.org == id),
            SubjectKind::Team => {
                self.teams.contains_key(id) || self.keys.values().any(|key| key.spec.team.as_deref() == Some(id))
            }
            SubjectKind::User => self.keys.values().any(|key| key.spec.user.as_deref() == Some(id)),
        }
    }

    /// The changes that bring the keys and team policies of a configuration file into
    /// this view. An entry is published when the file says something new about it:
    /// the first time it is seen, and after it is edited in the file. An entry the file
    /// still says the same about is not published again, so a key an admin revoked stays
    /// revoked across restarts.
    pub fn config_changes(
        &self,
        actor: &Actor,
        keys: &[VirtualKeySpec],
        teams: &[TeamPolicySpec],
    ) -> Vec<GovernanceChange> {
        let mut changes = Vec::new();
        let mut add = |kind: TargetKind,
                       id: &str,
                       value: serde_json::Value,
                       current: Option<serde_json::Value>,
                       secret_changed: bool| {
            let target = GovernanceTarget { kind, id: id.to_owned() };
            if self.from_config.get(&target.key()) == Some(&value) || current.as_ref() == Some(&value) {
                return;
            }
            let action = match current {
                None => ChangeAction::Created,
                Some(_) if secret_changed => ChangeAction::Rotated,
                Some(_) => ChangeAction::Updated,
            };
            changes.push(GovernanceChange {
                schema_version: crate::SCHEMA_VERSION,
                id: uuid::Uuid::now_v7(),
                time_unix_micros: crate::now_unix_micros(),
                actor: actor.clone(),
                target,
                action,
                value,
                reason: Some("loaded from the configuration file".to_owned()),
            });
        };
        for key in keys {
            let current = self.keys.get(&key.id);
            let secret_changed = current.is_some_and(|state| state.spec.secret_sha256 != key.secret_sha256);
            let current = current.and_then(|state| serde_json::to_value(&state.spec).ok());
            add(
                TargetKind::VirtualKey,
                &key.id,
                serde_json::to_value(key).unwrap_or_default(),
                current,
                secret_changed,
            );
        }
        for team in teams {
            let current = self.teams.get(&team.id).and_then(|spec| serde_json::to_value(spec).ok());
            add(TargetKind::Policy, &team.id, serde_json::to_value(team).unwrap_or_default(), current, false);
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, secret: char) -> VirtualKeySpec {
        VirtualKeySpec {
            id: id.to_owned(),
            secret_sha256: secret.to_string().repeat(64),
            org: "acme".to_owned(),
            team: Some("research".to_owned()),
            user: None,
            project: None,
            allowed_models: Some(vec!["gpt-4o*".to_owned()]),
            max_tokens: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            pii_guard: None,
            allowed_tools: None,
            denied_tools: None,
        }
    }

    fn change(
        actor: ActorKind,
        kind: TargetKind,
        id: &str,
        action: ChangeAction,
        value: serde_json::Value,
    ) -> GovernanceChange {
        GovernanceChange {
            schema_version: crate::SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            time_unix_micros: 1,
            actor: Actor { kind: actor, id: "someone".to_owned() },
            target: GovernanceTarget { kind, id: id.to_owned() },
            action,
            value,
            reason: None,
        }
    }

    #[test]
    fn keys_are_created_updated_revoked_and_rotated_back_to_life() {
        let mut directory = Directory::default();
        let value = serde_json::to_value(key("k1", 'a')).unwrap();
        directory.apply(&change(ActorKind::Admin, TargetKind::VirtualKey, "k1", ChangeAction::Created, value)).unwrap();
        assert!(!directory.keys()["k1"].revoked);
        directory
            .apply(&change(
                ActorKind::Admin,
                TargetKind::VirtualKey,
                "k1",
                ChangeAction::Revoked,
                serde_json::Value::Null,
            ))
            .unwrap();
        assert!(directory.keys()["k1"].revoked);
        let mut edited = key("k1", 'a');
        edited.max_tokens = Some(10);
        let value = serde_json::to_value(&edited).unwrap();
        directory.apply(&change(ActorKind::Admin, TargetKind::VirtualKey, "k1", ChangeAction::Updated, value)).unwrap();
        assert!(directory.keys()["k1"].revoked, "an update does not bring a revoked key back");
        let value = serde_json::to_value(key("k1", 'b')).unwrap();
        directory.apply(&change(ActorKind::Admin, TargetKind::VirtualKey, "k1", ChangeAction::Rotated, value)).unwrap();
        assert!(!directory.keys()["k1"].revoked);
        assert!(directory.knows(&Subject::new(SubjectKind::Team, "research")));
        assert!(!directory.knows(&Subject::new(SubjectKind::Org, "globex")));
        let wrong = serde_json::to_value(key("k2", 'c')).unwrap();
        assert!(
            directory
                .apply(&change(ActorKind::Admin, TargetKind::VirtualKey, "k1", ChangeAction::Updated, wrong))
                .is_err()
        );
    }

    #[test]
    fn a_configuration_file_is_published_when_new_or_edited_and_not_over_an_admin() {
        let actor = Actor { kind: ActorKind::Config, id: "gateway.toml".to_owned() };
        let mut directory = Directory::default();
        let first = directory.config_changes(&actor, &[key("k1", 'a')], &[]);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].action, ChangeAction::Created);
        directory.apply(&first[0]).unwrap();
        assert!(directory.config_changes(&actor, &[key("k1", 'a')], &[]).is_empty(), "nothing new");
        directory
            .apply(&change(
                ActorKind::Admin,
                TargetKind::VirtualKey,
                "k1",
                ChangeAction::Revoked,
                serde_json::Value::Null,
            ))
            .unwrap();
        assert!(
            directory.config_changes(&actor, &[key("k1", 'a')], &[]).is_empty(),
            "the file did not change, so the admin's revocation stands"
        );
        let rotated = directory.config_changes(&actor, &[key("k1", 'b')], &[]);
        assert_eq!(rotated[0].action, ChangeAction::Rotated, "a new secret in the file");
    }

    #[test]
    fn specs_name_every_problem() {
        let mut bad = key("has space", 'z');
        bad.requests_per_minute = Some(0);
        bad.allowed_models = Some(vec!["[unclosed".to_owned()]);
        let problems = bad.problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(key("ok", 'a').problems().is_empty());
        assert!(
            serde_json::from_str::<VirtualKeySpec>(r#"{"id":"a","secret_sha256":"","org":"o","colour":1}"#).is_err()
        );
    }
}
