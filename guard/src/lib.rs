//! Content detectors shared by the gateway (request-time PII guard) and the processor
//! (policy-violation detectors): e-mail addresses, phone numbers, payment card numbers
//! (Luhn-checked), IBANs (checksum and country format), US social security numbers, and API
//! keys and other secrets.
//!
//! [`Detectors::find`] returns validated, non-overlapping [`Finding`]s as byte ranges;
//! [`Detectors::redact`] replaces each with a marker such as `[REDACTED:email]`; [`mask`]
//! turns a match into evidence that is safe to store (`j***@example.com`).
//!
//! [`injection::find`] flags prompt-injection phrasing ("ignore all previous
//! instructions", requests for the system prompt, jailbreak personas).
//!
//! Pure functions over text: no I/O, no configuration files, no policy decisions. Whether
//! a finding blocks, redacts or is only logged is the caller's choice.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

pub mod injection;

/// What kind of sensitive content a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiKind {
    Email,
    Phone,
    CardNumber,
    Iban,
    UsSsn,
    /// An API key, token, password assignment or private key.
    Secret,
}

impl PiiKind {
    pub const ALL: [PiiKind; 6] =
        [PiiKind::Email, PiiKind::Phone, PiiKind::CardNumber, PiiKind::Iban, PiiKind::UsSsn, PiiKind::Secret];

    /// Stable rule id, as used in `PolicyViolation::rule_id`.
    pub fn rule_id(self) -> &'static str {
        match self {
            PiiKind::Email => "pii.email",
            PiiKind::Phone => "pii.phone",
            PiiKind::CardNumber => "pii.card_number",
            PiiKind::Iban => "pii.iban",
            PiiKind::UsSsn => "pii.us_ssn",
            PiiKind::Secret => "secret.credential",
        }
    }

    /// Short label used in redaction markers.
    pub fn label(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::CardNumber => "card_number",
            PiiKind::Iban => "iban",
            PiiKind::UsSsn => "us_ssn",
            PiiKind::Secret => "secret",
        }
    }

    /// The kind whose [`PiiKind::label`] is `label`.
    pub fn from_label(label: &str) -> Option<PiiKind> {
        PiiKind::ALL.into_iter().find(|kind| kind.label() == label)
    }

    /// When two candidates overlap, the kind with the higher priority wins: a validated
    /// card number or IBAN is a stronger claim than a digit run that looks like a phone.
    fn priority(self) -> u8 {
        match self {
            PiiKind::Secret => 6,
            PiiKind::CardNumber => 5,
            PiiKind::Iban => 4,
            PiiKind::UsSsn => 3,
            PiiKind::Email => 2,
            PiiKind::Phone => 1,
        }
    }
}

/// One detected span of sensitive content, as a byte range of the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

impl Finding {
    /// The matched text.
    pub fn text<'a>(&self, haystack: &'a str) -> &'a str {
        haystack.get(self.start..self.end).unwrap_or("")
    }
}

/// Extra check on a match (checksums, reserved ranges).
type Validator = fn(&str) -> bool;

struct Pattern {
    kind: PiiKind,
    regex: Regex,
    /// `None` accepts every match.
    validate: Option<Validator>,
}

/// The compiled detectors. Build once ([`Detectors::shared`]) and reuse: compiling the
/// patterns costs far more than scanning a prompt.
pub struct Detectors {
    patterns: Vec<Pattern>,
}

impl std::fmt::Debug for Detectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detectors").field("patterns", &self.patterns.len()).finish()
    }
}

static SHARED: LazyLock<Detectors> = LazyLock::new(Detectors::compile);

impl Detectors {
    /// The process-wide compiled detectors.
    pub fn shared() -> &'static Detectors {
        &SHARED
    }

    fn compile() -> Self {
        // Every pattern is a literal known to compile; a pattern that did not would be
        // dropped (and fail the unit tests) rather than panic at run time.
        let specs: [(PiiKind, &str, Option<Validator>); 6] = [
            (PiiKind::Email, r"(?i)\b[a-z0-9][a-z0-9._%+-]{0,63}@(?:[a-z0-9-]{1,63}\.)+[a-z]{2,24}\b", None),
            (PiiKind::CardNumber, r"\b\d(?:[ -]?\d){12,18}\b", Some(is_card_number)),
            (PiiKind::Iban, r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", Some(is_iban)),
            (PiiKind::UsSsn, r"\b\d{3}-\d{2}-\d{4}\b", Some(is_us_ssn)),
            (
                PiiKind::Phone,
                r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\b\d{2,4}[ .-]\d{3,4}[ .-]?\d{3,4}\b",
                Some(is_phone_number),
            ),
            (
                PiiKind::Secret,
                concat!(
                    r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}",
                    r"|\bAKIA[0-9A-Z]{16}\b",
                    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b",
                    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}",
                    r"|\bAIza[0-9A-Za-z_-]{35}",
                    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----",
                    r#"|(?i)\b(?:api[_-]?key|secret|token|password|passwd)\b\s*[:=]\s*["']?[A-Za-z0-9_\-./+=]{12,}"#,
                ),
                None,
            ),
        ];
        let patterns = specs
            .into_iter()
            .filter_map(|(kind, pattern, validate)| {
                Regex::new(pattern).ok().map(|regex| Pattern { kind, regex, validate })
            })
            .collect();
        Detectors { patterns }
    }

    /// Every sensitive span in `text`: validated, non-overlapping, in order.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let mut candidates = Vec::new();
        for pattern in &self.patterns {
            for found in pattern.regex.find_iter(text) {
                if pattern.validate.is_none_or(|validate| validate(found.as_str())) {
                    candidates.push(Finding { kind: pattern.kind, start: found.start(), end: found.end() });
                }
            }
        }
        without_overlaps(candidates)
    }

    /// `text` with every finding replaced by `[REDACTED:<label>]`, and the findings.
    /// Borrows when nothing was found.
    pub fn redact<'a>(&self, text: &'a str) -> (Cow<'a, str>, Vec<Finding>) {
        let findings = self.find(text);
        if findings.is_empty() {
            return (Cow::Borrowed(text), findings);
        }
        let mut redacted = String::with_capacity(text.len());
        let mut copied_up_to = 0;
        for finding in &findings {
            redacted.push_str(text.get(copied_up_to..finding.start).unwrap_or(""));
            redacted.push_str("[REDACTED:");
            redacted.push_str(finding.kind.label());
            redacted.push(']');
            copied_up_to = finding.end;
        }
        redacted.push_str(text.get(copied_up_to..).unwrap_or(""));
        (Cow::Owned(redacted), findings)
    }
}

/// The candidates that win where they overlap: strongest claims first (then the earlier,
/// then the longer), each kept if it overlaps nothing kept before it; in text order.
///
/// O(n log n): the kept spans are disjoint, so in (start, end) order their ends rise, and
/// of those starting before a candidate ends only the last can reach into it.
fn without_overlaps(mut candidates: Vec<Finding>) -> Vec<Finding> {
    candidates
        .sort_by(|a, b| b.kind.priority().cmp(&a.kind.priority()).then(a.start.cmp(&b.start)).then(b.end.cmp(&a.end)));
    let mut kept: std::collections::BTreeMap<(usize, usize), Finding> = std::collections::BTreeMap::new();
    for candidate in candidates {
        let overlaps =
            kept.range(..(candidate.end, 0)).next_back().is_some_and(|(_, other)| overlap(other, &candidate));
        if !overlaps {
            kept.insert((candidate.start, candidate.end), candidate);
        }
    }
    kept.into_values().collect()
}

fn overlap(a: &Finding, b: &Finding) -> bool {
    !(a.end <= b.start || a.start >= b.end)
}

/// The kinds named by `[REDACTED:<label>]` markers in `text` (what [`Detectors::redact`]
/// left behind), with how often each appears, in kind order.
pub fn redaction_markers(text: &str) -> Vec<(PiiKind, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for (_, rest) in text.match_indices("[REDACTED:").map(|(at, marker)| (at, &text[at + marker.len()..])) {
        if let Some((label, _)) = rest.split_once(']')
            && let Some(kind) = PiiKind::from_label(label)
        {
            *counts.entry(kind).or_insert(0) += 1;
        }
    }
    counts.into_iter().collect()
}

/// Evidence safe to store: keeps the shape and a few characters, hides the rest.
/// `jane.doe@example.com` becomes `j***@example.com`; a card or IBAN keeps its last four
/// characters; a secret keeps its first four.
pub fn mask(kind: PiiKind, matched: &str) -> String {
    let chars: Vec<char> = matched.chars().collect();
    match kind {
        PiiKind::Email => match matched.split_once('@') {
            Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
            None => "***".to_owned(),
        },
        PiiKind::CardNumber | PiiKind::Iban | PiiKind::Phone | PiiKind::UsSsn => {
            let keep = if kind == PiiKind::UsSsn { 0 } else { 4 };
            let tail: String = chars.iter().rev().filter(|c| c.is_ascii_alphanumeric()).take(keep).collect();
            format!("***{}", tail.chars().rev().collect::<String>())
        }
        PiiKind::Secret => format!("{}***", chars.iter().take(4).collect::<String>()),
    }
}

fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

fn is_card_number(candidate: &str) -> bool {
    let digits = digits(candidate);
    (13..=19).contains(&digits.len()) && luhn::valid(&digits)
}

fn is_iban(candidate: &str) -> bool {
    let electronic: String = candidate.chars().filter(|c| !c.is_whitespace()).collect();
    electronic.parse::<iban::Iban>().is_ok()
}

/// The SSA never issues area 000, 666 or 900-999, group 00 or serial 0000.
fn is_us_ssn(candidate: &str) -> bool {
    let digits = digits(candidate);
    let (Some(area), Some(group), Some(serial)) = (digits.get(0..3), digits.get(3..5), digits.get(5..9)) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// E.164 allows at most 15 digits; fewer than 9 is a number of some other kind.
fn is_phone_number(candidate: &str) -> bool {
    (9..=15).contains(&digits(candidate).len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The first, quadratic resolution: each candidate against every span kept so far.
    fn without_overlaps_reference(mut candidates: Vec<Finding>) -> Vec<Finding> {
        candidates.sort_by(|a, b| {
            b.kind.priority().cmp(&a.kind.priority()).then(a.start.cmp(&b.start)).then(b.end.cmp(&a.end))
        });
        let mut kept: Vec<Finding> = Vec::new();
        for candidate in candidates {
            if kept.iter().all(|other| candidate.end <= other.start || candidate.start >= other.end) {
                kept.push(candidate);
            }
        }
        kept.sort_by_key(|finding| finding.start);
        kept
    }

    fn candidate() -> impl Strategy<Value = Finding> {
        (0..PiiKind::ALL.len(), 0usize..200, 1usize..30).prop_map(|(kind, start, length)| Finding {
            kind: PiiKind::ALL[kind],
            start,
            end: start + length,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The sorted-map resolution keeps exactly what comparing with every kept span did.
        #[test]
        fn overlaps_resolve_as_comparing_every_pair_does(candidates in proptest::collection::vec(candidate(), 0..60)) {
            prop_assert_eq!(without_overlaps(candidates.clone()), without_overlaps_reference(candidates));
        }
    }

    fn kinds(text: &str) -> Vec<(PiiKind, String)> {
        Detectors::shared().find(text).iter().map(|finding| (finding.kind, finding.text(text).to_owned())).collect()
    }

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(Detectors::shared().patterns.len(), PiiKind::ALL.len());
    }

    #[test]
    fn finds_each_kind() {
        assert_eq!(
            kinds("mail jane.doe+ai@mail.example.co.uk now"),
            [(PiiKind::Email, "jane.doe+ai@mail.example.co.uk".into())]
        );
        assert_eq!(kinds("card 4111 1111 1111 1111 ok"), [(PiiKind::CardNumber, "4111 1111 1111 1111".into())]);
        assert_eq!(kinds("iban DE89 3704 0044 0532 0130 00."), [(PiiKind::Iban, "DE89 3704 0044 0532 0130 00".into())]);
        assert_eq!(kinds("ssn 123-45-6789"), [(PiiKind::UsSsn, "123-45-6789".into())]);
        assert_eq!(kinds("call +1 415-555-0132 today"), [(PiiKind::Phone, "+1 415-555-0132".into())]);
        assert_eq!(
            kinds("key sk-proj-abcdefghijklmnopqrstuvwxyz012345"),
            [(PiiKind::Secret, "sk-proj-abcdefghijklmnopqrstuvwxyz012345".into())]
        );
        assert_eq!(kinds("AKIAIOSFODNN7EXAMPLE"), [(PiiKind::Secret, "AKIAIOSFODNN7EXAMPLE".into())]);
        assert_eq!(kinds(r#"password = "hunter2hunter2hunter2""#).len(), 1);
    }

    #[test]
    fn checksums_reject_lookalikes() {
        assert!(kinds("order 4111 1111 1111 1112").iter().all(|(kind, _)| *kind != PiiKind::CardNumber));
        assert!(kinds("ref DE89 3704 0044 0532 0130 01").iter().all(|(kind, _)| *kind != PiiKind::Iban));
        assert!(kinds("ssn 666-45-6789 or 123-00-6789").is_empty());
        assert!(kinds("version 1.2.3, year 2026, port 8080").is_empty());
    }

    #[test]
    fn redaction_replaces_every_finding_and_keeps_the_rest() {
        let text = "Email jane@example.com, card 4111-1111-1111-1111.";
        let (redacted, findings) = Detectors::shared().redact(text);
        assert_eq!(findings.len(), 2);
        assert_eq!(redacted, "Email [REDACTED:email], card [REDACTED:card_number].");
        let (clean, none) = Detectors::shared().redact("nothing to see");
        assert!(matches!(clean, Cow::Borrowed(_)) && none.is_empty());
    }

    #[test]
    fn redaction_markers_are_counted_by_kind() {
        let (redacted, _) = Detectors::shared().redact("a@example.com, b@example.com and 4111 1111 1111 1111");
        assert_eq!(redaction_markers(&redacted), [(PiiKind::Email, 2), (PiiKind::CardNumber, 1)]);
        assert!(redaction_markers("[REDACTED:unknown] [REDACTED:email").is_empty());
    }

    #[test]
    fn masks_keep_little() {
        assert_eq!(mask(PiiKind::Email, "jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask(PiiKind::CardNumber, "4111 1111 1111 1111"), "***1111");
        assert_eq!(mask(PiiKind::UsSsn, "123-45-6789"), "***");
        assert_eq!(mask(PiiKind::Secret, "sk-abcdefghijklmnopqrstuvwxyz"), "sk-a***");
    }
}
