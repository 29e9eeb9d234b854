//! The Parquet archive, end to end on the embedded log: interactions are priced by the
//! processor and archived; the files hold exactly what the topics hold (counted on both
//! sides, costs summed to the nano-dollar), split by date, and read the same in
//! DataFusion, pyarrow and DuckDB. A range left pending by a crashed writer is written
//! again under the same file name, replacing what was there; a poison record on an
//! archived topic goes to the dead-letter topic and the rest is archived.
//!
//! The crash test (`processor_crash.rs`) checks the archive after SIGKILLs on Kafka.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tollgate_archive::Archive;
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use tollgate_processor::ProcessorConfig;
use tollgate_processor::archive::caught_up;
use tollgate_processor::config::ArchiveConfig;
use tollgate_processor::metrics::ProcessorMetrics;
use tollgate_processor::pricer::Pricer;
use tollgate_processor::testing::{Running, team_budget, workload};
use tollgate_query_api::parquet::ParquetStore;
use tollgate_schemas::archive;
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{DEAD_LETTER, PRICED_INTERACTIONS};
use tollgate_schemas::{DeadLetter, Interaction};

const PYTHON_ENV: &str = "TOLLGATE_TEST_PYTHON";
const COUNT: usize = 3_000;
/// 2026-11-26T23:59:58.5Z: the interactions (1 ms apart) cross midnight after 1.5 s.
const START: i64 = 1_795_737_600_000_000 - 1_500_000;

async fn publish(log: &dyn EventLog, interactions: &[Interaction]) {
    tollgate_processor::testing::publish(log, interactions).await.unwrap();
}

/// Runs the processor, with a hard lifetime budget for team-0 and the archive set up as
/// `settings`, until `priced` priced interactions are archived; then stops it.
async fn run_until_archived(
    log: &Arc<dyn EventLog>,
    settings: ArchiveConfig,
    archive: &Archive,
    priced: usize,
) -> Arc<ProcessorMetrics> {
    let config = ProcessorConfig {
        budgets: vec![team_budget("team-0", 1)],
        archive: Some(settings),
        ..ProcessorConfig::default()
    };
    let processor = Running::start(Arc::clone(log), config, "archive-test").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let published: i64 = log.end_offsets(PRICED_INTERACTIONS).await.unwrap().iter().map(|(_, end)| end).sum();
        if published >= i64::try_from(priced).unwrap() && caught_up(log.as_ref(), archive).await.unwrap() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the archive did not catch up within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = Arc::clone(&processor.metrics);
    processor.stop().await.unwrap();
    metrics
}

/// Every Parquet file under `dir`, relative to it.
fn parquet_files(dir: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|extension| extension == "parquet") {
                files.insert(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    files
}

fn int(batches: &[datafusion_batch::RecordBatch], column: usize) -> i64 {
    use datafusion_batch::AsArray;
    let array = batches[0].column(column);
    array
        .as_primitive_opt::<datafusion_batch::Int64Type>()
        .map(|values| values.value(0))
        .unwrap_or_else(|| panic!("column {column} is not Int64: {:?}", array.data_type()))
}

mod datafusion_batch {
    pub use datafusion::arrow::array::{AsArray, RecordBatch};
    pub use datafusion::arrow::datatypes::Int64Type;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_holds_the_log_once_and_reads_the_same_everywhere() {
    let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| {
        panic!("{PYTHON_ENV} is not set: this test reads the archive with the pinned pyarrow and DuckDB that `scripts/test` installs. Run `scripts/test`.")
    });
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path().join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let interactions = workload(COUNT, 11, START);
    let pricer = Pricer::new(PriceCatalog::shipped().unwrap());

    // A writer crashed while writing offsets 0..=9 of priced partition 0: its marker says
    // so, and the file it was writing for the first date holds garbage.
    let archive = Archive::open(root.to_str().unwrap(), &BTreeMap::new()).unwrap();
    let first_date = archive::date_partition(START);
    let stale = archive::PRICED_INTERACTIONS.file_path(&first_date, 0, 0, 9);
    std::fs::create_dir_all(root.join(&stale).parent().unwrap()).unwrap();
    std::fs::write(root.join(&stale), b"half a file").unwrap();
    let marker = root.join(archive::PRICED_INTERACTIONS.progress_path(0));
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::write(
        &marker,
        r#"{"next_offset":0,"pending":[0,9],"sources":[],"instance":"crashed","updated_unix_micros":0}"#,
    )
    .unwrap();
    // A poison record on an archived topic.
    tollgate_eventlog::publish_and_wait(log.as_ref(), PRICED_INTERACTIONS, b"key-x", b"{\"schema_version\":1,")
        .await
        .unwrap();

    publish(log.as_ref(), &interactions).await;
    let settings = ArchiveConfig {
        roll_max_records: 400,
        roll_interval: Duration::from_millis(300),
        ..ArchiveConfig::new(root.to_str().unwrap())
    };
    let metrics = run_until_archived(&log, settings, &archive, COUNT + 1).await;

    // The pending range was cut where the crashed writer cut it, and its file replaced.
    let files = parquet_files(&root);
    assert!(files.contains(&stale), "{stale} was not written again");
    assert!(files.iter().any(|file| file.contains("-p000-00000000000000000010-")), "the next range starts at 10");
    // Every file name says what it holds: one range per partition, and ranges of a
    // partition do not overlap.
    let mut ranges: BTreeMap<(String, i32), BTreeSet<(i64, i64)>> = BTreeMap::new();
    for file in &files {
        let name = file.rsplit('/').next().unwrap().trim_end_matches(".parquet");
        let parts: Vec<&str> = name.rsplitn(4, '-').collect();
        let (last, first, partition) = (parts[0].parse().unwrap(), parts[1].parse().unwrap(), &parts[2][1..]);
        ranges.entry((parts[3].to_owned(), partition.parse().unwrap())).or_default().insert((first, last));
    }
    for ((table, partition), ranges) in &ranges {
        let mut next = 0;
        for (first, last) in ranges {
            assert!(*first >= next, "{table} partition {partition}: ranges overlap at {first}");
            next = last + 1;
        }
    }

    // DataFusion over the archive: every interaction once, every cost.
    let store = ParquetStore::new();
    store.register_archive(&root).await.unwrap();
    let expected_cost: i64 = interactions.iter().map(|interaction| pricer.price(interaction).cost.total.0).sum();
    let priced = store
        .sql(
            "SELECT count(*), count(DISTINCT id), sum(cost_total_nanos), count(DISTINCT date) FROM priced_interactions",
        )
        .await
        .unwrap();
    assert_eq!(int(&priced, 0), i64::try_from(COUNT).unwrap());
    assert_eq!(int(&priced, 1), i64::try_from(COUNT).unwrap());
    assert_eq!(int(&priced, 2), expected_cost);
    assert_eq!(int(&priced, 3), 2, "two dates");
    let ids: HashSet<uuid::Uuid> = store
        .query_records::<tollgate_schemas::PricedInteraction>("SELECT * FROM priced_interactions")
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.interaction.id)
        .collect();
    assert_eq!(ids, interactions.iter().map(|interaction| interaction.id).collect::<HashSet<_>>());
    let expected_violations: usize = interactions
        .iter()
        .map(|interaction| tollgate_processor::detect::violations(interaction, !pricer.price(interaction).priced).len())
        .sum();
    let violations = store.sql("SELECT count(DISTINCT id) FROM policy_violations").await.unwrap();
    assert_eq!(int(&violations, 0), i64::try_from(expected_violations).unwrap());
    // Decisions and governance changes: every record of the topic, once.
    let records = async |table: archive::Table| -> i64 {
        log.end_offsets(table.topic).await.unwrap().iter().map(|(_, end)| end).sum()
    };
    let governance_records = records(archive::GOVERNANCE_CHANGES).await;
    let decision_records = records(archive::QUOTA_DECISIONS).await;
    assert_eq!(governance_records, 1, "the configured budget");
    assert!(decision_records >= 2, "the budget's alert and block decisions; {decision_records}");
    let governance = store.sql("SELECT count(*) FROM governance_changes").await.unwrap();
    assert_eq!(int(&governance, 0), governance_records);
    let decisions = store.sql("SELECT count(*) FROM quota_decisions").await.unwrap();
    assert_eq!(int(&decisions, 0), decision_records);

    // The poison record went to the dead-letter topic with the archive's group, and was
    // counted.
    let letters = log.read(DEAD_LETTER, 0, 0, 100).await.unwrap();
    let letters: Vec<DeadLetter> =
        letters.iter().map(|record| tollgate_schemas::decode(&record.payload).unwrap()).collect();
    assert!(
        letters
            .iter()
            .any(|letter| letter.consumer_group.ends_with("-archive") && letter.source.topic == PRICED_INTERACTIONS),
        "{letters:?}"
    );
    assert!(
        metrics.encode().contains("tollgate_processor_dead_letters_total{stage=\"archive\",reason=\"not_json\"} 1")
    );

    // pyarrow and DuckDB read the same files and find the same.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/archive_check.py");
    let output = tokio::process::Command::new(&python).arg(script).arg(&root).output().await.unwrap();
    assert!(output.status.success(), "archive_check.py failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let found: Value = serde_json::from_slice(&output.stdout).unwrap();
    let dates: Vec<String> = vec![first_date, archive::date_partition(START + 2_000_000)];
    let orgs: BTreeSet<String> = interactions.iter().map(|interaction| interaction.principal.org_id.clone()).collect();
    for reader in ["pyarrow", "duckdb"] {
        let table = &found[reader]["priced_interactions"];
        assert_eq!(table["rows"], COUNT, "{reader}");
        assert_eq!(table["distinct_ids"], COUNT, "{reader}");
        assert_eq!(table["cost_total_nanos"], expected_cost, "{reader}");
        assert_eq!(table["dates"], serde_json::json!(dates), "{reader}");
        assert_eq!(table["org_ids"], serde_json::json!(orgs), "{reader}");
        assert_eq!(found[reader]["policy_violations"]["distinct_ids"], expected_violations, "{reader}");
        assert_eq!(found[reader]["governance_changes"]["rows"], governance_records, "{reader}");
        assert_eq!(found[reader]["quota_decisions"]["rows"], decision_records, "{reader}");
    }
}

/// An S3 API server (moto, from the pinned Python packages) on a free loopback port,
/// stopped when dropped.
struct S3Server {
    child: tokio::process::Child,
    endpoint: String,
}

impl S3Server {
    async fn start(python: &str) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = tokio::process::Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.get(format!("{endpoint}/")).send().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "the S3 server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        S3Server { child, endpoint }
    }

    async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new().put(format!("{}/{bucket}", self.endpoint)).send().await.unwrap();
        assert!(response.status().is_success(), "creating bucket {bucket}: {}", response.status());
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_works_on_s3_compatible_storage() {
    let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| {
        panic!("{PYTHON_ENV} is not set: this test runs the pinned moto S3 server that `scripts/test` installs. Run `scripts/test`.")
    });
    let s3 = S3Server::start(&python).await;
    s3.create_bucket("tollgate-archive").await;
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path().join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let interactions = workload(1_000, 5, START);
    publish(log.as_ref(), &interactions).await;

    let location = "s3://tollgate-archive/audit/archive";
    let options: BTreeMap<String, String> = [
        ("aws_endpoint", s3.endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "tollgate-test"),
        ("aws_secret_access_key", "tollgate-test"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    let archive = Archive::open(location, &options).unwrap();
    let settings = ArchiveConfig {
        options: options.clone(),
        roll_max_records: 300,
        roll_interval: Duration::from_millis(300),
        ..ArchiveConfig::new(location)
    };
    run_until_archived(&log, settings, &archive, interactions.len()).await;

    // The objects are where the layout says, under the URL's prefix.
    use futures::TryStreamExt as _;
    let prefix = object_store::path::Path::from("audit/archive/priced_interactions");
    let objects: Vec<_> = archive.store().list(Some(&prefix)).try_collect().await.unwrap();
    assert!(objects.len() >= 2, "{objects:?}");
    assert!(objects.iter().all(|object| object.location.as_ref().ends_with(".parquet")));

    // DataFusion reads them from the bucket.
    let store = ParquetStore::new();
    store.register_archive_in(&url::Url::parse(location).unwrap(), Arc::clone(archive.store())).await.unwrap();
    let pricer = Pricer::new(PriceCatalog::shipped().unwrap());
    let expected_cost: i64 = interactions.iter().map(|interaction| pricer.price(interaction).cost.total.0).sum();
    let priced = store.sql("SELECT count(DISTINCT id), sum(cost_total_nanos) FROM priced_interactions").await.unwrap();
    assert_eq!(int(&priced, 0), 1_000);
    assert_eq!(int(&priced, 1), expected_cost);
}

/// RFC 9162, section 2.1.3.2, written out here independently of the `tlog_tiles` code the
/// archive uses: does `proof` show that `leaf` is leaf `index` of the tree of `size` with
/// root `root`?
fn rfc9162_inclusion(leaf: [u8; 32], index: u64, size: u64, proof: &[[u8; 32]], root: [u8; 32]) -> bool {
    use sha2::{Digest, Sha256};
    let node = |left: &[u8; 32], right: &[u8; 32]| -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update([0x01]);
        hasher.update(left);
        hasher.update(right);
        hasher.finalize().into()
    };
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut hash = leaf;
    for sibling in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node(sibling, &hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            hash = node(&hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && hash == root
}

/// `SHA-256(0x00 || canonical JSON)`, computed here rather than by the archive.
fn leaf_of(record: &tollgate_schemas::PricedInteraction) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(tollgate_schemas::encode(record).unwrap());
    hasher.finalize().into()
}

/// A query API over the archive at `root`, with an auditor token.
struct QueryApi {
    base: String,
    client: reqwest::Client,
}

impl QueryApi {
    async fn start(root: &Path, log: Arc<dyn EventLog>, verifier: &str) -> Self {
        use tollgate_query_api::auth::{Role, TokenConfig, token_hash};
        let config = tollgate_query_api::server::QueryApiConfig {
            archive: root.display().to_string(),
            verifier_key: Some(verifier.to_owned()),
            tokens: vec![TokenConfig {
                name: "auditor".into(),
                sha256: token_hash("auditor-token"),
                role: Role::Auditor,
            }],
            ..Default::default()
        };
        let base = tollgate_query_api::server::serve_in_background(&config, log).await.unwrap();
        QueryApi { base, client: reqwest::Client::new() }
    }

    async fn get(&self, path: &str) -> Value {
        let response =
            self.client.get(format!("{}{path}", self.base)).bearer_auth("auditor-token").send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {body}");
        serde_json::from_str(&body).unwrap()
    }
}

fn unbase64(value: &Value) -> [u8; 32] {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap()).unwrap();
    bytes.try_into().unwrap()
}

/// Rewrites the Parquet file at `path` with `records`, keeping the Merkle log columns as
/// the writer set them (the first row's leaf index, counting up), as a careful forger would.
async fn rewrite(archive: &Archive, path: &str, records: &[tollgate_schemas::PricedInteraction]) {
    use datafusion::arrow::array::{Array, Int32Array, UInt64Array};
    use tollgate_schemas::arrow::{MERKLE_LEAF, MERKLE_PARTITION, StoredRecord, with_merkle_position};
    let original = archive.get(path).await.unwrap().unwrap();
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(original)
        .unwrap()
        .build()
        .unwrap();
    let first = reader.into_iter().next().unwrap().unwrap();
    let partition =
        first.column_by_name(MERKLE_PARTITION).unwrap().as_any().downcast_ref::<Int32Array>().unwrap().value(0);
    let leaf = first.column_by_name(MERKLE_LEAF).unwrap().as_any().downcast_ref::<UInt64Array>().unwrap().value(0);
    let batch = tollgate_schemas::PricedInteraction::to_record_batch(records).unwrap();
    let batch = with_merkle_position(&batch, partition, leaf).unwrap();
    let bytes = tollgate_processor::sink::parquet::to_bytes(&[batch], Vec::new()).unwrap();
    archive.put(path, bytes).await.unwrap();
}

fn run_verify(root: &Path, verifier: &str) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["verify", "--archive", root.to_str().unwrap(), "--verifier-key", verifier])
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_archive_is_found_and_named() {
    use tollgate_archive::transparency::{self, ProblemKind};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path().join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    let interactions = workload(800, 21, START);
    publish(log.as_ref(), &interactions).await;
    let (signing, verifier) = transparency::generate_key("tollgate-test.example").unwrap();
    let archive = Archive::open(root.to_str().unwrap(), &BTreeMap::new()).unwrap();
    let settings = ArchiveConfig {
        roll_max_records: 40,
        roll_interval: Duration::from_millis(200),
        signing_key: Some(signing),
        ..ArchiveConfig::new(root.to_str().unwrap())
    };
    run_until_archived(&log, settings, &archive, interactions.len()).await;

    // Untouched: every partition verifies, and its checkpoint covers all of it.
    let reports = transparency::verify(&archive, &verifier).await.unwrap();
    assert_eq!(reports.iter().map(|report| report.stored_records).sum::<u64>(), 800);
    for report in &reports {
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.checkpoint_size, report.stored_records);
    }
    assert!(run_verify(&root, &verifier).0);
    // A checkpoint does not verify with another key.
    let (_, stranger) = transparency::generate_key("tollgate-test.example").unwrap();
    let strange = transparency::verify(&archive, &stranger).await.unwrap();
    assert!(strange.iter().all(|report| report.problems[0].kind == ProblemKind::BadCheckpoint));

    // The busiest partition, its files in log order and its records.
    let busiest = reports.iter().max_by_key(|report| report.stored_records).unwrap();
    let partition = busiest.partition;
    let table = archive::PRICED_INTERACTIONS;
    let files = archive.data_files(table, partition).await.unwrap();
    let mut records = Vec::new();
    for file in &files {
        let rows: Vec<tollgate_schemas::PricedInteraction> = archive.read_records(&file.path).await.unwrap();
        records.extend(rows.into_iter().map(|record| (file.path.clone(), record)));
    }
    let size = busiest.checkpoint_size;
    assert_eq!(records.len() as u64, size);

    // An inclusion proof, checked by an independent implementation of RFC 9162.
    let note = transparency::read_checkpoint(&archive, table, partition, None).await.unwrap().unwrap();
    let head = transparency::open_checkpoint(&note, &verifier).unwrap();
    let merkle = transparency::PartitionLog::load(&archive, table, partition, size).await.unwrap();
    for index in [0, size / 2, size - 1] {
        let proof: Vec<[u8; 32]> =
            merkle.inclusion_proof(index, size).unwrap().into_iter().map(|hash| hash.0).collect();
        let leaf = leaf_of(&records[usize::try_from(index).unwrap()].1);
        assert!(rfc9162_inclusion(leaf, index, size, &proof, head.root.0), "record {index}");
        assert!(!rfc9162_inclusion(leaf, (index + 1) % size, size, &proof, head.root.0));
    }
    // A consistency proof between the first checkpoint and the newest.
    let history = archive.list(&format!("_merkle/{}/p{partition:03}/checkpoints", table.name)).await.unwrap();
    assert!(history.len() >= 2, "{history:?}");
    let first = archive.get(&history[0]).await.unwrap().unwrap();
    let first = transparency::open_checkpoint(&first, &verifier).unwrap();
    let proof = merkle.consistency_proof(first.size, size).unwrap();
    assert!(transparency::check_consistency(&proof, first.size, first.root, size, head.root));

    // The same proofs from the query API: each record's place in the log, an inclusion
    // proof against the signed checkpoint (checked here independently), a consistency
    // proof, and verification on request.
    let api = QueryApi::start(&root, Arc::clone(&log), &verifier).await;
    for index in [0, size / 2, size - 1] {
        let record = &records[usize::try_from(index).unwrap()].1;
        let detail = api.get(&format!("/v1/interactions/{}", record.interaction.id)).await;
        let proof = &detail["inclusion_proof"];
        assert_eq!(proof["status"], "included", "{proof}");
        assert_eq!(proof["verified"], true, "{proof}");
        assert_eq!(proof["partition"], partition);
        assert_eq!(proof["leaf_index"], index);
        assert_eq!(proof["tree_size"], size);
        let head = transparency::open_checkpoint(proof["checkpoint"].as_str().unwrap().as_bytes(), &verifier).unwrap();
        let hashes: Vec<[u8; 32]> = proof["hashes"].as_array().unwrap().iter().map(unbase64).collect();
        assert_eq!(unbase64(&proof["leaf_hash"]), leaf_of(record));
        assert!(
            rfc9162_inclusion(leaf_of(record), index, head.size, &hashes, head.root.0),
            "record {index} via the API"
        );
    }
    let listed = api.get("/v1/checkpoints").await;
    let listed = listed["partitions"].as_array().unwrap();
    assert_eq!(listed.len(), reports.len());
    let ours = listed.iter().find(|entry| entry["partition"] == partition).unwrap();
    assert_eq!(ours["tree_size"], size);
    assert!(ours["signed_sizes"].as_array().unwrap().contains(&Value::from(first.size)));
    let consistency =
        api.get(&format!("/v1/proofs/consistency?partition={partition}&old_size={}&new_size={size}", first.size)).await;
    let hashes: Vec<_> = consistency["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hash| tollgate_archive::transparency::Hash(unbase64(hash)))
        .collect();
    assert!(transparency::check_consistency(&hashes, first.size, first.root, size, head.root));
    let old =
        transparency::open_checkpoint(consistency["old_checkpoint"].as_str().unwrap().as_bytes(), &verifier).unwrap();
    assert_eq!(old, first);
    assert_eq!(api.get("/v1/verify").await["ok"], true);

    // Altering one record: found, and named.
    let victim = usize::try_from(size / 2).unwrap();
    let (path, _) = records[victim].clone();
    let in_file: Vec<tollgate_schemas::PricedInteraction> =
        records.iter().filter(|(file, _)| *file == path).map(|(_, record)| record.clone()).collect();
    let row = in_file.iter().position(|record| record.interaction.id == records[victim].1.interaction.id).unwrap();
    let original = archive.get(&path).await.unwrap().unwrap();
    let mut altered = in_file.clone();
    altered[row].cost.total.0 += 1;
    rewrite(&archive, &path, &altered).await;
    let report = transparency::verify_partition(&archive, partition, &verifier).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    let problem = &report.problems[0];
    assert_eq!(problem.kind, ProblemKind::Altered);
    assert_eq!(problem.interaction_id, Some(altered[row].interaction.id));
    assert_eq!(problem.file.as_deref(), Some(path.as_str()));
    assert_eq!(problem.row, Some(row));
    let (ok, printed) = run_verify(&root, &verifier);
    assert!(!ok && printed.contains(&altered[row].interaction.id.to_string()), "{printed}");
    let verified = api.get("/v1/verify").await;
    assert_eq!(verified["ok"], false);
    assert!(verified.to_string().contains(&altered[row].interaction.id.to_string()), "{verified}");
    // The altered record's proof no longer checks.
    let detail = api.get(&format!("/v1/interactions/{}", altered[row].interaction.id)).await;
    assert_eq!(detail["inclusion_proof"]["status"], "included", "{detail}");
    assert_eq!(detail["inclusion_proof"]["verified"], false, "{detail}");

    // Deleting one record.
    let mut fewer = in_file.clone();
    let deleted = fewer.remove(row);
    rewrite(&archive, &path, &fewer).await;
    let report = transparency::verify_partition(&archive, partition, &verifier).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].kind, ProblemKind::Missing);
    assert_eq!(report.problems[0].position, Some(victim as u64));
    if victim > 0 {
        let previous = records[victim - 1].1.interaction.id.to_string();
        assert!(report.problems[0].detail.contains(&previous), "{:?}", report.problems[0]);
    }
    assert_ne!(deleted.interaction.id, uuid::Uuid::nil());

    // Swapping two neighbouring records.
    let neighbour = if row + 1 < in_file.len() { row + 1 } else { row - 1 };
    let mut swapped = in_file.clone();
    swapped.swap(row, neighbour);
    rewrite(&archive, &path, &swapped).await;
    let report = transparency::verify_partition(&archive, partition, &verifier).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].kind, ProblemKind::Reordered);
    let pair = [in_file[row].interaction.id, in_file[neighbour].interaction.id];
    assert!(pair.contains(&report.problems[0].interaction_id.unwrap()));

    // Put back as it was: verifies again.
    archive.put(&path, original.to_vec()).await.unwrap();
    assert!(transparency::verify_partition(&archive, partition, &verifier).await.unwrap().ok());
    assert!(run_verify(&root, &verifier).0);
}
