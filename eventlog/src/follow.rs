//! [`Follower`]: reads a whole topic into an in-memory projection and keeps following it.
//!
//! Services that build their view of the world from a topic (every gateway replica's keys,
//! the query API's tokens, from the governance topic) read it from its beginning with a
//! consumer group of their own that never commits, apply each record in log order, and
//! need to know two things: whether everything present at start has been applied (before
//! answering requests), and whether a record they just published has been applied (so a
//! change made through one replica is in force there when the change call returns).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{Ack, EventLog, LogError, Record};

/// Progress of one follower; share it behind an `Arc`.
#[derive(Debug)]
pub struct Follower {
    topic: String,
    /// Per partition, the offset after the last record applied.
    applied: watch::Sender<BTreeMap<i32, i64>>,
    caught_up: watch::Sender<bool>,
}

impl Follower {
    pub fn new(topic: &str) -> Arc<Self> {
        Arc::new(Follower {
            topic: topic.to_owned(),
            applied: watch::channel(BTreeMap::new()).0,
            caught_up: watch::channel(false).0,
        })
    }

    /// Whether every record present when following started has been applied.
    pub fn caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Waits up to `timeout` for [`Follower::caught_up`]; whether it happened.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let mut caught_up = self.caught_up.subscribe();
        matches!(tokio::time::timeout(timeout, caught_up.wait_for(|done| *done)).await, Ok(Ok(_)))
    }

    /// Waits up to `timeout` until the record at `ack` has been applied; whether it was.
    pub async fn wait_applied(&self, ack: Ack, timeout: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let wait = applied.wait_for(|applied| applied.get(&ack.partition).is_some_and(|next| *next > ack.offset));
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// Reads the topic from its beginning, calling `apply` with each record in log order
    /// (per partition), until the log fails. A record applied before, by an earlier
    /// call, is not applied again: applying an old record anew could undo a newer one.
    pub async fn follow(
        &self,
        log: &dyn EventLog,
        group_prefix: &str,
        apply: &mut (dyn FnMut(&Record) + Send),
    ) -> Result<(), LogError> {
        // A group of its own, never committed: every start reads the whole topic.
        let group = format!("{group_prefix}-{}", uuid::Uuid::now_v7().simple());
        let mut behind: HashMap<i32, i64> =
            log.end_offsets(&self.topic).await?.into_iter().filter(|(_, end)| *end > 0).collect();
        let applied = self.applied.borrow().clone();
        behind.retain(|partition, end| applied.get(partition).is_none_or(|next| next < end));
        if behind.is_empty() {
            self.caught_up.send_replace(true);
        }
        let mut subscription = log.subscribe(&group, &[self.topic.as_str()]).await?;
        loop {
            let record = subscription.next().await?;
            let seen = self.applied.borrow().get(&record.partition).is_some_and(|next| record.offset < *next);
            if !seen {
                apply(&record);
                self.applied.send_modify(|applied| {
                    applied.insert(record.partition, record.offset + 1);
                });
            }
            if !behind.is_empty() {
                if behind.get(&record.partition).is_some_and(|end| record.offset + 1 >= *end) {
                    behind.remove(&record.partition);
                }
                if behind.is_empty() {
                    self.caught_up.send_replace(true);
                }
            }
        }
    }

    /// [`Follower::follow`], started again after each failure, for ever.
    pub async fn follow_forever(
        self: Arc<Self>,
        log: Arc<dyn EventLog>,
        group_prefix: String,
        mut apply: Box<dyn FnMut(&Record) + Send>,
    ) {
        let mut pause = Duration::from_millis(200);
        loop {
            if let Err(error) = self.follow(log.as_ref(), &group_prefix, apply.as_mut()).await {
                tracing::warn!(%error, topic = %self.topic, "following the topic failed; starting again");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }
}
