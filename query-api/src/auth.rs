//! API tokens and roles.
//!
//! A caller presents `Authorization: Bearer TOKEN`. Tokens are configured by the SHA-256
//! of the token (hex), never the token itself, each with a name and a role:
//!
//! - `finance`: costs, budgets and interaction metadata; never captured content, never
//!   the access log;
//! - `auditor`: everything, captured content and the access log included;
//! - `admin`: everything an auditor sees, and token management ([`crate::admin`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Finance,
    Auditor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Finance => "finance",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may read captured request and response content.
    pub fn sees_content(self) -> bool {
        matches!(self, Role::Auditor | Role::Admin)
    }
}

/// A configured token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, as the access log names them.
    pub name: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    pub role: Role,
}

/// The caller behind a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// Looks tokens up by their hash.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Caller>,
}

/// The SHA-256 of `token`, hex, as a token is configured.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Tokens {
    /// The tokens of `configs`; an entry whose hash is not 64 hex digits is reported.
    pub fn new(configs: &[TokenConfig]) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        for config in configs {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(config.sha256.trim(), &mut hash)
                .map_err(|_| format!("token `{}`: sha256 must be 64 hex digits", config.name))?;
            by_hash.insert(hash, Caller { name: config.name.clone(), role: config.role });
        }
        Ok(Tokens { by_hash })
    }

    /// Adds (or replaces) the token with SHA-256 `hash` (hex).
    pub fn insert(&mut self, name: &str, role: Role, hash: &str) -> Result<(), String> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hash.trim(), &mut bytes)
            .map_err(|_| format!("token `{name}`: sha256 must be 64 hex digits"))?;
        self.revoke(name);
        self.by_hash.insert(bytes, Caller { name: name.to_owned(), role });
        Ok(())
    }

    /// Removes every token named `name`; whether there was one.
    pub fn revoke(&mut self, name: &str) -> bool {
        let before = self.by_hash.len();
        self.by_hash.retain(|_, caller| caller.name != name);
        self.by_hash.len() != before
    }

    /// The callers of every token, by name.
    pub fn callers(&self) -> Vec<Caller> {
        let mut callers: Vec<Caller> = self.by_hash.values().cloned().collect();
        callers.sort_by(|a, b| a.name.cmp(&b.name));
        callers
    }

    /// The caller presenting `token`, if it is known.
    pub fn caller(&self, token: &str) -> Option<&Caller> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_their_hash_only() {
        let tokens = Tokens::new(&[TokenConfig {
            name: "finance-team".to_owned(),
            sha256: token_hash("s3cret"),
            role: Role::Finance,
        }])
        .unwrap();
        assert_eq!(tokens.caller("s3cret").map(|caller| caller.role), Some(Role::Finance));
        assert!(tokens.caller("S3cret").is_none());
        assert!(tokens.caller(&token_hash("s3cret")).is_none());
        let bad = TokenConfig { name: "x".to_owned(), sha256: "zz".to_owned(), role: Role::Admin };
        assert!(Tokens::new(&[bad]).unwrap_err().contains("`x`"));
    }
}
