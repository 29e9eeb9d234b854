//! The processor's view of the governance topic: price catalog versions and budgets.
//!
//! Every processor instance reads the whole governance topic from its beginning with a
//! consumer group of its own ([`follow`]), so each one prices with every catalog version
//! published and knows which subject each budget id belongs to (a lifted budget's change
//! carries no value, only its id). The view records how far it has read, so the pricing
//! stage can wait until it has seen everything before a governance record it handles.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tollgate_eventlog::{EventLog, LogError};
use tollgate_schemas::pricing::{PriceCatalog, PriceCatalogDocument};
use tollgate_schemas::topics::GOVERNANCE;
use tollgate_schemas::{BudgetSpec, GovernanceChange, TargetKind};

use crate::pricer::Pricer;

/// What governance says, as far as it has been read.
#[derive(Debug)]
pub struct GovernanceView {
    pricer: RwLock<Pricer>,
    budgets: RwLock<HashMap<String, BudgetSpec>>,
    /// Budget id -> the subject it limits, kept after the budget is lifted.
    budget_subjects: RwLock<HashMap<String, tollgate_schemas::Subject>>,
    /// The next governance offset not read yet.
    position: watch::Sender<i64>,
}

impl GovernanceView {
    pub fn new(initial: PriceCatalog) -> Self {
        GovernanceView {
            pricer: RwLock::new(Pricer::new(initial)),
            budgets: RwLock::new(HashMap::new()),
            budget_subjects: RwLock::new(HashMap::new()),
            position: watch::channel(0).0,
        }
    }

    /// The pricer with every catalog version read so far.
    pub fn pricer(&self) -> std::sync::RwLockReadGuard<'_, Pricer> {
        self.pricer.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The budgets in force, by id.
    pub fn budgets(&self) -> HashMap<String, BudgetSpec> {
        self.budgets.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The subject budget `id` limits (or limited, if lifted).
    pub fn budget_subject(&self, id: &str) -> Option<tollgate_schemas::Subject> {
        self.budget_subjects.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned()
    }

    /// Waits until every governance record before `offset` has been read.
    pub async fn read_up_to(&self, offset: i64) {
        let mut position = self.position.subscribe();
        // The sender lives as long as the view, so this only ends once reached.
        let _ = position.wait_for(|read| *read >= offset).await;
    }

    /// Applies one governance change read at `offset`. A change whose value is not a
    /// valid catalog or budget is skipped with a warning (the pricing stage, which sees
    /// the same record, sends it to the dead-letter topic).
    pub fn apply(&self, offset: i64, change: &GovernanceChange) {
        match change.target.kind {
            TargetKind::PriceCatalog if !change.value.is_null() => {
                let catalog = serde_json::from_value::<PriceCatalogDocument>(change.value.clone())
                    .map_err(|error| error.to_string())
                    .and_then(|document| PriceCatalog::from_document(&document).map_err(|error| error.to_string()));
                match catalog {
                    Ok(catalog) => {
                        tracing::info!(version = %catalog.version, "price catalog version loaded from governance");
                        self.pricer.write().unwrap_or_else(std::sync::PoisonError::into_inner).add(catalog);
                    }
                    Err(error) => tracing::warn!(%error, offset, "governance change has an invalid price catalog"),
                }
            }
            TargetKind::Budget => {
                let mut budgets = self.budgets.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                match budget_spec(change) {
                    Ok(Some(spec)) => {
                        self.budget_subjects
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(change.target.id.clone(), spec.subject.clone());
                        budgets.insert(change.target.id.clone(), spec);
                    }
                    Ok(None) => {
                        budgets.remove(&change.target.id);
                    }
                    Err(error) => tracing::warn!(%error, offset, "governance change has an invalid budget"),
                }
            }
            _ => {}
        }
        self.position.send_modify(|position| *position = (*position).max(offset + 1));
    }
}

/// The budget a `budget` governance change sets (`None`: it lifts the budget).
pub fn budget_spec(change: &GovernanceChange) -> Result<Option<BudgetSpec>, String> {
    if change.value.is_null() {
        return Ok(None);
    }
    let spec: BudgetSpec =
        serde_json::from_value(change.value.clone()).map_err(|error| format!("budget value: {error}"))?;
    spec.validate().map_err(|problem| format!("budget value: {problem}"))?;
    Ok(Some(spec))
}

/// Reads the governance topic from its beginning into `view` and keeps following it in a
/// task of its own (starting over from the beginning if the log fails; applying a change
/// twice changes nothing). Returns once the records present at the start have been read.
pub async fn follow(
    log: Arc<dyn EventLog>,
    view: Arc<GovernanceView>,
    instance: &str,
) -> Result<tokio::task::JoinHandle<()>, LogError> {
    let end = log.end_offsets(GOVERNANCE).await?.into_iter().map(|(_, end)| end).max().unwrap_or(0);
    let first = subscribe(log.as_ref(), instance).await?;
    let reader = Arc::clone(&view);
    let instance = instance.to_owned();
    let task = tokio::spawn(async move {
        let mut subscription = Some(first);
        let mut pause = std::time::Duration::from_millis(200);
        loop {
            let mut current = match subscription.take() {
                Some(current) => current,
                None => match subscribe(log.as_ref(), &instance).await {
                    Ok(current) => current,
                    Err(error) => {
                        tracing::warn!(%error, "subscribing to the governance topic failed; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_secs(10));
                        continue;
                    }
                },
            };
            loop {
                match current.next().await {
                    Ok(record) => {
                        pause = std::time::Duration::from_millis(200);
                        match tollgate_schemas::decode::<GovernanceChange>(&record.payload) {
                            Ok(change) => reader.apply(record.offset, &change),
                            Err(error) => {
                                tracing::warn!(%error, offset = record.offset, "undecodable governance change skipped");
                                reader.position.send_modify(|position| *position = (*position).max(record.offset + 1));
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "reading the governance topic failed; reading it again");
                        break;
                    }
                }
            }
            tokio::time::sleep(pause).await;
        }
    });
    view.read_up_to(end).await;
    Ok(task)
}

/// A group of its own, never committed: every subscription reads the topic whole.
async fn subscribe(log: &dyn EventLog, instance: &str) -> Result<Box<dyn tollgate_eventlog::Subscription>, LogError> {
    let group = format!("{instance}-governance-{}", uuid::Uuid::now_v7().simple());
    log.subscribe(&group, &[GOVERNANCE]).await
}
