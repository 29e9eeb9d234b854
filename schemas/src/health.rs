//! [`UpstreamHealth`]: a gateway's circuit breaker for one upstream opened or closed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a circuit breaker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerTransition {
    /// The upstream failed `consecutive_failures` times in a row: the gateway stops
    /// sending to it until a probe after the cool-down succeeds. Traffic for models whose
    /// routes list it goes to their next target meanwhile.
    Opened,
    /// A probe succeeded: traffic flows to the upstream again.
    Closed,
    /// The gateway instance started, so its breaker for the upstream begins closed: a
    /// window it left open (it stopped during an outage) ends here. Published for every
    /// configured upstream at start.
    Reset,
}

impl BreakerTransition {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerTransition::Opened => "opened",
            BreakerTransition::Closed => "closed",
            BreakerTransition::Reset => "reset",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "opened" => Some(BreakerTransition::Opened),
            "closed" => Some(BreakerTransition::Closed),
            "reset" => Some(BreakerTransition::Reset),
            _ => None,
        }
    }
}

/// One circuit-breaker transition of one gateway instance for one upstream. Published
/// on [`crate::topics::UPSTREAM_HEALTH`] keyed by upstream, archived like every other
/// event. Each gateway keeps its own breakers, so an outage window is the time between
/// an instance's `opened` and its next `closed` (or `reset`, when it restarted) for that
/// upstream. Failed probes during an open window re-open the breaker without a new event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpstreamHealth {
    pub schema_version: u16,
    /// UUIDv7 of this transition.
    pub id: Uuid,
    pub time_unix_micros: i64,
    /// The gateway instance whose breaker moved.
    pub gateway_instance: String,
    /// The configured upstream's name.
    pub upstream: String,
    /// `gen_ai.provider.name` of the upstream, for example `openai`.
    pub provider: String,
    pub transition: BreakerTransition,
    /// Consecutive failed attempts when the breaker opened; 0 otherwise.
    pub consecutive_failures: u32,
    /// How long the breaker stays open before it lets a probe through.
    pub cool_down_millis: u64,
    /// The failure that opened the breaker (`status 503`, `timeout`, `unreachable: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The longest `reason` an event keeps.
pub const MAX_HEALTH_REASON_BYTES: usize = 512;

impl UpstreamHealth {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.gateway_instance.is_empty() {
            return Err("gateway_instance: must not be empty".to_owned());
        }
        if self.upstream.is_empty() {
            return Err("upstream: must not be empty".to_owned());
        }
        if self.reason.as_ref().is_some_and(|reason| reason.len() > MAX_HEALTH_REASON_BYTES) {
            return Err(format!("reason: longer than {MAX_HEALTH_REASON_BYTES} bytes"));
        }
        Ok(())
    }
}
