//! Effectively once, by experiment: while 100,000 interactions flow through a real
//! Kafka-API broker, the `tollgate processor` binary is killed with SIGKILL at random
//! moments and started again, several times. Afterwards the spend of every subject in
//! every window equals a clean computation to the nano-dollar, every interaction is priced
//! exactly once in meaning, and no decision or violation is duplicated in meaning.
//!
//! The processors also write the Parquet archive and load ClickHouse: afterwards the
//! archive holds every interaction exactly once (the copies a crash made the pricing stage
//! publish again are left out), with every cost, and every violation and decision record;
//! ClickHouse read with `FINAL` has one row per interaction, violation and decision.
//!
//! A second test runs two processor instances in one consumer group and finds the same
//! totals as the clean computation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::AsArray;
use tollgate_archive::Archive;
use tollgate_archive::transparency;
use tollgate_eventlog::testing::{CLICKHOUSE_URL_ENV, TestBroker, required_env, unique_name};
use tollgate_eventlog::{EventLog, KafkaConfig, KafkaLog};
use tollgate_processor::pricer::Pricer;
use tollgate_processor::sink::clickhouse::{ClickHouseConfig, ClickHouseSink};
use tollgate_processor::testing::workload;
use tollgate_query_api::parquet::ParquetStore;
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{
    INTERACTIONS, Keyed, POLICY_VIOLATIONS, PRICED_INTERACTIONS, QUOTA_DECISIONS, SUBJECT_UPDATES,
};
use tollgate_schemas::{Interaction, PolicyViolation, PricedInteraction, QuotaDecision, Subject, WindowKind};

const INTERACTIONS_COUNT: usize = 100_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Event times start five minutes ago (or at midnight UTC, if that is later), as if the
/// calls were live; budgets published now then fall in the same windows.
fn start_time() -> i64 {
    let now = tollgate_schemas::now_unix_micros();
    (now - 300_000_000).max(now - now.rem_euclid(MICROS_PER_DAY))
}

fn processor_config(dir: &Path, database: &str, signing_key: &str) -> std::path::PathBuf {
    let mut text = String::from(
        r#"
        [processor]
        checkpoint_interval_ms = 2000
        batch_max_records = 1000

        [kafka.consumer_properties]
        "session.timeout.ms" = "6000"
        "heartbeat.interval.ms" = "500"
        "#,
    );
    text.push_str(&format!(
        "[archive]\nlocation = {:?}\nroll_max_records = 5000\nroll_interval_seconds = 1\nsigning_key = {:?}\n",
        archive_root(dir).display().to_string(),
        signing_key
    ));
    text.push_str(&format!(
        "[clickhouse]\nurl = {:?}\ndatabase = {:?}\nflush_interval_ms = 500\n",
        required_env(CLICKHOUSE_URL_ENV),
        database
    ));
    for team in 0..8 {
        text.push_str(&format!(
            "[[budgets]]\nid = \"team-{team}-monthly\"\nsubject = \"team:team-{team}\"\nwindow = \"month\"\n\
             limit_usd = \"40\"\nhard = true\nalert_thresholds_percent = [50, 80]\n"
        ));
    }
    for user in 0..32 {
        text.push_str(&format!(
            "[[budgets]]\nid = \"user-{user}-daily\"\nsubject = \"user:user-{user}\"\nwindow = \"day\"\n\
             limit_usd = \"5\"\nalert_thresholds_percent = [50]\n"
        ));
    }
    let path = dir.join("processor.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn archive_root(dir: &Path) -> std::path::PathBuf {
    dir.join("archive")
}

/// Whether every partition of every archived topic is archived up to its end.
async fn archived(log: &dyn EventLog, dir: &Path) -> bool {
    let archive = Archive::open(archive_root(dir).to_str().unwrap(), &BTreeMap::new()).unwrap();
    tollgate_processor::archive::caught_up(log, &archive).await.unwrap()
}

struct Processor {
    child: tokio::process::Child,
}

impl Processor {
    fn start(config: &Path, brokers: &str, instance: &str, log_dir: &Path) -> Self {
        let log_file = std::fs::File::create(log_dir.join(format!("{instance}.log"))).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["processor", "--kafka-bootstrap-servers", brokers, "--instance-id", instance])
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", std::env::var("TOLLGATE_TEST_PROCESSOR_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Processor { child }
    }

    async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, and the exit status after the graceful shutdown.
    async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await.unwrap().unwrap();
        assert!(exit.success(), "the processor exited with {exit} after SIGTERM");
    }
}

/// Expected spend per subject and window, computed directly from the interactions: the
/// day and month windows are those containing `clock` (the ledgers' latest event time).
fn expected_spend(interactions: &[Interaction], pricer: &Pricer, clock: i64) -> BTreeMap<(Subject, WindowKind), i64> {
    let day = clock.div_euclid(MICROS_PER_DAY);
    let mut spend = BTreeMap::new();
    for interaction in interactions {
        let cost = pricer.price(interaction).cost.total.0;
        let time = interaction.time_unix_micros;
        for subject in interaction.principal.subjects() {
            *spend.entry((subject.clone(), WindowKind::Lifetime)).or_insert(0) += cost;
            let same_day = time.div_euclid(MICROS_PER_DAY) == day;
            *spend.entry((subject.clone(), WindowKind::Day)).or_insert(0) += if same_day { cost } else { 0 };
            let same_month = year_month(time) == year_month(clock);
            *spend.entry((subject, WindowKind::Month)).or_insert(0) += if same_month { cost } else { 0 };
        }
    }
    spend
}

/// (year, month) of a time, UTC.
fn year_month(time: i64) -> (i32, u32) {
    use chrono::Datelike;
    let moment = chrono::DateTime::from_timestamp_micros(time).unwrap();
    (moment.year(), moment.month())
}

async fn publish_all(log: Arc<dyn EventLog>, interactions: Vec<Interaction>, per_second: usize) {
    for chunk in interactions.chunks(per_second / 10) {
        let mut pending = Vec::with_capacity(chunk.len());
        for interaction in chunk {
            let payload = tollgate_schemas::encode(interaction).unwrap();
            pending.push(log.publish(INTERACTIONS, interaction.message_key().as_bytes(), &payload).unwrap());
        }
        for ack in pending {
            ack.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of `topic`, read to its current end.
async fn read_topic<E: tollgate_schemas::Event>(log: &dyn EventLog, topic: &str) -> Vec<E> {
    let mut events = Vec::new();
    for (partition, end) in log.end_offsets(topic).await.unwrap() {
        let mut from = 0;
        while from < end {
            let records = log.read(topic, partition, from, 5_000).await.unwrap();
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            events.extend(records.iter().map(|record| tollgate_schemas::decode::<E>(&record.payload).unwrap()));
        }
    }
    events
}

/// Waits until every interaction is priced and the budget stage's checkpoints cover the
/// whole subject-updates topic (with no new updates arriving).
/// Whether ClickHouse holds `expected` priced interactions.
async fn loaded(database: &str, expected: usize) -> bool {
    let sink = clickhouse(database);
    let Ok(rows) = sink.query_json("SELECT count() AS rows FROM priced_interactions FINAL").await else { return false };
    rows.first().is_some_and(|row| row["rows"] == expected)
}

fn clickhouse(database: &str) -> ClickHouseSink {
    ClickHouseSink::new(&ClickHouseConfig {
        url: required_env(CLICKHOUSE_URL_ENV),
        database: database.to_owned(),
        user: None,
        password: None,
    })
}

async fn wait_until_processed(log: &dyn EventLog, expected: usize, log_dir: &Path, database: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        if tokio::time::Instant::now() >= deadline {
            for entry in std::fs::read_dir(log_dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|extension| extension == "log") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let tail: Vec<&str> = text.lines().rev().take(60).collect();
                    eprintln!("--- {}:\n{}", path.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
            }
            panic!("the processor did not catch up within 300 s");
        }
        let priced: HashSet<uuid::Uuid> = read_topic::<PricedInteraction>(log, PRICED_INTERACTIONS)
            .await
            .into_iter()
            .map(|record| record.interaction.id)
            .collect();
        if priced.len() >= expected {
            let ends = log.end_offsets(SUBJECT_UPDATES).await.unwrap();
            let mut caught_up = true;
            for (partition, end) in &ends {
                let ledger = tollgate_processor::checkpoint::load(log, *partition).await.unwrap().unwrap_or_default();
                caught_up &= ledger.next_offset == *end;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            if caught_up
                && log.end_offsets(SUBJECT_UPDATES).await.unwrap() == ends
                && archived(log, log_dir).await
                && loaded(database, expected).await
            {
                return;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The checks shared by both tests, after the processors have stopped.
async fn check_outputs(
    log: &dyn EventLog,
    interactions: &[Interaction],
    pricer: &Pricer,
    dir: &Path,
    database: &str,
    verifier_key: &str,
) {
    // Spend per subject and window, to the nano-dollar.
    let mut ledgers = BTreeMap::new();
    for (partition, _) in log.end_offsets(SUBJECT_UPDATES).await.unwrap() {
        let ledger = tollgate_processor::checkpoint::load(log, partition).await.unwrap().unwrap_or_default();
        ledgers.insert(partition, ledger);
    }
    let clock = ledgers.values().map(|ledger| ledger.clock_unix_micros).max().unwrap();
    let expected = expected_spend(interactions, pricer, clock);
    let mut mismatches = Vec::new();
    for ((subject, window), want) in &expected {
        let ledger = &ledgers[&tollgate_eventlog::partition_for_key(subject.key().as_bytes(), 8)];
        assert_eq!(ledger.clock_unix_micros.div_euclid(MICROS_PER_DAY), clock.div_euclid(MICROS_PER_DAY));
        let got = ledger.spent(subject, *window).0;
        if got != *want {
            mismatches.push(format!("{subject} {window:?}: {got} instead of {want}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );

    // Every interaction priced, each the same every time it was published.
    let costs: HashMap<uuid::Uuid, i64> =
        interactions.iter().map(|interaction| (interaction.id, pricer.price(interaction).cost.total.0)).collect();
    let priced = read_topic::<PricedInteraction>(log, PRICED_INTERACTIONS).await;
    let mut seen = HashSet::new();
    for record in &priced {
        assert_eq!(record.cost.total.0, costs[&record.interaction.id]);
        seen.insert(record.interaction.id);
    }
    assert_eq!(seen.len(), interactions.len(), "every interaction priced");
    println!("priced interactions: {} records for {} interactions", priced.len(), seen.len());

    // No decision duplicated in meaning: one meaning per subject and version.
    let decisions = read_topic::<QuotaDecision>(log, QUOTA_DECISIONS).await;
    // Budget, window start, spent, limit, state, id.
    type Meaning = (String, i64, i64, i64, &'static str, uuid::Uuid);
    let mut meanings: HashMap<(String, u64), Meaning> = HashMap::new();
    for decision in &decisions {
        let meaning = (
            decision.budget_id.clone(),
            decision.window.start_unix_micros,
            decision.spent.0,
            decision.budget.0,
            decision.state.as_str(),
            decision.id,
        );
        let previous = meanings.entry((decision.subject.key(), decision.version)).or_insert_with(|| meaning.clone());
        assert_eq!(*previous, meaning, "two decisions for {} version {} differ", decision.subject, decision.version);
    }
    println!(
        "decisions: {} records, {} distinct (the rest published again after a crash)",
        decisions.len(),
        meanings.len()
    );
    // The newest decision of each hard-budget team reflects its whole month.
    for team in 0..8 {
        let subject = Subject::new(tollgate_schemas::SubjectKind::Team, format!("team-{team}"));
        let newest = decisions.iter().filter(|decision| decision.subject == subject).max_by_key(|d| d.version).unwrap();
        let want: i64 = interactions
            .iter()
            .filter(|interaction| interaction.principal.team_id.as_deref() == Some(subject.id.as_str()))
            .map(|interaction| pricer.price(interaction).cost.total.0)
            .sum();
        assert_eq!(newest.spent.0, want, "{subject}");
    }

    // Violations: one id per interaction and rule, the expected ones.
    let violations = read_topic::<PolicyViolation>(log, POLICY_VIOLATIONS).await;
    let mut ids: HashMap<(uuid::Uuid, String), uuid::Uuid> = HashMap::new();
    for violation in &violations {
        let id = ids.entry((violation.interaction_id.unwrap(), violation.rule_id.clone())).or_insert(violation.id);
        assert_eq!(*id, violation.id, "one id per interaction and rule");
    }
    let expected_violations: usize = interactions
        .iter()
        .map(|interaction| tollgate_processor::detect::violations(interaction, !pricer.price(interaction).priced).len())
        .sum();
    assert_eq!(ids.len(), expected_violations);
    println!("violations: {} records, {} distinct", violations.len(), ids.len());

    // The archive: every interaction once with its cost; every violation and decision
    // record the topics hold.
    let store = ParquetStore::new();
    store.register_archive(&archive_root(dir)).await.unwrap();
    let single = async |sql: &str| -> Vec<i64> {
        let batches = store.sql(sql).await.unwrap();
        let batch = &batches[0];
        (0..batch.num_columns())
            .map(|column| batch.column(column).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0))
            .collect()
    };
    let expected_cost: i64 = costs.values().sum();
    let stored = single("SELECT count(*), count(DISTINCT id), sum(cost_total_nanos) FROM priced_interactions").await;
    let count = i64::try_from(interactions.len()).unwrap();
    assert_eq!(stored, vec![count, count, expected_cost], "archived priced interactions: rows, ids, cost");
    println!(
        "archive: {} priced interactions, {} copies from replays left out",
        stored[0],
        priced.len() - interactions.len()
    );
    let stored = single("SELECT count(*), count(DISTINCT id) FROM policy_violations").await;
    assert_eq!(stored, vec![i64::try_from(violations.len()).unwrap(), i64::try_from(ids.len()).unwrap()]);
    let stored = single("SELECT count(*), count(DISTINCT id) FROM quota_decisions").await;
    let decision_ids: HashSet<uuid::Uuid> = decisions.iter().map(|decision| decision.id).collect();
    assert_eq!(stored, vec![i64::try_from(decisions.len()).unwrap(), i64::try_from(decision_ids.len()).unwrap()]);

    // ClickHouse, read with FINAL: one row per interaction, violation and decision.
    let sink = clickhouse(database);
    let one = async |sql: &str| sink.query_json(sql).await.unwrap().into_iter().next().unwrap();
    let row = one(
        "SELECT count() AS rows, uniqExact(id) AS ids, sum(cost_total_nanos) AS cost FROM priced_interactions FINAL",
    )
    .await;
    assert_eq!((row["rows"].as_u64(), row["ids"].as_u64()), (Some(count as u64), Some(count as u64)));
    assert_eq!(row["cost"], expected_cost);
    let row = one("SELECT count() AS rows FROM policy_violations FINAL").await;
    assert_eq!(row["rows"], ids.len());
    let row = one("SELECT count() AS rows FROM quota_decisions FINAL").await;
    assert_eq!(row["rows"], decision_ids.len());
    println!("clickhouse: {count} priced interactions, {} violations, {} decisions", ids.len(), decision_ids.len());

    // The archive's Merkle log, rewritten where crashes cut ranges short, verifies.
    let archive = Archive::open(archive_root(dir).to_str().unwrap(), &BTreeMap::new()).unwrap();
    let reports = transparency::verify(&archive, verifier_key).await.unwrap();
    assert_eq!(reports.iter().map(|report| report.checkpoint_size).sum::<u64>(), count as u64);
    for report in &reports {
        assert!(report.ok(), "{report:?}");
    }
}

fn kafka_log(address: &str) -> Arc<dyn EventLog> {
    Arc::new(KafkaLog::connect(KafkaConfig::new(address)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_killed_mid_stream_give_the_totals_of_a_clean_pass() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let database = unique_name("crash").replace('-', "_");
    let (signing_key, verifier_key) = transparency::generate_key("crash-test.example").unwrap();
    let config = processor_config(dir.path(), &database, &signing_key);
    let log = kafka_log(&broker.address);
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let interactions = workload(INTERACTIONS_COUNT, 7, start_time());
    let pricer = Pricer::new(PriceCatalog::shipped().unwrap());

    // TOLLGATE_TEST_SEED replays a schedule that a failed run printed.
    let seed = std::env::var("TOLLGATE_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| tollgate_schemas::now_unix_micros().unsigned_abs());
    println!("kill schedule seed: {seed}");
    let mut random = seed | 1;
    let mut next_delay = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        Duration::from_millis(3_000 + random % 5_000)
    };

    let publisher = tokio::spawn(publish_all(Arc::clone(&log), interactions.clone(), 5_000));
    let mut processor = Processor::start(&config, &broker.address, "crash-0", dir.path());
    for round in 1..=4 {
        tokio::time::sleep(next_delay()).await;
        processor.kill().await;
        println!("killed the processor (round {round})");
        // The replacement starts once the dead member's session (6 s) has expired, so it
        // joins as a new member. tansu 0.6's group coordinator hands a member that stays
        // through another member's session expiry its old assignment again (the
        // partitions of the dead member go to nobody); Apache Kafka reassigns them.
        tokio::time::sleep(Duration::from_millis(6_500)).await;
        processor = Processor::start(&config, &broker.address, &format!("crash-{round}"), dir.path());
    }
    publisher.await.unwrap();
    wait_until_processed(log.as_ref(), INTERACTIONS_COUNT, dir.path(), &database).await;
    processor.stop().await;
    check_outputs(log.as_ref(), &interactions, &pricer, dir.path(), &database, &verifier_key).await;
    // The restarted instances resumed the budget stage from checkpoints, not from scratch.
    let resumed = (1..=4)
        .map(|round| std::fs::read_to_string(dir.path().join(format!("crash-{round}.log"))).unwrap())
        .filter(|text| text.lines().any(|line| line.contains("partition assigned") && !line.ends_with("next_offset=0")))
        .count();
    assert!(resumed > 0, "no restart resumed a budget partition from a checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_one_group_give_the_totals_of_one() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let database = unique_name("crash").replace('-', "_");
    let (signing_key, verifier_key) = transparency::generate_key("crash-test.example").unwrap();
    let config = processor_config(dir.path(), &database, &signing_key);
    let log = kafka_log(&broker.address);
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let interactions = workload(20_000, 11, start_time());
    let pricer = Pricer::new(PriceCatalog::shipped().unwrap());

    let first = Processor::start(&config, &broker.address, "pair-a", dir.path());
    let second = Processor::start(&config, &broker.address, "pair-b", dir.path());
    publish_all(Arc::clone(&log), interactions.clone(), 10_000).await;
    wait_until_processed(log.as_ref(), interactions.len(), dir.path(), &database).await;
    first.stop().await;
    second.stop().await;
    check_outputs(log.as_ref(), &interactions, &pricer, dir.path(), &database, &verifier_key).await;
    // Both instances did part of the work.
    for instance in ["pair-a", "pair-b"] {
        let text = std::fs::read_to_string(dir.path().join(format!("{instance}.log"))).unwrap();
        assert!(text.contains("subject-updates partition assigned"), "{instance} owned no budget partition:\n{text}");
    }
}
