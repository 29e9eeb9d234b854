//! The processor's configuration: a TOML file (every setting optional; see
//! `processor.example.toml`), validated with every problem reported at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tollgate_schemas::pricing::parse_usd;
use tollgate_schemas::{BudgetSpec, Nanodollars, Subject, SubjectKind, WindowKind};

use crate::ledger::AnomalyConfig;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    processor: RawProcessor,
    #[serde(default)]
    anomaly: AnomalyConfig,
    #[serde(default)]
    budgets: Vec<RawBudget>,
    #[serde(default)]
    kafka: tollgate_eventlog::KafkaProperties,
    archive: Option<RawArchive>,
    clickhouse: Option<RawClickHouse>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClickHouse {
    #[serde(flatten)]
    connection: crate::sink::clickhouse::ClickHouseConfig,
    batch_max_rows: Option<usize>,
    flush_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    location: String,
    #[serde(default)]
    options: BTreeMap<String, String>,
    roll_max_records: Option<usize>,
    roll_max_mib: Option<usize>,
    roll_interval_seconds: Option<u64>,
    signing_key: Option<String>,
    signing_key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcessor {
    instance_id: Option<String>,
    group_prefix: Option<String>,
    batch_max_records: Option<usize>,
    checkpoint_interval_ms: Option<u64>,
    metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    id: String,
    /// `kind:id`, for example `team:ml`.
    subject: String,
    window: String,
    limit_usd: String,
    #[serde(default)]
    hard: bool,
    #[serde(default)]
    alert_thresholds_percent: Vec<u16>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    /// Name of this instance in logs and in the governance changes it publishes.
    pub instance_id: String,
    /// Consumer groups are `{group_prefix}-pricing`, `{group_prefix}-budgets`,
    /// `{group_prefix}-archive` and `{group_prefix}-clickhouse`.
    /// Instances with the same prefix share the work.
    pub group_prefix: String,
    /// Most records processed in one batch (outputs are acknowledged per batch).
    pub batch_max_records: usize,
    /// How often the budget stage checkpoints a partition that changed.
    pub checkpoint_interval: Duration,
    /// Where `/metrics` and `/healthz` are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    pub anomaly: AnomalyConfig,
    /// Budgets from the file, by id. Published as governance changes at start-up when
    /// the governance topic does not already say the same.
    pub budgets: Vec<(String, BudgetSpec)>,
    /// librdkafka properties for every client, producers and consumers (SASL, TLS, and
    /// the like), applied over [`ProcessorConfig::kafka_defaults`].
    pub kafka_properties: BTreeMap<String, String>,
    pub kafka_producer_properties: BTreeMap<String, String>,
    pub kafka_consumer_properties: BTreeMap<String, String>,
    /// The Parquet archive, if this processor writes one.
    pub archive: Option<ArchiveConfig>,
    /// ClickHouse, if this processor loads it.
    pub clickhouse: Option<WarehouseConfig>,
}

/// Where and how the ClickHouse stage inserts ([`crate::warehouse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarehouseConfig {
    pub connection: crate::sink::clickhouse::ClickHouseConfig,
    /// Rows gathered before an insert...
    pub batch_max_rows: usize,
    /// ...or the longest a row waits for one.
    pub flush_interval: Duration,
}

impl WarehouseConfig {
    /// The defaults for a server at `url`: inserts of up to 5,000 rows, at least once a
    /// second, into database `tollgate`.
    pub fn new(url: impl Into<String>) -> Self {
        WarehouseConfig {
            connection: crate::sink::clickhouse::ClickHouseConfig {
                url: url.into(),
                database: "tollgate".to_owned(),
                user: None,
                password: None,
            },
            batch_max_rows: 5_000,
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// Where and how the archive stage writes Parquet files ([`crate::archive`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// A directory, or an object store URL (`s3://bucket/prefix`).
    pub location: String,
    /// Object store options (`aws_endpoint`, `aws_region`, `aws_allow_http`, ...).
    pub options: BTreeMap<String, String>,
    /// A partition's buffer is written once it holds this many records...
    pub roll_max_records: usize,
    /// ...or this many bytes of events...
    pub roll_max_bytes: usize,
    /// ...or has been open this long. Also how stale the archive may be.
    pub roll_interval: Duration,
    /// The Ed25519 key (`PRIVATE+KEY+name+id+key`, see `tollgate keygen`) that signs the
    /// Merkle log's checkpoints. Without one the archive keeps no Merkle log.
    pub signing_key: Option<String>,
}

impl ArchiveConfig {
    /// The defaults for `location`: files of up to 100,000 records or 64 MiB of events,
    /// written at least once a minute.
    pub fn new(location: impl Into<String>) -> Self {
        ArchiveConfig {
            location: location.into(),
            options: BTreeMap::new(),
            roll_max_records: 100_000,
            roll_max_bytes: 64 << 20,
            roll_interval: Duration::from_secs(60),
            signing_key: None,
        }
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            instance_id: "processor-1".to_owned(),
            group_prefix: "tollgate-processor".to_owned(),
            batch_max_records: 2_000,
            checkpoint_interval: Duration::from_secs(5),
            metrics_listen: None,
            anomaly: AnomalyConfig::default(),
            budgets: Vec::new(),
            kafka_properties: BTreeMap::new(),
            kafka_producer_properties: BTreeMap::new(),
            kafka_consumer_properties: BTreeMap::new(),
            archive: None,
            clickhouse: None,
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid processor configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ProcessorConfig {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|error| ConfigError { problems: vec![error.to_string().trim().to_owned()] })?;
        let mut problems = Vec::new();
        let defaults = ProcessorConfig::default();
        let batch_max_records = raw.processor.batch_max_records.unwrap_or(defaults.batch_max_records);
        if batch_max_records == 0 {
            problems.push("processor.batch_max_records must be above zero".to_owned());
        }
        let checkpoint_interval =
            raw.processor.checkpoint_interval_ms.map_or(defaults.checkpoint_interval, Duration::from_millis);
        if checkpoint_interval.is_zero() {
            problems.push("processor.checkpoint_interval_ms must be above zero".to_owned());
        }
        if raw.anomaly.bucket_minutes == 0 || raw.anomaly.baseline_buckets == 0 {
            problems.push("anomaly.bucket_minutes and anomaly.baseline_buckets must be above zero".to_owned());
        }
        let mut budgets = Vec::new();
        for budget in raw.budgets {
            let name = format!("budget `{}`", budget.id);
            if budget.id.trim().is_empty() {
                problems.push("a budget has an empty id".to_owned());
            }
            if budgets.iter().any(|(id, _): &(String, BudgetSpec)| *id == budget.id) {
                problems.push(format!("{name} is defined twice"));
            }
            let subject = budget.subject.split_once(':').and_then(|(kind, id)| {
                Some(Subject::new(SubjectKind::parse(kind)?, id)).filter(|subject| !subject.id.is_empty())
            });
            let Some(subject) = subject else {
                problems.push(format!(
                    "{name}: subject `{}` must be `org:ID`, `team:ID`, `user:ID` or `key:ID`",
                    budget.subject
                ));
                continue;
            };
            let Some(window) = WindowKind::parse(&budget.window) else {
                problems.push(format!("{name}: window `{}` must be day, month or lifetime", budget.window));
                continue;
            };
            let Some(limit) = parse_usd(&budget.limit_usd) else {
                problems.push(format!("{name}: limit_usd `{}` is not a decimal amount of dollars", budget.limit_usd));
                continue;
            };
            let spec = BudgetSpec {
                subject,
                window,
                limit: Nanodollars(limit),
                hard: budget.hard,
                alert_thresholds_percent: budget.alert_thresholds_percent,
            };
            if let Err(problem) = spec.validate() {
                problems.push(format!("{name}: {problem}"));
                continue;
            }
            budgets.push((budget.id, spec));
        }
        let archive = raw.archive.map(|raw| {
            let defaults = ArchiveConfig::new(raw.location.clone());
            if raw.location.trim().is_empty() {
                problems.push("archive.location must name a directory or an object store URL".to_owned());
            }
            let signing_key = match (raw.signing_key, raw.signing_key_file) {
                (Some(_), Some(_)) => {
                    problems.push("archive.signing_key and archive.signing_key_file are both set; keep one".to_owned());
                    None
                }
                (Some(key), None) => Some(key),
                (None, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(key) => Some(key.trim().to_owned()),
                    Err(error) => {
                        problems.push(format!("archive.signing_key_file {}: {error}", path.display()));
                        None
                    }
                },
                (None, None) => None,
            };
            if let Some(key) = &signing_key
                && let Err(error) = tollgate_archive::transparency::LogSigner::new(key)
            {
                problems.push(format!("archive signing key: {error}"));
            }
            let settings = ArchiveConfig {
                signing_key,
                location: raw.location,
                options: raw.options,
                roll_max_records: raw.roll_max_records.unwrap_or(defaults.roll_max_records),
                roll_max_bytes: raw.roll_max_mib.map_or(defaults.roll_max_bytes, |mib| mib.saturating_mul(1 << 20)),
                roll_interval: raw.roll_interval_seconds.map_or(defaults.roll_interval, Duration::from_secs),
            };
            if settings.roll_max_records == 0 || settings.roll_max_bytes == 0 || settings.roll_interval.is_zero() {
                problems.push(
                    "archive.roll_max_records, archive.roll_max_mib and archive.roll_interval_seconds must be above zero"
                        .to_owned(),
                );
            }
            settings
        });
        let clickhouse = raw.clickhouse.map(|raw| {
            let defaults = WarehouseConfig::new(raw.connection.url.clone());
            if !(raw.connection.url.starts_with("http://") || raw.connection.url.starts_with("https://")) {
                problems.push(format!(
                    "clickhouse.url `{}` must be the HTTP interface, for example http://127.0.0.1:8123",
                    raw.connection.url
                ));
            }
            let settings = WarehouseConfig {
                connection: raw.connection,
                batch_max_rows: raw.batch_max_rows.unwrap_or(defaults.batch_max_rows),
                flush_interval: raw.flush_interval_ms.map_or(defaults.flush_interval, Duration::from_millis),
            };
            if settings.batch_max_rows == 0 || settings.flush_interval.is_zero() {
                problems
                    .push("clickhouse.batch_max_rows and clickhouse.flush_interval_ms must be above zero".to_owned());
            }
            settings
        });
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(ProcessorConfig {
            instance_id: raw.processor.instance_id.unwrap_or(defaults.instance_id),
            group_prefix: raw.processor.group_prefix.unwrap_or(defaults.group_prefix),
            batch_max_records,
            checkpoint_interval,
            metrics_listen: raw.processor.metrics_listen,
            anomaly: raw.anomaly,
            budgets,
            kafka_properties: raw.kafka.properties,
            kafka_producer_properties: raw.kafka.producer_properties,
            kafka_consumer_properties: raw.kafka.consumer_properties,
            archive,
            clickhouse,
        })
    }

    /// Applies the processor's Kafka client settings to `kafka`: its defaults, then the
    /// configured properties. Defaults: fetches answer within 20 ms when there is little
    /// to read (decisions should not wait for a full fetch), a member that stops
    /// heartbeating loses its partitions after 10 s (a crashed instance's work moves on
    /// quickly), and the producer batches for 2 ms with one request in flight per
    /// connection: with five, librdkafka's I/O thread spun while the broker was the
    /// slower side and took twice the processor's CPU for the same work
    /// (`scripts/bench-processor`, see BENCHMARKS.md).
    pub fn kafka_defaults(&self, kafka: &mut tollgate_eventlog::KafkaConfig) {
        let consumer =
            [("fetch.wait.max.ms", "20"), ("session.timeout.ms", "10000"), ("heartbeat.interval.ms", "1000")];
        for (name, value) in consumer {
            kafka.consumer_properties.insert(name.to_owned(), value.to_owned());
        }
        kafka.producer_properties.insert("linger.ms".to_owned(), "2".to_owned());
        kafka.producer_properties.insert("max.in.flight.requests.per.connection".to_owned(), "1".to_owned());
        kafka.properties.extend(self.kafka_properties.clone());
        kafka.producer_properties.extend(self.kafka_producer_properties.clone());
        kafka.consumer_properties.extend(self.kafka_consumer_properties.clone());
    }

    pub fn pricing_group(&self) -> String {
        format!("{}-pricing", self.group_prefix)
    }

    pub fn budgets_group(&self) -> String {
        format!("{}-budgets", self.group_prefix)
    }

    pub fn archive_group(&self) -> String {
        format!("{}-archive", self.group_prefix)
    }

    pub fn clickhouse_group(&self) -> String {
        format!("{}-clickhouse", self.group_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../processor.example.toml");
        let config = ProcessorConfig::from_toml(text).unwrap();
        assert_eq!(config.budgets.len(), 2);
        assert_eq!(config.budgets[0].1.limit.0, 500 * Nanodollars::PER_DOLLAR);
        let archive = config.archive.unwrap();
        assert_eq!(archive.location, "/var/lib/tollgate/archive");
        assert_eq!(archive, ArchiveConfig { location: archive.location.clone(), ..ArchiveConfig::new("") });
        let clickhouse = config.clickhouse.unwrap();
        assert_eq!(clickhouse, WarehouseConfig::new("http://127.0.0.1:8123"));
    }

    #[test]
    fn every_problem_is_reported() {
        let error = ProcessorConfig::from_toml(
            r#"
            [processor]
            batch_max_records = 0

            [[budgets]]
            id = "a"
            subject = "galaxy:x"
            window = "month"
            limit_usd = "10"

            [[budgets]]
            id = "b"
            subject = "team:ml"
            window = "week"
            limit_usd = "10"

            [[budgets]]
            id = "c"
            subject = "team:ml"
            window = "day"
            limit_usd = "-3"

            [[budgets]]
            id = "d"
            subject = "team:ml"
            window = "day"
            limit_usd = "0"
            "#,
        )
        .unwrap_err();
        let text = error.to_string();
        for expected in ["batch_max_records", "galaxy:x", "week", "`-3`", "above zero"] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(ProcessorConfig::from_toml("[processor]\nunknown = 1").unwrap_err().to_string().contains("unknown"));
    }
}
