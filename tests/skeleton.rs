//! The walking skeleton: an interaction published through the Kafka log to the real
//! broker is consumed, written to Parquet and read back with DataFusion, inserted into the
//! real ClickHouse and read back, and is the same record, field for field, in all three.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::time::Duration;

use tollgate_eventlog::testing::{CLICKHOUSE_URL_ENV, KAFKA_BROKERS_ENV, required_env, unique_name};
use tollgate_eventlog::{EventLog, KafkaConfig, KafkaLog, Subscription};
use tollgate_processor::sink::clickhouse::{ClickHouseConfig, ClickHouseSink};
use tollgate_processor::sink::parquet::write_file;
use tollgate_query_api::parquet::ParquetStore;
use tollgate_schemas::arrow::StoredRecord;
use tollgate_schemas::topics::Keyed;
use tollgate_schemas::*;

fn model_call() -> Interaction {
    Interaction {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: 1_764_000_123_456_789,
        gateway_instance: "gw-eu-1".into(),
        principal: Principal {
            org_id: "acme".into(),
            team_id: Some("acme-platform".into()),
            user_id: Some("ada@acme.example".into()),
            project_id: None,
            key_id: "key_01".into(),
        },
        call: Call::ModelCall(ModelCall {
            operation: GenAiOperation::Chat,
            provider: Some("openai".into()),
            upstream: Some("openai-primary".into()),
            preferred_upstream: Some("openai-primary".into()),
            request_model: "gpt-4o".into(),
            routed_model: Some("gpt-4o-2024-08-06".into()),
            response_model: Some("gpt-4o-2024-08-06".into()),
            endpoint: "/v1/chat/completions".into(),
            streaming: true,
            request_max_tokens: Some(512),
        }),
        content: ContentRecord {
            request_sha256: Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into()),
            response_sha256: Some("60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752".into()),
            request_bytes: 213,
            response_bytes: 1_842,
            captured: Some(CapturedContent {
                request: r#"{"messages":[{"role":"user","content":"Say \"hi\" in Ελληνικά 👋"}]}"#.into(),
                response: Some("Γειά σου!".into()),
                redacted: false,
            }),
        },
        outcome: Outcome {
            status: OutcomeStatus::Ok,
            http_status: Some(200),
            error_type: None,
            error_message: None,
            attempts: 2,
            fallback_used: true,
        },
        usage: Usage {
            input_tokens: 1_200,
            output_tokens: 350,
            cache_read_input_tokens: 1_024,
            cache_creation_input_tokens: 0,
            reasoning_output_tokens: 128,
            estimated: false,
        },
        timing: Timing {
            duration_micros: 1_532_000,
            time_to_first_token_micros: Some(231_000),
            gateway_overhead_micros: 412,
        },
        trace: Some(TraceContext {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            trace_flags: 1,
            tracestate: Some("vendor=value".into()),
        }),
    }
}

fn tool_call() -> Interaction {
    Interaction {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: 1_764_000_124_000_000,
        gateway_instance: "gw-eu-1".into(),
        principal: Principal {
            org_id: "acme".into(),
            team_id: None,
            user_id: None,
            project_id: Some("support-bot".into()),
            key_id: "key_02".into(),
        },
        call: Call::ToolCall(ToolCall {
            server: "time".into(),
            method: "tools/call".into(),
            tool: Some("get_current_time".into()),
            session_id: Some("c0ffee".into()),
        }),
        content: ContentRecord { request_bytes: 90, response_bytes: 0, ..ContentRecord::default() },
        outcome: Outcome {
            status: OutcomeStatus::ToolError,
            http_status: Some(200),
            error_type: Some("tool_error".into()),
            error_message: Some("unknown timezone".into()),
            attempts: 1,
            fallback_used: false,
        },
        usage: Usage::default(),
        timing: Timing { duration_micros: 5_000, time_to_first_token_micros: None, gateway_overhead_micros: 80 },
        trace: None,
    }
}

async fn consume(subscription: &mut dyn Subscription, count: usize) -> Vec<tollgate_eventlog::Record> {
    let mut records = Vec::new();
    while records.len() < count {
        let record = tokio::time::timeout(Duration::from_secs(60), subscription.next())
            .await
            .expect("the published interactions never arrived")
            .unwrap();
        records.push(record);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interaction_is_the_same_record_in_kafka_parquet_and_clickhouse() {
    let brokers = required_env(KAFKA_BROKERS_ENV);
    let clickhouse_url = required_env(CLICKHOUSE_URL_ENV);
    let originals = vec![model_call(), tool_call()];

    // Kafka: publish, then consume as a group.
    let mut kafka = KafkaConfig::new(brokers);
    kafka.replication_factor = 1;
    let log = KafkaLog::connect(kafka).unwrap();
    let topic = unique_name("skeleton-interactions");
    log.ensure_topic(&topic, 2, false).await.unwrap();
    for interaction in &originals {
        let payload = encode(interaction).unwrap();
        log.publish(&topic, interaction.message_key().as_bytes(), &payload).unwrap().await.unwrap();
    }
    let mut subscription = log.subscribe(&unique_name("skeleton"), &[&topic]).await.unwrap();
    let records = consume(subscription.as_mut(), originals.len()).await;
    let mut consumed: Vec<Interaction> = records.iter().map(|record| decode(&record.payload).unwrap()).collect();
    consumed.sort_by_key(|interaction| interaction.id);
    assert_eq!(consumed, originals, "Kafka round trip");
    let positions: Vec<_> = records.iter().map(tollgate_eventlog::Record::next_position).collect();
    subscription.commit(&positions).await.unwrap();

    // Parquet, read back through DataFusion.
    let dir = tempfile::tempdir().unwrap();
    let batch = Interaction::to_record_batch(&consumed).unwrap();
    write_file(&dir.path().join("interactions/date=2025-11-24/part-0.parquet"), &[batch]).unwrap();
    let store = ParquetStore::new();
    store.register::<Interaction>("interactions", &dir.path().join("interactions")).await.unwrap();
    let from_parquet: Vec<Interaction> = store.query_records("SELECT * FROM interactions ORDER BY id").await.unwrap();
    assert_eq!(from_parquet, originals, "Parquet + DataFusion round trip");

    // ClickHouse, twice: a replayed insert must not show a duplicate.
    let database = unique_name("skeleton").replace('-', "_");
    let sink = ClickHouseSink::new(&ClickHouseConfig {
        url: clickhouse_url.clone(),
        database: database.clone(),
        user: None,
        password: None,
    });
    sink.migrate().await.unwrap();
    sink.migrate().await.unwrap();
    assert_eq!(
        sink.applied_migrations().await.unwrap(),
        ClickHouseSink::known_migrations(),
        "every migration is applied"
    );
    let rows = sink.query_json("SELECT count() AS rows FROM tollgate_schema_migrations").await.unwrap();
    assert_eq!(rows[0]["rows"], ClickHouseSink::known_migrations().len(), "each migration is applied once");
    // Every statement is idempotent: with the record of applied migrations lost (or two
    // processes migrating at once), all of them run again without error, the column
    // additions included.
    let dropped = reqwest::Client::new()
        .post(format!("{clickhouse_url}/?database={database}"))
        .body("DROP TABLE tollgate_schema_migrations")
        .send()
        .await
        .unwrap();
    assert!(dropped.status().is_success(), "{:?}", dropped.text().await);
    sink.migrate().await.unwrap();
    assert_eq!(sink.applied_migrations().await.unwrap(), ClickHouseSink::known_migrations());
    let columns = sink
        .query_json(&format!(
            "SELECT count() AS columns FROM system.columns WHERE database = '{database}' AND name = 'preferred_upstream'"
        ))
        .await
        .unwrap();
    assert_eq!(columns[0]["columns"], 2, "interactions and priced_interactions, once each");
    sink.insert_interactions(&from_parquet).await.unwrap();
    sink.insert_interactions(&from_parquet).await.unwrap();
    let ids: Vec<_> = originals.iter().map(|interaction| interaction.id).collect();
    let from_clickhouse = sink.fetch_interactions(&ids).await.unwrap();
    assert_eq!(from_clickhouse, originals, "ClickHouse round trip, deduplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_on_a_topic_is_a_typed_error() {
    let mut kafka = KafkaConfig::new(required_env(KAFKA_BROKERS_ENV));
    kafka.replication_factor = 1;
    let log = KafkaLog::connect(kafka).unwrap();
    let topic = unique_name("skeleton-malformed");
    log.ensure_topic(&topic, 1, false).await.unwrap();
    let mut wrong_version: serde_json::Value = serde_json::from_slice(&encode(&model_call()).unwrap()).unwrap();
    wrong_version["schema_version"] = serde_json::json!(99);
    let mut missing_field = serde_json::from_slice::<serde_json::Value>(&encode(&model_call()).unwrap()).unwrap();
    missing_field.as_object_mut().unwrap().remove("outcome");
    let payloads =
        [b"\xff\xfe not json".to_vec(), wrong_version.to_string().into_bytes(), missing_field.to_string().into_bytes()];
    for payload in &payloads {
        log.publish(&topic, b"key", payload).unwrap().await.unwrap();
    }
    let mut subscription = log.subscribe(&unique_name("malformed"), &[&topic]).await.unwrap();
    let records = consume(subscription.as_mut(), payloads.len()).await;
    let errors: Vec<DecodeError> =
        records.iter().map(|record| decode::<Interaction>(&record.payload).unwrap_err()).collect();
    assert!(matches!(errors[0], DecodeError::NotJson { .. }), "{:?}", errors[0]);
    assert!(
        matches!(&errors[1], DecodeError::UnsupportedSchemaVersion { found, supported: 1, .. } if found == "99"),
        "{:?}",
        errors[1]
    );
    assert!(
        matches!(&errors[2], DecodeError::InvalidField { message, .. } if message.contains("missing field `outcome`")),
        "{:?}",
        errors[2]
    );
}
