//! Live budget enforcement: decisions written to the decisions topic by the test (the
//! processor writes them in production) stop and release a subject's requests, and
//! parallel requests cannot run far past a small remaining budget.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{TestGateway, http};
use tollgate_eventlog::testing::{KAFKA_BROKERS_ENV, required_env, unique_name};
use tollgate_eventlog::{EventLog, KafkaConfig, KafkaLog};
use tollgate_ingest::keys::hash_secret;
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{Keyed, QUOTA_DECISIONS};
use tollgate_schemas::{
    BudgetWindow, Call, Nanodollars, OutcomeStatus, QuotaDecision, QuotaState, SCHEMA_VERSION, Subject, SubjectKind,
    WindowKind,
};

fn decision(subject: Subject, state: QuotaState, hard: bool, budget: i64, spent: i64, version: u64) -> QuotaDecision {
    QuotaDecision {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: tollgate_schemas::now_unix_micros(),
        subject,
        budget_id: "monthly-research".to_owned(),
        window: BudgetWindow { kind: WindowKind::Month, start_unix_micros: 0, end_unix_micros: None },
        budget: Nanodollars(budget),
        spent: Nanodollars(spent),
        remaining: Nanodollars(budget - spent),
        state,
        hard,
        version,
        source_offsets: Vec::new(),
        reason: (state == QuotaState::Block).then(|| "hard budget reached 100%".to_owned()),
    }
}

async fn publish(log: &dyn EventLog, decision: &QuotaDecision) {
    let payload = tollgate_schemas::encode(decision).unwrap();
    tollgate_eventlog::publish_and_wait(log, QUOTA_DECISIONS, decision.message_key().as_bytes(), &payload)
        .await
        .unwrap();
}

/// A key of its own team, so decisions of other tests on a shared broker never apply.
fn team_key(team: &str, secret: &str) -> String {
    format!(
        "[[keys]]\nid = \"key_{team}\"\nsecret_sha256 = \"{}\"\norg = \"acme\"\nteam = \"{team}\"\n",
        hash_secret(secret)
    )
}

async fn chat_status(gateway: &TestGateway, secret: &str, max_tokens: u64) -> (u16, Value) {
    let body = json!({"model": "gpt-4o-mini", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Hi there, how are you?"}]});
    let response =
        http().post(gateway.url("/v1/chat/completions")).bearer_auth(secret).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends requests until one answers `wanted`; returns how long that took.
async fn time_until(gateway: &TestGateway, secret: &str, wanted: u16) -> Duration {
    let started = Instant::now();
    loop {
        if chat_status(gateway, secret, 16).await.0 == wanted {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no {wanted} within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_decision_on_the_broker_stops_a_team_and_an_allow_lifts_it() {
    let mut kafka = KafkaConfig::new(required_env(KAFKA_BROKERS_ENV));
    tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
    let team = unique_name("team");
    let secret = format!("tg-{team}");
    let mut gateway = TestGateway::start_with(&team_key(&team, &secret), Some(Arc::clone(&log)), None).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gateway.state.quota.caught_up() {
        assert!(Instant::now() < deadline, "the gateway never caught up with the decisions topic");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat_status(&gateway, &secret, 16).await.0, 200);

    let subject = Subject::new(SubjectKind::Team, team.clone());
    let mut block_latencies = Vec::new();
    let trials = 20;
    for trial in 0..trials {
        let version = 2 * trial + 1;
        publish(log.as_ref(), &decision(subject.clone(), QuotaState::Block, true, 1_000, 1_000, version)).await;
        block_latencies.push(time_until(&gateway, &secret, 429).await);
        publish(log.as_ref(), &decision(subject.clone(), QuotaState::Allow, true, 1_000_000_000, 0, version + 1)).await;
        time_until(&gateway, &secret, 200).await;
    }
    block_latencies.sort();
    let p50 = block_latencies[block_latencies.len() / 2];
    let p99 = block_latencies[(block_latencies.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "block decision to first refused request over {trials} trials: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        block_latencies[block_latencies.len() - 1].as_secs_f64() * 1e3
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");

    // The refusal names the budget, in the provider's layout, and is recorded.
    publish(log.as_ref(), &decision(subject.clone(), QuotaState::Block, true, 1_000, 1_000, 1_000)).await;
    time_until(&gateway, &secret, 429).await;
    let (status, body) = chat_status(&gateway, &secret, 16).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert!(body["error"]["message"].as_str().unwrap().contains("monthly-research"), "{body}");
    // An older version arriving late changes nothing.
    publish(log.as_ref(), &decision(subject.clone(), QuotaState::Allow, true, 1_000_000_000, 0, 999)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(chat_status(&gateway, &secret, 16).await.0, 429);

    gateway.stop().await;
    let events = gateway.interactions(1).await;
    let blocked = events.iter().filter(|event| event.outcome.status == OutcomeStatus::BlockedByBudget).count();
    assert!(blocked >= trials as usize + 2, "every refused request is recorded: {blocked}");
    assert!(
        events
            .iter()
            .all(|event| event.outcome.status != OutcomeStatus::BlockedByBudget || event.outcome.attempts == 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_cannot_overshoot_more_than_the_in_flight_reservations() {
    let secret = "tg-overshoot";
    let mut gateway = TestGateway::start_with(&team_key("overshoot", secret), None, None).await;
    gateway.primary.set_delay(Duration::from_millis(100));
    let catalog = PriceCatalog::shipped().unwrap();
    let price = *catalog.model("openai", "gpt-4o-mini").unwrap();
    let max_tokens = 100;
    let prompt_tokens = tollgate_ingest::usage::count_tokens("Hi there, how are you?");
    let worst_case = price.worst_case(prompt_tokens, max_tokens).0;
    // Room for about three requests' worst case.
    let remaining = 3 * worst_case;
    let budget = 1_000_000;
    let subject = Subject::new(SubjectKind::Key, "key_overshoot");
    publish(gateway.log.as_ref(), &decision(subject, QuotaState::Allow, true, budget, budget - remaining, 1)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.state.quota.decision(&Subject::new(SubjectKind::Key, "key_overshoot")).is_none() {
        assert!(Instant::now() < deadline, "the decision never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let requests = 40;
    let mut tasks = Vec::new();
    for _ in 0..requests {
        let url = gateway.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": "gpt-4o-mini", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Hi there, how are you?"}]});
            http().post(url).bearer_auth(secret).json(&body).send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let admitted = statuses.iter().filter(|status| **status == 200).count();
    let refused = statuses.iter().filter(|status| **status == 429).count();
    assert_eq!(admitted + refused, requests);

    gateway.stop().await;
    let events = gateway.interactions(requests).await;
    let actual: i64 = events
        .iter()
        .filter(|event| event.outcome.status == OutcomeStatus::Ok)
        .map(|event| {
            let Call::ModelCall(call) = &event.call else { panic!() };
            catalog.model("openai", call.routed_model.as_deref().unwrap()).unwrap().cost(&event.usage).total.0
        })
        .sum();
    eprintln!(
        "remaining {remaining} nano-USD, worst case per request {worst_case}: {admitted} admitted, {refused} refused, \
         actual spend {actual}"
    );
    assert!(admitted >= 1 && refused >= 1, "{statuses:?}");
    assert!(
        actual <= remaining + worst_case,
        "overshoot beyond one in-flight reservation: {actual} > {remaining} + {worst_case}"
    );
    assert_eq!(events.iter().filter(|event| event.outcome.status == OutcomeStatus::BlockedByBudget).count(), refused);
}

/// `n` choices may each produce `max_tokens`: a call for three reserves three times the
/// output while it runs, so a second call finds the budget taken where after a one-choice
/// call it would still fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_choice_is_reserved_at_its_output_limit() {
    let secret = "tg-choices";
    let gateway = TestGateway::start_with(&team_key("choices", secret), None, None).await;
    gateway.primary.set_delay(Duration::from_millis(700));
    let price = *PriceCatalog::shipped().unwrap().model("openai", "gpt-4o-mini").unwrap();
    let prompt = "Hi there, how are you?";
    let prompt_tokens = tollgate_ingest::usage::count_tokens(prompt);
    let worst_case = |output: u64| price.worst_case(prompt_tokens, output).0;
    // Room for two one-choice calls of 1,000 output tokens, less than one of three.
    let remaining = 2 * worst_case(1_000);
    assert!(worst_case(3_000) > remaining, "the catalog prices output above input");
    let budget = 1_000_000_000;
    let subject = Subject::new(SubjectKind::Key, "key_choices");
    publish(gateway.log.as_ref(), &decision(subject.clone(), QuotaState::Allow, true, budget, budget - remaining, 1))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.state.quota.decision(&subject).is_none() {
        assert!(Instant::now() < deadline, "the decision never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ask = |n: u64| json!({"model": "gpt-4o-mini", "max_tokens": 1_000, "n": n, "messages": [{"role": "user", "content": prompt}]});
    let url = gateway.url("/v1/chat/completions");
    // Whether a one-choice call is admitted while a call of `n` choices runs.
    let second_call_while = |n: u64| {
        let (url, primary) = (url.clone(), Arc::clone(&gateway.primary));
        async move {
            let before = primary.requests();
            let first = tokio::spawn({
                let (url, body) = (url.clone(), ask(n));
                async move { http().post(url).bearer_auth(secret).json(&body).send().await.unwrap().status() }
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while primary.requests() == before {
                assert!(Instant::now() < deadline, "the first call never reached the upstream");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let second = http().post(&url).bearer_auth(secret).json(&ask(1)).send().await.unwrap().status();
            assert_eq!(first.await.unwrap(), 200);
            second.as_u16()
        }
    };
    assert_eq!(second_call_while(1).await, 200, "one choice in flight leaves room");
    assert_eq!(second_call_while(3).await, 429, "three choices in flight take it");
}
