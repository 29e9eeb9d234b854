//! Budget cutoff end to end: gateway, broker, processor, broker, gateway.
//!
//! A team with a small hard budget sends requests through the gateway from several
//! clients at once. The gateway records each call; the processor prices it, keeps the
//! team's spend and publishes quota decisions; the gateway follows them. For each of
//! several trials the test measures, from the moment the team's actual spend crossed the
//! budget (the completion of the call that crossed it):
//!
//! - the enforcement delay: until the gateway refused the team's next request (the
//!   gateway's own accounting of its spend since the last decision refuses at once);
//! - the decision delay: until the processor's `block` decision was in force in the
//!   gateway (what every other gateway replica waits for);
//! - the overshoot beyond the budget, against the cost of the calls in flight at the
//!   crossing (the call that crossed included), which bounds it.
//!
//! The figures are printed; the assertions are the overshoot bound and that the block
//! arrives at all within a few seconds. `scripts/bench-processor` measures the decision
//! latency on a release build.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_eventlog::testing::TestBroker;
use tollgate_eventlog::{EventLog, KafkaConfig, KafkaLog};
use tollgate_ingest::app::GatewayState;
use tollgate_ingest::config::GatewayConfig;
use tollgate_ingest::keys::hash_secret;
use tollgate_ingest::recorder::{Recorder, RecorderConfig};
use tollgate_processor::metrics::ProcessorMetrics;
use tollgate_processor::{ProcessorConfig, Sources};
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{GOVERNANCE, Keyed, PRICED_INTERACTIONS};
use tollgate_schemas::{
    Actor, ActorKind, BudgetSpec, ChangeAction, GovernanceChange, GovernanceTarget, Nanodollars, PricedInteraction,
    QuotaState, SCHEMA_VERSION, Subject, SubjectKind, TargetKind, WindowKind,
};

const TRIALS: usize = 12;
const CLIENTS: usize = 4;
/// About twenty calls' worth.
const LIMIT: i64 = 500_000;

/// One call as a client saw it.
#[derive(Debug, Clone)]
struct Call {
    started: Instant,
    ended: Instant,
    status: u16,
    interaction: Option<uuid::Uuid>,
}

fn percentile(values: &mut [f64], fraction: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * fraction).round() as usize;
    values[index]
}

async fn publish_budget(log: &dyn EventLog, team: &str) {
    let spec = BudgetSpec {
        subject: Subject::new(SubjectKind::Team, team),
        window: WindowKind::Day,
        limit: Nanodollars(LIMIT),
        hard: true,
        alert_thresholds_percent: vec![50],
    };
    let change = GovernanceChange {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: tollgate_schemas::now_unix_micros(),
        actor: Actor { kind: ActorKind::Admin, id: "finance@acme.example".to_owned() },
        target: GovernanceTarget { kind: TargetKind::Budget, id: format!("{team}-daily") },
        action: ChangeAction::Created,
        value: serde_json::to_value(&spec).unwrap(),
        reason: Some("cutoff test".to_owned()),
    };
    let payload = tollgate_schemas::encode(&change).unwrap();
    tollgate_eventlog::publish_and_wait(log, GOVERNANCE, change.message_key().as_bytes(), &payload).await.unwrap();
}

/// Sends requests for `key` until the gateway holds a block decision for `team`.
async fn client(url: String, key: String, state: Arc<GatewayState>, team: Subject) -> Vec<Call> {
    let http = reqwest::Client::new();
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Summarize the quarterly spend of the platform team in three short bullet points, with totals per provider and the month-over-month change."}]
    });
    let mut calls = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if state.quota.decision(&team).is_some_and(|decision| decision.state == QuotaState::Block) {
            break;
        }
        let started = Instant::now();
        let response = http.post(&url).bearer_auth(&key).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        let interaction = response
            .headers()
            .get("x-tollgate-interaction-id")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        let text = response.text().await.unwrap();
        let ended = Instant::now();
        assert!(status == 200 || (status == 429 && text.contains("budget_exceeded")), "{status}: {text}");
        calls.push(Call { started, ended, status, interaction });
        if status == 429 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_over_its_hard_budget_is_cut_off() {
    let broker = TestBroker::start();

    // The simulated provider.
    let control = Arc::new(tollgate_ingest::simulator::SimulatorControl::default());
    control.set_delay(Duration::from_millis(20));
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_address = upstream.local_addr().unwrap();
    tokio::spawn(tollgate_ingest::simulator::serve(
        upstream,
        tollgate_ingest::simulator::router(Arc::clone(&control)),
        std::future::pending(),
    ));

    // The processor.
    let processor_config =
        ProcessorConfig { checkpoint_interval: Duration::from_secs(1), ..ProcessorConfig::default() };
    let mut kafka = KafkaConfig::new(&broker.address);
    processor_config.kafka_defaults(&mut kafka);
    let processor_log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
    tollgate_eventlog::ensure_topics(processor_log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let sources = Sources {
        catalog: PriceCatalog::shipped().unwrap(),
        catalog_document: None,
        config_actor: "cutoff-test".to_owned(),
    };
    tokio::spawn(tollgate_processor::run(
        Arc::clone(&processor_log),
        processor_config,
        sources,
        Arc::new(ProcessorMetrics::default()),
        std::future::pending(),
    ));

    // The gateway, one key per trial's team.
    let keys: String = (0..TRIALS)
        .flat_map(|trial| {
            (0..CLIENTS).map(move |client| {
                format!(
                    "[[keys]]\nid = \"key-{trial}-{client}\"\nsecret_sha256 = \"{}\"\norg = \"acme\"\nteam = \"cutoff-{trial}\"\n",
                    hash_secret(&format!("tg-cutoff-{trial}-{client}"))
                )
            })
        })
        .collect();
    let config_text = format!(
        r#"
        [server]
        instance_id = "cutoff-gateway"
        [[upstreams]]
        name = "simulated"
        kind = "openai"
        provider = "openai"
        base_url = "http://{upstream_address}"
        [[models]]
        name = "gpt-4o-mini"
        targets = [{{ upstream = "simulated" }}]
        {keys}
        "#
    );
    let config = GatewayConfig::from_toml(&config_text, &HashMap::new()).unwrap();
    let mut kafka = KafkaConfig::new(&broker.address);
    tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
    let gateway_log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
    let recorder = Recorder::start(Arc::clone(&gateway_log), None, RecorderConfig::default()).await.unwrap();
    let state = Arc::new(GatewayState::new(config, recorder, PriceCatalog::shipped().unwrap()).unwrap());
    tokio::spawn(tollgate_ingest::quota::follow_forever(
        Arc::clone(&gateway_log),
        Arc::clone(&state.quota),
        "cutoff-gateway".to_owned(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/chat/completions", listener.local_addr().unwrap());
    tokio::spawn(tollgate_ingest::run(listener, Arc::clone(&state), std::future::pending()));

    let mut priced_reader = processor_log
        .subscribe(&tollgate_eventlog::testing::unique_name("priced"), &[PRICED_INTERACTIONS])
        .await
        .unwrap();
    let mut costs: HashMap<uuid::Uuid, i64> = HashMap::new();
    let (mut enforcement_ms, mut decision_ms, mut overshoot_calls) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..TRIALS {
        let team = format!("cutoff-{trial}");
        let subject = Subject::new(SubjectKind::Team, team.clone());
        publish_budget(gateway_log.as_ref(), &team).await;
        let announced = Instant::now();
        while state.quota.decision(&subject).is_none() {
            assert!(announced.elapsed() < Duration::from_secs(30), "the budget of {team} never reached the gateway");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // Watch for the block decision at millisecond resolution.
        let watcher = {
            let (state, subject) = (Arc::clone(&state), subject.clone());
            tokio::spawn(async move {
                loop {
                    if state.quota.decision(&subject).is_some_and(|decision| decision.state == QuotaState::Block) {
                        return Instant::now();
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client_index| {
                tokio::spawn(client(
                    url.clone(),
                    format!("tg-cutoff-{trial}-{client_index}"),
                    Arc::clone(&state),
                    subject.clone(),
                ))
            })
            .collect();
        let mut calls = Vec::new();
        for task in clients {
            calls.extend(task.await.unwrap());
        }
        let blocked_at = tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .unwrap_or_else(|_| panic!("trial {trial}: no block decision"))
            .unwrap();

        // The price of every successful call, from the processor.
        let wanted: HashSet<uuid::Uuid> =
            calls.iter().filter(|call| call.status == 200).filter_map(|call| call.interaction).collect();
        while !wanted.iter().all(|id| costs.contains_key(id)) {
            let record = tokio::time::timeout(Duration::from_secs(30), priced_reader.next()).await.unwrap().unwrap();
            let priced: PricedInteraction = tollgate_schemas::decode(&record.payload).unwrap();
            costs.insert(priced.interaction.id, priced.cost.total.0);
        }

        let mut completed: Vec<&Call> = calls.iter().filter(|call| call.status == 200).collect();
        completed.sort_by_key(|call| call.ended);
        let mut spent = 0;
        let crossing = completed
            .iter()
            .find(|call| {
                spent += costs[&call.interaction.unwrap()];
                spent >= LIMIT
            })
            .map(|call| call.ended)
            .unwrap_or_else(|| panic!("trial {trial}: spend {spent} never crossed {LIMIT}"));
        let total: i64 = completed.iter().map(|call| costs[&call.interaction.unwrap()]).sum();
        let in_flight: i64 = completed
            .iter()
            .filter(|call| call.started < crossing && call.ended >= crossing)
            .map(|call| costs[&call.interaction.unwrap()])
            .sum();
        let overshoot = total - LIMIT;
        assert!(
            overshoot <= in_flight,
            "trial {trial}: overshoot {overshoot} nano-USD beyond the budget, but only {in_flight} was in flight at the crossing"
        );
        let first_refusal =
            calls.iter().filter(|call| call.status == 429 && call.started >= crossing).map(|call| call.ended).min();
        if let Some(refused) = first_refusal {
            enforcement_ms.push(refused.saturating_duration_since(crossing).as_secs_f64() * 1e3);
        }
        decision_ms.push(blocked_at.saturating_duration_since(crossing).as_secs_f64() * 1e3);
        let per_call = total / i64::try_from(completed.len()).unwrap().max(1);
        overshoot_calls.push(overshoot as f64 / per_call.max(1) as f64);
        println!(
            "trial {trial:>2}: {} calls ok, {} refused; overshoot {overshoot} nano-USD ({in_flight} in flight at the crossing); \
             decision in force {:.1} ms after the crossing",
            completed.len(),
            calls.len() - completed.len(),
            decision_ms.last().unwrap()
        );
    }
    println!(
        "cutoff over {TRIALS} trials, {CLIENTS} clients each: enforcement delay p50 {:.1} ms p99 {:.1} ms; \
         block decision in force p50 {:.1} ms p99 {:.1} ms; overshoot p50 {:.2} calls, max {:.2} calls",
        percentile(&mut enforcement_ms.clone(), 0.5),
        percentile(&mut enforcement_ms, 0.99),
        percentile(&mut decision_ms.clone(), 0.5),
        percentile(&mut decision_ms, 0.99),
        percentile(&mut overshoot_calls.clone(), 0.5),
        percentile(&mut overshoot_calls, 1.0),
    );
}
