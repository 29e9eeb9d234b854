//! The pricing stage: interactions in; priced interactions, violations and per-subject
//! spend out.
//!
//! A consumer group (`<prefix>-pricing`) over the interactions topic and the governance
//! topic. For each batch of records:
//!
//! - an interaction is priced ([`crate::pricer`]), checked by the detectors
//!   ([`crate::detect`]) and published as a `PricedInteraction` (its id is the
//!   interaction's) with its `PolicyViolation`s (ids derived from the interaction and
//!   rule); its cost is added to a spend update for each subject it counts toward (key,
//!   user, team, org);
//! - a budget change on the governance topic becomes a budget update for its subject;
//! - the spend updates of the batch are published, one per subject and source partition,
//!   keyed by subject, to the subject-updates topic: the repartition step that brings a
//!   subject's spend from every interactions partition into one partition of the budget
//!   stage;
//! - an undecodable record goes to the dead-letter topic with the reason.
//!
//! Once every output of a batch is acknowledged its offsets may be committed (every
//! quarter second). The stage keeps no state of its own, so a crash replays at most the
//! uncommitted batches: the same
//! outputs again, which downstream drops by id (stored records, violations) or by source
//! offset (spend, in the budget stage).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tollgate_eventlog::{EventLog, LogError, Position, Record};
use tollgate_schemas::pricing::{PriceCatalog, PriceCatalogDocument};
use tollgate_schemas::topics::{GOVERNANCE, INTERACTIONS, Keyed, PRICED_INTERACTIONS};
use tollgate_schemas::{
    DeadLetterReason, GovernanceChange, Interaction, Nanodollars, PricedInteraction, Principal, SCHEMA_VERSION,
    SourceOffset, SpendEntry, Subject, SubjectChange, SubjectKind, SubjectUpdate, TargetKind,
};

use crate::config::ProcessorConfig;
use crate::governance::{GovernanceView, budget_spec};
use crate::metrics::{DeadLetterLabels, PricedLabels, ProcessorMetrics, RuleLabels, StageLabels};
use crate::stage::{Outputs, StageError, next_batch, send_dead_letter};

const STAGE: &str = "pricing";

/// Runs the pricing stage until `shutdown` turns true or the log fails.
pub async fn run(
    log: Arc<dyn EventLog>,
    view: Arc<GovernanceView>,
    metrics: Arc<ProcessorMetrics>,
    config: ProcessorConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StageError> {
    let group = config.pricing_group();
    let mut subscription = log.subscribe(&group, &[INTERACTIONS, GOVERNANCE]).await?;
    let mut lag_checked = Instant::now();
    let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
    // Positions whose outputs are acknowledged but not yet committed.
    let mut uncommitted: BTreeMap<(String, i32), Position> = BTreeMap::new();
    let mut last_commit = Instant::now();
    loop {
        let batch = next_batch(subscription.as_mut(), config.batch_max_records, &mut shutdown, COMMIT_INTERVAL).await?;
        if batch.as_ref().is_none_or(Vec::is_empty) || last_commit.elapsed() >= COMMIT_INTERVAL {
            commit(subscription.as_mut(), &mut uncommitted).await?;
            last_commit = Instant::now();
        }
        let Some(batch) = batch else { return Ok(()) };
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let mut outputs = Outputs::default();
        let mut spend = BatchSpend::default();
        let mut priced = PricedCounts::default();
        // The next position of each partition in the batch (a handful of them).
        let mut committed: Vec<Position> = Vec::new();
        // One pricing time for the batch: the clock is read once, not per record.
        let priced_at = tollgate_schemas::now_unix_micros();
        for record in &batch {
            match committed.iter_mut().find(|p| p.partition == record.partition && p.topic == record.topic) {
                Some(position) => position.next_offset = record.offset + 1,
                None => committed.push(record.next_position()),
            }
            if record.topic == GOVERNANCE {
                governance_record(log.as_ref(), &view, &metrics, &group, record, &mut outputs).await?;
            } else {
                let context = Context { log: log.as_ref(), view: &view, metrics: &metrics, group: &group, priced_at };
                interaction_record(&context, record, &mut outputs, &mut spend, &mut priced).await?;
            }
        }
        for update in spend.updates() {
            outputs.event(log.as_ref(), update).await?;
        }
        outputs.acknowledged().await?;
        for position in committed {
            let partition = (position.topic.clone(), position.partition);
            positions.insert(partition.clone(), position.next_offset);
            uncommitted.insert(partition, position);
        }
        priced.report(&metrics);
        let labels = StageLabels { stage: STAGE };
        metrics.records.get_or_create(&labels).inc_by(batch.len() as u64);
        metrics.batch_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        if lag_checked.elapsed() >= Duration::from_secs(5) {
            lag_checked = Instant::now();
            report_lag(log.as_ref(), &metrics, subscription.assignment(), &positions).await;
        }
    }
}

/// How often the stage commits its offsets. A crash replays at most this much more;
/// committing after every batch would put a broker round trip on every batch's path.
const COMMIT_INTERVAL: Duration = Duration::from_millis(250);

/// Commits the positions of the partitions still assigned. A failed commit (a rebalance
/// in progress, say) only means those records are read again by whoever owns them next.
async fn commit(
    subscription: &mut dyn tollgate_eventlog::Subscription,
    uncommitted: &mut BTreeMap<(String, i32), Position>,
) -> Result<(), StageError> {
    if uncommitted.is_empty() {
        return Ok(());
    }
    let assigned = subscription.assignment();
    let positions: Vec<Position> =
        uncommitted.values().filter(|p| assigned.contains(&(p.topic.clone(), p.partition))).cloned().collect();
    uncommitted.clear();
    match subscription.commit(&positions).await {
        Ok(()) => {}
        // Already reported when the earlier commit timed out; the next commit covers these.
        Err(tollgate_eventlog::LogError::CommitPending) => {
            tracing::debug!("an earlier pricing-stage commit is still unanswered");
        }
        Err(error) => {
            tracing::warn!(%error, "committing pricing-stage offsets failed; those records will be priced again");
        }
    }
    Ok(())
}

/// What handling an interaction needs besides the record itself.
struct Context<'a> {
    log: &'a dyn EventLog,
    view: &'a GovernanceView,
    metrics: &'a ProcessorMetrics,
    group: &'a str,
    /// When the batch was priced, in microseconds since the Unix epoch.
    priced_at: i64,
}

async fn interaction_record(
    context: &Context<'_>,
    record: &Record,
    outputs: &mut Outputs,
    spend: &mut BatchSpend,
    counts: &mut PricedCounts,
) -> Result<(), StageError> {
    let Context { log, view, metrics, group, priced_at } = *context;
    let interaction = match tollgate_schemas::decode::<Interaction>(&record.payload) {
        Ok(interaction) => interaction,
        Err(error) => {
            let reason = error.dead_letter_reason();
            return reject(log, metrics, group, record, outputs, reason, error.to_string()).await;
        }
    };
    let (mut priced, unpriced) = view.pricer().priced_interaction(interaction, priced_at);
    priced.source =
        Some(SourceOffset { topic: record.topic.clone(), partition: record.partition, offset: record.offset });
    counts.count(unpriced);
    for violation in crate::detect::violations(&priced.interaction, unpriced) {
        metrics.violations.get_or_create(&RuleLabels { rule: violation.rule_id.clone() }).inc();
        outputs.event(log, &violation).await?;
    }
    let cost = priced.cost.total;
    if cost > Nanodollars::ZERO {
        let entry = SpendEntry { offset: record.offset, time_unix_micros: priced.interaction.time_unix_micros, cost };
        spend.add(record.partition, &priced.interaction.principal, entry);
    }
    let payload = priced_payload(&record.payload, &priced);
    match outputs.raw(log, PRICED_INTERACTIONS, priced.message_key().as_bytes(), &payload).await {
        Ok(()) => Ok(()),
        // An interaction the log took whose priced form it refuses (within a few hundred
        // bytes of the limit): retrying would stop the stage for good. Its spend is counted
        // above; the archive misses it, and the dead letter says so.
        Err(error @ LogError::TooLarge { .. }) => {
            let error = format!("its priced form: {error}");
            reject(log, metrics, group, record, outputs, DeadLetterReason::TooLarge, error).await
        }
        Err(error) => Err(error.into()),
    }
}

/// The spend of one batch: one update per subject and source partition, each with the
/// subject's entries in offset order. Adding an entry allocates only for a subject new to
/// the batch.
#[derive(Debug, Default)]
struct BatchSpend {
    updates: BTreeMap<(i32, SubjectKind), BTreeMap<String, SubjectUpdate>>,
}

impl BatchSpend {
    fn add(&mut self, partition: i32, principal: &Principal, entry: SpendEntry) {
        for (kind, id) in principal.subject_ids() {
            let of_kind = self.updates.entry((partition, kind)).or_default();
            if let Some(update) = of_kind.get_mut(id) {
                if let SubjectChange::Spend { entries } = &mut update.change {
                    entries.push(entry);
                }
                continue;
            }
            let update = SubjectUpdate {
                schema_version: SCHEMA_VERSION,
                subject: Subject::new(kind, id),
                org_id: principal.org_id.clone(),
                source_topic: INTERACTIONS.to_owned(),
                source_partition: partition,
                change: SubjectChange::Spend { entries: vec![entry] },
            };
            of_kind.insert(id.to_owned(), update);
        }
    }

    fn updates(&self) -> impl Iterator<Item = &SubjectUpdate> {
        self.updates.values().flat_map(BTreeMap::values)
    }
}

/// Interactions priced and unpriced in a batch, added to the metrics once per batch.
#[derive(Debug, Default)]
struct PricedCounts {
    priced: u64,
    unpriced: u64,
}

impl PricedCounts {
    fn count(&mut self, unpriced: bool) {
        if unpriced {
            self.unpriced += 1;
        } else {
            self.priced += 1;
        }
    }

    fn report(&self, metrics: &ProcessorMetrics) {
        for (priced, count) in [("true", self.priced), ("false", self.unpriced)] {
            if count > 0 {
                metrics.priced.get_or_create(&PricedLabels { priced }).inc_by(count);
            }
        }
    }
}

/// The JSON of `priced`, with the interaction as the gateway wrote it (`raw`, which has
/// just decoded as a valid interaction) instead of encoded again: the same document,
/// for less work on the hot path, and fields a newer gateway added survive.
fn priced_payload(raw: &[u8], priced: &PricedInteraction) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Rest<'a> {
        cost: &'a tollgate_schemas::Cost,
        price_catalog_version: &'a str,
        priced: bool,
        priced_at_unix_micros: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<&'a SourceOffset>,
    }
    let rest = Rest {
        cost: &priced.cost,
        price_catalog_version: &priced.price_catalog_version,
        priced: priced.priced,
        priced_at_unix_micros: priced.priced_at_unix_micros,
        source: priced.source.as_ref(),
    };
    // `{"cost":...}` is written after `{"schema_version":N,"interaction":RAW` and its
    // opening brace becomes the comma between the two.
    let raw = raw.trim_ascii();
    let mut payload = Vec::with_capacity(raw.len() + 400);
    let _ = write!(payload, "{{\"schema_version\":{},\"interaction\":", priced.schema_version);
    payload.extend_from_slice(raw);
    let rest_at = payload.len();
    if serde_json::to_writer(&mut payload, &rest).is_ok()
        && let Some(brace) = payload.get_mut(rest_at)
        && *brace == b'{'
    {
        *brace = b',';
        return payload;
    }
    tollgate_schemas::encode(priced).unwrap_or_default()
}

async fn governance_record(
    log: &dyn EventLog,
    view: &GovernanceView,
    metrics: &ProcessorMetrics,
    group: &str,
    record: &Record,
    outputs: &mut Outputs,
) -> Result<(), StageError> {
    let mut refuse = async |reason: DeadLetterReason, error: String| {
        reject(log, metrics, group, record, outputs, reason, error).await
    };
    let change = match tollgate_schemas::decode::<GovernanceChange>(&record.payload) {
        Ok(change) => change,
        Err(error) => return refuse(error.dead_letter_reason(), error.to_string()).await,
    };
    match change.target.kind {
        TargetKind::Budget => {
            // A lifted budget names only its id: its subject is known from earlier changes.
            view.read_up_to(record.offset).await;
            let spec = match budget_spec(&change) {
                Ok(spec) => spec,
                Err(error) => return refuse(DeadLetterReason::InvalidEvent, error).await,
            };
            let subject = match &spec {
                Some(spec) => spec.subject.clone(),
                None => match view.budget_subject(&change.target.id) {
                    Some(subject) => subject,
                    None => {
                        let error = format!("budget `{}` is lifted but was never set", change.target.id);
                        return refuse(DeadLetterReason::ProcessingFailed, error).await;
                    }
                },
            };
            let update = SubjectUpdate {
                schema_version: SCHEMA_VERSION,
                org_id: String::new(),
                subject,
                source_topic: GOVERNANCE.to_owned(),
                source_partition: record.partition,
                change: SubjectChange::Budget {
                    source_offset: record.offset,
                    change_id: change.id,
                    budget_id: change.target.id.clone(),
                    spec,
                },
            };
            outputs.event(log, &update).await?;
        }
        TargetKind::PriceCatalog if !change.value.is_null() => {
            let valid = serde_json::from_value::<PriceCatalogDocument>(change.value.clone())
                .map_err(|error| error.to_string())
                .and_then(|document| PriceCatalog::from_document(&document).map_err(|error| error.to_string()));
            if let Err(error) = valid {
                return refuse(DeadLetterReason::InvalidEvent, format!("price catalog value: {error}")).await;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Sends `record` to the dead-letter topic, counted.
async fn reject(
    log: &dyn EventLog,
    metrics: &ProcessorMetrics,
    group: &str,
    record: &Record,
    outputs: &mut Outputs,
    reason: DeadLetterReason,
    error: String,
) -> Result<(), StageError> {
    metrics.dead_letters.get_or_create(&DeadLetterLabels { stage: STAGE, reason: reason_label(reason) }).inc();
    Ok(send_dead_letter(outputs, log, record, group, reason, error).await?)
}

pub(crate) fn reason_label(reason: DeadLetterReason) -> &'static str {
    reason.as_str()
}

/// Sets the lag gauge of every owned partition from the log's end offsets.
pub(crate) async fn report_lag(
    log: &dyn EventLog,
    metrics: &ProcessorMetrics,
    assignment: Vec<(String, i32)>,
    positions: &BTreeMap<(String, i32), i64>,
) {
    let topics: std::collections::BTreeSet<String> = assignment.iter().map(|(topic, _)| topic.clone()).collect();
    for topic in topics {
        let Some(name) = tollgate_schemas::topics::ALL.iter().find(|spec| spec.name == topic).map(|spec| spec.name)
        else {
            continue;
        };
        let Ok(ends) = log.end_offsets(&topic).await else { continue };
        for (partition, end) in ends {
            if !assignment.contains(&(topic.clone(), partition)) {
                continue;
            }
            let position = positions.get(&(topic.clone(), partition)).copied().unwrap_or(0);
            let labels = crate::metrics::LagLabels { topic: name, partition };
            metrics.lag.get_or_create(&labels).set((end - position).max(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::model_call;

    #[test]
    fn the_spliced_record_is_the_priced_interaction() {
        let interaction = model_call("openai", "gpt-4o", 1_000, 100);
        let raw = tollgate_schemas::encode(&interaction).unwrap();
        let pricer = crate::pricer::Pricer::new(PriceCatalog::shipped().unwrap());
        let (mut priced, _) = pricer.priced_interaction(interaction, 1_794_000_000_000_000);
        priced.source = Some(SourceOffset { topic: INTERACTIONS.to_owned(), partition: 3, offset: 17 });
        let decoded: PricedInteraction = tollgate_schemas::decode(&priced_payload(&raw, &priced)).unwrap();
        assert_eq!(decoded, priced);
        assert!(priced.cost.total.0 > 0);
    }
}
