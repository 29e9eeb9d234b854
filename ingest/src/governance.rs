//! Virtual keys, team policies and providers from the governance topic.
//!
//! A gateway that follows governance ([`start`]) publishes the keys and team policies of
//! its configuration file as `GovernanceChange` events (only what the file says anew:
//! see [`Directory::config_changes`]), reads the whole topic, and from then on serves the
//! keys the topic gives. A key an admin creates, rotates or revokes on any replica is in
//! force on every replica as soon as each has read the change, without a restart.
//!
//! Providers registered through governance are added to the configuration's upstreams
//! (replacing one of the same name), and the models they list are routed to them after
//! the targets the configuration gives those models. The configuration's own upstreams
//! and models are not published: they stay the file's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate_eventlog::{EventLog, Follower, LogError, Record};
use tollgate_schemas::topics::GOVERNANCE;
use tollgate_schemas::{Actor, ActorKind, Directory, GovernanceChange, TargetKind};

use crate::app::GatewayState;
use crate::config::{Target, Upstream};
use crate::keys::KeyStore;
use crate::upstream::{Routes, Upstreams};

/// How long start-up waits to read the governance topic before giving up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why following governance could not start.
#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    #[error("the governance topic could not be read within {0:?}")]
    CatchUp(Duration),
    #[error("publishing the configuration's keys: {0}")]
    Publish(#[from] LogError),
    #[error("the configuration's keys were published but not read back within {0:?}")]
    ReadBack(Duration),
}

/// Publishes the configuration's keys and team policies where governance does not
/// already have them (as changes by `config_actor`, the file's name), reads the topic
/// whole, puts the keys it gives in force, and keeps following it in a task of its own.
/// Returns the follower, whose progress says what has been applied.
pub async fn start(
    log: Arc<dyn EventLog>,
    state: Arc<GatewayState>,
    config_actor: &str,
) -> Result<Arc<Follower>, GovernanceError> {
    let follower = Follower::new(GOVERNANCE);
    let directory = Arc::new(Mutex::new(Directory::default()));
    let apply = {
        let (directory, state, follower) = (Arc::clone(&directory), Arc::clone(&state), Arc::clone(&follower));
        move |record: &Record| {
            let change = match tollgate_schemas::decode::<GovernanceChange>(&record.payload) {
                Ok(change) => change,
                // The processor dead-letters what it cannot decode; here it is only skipped.
                Err(error) => {
                    tracing::warn!(%error, offset = record.offset, "undecodable governance change skipped");
                    return;
                }
            };
            if !matches!(change.target.kind, TargetKind::VirtualKey | TargetKind::Policy | TargetKind::Provider) {
                return;
            }
            let mut directory = directory.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(error) = directory.apply(&change) {
                tracing::warn!(%error, change = %change.id, "governance change not applied");
                return;
            }
            tracing::info!(
                target = %change.target.key(),
                action = change.action.as_str(),
                actor = %change.actor.id,
                "governance change applied"
            );
            // While catching up, keys are built once at the end instead of per change.
            if follower.caught_up() {
                if change.target.kind == TargetKind::Provider {
                    rebuild_routes(&directory, &state);
                } else {
                    rebuild(&directory, &state);
                }
            }
        }
    };
    tokio::spawn(Arc::clone(&follower).follow_forever(
        Arc::clone(&log),
        format!("{}-governance", state.config.instance_id),
        Box::new(apply),
    ));
    if !follower.wait_caught_up(CATCH_UP_TIMEOUT).await {
        return Err(GovernanceError::CatchUp(CATCH_UP_TIMEOUT));
    }
    let actor = Actor { kind: ActorKind::Config, id: config_actor.to_owned() };
    let changes = {
        let directory = directory.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let teams: Vec<_> = state.config.teams.values().cloned().collect();
        directory.config_changes(&actor, &state.config.key_specs, &teams)
    };
    let mut last = None;
    for change in &changes {
        let Ok(payload) = tollgate_schemas::encode(change) else { continue };
        let key = change.target.key();
        last = Some(tollgate_eventlog::publish_and_wait(log.as_ref(), GOVERNANCE, key.as_bytes(), &payload).await?);
        tracing::info!(target = %key, action = change.action.as_str(), "governance change published from the configuration");
    }
    if let Some(ack) = last
        && !follower.wait_applied(ack, CATCH_UP_TIMEOUT).await
    {
        return Err(GovernanceError::ReadBack(CATCH_UP_TIMEOUT));
    }
    let directory = directory.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    rebuild(&directory, &state);
    rebuild_routes(&directory, &state);
    Ok(follower)
}

/// Builds the keys `directory` gives and puts them in force.
fn rebuild(directory: &Directory, state: &GatewayState) {
    let current = state.keys();
    let keys = directory.keys().values().map(|key| (&key.spec, key.revoked));
    let (store, problems) = KeyStore::build(keys, directory.teams(), state.config.global_pii, Some(&current));
    for problem in problems {
        tracing::warn!(%problem, "a governed key is not in force");
    }
    state.set_keys(store);
}

/// Builds the routes of the configuration plus the providers `directory` registers, and
/// puts them in force. Upstreams whose settings did not change keep their clients.
fn rebuild_routes(directory: &Directory, state: &GatewayState) {
    let mut upstreams = state.config.upstreams.clone();
    let mut models = state.config.models.clone();
    for spec in directory.providers().values() {
        let upstream = match Upstream::from_spec(spec, |name| std::env::var(name).ok()) {
            Ok(upstream) => upstream,
            Err(problem) => {
                tracing::warn!(provider = %spec.name, %problem, "a registered provider is not in use");
                continue;
            }
        };
        // A provider replacing a configured upstream takes over its routes too.
        upstreams.insert(spec.name.clone(), upstream);
        for model in &spec.models {
            let target = Target {
                upstream: spec.name.clone(),
                model: model.model.clone().unwrap_or_else(|| model.name.clone()),
            };
            let targets = models.entry(model.name.clone()).or_default();
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
    }
    // Routes to a provider that is gone are dropped; a model left without targets is gone.
    for targets in models.values_mut() {
        targets.retain(|target| upstreams.contains_key(&target.upstream));
    }
    models.retain(|_, targets| !targets.is_empty());
    let current = state.routes.load();
    match Upstreams::build(upstreams.values(), &state.config.routing, state.config.threads, Some(&current.upstreams)) {
        Ok(built) => state.routes.store(Routes { upstreams: built, models }),
        Err(error) => tracing::warn!(%error, "the upstream clients could not be built; the routes stay as they were"),
    }
}
