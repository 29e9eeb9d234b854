//! The provider routes end to end over real HTTP: a gateway in front of simulated
//! providers, every call's event read back from the log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use futures::StreamExt;
use serde_json::{Value, json};
use support::{NARROW_KEY, TEAM_KEY, TestGateway, http};
use tollgate_ingest::proxy::INTERACTION_ID_HEADER;
use tollgate_schemas::{Call, Interaction, ModelCall, OutcomeStatus};

fn model_call(event: &Interaction) -> &ModelCall {
    match &event.call {
        Call::ModelCall(call) => call,
        Call::ToolCall(call) => panic!("expected a model call, got {call:?}"),
    }
}

fn chat(content: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
}

async fn post(gateway: &TestGateway, path: &str, key: Option<&str>, body: Vec<u8>) -> (StatusCode, String, Value) {
    let mut request = http().post(gateway.url(path)).header("content-type", "application/json").body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let id = response.headers().get(INTERACTION_ID_HEADER).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = response.text().await.unwrap();
    (status, id, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_provider_errors_never_reaches_upstream_and_is_recorded() {
    let gateway = TestGateway::start().await;
    let huge =
        format!(r#"{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "{}"}}]}}"#, "x".repeat(70_000));
    // (route, key, body, status expected, outcome recorded (none for 401s), model recorded)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, Option<OutcomeStatus>, &'a str);
    let invalid = Some(OutcomeStatus::InvalidRequest);
    let blocked = Some(OutcomeStatus::BlockedByPolicy);
    let body = |value: Value| value.to_string().into_bytes();
    let cases: Vec<Case> = vec![
        ("/v1/chat/completions", None, body(chat("hi")), 401, None, ""),
        ("/v1/chat/completions", Some("tg-unknown"), body(chat("hi")), 401, None, ""),
        ("/v1/chat/completions", Some(TEAM_KEY), b"{not json".to_vec(), 400, invalid, ""),
        ("/v1/chat/completions", Some(TEAM_KEY), b"\xff\xfe\x00".to_vec(), 400, invalid, ""),
        ("/v1/chat/completions", Some(TEAM_KEY), br#"{"messages": []}"#.to_vec(), 400, invalid, ""),
        // Invalid bodies that name a model are recorded with it.
        ("/v1/chat/completions", Some(TEAM_KEY), br#"{"model": "gpt-4o-mini"}"#.to_vec(), 400, invalid, "gpt-4o-mini"),
        (
            "/v1/chat/completions",
            Some(TEAM_KEY),
            br#"{"model": "gpt-4o", "messages": [{"role": "us"#.to_vec(),
            400,
            invalid,
            "gpt-4o",
        ),
        (
            "/v1/chat/completions",
            Some(TEAM_KEY),
            br#"{"model": "gpt-4o", "messages": "hello", "model": "gpt-4o-mini"}"#.to_vec(),
            400,
            invalid,
            "gpt-4o-mini",
        ),
        ("/v1/chat/completions", Some(TEAM_KEY), br#"[{"model": "gpt-4o"}]"#.to_vec(), 400, invalid, ""),
        (
            "/v1/chat/completions",
            Some(TEAM_KEY),
            br#"{"model": 7, "messages": [{"role": "user"}]}"#.to_vec(),
            400,
            invalid,
            "",
        ),
        ("/v1/chat/completions", Some(TEAM_KEY), huge.into_bytes(), 413, blocked, ""),
        (
            "/v1/chat/completions",
            Some(NARROW_KEY),
            body(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})),
            403,
            blocked,
            "gpt-4o",
        ),
        (
            "/v1/chat/completions",
            Some(TEAM_KEY),
            body(json!({"model": "gpt-4o", "max_tokens": 4096, "messages": [{"role": "user", "content": "x"}]})),
            400,
            blocked,
            "gpt-4o",
        ),
        (
            "/v1/chat/completions",
            Some(TEAM_KEY),
            body(json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})),
            404,
            invalid,
            "no-such-model",
        ),
        (
            "/v1/chat/completions",
            Some(TEAM_KEY),
            body(json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]})),
            404,
            invalid,
            "claude-sonnet-4-5",
        ),
        (
            "/v1/embeddings",
            Some(TEAM_KEY),
            body(json!({"model": "text-embedding-3-small", "input": []})),
            400,
            invalid,
            "text-embedding-3-small",
        ),
        (
            "/v1/messages",
            Some(TEAM_KEY),
            body(json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]})),
            400,
            invalid,
            "claude-sonnet-4-5",
        ),
    ];
    let mut expected_ids = Vec::new();
    for (path, key, body, status, outcome, model) in &cases {
        let (got, id, error) = post(&gateway, path, *key, body.clone()).await;
        assert_eq!(got.as_u16(), *status, "{path} {:?}: {error}", String::from_utf8_lossy(&body[..body.len().min(80)]));
        if *path == "/v1/messages" {
            assert_eq!(error["type"], "error", "{error}");
            assert!(error["error"]["message"].is_string(), "{error}");
        } else {
            assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
            assert!(error["error"]["type"].is_string(), "{error}");
        }
        if let Some(outcome) = outcome {
            expected_ids.push((id, *outcome, *status, *model));
        }
    }
    // A body with a non-JSON content type.
    let response = http()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(TEAM_KEY)
        .header("content-type", "text/plain")
        .body(chat("hi").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let id = response.headers()[INTERACTION_ID_HEADER].to_str().unwrap().to_owned();
    // Refused before the body is read.
    expected_ids.push((id, OutcomeStatus::InvalidRequest, 415, ""));

    assert_eq!(gateway.upstream_requests(), 0, "no bad request reached an upstream");
    let events = gateway.interactions(expected_ids.len()).await;
    assert_eq!(events.len(), expected_ids.len(), "one event per authenticated request, none for 401s");
    for (id, outcome, status, model) in expected_ids {
        let event = events.iter().find(|event| event.id.to_string() == id).unwrap_or_else(|| panic!("no event {id}"));
        assert_eq!(event.outcome.status, outcome, "{event:?}");
        assert_eq!(model_call(event).request_model, model, "{event:?}");
        assert_eq!(event.outcome.http_status, Some(status));
        assert_eq!(event.outcome.attempts, 0);
        assert!(event.outcome.error_message.is_some());
        assert_eq!(event.principal.org_id, "acme");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_calls_pass_through_and_record_principal_model_and_usage() {
    let gateway = TestGateway::start().await;
    let tool_call = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "a_parameter_from_next_year": {"nested": [1, 2.5, "x"]},
        "max_tokens": 100,
    });
    let (status, chat_id, body) =
        post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), tool_call.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "gpt-4o-2024-08-06", "the routed model name went upstream");
    let embed = json!({"model": "text-embedding-3-small", "input": ["one", "two"]});
    let (status, embed_id, body) =
        post(&gateway, "/v1/embeddings", Some(TEAM_KEY), embed.to_string().into_bytes()).await;
    assert_eq!((status.as_u16(), body["data"].as_array().unwrap().len()), (200, 2));
    let message = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hello, Claude."}]});
    let (status, message_id, body) =
        post(&gateway, "/v1/messages", Some(TEAM_KEY), message.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let claude_usage = body["usage"].clone();

    let events = gateway.interactions(3).await;
    assert_eq!(events.len(), 3);
    let by_id = |id: &str| events.iter().find(|event| event.id.to_string() == id).unwrap();

    let chat_event = by_id(&chat_id);
    let call = model_call(chat_event);
    assert_eq!((call.request_model.as_str(), call.routed_model.as_deref()), ("gpt-4o", Some("gpt-4o-2024-08-06")));
    assert_eq!((call.provider.as_deref(), call.upstream.as_deref()), (Some("openai"), Some("primary")));
    assert_eq!(call.request_max_tokens, Some(100));
    assert_eq!(chat_event.outcome.status, OutcomeStatus::Ok);
    assert_eq!((chat_event.outcome.attempts, chat_event.outcome.fallback_used), (1, false));
    let principal = &chat_event.principal;
    assert_eq!(
        (
            principal.org_id.as_str(),
            principal.team_id.as_deref(),
            principal.user_id.as_deref(),
            principal.key_id.as_str()
        ),
        ("acme", Some("research"), Some("ada"), "key_research")
    );
    let prompt_tokens = tollgate_ingest::simulator::simulated_tokens("What is the weather in Paris?");
    assert_eq!(chat_event.usage.input_tokens, prompt_tokens);
    assert!(chat_event.usage.output_tokens > 0 && !chat_event.usage.estimated);
    assert_eq!(chat_event.content.request_bytes, u64::try_from(tool_call.to_string().len()).unwrap());
    assert_eq!(chat_event.content.request_sha256.as_ref().map(String::len), Some(64));
    assert!(chat_event.timing.duration_micros >= chat_event.timing.gateway_overhead_micros);
    assert_eq!(chat_event.gateway_instance, gateway.instance);

    let embed_event = by_id(&embed_id);
    assert_eq!(model_call(embed_event).operation, tollgate_schemas::GenAiOperation::Embeddings);
    assert!(embed_event.usage.input_tokens > 0);

    let message_event = by_id(&message_id);
    assert_eq!(model_call(message_event).provider.as_deref(), Some("anthropic"));
    assert_eq!(message_event.usage.input_tokens, claude_usage["input_tokens"].as_u64().unwrap());
    assert_eq!(message_event.usage.output_tokens, claude_usage["output_tokens"].as_u64().unwrap());
}

/// Reads an SSE response to the end and returns the `data` payloads.
async fn stream_data(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    text.split("\n\n").filter_map(|frame| frame.strip_prefix("data: ")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_metered_and_the_usage_chunk_is_only_sent_when_asked() {
    let gateway = TestGateway::start().await;
    let mut ids = Vec::new();
    for client_asks in [false, true] {
        let mut body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Count to three."}]});
        if client_asks {
            body["stream_options"] = json!({"include_usage": true});
        }
        let response =
            http().post(gateway.url("/v1/chat/completions")).bearer_auth(TEAM_KEY).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        ids.push(response.headers()[INTERACTION_ID_HEADER].to_str().unwrap().to_owned());
        let data = stream_data(response).await;
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let usage_chunks = data
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|chunk| chunk["usage"].is_object())
            .count();
        assert_eq!(usage_chunks, usize::from(client_asks), "client asked for usage: {client_asks}");
    }
    let events = gateway.interactions(2).await;
    for event in &events {
        assert!(ids.contains(&event.id.to_string()));
        assert_eq!(event.outcome.status, OutcomeStatus::Ok);
        assert!(model_call(event).streaming);
        assert!(!event.usage.estimated, "the upstream reported usage");
        assert_eq!(event.usage.input_tokens, tollgate_ingest::simulator::simulated_tokens("Count to three."));
        assert!(event.timing.time_to_first_token_micros.is_some());
    }

    // Anthropic's event stream passes through with its usage.
    let response = http()
        .post(gateway.url("/v1/messages"))
        .header("x-api-key", TEAM_KEY)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "Stream, Claude."}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("event: message_start") && text.contains("event: message_stop"), "{text}");
    let events = gateway.interactions(3).await;
    let claude = events.iter().find(|event| model_call(event).endpoint == "/v1/messages").unwrap();
    assert_eq!(claude.usage.input_tokens, tollgate_ingest::simulator::simulated_tokens("Stream, Claude."));
    assert!(claude.usage.output_tokens > 1 && !claude.usage.estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_is_recorded_with_what_it_received() {
    let gateway = TestGateway::start().await;
    gateway.primary.set_delay(Duration::from_millis(150));
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Please write a long answer about the sea."}]});
    let response =
        http().post(gateway.url("/v1/chat/completions")).bearer_auth(TEAM_KEY).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut chunks = response.bytes_stream();
    let mut received = String::new();
    // The role chunk, then two chunks of text.
    while received.matches("data: ").count() < 3 {
        received.push_str(std::str::from_utf8(&chunks.next().await.unwrap().unwrap()).unwrap());
    }
    drop(chunks);
    let events = gateway.interactions(1).await;
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.outcome.status, OutcomeStatus::ClientDisconnected);
    assert!(event.usage.estimated, "{:?}", event.usage);
    assert!(event.usage.output_tokens >= 2, "{:?}", event.usage);
    assert!(event.usage.input_tokens > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_falls_back_and_the_event_records_every_attempt() {
    let gateway = TestGateway::start().await;
    gateway.primary.fail_with(Some(StatusCode::INTERNAL_SERVER_ERROR));
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]});
    let (status, id, reply) =
        post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["model"], "llama-3.1-70b");
    assert_eq!((gateway.primary.requests(), gateway.backup.requests()), (2, 1));

    // A provider that is too slow: two timeouts, then the backup.
    gateway.primary.fail_with(None);
    gateway.primary.set_delay(Duration::from_millis(2_500));
    let (status, slow_id, _) =
        post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body.to_string().into_bytes()).await;
    assert_eq!(status, 200);

    // A 400 from the provider is the client's problem: passed back, not retried.
    gateway.primary.set_delay(Duration::ZERO);
    gateway.primary.fail_with(Some(StatusCode::BAD_REQUEST));
    let mini = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]});
    let before = gateway.primary.requests();
    let (status, bad_id, reply) =
        post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), mini.to_string().into_bytes()).await;
    assert_eq!(status, 400);
    assert!(reply["error"]["message"].as_str().unwrap().contains("simulated upstream failure"), "{reply}");
    assert_eq!(gateway.primary.requests(), before + 1);

    // A model whose only provider keeps failing: the provider's last error comes back.
    gateway.primary.fail_with(Some(StatusCode::SERVICE_UNAVAILABLE));
    let (status, down_id, _) =
        post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), mini.to_string().into_bytes()).await;
    assert_eq!(status, 503);

    let events = gateway.interactions(4).await;
    assert_eq!(events.len(), 4);
    let by_id = |id: &str| events.iter().find(|event| event.id.to_string() == id).unwrap();
    let fallback = by_id(&id);
    assert_eq!(fallback.outcome.status, OutcomeStatus::Ok);
    assert_eq!((fallback.outcome.attempts, fallback.outcome.fallback_used), (3, true));
    let call = model_call(fallback);
    assert_eq!((call.upstream.as_deref(), call.provider.as_deref()), (Some("backup"), Some("vllm")));
    assert_eq!(call.routed_model.as_deref(), Some("llama-3.1-70b"));
    assert!(fallback.timing.gateway_overhead_micros < fallback.timing.duration_micros);

    let slow = by_id(&slow_id);
    assert_eq!((slow.outcome.status, slow.outcome.attempts, slow.outcome.fallback_used), (OutcomeStatus::Ok, 3, true));
    assert!(slow.timing.duration_micros >= 3_000_000, "two 1.5 s timeouts: {:?}", slow.timing);

    let bad = by_id(&bad_id);
    assert_eq!(
        (bad.outcome.status, bad.outcome.http_status, bad.outcome.attempts),
        (OutcomeStatus::UpstreamError, Some(400), 1)
    );
    let down = by_id(&down_id);
    assert_eq!(
        (down.outcome.status, down.outcome.http_status, down.outcome.attempts),
        (OutcomeStatus::UpstreamError, Some(503), 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_is_a_502_with_both_attempts_recorded() {
    let extra = r#"
        [[upstreams]]
        name = "nowhere"
        kind = "openai"
        base_url = "http://127.0.0.1:9"
        connect_timeout_ms = 200

        [[models]]
        name = "offline"
        targets = [{ upstream = "nowhere" }]
    "#;
    let gateway = TestGateway::start_with(extra, None, None).await;
    let body = json!({"model": "offline", "messages": [{"role": "user", "content": "hello"}]});
    let (status, id, reply) =
        post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body.to_string().into_bytes()).await;
    assert_eq!(status, 502, "{reply}");
    assert_eq!(reply["error"]["code"], "upstream_unreachable");
    let events = gateway.interactions(1).await;
    assert_eq!(events[0].id.to_string(), id);
    assert_eq!((events[0].outcome.status, events[0].outcome.attempts), (OutcomeStatus::UpstreamUnreachable, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_sends_traffic_straight_to_the_fallback() {
    let routing = "[routing]\nattempts_per_target = 2\nbackoff_initial_ms = 1\nbackoff_max_ms = 2\nbreaker_failure_threshold = 2\nbreaker_cool_down_ms = 60000\n";
    let gateway = TestGateway::start_with(routing, None, None).await;
    gateway.primary.fail_with(Some(StatusCode::BAD_GATEWAY));
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]});
    let (status, first, _) =
        post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body.to_string().into_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(gateway.primary.requests(), 2, "two failures opened the breaker");
    let (status, second, _) =
        post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body.to_string().into_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(gateway.primary.requests(), 2, "the open breaker kept traffic away from the primary");
    assert_eq!(gateway.backup.requests(), 2);
    let state = gateway.state.routes.load().upstreams.get("primary").unwrap().breaker.state();
    assert_eq!(state, tollgate_ingest::breaker::BreakerState::Open);

    let events = gateway.interactions(2).await;
    let by_id = |id: &str| events.iter().find(|event| event.id.to_string() == id).unwrap();
    assert_eq!(by_id(&first).outcome.attempts, 3);
    assert_eq!((by_id(&second).outcome.attempts, by_id(&second).outcome.fallback_used), (1, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_attempts_events_and_breakers() {
    let gateway = TestGateway::start().await;
    gateway.primary.fail_with(Some(StatusCode::INTERNAL_SERVER_ERROR));
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]});
    let (status, _, _) = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body.to_string().into_bytes()).await;
    assert_eq!(status, 200);
    let (status, _, _) = post(&gateway, "/v1/chat/completions", None, body.to_string().into_bytes()).await;
    assert_eq!(status, 401);
    let (status, _, _) = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), b"{".to_vec()).await;
    assert_eq!(status, 400);
    gateway.state.recorder.flush(Duration::from_secs(5)).await;

    let response = http().get(gateway.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for line in [
        r#"tollgate_gateway_requests_total{route="/v1/chat/completions",outcome="ok"} 1"#,
        r#"tollgate_gateway_requests_total{route="/v1/chat/completions",outcome="invalid_request"} 1"#,
        r#"tollgate_gateway_unauthenticated_requests_total{route="/v1/chat/completions"} 1"#,
        r#"tollgate_gateway_upstream_attempts_total{upstream="primary",result="server_error"} 2"#,
        r#"tollgate_gateway_upstream_attempts_total{upstream="backup",result="ok"} 1"#,
        r#"tollgate_gateway_request_duration_seconds_count{route="/v1/chat/completions"} 2"#,
        "tollgate_gateway_events_published_total 2",
        "tollgate_gateway_events_acknowledged_total 2",
        "tollgate_gateway_events_dropped_total 0",
        "tollgate_gateway_spooling 0",
        r#"tollgate_gateway_circuit_breaker_open{upstream="primary"} 0"#,
    ] {
        assert!(text.lines().any(|got| got == line), "missing `{line}` in:\n{text}");
    }
    let ready = http().get(gateway.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_context_goes_upstream_with_the_gateway_as_parent_and_credentials_stay_home() {
    let gateway = TestGateway::start().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = http()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(TEAM_KEY)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("tracestate", "vendor=opaque")
        .json(&chat("hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let upstream = gateway.primary.last_headers();
    let traceparent = upstream["traceparent"].to_str().unwrap().to_owned();
    assert!(traceparent.starts_with(&format!("00-{trace_id}-")) && traceparent.ends_with("-01"), "{traceparent}");
    assert!(!traceparent.contains("00f067aa0ba902b7"), "the gateway's own span is the parent upstream");
    assert_eq!(upstream["tracestate"], "vendor=opaque");
    assert!(upstream.get("authorization").is_none(), "the virtual key never goes upstream");
    let events = gateway.interactions(1).await;
    let trace = events[0].trace.as_ref().unwrap();
    assert_eq!(trace.traceparent(), traceparent, "the event carries the span the upstream saw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_capture_follows_the_configured_mode() {
    let sha256 = |bytes: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
    let request = chat("Write to jane.doe@example.com about the invoice").to_string();
    for mode in ["off", "digests", "full", "redacted"] {
        let gateway = TestGateway::start_with(&format!("[capture]\nmode = \"{mode}\"\n"), None, None).await;
        let response = http()
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(TEAM_KEY)
            .header("content-type", "application/json")
            .body(request.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let received = response.bytes().await.unwrap();
        let events = gateway.interactions(1).await;
        let content = &events[0].content;
        assert_eq!(content.request_bytes, request.len() as u64, "{mode}: sizes are always kept");
        assert_eq!(content.response_bytes, received.len() as u64, "{mode}");
        if mode == "off" {
            assert_eq!((&content.request_sha256, &content.response_sha256), (&None, &None));
        } else {
            assert_eq!(content.request_sha256.as_deref(), Some(sha256(request.as_bytes()).as_str()), "{mode}");
            assert_eq!(content.response_sha256.as_deref(), Some(sha256(&received).as_str()), "{mode}");
        }
        match mode {
            "off" | "digests" => assert!(content.captured.is_none(), "{mode}"),
            "full" => {
                let captured = content.captured.as_ref().unwrap();
                assert_eq!((captured.request.as_str(), captured.redacted), (request.as_str(), false));
                assert_eq!(captured.response.as_deref().map(str::as_bytes), Some(&received[..]));
            }
            _ => {
                let captured = content.captured.as_ref().unwrap();
                assert!(captured.redacted, "{captured:?}");
                assert!(!captured.request.contains("jane.doe") && captured.request.contains("[REDACTED:email]"));
                assert!(!captured.response.as_ref().unwrap().contains("jane.doe"), "the echoed reply is redacted too");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_is_ended_and_recorded_as_a_timeout() {
    let gateway = TestGateway::start().await;
    // Headers at once, then silence longer than the upstream's 1.5 s request timeout.
    gateway.primary.set_stream_gap(Duration::from_secs(3));
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hello"}]});
    let started = std::time::Instant::now();
    let response =
        http().post(gateway.url("/v1/chat/completions")).bearer_auth(TEAM_KEY).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.is_err(), "the client sees an aborted stream, not a clean end");
    assert!(started.elapsed() < Duration::from_secs(3), "ended by the gateway, not by the upstream");
    let events = gateway.interactions(1).await;
    assert_eq!(events[0].outcome.status, OutcomeStatus::Timeout);
    assert_eq!(events[0].outcome.attempts, 1, "nothing is retried once the stream has begun");
}
