//! Token usage from provider responses, normalized to the OpenTelemetry meaning, and a
//! tokenizer for when a provider reports none.
//!
//! OpenTelemetry's `gen_ai.usage.input_tokens` includes cache reads and cache writes, and
//! `output_tokens` includes reasoning. OpenAI reports it that way already
//! (`prompt_tokens_details.cached_tokens` is part of `prompt_tokens`); Anthropic reports
//! `input_tokens` without its cache tokens, so they are added here.
//!
//! When an upstream reports no usage (an OpenAI-compatible server that ignores
//! `stream_options`, or a stream the client abandoned), tokens are counted with the
//! `o200k_base` encoding (`tiktoken-rs`, shipped inside the crate) and the usage is marked
//! estimated.

use serde_json::Value;
use tollgate_schemas::Usage;

fn count(value: Option<&Value>) -> u64 {
    value.and_then(Value::as_u64).unwrap_or(0)
}

/// Usage from an OpenAI-style `usage` object (chat completions or embeddings).
pub fn from_openai(usage: &Value) -> Option<Usage> {
    let usage = usage.as_object()?;
    let input_tokens = usage.get("prompt_tokens")?.as_u64()?;
    Some(Usage {
        input_tokens,
        output_tokens: count(usage.get("completion_tokens")),
        cache_read_input_tokens: count(usage.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens"))),
        cache_creation_input_tokens: 0,
        reasoning_output_tokens: count(usage.get("completion_tokens_details").and_then(|d| d.get("reasoning_tokens"))),
        estimated: false,
    })
}

/// Usage from an Anthropic `usage` object, with cache tokens folded into the input count.
pub fn from_anthropic(usage: &Value) -> Option<Usage> {
    let usage = usage.as_object()?;
    let uncached = usage.get("input_tokens")?.as_u64()?;
    let cache_read = count(usage.get("cache_read_input_tokens"));
    let cache_creation = count(usage.get("cache_creation_input_tokens"));
    Some(Usage {
        input_tokens: uncached.saturating_add(cache_read).saturating_add(cache_creation),
        output_tokens: count(usage.get("output_tokens")),
        cache_read_input_tokens: cache_read,
        cache_creation_input_tokens: cache_creation,
        reasoning_output_tokens: 0,
        estimated: false,
    })
}

/// Builds the tokenizer now. Building it takes a noticeable time (about a second in a
/// debug build), and the first request that counts tokens would otherwise pay it on an
/// async worker, holding up every request on that worker.
pub fn warm_up() {
    let _ = tiktoken_rs::o200k_base_singleton();
}

/// Tokens in `text` by the `o200k_base` encoding (GPT-4o and later). Close enough for
/// other providers' models to meter a call whose provider reported nothing.
pub fn count_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let tokens = tiktoken_rs::o200k_base_singleton().encode_ordinary(text).len();
    u64::try_from(tokens).unwrap_or(u64::MAX)
}

/// The text of a request's prompt: system text and the text parts of every message, in
/// both providers' layouts, for estimating input tokens.
pub fn prompt_text(body: &serde_json::Map<String, Value>) -> String {
    let mut text = String::new();
    let mut push_content = |content: &Value| match content {
        Value::String(part) => text.push_str(part),
        Value::Array(parts) => {
            for part in parts {
                if let Some(part_text) = part.get("text").and_then(Value::as_str) {
                    text.push_str(part_text);
                }
            }
        }
        _ => {}
    };
    if let Some(system) = body.get("system") {
        push_content(system);
    }
    for message in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        if let Some(content) = message.get("content") {
            push_content(content);
        }
    }
    if let Some(input) = body.get("input") {
        match input {
            Value::Array(items) => items.iter().for_each(&mut push_content),
            other => push_content(other),
        }
    }
    text
}

/// What a streamed response has shown so far: text delivered, usage reported, model.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamTally {
    /// Output text (and tool-call argument text) delivered to the client so far.
    pub delivered_text: String,
    /// The provider's usage, once reported.
    pub usage: Option<Usage>,
    /// `model` as the provider reported it.
    pub response_model: Option<String>,
    /// The provider signalled the end of the stream (`[DONE]` or `message_stop`).
    pub finished: bool,
}

impl StreamTally {
    /// Takes in one OpenAI chat-completion chunk (`data:` JSON).
    pub fn observe_openai_chunk(&mut self, chunk: &Value) {
        if self.response_model.is_none()
            && let Some(model) = chunk.get("model").and_then(Value::as_str)
        {
            self.response_model = Some(model.to_owned());
        }
        for choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let Some(delta) = choice.get("delta") else { continue };
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                self.delivered_text.push_str(text);
            }
            if let Some(text) = delta.get("refusal").and_then(Value::as_str) {
                self.delivered_text.push_str(text);
            }
            for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                if let Some(function) = call.get("function") {
                    for field in ["name", "arguments"] {
                        if let Some(text) = function.get(field).and_then(Value::as_str) {
                            self.delivered_text.push_str(text);
                        }
                    }
                }
            }
        }
        if let Some(usage) = chunk.get("usage").and_then(from_openai) {
            self.usage = Some(usage);
        }
    }

    /// Takes in one Anthropic stream event (`data:` JSON with a `type`).
    pub fn observe_anthropic_event(&mut self, event: &Value) {
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let message = event.get("message");
                if let Some(model) = message.and_then(|m| m.get("model")).and_then(Value::as_str) {
                    self.response_model = Some(model.to_owned());
                }
                if let Some(usage) = message.and_then(|m| m.get("usage")).and_then(from_anthropic) {
                    self.usage = Some(usage);
                }
            }
            Some("content_block_delta") => {
                let delta = event.get("delta");
                for field in ["text", "partial_json", "thinking"] {
                    if let Some(text) = delta.and_then(|d| d.get(field)).and_then(Value::as_str) {
                        self.delivered_text.push_str(text);
                    }
                }
            }
            Some("message_delta") => {
                // Output tokens here are cumulative for the message.
                if let Some(output) = event.get("usage").and_then(|u| u.get("output_tokens")).and_then(Value::as_u64) {
                    let usage = self.usage.get_or_insert_with(Usage::default);
                    usage.output_tokens = output;
                }
            }
            Some("message_stop") => self.finished = true,
            _ => {}
        }
    }

    /// The usage to record: the provider's when it gave a complete count, otherwise an
    /// estimate from the text delivered and, when the provider gave no input count, the
    /// prompt (built only then).
    pub fn usage_or_estimate(&self, prompt: impl FnOnce() -> String, complete: bool) -> Usage {
        match &self.usage {
            Some(usage) if complete => usage.clone(),
            Some(usage) => Usage {
                // The input count is known from the start; the output so far is not.
                output_tokens: usage.output_tokens.max(count_tokens(&self.delivered_text)),
                estimated: true,
                ..usage.clone()
            },
            None => Usage {
                input_tokens: count_tokens(&prompt()),
                output_tokens: count_tokens(&self.delivered_text),
                estimated: true,
                ..Usage::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn openai_usage_keeps_its_totals_and_details() {
        let usage = from_openai(&json!({
            "prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 12},
        }))
        .unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (120, 30));
        assert_eq!((usage.cache_read_input_tokens, usage.reasoning_output_tokens), (100, 12));
        assert!(!usage.estimated);
        let embeddings = from_openai(&json!({"prompt_tokens": 8, "total_tokens": 8})).unwrap();
        assert_eq!((embeddings.input_tokens, embeddings.output_tokens), (8, 0));
        assert_eq!(from_openai(&Value::Null), None);
    }

    #[test]
    fn anthropic_cache_tokens_count_as_input() {
        let usage = from_anthropic(&json!({
            "input_tokens": 10, "output_tokens": 5,
            "cache_read_input_tokens": 200, "cache_creation_input_tokens": 40,
        }))
        .unwrap();
        assert_eq!(usage.input_tokens, 250);
        assert_eq!((usage.cache_read_input_tokens, usage.cache_creation_input_tokens), (200, 40));
    }

    #[test]
    fn the_tokenizer_counts_offline() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("Hello, world! How many tokens is this?"), 10);
    }

    #[test]
    fn an_anthropic_stream_tally_follows_the_events() {
        let mut tally = StreamTally::default();
        tally.observe_anthropic_event(&json!({"type": "message_start", "message": {
            "model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}}}));
        tally.observe_anthropic_event(
            &json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi "}}),
        );
        tally.observe_anthropic_event(
            &json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "there"}}),
        );
        let partial = tally.usage_or_estimate(String::new, false);
        assert_eq!((partial.input_tokens, partial.output_tokens, partial.estimated), (9, 2, true));
        tally.observe_anthropic_event(&json!({"type": "message_delta", "usage": {"output_tokens": 4}}));
        tally.observe_anthropic_event(&json!({"type": "message_stop"}));
        assert!(tally.finished);
        let usage = tally.usage_or_estimate(String::new, true);
        assert_eq!((usage.input_tokens, usage.output_tokens, usage.estimated), (9, 4, false));
        assert_eq!(tally.delivered_text, "Hi there");
        assert_eq!(tally.response_model.as_deref(), Some("claude-x"));
    }

    #[test]
    fn an_openai_stream_without_usage_is_estimated() {
        let mut tally = StreamTally::default();
        tally.observe_openai_chunk(&json!({"model": "m", "choices": [{"delta": {"content": "Hello, world!"}}]}));
        let usage = tally.usage_or_estimate(|| "How many tokens is this?".to_owned(), true);
        assert!(usage.estimated);
        assert_eq!((usage.input_tokens, usage.output_tokens), (count_tokens("How many tokens is this?"), 4));
    }
}
