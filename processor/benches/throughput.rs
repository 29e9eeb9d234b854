//! The processor's throughput per core and its decision latency, against a real
//! Kafka-API broker (`scripts/bench-processor` starts one).
//!
//! Phase 1, throughput: `TOLLGATE_BENCH_EVENTS` interactions (default 1,000,000, from
//! `testing::workload`: 64 keys, 32 users, 8 teams with hard monthly budgets, 2 orgs) are
//! loaded onto the interactions topic first. Then the processor starts in this process
//! and works through the backlog: pricing, detectors, the repartition to subject updates,
//! budgets and decisions. The figure is interactions per second of this process's CPU
//! time (user + system, all threads, librdkafka's included) from start to the moment both
//! stages have caught up; the broker's CPU is reported separately. The phase runs against
//! `TOLLGATE_BENCH_THROUGHPUT_BROKERS` when set (the script gives it a broker that keeps
//! up with the processor, so that the figure is the processor's and not the time it
//! spends waiting on a slower broker), else against `TOLLGATE_TEST_KAFKA_BROKERS`.
//!
//! Phase 2, latency, against `TOLLGATE_TEST_KAFKA_BROKERS` (the durable broker the tests
//! use): interactions are published at a steady rate for a while, and for each one the
//! time from its publication to the first quota decision of its team that reflects it
//! (the decision's source offset for the interaction's partition is past the
//! interaction's offset) is measured: the end-to-end path a budget cutoff takes. An
//! untimed warm-up first waits for a decision that reflects spend, so that consumer group
//! joins are not in the figures.
//!
//! The runtime has as many worker threads as `tollgate processor` starts with (one per
//! core but one, at least one) unless `TOLLGATE_BENCH_WORKERS` says otherwise.
//!
//! The last line is `events_per_cpu_second=N decision_p99_ms=N`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A benchmark fails by panicking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_eventlog::{EventLog, KafkaConfig, KafkaLog};
use tollgate_processor::metrics::{ProcessorMetrics, StageLabels};
use tollgate_processor::testing::workload;
use tollgate_processor::{ProcessorConfig, Sources};
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{INTERACTIONS, Keyed, QUOTA_DECISIONS, SUBJECT_UPDATES};
use tollgate_schemas::{BudgetSpec, Nanodollars, QuotaDecision, Subject, SubjectKind, WindowKind};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STEADY_RATE: usize = 2_000;
const STEADY_SECONDS: u64 = 15;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// User plus system CPU time of process `pid` ("self" for this one), in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let output = std::process::Command::new("getconf").arg("CLK_TCK").output().ok()?;
    let per_second: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().ok()?;
    Some(ticks / per_second)
}

/// CPU seconds of this process's threads, summed by thread name with digits dropped
/// (`tokio-rt-worker`, `rdk:broker`, ...).
fn cpu_by_thread() -> HashMap<String, f64> {
    let mut by_name = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return by_name };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let Some(seconds) = cpu_seconds(&format!("self/task/{tid}")) else { continue };
        let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        let name: String = name.trim().chars().filter(|c| !c.is_ascii_digit()).collect();
        *by_name.entry(name).or_insert(0.0) += seconds;
    }
    by_name
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

async fn publish(log: &dyn EventLog, interactions: &[tollgate_schemas::Interaction]) {
    for chunk in interactions.chunks(10_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for interaction in chunk {
            let payload = tollgate_schemas::encode(interaction).unwrap();
            pending.push(log.publish(INTERACTIONS, interaction.message_key().as_bytes(), &payload).unwrap());
        }
        for ack in pending {
            ack.await.unwrap();
        }
    }
}

fn main() {
    let brokers =
        std::env::var("TOLLGATE_TEST_KAFKA_BROKERS").expect("TOLLGATE_TEST_KAFKA_BROKERS; run scripts/bench-processor");
    let throughput_brokers = std::env::var("TOLLGATE_BENCH_THROUGHPUT_BROKERS").unwrap_or_else(|_| brokers.clone());
    let broker_pid = if throughput_brokers == brokers {
        std::env::var("TOLLGATE_TEST_BROKER_PID").unwrap_or_default()
    } else {
        std::env::var("TOLLGATE_BENCH_THROUGHPUT_BROKER_PID").unwrap_or_default()
    };
    let events = env_or("TOLLGATE_BENCH_EVENTS", 1_000_000);
    // `tollgate processor`'s default: one worker thread per core but one, at least one
    // (librdkafka's threads use the spare core). `TOLLGATE_BENCH_WORKERS` overrides it.
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let workers = env_or("TOLLGATE_BENCH_WORKERS", cores.saturating_sub(1).max(1));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap();
    runtime.block_on(async {
        let budgets = (0..8)
            .map(|team| {
                let spec = BudgetSpec {
                    subject: Subject::new(SubjectKind::Team, format!("team-{team}")),
                    window: WindowKind::Month,
                    limit: Nanodollars(1_000_000 * Nanodollars::PER_DOLLAR),
                    hard: true,
                    alert_thresholds_percent: vec![50, 80],
                };
                (format!("team-{team}-monthly"), spec)
            })
            .collect();
        let mut config = ProcessorConfig { budgets, ..ProcessorConfig::default() };
        // Extra librdkafka properties for experiments, as `name=value,name=value`.
        let extra = |variable: &str, properties: &mut std::collections::BTreeMap<String, String>| {
            for pair in std::env::var(variable).unwrap_or_default().split(',').filter(|pair| !pair.is_empty()) {
                let (name, value) = pair.split_once('=').expect("name=value");
                properties.insert(name.to_owned(), value.to_owned());
            }
        };
        extra("TOLLGATE_BENCH_PRODUCER_PROPERTIES", &mut config.kafka_producer_properties);
        extra("TOLLGATE_BENCH_CONSUMER_PROPERTIES", &mut config.kafka_consumer_properties);
        let connect = |brokers: &str| -> Arc<dyn EventLog> {
            let mut kafka = KafkaConfig::new(brokers);
            config.kafka_defaults(&mut kafka);
            Arc::new(KafkaLog::connect(kafka).unwrap())
        };
        let log = connect(&throughput_brokers);
        tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
        println!("throughput phase against {throughput_brokers}, latency phase against {brokers}");

        // Phase 1: a backlog, then the processor.
        let now = tollgate_schemas::now_unix_micros();
        let backlog = workload(events, 42, now - i64::try_from(events).unwrap() * 1_000);
        let loading = Instant::now();
        publish(log.as_ref(), &backlog).await;
        println!("loaded {events} interactions in {:.1} s", loading.elapsed().as_secs_f64());

        let metrics = Arc::new(ProcessorMetrics::default());
        let sources =
            Sources { catalog: PriceCatalog::shipped().unwrap(), catalog_document: None, config_actor: "bench".to_owned() };
        let cpu_before = cpu_seconds("self").unwrap();
        let threads_before = cpu_by_thread();
        let broker_before = cpu_seconds(&broker_pid);
        let started = Instant::now();
        let (stop_first, first_stopped) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn(tollgate_processor::run(
            Arc::clone(&log),
            config.clone(),
            sources.clone(),
            Arc::clone(&metrics),
            async move {
                let _ = first_stopped.await;
            },
        ));
        let pricing = StageLabels { stage: "pricing" };
        let budget_stage = StageLabels { stage: "budgets" };
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if metrics.records.get_or_create(&pricing).get() < events as u64 {
                continue;
            }
            let updates: i64 = log.end_offsets(SUBJECT_UPDATES).await.unwrap().iter().map(|(_, end)| end).sum();
            if metrics.records.get_or_create(&budget_stage).get() >= updates as u64 {
                break;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds("self").unwrap() - cpu_before;
        let mut threads: Vec<(String, f64)> = cpu_by_thread()
            .into_iter()
            .map(|(name, seconds)| {
                let before = threads_before.get(&name).copied().unwrap_or(0.0);
                (name, seconds - before)
            })
            .filter(|(_, seconds)| *seconds >= 0.01)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let broker_cpu = match (broker_before, cpu_seconds(&broker_pid)) {
            (Some(before), Some(after)) => format!("{:.2} s", after - before),
            _ => "not measured".to_owned(),
        };
        let updates: i64 = log.end_offsets(SUBJECT_UPDATES).await.unwrap().iter().map(|(_, end)| end).sum();
        let events_per_cpu_second = events as f64 / cpu;
        let breakdown: Vec<String> = threads.iter().map(|(name, seconds)| format!("{name} {seconds:.2} s")).collect();
        println!("processor CPU by thread: {}", breakdown.join(", "));
        println!(
            "backlog: {events} interactions ({updates} subject updates) in {elapsed:.2} s wall = {:.0} interactions/s; \
             processor CPU {cpu:.2} s = {events_per_cpu_second:.0} interactions per CPU second; broker CPU {broker_cpu}",
            events as f64 / elapsed
        );

        // Phase 2: steady traffic, publication to decision, on the durable broker.
        let log = if throughput_brokers == brokers {
            log
        } else {
            let _ = stop_first.send(());
            first.await.unwrap().unwrap();
            let log = connect(&brokers);
            tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
            tokio::spawn(tollgate_processor::run(Arc::clone(&log), config, sources, metrics, std::future::pending()));
            log
        };
        let arrivals: Arc<Mutex<Vec<(Instant, QuotaDecision)>>> = Arc::default();
        let mut decisions = log.subscribe(&tollgate_eventlog::testing::unique_name("bench"), &[QUOTA_DECISIONS]).await.unwrap();
        let collected = Arc::clone(&arrivals);
        tokio::spawn(async move {
            while let Ok(record) = decisions.next().await {
                if let Ok(decision) = tollgate_schemas::decode::<QuotaDecision>(&record.payload) {
                    collected.lock().unwrap().push((Instant::now(), decision));
                }
            }
        });
        // Warm-up, untimed: the decision reader and (after a switch of broker) a freshly
        // started processor join their groups before the measured traffic starts.
        publish(log.as_ref(), &workload(200, 44, tollgate_schemas::now_unix_micros())).await;
        let warming = Instant::now();
        while !arrivals.lock().unwrap().iter().any(|(_, decision)| {
            decision.source_offsets.iter().any(|source| source.topic == INTERACTIONS)
        }) {
            assert!(warming.elapsed() < Duration::from_secs(60), "no decision reflected the warm-up spend in a minute");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        arrivals.lock().unwrap().clear();
        let steady = workload(STEADY_RATE * usize::try_from(STEADY_SECONDS).unwrap(), 43, tollgate_schemas::now_unix_micros());
        // Calls that cost nothing (unknown models, unpriced tools) change no spend, so no
        // decision reflects them: they are published but not measured.
        let pricer = tollgate_processor::pricer::Pricer::new(PriceCatalog::shipped().unwrap());
        let mut sent: Vec<(Instant, String, i32, i64)> = Vec::with_capacity(steady.len());
        let tick = Duration::from_millis(10);
        let per_tick = STEADY_RATE / 100;
        let mut next = Instant::now();
        for chunk in steady.chunks(per_tick) {
            let mut pending = Vec::with_capacity(chunk.len());
            for interaction in chunk {
                let payload = tollgate_schemas::encode(interaction).unwrap();
                let ack = log.publish(INTERACTIONS, interaction.message_key().as_bytes(), &payload).unwrap();
                pending.push((Instant::now(), interaction.principal.team_id.clone().unwrap(), ack));
            }
            for ((at, team, ack), interaction) in pending.into_iter().zip(chunk) {
                let ack = ack.await.unwrap();
                if pricer.price(interaction).cost.total.0 > 0 {
                    sent.push((at, team, ack.partition, ack.offset));
                }
            }
            next += tick;
            tokio::time::sleep_until(next.into()).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let arrivals = arrivals.lock().unwrap().clone();
        let mut by_team: HashMap<String, Vec<&(Instant, QuotaDecision)>> = HashMap::new();
        for arrival in &arrivals {
            by_team.entry(arrival.1.subject.id.clone()).or_default().push(arrival);
        }
        let mut latencies = Vec::with_capacity(sent.len());
        let mut unreflected = 0;
        for (at, team, partition, offset) in &sent {
            let reflected = by_team.get(team).and_then(|decisions| {
                decisions.iter().find(|(arrived, decision)| {
                    *arrived >= *at
                        && decision.source_offsets.iter().any(|source| {
                            source.topic == INTERACTIONS && source.partition == *partition && source.offset > *offset
                        })
                })
            });
            match reflected {
                Some((arrived, _)) => latencies.push(arrived.duration_since(*at).as_secs_f64() * 1e3),
                None => unreflected += 1,
            }
        }
        latencies.sort_by(f64::total_cmp);
        assert!(!latencies.is_empty(), "no decision reflected any interaction");
        println!(
            "steady {STEADY_RATE} interactions/s for {STEADY_SECONDS} s: publication to the team's reflecting decision \
             p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} measured, {unreflected} with no reflecting decision)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            latencies.last().unwrap(),
            latencies.len()
        );
        println!("events_per_cpu_second={events_per_cpu_second:.0} decision_p99_ms={:.0}", percentile(&latencies, 0.99));
    });
}
