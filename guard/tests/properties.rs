//! Properties of the detectors over generated text.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use proptest::prelude::*;
use tollgate_guard::{Detectors, PiiKind};

/// A 16-digit number that passes the Luhn check: 15 random digits plus the check digit.
fn luhn_valid_card() -> impl Strategy<Value = String> {
    proptest::collection::vec(0u32..10, 15).prop_map(|mut digits| {
        digits[0] = 4; // a plausible issuer prefix
        let sum: u32 = digits
            .iter()
            .rev()
            .enumerate()
            .map(|(index, digit)| {
                if index % 2 == 0 {
                    let doubled = digit * 2;
                    if doubled > 9 { doubled - 9 } else { doubled }
                } else {
                    *digit
                }
            })
            .sum();
        digits.push((10 - sum % 10) % 10);
        digits.iter().map(|digit| char::from_digit(*digit, 10).unwrap()).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn findings_are_in_bounds_ordered_and_disjoint(text in any::<String>()) {
        let findings = Detectors::shared().find(&text);
        let mut previous_end = 0;
        for finding in &findings {
            prop_assert!(finding.start >= previous_end && finding.start < finding.end && finding.end <= text.len());
            prop_assert!(text.is_char_boundary(finding.start) && text.is_char_boundary(finding.end));
            previous_end = finding.end;
        }
    }

    #[test]
    fn a_valid_card_number_in_prose_is_found(prefix in "[a-zA-Z ,.]{0,40}", card in luhn_valid_card(), suffix in "[a-zA-Z ,.]{0,40}") {
        let text = format!("{prefix} {card} {suffix}");
        let findings = Detectors::shared().find(&text);
        prop_assert!(
            findings.iter().any(|finding| finding.kind == PiiKind::CardNumber && finding.text(&text) == card),
            "{text:?} -> {findings:?}"
        );
    }

    #[test]
    fn redacted_text_has_nothing_left_to_find(prefix in "[a-z ]{0,20}", card in luhn_valid_card(), user in "[a-z]{1,10}") {
        let text = format!("{prefix} {card} mail {user}@example.org {prefix}");
        let (redacted, findings) = Detectors::shared().redact(&text);
        prop_assert!(findings.len() >= 2);
        prop_assert!(!redacted.contains(&card) && !redacted.contains("@example.org"));
        prop_assert!(Detectors::shared().find(&redacted).is_empty(), "{redacted}");
    }
}
