//! A whole gateway in-process for tests: two simulated providers on port 0, the gateway on
//! port 0 in front of them, and an embedded log (or a given one) to read the recorded
//! events back from.

#![allow(dead_code)] // Each test binary uses a different part of the fixture.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use tollgate_ingest::app::GatewayState;
use tollgate_ingest::config::GatewayConfig;
use tollgate_ingest::keys::hash_secret;
use tollgate_ingest::recorder::{Recorder, RecorderConfig};
use tollgate_ingest::simulator::{SimulatorControl, router};
use tollgate_schemas::Interaction;
use tollgate_schemas::topics::INTERACTIONS;

/// The secret of the key most tests use: org `acme`, team `research`, user `ada`.
pub const TEAM_KEY: &str = "tg-test-research";
/// A key that may use `gpt-4o-mini` only.
pub const NARROW_KEY: &str = "tg-test-narrow";

pub async fn simulator() -> (SocketAddr, Arc<SimulatorControl>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let control = Arc::new(SimulatorControl::default());
    tokio::spawn(axum::serve(listener, router(Arc::clone(&control))).into_future());
    (address, control)
}

/// The configuration the fixture uses, with `primary` and `backup` simulators.
/// `extra` is appended; when it has a `[routing]` table, it replaces the fixture's.
pub fn config_text(instance: &str, primary: SocketAddr, backup: SocketAddr, extra: &str) -> String {
    let routing = if extra.contains("[routing]") {
        ""
    } else {
        "[routing]\nattempts_per_target = 2\nbackoff_initial_ms = 1\nbackoff_max_ms = 5\nbreaker_failure_threshold = 1000\n"
    };
    format!(
        r#"
        [server]
        instance_id = "{instance}"
        max_body_bytes = 65536

        {routing}

        [[upstreams]]
        name = "primary"
        kind = "openai"
        provider = "openai"
        base_url = "http://{primary}"
        request_timeout_ms = 1500

        [[upstreams]]
        name = "backup"
        kind = "openai"
        provider = "vllm"
        base_url = "http://{backup}"
        request_timeout_ms = 1500

        [[upstreams]]
        name = "claude"
        kind = "anthropic"
        base_url = "http://{primary}"
        request_timeout_ms = 1500

        [[models]]
        name = "gpt-4o"
        targets = [{{ upstream = "primary", model = "gpt-4o-2024-08-06" }}, {{ upstream = "backup", model = "llama-3.1-70b" }}]

        [[models]]
        name = "gpt-4o-mini"
        targets = [{{ upstream = "primary" }}]

        [[models]]
        name = "text-embedding-3-small"
        targets = [{{ upstream = "primary" }}]

        [[models]]
        name = "claude-sonnet-4-5"
        targets = [{{ upstream = "claude" }}]

        [[keys]]
        id = "key_research"
        secret_sha256 = "{team}"
        org = "acme"
        team = "research"
        user = "ada"
        project = "atlas"
        max_tokens = 2048

        [[keys]]
        id = "key_narrow"
        secret_sha256 = "{narrow}"
        org = "acme"
        team = "support"
        allowed_models = ["gpt-4o-mini"]
        {extra}
        "#,
        team = hash_secret(TEAM_KEY),
        narrow = hash_secret(NARROW_KEY),
    )
}

pub struct TestGateway {
    /// This gateway's `instance_id`, unique per test: events are told apart by it on a
    /// shared broker.
    pub instance: String,
    pub address: SocketAddr,
    pub primary: Arc<SimulatorControl>,
    pub backup: Arc<SimulatorControl>,
    pub log: Arc<dyn EventLog>,
    pub state: Arc<GatewayState>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// A gateway recording to a fresh embedded log.
    pub async fn start() -> Self {
        Self::start_with("", None, None).await
    }

    /// A gateway with `extra` appended to the configuration, recording to `log` (an
    /// embedded log when `None`) with `spool` for outages.
    pub async fn start_with(
        extra: &str,
        log: Option<Arc<dyn EventLog>>,
        spool: Option<(Arc<dyn EventLog>, RecorderConfig)>,
    ) -> Self {
        Self::start_configured(extra, log, spool, |_| {}).await
    }

    /// [`TestGateway::start_with`], with `edit` applied to the parsed configuration.
    pub async fn start_configured(
        extra: &str,
        log: Option<Arc<dyn EventLog>>,
        spool: Option<(Arc<dyn EventLog>, RecorderConfig)>,
        edit: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (primary_address, primary) = simulator().await;
        let (backup_address, backup) = simulator().await;
        let instance = tollgate_eventlog::testing::unique_name("gateway-test");
        let text = config_text(&instance, primary_address, backup_address, extra);
        let mut config = GatewayConfig::from_toml(&text, &HashMap::new()).unwrap_or_else(|error| panic!("{error}"));
        edit(&mut config);
        let log = match log {
            Some(log) => log,
            None => Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path().join("log"))).unwrap()),
        };
        // A test may hand in a log whose broker is down on purpose: then there is nothing
        // to create, and the gateway must serve regardless.
        let created = tokio::time::timeout(
            Duration::from_secs(5),
            tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL),
        )
        .await;
        if !matches!(created, Ok(Ok(()))) {
            eprintln!("topics not created: {created:?}");
        }
        let (spool, recorder_config) = match spool {
            Some((spool, config)) => (Some(spool), config),
            None => (None, RecorderConfig::default()),
        };
        let recorder = Recorder::start(Arc::clone(&log), spool, recorder_config).await.unwrap();
        let catalog = tollgate_schemas::pricing::PriceCatalog::shipped().unwrap();
        let state = Arc::new(GatewayState::new(config, recorder, catalog).unwrap());
        tokio::spawn(tollgate_ingest::quota::follow_forever(
            Arc::clone(&log),
            Arc::clone(&state.quota),
            instance.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(tollgate_ingest::run(listener, Arc::clone(&state), async move {
            let _ = signal.await;
        }));
        TestGateway {
            instance,
            address,
            primary,
            backup,
            log,
            state,
            shutdown: Some(shutdown),
            server: Some(server),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Upstream requests both simulators received.
    pub fn upstream_requests(&self) -> u64 {
        self.primary.requests() + self.backup.requests()
    }

    /// Stops the server gracefully and flushes the recorder.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// The interactions this gateway recorded (see [`read_interactions`]).
    pub async fn interactions(&self, expected: usize) -> Vec<Interaction> {
        read_interactions(self.log.as_ref(), &self.instance, expected).await
    }

    /// [`TestGateway::interactions`], watching `quiet` for extra events instead of a second.
    pub async fn interactions_then_quiet(&self, expected: usize, quiet: Duration) -> Vec<Interaction> {
        read_interactions_then_quiet(self.log.as_ref(), &self.instance, expected, quiet).await
    }
}

/// The interactions `instance` recorded on `log`, read from the beginning until
/// `expected` arrived (failing after 20 seconds) and then for another moment, so an
/// extra event would be seen too.
pub async fn read_interactions(log: &dyn EventLog, instance: &str, expected: usize) -> Vec<Interaction> {
    read_interactions_then_quiet(log, instance, expected, Duration::from_secs(1)).await
}

/// [`read_interactions`], watching `quiet` for extra events after the expected ones.
pub async fn read_interactions_then_quiet(
    log: &dyn EventLog,
    instance: &str,
    expected: usize,
    quiet: Duration,
) -> Vec<Interaction> {
    let group = tollgate_eventlog::testing::unique_name("reader");
    let mut subscription = log.subscribe(&group, &[INTERACTIONS]).await.unwrap();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < expected {
        let record = tokio::time::timeout_at(deadline, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} interactions arrived", events.len()))
            .unwrap();
        let event = tollgate_schemas::decode::<Interaction>(&record.payload).unwrap();
        if event.gateway_instance == instance {
            events.push(event);
        }
    }
    while let Ok(record) = tokio::time::timeout(quiet, subscription.next()).await {
        let event = tollgate_schemas::decode::<Interaction>(&record.unwrap().payload).unwrap();
        if event.gateway_instance == instance {
            events.push(event);
        }
    }
    events
}

/// An HTTP client for raw requests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Arbitrary JSON values, a few levels deep, with finite numbers only.
pub fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A successful model call recorded by gateway `instance`, as the gateway writes one.
pub fn sample_interaction(instance: &str) -> Interaction {
    use tollgate_schemas::{
        Call, ContentRecord, GenAiOperation, ModelCall, Outcome, OutcomeStatus, Principal, Timing, Usage,
    };
    Interaction {
        schema_version: tollgate_schemas::SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: tollgate_schemas::now_unix_micros(),
        gateway_instance: instance.to_owned(),
        principal: Principal {
            org_id: "acme".into(),
            team_id: Some("research".into()),
            user_id: None,
            project_id: None,
            key_id: "key_research".into(),
        },
        call: Call::ModelCall(ModelCall {
            operation: GenAiOperation::Chat,
            provider: Some("openai".into()),
            upstream: Some("primary".into()),
            preferred_upstream: Some("primary".into()),
            request_model: "gpt-4o-mini".into(),
            routed_model: None,
            response_model: Some("gpt-4o-mini".into()),
            endpoint: "/v1/chat/completions".into(),
            streaming: false,
            request_max_tokens: None,
        }),
        content: ContentRecord { request_bytes: 100, response_bytes: 200, ..ContentRecord::default() },
        outcome: Outcome {
            status: OutcomeStatus::Ok,
            http_status: Some(200),
            error_type: None,
            error_message: None,
            attempts: 1,
            fallback_used: false,
        },
        usage: Usage::default(),
        timing: Timing { duration_micros: 1000, time_to_first_token_micros: None, gateway_overhead_micros: 100 },
        trace: None,
    }
}
