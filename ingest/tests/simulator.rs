//! The simulated provider speaks the OpenAI and Anthropic wire formats, JSON and streams.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tollgate_ingest::simulator::{SimulatorControl, router, simulated_tokens};
use tower::ServiceExt;

async fn call(control: &Arc<SimulatorControl>, method: &str, path: &str, body: Value) -> (StatusCode, String, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router(Arc::clone(control)).oneshot(request).await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|value| value.to_str().unwrap().to_owned()).unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The `data:` payloads of an SSE body, with their `event:` names.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn chat_completion_json_reports_usage_counted_from_the_text() {
    let control = Arc::new(SimulatorControl::default());
    let prompt = "What is the capital of France?";
    let (status, _, body) = call(
        &control,
        "POST",
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&body).unwrap();
    let reply = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(reply.contains(prompt));
    assert_eq!(body["usage"]["prompt_tokens"], simulated_tokens(prompt));
    assert_eq!(body["usage"]["completion_tokens"], simulated_tokens(reply));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(control.requests(), 1);
}

#[tokio::test]
async fn chat_stream_ends_with_done_and_carries_usage_only_when_asked() {
    let control = Arc::new(SimulatorControl::default());
    for include_usage in [false, true] {
        let mut request =
            json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hello there"}]});
        if include_usage {
            request["stream_options"] = json!({"include_usage": true});
        }
        let (status, content_type, body) = call(&control, "POST", "/v1/chat/completions", request).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        let events = sse_events(&body);
        assert_eq!(events.last().unwrap().1, "[DONE]");
        let chunks: Vec<Value> =
            events[..events.len() - 1].iter().map(|(_, data)| serde_json::from_str(data).unwrap()).collect();
        let text: String = chunks.iter().filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str()).collect();
        assert!(text.contains("hello there"), "{text}");
        let usage_chunks: Vec<&Value> = chunks.iter().filter(|chunk| !chunk["usage"].is_null()).collect();
        if include_usage {
            assert_eq!(usage_chunks.len(), 1);
            assert_eq!(usage_chunks[0]["choices"], json!([]));
            assert_eq!(usage_chunks[0]["usage"]["completion_tokens"], simulated_tokens(&text));
        } else {
            assert!(usage_chunks.is_empty());
        }
    }
}

#[tokio::test]
async fn anthropic_stream_has_the_event_sequence_of_the_messages_api() {
    let control = Arc::new(SimulatorControl::default());
    let (status, _, body) = call(
        &control,
        "POST",
        "/v1/messages",
        json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_events(&body);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_deref().unwrap()).collect();
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    assert!(names[3..names.len() - 3].iter().all(|name| *name == "content_block_delta"));
    for (name, data) in &events {
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["type"], name.as_deref().unwrap(), "each event's data names its type");
    }
}

#[tokio::test]
async fn anthropic_json_and_embeddings_and_models() {
    let control = Arc::new(SimulatorControl::default());
    let (status, _, body) = call(
        &control,
        "POST",
        "/v1/messages",
        json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((body["type"].as_str(), body["stop_reason"].as_str()), (Some("message"), Some("end_turn")));
    assert_eq!(body["usage"]["input_tokens"], simulated_tokens("hi"));

    let (status, _, body) =
        call(&control, "POST", "/v1/embeddings", json!({"model": "text-embedding-3-small", "input": ["a", "bc"]}))
            .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);

    let (status, _, body) = call(&control, "GET", "/v1/models", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"gpt-4o\""));
}

fn minimal_messages_request() -> Value {
    json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
}

#[tokio::test]
async fn injected_failures_come_back_in_the_provider_error_layout() {
    let control = Arc::new(SimulatorControl::default());
    control.fail_with(Some(StatusCode::INTERNAL_SERVER_ERROR));
    let (status, _, body) = call(
        &control,
        "POST",
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "server_error");
    control.fail_with(Some(StatusCode::TOO_MANY_REQUESTS));
    let (status, _, body) = call(&control, "POST", "/v1/messages", minimal_messages_request()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "rate_limit_error");
    control.fail_with(Some(StatusCode::UNAUTHORIZED));
    let (status, _, body) = call(&control, "POST", "/v1/messages", minimal_messages_request()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "authentication_error");
    control.fail_with(None);
    let (status, _, _) = call(&control, "GET", "/v1/models", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(control.requests(), 4);
}
