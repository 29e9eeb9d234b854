//! Generated requests, most of them hostile, through the whole gateway (`oneshot` on the
//! real router in front of a simulated provider): every one gets a provider-style answer
//! with an expected status, the gateway never fails, and every request that carried a
//! valid key is recorded exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{TEAM_KEY, TestGateway, json_value};
use tollgate_ingest::app::app;
use tower::ServiceExt;

/// A body: random bytes, random JSON, or a valid request with one field replaced.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let valid = json!({
        "model": "gpt-4o-mini", "max_tokens": 32,
        "messages": [{"role": "user", "content": "hello"}], "input": "hello",
    });
    let valid_bytes = valid.to_string().into_bytes();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        json_value().prop_map(|value| value.to_string().into_bytes()),
        (prop_oneof![Just("model"), Just("messages"), Just("max_tokens"), Just("stream"), Just("input")], json_value())
            .prop_map(move |(field, value)| {
                let mut body = valid.clone();
                body[field] = value;
                body.to_string().into_bytes()
            }),
        Just(valid_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_request_gets_a_provider_style_answer_and_is_recorded_once(
        cases in proptest::collection::vec((
            prop_oneof![Just("/v1/chat/completions"), Just("/v1/embeddings"), Just("/v1/messages")],
            prop_oneof![Just(Some(TEAM_KEY)), Just(Some("tg-wrong")), Just(None)],
            prop_oneof![Just(Some("application/json")), Just(Some("text/plain")), Just(None)],
            body(),
        ), 1..8)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let gateway = TestGateway::start().await;
            let recorded = AtomicUsize::new(0);
            for (route, key, content_type, body) in &cases {
                let mut request = Request::post(*route);
                if let Some(key) = key {
                    request = request.header("authorization", format!("Bearer {key}"));
                }
                if let Some(content_type) = content_type {
                    request = request.header("content-type", *content_type);
                }
                let response = app(gateway.state.clone()).oneshot(request.body(Body::from(body.clone())).unwrap()).await.unwrap();
                let status = response.status().as_u16();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                assert!(
                    [200, 400, 401, 403, 404, 413, 415].contains(&status),
                    "{route} {status}: {}", String::from_utf8_lossy(&bytes)
                );
                if status != 200 {
                    let error: Value = serde_json::from_slice(&bytes).unwrap();
                    if *route == "/v1/messages" {
                        assert_eq!(error["type"], "error", "{error}");
                    } else {
                        assert!(error["error"]["message"].is_string(), "{error}");
                    }
                }
                if *key == Some(TEAM_KEY) {
                    recorded.fetch_add(1, Ordering::Relaxed);
                }
            }
            let expected = recorded.load(Ordering::Relaxed);
            let events = gateway.interactions_then_quiet(expected, std::time::Duration::from_millis(200)).await;
            assert_eq!(events.len(), expected);
        });
    }
}
