//! The official OpenAI and Anthropic Python SDKs against the gateway, recording to the
//! real Kafka-API broker that `scripts/test` starts: every SDK call gets what it would get
//! from the provider (typed errors included), and every call that carried a valid key is
//! one event on the broker with the right principal, model, usage and outcome.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::Value;
use support::{TEAM_KEY, TestGateway, simulator};
use tollgate_eventlog::testing::{KAFKA_BROKERS_ENV, required_env};
use tollgate_eventlog::{EventLog, KafkaConfig, KafkaLog};
use tollgate_ingest::simulator::simulated_tokens;
use tollgate_schemas::{Call, OutcomeStatus};

const PYTHON_ENV: &str = "TOLLGATE_TEST_PYTHON";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_through_the_gateway_with_every_call_on_the_broker() {
    let python = required_env(PYTHON_ENV);
    let mut kafka = KafkaConfig::new(required_env(KAFKA_BROKERS_ENV));
    tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());

    let (limited_address, limited) = simulator().await;
    limited.fail_with(Some(StatusCode::TOO_MANY_REQUESTS));
    let extra = format!(
        r#"
        [[upstreams]]
        name = "limited"
        kind = "openai"
        base_url = "http://{limited_address}"

        [[models]]
        name = "rate-limited"
        targets = [{{ upstream = "limited" }}]
        "#
    );
    let mut gateway = TestGateway::start_with(&extra, Some(Arc::clone(&log)), None).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/gateway_check.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .arg(format!("http://{}", gateway.address))
        .arg(TEAM_KEY)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "the SDK script failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();

    // What the SDKs saw.
    assert!(result["chat"]["content"].as_str().unwrap().contains("Name a prime number."));
    assert_eq!(result["chat"]["model"], "gpt-4o-2024-08-06");
    assert_eq!(result["chat"]["prompt_tokens"], simulated_tokens("Name a prime number."));
    assert!(result["chat_stream"]["content"].as_str().unwrap().contains("Stream please."));
    assert_eq!(result["chat_stream"]["usage_chunks"], 0, "no usage chunk the client did not ask for");
    let streamed = result["chat_stream_usage"]["content"].as_str().unwrap();
    assert_eq!(result["chat_stream_usage"]["completion_tokens"], simulated_tokens(streamed));
    assert_eq!(result["tools"]["finish_reason"], "stop");
    assert_eq!(result["embeddings"]["count"], 2);
    let models: Vec<&str> = result["models"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(models, ["claude-sonnet-4-5", "gpt-4o", "gpt-4o-mini", "rate-limited", "text-embedding-3-small"]);
    assert!(result["messages"]["content"].as_str().unwrap().contains("Hello, Claude."));
    assert_eq!(result["messages"]["input_tokens"], simulated_tokens("Hello, Claude."));
    let claude_streamed = result["messages_stream"]["content"].as_str().unwrap();
    assert_eq!(result["messages_stream"]["output_tokens"], simulated_tokens(claude_streamed));
    for (name, class, status) in [
        ("openai_401", "AuthenticationError", 401),
        ("anthropic_401", "AuthenticationError", 401),
        ("openai_404", "NotFoundError", 404),
        ("anthropic_404", "NotFoundError", 404),
        ("openai_413", "APIStatusError", 413),
        ("anthropic_413", "ContentTooLargeError", 413),
        ("openai_429", "RateLimitError", 429),
    ] {
        assert_eq!(result[name]["raised"], class, "{name}: {}", result[name]);
        assert_eq!(result[name]["status"], status, "{name}: {}", result[name]);
    }

    // What the broker holds: one event per call that carried a valid key (the two 401s
    // have no principal to record against, and listing models is not an interaction).
    gateway.stop().await;
    let events = gateway.interactions(12).await;
    assert_eq!(events.len(), 12, "exactly one event per recorded call");
    let mut outcomes: BTreeMap<(String, &str), usize> = BTreeMap::new();
    for event in &events {
        assert_eq!(event.principal.key_id, "key_research");
        assert_eq!(event.principal.team_id.as_deref(), Some("research"));
        let Call::ModelCall(call) = &event.call else { panic!("{event:?}") };
        *outcomes.entry((call.request_model.clone(), event.outcome.status.as_str())).or_default() += 1;
        if event.outcome.status == OutcomeStatus::Ok {
            assert!(event.usage.input_tokens > 0 && !event.usage.estimated, "{event:?}");
        }
    }
    let expected: BTreeMap<(String, &str), usize> = [
        (("gpt-4o".to_owned(), "ok"), 4),
        (("text-embedding-3-small".to_owned(), "ok"), 1),
        (("claude-sonnet-4-5".to_owned(), "ok"), 2),
        (("no-such-model".to_owned(), "invalid_request"), 1),
        (("claude-nonexistent".to_owned(), "invalid_request"), 1),
        // A body over the size limit is refused before it is parsed.
        ((String::new(), "blocked_by_policy"), 2),
        (("rate-limited".to_owned(), "upstream_error"), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(outcomes, expected);
    assert_eq!(limited.requests(), 2, "an upstream 429 is retried once on the same target");
}
