//! Tollgate's stream processors: they consume the interaction log and turn it into money
//! and governance.
//!
//! Stages, each a consumer group, so instances on several machines share the work:
//!
//! - [`pricing`]: prices every interaction with the catalog version in effect
//!   ([`pricer`]), runs the violation detectors ([`detect`]), publishes priced
//!   interactions and violations, and re-keys each interaction's cost by budget subject
//!   (key, user, team, org) onto the subject-updates topic, with the budget changes from
//!   the governance topic.
//! - [`budgets`]: keeps spend per subject and window and the budgets in force
//!   ([`ledger`]), publishes a `QuotaDecision` whenever a subject's state changes and
//!   spend anomalies as violations, and checkpoints its state with the input offset it
//!   reflects ([`checkpoint`]).
//!
//! Delivery is at least once and every output is idempotent (stable ids, versioned
//! decisions, spend applied once per source offset), so crashes, restarts and rebalances
//! give the outputs of one clean pass. Bad records go to the dead-letter topic.
//!
//! - [`archive`] (when configured): writes priced interactions, violations, decisions
//!   and governance changes as Parquet files, in a directory or an object store, for the
//!   query API; replays rewrite the same files instead of adding duplicates.
//!
//! - [`warehouse`] (when configured): inserts the same four streams into ClickHouse, in
//!   batches, retrying through an outage, read back deduplicated.
//!
//! [`sink`] holds the storage formats (Parquet files, ClickHouse tables).
//!
//! This crate does not serve queries (that is `tollgate-query-api`), does not define
//! event layouts (that is `tollgate-schemas`), and does not enforce anything itself:
//! gateways enforce the decisions it publishes.

pub mod archive;
pub mod budgets;
pub mod checkpoint;
pub mod config;
pub mod detect;
pub mod governance;
pub mod ledger;
pub mod metrics;
pub mod pricer;
pub mod pricing;
pub mod sink;
mod stage;
pub mod testing;
pub mod warehouse;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use config::{ConfigError, ProcessorConfig};
pub use stage::StageError;
use tokio::sync::watch;
use tollgate_eventlog::{EventLog, LogError};
use tollgate_schemas::pricing::{PriceCatalog, PriceCatalogDocument};
use tollgate_schemas::topics::{GOVERNANCE, PROCESSOR_CHECKPOINTS, SUBJECT_UPDATES};
use tollgate_schemas::{
    Actor, ActorKind, ChangeAction, GovernanceChange, GovernanceTarget, SCHEMA_VERSION, TargetKind,
};

use crate::governance::GovernanceView;
use crate::metrics::ProcessorMetrics;

/// Why the processor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(
        "topic {SUBJECT_UPDATES} has {updates} partitions but {PROCESSOR_CHECKPOINTS} has {checkpoints}; \
         they must match"
    )]
    PartitionMismatch { updates: usize, checkpoints: usize },
    #[error("serving metrics on {address}: {source}")]
    Metrics { address: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Archive(#[from] tollgate_archive::ArchiveError),
    #[error("the processor task ended abnormally: {0}")]
    Task(String),
}

/// The processor's start-up input besides its configuration.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The catalog to price with until governance says otherwise.
    pub catalog: PriceCatalog,
    /// The catalog as a document, published to governance when its version is new there.
    pub catalog_document: Option<PriceCatalogDocument>,
    /// Who the start-up governance changes are from (the config file path, say).
    pub config_actor: String,
}

/// Runs the stages until `shutdown` resolves, restarting a stage that fails (from its
/// committed or checkpointed position) after a pause.
pub async fn run(
    log: Arc<dyn EventLog>,
    config: ProcessorConfig,
    sources: Sources,
    metrics: Arc<ProcessorMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProcessorError> {
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await?;
    let archive = match &config.archive {
        Some(settings) => {
            let archive = archive::Archive::open(&settings.location, &settings.options)?;
            tracing::info!(location = archive.location(), "writing the Parquet archive");
            Some((Arc::new(archive), settings.clone()))
        }
        None => None,
    };
    let updates = log.end_offsets(SUBJECT_UPDATES).await?.len();
    let checkpoints = log.end_offsets(PROCESSOR_CHECKPOINTS).await?.len();
    if updates != checkpoints {
        return Err(ProcessorError::PartitionMismatch { updates, checkpoints });
    }
    let view = Arc::new(GovernanceView::new(sources.catalog.clone()));
    let follower = governance::follow(Arc::clone(&log), Arc::clone(&view), &config.instance_id).await?;
    publish_startup_changes(log.as_ref(), &view, &config, &sources).await?;

    let metrics_server = match config.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| ProcessorError::Metrics { address, source })?;
            tracing::info!(%address, "processor metrics at /metrics");
            let router = metrics::router(Arc::clone(&metrics));
            Some(tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, "metrics server stopped");
                }
            }))
        }
        None => None,
    };

    let (stop, stopped) = watch::channel(false);
    let pricing = tokio::spawn(supervise("pricing", stopped.clone(), {
        let (log, view, metrics, config) = (Arc::clone(&log), Arc::clone(&view), Arc::clone(&metrics), config.clone());
        move |stopped| pricing::run(Arc::clone(&log), Arc::clone(&view), Arc::clone(&metrics), config.clone(), stopped)
    }));
    let budgets = tokio::spawn(supervise("budgets", stopped.clone(), {
        let (log, metrics, config) = (Arc::clone(&log), Arc::clone(&metrics), config.clone());
        move |stopped| budgets::run(Arc::clone(&log), Arc::clone(&metrics), config.clone(), stopped)
    }));
    let loader = config.clickhouse.clone().map(|settings| {
        let sink = sink::clickhouse::ClickHouseSink::new(&settings.connection);
        tracing::info!(url = %settings.connection.url, database = %settings.connection.database, "loading ClickHouse");
        tokio::spawn(supervise("clickhouse", stopped.clone(), {
            let (log, metrics, config) = (Arc::clone(&log), Arc::clone(&metrics), config.clone());
            move |stopped| {
                let (log, metrics) = (Arc::clone(&log), Arc::clone(&metrics));
                warehouse::run(log, sink.clone(), metrics, config.clone(), settings.clone(), stopped)
            }
        }))
    });
    let archiver = archive.map(|(archive, settings)| {
        tokio::spawn(supervise("archive", stopped, {
            let (log, metrics, config) = (Arc::clone(&log), Arc::clone(&metrics), config.clone());
            move |stopped| {
                let (log, archive, metrics) = (Arc::clone(&log), Arc::clone(&archive), Arc::clone(&metrics));
                archive::run(log, archive, metrics, config.clone(), settings.clone(), stopped)
            }
        }))
    });
    tracing::info!(instance = %config.instance_id, "processor running");
    shutdown.await;
    tracing::info!("processor stopping");
    let _ = stop.send(true);
    let _ = pricing.await;
    let _ = budgets.await;
    if let Some(archiver) = archiver {
        let _ = archiver.await;
    }
    if let Some(loader) = loader {
        let _ = loader.await;
    }
    follower.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    Ok(())
}

/// Runs a stage, starting it again after a failure, until it returns cleanly (shutdown).
async fn supervise<F, Fut>(name: &'static str, stopped: watch::Receiver<bool>, mut stage: F)
where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<(), StageError>>,
{
    let mut pause = Duration::from_millis(200);
    loop {
        match stage(stopped.clone()).await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(stage = name, %error, "stage failed; starting it again from its saved position");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
                if *stopped.borrow() {
                    return;
                }
            }
        }
    }
}

/// Publishes the configured budgets and the start-up price catalog as governance changes
/// where the governance topic does not already say the same.
async fn publish_startup_changes(
    log: &dyn EventLog,
    view: &GovernanceView,
    config: &ProcessorConfig,
    sources: &Sources,
) -> Result<(), LogError> {
    let actor = Actor { kind: ActorKind::Config, id: sources.config_actor.clone() };
    let mut changes = Vec::new();
    if let Some(document) = &sources.catalog_document
        && !view.pricer().versions().contains(&document.version.as_str())
    {
        changes.push((
            GovernanceTarget { kind: TargetKind::PriceCatalog, id: document.version.clone() },
            ChangeAction::Created,
            serde_json::to_value(document).unwrap_or_default(),
        ));
    }
    let known = view.budgets();
    for (id, spec) in &config.budgets {
        if known.get(id) == Some(spec) {
            continue;
        }
        let action = if known.contains_key(id) { ChangeAction::Updated } else { ChangeAction::Created };
        changes.push((
            GovernanceTarget { kind: TargetKind::Budget, id: id.clone() },
            action,
            serde_json::to_value(spec).unwrap_or_default(),
        ));
    }
    for (target, action, value) in changes {
        let change = GovernanceChange {
            schema_version: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            time_unix_micros: tollgate_schemas::now_unix_micros(),
            actor: actor.clone(),
            target,
            action,
            value,
            reason: Some("loaded from the processor's configuration at start-up".to_owned()),
        };
        let Ok(payload) = tollgate_schemas::encode(&change) else { continue };
        let key = change.target.key();
        tollgate_eventlog::publish_and_wait(log, GOVERNANCE, key.as_bytes(), &payload).await?;
        tracing::info!(target = %key, action = change.action.as_str(), "governance change published from configuration");
    }
    Ok(())
}
