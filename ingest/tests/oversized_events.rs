//! No single request can stop recording: a client-chosen name is refused at the door and
//! cut in its event, captured content is bounded by the capture policy, and an event the
//! log still refuses as too large goes to the dead-letter topic (without its captured
//! content) while the events after it reach the log. Run against the embedded log and
//! against Kafka (the broker `scripts/test` starts), each with a record limit well below
//! the capture policy's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::{TEAM_KEY, TestGateway, http};
use tollgate_eventlog::testing::{KAFKA_BROKERS_ENV, required_env, unique_name};
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog, KafkaConfig, KafkaLog};
use tollgate_ingest::recorder::{RecorderConfig, SPOOL_TOPIC};
use tollgate_schemas::limits::MAX_NAME_BYTES;
use tollgate_schemas::topics::{DEAD_LETTER, Keyed};
use tollgate_schemas::{DeadLetter, DeadLetterReason, Interaction, KeptPart, OutcomeStatus};

/// The record limit of the logs under test.
const LOG_LIMIT: usize = 64 * 1024;
const NORMAL_CALLS: usize = 20;

fn embedded_log(dir: &std::path::Path, limit: usize) -> Arc<dyn EventLog> {
    let mut config = EmbeddedLogConfig::new(dir);
    config.max_record_bytes = limit;
    Arc::new(EmbeddedLog::open(config).unwrap())
}

/// Captures full content (with `capture` added to the `[capture]` table), and takes
/// bodies of a few megabytes.
async fn gateway(log: Arc<dyn EventLog>, spool: Arc<dyn EventLog>, capture: &str) -> TestGateway {
    TestGateway::start_configured(
        &format!("[capture]\nmode = \"full\"\n{capture}"),
        Some(log),
        Some((spool, RecorderConfig::default())),
        |config| config.max_body_bytes = 4 << 20,
    )
    .await
}

fn chat(model: &str, prompt: &str) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

/// The dead letters of interactions `instance` recorded, read from the start of the topic.
async fn dead_letters_of(log: &dyn EventLog, instance: &str, expected: usize) -> Vec<(DeadLetter, Interaction)> {
    let mut subscription = log.subscribe(&unique_name("dead-letters"), &[DEAD_LETTER]).await.unwrap();
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while found.len() < expected {
        let record = tokio::time::timeout_at(deadline, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} dead letters arrived", found.len()))
            .unwrap();
        let letter: DeadLetter = tollgate_schemas::decode(&record.payload).unwrap();
        if letter.reason != DeadLetterReason::TooLarge {
            continue;
        }
        let Ok(event) = tollgate_schemas::decode::<Interaction>(&letter.payload().unwrap()) else { continue };
        if event.gateway_instance == instance {
            found.push((letter, event));
        }
    }
    found
}

/// A 1.1 MB model name, then a call whose captured prompt is larger than the log takes,
/// then normal traffic: the first is refused, the events of both go to the dead-letter
/// topic (their captured content, cut to the capture policy's 256 KiB, is still over the
/// log's limit), and every normal call is recorded.
async fn oversized_events_never_stop_recording(log: Arc<dyn EventLog>, spool: Arc<dyn EventLog>) {
    let mut gateway = gateway(Arc::clone(&log), spool, "").await;
    let url = gateway.url("/v1/chat/completions");

    let long_name = "m".repeat(1_100_000);
    let response = http().post(&url).bearer_auth(TEAM_KEY).json(&chat(&long_name, "hello")).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "model", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(&format!("at most {MAX_NAME_BYTES} bytes")), "{body}");

    let large_prompt = "lorem ipsum ".repeat(20_000);
    let response =
        http().post(&url).bearer_auth(TEAM_KEY).json(&chat("gpt-4o-mini", &large_prompt)).send().await.unwrap();
    assert_eq!(response.status(), 200, "the client is answered whatever the log does with its event");

    for n in 0..NORMAL_CALLS {
        let response = http()
            .post(&url)
            .bearer_auth(TEAM_KEY)
            .json(&chat("gpt-4o-mini", &format!("call {n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    gateway.stop().await;

    let events = gateway.interactions(NORMAL_CALLS).await;
    assert_eq!(events.len(), NORMAL_CALLS, "every normal call, nothing else");
    assert!(events.iter().all(|event| event.outcome.status == OutcomeStatus::Ok));
    let prompts = events
        .iter()
        .filter_map(|event| event.content.captured.as_ref())
        .filter(|captured| captured.request.contains("\"call "))
        .count();
    assert_eq!(prompts, NORMAL_CALLS, "every normal call is recorded with its content");

    let mut letters = dead_letters_of(log.as_ref(), &gateway.instance, 2).await;
    letters.sort_by_key(|(_, event)| event.time_unix_micros);
    for (letter, event) in &letters {
        let original = letter.original.as_ref().unwrap();
        assert!(original.bytes as usize > LOG_LIMIT, "{original:?}");
        assert_eq!(original.kept, KeptPart::WithoutCapturedContent);
        assert!(event.content.captured.is_none());
        assert!(!events.iter().any(|recorded| recorded.id == event.id), "dead-lettered, not also recorded");
    }
    let (refused, large) = (&letters[0].1, &letters[1].1);
    assert_eq!(refused.outcome.status, OutcomeStatus::InvalidRequest);
    let tollgate_schemas::Call::ModelCall(call) = &refused.call else { panic!("a model call") };
    assert!(call.request_model.len() <= MAX_NAME_BYTES && call.request_model.starts_with("mmmm"), "the name is cut");
    assert_eq!(refused.content.request_bytes as usize, chat(&long_name, "hello").to_string().len());
    assert_eq!(large.outcome.status, OutcomeStatus::Ok);
    assert!(large.content.request_bytes as usize > large_prompt.len(), "the facts of the call are kept");

    let stats = gateway.state.recorder.stats();
    assert_eq!((stats.dead_lettered, stats.dropped), (2, 0), "{stats:?}");
}

/// Under the capture policy's `max_bytes`, a captured body is cut with a marker naming
/// its size, the recorded sizes stay those of the bodies, and the event fits the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_content_is_cut_to_the_capture_policy() {
    let dir = tempfile::tempdir().unwrap();
    let log = embedded_log(&dir.path().join("log"), LOG_LIMIT);
    let spool = embedded_log(&dir.path().join("spool"), tollgate_eventlog::DEFAULT_MAX_RECORD_BYTES);
    let mut gateway = gateway(Arc::clone(&log), spool, "max_bytes = 16384\n").await;
    // Control characters take six bytes each as JSON: the cut counts those. (The
    // simulated upstream takes bodies of up to 2 MB.)
    let prompt = "\u{1}".repeat(300_000);
    let body = chat("gpt-4o-mini", &prompt);
    let response =
        http().post(gateway.url("/v1/chat/completions")).bearer_auth(TEAM_KEY).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    gateway.stop().await;

    let events = gateway.interactions(1).await;
    let captured = events[0].content.captured.as_ref().unwrap();
    let sent = body.to_string().len();
    assert_eq!(events[0].content.request_bytes as usize, sent);
    let as_json = serde_json::to_string(&captured.request).unwrap().len() - 2;
    assert!(as_json <= 16384 && as_json > 15_000, "{as_json} bytes as JSON");
    assert!(
        captured.request.ends_with(&format!(" of {sent} bytes kept]")),
        "{}",
        &captured.request[captured.request.len() - 80..]
    );
    assert_eq!(gateway.state.recorder.stats().dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_event_is_dead_lettered_and_recording_goes_on_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let log = embedded_log(&dir.path().join("log"), LOG_LIMIT);
    let spool = embedded_log(&dir.path().join("spool"), tollgate_eventlog::DEFAULT_MAX_RECORD_BYTES);
    oversized_events_never_stop_recording(log, spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_event_is_dead_lettered_and_recording_goes_on_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = KafkaConfig::new(required_env(KAFKA_BROKERS_ENV));
    kafka.replication_factor = 1;
    tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
    kafka.producer_properties.insert("message.max.bytes".into(), LOG_LIMIT.to_string());
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
    let spool = embedded_log(&dir.path().join("spool"), tollgate_eventlog::DEFAULT_MAX_RECORD_BYTES);
    oversized_events_never_stop_recording(log, spool).await;
}

/// A spool left holding an event the log refuses as too large (as an earlier version
/// could leave it, retrying that event forever) drains: the event is dead-lettered, the
/// ones spooled after it are forwarded, and new calls are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_holding_an_oversized_event_drains_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = embedded_log(&dir.path().join("log"), LOG_LIMIT);
    let spool = embedded_log(&dir.path().join("spool"), tollgate_eventlog::DEFAULT_MAX_RECORD_BYTES);

    // One gateway run leaves the spool; the events are written as its recorder writes them.
    let instance = unique_name("earlier-run");
    spool.ensure_topic(SPOOL_TOPIC, 1, false).await.unwrap();
    let mut spooled = Vec::new();
    for n in 0..5 {
        let mut event = support::sample_interaction(&instance);
        if n == 1 {
            event.content.captured = Some(tollgate_schemas::CapturedContent {
                request: "x".repeat(LOG_LIMIT * 2),
                response: None,
                redacted: false,
            });
        }
        let payload = tollgate_schemas::encode(&event).unwrap();
        spool.publish(SPOOL_TOPIC, event.message_key().as_bytes(), &payload).unwrap().await.unwrap();
        spooled.push(event.id);
    }

    let mut gateway = gateway(Arc::clone(&log), spool, "").await;
    let response = http()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(TEAM_KEY)
        .json(&chat("gpt-4o-mini", "after the drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    gateway.stop().await;

    let forwarded = support::read_interactions(log.as_ref(), &instance, 4).await;
    let mut expected: Vec<_> = spooled.clone();
    expected.remove(1);
    assert_eq!(forwarded.iter().map(|event| event.id).collect::<Vec<_>>(), expected, "the others, in order");
    assert_eq!(gateway.interactions(1).await.len(), 1, "the new call is recorded");
    let letters = dead_letters_of(log.as_ref(), &instance, 1).await;
    assert_eq!(letters[0].1.id, spooled[1]);
    assert_eq!(letters[0].0.source.topic, SPOOL_TOPIC);
    assert_eq!(letters[0].0.source.offset, 1, "the dead letter names where the event was read");
}
