//! Bounds on the free-text fields of an [`Interaction`]: no client, upstream or MCP server
//! can make an event larger than a log accepts.
//!
//! Names and ids have fixed bounds; the gateway refuses a request that sends a longer one
//! (a 400 at the door) and cuts what a refused request, an upstream or a server supplied.
//! Captured content is bounded by the capture policy's `max_bytes`, measured as the text's
//! JSON encoding (an escaped control character takes six bytes), and a cut is marked in
//! the text with the original size. The sizes in [`crate::ContentRecord`] stay those of
//! the bodies as sent.

use crate::{Call, Interaction};

/// Model names, MCP method and tool names.
pub const MAX_NAME_BYTES: usize = 256;
/// MCP session ids and the W3C `tracestate` header (512 characters by its specification).
pub const MAX_ID_BYTES: usize = 512;
/// `outcome.error_type`.
pub const MAX_ERROR_TYPE_BYTES: usize = 128;
/// `outcome.error_message`, which can carry an upstream's or a server's text.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;
/// Each side of captured content (request, response), as JSON, unless configured
/// otherwise. Both sides together stay well under Kafka's default 1 MB record limit.
pub const DEFAULT_MAX_CAPTURE_BYTES: usize = 256 * 1024;

/// What a cut name, id or message ends with.
const CUT: &str = "…";

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a character
/// boundary.
pub fn prefix_within(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Cuts `text` to at most `max_bytes` bytes, ending in `…` when cut. Returns whether it
/// was cut.
pub fn bound(text: &mut String, max_bytes: usize) -> bool {
    if text.len() <= max_bytes {
        return false;
    }
    let keep = prefix_within(text, max_bytes.saturating_sub(CUT.len())).len();
    text.truncate(keep);
    text.push_str(CUT);
    true
}

fn bound_option(text: &mut Option<String>, max_bytes: usize) -> bool {
    text.as_mut().is_some_and(|text| bound(text, max_bytes))
}

/// The bytes `c` takes in a JSON string as `serde_json` writes it.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0c}' => 2,
        '\u{00}'..='\u{1f}' => 6,
        _ => c.len_utf8(),
    }
}

/// The bytes `text` takes as a JSON string, quotes left out.
pub fn json_string_len(text: &str) -> usize {
    text.chars().map(json_len).sum()
}

/// Cuts captured `text` so that its JSON encoding, marker included, takes at most
/// `max_json_bytes`; the marker names how much of the `original_bytes` was kept. A text
/// `already_cut` (taken from the first bytes of a longer body) gets the marker even when
/// it fits. Returns whether it is marked as cut.
pub fn bound_captured(text: &mut String, max_json_bytes: usize, original_bytes: u64, already_cut: bool) -> bool {
    if !already_cut && json_string_len(text) <= max_json_bytes {
        return false;
    }
    // The marker is plain ASCII; its length is its JSON length except for the newline.
    let marker = |kept: usize| format!("\n[truncated by Tollgate: {kept} of {original_bytes} bytes kept]");
    let budget = max_json_bytes.saturating_sub(marker(usize::MAX).len() + 1);
    let mut used = 0;
    let mut end = 0;
    for (index, c) in text.char_indices() {
        let width = json_len(c);
        if used + width > budget {
            break;
        }
        used += width;
        end = index + c.len_utf8();
    }
    text.truncate(end);
    text.push_str(&marker(end));
    true
}

impl Interaction {
    /// Cuts every free-text field to its bound, captured content to `max_capture_bytes`
    /// per side. Returns whether anything was cut.
    pub fn enforce_bounds(&mut self, max_capture_bytes: usize) -> bool {
        let mut cut = false;
        match &mut self.call {
            Call::ModelCall(call) => {
                cut |= bound(&mut call.request_model, MAX_NAME_BYTES);
                cut |= bound_option(&mut call.routed_model, MAX_NAME_BYTES);
                cut |= bound_option(&mut call.response_model, MAX_NAME_BYTES);
            }
            Call::ToolCall(call) => {
                cut |= bound(&mut call.server, MAX_NAME_BYTES);
                cut |= bound(&mut call.method, MAX_NAME_BYTES);
                cut |= bound_option(&mut call.tool, MAX_NAME_BYTES);
                cut |= bound_option(&mut call.session_id, MAX_ID_BYTES);
            }
        }
        cut |= bound_option(&mut self.outcome.error_type, MAX_ERROR_TYPE_BYTES);
        cut |= bound_option(&mut self.outcome.error_message, MAX_ERROR_MESSAGE_BYTES);
        if let Some(trace) = &mut self.trace
            && trace.tracestate.as_ref().is_some_and(|state| state.len() > MAX_ID_BYTES)
        {
            // A cut list of vendor entries is not a valid one: dropped, as the W3C
            // specification has it.
            trace.tracestate = None;
            cut = true;
        }
        let (request_bytes, response_bytes) = (self.content.request_bytes, self.content.response_bytes);
        if let Some(captured) = &mut self.content.captured {
            cut |= bound_captured(&mut captured.request, max_capture_bytes, request_bytes, false);
            if let Some(response) = &mut captured.response {
                cut |= bound_captured(response, max_capture_bytes, response_bytes, false);
            }
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_name_ends_in_an_ellipsis_on_a_character_boundary() {
        let mut name = "é".repeat(200);
        assert!(bound(&mut name, MAX_NAME_BYTES));
        assert!(name.len() <= MAX_NAME_BYTES, "{}", name.len());
        assert!(name.ends_with(CUT));
        let mut short = "gpt-4o".to_owned();
        assert!(!bound(&mut short, MAX_NAME_BYTES));
        assert_eq!(short, "gpt-4o");
    }

    #[test]
    fn json_lengths_match_serde_json() {
        for text in ["plain", "quote \" and \\ backslash", "\n\t\r\u{08}\u{0c}", "\u{01}\u{1f}\u{7f}", "日本語 🎉"]
        {
            let encoded = serde_json::to_string(text).unwrap_or_default();
            assert_eq!(json_string_len(text), encoded.len() - 2, "{text:?}");
        }
    }

    #[test]
    fn captured_text_is_cut_by_its_json_size_and_says_so() {
        for unit in ["a", "\u{01}", "é", "\"", "🎉"] {
            let mut text = unit.repeat(100_000);
            let original = text.len() as u64;
            assert!(bound_captured(&mut text, 10_000, original, false), "{unit:?}");
            let encoded = serde_json::to_string(&text).unwrap_or_default();
            assert!(encoded.len() - 2 <= 10_000, "{unit:?}: {} bytes as JSON", encoded.len() - 2);
            assert!(encoded.len() - 2 > 9_000, "{unit:?}: most of the budget is used");
            assert!(text.ends_with(&format!(" of {original} bytes kept]")), "{unit:?}: {}", &text[text.len() - 60..]);
        }
        let mut small = "fits".to_owned();
        assert!(!bound_captured(&mut small, 10_000, 4, false));
        assert_eq!(small, "fits");
        assert!(bound_captured(&mut small, 10_000, 40, true), "a text taken from a longer body is marked");
        assert_eq!(small, "fits\n[truncated by Tollgate: 4 of 40 bytes kept]");
    }
}
