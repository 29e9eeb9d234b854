//! Request-time policy over real HTTP: the PII guard's modes, team allow-lists and per-key
//! rate limits, each refusal in the provider's format, recorded, and never sent upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use serde_json::{Value, json};
use support::{TestGateway, http};
use tollgate_ingest::keys::hash_secret;
use tollgate_schemas::OutcomeStatus;

fn extra() -> String {
    format!(
        r#"
        [[teams]]
        id = "legal"
        allowed_models = ["claude-*", "gpt-4o-mini"]
        pii_guard = "block"

        [[keys]]
        id = "key_legal"
        secret_sha256 = "{legal}"
        org = "acme"
        team = "legal"

        [[keys]]
        id = "key_redacting"
        secret_sha256 = "{redacting}"
        org = "acme"
        team = "legal"
        pii_guard = "redact"

        [[keys]]
        id = "key_limited"
        secret_sha256 = "{limited}"
        org = "acme"
        requests_per_minute = 3
        tokens_per_minute = 5000
        "#,
        legal = hash_secret("tg-legal"),
        redacting = hash_secret("tg-redacting"),
        limited = hash_secret("tg-limited"),
    )
}

async fn chat(gateway: &TestGateway, key: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = http().post(gateway.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

fn ask(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pii_guard_blocks_or_redacts_before_the_upstream_sees_the_prompt() {
    let gateway = TestGateway::start_with(&extra(), None, None).await;
    let secret_prompt = "Please email jane.doe@example.com the card 4111 1111 1111 1111";

    let (status, _, body) = chat(&gateway, "tg-legal", ask("gpt-4o-mini", secret_prompt)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "pii_detected");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("email") && message.contains("card_number"), "{message}");
    assert!(!message.contains("jane.doe"), "the refusal never repeats the value");
    assert_eq!(gateway.upstream_requests(), 0);

    let (status, _, body) = chat(&gateway, "tg-redacting", ask("gpt-4o-mini", secret_prompt)).await;
    assert_eq!(status, 200, "{body}");
    // The simulator echoes the end of the prompt it received.
    let reply = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(reply.contains("[REDACTED:email]") && reply.contains("[REDACTED:card_number]"), "{reply}");
    assert!(!reply.contains("4111"), "{reply}");

    let (status, _, _) = chat(&gateway, "tg-legal", ask("gpt-4o-mini", "Summarise the contract.")).await;
    assert_eq!(status, 200, "a clean prompt passes the guard");

    // The team's allow-list applies on top of the key's (which allows everything).
    let (status, _, body) = chat(&gateway, "tg-legal", ask("gpt-4o", "hello")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "model_not_allowed");

    let events = gateway.interactions(4).await;
    let statuses: Vec<OutcomeStatus> = events.iter().map(|event| event.outcome.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == OutcomeStatus::BlockedByPolicy).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == OutcomeStatus::Ok).count(), 2, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_with_a_retry_time_and_oversized_requests_with_a_400() {
    let gateway = TestGateway::start_with(&extra(), None, None).await;
    let never_fits =
        json!({"model": "gpt-4o-mini", "max_tokens": 6000, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = chat(&gateway, "tg-limited", never_fits).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let (status, headers, body) = chat(&gateway, "tg-limited", ask("gpt-4o-mini", "hi")).await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
            retry_after = headers.get("retry-after").map(|value| value.to_str().unwrap().parse::<u64>().unwrap());
        }
        statuses.push(status);
    }
    // The 400 above took one request from the bucket of three.
    assert_eq!(statuses, [200, 200, 429, 429]);
    let retry_after = retry_after.unwrap();
    assert!((1..=21).contains(&retry_after), "{retry_after}");
    assert_eq!(gateway.upstream_requests(), 2);
    let events = gateway.interactions(5).await;
    assert_eq!(events.iter().filter(|event| event.outcome.status == OutcomeStatus::RateLimited).count(), 3);
}

/// A request that sets no output limit is held to the key's cap: the upstream is sent the
/// cap under the name its provider reads. And `n` choices weigh `n` times their limit in
/// the token rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_cap_applies_without_max_tokens_and_n_weighs_in_the_token_limit() {
    let gateway = TestGateway::start_with(&extra(), None, None).await;
    // `key_research` caps output at 2048 tokens; `gpt-4o` goes to OpenAI, then vLLM.
    let (status, _, body) = chat(&gateway, support::TEAM_KEY, ask("gpt-4o", "no limit set")).await;
    assert_eq!(status, 200, "{body}");
    let sent: Value = serde_json::from_slice(&gateway.primary.last_body()).unwrap();
    assert_eq!(sent["max_completion_tokens"], 2048, "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    gateway.primary.fail_with(Some(reqwest::StatusCode::INTERNAL_SERVER_ERROR));
    let (status, _, body) = chat(&gateway, support::TEAM_KEY, ask("gpt-4o", "no limit, fallback")).await;
    assert_eq!(status, 200, "{body}");
    let sent: Value = serde_json::from_slice(&gateway.backup.last_body()).unwrap();
    assert_eq!(sent["max_tokens"], 2048, "a self-hosted server reads max_tokens: {sent}");
    gateway.primary.fail_with(None);
    // A limit the client set goes up as it was.
    let mut own = ask("gpt-4o", "own limit");
    own["max_tokens"] = json!(100);
    assert_eq!(chat(&gateway, support::TEAM_KEY, own).await.0, 200);
    let sent: Value = serde_json::from_slice(&gateway.primary.last_body()).unwrap();
    assert_eq!((sent["max_tokens"].as_u64(), sent.get("max_completion_tokens")), (Some(100), None), "{sent}");

    // 5,000 tokens a minute: two choices of 2,000 fit, three never do.
    let choices = |n: u64| json!({"model": "gpt-4o-mini", "max_tokens": 2000, "n": n, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = chat(&gateway, "tg-limited", choices(3)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body["error"]["message"].as_str().unwrap().contains("needs 6"), "{body}");
    let (status, _, body) = chat(&gateway, "tg-limited", choices(2)).await;
    assert_eq!(status, 200, "{body}");
}
