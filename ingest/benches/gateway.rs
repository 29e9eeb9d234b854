//! The gateway's added latency and its throughput, measured side by side against going
//! direct to the same upstream, with every governance feature on.
//!
//! `scripts/bench-gateway` starts the pieces this program expects: a static nginx upstream
//! that answers a canned chat completion (JSON at `/v1/chat/completions`, an event stream
//! at `/sse/v1/chat/completions`) and a Kafka-API broker. This program runs the gateway
//! in-process with as many serving threads as `tollgate gateway` uses by default (one per
//! core; `TOLLGATE_BENCH_WORKERS` overrides) and its background work on a one-worker
//! runtime, as `tollgate gateway` has on two cores, configured with a virtual key, a model allow-list, a
//! `max_tokens` cap, request and token rate limits (high enough never to refuse), the PII
//! guard in redact mode, a hard budget decision in force (so every request pays for its
//! worst-case reservation), digests of every request and response, and one event per
//! request published to the real broker, with a local spool as `tollgate gateway` has (if
//! the broker falls behind, events wait there; the run ends once it has drained). `wrk` is
//! the load generator.
//!
//! Runs, interleaved so machine noise hits both sides alike:
//! - one connection, direct vs gateway, `ROUNDS` rounds each: added p50 and p99;
//! - streaming, one connection, direct vs gateway: added time to the whole (one-chunk)
//!   stream, which with a static upstream is the time to first token;
//! - saturation, `SATURATION_CONNECTIONS` connections: requests per second through the
//!   gateway (and direct, for scale), the gateway's CPU time per request and peak memory.
//!
//! The last line is `added_p50_us=N added_p99_us=N rps=N`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A benchmark fails by panicking.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog, KafkaConfig, KafkaLog};
use tollgate_ingest::app::GatewayState;
use tollgate_ingest::config::GatewayConfig;
use tollgate_ingest::keys::hash_secret;
use tollgate_ingest::recorder::{Recorder, RecorderConfig};
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{Keyed, QUOTA_DECISIONS};
use tollgate_schemas::{
    BudgetWindow, Nanodollars, QuotaDecision, QuotaState, SCHEMA_VERSION, Subject, SubjectKind, WindowKind,
};

/// The allocator the `tollgate` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 3;
const LATENCY_SECONDS: u32 = 8;
const SATURATION_SECONDS: u32 = 15;
const SATURATION_CONNECTIONS: u32 = 32;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set; run scripts/bench-gateway"))
}

/// What `wrk --latency` reported.
#[derive(Debug, Clone, Copy)]
struct WrkResult {
    p50_us: f64,
    p99_us: f64,
    requests_per_second: f64,
    requests: f64,
    errors: f64,
}

fn parse_duration_us(text: &str) -> f64 {
    let text = text.trim();
    let (number, factor) = if let Some(value) = text.strip_suffix("us") {
        (value, 1.0)
    } else if let Some(value) = text.strip_suffix("ms") {
        (value, 1_000.0)
    } else if let Some(value) = text.strip_suffix('s') {
        (value, 1_000_000.0)
    } else {
        panic!("unknown duration {text}")
    };
    number.trim().parse::<f64>().unwrap() * factor
}

fn wrk(url: &str, script: &str, connections: u32, threads: u32, seconds: u32) -> WrkResult {
    let output = std::process::Command::new("wrk")
        .args(["--latency", "-s", script])
        .args(["-t", &threads.to_string(), "-c", &connections.to_string(), "-d", &format!("{seconds}s")])
        .arg(url)
        .output()
        .expect("wrk is installed by scripts/bench-gateway");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    let field = |prefix: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("no `{prefix}` in wrk output:\n{text}"))
    };
    let requests = text
        .lines()
        .find(|line| line.contains("requests in"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse::<f64>().ok())
        .unwrap_or(0.0);
    let errors = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|count| count.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    WrkResult {
        p50_us: parse_duration_us(&field("50%")),
        p99_us: parse_duration_us(&field("99%")),
        requests_per_second: field("Requests/sec:").trim().parse().unwrap(),
        requests,
        errors,
    }
}

/// User plus system CPU time of this process, in microseconds.
fn cpu_micros() -> f64 {
    process_cpu_micros("self").unwrap()
}

/// User plus system CPU time of process `pid` ("self" for this one), in microseconds.
fn process_cpu_micros(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses), utime and stime are the 12th and 13th fields.
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?;
    Some(ticks * 1_000_000.0 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    let output = std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap()
}

/// Busy (non-idle) CPU time of the whole machine, in microseconds.
fn machine_busy_micros() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let line = stat.lines().next().unwrap();
    let ticks: Vec<f64> = line.split_whitespace().skip(1).map(|t| t.parse().unwrap()).collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let busy: f64 = ticks.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    busy * 1_000_000.0 / clock_ticks_per_second()
}

fn peak_memory_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let upstream = env("TOLLGATE_BENCH_UPSTREAM");
    let brokers = env("TOLLGATE_TEST_KAFKA_BROKERS");
    let scripts = env("TOLLGATE_BENCH_SCRIPTS");
    // The gateway's serving threads: as `tollgate gateway` chooses (one per core), or
    // TOLLGATE_BENCH_WORKERS.
    let default_threads = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let threads = std::env::var("TOLLGATE_BENCH_WORKERS").ok().and_then(|n| n.parse().ok()).unwrap_or(default_threads);
    println!("gateway serving threads: {threads}");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();

    let config_text = format!(
        r#"
        [server]
        instance_id = "bench-gateway"
        threads = {threads}
        [capture]
        mode = "digests"
        [guard]
        pii = "redact"

        [[upstreams]]
        name = "nginx"
        kind = "openai"
        base_url = "{upstream}"

        [[upstreams]]
        name = "nginx-sse"
        kind = "openai"
        base_url = "{upstream}/sse"

        [[models]]
        name = "gpt-4o-mini"
        targets = [{{ upstream = "nginx" }}]

        [[models]]
        name = "gpt-4o-mini-stream"
        targets = [{{ upstream = "nginx-sse", model = "gpt-4o-mini" }}]

        [[keys]]
        id = "key_bench"
        secret_sha256 = "{secret}"
        org = "bench-org"
        team = "bench-team"
        user = "bench-user"
        allowed_models = ["gpt-4o-mini*"]
        max_tokens = 1024
        requests_per_minute = 100000000
        tokens_per_minute = 1000000000
        "#,
        secret = hash_secret("tg-bench"),
    );
    let config = GatewayConfig::from_toml(&config_text, &HashMap::new()).unwrap();

    let spool_dir = tempfile::tempdir().unwrap();
    let (address, state) = runtime.block_on(async {
        let mut kafka = KafkaConfig::new(brokers);
        // Extra librdkafka producer properties for experiments, as `name=value,name=value`.
        if let Ok(extra) = std::env::var("TOLLGATE_BENCH_PRODUCER_PROPERTIES") {
            for pair in extra.split(',').filter(|pair| !pair.is_empty()) {
                let (name, value) = pair.split_once('=').expect("name=value");
                kafka.producer_properties.insert(name.to_owned(), value.to_owned());
            }
        }
        tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
        let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
        tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
        // A spool, as `tollgate gateway` has with Kafka: if the broker falls behind the
        // gateway, events wait there instead of being dropped.
        let spool: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(spool_dir.path())).unwrap());
        let recorder = Recorder::start(Arc::clone(&log), Some(spool), RecorderConfig::default()).await.unwrap();
        let state = Arc::new(GatewayState::new(config, recorder, PriceCatalog::shipped().unwrap()).unwrap());
        tokio::spawn(tollgate_ingest::quota::follow_forever(
            Arc::clone(&log),
            Arc::clone(&state.quota),
            "bench-gateway".to_owned(),
        ));
        // A hard team budget far from exhausted: every request is checked and reserves.
        let decision = QuotaDecision {
            schema_version: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            time_unix_micros: tollgate_schemas::now_unix_micros(),
            subject: Subject::new(SubjectKind::Team, "bench-team"),
            budget_id: "bench".to_owned(),
            window: BudgetWindow { kind: WindowKind::Lifetime, start_unix_micros: 0, end_unix_micros: None },
            budget: Nanodollars(1_000_000 * Nanodollars::PER_DOLLAR),
            spent: Nanodollars::ZERO,
            remaining: Nanodollars(1_000_000 * Nanodollars::PER_DOLLAR),
            state: QuotaState::Allow,
            hard: true,
            version: u64::try_from(tollgate_schemas::now_unix_micros()).unwrap(),
            source_offsets: Vec::new(),
            reason: None,
        };
        let payload = tollgate_schemas::encode(&decision).unwrap();
        tollgate_eventlog::publish_and_wait(log.as_ref(), QUOTA_DECISIONS, decision.message_key().as_bytes(), &payload)
            .await
            .unwrap();
        let subject = Subject::new(SubjectKind::Team, "bench-team");
        for _ in 0..200 {
            if state.quota.decision(&subject).is_some_and(|held| held.id == decision.id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(state.quota.decision(&subject).is_some(), "the budget decision never arrived");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(tollgate_ingest::run(listener, Arc::clone(&state), std::future::pending()));
        (address, state)
    });

    let gateway = format!("http://{address}/v1/chat/completions");
    let direct = format!("{upstream}/v1/chat/completions");
    let chat = format!("{scripts}/chat.lua");
    let stream = format!("{scripts}/stream.lua");

    // Warm both paths (connection pools, tokenizer tables, allocator).
    wrk(&gateway, &chat, 4, 1, 2);
    wrk(&direct, &chat, 4, 1, 2);

    let mut added_p50 = Vec::new();
    let mut added_p99 = Vec::new();
    println!("one connection, {LATENCY_SECONDS} s per run, {ROUNDS} rounds (latency in microseconds):");
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "round", "direct50", "direct99", "gw50", "gw99", "added50", "added99"
    );
    for round in 1..=ROUNDS {
        let base = wrk(&direct, &chat, 1, 1, LATENCY_SECONDS);
        let through = wrk(&gateway, &chat, 1, 1, LATENCY_SECONDS);
        assert_eq!(through.errors, 0.0, "the gateway answered errors: {through:?}");
        added_p50.push(through.p50_us - base.p50_us);
        added_p99.push(through.p99_us - base.p99_us);
        println!(
            "{round:>6} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            base.p50_us,
            base.p99_us,
            through.p50_us,
            through.p99_us,
            through.p50_us - base.p50_us,
            through.p99_us - base.p99_us
        );
    }

    let stream_direct = wrk(&format!("{upstream}/sse/v1/chat/completions"), &stream, 1, 1, LATENCY_SECONDS);
    let stream_gateway = wrk(&gateway, &stream, 1, 1, LATENCY_SECONDS);
    assert_eq!(stream_gateway.errors, 0.0);
    println!(
        "streaming, one connection: direct p50 {:.0} us p99 {:.0} us; gateway p50 {:.0} us p99 {:.0} us; added p50 {:.0} us p99 {:.0} us",
        stream_direct.p50_us,
        stream_direct.p99_us,
        stream_gateway.p50_us,
        stream_gateway.p99_us,
        stream_gateway.p50_us - stream_direct.p50_us,
        stream_gateway.p99_us - stream_direct.p99_us
    );

    let saturated_direct = wrk(&direct, &chat, SATURATION_CONNECTIONS, 1, SATURATION_SECONDS);
    let recorded_before = state.recorder.stats();
    let broker_pid = std::env::var("TOLLGATE_TEST_BROKER_PID").unwrap_or_default();
    let broker_before = process_cpu_micros(&broker_pid);
    let machine_before = machine_busy_micros();
    let cpu_before = cpu_micros();
    let saturated = wrk(&gateway, &chat, SATURATION_CONNECTIONS, 1, SATURATION_SECONDS);
    let cpu_after = cpu_micros();
    let machine_after = machine_busy_micros();
    let broker_after = process_cpu_micros(&broker_pid);
    assert_eq!(saturated.errors, 0.0, "the gateway answered errors under load: {saturated:?}");
    let flushed = runtime.block_on(state.recorder.flush(Duration::from_secs(30)));
    let stats = state.recorder.stats();
    println!(
        "saturation, {SATURATION_CONNECTIONS} connections, {SATURATION_SECONDS} s: direct {:.0} req/s; gateway {:.0} req/s, \
         p50 {:.0} us, p99 {:.0} us",
        saturated_direct.requests_per_second, saturated.requests_per_second, saturated.p50_us, saturated.p99_us
    );
    println!(
        "gateway CPU per request: {:.1} us (process user+system time / requests); peak memory (VmHWM) {:.0} MiB",
        (cpu_after - cpu_before) / saturated.requests.max(1.0),
        peak_memory_mib()
    );
    let per_request = |micros: f64| micros / saturated.requests.max(1.0);
    let broker_us = match (broker_before, broker_after) {
        (Some(before), Some(after)) => format!("{:.1} us", per_request(after - before)),
        _ => "not measured (TOLLGATE_TEST_BROKER_PID unset)".to_owned(),
    };
    println!(
        "machine CPU per request at saturation: {:.1} us of {} cores in all; broker {broker_us}; gateway {:.1} us; \
         the rest (wrk, nginx, other tenants) is the difference",
        per_request(machine_after - machine_before),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        per_request(cpu_after - cpu_before),
    );
    println!(
        "events: {} published and {} spooled during saturation for {} requests; all acknowledged or spooled: {flushed}",
        stats.published - recorded_before.published,
        stats.spooled - recorded_before.spooled,
        saturated.requests
    );
    // Whatever went to the spool reaches the broker before the figures count.
    let drain_started = std::time::Instant::now();
    let stats = loop {
        let stats = state.recorder.stats();
        if !stats.spooling && stats.drained >= stats.spooled {
            break stats;
        }
        assert!(drain_started.elapsed() < Duration::from_secs(600), "the spool did not drain: {stats:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("spool drained in {:.1} s; totals {stats:?}", drain_started.elapsed().as_secs_f64());
    assert_eq!(stats.dropped, 0);

    println!(
        "added_p50_us={:.0} added_p99_us={:.0} rps={:.0}",
        median(&mut added_p50),
        median(&mut added_p99),
        saturated.requests_per_second
    );
}
