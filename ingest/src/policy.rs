//! Request-time policy beyond the model allow-list: per-key rate limits and the prompt
//! PII guard.
//!
//! Rate limits are token buckets (`governor`, GCRA) per key: requests per minute, and
//! tokens per minute where a request weighs its prompt tokens plus its output limit (the
//! way providers count against a TPM limit). A refused request is told when to retry.
//!
//! The PII guard looks at the text a request sends to the model (system text, message
//! text, embedding inputs) with the detectors shared with the processor
//! (`tollgate-guard`). `off` passes everything, `redact` replaces each finding with a
//! `[REDACTED:<kind>]` marker before the request goes upstream, `block` refuses the request
//! and names the kinds found (never the values).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value};
use tollgate_guard::{Detectors, PiiKind};

/// What the PII guard does with a prompt that carries PII or secrets (shared with the
/// governance values that set it).
pub use tollgate_schemas::PiiGuardMode as PiiMode;

/// A key's rate limits.
#[derive(Debug)]
pub struct RateLimits {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    /// Made once: creating a clock calibrates it, far too slow for every request.
    clock: DefaultClock,
}

/// Why a request is over a rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    /// `requests` or `tokens`.
    pub kind: &'static str,
    pub message: String,
    /// When a retry can succeed; `None` when this request can never fit.
    pub retry_after: Option<Duration>,
}

impl RateLimits {
    /// Limits per minute; `None` for no limit of that kind.
    pub fn per_minute(requests: Option<NonZeroU32>, tokens: Option<NonZeroU32>) -> Option<Self> {
        if requests.is_none() && tokens.is_none() {
            return None;
        }
        Some(RateLimits {
            requests: requests.map(|limit| RateLimiter::direct(Quota::per_minute(limit))),
            tokens: tokens.map(|limit| (RateLimiter::direct(Quota::per_minute(limit)), limit)),
            clock: DefaultClock::default(),
        })
    }

    pub fn limits_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Takes one request of `tokens()` tokens from the buckets (tokens are counted only
    /// when a token limit is set), or says which limit refuses it.
    pub fn check(&self, tokens: impl FnOnce() -> u64) -> Result<(), OverLimit> {
        let clock = &self.clock;
        if let Some(limiter) = &self.requests
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(clock.now());
            return Err(OverLimit {
                kind: "requests",
                message: format!(
                    "Rate limit reached for requests on this key; try again in {:.1} s.",
                    wait.as_secs_f64()
                ),
                retry_after: Some(wait),
            });
        }
        if let Some((limiter, per_minute)) = &self.tokens {
            let wanted = tokens().max(1);
            let cells = NonZeroU32::new(u32::try_from(wanted).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
            match limiter.check_n(cells) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(clock.now());
                    return Err(OverLimit {
                        kind: "tokens",
                        message: format!(
                            "Rate limit reached for tokens on this key: this request needs {wanted} of {per_minute} \
                             tokens per minute; try again in {:.1} s.",
                            wait.as_secs_f64()
                        ),
                        retry_after: Some(wait),
                    });
                }
                Err(_insufficient) => {
                    return Err(OverLimit {
                        kind: "tokens",
                        message: format!(
                            "This request needs {wanted} tokens, more than this key's limit of {per_minute} tokens per \
                             minute; lower max_tokens or shorten the prompt."
                        ),
                        retry_after: None,
                    });
                }
            }
        }
        Ok(())
    }
}

/// What the guard did to a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardReport {
    /// Kinds found, each once, in a stable order.
    pub kinds: Vec<PiiKind>,
    /// Whether the body was changed (redact mode with findings).
    pub redacted: bool,
}

/// Applies `mode` to the prompt text in `body`. In `block` mode the body is left as it
/// is and the report names what was found; the caller refuses the request.
pub fn guard_prompt(body: &mut Map<String, Value>, mode: PiiMode) -> GuardReport {
    let mut guard = Guard { mode, report: GuardReport::default() };
    if mode == PiiMode::Off {
        return guard.report;
    }
    for field in ["system", "input", "prompt"] {
        if let Some(value) = body.get_mut(field) {
            visit_content(value, &mut |text| guard.visit(text));
        }
    }
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        for message in messages {
            if let Some(content) = message.get_mut("content") {
                visit_content(content, &mut |text| guard.visit(text));
            }
        }
    }
    guard.report.kinds.sort();
    guard.report
}

/// Applies `mode` to every string anywhere in `value` (MCP tool arguments), keys
/// excepted.
pub fn guard_json(value: &mut Value, mode: PiiMode) -> GuardReport {
    fn walk(value: &mut Value, guard: &mut Guard) {
        match value {
            Value::String(text) => guard.visit(text),
            Value::Array(items) => items.iter_mut().for_each(|item| walk(item, guard)),
            Value::Object(fields) => fields.values_mut().for_each(|item| walk(item, guard)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    let mut guard = Guard { mode, report: GuardReport::default() };
    if mode != PiiMode::Off {
        walk(value, &mut guard);
    }
    guard.report.kinds.sort();
    guard.report
}

/// One pass of the guard over some texts.
struct Guard {
    mode: PiiMode,
    report: GuardReport,
}

impl Guard {
    fn visit(&mut self, text: &mut String) {
        let detectors = Detectors::shared();
        let (replacement, findings) = match self.mode {
            PiiMode::Redact => {
                let (redacted, findings) = detectors.redact(text);
                (Some(redacted.into_owned()), findings)
            }
            PiiMode::Block | PiiMode::Off => (None, detectors.find(text)),
        };
        for finding in &findings {
            if !self.report.kinds.contains(&finding.kind) {
                self.report.kinds.push(finding.kind);
            }
        }
        if let Some(replacement) = replacement
            && !findings.is_empty()
        {
            *text = replacement;
            self.report.redacted = true;
        }
    }
}

/// Calls `visit` on every text in a content value: a string, an array of strings, or an
/// array of parts with a `text` field.
fn visit_content(value: &mut Value, visit: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(parts) => {
            for part in parts {
                match part {
                    Value::String(text) => visit(text),
                    Value::Object(object) => {
                        if let Some(Value::String(text)) = object.get_mut("text") {
                            visit(text);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn redact_replaces_findings_in_every_text_field() {
        let mut request = body(json!({
            "system": "Contact ops@example.com",
            "messages": [
                {"role": "user", "content": "My card is 4111 1111 1111 1111"},
                {"role": "user", "content": [{"type": "text", "text": "call +1 415 555 0100"}, {"type": "image_url"}]},
            ],
        }));
        let report = guard_prompt(&mut request, PiiMode::Redact);
        assert!(report.redacted);
        assert_eq!(report.kinds, vec![PiiKind::Email, PiiKind::Phone, PiiKind::CardNumber]);
        assert_eq!(request["system"], "Contact [REDACTED:email]");
        assert_eq!(request["messages"][0]["content"], "My card is [REDACTED:card_number]");
        assert!(request["messages"][1]["content"][0]["text"].as_str().unwrap().contains("[REDACTED:phone]"));
    }

    #[test]
    fn block_reports_without_changing_and_off_does_nothing() {
        let original = json!({"input": ["fine", "ssn 123-45-6789"]});
        let mut request = body(original.clone());
        let report = guard_prompt(&mut request, PiiMode::Block);
        assert_eq!((report.kinds, report.redacted), (vec![PiiKind::UsSsn], false));
        assert_eq!(Value::Object(request.clone()), original);
        assert_eq!(guard_prompt(&mut request, PiiMode::Off), GuardReport::default());
        let mut clean = body(json!({"messages": [{"role": "user", "content": "Hello there"}]}));
        assert_eq!(guard_prompt(&mut clean, PiiMode::Redact), GuardReport::default());
    }

    #[test]
    fn request_limits_refuse_with_a_retry_time() {
        let limits = RateLimits::per_minute(NonZeroU32::new(2), None).unwrap();
        assert!(limits.check(|| 0).is_ok());
        assert!(limits.check(|| 0).is_ok());
        let over = limits.check(|| 0).unwrap_err();
        assert_eq!(over.kind, "requests");
        let wait = over.retry_after.unwrap();
        assert!(wait > Duration::from_secs(20) && wait <= Duration::from_secs(30), "{wait:?}");
    }

    #[test]
    fn token_limits_weigh_each_request() {
        let limits = RateLimits::per_minute(None, NonZeroU32::new(1_000)).unwrap();
        assert!(limits.check(|| 600).is_ok());
        let over = limits.check(|| 600).unwrap_err();
        assert_eq!(over.kind, "tokens");
        assert!(over.retry_after.is_some());
        let never = limits.check(|| 5_000).unwrap_err();
        assert_eq!(never.retry_after, None, "{}", never.message);
    }
}
