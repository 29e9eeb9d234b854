//! Live budget enforcement: the latest quota decision per subject, plus this replica's own
//! spend that the decisions do not reflect yet.
//!
//! The processor publishes a `QuotaDecision` per subject (org, team, user, key) on the
//! compacted decisions topic. Every gateway replica reads that topic from the beginning
//! with a consumer group of its own ([`follow`]) and keeps the newest version per subject
//! in a [`QuotaBook`].
//!
//! A `block` decision refuses the subject's requests at once. Between decisions, for a hard
//! budget, the replica adds to the decision's `spent` its own spend the decision has not
//! seen: the cost of its recorded calls at or past the decision's source offsets, plus a
//! reservation of each in-flight request's worst-case cost (prompt tokens and `max_tokens`
//! at catalog prices). A request is admitted while that projection is below the budget and
//! then reserves its own worst case, so a replica overshoots a budget by at most what it
//! has in flight when the budget is reached. Reservations are settled to the actual cost
//! when the call is recorded.
//!
//! A call whose event has no known log position yet (still being acknowledged, or held in
//! the spool) counts until its position is known or, for spooled events, for
//! [`UNPLACED_SPEND_TTL`], by which time a decision reflects it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tollgate_eventlog::EventLog;
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{DEAD_LETTER, INTERACTIONS, QUOTA_DECISIONS};
use tollgate_schemas::{DeadLetter, Nanodollars, Principal, QuotaDecision, QuotaState, SourceOffset, Subject};

/// How long spend whose log position is unknown keeps counting.
pub const UNPLACED_SPEND_TTL: Duration = Duration::from_secs(600);

/// Where a recorded event went, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Acknowledged on the interactions topic at this partition and offset.
    Logged { partition: i32, offset: i64 },
    /// Held in the local spool; its final position is not tracked.
    Spooled,
}

/// Filled with the event's [`Placement`] by the recorder.
pub type Receipt = Arc<OnceLock<Placement>>;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub subject: Subject,
    pub budget_id: String,
    pub message: String,
}

#[derive(Debug, Default)]
struct Ledger {
    decision: Option<QuotaDecision>,
    /// Worst-case cost of admitted requests still in flight.
    reserved: i64,
    /// Recorded spend not (yet known to be) reflected in the decision.
    unreflected: Unreflected,
}

/// Spend the decision in force may not reflect, with its running total. Spend whose log
/// position is known is kept in per-partition buckets of consecutive events, so memory
/// stays small however long a decision stays in force: a new decision drops the buckets
/// wholly below its watermark and keeps a bucket that straddles it (a brief, cautious
/// overcount that the next decision corrects).
#[derive(Debug, Default)]
struct Unreflected {
    total: i64,
    /// Spend whose event has no known position yet, oldest first.
    unplaced: std::collections::VecDeque<Spend>,
    /// Placed spend by partition, in the order it was placed.
    placed: HashMap<i32, Vec<Bucket>>,
    /// Spooled spend by the second it was spooled, oldest first; counted until
    /// [`UNPLACED_SPEND_TTL`] has passed, by when a decision reflects it.
    spooled: std::collections::VecDeque<(Instant, i64)>,
}

#[derive(Debug)]
struct Spend {
    cost: i64,
    at: Instant,
    receipt: Receipt,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    min_offset: i64,
    max_offset: i64,
    cost: i64,
    events: u32,
}

/// Events per bucket of placed spend.
const BUCKET_EVENTS: u32 = 1024;

impl Unreflected {
    fn push(&mut self, spend: Spend) {
        self.total = self.total.saturating_add(spend.cost);
        self.unplaced.push_back(spend);
        self.place();
    }

    /// Moves spend whose placement became known out of the unplaced queue, and forgets
    /// spend older than [`UNPLACED_SPEND_TTL`] that was never logged directly.
    fn place(&mut self) {
        while let Some(front) = self.unplaced.front() {
            if front.receipt.get().is_none() && front.at.elapsed() < UNPLACED_SPEND_TTL {
                break;
            }
            if let Some(spend) = self.unplaced.pop_front() {
                self.file(spend);
            }
        }
        // An event acknowledged out of order behind a slow one: sweep the whole queue
        // now and then (amortized constant time per event).
        let waiting = self.unplaced.len();
        if waiting >= 1024 && waiting.is_power_of_two() {
            let mut still_waiting = std::collections::VecDeque::with_capacity(waiting);
            while let Some(spend) = self.unplaced.pop_front() {
                if spend.receipt.get().is_none() && spend.at.elapsed() < UNPLACED_SPEND_TTL {
                    still_waiting.push_back(spend);
                } else {
                    self.file(spend);
                }
            }
            self.unplaced = still_waiting;
        }
        while let Some(&(at, cost)) = self.spooled.front() {
            if at.elapsed() < UNPLACED_SPEND_TTL {
                break;
            }
            self.total = self.total.saturating_sub(cost);
            self.spooled.pop_front();
        }
    }

    /// Files one spend that has left the unplaced queue.
    fn file(&mut self, spend: Spend) {
        match spend.receipt.get() {
            Some(&Placement::Logged { partition, offset }) => {
                let buckets = self.placed.entry(partition).or_default();
                match buckets.last_mut() {
                    Some(bucket) if bucket.events < BUCKET_EVENTS => {
                        bucket.min_offset = bucket.min_offset.min(offset);
                        bucket.max_offset = bucket.max_offset.max(offset);
                        bucket.cost = bucket.cost.saturating_add(spend.cost);
                        bucket.events += 1;
                    }
                    _ => buckets.push(Bucket { min_offset: offset, max_offset: offset, cost: spend.cost, events: 1 }),
                }
            }
            Some(Placement::Spooled) => match self.spooled.back_mut() {
                Some((second, cost)) if second.elapsed() < Duration::from_secs(1) => {
                    *cost = cost.saturating_add(spend.cost);
                }
                _ => self.spooled.push_back((spend.at, spend.cost)),
            },
            None => self.total = self.total.saturating_sub(spend.cost),
        }
    }

    /// Drops what a decision with these watermarks (next unreflected offset per
    /// partition of the interactions topic) reflects.
    fn reflect(&mut self, reflected_below: &HashMap<i32, i64>) {
        self.place();
        let mut dropped = 0i64;
        for (partition, buckets) in &mut self.placed {
            let Some(below) = reflected_below.get(partition) else { continue };
            buckets.retain(|bucket| {
                let reflected = bucket.max_offset < *below;
                if reflected {
                    dropped = dropped.saturating_add(bucket.cost);
                }
                !reflected
            });
        }
        self.unplaced.retain(|spend| match spend.receipt.get() {
            Some(Placement::Logged { partition, offset }) => {
                let reflected = reflected_below.get(partition).is_some_and(|below| offset < below);
                if reflected {
                    dropped = dropped.saturating_add(spend.cost);
                }
                !reflected
            }
            Some(Placement::Spooled) | None => true,
        });
        self.total = self.total.saturating_sub(dropped);
    }
}

/// Decisions and local spend per subject, shared by every request.
#[derive(Debug)]
pub struct QuotaBook {
    catalog: RwLock<Arc<PriceCatalog>>,
    ledgers: Mutex<HashMap<Subject, Ledger>>,
    applied: AtomicU64,
    rejected: AtomicU64,
    /// Set once the decisions present at start-up have all been read.
    caught_up: std::sync::atomic::AtomicBool,
}

/// An admitted request's reservation. Settle it with the actual cost; dropping it
/// unsettled releases the reservation.
#[derive(Debug)]
pub struct Admission {
    book: Arc<QuotaBook>,
    subjects: Vec<Subject>,
    reserved: i64,
}

/// The subjects a principal's spend counts toward, most specific first.
pub fn subjects_of(principal: &Principal) -> Vec<Subject> {
    principal.subjects()
}

impl QuotaBook {
    pub fn new(catalog: PriceCatalog) -> Self {
        QuotaBook {
            catalog: RwLock::new(Arc::new(catalog)),
            ledgers: Mutex::new(HashMap::new()),
            applied: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            caught_up: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether every decision that was on the topic at start-up has been applied. Until
    /// then the gateway reports not ready (`/readyz`).
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Marks the book as caught up (for a gateway that follows no decisions topic).
    pub fn mark_caught_up(&self) {
        self.caught_up.store(true, Ordering::Release);
    }

    pub fn catalog(&self) -> Arc<PriceCatalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Decisions applied and decisions rejected (undecodable, or not newer).
    pub fn counts(&self) -> (u64, u64) {
        (self.applied.load(Ordering::Relaxed), self.rejected.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Subject, Ledger>> {
        self.ledgers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The decision in force for `subject`, if any.
    pub fn decision(&self, subject: &Subject) -> Option<QuotaDecision> {
        self.lock().get(subject).and_then(|ledger| ledger.decision.clone())
    }

    /// Admits a request of `principal` that may cost up to `worst_case()` (computed only
    /// when a hard budget governs the principal), or says which budget refuses it.
    pub fn admit(
        self: &Arc<Self>,
        principal: &Principal,
        worst_case: impl FnOnce() -> Nanodollars,
        now_unix_micros: i64,
    ) -> Result<Admission, Refusal> {
        let subjects = subjects_of(principal);
        let mut ledgers = self.lock();
        if ledgers.is_empty() {
            return Ok(Admission { book: Arc::clone(self), subjects: Vec::new(), reserved: 0 });
        }
        let mut governed = Vec::new();
        for subject in &subjects {
            let Some(ledger) = ledgers.get(subject) else { continue };
            let Some(decision) = &ledger.decision else { continue };
            if decision.window.end_unix_micros.is_some_and(|end| now_unix_micros >= end) {
                // The window is over; the processor's next decision opens the new one.
                continue;
            }
            if decision.state == QuotaState::Block {
                let reason = decision.reason.clone().unwrap_or_else(|| "the budget is exhausted".to_owned());
                return Err(refusal(subject, decision, &reason));
            }
            if decision.hard {
                let local = ledger.unreflected.total;
                let projected = decision.spent.0.saturating_add(local).saturating_add(ledger.reserved);
                if projected >= decision.budget.0 {
                    let reason = format!(
                        "spend including calls in progress ({}) has reached the budget ({})",
                        Nanodollars(projected),
                        decision.budget
                    );
                    return Err(refusal(subject, decision, &reason));
                }
            }
            governed.push(subject.clone());
        }
        let reserved = if governed.is_empty() { 0 } else { worst_case().0 };
        for subject in &governed {
            if let Some(ledger) = ledgers.get_mut(subject) {
                ledger.reserved = ledger.reserved.saturating_add(reserved);
            }
        }
        Ok(Admission { book: Arc::clone(self), subjects: governed, reserved })
    }

    /// Applies a decision unless one with the same or a higher version is in force.
    /// Returns whether it was applied.
    pub fn apply(&self, decision: QuotaDecision) -> bool {
        let mut ledgers = self.lock();
        let ledger = ledgers.entry(decision.subject.clone()).or_default();
        if ledger.decision.as_ref().is_some_and(|current| current.version >= decision.version) {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let reflected_below: HashMap<i32, i64> = decision
            .source_offsets
            .iter()
            .filter(|offset| offset.topic == INTERACTIONS)
            .map(|offset| (offset.partition, offset.offset))
            .collect();
        ledger.unreflected.reflect(&reflected_below);
        ledger.decision = Some(decision);
        self.applied.fetch_add(1, Ordering::Relaxed);
        true
    }
}

fn refusal(subject: &Subject, decision: &QuotaDecision, reason: &str) -> Refusal {
    Refusal {
        subject: subject.clone(),
        budget_id: decision.budget_id.clone(),
        message: format!(
            "Budget '{}' for {} {} is exhausted ({} of {} USD spent this {}): {reason}.",
            decision.budget_id,
            subject.kind.as_str(),
            subject.id,
            decision.spent,
            decision.budget,
            decision.window.kind.as_str(),
        ),
    }
}

impl Admission {
    /// Whether any budget governs the request (otherwise settling does nothing).
    pub fn governs(&self) -> bool {
        !self.subjects.is_empty()
    }

    /// Replaces the reservation with the call's actual cost, counted against every
    /// governed subject until a decision reflects the event at `receipt`.
    pub fn settle(mut self, actual: Nanodollars, receipt: Receipt) {
        if self.subjects.is_empty() {
            return;
        }
        let mut ledgers = self.book.lock();
        for subject in &self.subjects {
            if let Some(ledger) = ledgers.get_mut(subject) {
                ledger.reserved = ledger.reserved.saturating_sub(self.reserved);
                if actual.0 != 0 {
                    ledger.unreflected.push(Spend {
                        cost: actual.0,
                        at: Instant::now(),
                        receipt: Arc::clone(&receipt),
                    });
                }
            }
        }
        self.reserved = 0;
        self.subjects.clear();
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.reserved == 0 || self.subjects.is_empty() {
            return;
        }
        let mut ledgers = self.book.lock();
        for subject in &self.subjects {
            if let Some(ledger) = ledgers.get_mut(subject) {
                ledger.reserved = ledger.reserved.saturating_sub(self.reserved);
            }
        }
    }
}

/// Follows the decisions topic from its beginning into `book`, until the log fails.
/// Undecodable decisions go to the dead-letter topic with the reason.
pub async fn follow(
    log: Arc<dyn EventLog>,
    book: Arc<QuotaBook>,
    instance: &str,
) -> Result<(), tollgate_eventlog::LogError> {
    // A group of its own, never committed: every start reads the compacted topic whole.
    let group = format!("{instance}-decisions-{}", uuid::Uuid::now_v7().simple());
    let mut behind: HashMap<i32, i64> =
        log.end_offsets(QUOTA_DECISIONS).await?.into_iter().filter(|(_, end)| *end > 0).collect();
    let mut subscription = log.subscribe(&group, &[QUOTA_DECISIONS]).await?;
    if behind.is_empty() {
        book.mark_caught_up();
    }
    loop {
        let record = subscription.next().await?;
        if !behind.is_empty() {
            if behind.get(&record.partition).is_some_and(|end| record.offset + 1 >= *end) {
                behind.remove(&record.partition);
            }
            if behind.is_empty() {
                book.mark_caught_up();
                tracing::info!("quota decisions caught up");
            }
        }
        match tollgate_schemas::decode::<QuotaDecision>(&record.payload) {
            Ok(decision) => {
                let subject = decision.subject.to_string();
                let state = decision.state.as_str();
                if book.apply(decision) {
                    tracing::debug!(%subject, state, "quota decision applied");
                }
            }
            Err(error) => {
                book.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, partition = record.partition, offset = record.offset, "undecodable quota decision; dead-lettered");
                let source =
                    SourceOffset { topic: record.topic.clone(), partition: record.partition, offset: record.offset };
                let letter = DeadLetter::new(
                    source,
                    group.clone(),
                    record.key.as_deref(),
                    &record.payload,
                    error.dead_letter_reason(),
                    error.to_string(),
                );
                publish_dead_letter(log.as_ref(), &letter);
            }
        }
    }
}

fn publish_dead_letter(log: &dyn EventLog, letter: &DeadLetter) {
    use tollgate_schemas::topics::Keyed as _;
    let Ok(payload) = tollgate_schemas::encode(letter) else { return };
    match log.publish(DEAD_LETTER, letter.message_key().as_bytes(), &payload) {
        Ok(pending) => {
            tokio::spawn(async move {
                if let Err(error) = pending.await {
                    tracing::error!(%error, "publishing a dead letter failed");
                }
            });
        }
        Err(error) => tracing::error!(%error, "publishing a dead letter failed"),
    }
}

/// [`follow`], started again after a pause whenever the log fails.
pub async fn follow_forever(log: Arc<dyn EventLog>, book: Arc<QuotaBook>, instance: String) {
    let mut pause = Duration::from_millis(200);
    loop {
        if let Err(error) = follow(Arc::clone(&log), Arc::clone(&book), &instance).await {
            tracing::warn!(%error, "following quota decisions failed; starting again");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use tollgate_schemas::{BudgetWindow, SCHEMA_VERSION, SubjectKind, WindowKind};

    use super::*;

    fn principal() -> Principal {
        Principal {
            org_id: "acme".into(),
            team_id: Some("research".into()),
            user_id: None,
            project_id: None,
            key_id: "key_a".into(),
        }
    }

    fn decision(version: u64, budget: i64, spent: i64, watermark: Option<i64>) -> QuotaDecision {
        QuotaDecision {
            schema_version: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            time_unix_micros: 0,
            subject: Subject::new(SubjectKind::Team, "research"),
            budget_id: "b".into(),
            window: BudgetWindow { kind: WindowKind::Lifetime, start_unix_micros: 0, end_unix_micros: None },
            budget: Nanodollars(budget),
            spent: Nanodollars(spent),
            remaining: Nanodollars(budget - spent),
            state: QuotaState::Allow,
            hard: true,
            version,
            source_offsets: watermark
                .map(|offset| SourceOffset { topic: INTERACTIONS.into(), partition: 0, offset })
                .into_iter()
                .collect(),
            reason: None,
        }
    }

    fn spend(book: &Arc<QuotaBook>, cost: i64, offset: i64) {
        let admission = book.admit(&principal(), || Nanodollars(500), 0).unwrap();
        let receipt = Receipt::default();
        let _ = receipt.set(Placement::Logged { partition: 0, offset });
        admission.settle(Nanodollars(cost), receipt);
    }

    fn local_total(book: &QuotaBook) -> i64 {
        book.lock()[&Subject::new(SubjectKind::Team, "research")].unreflected.total
    }

    #[test]
    fn local_spend_counts_until_a_decision_reflects_it() {
        let book = Arc::new(QuotaBook::new(
            PriceCatalog::from_toml("version = \"t\"\neffective_from = \"2026-01-01\"\n").unwrap(),
        ));
        assert!(book.apply(decision(1, 1_000, 0, None)));
        for offset in 10..13 {
            spend(&book, 100, offset);
        }
        assert_eq!(local_total(&book), 300);
        // The processor has seen offsets below 12: the bucket holding 10..=12 straddles
        // the watermark and is kept whole (counted cautiously) ...
        assert!(book.apply(decision(2, 1_000, 200, Some(12))));
        assert_eq!(local_total(&book), 300);
        // ... until a decision covers all of it.
        assert!(book.apply(decision(3, 1_000, 300, Some(13))));
        assert_eq!(local_total(&book), 0);
        assert!(!book.apply(decision(3, 1_000, 0, None)), "not newer");
    }

    #[test]
    fn reservations_and_local_spend_stop_admission_at_the_budget() {
        let book = Arc::new(QuotaBook::new(
            PriceCatalog::from_toml("version = \"t\"\neffective_from = \"2026-01-01\"\n").unwrap(),
        ));
        book.apply(decision(1, 1_000, 400, None));
        let first = book.admit(&principal(), || Nanodollars(300), 0).unwrap();
        let second = book.admit(&principal(), || Nanodollars(300), 0).unwrap();
        // 400 spent + 600 reserved reaches the budget of 1000.
        let refused = book.admit(&principal(), || Nanodollars(1), 0).unwrap_err();
        assert_eq!(refused.subject, Subject::new(SubjectKind::Team, "research"));
        drop(first);
        let receipt = Receipt::default();
        let _ = receipt.set(Placement::Spooled);
        second.settle(Nanodollars(50), receipt);
        // 400 + 50 settled: room again.
        assert!(book.admit(&principal(), || Nanodollars(1), 0).is_ok());
        // A block decision refuses outright.
        let mut block = decision(2, 1_000, 1_000, None);
        block.state = QuotaState::Block;
        book.apply(block);
        assert!(book.admit(&principal(), || Nanodollars(0), 0).is_err());
    }
}
