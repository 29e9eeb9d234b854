//! An interaction the log took, whose priced form the log refuses as too large, is
//! dead-lettered and the stage goes on: the interactions after it are priced.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::sync::Arc;
use std::time::Duration;

use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog, Record};
use tollgate_processor::metrics::ProcessorMetrics;
use tollgate_processor::testing::model_call;
use tollgate_processor::{ProcessorConfig, Sources};
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{DEAD_LETTER, INTERACTIONS, Keyed, PRICED_INTERACTIONS};
use tollgate_schemas::{CapturedContent, DeadLetter, DeadLetterReason, KeptPart, PricedInteraction};

const LOG_LIMIT: usize = 64 * 1024;

async fn read(log: &dyn EventLog, topic: &str, count: usize) -> Vec<Record> {
    let mut subscription = log.subscribe(&tollgate_eventlog::testing::unique_name("reader"), &[topic]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while records.len() < count {
        let record = tokio::time::timeout_at(deadline, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {count} records on {topic}", records.len()))
            .unwrap();
        records.push(record);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interaction_whose_priced_form_is_too_large_is_dead_lettered_and_pricing_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedLogConfig::new(dir.path());
    config.max_record_bytes = LOG_LIMIT;
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(config).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();

    // Just under the limit as it is, over it once priced.
    let mut large = model_call("openai", "gpt-4o", 1_000, 100);
    large.content.captured = Some(CapturedContent { request: String::new(), response: None, redacted: false });
    let frame = tollgate_schemas::encode(&large).unwrap().len() + large.message_key().len();
    large.content.captured.as_mut().unwrap().request = "x".repeat(LOG_LIMIT - frame - 10);
    let large_payload = tollgate_schemas::encode(&large).unwrap();
    assert!(large_payload.len() + large.message_key().len() <= LOG_LIMIT);
    log.publish(INTERACTIONS, large.message_key().as_bytes(), &large_payload).unwrap().await.unwrap();
    let normal: Vec<_> = (0..5).map(|_| model_call("openai", "gpt-4o", 1_000, 100)).collect();
    for event in &normal {
        let payload = tollgate_schemas::encode(event).unwrap();
        log.publish(INTERACTIONS, event.message_key().as_bytes(), &payload).unwrap().await.unwrap();
    }

    let sources = Sources {
        catalog: PriceCatalog::shipped().unwrap(),
        catalog_document: None,
        config_actor: "oversized-test".to_owned(),
    };
    let metrics = Arc::new(ProcessorMetrics::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let processor = tokio::spawn(tollgate_processor::run(
        Arc::clone(&log),
        ProcessorConfig::default(),
        sources,
        Arc::clone(&metrics),
        async {
            let _ = stopped.await;
        },
    ));

    let priced = read(log.as_ref(), PRICED_INTERACTIONS, normal.len()).await;
    let priced: Vec<PricedInteraction> =
        priced.iter().map(|record| tollgate_schemas::decode(&record.payload).unwrap()).collect();
    let ids: Vec<_> = priced.iter().map(|priced| priced.interaction.id).collect();
    assert_eq!(ids, normal.iter().map(|event| event.id).collect::<Vec<_>>(), "every interaction after the large one");

    let letters = read(log.as_ref(), DEAD_LETTER, 1).await;
    let letter: DeadLetter = tollgate_schemas::decode(&letters[0].payload).unwrap();
    assert_eq!(letter.reason, DeadLetterReason::TooLarge);
    assert_eq!((letter.source.topic.as_str(), letter.source.offset), (INTERACTIONS, 0));
    let original = letter.original.unwrap();
    assert_eq!((original.bytes as usize, original.kept), (large_payload.len(), KeptPart::WithoutCapturedContent));

    let _ = stop.send(());
    processor.await.unwrap().unwrap();
}
