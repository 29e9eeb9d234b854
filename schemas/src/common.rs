//! Types shared by several events: who is calling, budget subjects, money, log positions.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch, now. Saturates instead of failing on a clock set
/// before 1970 or after the year 294247.
pub fn now_unix_micros() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// A UUIDv7 that is a pure function of `time_unix_micros` and `parts`: its timestamp is
/// the time's millisecond and its random bits are a SHA-256 of the parts.
///
/// An output derived from an input (a violation found in an interaction, an anomaly of a
/// team in one time bucket) gets the same id however often it is derived, so a replay
/// or a crash never makes a second record of it: sinks write by id.
pub fn derived_id(time_unix_micros: i64, parts: &[&[u8]]) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(time_unix_micros.div_euclid(1000)).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// Who is calling: the identity a virtual key resolves to.
///
/// Identifiers are stable opaque strings chosen by the admin (for example `acme`,
/// `acme-platform`); they are unique per kind across the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Principal {
    /// Organization that pays (OTel: none; `tollgate.org.id`).
    pub org_id: String,
    /// Team inside the organization, when the key belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// End user the key was issued to, or the user the application reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Project the spend is charged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Id of the virtual key used (never the secret).
    pub key_id: String,
}

impl Principal {
    /// The budget subjects this principal's spend counts toward, most specific first:
    /// its key, then its user, team and org.
    pub fn subjects(&self) -> Vec<Subject> {
        self.subject_ids().map(|(kind, id)| Subject::new(kind, id)).collect()
    }

    /// [`Principal::subjects`] as kinds and borrowed ids, in the same order, for hot paths
    /// that look subjects up rather than keep them.
    pub fn subject_ids(&self) -> impl Iterator<Item = (SubjectKind, &str)> {
        [
            Some((SubjectKind::Key, self.key_id.as_str())),
            self.user_id.as_deref().map(|user| (SubjectKind::User, user)),
            self.team_id.as_deref().map(|team| (SubjectKind::Team, team)),
            Some((SubjectKind::Org, self.org_id.as_str())),
        ]
        .into_iter()
        .flatten()
    }
}

/// The kind of thing a budget or quota decision applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Org,
    Team,
    User,
    Key,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Org => "org",
            SubjectKind::Team => "team",
            SubjectKind::User => "user",
            SubjectKind::Key => "key",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "org" => Some(SubjectKind::Org),
            "team" => Some(SubjectKind::Team),
            "user" => Some(SubjectKind::User),
            "key" => Some(SubjectKind::Key),
            _ => None,
        }
    }
}

/// A budget subject: an org, team, user or key, by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Subject {
    pub kind: SubjectKind,
    pub id: String,
}

impl Subject {
    pub fn new(kind: SubjectKind, id: impl Into<String>) -> Self {
        Subject { kind, id: id.into() }
    }

    /// The message key of this subject on keyed topics: `"{kind}:{id}"`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// An amount of money in integer nano-dollars (USD x 1e9). Never a float.
///
/// `i64` holds about 9.2 billion dollars, far beyond any single event, budget or window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Nanodollars(pub i64);

impl Nanodollars {
    pub const ZERO: Nanodollars = Nanodollars(0);
    pub const PER_DOLLAR: i64 = 1_000_000_000;

    pub fn checked_add(self, other: Nanodollars) -> Option<Nanodollars> {
        self.0.checked_add(other.0).map(Nanodollars)
    }

    pub fn saturating_sub(self, other: Nanodollars) -> Nanodollars {
        Nanodollars(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Nanodollars {
    /// Exact decimal dollars with nine fractional digits, e.g. `-0.000001500`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let per_dollar = Self::PER_DOLLAR.unsigned_abs();
        write!(f, "{sign}{}.{:09}", magnitude / per_dollar, magnitude % per_dollar)
    }
}

/// A position in the log: the next offset to read in one topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct SourceOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanodollars_display_is_exact() {
        assert_eq!(Nanodollars(1_500_000_000).to_string(), "1.500000000");
        assert_eq!(Nanodollars(-1_500).to_string(), "-0.000001500");
        assert_eq!(Nanodollars(i64::MIN).to_string(), "-9223372036.854775808");
    }

    #[test]
    fn derived_ids_are_stable_v7_and_distinct() {
        let id = derived_id(1_764_000_000_123_456, &[b"interaction", b"pii.email"]);
        assert_eq!(id, derived_id(1_764_000_000_123_456, &[b"interaction", b"pii.email"]));
        assert_eq!(id.get_version_num(), 7);
        let (seconds, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!((seconds, nanos / 1_000_000), (1_764_000_000, 123));
        assert_ne!(id, derived_id(1_764_000_000_123_456, &[b"interactio", b"npii.email"]));
        assert_ne!(id, derived_id(1_764_000_000_123_456, &[b"interaction", b"pii.phone"]));
    }

    #[test]
    fn subject_key_is_kind_and_id() {
        assert_eq!(Subject::new(SubjectKind::Team, "acme-platform").key(), "team:acme-platform");
    }
}
