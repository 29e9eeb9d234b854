//! End to end on the real broker and the real ClickHouse: model calls (OpenAI and
//! Anthropic routes, streamed and not) and MCP tool calls (the official Python SDK
//! against `mcp-server-time` behind the gateway) go through the gateway, the processor
//! prices them and fills both stores (the signed Parquet archive and ClickHouse), and
//! the query API, once over each backend, answers with the cost total equal to the sum
//! of the priced events to the nano-dollar, and finds the interactions by principal,
//! model, tool and captured text.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_eventlog::testing::{CLICKHOUSE_URL_ENV, TestBroker, required_env, unique_name, within};
use tollgate_eventlog::{EventLog, KafkaConfig, KafkaLog};
use tollgate_ingest::app::GatewayState;
use tollgate_ingest::config::GatewayConfig;
use tollgate_ingest::keys::hash_secret;
use tollgate_ingest::recorder::{Recorder, RecorderConfig};
use tollgate_processor::config::{ArchiveConfig, WarehouseConfig};
use tollgate_processor::metrics::ProcessorMetrics;
use tollgate_processor::{ProcessorConfig, Sources};
use tollgate_query_api::auth::{Role, TokenConfig, token_hash};
use tollgate_query_api::clickhouse::ClickHouseConnection;
use tollgate_query_api::server::{BackendKind, QueryApiConfig};
use tollgate_schemas::PricedInteraction;
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{INTERACTIONS, PRICED_INTERACTIONS};

/// Model calls sent; tool calls come on top.
const MODEL_CALLS: usize = 36;
/// Text that only some prompts carry, for the content search.
const MARKER: &str = "orchid-7741";

fn python_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python"))
}

/// The three keys: `(secret, id, team, user)`.
const KEYS: [(&str, &str, &str, &str); 3] = [
    ("tg-e2e-alice", "key_alice", "research", "alice"),
    ("tg-e2e-bob", "key_bob", "finance", "bob"),
    ("tg-e2e-carol", "key_carol", "research", "carol"),
];

fn gateway_config(upstream: std::net::SocketAddr, mcp_server_time: &str) -> String {
    let keys: String = KEYS
        .iter()
        .map(|(secret, id, team, user)| {
            format!(
                "[[keys]]\nid = \"{id}\"\nsecret_sha256 = \"{}\"\norg = \"acme\"\nteam = \"{team}\"\nuser = \"{user}\"\n",
                hash_secret(secret)
            )
        })
        .collect();
    format!(
        r#"
        [server]
        instance_id = "e2e-gateway"
        [capture]
        mode = "full"
        [[upstreams]]
        name = "simulated-openai"
        kind = "openai"
        provider = "openai"
        base_url = "http://{upstream}"
        [[upstreams]]
        name = "simulated-anthropic"
        kind = "anthropic"
        provider = "anthropic"
        base_url = "http://{upstream}"
        [[models]]
        name = "gpt-4o-mini"
        targets = [{{ upstream = "simulated-openai" }}]
        [[models]]
        name = "claude-sonnet-4-5"
        targets = [{{ upstream = "simulated-anthropic" }}]
        [[mcp_servers]]
        name = "time"
        command = "{mcp_server_time}"
        args = ["--local-timezone", "UTC"]
        {keys}
        "#
    )
}

/// Sends model call `index` with `key`; returns the model asked for.
async fn model_call(client: &reqwest::Client, gateway: &str, index: usize, key: &str) -> &'static str {
    let marker = if index.is_multiple_of(5) { MARKER } else { "plain" };
    let prompt = format!("Summarise ledger {index} ({marker}).");
    let stream = index.is_multiple_of(3);
    let (path, model, body) = if index.is_multiple_of(2) {
        let body =
            json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": prompt }], "stream": stream });
        ("/v1/chat/completions", "gpt-4o-mini", body)
    } else {
        let body = json!({
            "model": "claude-sonnet-4-5", "max_tokens": 256, "stream": stream,
            "messages": [{ "role": "user", "content": prompt }],
        });
        ("/v1/messages", "claude-sonnet-4-5", body)
    };
    let call = async {
        let response = client.post(format!("{gateway}{path}")).bearer_auth(key).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        // Read streams to the end, so each call completes (and is recorded) as a whole.
        response.bytes().await.unwrap();
    };
    within(Duration::from_secs(30), &format!("model call {index} ({path}, stream {stream})"), call).await;
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_traffic_reaches_both_stores_and_both_backends_answer_alike() {
    let python = required_env("TOLLGATE_TEST_PYTHON");
    let clickhouse_url = required_env(CLICKHOUSE_URL_ENV);
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive").display().to_string();
    let database = unique_name("e2e").replace('-', "_");

    // The simulated provider.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_address = upstream.local_addr().unwrap();
    let control = Arc::new(tollgate_ingest::simulator::SimulatorControl::default());
    tokio::spawn(tollgate_ingest::simulator::serve(
        upstream,
        tollgate_ingest::simulator::router(control),
        std::future::pending(),
    ));

    // The processor, filling the signed archive and ClickHouse.
    let (signing, verifier) = tollgate_archive::transparency::generate_key("e2e.tollgate.test").unwrap();
    let mut warehouse = WarehouseConfig::new(&clickhouse_url);
    warehouse.connection.database = database.clone();
    warehouse.flush_interval = Duration::from_millis(300);
    let processor_config = ProcessorConfig {
        checkpoint_interval: Duration::from_secs(1),
        archive: Some(ArchiveConfig {
            roll_interval: Duration::from_millis(300),
            signing_key: Some(signing),
            ..ArchiveConfig::new(&root)
        }),
        clickhouse: Some(warehouse),
        ..ProcessorConfig::default()
    };
    let mut kafka = KafkaConfig::new(&broker.address);
    processor_config.kafka_defaults(&mut kafka);
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
    within(
        Duration::from_secs(60),
        "creating the topics",
        tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL),
    )
    .await
    .unwrap();
    let sources =
        Sources { catalog: PriceCatalog::shipped().unwrap(), catalog_document: None, config_actor: "e2e".to_owned() };
    tokio::spawn(tollgate_processor::run(
        Arc::clone(&log),
        processor_config,
        sources,
        Arc::new(ProcessorMetrics::default()),
        std::future::pending(),
    ));

    // The gateway, with full content capture and the MCP time server over stdio.
    let bin = PathBuf::from(&python).parent().unwrap().to_path_buf();
    let text = gateway_config(upstream_address, &bin.join("mcp-server-time").display().to_string());
    let config = GatewayConfig::from_toml(&text, &HashMap::new()).unwrap();
    let mut kafka = KafkaConfig::new(&broker.address);
    tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
    let gateway_log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
    let recorder = Recorder::start(Arc::clone(&gateway_log), None, RecorderConfig::default());
    let recorder = within(Duration::from_secs(60), "starting the recorder", recorder).await.unwrap();
    let state = Arc::new(GatewayState::new(config, recorder, PriceCatalog::shipped().unwrap()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tollgate_ingest::run(listener, Arc::clone(&state), std::future::pending()));

    // Traffic: model calls from three keys, then tool calls through the official MCP SDK.
    let client = reqwest::Client::new();
    let mut sent: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for index in 0..MODEL_CALLS {
        let (secret, _, _, user) = KEYS[index % KEYS.len()];
        let model = model_call(&client, &gateway, index, secret).await;
        *sent.entry((user, model)).or_default() += 1;
    }
    let mcp_check = tokio::process::Command::new(&python)
        .arg(python_dir().join("mcp_check.py"))
        .args([&gateway, KEYS[0].0, "time"])
        .kill_on_drop(true)
        .output();
    let output = within(Duration::from_secs(120), "mcp_check.py through the gateway", mcp_check).await.unwrap();
    assert!(output.status.success(), "mcp_check.py: {}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains(r#""step": "allowed""#) || printed.contains(r#""step":"allowed""#), "{printed}");

    // Every recorded interaction is priced: count both sides.
    let recorded = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let total: i64 = log.end_offsets(INTERACTIONS).await.unwrap().iter().map(|(_, end)| end).sum();
            if total as usize > MODEL_CALLS {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let again: i64 = log.end_offsets(INTERACTIONS).await.unwrap().iter().map(|(_, end)| end).sum();
                if again == total {
                    break total as usize;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "the gateway did not record the traffic");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut priced: BTreeMap<uuid::Uuid, PricedInteraction> = BTreeMap::new();
    let group = unique_name("e2e-priced");
    let reader = log.subscribe(&group, &[PRICED_INTERACTIONS]);
    let mut reader = within(Duration::from_secs(60), "subscribing to the priced topic", reader).await.unwrap();
    while priced.len() < recorded {
        let record = within(Duration::from_secs(60), "the next priced interaction", reader.next()).await.unwrap();
        let event: PricedInteraction = tollgate_schemas::decode(&record.payload).unwrap();
        priced.insert(event.interaction.id, event);
    }
    let expected_cost: i64 = priced.values().map(|record| record.cost.total.0).sum();
    let tool_calls: BTreeSet<uuid::Uuid> = priced
        .values()
        .filter(|record| match &record.interaction.call {
            tollgate_schemas::Call::ToolCall(call) => call.tool.as_deref() == Some("get_current_time"),
            tollgate_schemas::Call::ModelCall(_) => false,
        })
        .map(|record| record.interaction.id)
        .collect();
    assert!(!tool_calls.is_empty(), "the allowed tool call was recorded");
    assert!(priced.len() > MODEL_CALLS + tool_calls.len(), "initialize, list and the denied call are recorded too");

    // Both stores fill: the archive catches up with the log, ClickHouse holds every row.
    let archive = tollgate_archive::Archive::open(&root, &BTreeMap::new()).unwrap();
    let connection = ClickHouseConnection { url: clickhouse_url, database, user: None, password: None };
    let clickhouse = tollgate_query_api::clickhouse::ClickHouseQueries::new(&connection);
    let everything = tollgate_query_api::params::TimeRange { from: 0, to: i64::MAX / 2 };
    let total = tollgate_query_api::store::CostQuery {
        range: everything,
        group_by: Vec::new(),
        bucket: None,
        time_zone: "UTC".to_owned(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let in_clickhouse =
            within(Duration::from_secs(60), "the ClickHouse cost total", clickhouse.cost_report(&total))
                .await
                .ok()
                .and_then(|lines| lines.first().map(|l| l.interactions));
        let archived = tollgate_processor::archive::caught_up(log.as_ref(), &archive);
        if within(Duration::from_secs(60), "comparing the archive with the log", archived).await.unwrap()
            && in_clickhouse == Some(priced.len() as i64)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stores did not fill within 90 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The query API over each backend.
    let mut answers: Vec<Vec<Value>> = Vec::new();
    for backend in [BackendKind::Parquet, BackendKind::Clickhouse] {
        let config = QueryApiConfig {
            archive: root.clone(),
            backend,
            clickhouse: Some(connection.clone()),
            verifier_key: Some(verifier.clone()),
            tokens: vec![TokenConfig {
                name: "auditor".into(),
                sha256: token_hash("auditor-token"),
                role: Role::Auditor,
            }],
            ..QueryApiConfig::default()
        };
        let base = tollgate_query_api::server::serve_in_background(&config, Arc::clone(&log));
        let base = within(Duration::from_secs(60), "starting the query API", base).await.unwrap();
        let get = |path: String| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let answer = async {
                    let response =
                        client.get(format!("{base}{path}")).bearer_auth("auditor-token").send().await.unwrap();
                    assert!(response.status().is_success(), "{backend:?} {path}: {}", response.status());
                    response.json::<Value>().await.unwrap()
                };
                within(Duration::from_secs(60), &format!("{backend:?} {path}"), answer).await
            }
        };
        let ids = |page: &Value| -> BTreeSet<uuid::Uuid> {
            page["interactions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item["interaction"]["id"].as_str().unwrap().parse().unwrap())
                .collect()
        };
        let want = |keep: &dyn Fn(&PricedInteraction) -> bool| -> BTreeSet<uuid::Uuid> {
            priced.values().filter(|record| keep(record)).map(|record| record.interaction.id).collect()
        };
        let today = "from=2020-01-01&to=2100-01-01";

        // The cost total reconciles with the priced events to the nano-dollar.
        let report = get(format!("/v1/reports/cost?{today}")).await;
        assert_eq!(report["total_cost_nanos"], expected_cost, "{backend:?}");
        assert_eq!(report["lines"][0]["interactions"], priced.len(), "{backend:?}");
        // The auditor finds them by principal, model, tool and text.
        let alice = get(format!("/v1/interactions?{today}&user=alice&limit=1000")).await;
        assert_eq!(ids(&alice), want(&|record| record.interaction.principal.user_id.as_deref() == Some("alice")));
        let research = get(format!("/v1/interactions?{today}&team=research&limit=1000")).await;
        assert_eq!(
            research["interactions"].as_array().unwrap().len(),
            want(&|record| record.interaction.principal.team_id.as_deref() == Some("research")).len()
        );
        let claude = get(format!("/v1/interactions?{today}&model=claude-sonnet-4-5&limit=1000")).await;
        let claude_sent: usize =
            sent.iter().filter(|((_, model), _)| *model == "claude-sonnet-4-5").map(|(_, count)| count).sum();
        assert_eq!(ids(&claude).len(), claude_sent);
        let tool = get(format!("/v1/interactions?{today}&tool=get_current_time&limit=1000")).await;
        assert_eq!(ids(&tool), tool_calls);
        let marked = get(format!("/v1/interactions?{today}&text={MARKER}&limit=1000")).await;
        let marked_ids = ids(&marked);
        assert_eq!(marked_ids.len(), MODEL_CALLS.div_ceil(5), "{backend:?}");
        for item in marked["interactions"].as_array().unwrap() {
            assert!(item["interaction"]["content"]["captured"]["request"].as_str().unwrap().contains(MARKER));
        }
        // One of them in full, with its inclusion proof checked against the signed log.
        let one = marked_ids.iter().next().unwrap();
        let detail = get(format!("/v1/interactions/{one}")).await;
        assert_eq!(detail["inclusion_proof"]["verified"], true, "{detail}");
        answers.push(vec![report, alice, claude, tool, marked]);
    }
    assert_eq!(answers[0], answers[1], "both backends give the same answers");
    drop(broker);
}
