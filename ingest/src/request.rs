//! Parsing and validating provider request bodies.
//!
//! The gateway reads only the fields governance needs (model, streaming, token limits) and
//! keeps the rest of the body as it came, so parameters it does not know (tools, response
//! formats, fields added by providers later) pass through untouched. Every rule a body
//! breaks becomes an [`ApiError`] naming the parameter, in the words the provider would use;
//! nothing here panics, whatever the bytes.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use tollgate_schemas::limits::MAX_NAME_BYTES;

use crate::error::{ApiError, ErrorClass};

/// An OpenAI-compatible `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCompletionRequest {
    /// The whole body, unknown fields included.
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// `max_completion_tokens`, or the older `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Whether the client itself asked for a usage chunk (`stream_options.include_usage`).
    pub client_requested_usage: bool,
    /// `n`: how many choices to generate, each up to `max_tokens`. 1 when absent.
    pub choices: u64,
}

/// The most choices (`n`) one chat completion may ask for, as OpenAI allows.
pub const MAX_CHOICES: u64 = 128;

/// An OpenAI-compatible `POST /v1/embeddings` body.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub body: Map<String, Value>,
    pub model: String,
}

/// An Anthropic-compatible `POST /v1/messages` body.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// Required by the Messages API.
    pub max_tokens: u64,
}

/// Parses a chat completions body.
pub fn parse_chat_completion(bytes: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    let body = json_object(bytes)?;
    let model = required_model(&body)?;
    messages(&body)?;
    let stream = optional_bool(&body, "stream")?.unwrap_or(false);
    let max_tokens = match optional_count(&body, "max_completion_tokens")? {
        Some(limit) => Some(limit),
        None => optional_count(&body, "max_tokens")?,
    };
    let client_requested_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(include)) => *include,
            Some(_) => return Err(ApiError::invalid("stream_options.include_usage", "must be a boolean")),
        },
        Some(_) => return Err(ApiError::invalid("stream_options", "must be an object")),
    };
    if client_requested_usage && !stream {
        return Err(ApiError::invalid("stream_options", "stream_options is only allowed when stream is true"));
    }
    let choices = match optional_count(&body, "n")? {
        None => 1,
        Some(n @ 1..=MAX_CHOICES) => n,
        Some(n) => return Err(ApiError::invalid("n", format!("'n' is {n}; it must be between 1 and {MAX_CHOICES}."))),
    };
    Ok(ChatCompletionRequest { body, model, stream, max_tokens, client_requested_usage, choices })
}

/// Parses an embeddings body.
pub fn parse_embeddings(bytes: &[u8]) -> Result<EmbeddingsRequest, ApiError> {
    let body = json_object(bytes)?;
    let model = required_model(&body)?;
    let valid_input = match body.get("input") {
        Some(Value::String(text)) => !text.is_empty(),
        Some(Value::Array(items)) => {
            !items.is_empty()
                && (items.iter().all(Value::is_string)
                    || items.iter().all(Value::is_u64)
                    || items.iter().all(|item| item.as_array().is_some_and(|tokens| tokens.iter().all(Value::is_u64))))
        }
        _ => false,
    };
    if !valid_input {
        return Err(ApiError::invalid(
            "input",
            "'input' must be a non-empty string, array of strings, array of token ids, or array of token id arrays",
        ));
    }
    Ok(EmbeddingsRequest { body, model })
}

/// Parses an Anthropic messages body.
pub fn parse_messages(bytes: &[u8]) -> Result<MessagesRequest, ApiError> {
    let body = json_object(bytes)?;
    let model = required_model(&body)?;
    messages(&body)?;
    let max_tokens = match optional_count(&body, "max_tokens")? {
        Some(limit) if limit > 0 => limit,
        Some(_) => return Err(ApiError::invalid("max_tokens", "max_tokens: must be greater than or equal to 1")),
        None => return Err(ApiError::invalid("max_tokens", "max_tokens: Field required")),
    };
    let stream = optional_bool(&body, "stream")?.unwrap_or(false);
    Ok(MessagesRequest { body, model, stream, max_tokens })
}

/// The model a body names, whether or not the body is valid: the string value of the
/// last top-level `model` member found before the end of the body or its first syntax
/// error. A refused request is recorded with it, so the record says what was asked for.
pub fn named_model(bytes: &[u8]) -> Option<String> {
    let mut named = None;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    // An error only ends the search: what was found before it stands.
    let _ = ModelSeed(&mut named).deserialize(&mut deserializer);
    named
}

/// Reads a JSON object's members in order, noting each `model` that is a string.
struct ModelSeed<'a>(&'a mut Option<String>);

impl<'de> DeserializeSeed<'de> for ModelSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ModelSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<(), A::Error> {
        while let Some(name) = members.next_key::<std::borrow::Cow<'de, str>>()? {
            if name == "model" {
                // Later members win, as they do when the body is parsed.
                *self.0 = match members.next_value::<Value>()? {
                    Value::String(model) => Some(model),
                    _ => None,
                };
            } else {
                members.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The body as a JSON object, or the error a provider gives for anything else.
fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::new(ErrorClass::InvalidRequest, "The request body is not valid UTF-8."));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(ErrorClass::InvalidRequest, "The request body is empty; expected a JSON object."));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(_) => Err(ApiError::new(ErrorClass::InvalidRequest, "The request body must be a JSON object.")),
        Err(error) => Err(ApiError::new(
            ErrorClass::InvalidRequest,
            format!("We could not parse the JSON body of your request: {error}."),
        )),
    }
}

fn required_model(body: &Map<String, Value>) -> Result<String, ApiError> {
    match body.get("model") {
        Some(Value::String(model)) if model.len() > MAX_NAME_BYTES => Err(ApiError::invalid(
            "model",
            format!("'model' is {} bytes long; model names are at most {MAX_NAME_BYTES} bytes.", model.len()),
        )),
        Some(Value::String(model)) if !model.trim().is_empty() => Ok(model.clone()),
        Some(Value::String(_)) => Err(ApiError::invalid("model", "'model' must not be empty.")),
        None | Some(Value::Null) => Err(ApiError::invalid("model", "You must provide a model parameter.")),
        Some(_) => Err(ApiError::invalid("model", "'model' must be a string.")),
    }
}

/// `messages` must be a non-empty array of objects with a string `role`; the content of
/// each message is the provider's business and passes through unchecked.
fn messages(body: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(value) = body.get("messages") else {
        return Err(ApiError::invalid("messages", "Missing required parameter: 'messages'."));
    };
    let Some(messages) = value.as_array() else {
        return Err(ApiError::invalid("messages", "'messages' must be an array."));
    };
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "'messages' must contain at least one message."));
    }
    for (index, message) in messages.iter().enumerate() {
        let role = message.as_object().and_then(|message| message.get("role"));
        if !role.is_some_and(Value::is_string) {
            return Err(ApiError::invalid(
                &format!("messages[{index}]"),
                format!("messages[{index}] must be an object with a string 'role'."),
            ));
        }
    }
    Ok(())
}

fn optional_bool(body: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => Err(ApiError::invalid(name, format!("'{name}' must be a boolean."))),
    }
}

fn optional_count(body: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(count) => Ok(Some(count)),
            None => Err(ApiError::invalid(name, format!("'{name}' must be a non-negative integer."))),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chat(body: Value) -> Result<ChatCompletionRequest, ApiError> {
        parse_chat_completion(body.to_string().as_bytes())
    }

    #[test]
    fn a_chat_request_keeps_unknown_fields() {
        let request = chat(json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
            "response_format": {"type": "json_object"},
            "a_parameter_from_next_year": 7,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 100,
            "max_completion_tokens": 64,
        }))
        .unwrap();
        assert_eq!(request.model, "gpt-4o");
        assert!(request.stream && request.client_requested_usage);
        assert_eq!(request.max_tokens, Some(64), "max_completion_tokens wins over max_tokens");
        assert_eq!(request.body["a_parameter_from_next_year"], 7);
        assert_eq!(request.body["tools"][0]["function"]["name"], "lookup");
    }

    #[test]
    fn chat_errors_name_the_parameter() {
        let cases = [
            (json!({"messages": [{"role": "user", "content": "x"}]}), "model"),
            (json!({"model": 5, "messages": [{"role": "user"}]}), "model"),
            (json!({"model": " ", "messages": [{"role": "user"}]}), "model"),
            (json!({"model": "m".repeat(MAX_NAME_BYTES + 1), "messages": [{"role": "user"}]}), "model"),
            (json!({"model": "m"}), "messages"),
            (json!({"model": "m", "messages": "hello"}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (json!({"model": "m", "messages": [{"content": "no role"}]}), "messages[0]"),
            (json!({"model": "m", "messages": [{"role": "user"}], "stream": "yes"}), "stream"),
            (json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": -1}), "max_tokens"),
            (json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": 1.5}), "max_tokens"),
            (json!({"model": "m", "messages": [{"role": "user"}], "n": 0}), "n"),
            (json!({"model": "m", "messages": [{"role": "user"}], "n": 129}), "n"),
            (json!({"model": "m", "messages": [{"role": "user"}], "n": "2"}), "n"),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "stream_options": {"include_usage": true}}),
                "stream_options",
            ),
        ];
        for (body, param) in cases {
            let error = chat(body.clone()).unwrap_err();
            assert_eq!(error.class, ErrorClass::InvalidRequest, "{body}");
            assert_eq!(error.param.as_deref(), Some(param), "{body}: {error:?}");
        }
    }

    #[test]
    fn malformed_bodies_are_invalid_requests() {
        for bytes in [&b""[..], b"   ", b"{", b"[1, 2]", b"\"text\"", b"{\"model\": }", b"\xff\xfe{}", b"{} trailing"] {
            let error = parse_chat_completion(bytes).unwrap_err();
            assert_eq!(error.class, ErrorClass::InvalidRequest, "{bytes:?}");
            assert_eq!(error.param, None);
        }
        let error = parse_chat_completion(b"\xff\xfe{}").unwrap_err();
        assert!(error.message.contains("UTF-8"), "{error:?}");
    }

    #[test]
    fn embeddings_need_a_usable_input() {
        let ok = |input: Value| parse_embeddings(json!({"model": "e", "input": input}).to_string().as_bytes());
        assert!(ok(json!("text")).is_ok());
        assert!(ok(json!(["a", "b"])).is_ok());
        assert!(ok(json!([1, 2, 3])).is_ok());
        assert!(ok(json!([[1, 2], [3]])).is_ok());
        for bad in [json!(""), json!([]), json!(["a", 1]), json!({"text": "a"}), json!(null)] {
            assert_eq!(ok(bad.clone()).unwrap_err().param.as_deref(), Some("input"), "{bad}");
        }
    }

    #[test]
    fn anthropic_messages_require_max_tokens() {
        let parse = |body: Value| parse_messages(body.to_string().as_bytes());
        let request = parse(json!({
            "model": "claude-sonnet-4-5", "max_tokens": 256, "stream": true,
            "system": "be brief", "messages": [{"role": "user", "content": "hi"}],
        }))
        .unwrap();
        assert_eq!((request.max_tokens, request.stream), (256, true));
        assert_eq!(request.body["system"], "be brief");
        let missing = parse(json!({"model": "c", "messages": [{"role": "user", "content": "hi"}]})).unwrap_err();
        assert_eq!(missing.param.as_deref(), Some("max_tokens"));
        let zero =
            parse(json!({"model": "c", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]})).unwrap_err();
        assert_eq!(zero.param.as_deref(), Some("max_tokens"));
    }
}
