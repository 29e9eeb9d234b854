//! Virtual keys: who is calling, and what they may use.
//!
//! A client presents a virtual key as `Authorization: Bearer <secret>` (OpenAI style) or
//! `x-api-key: <secret>` (Anthropic style). The gateway keeps only the SHA-256 of each
//! secret: keys are long random strings, so a fast hash is enough, and a leaked key store
//! reveals no usable secret. Lookup is by hash, so no secret is ever compared directly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::http::HeaderMap;
use globset::{Glob, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};
use tollgate_schemas::{Principal, TeamPolicySpec, VirtualKeySpec};

use crate::error::{ApiError, ErrorClass};
use crate::policy::{PiiMode, RateLimits};

/// Lowercase hex SHA-256 of a key secret: the form in which keys are stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Which public model names a key may use, as glob patterns (`gpt-4o*`, `claude-*`).
#[derive(Debug, Clone)]
pub struct ModelAllowList {
    patterns: Vec<String>,
    matcher: Option<GlobSet>,
}

impl ModelAllowList {
    /// Every model.
    pub fn any() -> Self {
        ModelAllowList { patterns: Vec::new(), matcher: None }
    }

    /// Only models matching one of `patterns`.
    pub fn only(patterns: &[String]) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            builder.add(Glob::new(pattern).map_err(|error| format!("model pattern `{pattern}`: {error}"))?);
        }
        let matcher = builder.build().map_err(|error| error.to_string())?;
        Ok(ModelAllowList { patterns: patterns.to_vec(), matcher: Some(matcher) })
    }

    pub fn allows(&self, model: &str) -> bool {
        self.matcher.as_ref().is_none_or(|matcher| matcher.is_match(model))
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Which MCP tools a key may call, by `server/tool` glob patterns (`time/*`,
/// `files/read_*`). A tool is permitted when every allow-list that applies (the key's, its
/// team's) matches it and no deny-list does.
#[derive(Debug, Clone, Default)]
pub struct ToolPolicy {
    allowed: Vec<ModelAllowList>,
    denied: Vec<ModelAllowList>,
}

impl ToolPolicy {
    /// Adds an allow-list: from now on a tool must also match one of `patterns`.
    pub fn allow_only(&mut self, patterns: &[String]) -> Result<(), String> {
        self.allowed
            .push(ModelAllowList::only(patterns).map_err(|error| error.replace("model pattern", "tool pattern"))?);
        Ok(())
    }

    /// Adds a deny-list: a tool matching one of `patterns` is refused.
    pub fn deny(&mut self, patterns: &[String]) -> Result<(), String> {
        self.denied
            .push(ModelAllowList::only(patterns).map_err(|error| error.replace("model pattern", "tool pattern"))?);
        Ok(())
    }

    /// Whether `tool` of MCP server `server` may be called.
    pub fn allows(&self, server: &str, tool: &str) -> bool {
        let name = format!("{server}/{tool}");
        self.allowed.iter().all(|list| list.allows(&name)) && !self.denied.iter().any(|list| list.allows(&name))
    }
}

/// One virtual key, without its secret.
#[derive(Debug, Clone)]
pub struct VirtualKey {
    /// Principal the key resolves to; `principal.key_id` is the key's id.
    pub principal: Principal,
    pub allowed_models: ModelAllowList,
    /// The allow-list of the key's team, when the team has one: a model must pass both.
    pub team_allowed_models: Option<ModelAllowList>,
    /// Largest `max_tokens` a request may ask for; larger requests are refused.
    pub max_tokens_cap: Option<u64>,
    /// What the prompt PII guard does for this key (key setting, else team, else global).
    pub pii_guard: PiiMode,
    /// Requests and tokens per minute, shared by every request with this key.
    pub rate_limits: Option<Arc<RateLimits>>,
    /// The requests and tokens per minute `rate_limits` enforce.
    pub rate_limit_settings: (Option<NonZeroU32>, Option<NonZeroU32>),
    /// MCP tools the key may call (key and team lists combined).
    pub tools: ToolPolicy,
    pub revoked: bool,
}

impl VirtualKey {
    /// A key for `principal` with no limits and every model allowed.
    pub fn new(principal: Principal) -> Self {
        VirtualKey {
            principal,
            allowed_models: ModelAllowList::any(),
            team_allowed_models: None,
            max_tokens_cap: None,
            pii_guard: PiiMode::Off,
            rate_limits: None,
            rate_limit_settings: (None, None),
            tools: ToolPolicy::default(),
            revoked: false,
        }
    }

    /// Whether both the key's and its team's allow-lists admit `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed_models.allows(model) && self.team_allowed_models.as_ref().is_none_or(|team| team.allows(model))
    }
}

/// Virtual keys by the hash of their secret.
#[derive(Debug, Clone, Default)]
pub struct KeyStore {
    by_secret_hash: HashMap<String, Arc<VirtualKey>>,
}

impl KeyStore {
    /// The store of `keys` (each with whether it is revoked) under the policies of
    /// `teams`, and every problem found (a key with a problem is left out). Rate limiters
    /// of keys whose limits are the same in `previous` carry over, so changing one key
    /// does not give every other key a fresh allowance.
    pub fn build<'a>(
        keys: impl IntoIterator<Item = (&'a VirtualKeySpec, bool)>,
        teams: &BTreeMap<String, TeamPolicySpec>,
        global_pii: PiiMode,
        previous: Option<&KeyStore>,
    ) -> (KeyStore, Vec<String>) {
        let mut problems = Vec::new();
        let mut team_models = HashMap::new();
        for (id, team) in teams {
            for problem in team.problems() {
                problems.push(format!("team `{id}`: {problem}"));
            }
            if let Some(patterns) = &team.allowed_models {
                team_models
                    .insert(id.as_str(), ModelAllowList::only(patterns).unwrap_or_else(|_| ModelAllowList::any()));
            }
        }
        let carried: HashMap<&str, &VirtualKey> = previous
            .map(|store| store.iter().map(|key| (key.principal.key_id.as_str(), key)).collect())
            .unwrap_or_default();
        let mut store = KeyStore::default();
        let mut seen_ids = HashSet::new();
        for (spec, revoked) in keys {
            let id = spec.id.as_str();
            if !seen_ids.insert(id.to_owned()) {
                problems.push(format!("key `{id}` is declared twice"));
                continue;
            }
            let key_problems = spec.problems();
            if !key_problems.is_empty() {
                problems.extend(key_problems.into_iter().map(|problem| format!("key `{id}`: {problem}")));
                continue;
            }
            let hash = spec.secret_sha256.to_ascii_lowercase();
            if store.by_secret_hash.contains_key(&hash) {
                problems.push(format!("key `{id}`: another key has the same secret"));
                continue;
            }
            let team = spec.team.as_deref().and_then(|team| teams.get(team));
            let mut tools = ToolPolicy::default();
            let lists = [
                (spec.allowed_tools.as_ref(), true),
                (spec.denied_tools.as_ref(), false),
                (team.and_then(|team| team.allowed_tools.as_ref()), true),
                (team.and_then(|team| team.denied_tools.as_ref()), false),
            ];
            for (patterns, allow) in lists {
                let Some(patterns) = patterns else { continue };
                // The patterns were checked with the spec.
                let _ = if allow { tools.allow_only(patterns) } else { tools.deny(patterns) };
            }
            let settings =
                (spec.requests_per_minute.and_then(NonZeroU32::new), spec.tokens_per_minute.and_then(NonZeroU32::new));
            let rate_limits = match carried.get(id) {
                Some(old) if old.rate_limit_settings == settings => old.rate_limits.clone(),
                _ => RateLimits::per_minute(settings.0, settings.1).map(Arc::new),
            };
            let principal = Principal {
                org_id: spec.org.clone(),
                team_id: spec.team.clone(),
                user_id: spec.user.clone(),
                project_id: spec.project.clone(),
                key_id: spec.id.clone(),
            };
            let allowed_models = match &spec.allowed_models {
                Some(patterns) => ModelAllowList::only(patterns).unwrap_or_else(|_| ModelAllowList::any()),
                None => ModelAllowList::any(),
            };
            store.insert(
                &hash,
                VirtualKey {
                    allowed_models,
                    team_allowed_models: spec.team.as_deref().and_then(|team| team_models.get(team).cloned()),
                    max_tokens_cap: spec.max_tokens,
                    pii_guard: spec.pii_guard.or(team.and_then(|team| team.pii_guard)).unwrap_or(global_pii),
                    rate_limits,
                    rate_limit_settings: settings,
                    tools,
                    revoked,
                    ..VirtualKey::new(principal)
                },
            );
        }
        (store, problems)
    }

    /// Adds or replaces the key whose secret hashes to `secret_sha256`.
    pub fn insert(&mut self, secret_sha256: &str, key: VirtualKey) {
        self.by_secret_hash.insert(secret_sha256.to_ascii_lowercase(), Arc::new(key));
    }

    /// Every key, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &VirtualKey> {
        self.by_secret_hash.values().map(Arc::as_ref)
    }

    pub fn len(&self) -> usize {
        self.by_secret_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_secret_hash.is_empty()
    }

    /// The key presented in `headers`, or the 401 to answer with.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<VirtualKey>, ApiError> {
        let Some(secret) = presented_secret(headers) else {
            return Err(ApiError::new(
                ErrorClass::Authentication,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
            )
            .with_code("missing_api_key"));
        };
        match self.by_secret_hash.get(&hash_secret(secret)) {
            Some(key) if !key.revoked => Ok(Arc::clone(key)),
            Some(_) => Err(ApiError::new(ErrorClass::Authentication, "This API key has been revoked.")
                .with_code("invalid_api_key")),
            None => {
                Err(ApiError::new(ErrorClass::Authentication, "Incorrect API key provided.")
                    .with_code("invalid_api_key"))
            }
        }
    }
}

/// The secret from `Authorization: Bearer` or, failing that, `x-api-key`.
fn presented_secret(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim);
    let api_key = || headers.get("x-api-key").and_then(|value| value.to_str().ok()).map(str::trim);
    bearer.or_else(api_key).filter(|secret| !secret.is_empty())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn store() -> KeyStore {
        let mut store = KeyStore::default();
        let principal = |key_id: &str| Principal {
            org_id: "acme".into(),
            team_id: Some("platform".into()),
            user_id: None,
            project_id: None,
            key_id: key_id.into(),
        };
        store.insert(
            &hash_secret("tg-live-secret"),
            VirtualKey {
                allowed_models: ModelAllowList::only(&["gpt-4o*".into(), "claude-*".into()]).unwrap(),
                max_tokens_cap: Some(1024),
                ..VirtualKey::new(principal("key_live"))
            },
        );
        store.insert(
            &hash_secret("tg-old-secret"),
            VirtualKey { revoked: true, ..VirtualKey::new(principal("key_old")) },
        );
        store
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn both_header_styles_authenticate() {
        let store = store();
        for headers in [headers("authorization", "Bearer tg-live-secret"), headers("x-api-key", "tg-live-secret")] {
            assert_eq!(store.authenticate(&headers).unwrap().principal.key_id, "key_live");
        }
    }

    #[test]
    fn missing_unknown_and_revoked_keys_are_401() {
        let store = store();
        for (headers, code) in [
            (HeaderMap::new(), "missing_api_key"),
            (headers("authorization", "Bearer "), "missing_api_key"),
            (headers("authorization", "Basic dXNlcjpwYXNz"), "missing_api_key"),
            (headers("authorization", "Bearer tg-wrong"), "invalid_api_key"),
            (headers("x-api-key", "tg-old-secret"), "invalid_api_key"),
        ] {
            let error = store.authenticate(&headers).unwrap_err();
            assert_eq!((error.class, error.code), (ErrorClass::Authentication, Some(code)), "{headers:?}");
        }
    }

    #[test]
    fn allow_lists_match_globs() {
        let list = ModelAllowList::only(&["gpt-4o*".into(), "claude-*".into()]).unwrap();
        assert!(list.allows("gpt-4o") && list.allows("gpt-4o-mini") && list.allows("claude-sonnet-4-5"));
        assert!(!list.allows("gpt-5") && !list.allows("o3"));
        assert!(ModelAllowList::any().allows("anything"));
        assert!(ModelAllowList::only(&["[unclosed".into()]).is_err());
    }

    #[test]
    fn the_stored_form_is_the_sha256_hex_of_the_secret() {
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
