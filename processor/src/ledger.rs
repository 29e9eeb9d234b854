//! The budget stage's state: spend per subject and window, budgets in force, and the
//! decisions and anomaly violations that follow from them. Pure and deterministic.
//!
//! A [`PartitionLedger`] holds everything about the subjects of one partition of the
//! subject-updates topic. [`PartitionLedger::apply`] folds one update into it and returns
//! what to publish. Its result depends only on the sequence of updates, never on the
//! wall clock or on which processor instance runs it, so:
//!
//! - a checkpoint (ledger plus `next_offset`) is valid whoever wrote it, and replaying
//!   the partition from a checkpoint gives the state and outputs of one clean pass;
//! - every output has a stable identity: a decision's version is the offset of the
//!   update that caused it plus one, times 65,536 (subjects live in one partition, so
//!   versions only increase per subject; the numbers in between are for window
//!   rollovers), and a violation's id is derived from what it is about.
//!
//! Exactly-once application: each subject remembers, per source partition, the highest
//! source offset it applied. The pricing stage may send the same spend twice (after a
//! crash or a rebalance), in overlapping batches; only entries above that mark count.
//!
//! Windows are UTC calendar days and months of the interactions' event times. The
//! ledger's clock is the latest event time it has seen (budget changes count by the time
//! in their change id). A quiet subject's window rolls over by the wall clock through
//! [`PartitionLedger::rollovers`], which the budget stage asks now and then; it reads
//! state without changing it, so determinism holds. Gateways also stop applying a
//! decision whose window has ended.

use std::collections::BTreeMap;

use chrono::{Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tollgate_schemas::topics::INTERACTIONS;
use tollgate_schemas::{
    BudgetSpec, BudgetWindow, Detector, Nanodollars, PolicyViolation, Principal, QuotaDecision, QuotaState,
    SCHEMA_VERSION, Severity, SourceOffset, Subject, SubjectChange, SubjectKind, SubjectUpdate, ViolationAction,
    WindowKind, derived_id,
};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Rule id of a team spend anomaly.
pub const SPEND_ANOMALY: &str = "spend_anomaly";

/// When a team's spend counts as anomalous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Width of one spend-rate bucket, in minutes.
    #[serde(default = "default_bucket_minutes")]
    pub bucket_minutes: u32,
    /// How many buckets before the current one make the baseline.
    #[serde(default = "default_baseline_buckets")]
    pub baseline_buckets: u32,
    /// Buckets of the baseline that must have spend before anything is anomalous.
    #[serde(default = "default_min_history_buckets")]
    pub min_history_buckets: u32,
    /// A bucket is anomalous above this many times the baseline's mean, in percent.
    #[serde(default = "default_factor_percent")]
    pub factor_percent: u32,
    /// ... and above this much spend in the bucket.
    #[serde(default = "default_min_bucket_spend")]
    pub min_bucket_spend: Nanodollars,
}

fn default_bucket_minutes() -> u32 {
    5
}
fn default_baseline_buckets() -> u32 {
    12
}
fn default_min_history_buckets() -> u32 {
    3
}
fn default_factor_percent() -> u32 {
    500
}
fn default_min_bucket_spend() -> Nanodollars {
    Nanodollars(Nanodollars::PER_DOLLAR)
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            bucket_minutes: default_bucket_minutes(),
            baseline_buckets: default_baseline_buckets(),
            min_history_buckets: default_min_history_buckets(),
            factor_percent: default_factor_percent(),
            min_bucket_spend: default_min_bucket_spend(),
        }
    }
}

impl AnomalyConfig {
    fn bucket_micros(&self) -> i64 {
        i64::from(self.bucket_minutes.max(1)) * 60_000_000
    }
}

/// The state of one partition of the subject-updates topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLedger {
    /// The next offset of the partition not yet applied.
    pub next_offset: i64,
    /// The latest event time applied.
    pub clock_unix_micros: i64,
    /// By subject key (`kind:id`).
    pub subjects: BTreeMap<String, SubjectLedger>,
}

/// One subject's spend, budgets and last decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectLedger {
    pub subject: Subject,
    pub org_id: String,
    pub budgets: BTreeMap<String, BudgetSpec>,
    /// Spend by UTC day number (days since the Unix epoch), kept for the current and the
    /// previous calendar month of the ledger's clock.
    pub spend_by_day: BTreeMap<i64, i64>,
    pub lifetime_spend: i64,
    /// Source topic -> partition -> highest source offset applied.
    pub applied: BTreeMap<String, BTreeMap<i32, i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<DecisionMemo>,
    /// Spend per anomaly bucket (bucket number since the epoch), teams only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_buckets: BTreeMap<i64, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly_fired_bucket: Option<i64>,
}

/// What the last published decision said, to tell whether a new one is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionMemo {
    /// The version the decision was published with.
    #[serde(default)]
    pub version: u64,
    pub budget_id: String,
    pub window_start_unix_micros: i64,
    pub state: QuotaState,
    pub level: usize,
    pub hard: bool,
    pub limit: i64,
    pub spent: i64,
}

/// What applying an update asks to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Decision(QuotaDecision),
    Violation(PolicyViolation),
}

/// A budget evaluated at the ledger's clock.
#[derive(Debug, Clone)]
struct Evaluation<'a> {
    budget_id: &'a str,
    spec: &'a BudgetSpec,
    window: BudgetWindow,
    spent: i64,
    state: QuotaState,
    /// Alert thresholds reached, plus one at 100%.
    level: usize,
}

impl PartitionLedger {
    /// Applies the update at `offset`. Offsets below `next_offset` were applied already
    /// and change nothing. `now_unix_micros` only stamps decisions (`time_unix_micros`);
    /// it never changes what is decided.
    pub fn apply(
        &mut self,
        offset: i64,
        update: &SubjectUpdate,
        anomaly: &AnomalyConfig,
        now_unix_micros: i64,
    ) -> Vec<Output> {
        if offset < self.next_offset {
            return Vec::new();
        }
        self.next_offset = offset + 1;
        let key = update.subject.key();
        let ledger = self.subjects.entry(key).or_insert_with(|| SubjectLedger {
            subject: update.subject.clone(),
            org_id: update.org_id.clone(),
            budgets: BTreeMap::new(),
            spend_by_day: BTreeMap::new(),
            lifetime_spend: 0,
            applied: BTreeMap::new(),
            last_decision: None,
            rate_buckets: BTreeMap::new(),
            anomaly_fired_bucket: None,
        });
        if ledger.org_id.is_empty() {
            ledger.org_id.clone_from(&update.org_id);
        }
        let applied = ledger.applied.entry(update.source_topic.clone()).or_default();
        let mark = applied.get(&update.source_partition).copied().unwrap_or(-1);
        let mut outputs = Vec::new();
        match &update.change {
            SubjectChange::Spend { entries } => {
                let fresh: Vec<_> = entries.iter().filter(|entry| entry.offset > mark).collect();
                let Some(last) = fresh.last() else { return outputs };
                applied.insert(update.source_partition, last.offset);
                let is_team = ledger.subject.kind == SubjectKind::Team;
                let bucket_micros = anomaly.bucket_micros();
                let mut latest_bucket = None;
                for entry in fresh {
                    let cost = entry.cost.0;
                    *ledger.spend_by_day.entry(entry.time_unix_micros.div_euclid(MICROS_PER_DAY)).or_insert(0) += cost;
                    ledger.lifetime_spend = ledger.lifetime_spend.saturating_add(cost);
                    self.clock_unix_micros = self.clock_unix_micros.max(entry.time_unix_micros);
                    if is_team {
                        let bucket = entry.time_unix_micros.div_euclid(bucket_micros);
                        *ledger.rate_buckets.entry(bucket).or_insert(0) += cost;
                        latest_bucket = latest_bucket.max(Some(bucket));
                    }
                }
                if let Some(bucket) = latest_bucket
                    && let Some(violation) = check_anomaly(ledger, bucket, anomaly)
                {
                    outputs.push(Output::Violation(violation));
                }
            }
            SubjectChange::Budget { source_offset, change_id, budget_id, spec } => {
                if *source_offset <= mark {
                    return outputs;
                }
                applied.insert(update.source_partition, *source_offset);
                if let Some((seconds, nanos)) = change_id.get_timestamp().map(|stamp| stamp.to_unix()) {
                    let micros = i64::try_from(seconds).unwrap_or(0) * 1_000_000 + i64::from(nanos / 1_000);
                    self.clock_unix_micros = self.clock_unix_micros.max(micros);
                }
                match spec {
                    Some(spec) => ledger.budgets.insert(budget_id.clone(), spec.clone()),
                    None => ledger.budgets.remove(budget_id),
                };
            }
        }
        prune(ledger, self.clock_unix_micros, anomaly);
        if let Some(decision) = decide(ledger, self.clock_unix_micros, offset, &update.change, now_unix_micros) {
            outputs.insert(0, Output::Decision(decision));
        }
        outputs
    }

    /// Decisions for the subjects whose last decision's window has ended by
    /// `now_unix_micros` (a day or month rolled over with no update since): each is the
    /// subject's state in the window containing `now`, with the version after its last
    /// decision. Changes nothing: the next update's decision supersedes them (its version
    /// is higher), and asking again gives the same decisions.
    pub fn rollovers(&self, now_unix_micros: i64) -> Vec<QuotaDecision> {
        let clock = self.clock_unix_micros.max(now_unix_micros);
        let mut decisions = Vec::new();
        for ledger in self.subjects.values() {
            let Some(memo) = &ledger.last_decision else { continue };
            let Some(spec) = ledger.budgets.get(&memo.budget_id) else { continue };
            let ended = window_at(spec.window, memo.window_start_unix_micros)
                .end_unix_micros
                .is_some_and(|end| end <= now_unix_micros);
            if !ended {
                continue;
            }
            let mut copy = ledger.clone();
            let change = SubjectChange::Spend { entries: Vec::new() };
            copy.last_decision = None;
            if let Some(mut decision) = decide(&mut copy, clock, 0, &change, now_unix_micros) {
                decision.version = memo.version.saturating_add(1);
                decision.id = derived_id(
                    decision.window.start_unix_micros,
                    &[b"rollover", ledger.subject.key().as_bytes(), &decision.version.to_be_bytes()],
                );
                decision.reason =
                    decision.reason.map(|reason| format!("new {} window: {reason}", spec.window.as_str()));
                decisions.push(decision);
            }
        }
        decisions
    }

    /// Moves past an update that could not be decoded (it went to the dead-letter topic).
    pub fn skip(&mut self, offset: i64) {
        self.next_offset = self.next_offset.max(offset + 1);
    }

    /// Spend of `subject` in the window of `kind` that contains the ledger's clock.
    pub fn spent(&self, subject: &Subject, kind: WindowKind) -> Nanodollars {
        let Some(ledger) = self.subjects.get(&subject.key()) else { return Nanodollars::ZERO };
        Nanodollars(window_spend(ledger, &window_at(kind, self.clock_unix_micros)))
    }
}

/// The window of `kind` containing `time`.
fn window_at(kind: WindowKind, time: i64) -> BudgetWindow {
    match kind {
        WindowKind::Lifetime => BudgetWindow { kind, start_unix_micros: 0, end_unix_micros: None },
        WindowKind::Day => {
            let start = time.div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY;
            BudgetWindow { kind, start_unix_micros: start, end_unix_micros: Some(start + MICROS_PER_DAY) }
        }
        WindowKind::Month => {
            let (start, end) = month_bounds(time);
            BudgetWindow { kind, start_unix_micros: start, end_unix_micros: Some(end) }
        }
    }
}

/// Start of the UTC month containing `time`, and of the next one.
fn month_bounds(time: i64) -> (i64, i64) {
    let Some(moment) = Utc.timestamp_micros(time).single() else { return (0, i64::MAX) };
    let start = |year: i32, month: u32| {
        Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single().map_or(0, |first| first.timestamp_micros())
    };
    let (year, month) = (moment.year(), moment.month());
    let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    (start(year, month), start(next_year, next_month))
}

fn window_spend(ledger: &SubjectLedger, window: &BudgetWindow) -> i64 {
    match window.end_unix_micros {
        None => ledger.lifetime_spend,
        Some(end) => {
            let first = window.start_unix_micros.div_euclid(MICROS_PER_DAY);
            let last = (end - 1).div_euclid(MICROS_PER_DAY);
            ledger.spend_by_day.range(first..=last).map(|(_, spent)| *spent).sum()
        }
    }
}

fn evaluate<'a>(budget_id: &'a str, spec: &'a BudgetSpec, ledger: &SubjectLedger, clock: i64) -> Evaluation<'a> {
    let window = window_at(spec.window, clock);
    let spent = window_spend(ledger, &window);
    let limit = spec.limit.0.max(1);
    let percent = i128::from(spent) * 100 / i128::from(limit);
    let reached = spent >= limit;
    let level = spec.alert_thresholds_percent.iter().filter(|threshold| i128::from(**threshold) <= percent).count()
        + usize::from(reached);
    let state = match (reached, spec.hard, level) {
        (true, true, _) => QuotaState::Block,
        (true, false, _) | (false, _, 1..) => QuotaState::Warn,
        (false, _, 0) => QuotaState::Allow,
    };
    Evaluation { budget_id, spec, window, spent, state, level }
}

fn severity(state: QuotaState) -> u8 {
    match state {
        QuotaState::Allow => 0,
        QuotaState::Warn => 1,
        QuotaState::Block => 2,
    }
}

/// Versions leave room between two updates' decisions for the window rollovers published
/// in between ([`PartitionLedger::rollovers`]).
const VERSIONS_PER_UPDATE: u64 = 1 << 16;

/// The version of a decision caused by the update at `offset`.
fn version_of(offset: i64) -> u64 {
    (u64::try_from(offset).unwrap_or(0) + 1).saturating_mul(VERSIONS_PER_UPDATE)
}

/// The decision to publish after an update, if the subject's state changed (or, for a
/// hard budget, its spend did: gateways add their own unreflected spend to it).
fn decide(
    ledger: &mut SubjectLedger,
    clock: i64,
    offset: i64,
    change: &SubjectChange,
    now_unix_micros: i64,
) -> Option<QuotaDecision> {
    let binding = ledger
        .budgets
        .iter()
        .map(|(budget_id, spec)| evaluate(budget_id, spec, ledger, clock))
        // Most severe state, then hard over soft, then least room left, then by id.
        .max_by(|a, b| {
            severity(a.state)
                .cmp(&severity(b.state))
                .then(a.spec.hard.cmp(&b.spec.hard))
                .then((b.spec.limit.0 - b.spent).cmp(&(a.spec.limit.0 - a.spent)))
                .then(b.budget_id.cmp(a.budget_id))
        });
    let version = version_of(offset);
    let source_offsets: Vec<SourceOffset> = ledger
        .applied
        .get(INTERACTIONS)
        .into_iter()
        .flatten()
        .map(|(partition, highest)| SourceOffset {
            topic: INTERACTIONS.to_owned(),
            partition: *partition,
            offset: highest + 1,
        })
        .collect();
    let Some(binding) = binding else {
        // No budget left: tell gateways once that the last one was lifted.
        let lifted = matches!(change, SubjectChange::Budget { spec: None, .. }) && ledger.last_decision.is_some();
        let memo = ledger.last_decision.take()?;
        if !lifted {
            return None;
        }
        return Some(QuotaDecision {
            schema_version: SCHEMA_VERSION,
            id: derived_id(clock, &[b"decision", ledger.subject.key().as_bytes(), &version.to_be_bytes()]),
            time_unix_micros: now_unix_micros,
            subject: ledger.subject.clone(),
            budget_id: memo.budget_id,
            window: BudgetWindow { kind: WindowKind::Lifetime, start_unix_micros: 0, end_unix_micros: None },
            budget: Nanodollars::ZERO,
            spent: Nanodollars(ledger.lifetime_spend),
            remaining: Nanodollars::ZERO,
            state: QuotaState::Allow,
            hard: false,
            version,
            source_offsets,
            reason: Some("no budget applies any more (lifted)".to_owned()),
        });
    };
    let memo = DecisionMemo {
        version,
        budget_id: binding.budget_id.to_owned(),
        window_start_unix_micros: binding.window.start_unix_micros,
        state: binding.state,
        level: binding.level,
        hard: binding.spec.hard,
        limit: binding.spec.limit.0,
        spent: binding.spent,
    };
    let due = match &ledger.last_decision {
        None => true,
        Some(last) => {
            let same_state = last.budget_id == memo.budget_id
                && last.window_start_unix_micros == memo.window_start_unix_micros
                && last.state == memo.state
                && last.level == memo.level
                && last.hard == memo.hard
                && last.limit == memo.limit;
            !same_state || (memo.hard && last.spent != memo.spent)
        }
    };
    if !due {
        return None;
    }
    let spec = binding.spec;
    let percent = i128::from(binding.spent) * 100 / i128::from(spec.limit.0.max(1));
    let kind = if spec.hard { "hard" } else { "soft" };
    let reason = match binding.state {
        QuotaState::Block => format!("{kind} budget reached 100% ({percent}% spent)"),
        QuotaState::Warn if binding.spent >= spec.limit.0 => format!("{kind} budget reached 100% ({percent}% spent)"),
        QuotaState::Warn => {
            let crossed = spec.alert_thresholds_percent.iter().filter(|t| i128::from(**t) <= percent).max();
            format!("alert threshold {}% crossed ({percent}% spent)", crossed.copied().unwrap_or(0))
        }
        QuotaState::Allow => format!("{percent}% of the {kind} budget spent"),
    };
    let decision = QuotaDecision {
        schema_version: SCHEMA_VERSION,
        id: derived_id(clock, &[b"decision", ledger.subject.key().as_bytes(), &version.to_be_bytes()]),
        time_unix_micros: now_unix_micros,
        subject: ledger.subject.clone(),
        budget_id: binding.budget_id.to_owned(),
        window: binding.window.clone(),
        budget: spec.limit,
        spent: Nanodollars(binding.spent),
        remaining: Nanodollars(spec.limit.0 - binding.spent),
        state: binding.state,
        hard: spec.hard,
        version,
        source_offsets,
        reason: Some(reason),
    };
    ledger.last_decision = Some(memo);
    Some(decision)
}

/// A team spend anomaly in `bucket`, once per bucket.
fn check_anomaly(ledger: &mut SubjectLedger, bucket: i64, config: &AnomalyConfig) -> Option<PolicyViolation> {
    if ledger.anomaly_fired_bucket.is_some_and(|fired| fired >= bucket) {
        return None;
    }
    let current = ledger.rate_buckets.get(&bucket).copied().unwrap_or(0);
    let baseline_buckets = i64::from(config.baseline_buckets.max(1));
    let history: Vec<i64> =
        ledger.rate_buckets.range(bucket - baseline_buckets..bucket).map(|(_, spent)| *spent).collect();
    let with_spend = history.iter().filter(|spent| **spent > 0).count();
    if with_spend < usize::try_from(config.min_history_buckets).unwrap_or(usize::MAX) {
        return None;
    }
    let baseline_total: i128 = history.iter().map(|spent| i128::from(*spent)).sum();
    // current > factor% x (total / buckets), in integers.
    let anomalous = i128::from(current) * 100 * i128::from(baseline_buckets)
        > i128::from(config.factor_percent) * baseline_total
        && current >= config.min_bucket_spend.0;
    if !anomalous {
        return None;
    }
    ledger.anomaly_fired_bucket = Some(bucket);
    let bucket_start = bucket * config.bucket_micros();
    let mean = i64::try_from(baseline_total / i128::from(baseline_buckets)).unwrap_or(i64::MAX);
    let team = &ledger.subject.id;
    Some(PolicyViolation {
        schema_version: SCHEMA_VERSION,
        id: derived_id(bucket_start, &[SPEND_ANOMALY.as_bytes(), ledger.subject.key().as_bytes()]),
        time_unix_micros: bucket_start,
        interaction_id: None,
        principal: Principal {
            org_id: ledger.org_id.clone(),
            team_id: Some(team.clone()),
            user_id: None,
            project_id: None,
            key_id: String::new(),
        },
        rule_id: SPEND_ANOMALY.to_owned(),
        severity: Severity::Medium,
        detector: Detector::Processor,
        action: ViolationAction::Logged,
        summary: format!(
            "team {team} spent {} USD in {} minutes, over {}% of its baseline of {} USD per {} minutes",
            Nanodollars(current),
            config.bucket_minutes,
            config.factor_percent,
            Nanodollars(mean),
            config.bucket_minutes
        ),
        evidence: None,
    })
}

/// Forgets day spend older than the previous month and rate buckets older than the
/// anomaly baseline needs.
fn prune(ledger: &mut SubjectLedger, clock: i64, anomaly: &AnomalyConfig) {
    let (this_month, _) = month_bounds(clock);
    let (previous_month, _) = month_bounds(this_month - 1);
    let keep_from_day = previous_month.div_euclid(MICROS_PER_DAY);
    ledger.spend_by_day.retain(|day, _| *day >= keep_from_day);
    if !ledger.rate_buckets.is_empty() {
        let keep_from_bucket = clock.div_euclid(anomaly.bucket_micros()) - i64::from(anomaly.baseline_buckets) - 1;
        ledger.rate_buckets.retain(|bucket, _| *bucket >= keep_from_bucket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_schemas::SpendEntry;

    const DAY: i64 = MICROS_PER_DAY;
    /// 2026-11-10T00:00:00Z.
    const NOV_10: i64 = 1_794_268_800_000_000;
    const USD: i64 = Nanodollars::PER_DOLLAR;

    fn team() -> Subject {
        Subject::new(SubjectKind::Team, "ml")
    }

    fn spend(partition: i32, entries: &[(i64, i64, i64)]) -> SubjectUpdate {
        SubjectUpdate {
            schema_version: SCHEMA_VERSION,
            subject: team(),
            org_id: "acme".to_owned(),
            source_topic: INTERACTIONS.to_owned(),
            source_partition: partition,
            change: SubjectChange::Spend {
                entries: entries
                    .iter()
                    .map(|(offset, time, cost)| SpendEntry {
                        offset: *offset,
                        time_unix_micros: *time,
                        cost: Nanodollars(*cost),
                    })
                    .collect(),
            },
        }
    }

    use tollgate_schemas::topics::GOVERNANCE;

    /// A change id made at `time_unix_micros`: the ledger's clock follows the ids of
    /// budget changes, so tests must not use the wall clock's.
    fn change_id_at(time_unix_micros: i64) -> uuid::Uuid {
        uuid::Builder::from_unix_timestamp_millis(u64::try_from(time_unix_micros / 1000).unwrap(), &[0; 10]).into_uuid()
    }

    fn budget(source_offset: i64, id: &str, window: WindowKind, limit_usd: i64, hard: bool) -> SubjectUpdate {
        SubjectUpdate {
            schema_version: SCHEMA_VERSION,
            subject: team(),
            org_id: "acme".to_owned(),
            source_topic: GOVERNANCE.to_owned(),
            source_partition: 0,
            change: SubjectChange::Budget {
                source_offset,
                change_id: change_id_at(NOV_10),
                budget_id: id.to_owned(),
                spec: Some(BudgetSpec {
                    subject: team(),
                    window,
                    limit: Nanodollars(limit_usd * USD),
                    hard,
                    alert_thresholds_percent: vec![50, 80],
                }),
            },
        }
    }

    fn decisions(outputs: &[Output]) -> Vec<&QuotaDecision> {
        outputs
            .iter()
            .filter_map(|output| match output {
                Output::Decision(decision) => Some(decision),
                Output::Violation(_) => None,
            })
            .collect()
    }

    #[test]
    fn spend_crosses_thresholds_and_blocks_a_hard_budget() {
        let config = AnomalyConfig::default();
        let mut ledger = PartitionLedger::default();
        let first = ledger.apply(0, &budget(0, "ml-monthly", WindowKind::Month, 10, true), &config, 0);
        let decision = decisions(&first)[0];
        assert_eq!((decision.state, decision.version, decision.spent.0), (QuotaState::Allow, 1 << 16, 0));
        assert_eq!(decision.window.start_unix_micros, 1_793_491_200_000_000, "2026-11-01");
        assert_eq!(decision.window.end_unix_micros, Some(1_796_083_200_000_000), "2026-12-01");

        let outputs = ledger.apply(1, &spend(3, &[(0, NOV_10, 3 * USD), (1, NOV_10 + 1, 3 * USD)]), &config, 0);
        let decision = decisions(&outputs)[0];
        assert_eq!((decision.state, decision.spent.0, decision.remaining.0), (QuotaState::Warn, 6 * USD, 4 * USD));
        assert_eq!(decision.reason.as_deref(), Some("alert threshold 50% crossed (60% spent)"));
        assert_eq!(decision.version, 2 << 16);
        assert_eq!(decision.source_offsets, [SourceOffset { topic: INTERACTIONS.to_owned(), partition: 3, offset: 2 }]);

        // The same spend again (a re-sent batch overlapping the next): only offset 2 counts.
        let outputs = ledger.apply(2, &spend(3, &[(1, NOV_10 + 1, 3 * USD), (2, NOV_10 + 2, 5 * USD)]), &config, 0);
        let decision = decisions(&outputs)[0];
        assert_eq!((decision.state, decision.spent.0, decision.hard), (QuotaState::Block, 11 * USD, true));
        assert_eq!(ledger.spent(&team(), WindowKind::Month).0, 11 * USD);
        assert_eq!(ledger.spent(&team(), WindowKind::Lifetime).0, 11 * USD);
        assert!(ledger.apply(3, &spend(3, &[(2, NOV_10 + 2, 5 * USD)]), &config, 0).is_empty(), "all seen");
        assert!(ledger.apply(2, &spend(3, &[(9, NOV_10, USD)]), &config, 0).is_empty(), "an old offset");
        assert_eq!(ledger.next_offset, 4);
    }

    #[test]
    fn the_binding_budget_is_the_tightest_and_a_lift_is_published() {
        let config = AnomalyConfig::default();
        let mut ledger = PartitionLedger::default();
        ledger.apply(0, &budget(0, "monthly", WindowKind::Month, 100, true), &config, 0);
        ledger.apply(1, &budget(1, "daily", WindowKind::Day, 5, true), &config, 0);
        let outputs = ledger.apply(2, &spend(0, &[(0, NOV_10, 2 * USD)]), &config, 0);
        assert_eq!(decisions(&outputs)[0].budget_id, "daily", "3 USD left today beats 98 this month");
        // The next day's spend fills the fresh daily window.
        let outputs = ledger.apply(3, &spend(0, &[(1, NOV_10 + DAY, 5 * USD)]), &config, 0);
        let decision = decisions(&outputs)[0];
        assert_eq!((decision.budget_id.as_str(), decision.state), ("daily", QuotaState::Block));
        assert_eq!(decision.window.start_unix_micros, NOV_10 + DAY);
        let lift = |offset| SubjectUpdate {
            change: SubjectChange::Budget {
                source_offset: offset,
                change_id: change_id_at(NOV_10 + DAY + 1),
                budget_id: "daily".to_owned(),
                spec: None,
            },
            ..budget(0, "daily", WindowKind::Day, 5, true)
        };
        let outputs = ledger.apply(4, &lift(2), &config, 0);
        let decision = decisions(&outputs)[0];
        assert_eq!((decision.budget_id.as_str(), decision.state), ("monthly", QuotaState::Allow));
        assert_eq!(decision.spent.0, 7 * USD);
        let outputs = ledger.apply(
            5,
            &SubjectUpdate {
                change: SubjectChange::Budget {
                    source_offset: 3,
                    change_id: change_id_at(NOV_10 + DAY + 2),
                    budget_id: "monthly".to_owned(),
                    spec: None,
                },
                ..budget(0, "monthly", WindowKind::Month, 5, true)
            },
            &config,
            0,
        );
        let decision = decisions(&outputs)[0];
        assert_eq!((decision.state, decision.hard, decision.budget.0), (QuotaState::Allow, false, 0));
        assert!(ledger.apply(6, &spend(0, &[(2, NOV_10 + DAY, USD)]), &config, 0).is_empty(), "no budget, no decision");
    }

    #[test]
    fn a_team_spending_far_above_its_baseline_is_an_anomaly_once_per_bucket() {
        let config = AnomalyConfig::default();
        let bucket = config.bucket_micros();
        let mut ledger = PartitionLedger::default();
        let mut offset = 0;
        let mut source = 0;
        let mut feed = |ledger: &mut PartitionLedger, time: i64, cost: i64| {
            let outputs = ledger.apply(offset, &spend(0, &[(source, time, cost)]), &config, 0);
            offset += 1;
            source += 1;
            outputs
        };
        let start = NOV_10;
        for step in 0..12 {
            assert!(feed(&mut ledger, start + step * bucket, USD / 2).is_empty());
        }
        assert!(feed(&mut ledger, start + 12 * bucket, USD).is_empty(), "twice the baseline is not an anomaly");
        let outputs = feed(&mut ledger, start + 12 * bucket + 1, 3 * USD);
        let Some(Output::Violation(violation)) = outputs.first() else { panic!("{outputs:?}") };
        assert_eq!(violation.rule_id, SPEND_ANOMALY);
        assert_eq!(violation.principal.team_id.as_deref(), Some("ml"));
        assert!(violation.summary.contains("4.000000000 USD"), "{}", violation.summary);
        assert!(feed(&mut ledger, start + 12 * bucket + 2, 3 * USD).is_empty(), "once per bucket");
    }

    #[test]
    fn a_window_that_ends_without_updates_rolls_over() {
        let config = AnomalyConfig::default();
        let mut ledger = PartitionLedger::default();
        ledger.apply(0, &budget(0, "daily", WindowKind::Day, 5, true), &config, 0);
        let outputs = ledger.apply(1, &spend(0, &[(0, NOV_10, 6 * USD)]), &config, 0);
        let blocked = decisions(&outputs)[0].clone();
        assert_eq!(blocked.state, QuotaState::Block);
        assert!(ledger.rollovers(NOV_10 + DAY - 1).is_empty(), "the day is not over");
        let before = ledger.clone();
        let rolled = ledger.rollovers(NOV_10 + DAY + 60_000_000);
        assert_eq!(ledger, before, "asking changes nothing");
        assert_eq!(rolled.len(), 1);
        let next_day = &rolled[0];
        assert_eq!((next_day.state, next_day.spent.0), (QuotaState::Allow, 0));
        assert_eq!(next_day.window.start_unix_micros, NOV_10 + DAY);
        assert_eq!(next_day.version, blocked.version + 1);
        assert_eq!(rolled, ledger.rollovers(NOV_10 + DAY + 60_000_000), "the same decision every time");
        let outputs = ledger.apply(2, &spend(0, &[(1, NOV_10 + DAY + 1, USD)]), &config, 0);
        assert!(decisions(&outputs)[0].version > next_day.version, "the next update's decision supersedes it");
    }

    #[test]
    fn month_bounds_follow_the_calendar() {
        // 2024-02-15: a leap-year February.
        let (start, end) = month_bounds(1_707_955_200_000_000);
        assert_eq!((start, end), (1_706_745_600_000_000, 1_709_251_200_000_000));
        // 2026-12-31T23:59:59Z rolls into 2027.
        let (_, end) = month_bounds(1_798_761_599_000_000);
        assert_eq!(end, 1_798_761_600_000_000);
    }
}
