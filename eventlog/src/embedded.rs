//! [`EmbeddedLog`]: a durable, partitioned log in one SQLite database (WAL mode), for
//! running Tollgate on one machine without Kafka.
//!
//! One writer thread owns the write connection. Publishes and commits are queued to it;
//! it applies everything queued in one transaction (group commit) with `synchronous=FULL`,
//! and only then acknowledges, so an acknowledged event survives a process kill or a power
//! loss. Readers use their own connections and never block the writer.
//!
//! Consumer groups are coordinated in memory: members of a group split the partitions of
//! the topics they read round-robin, and a member picks up a partition at the group's
//! committed offset. A lock file keeps a second process from opening the same log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use crate::{Ack, EventLog, LogError, PendingAck, Position, Record, Subscription, partition_for_key};

const DATABASE_FILE: &str = "log.sqlite3";
const LOCK_FILE: &str = "log.lock";
/// Most operations applied in one transaction.
const MAX_GROUP_COMMIT: usize = 4096;
/// Records fetched per partition per read.
const FETCH_BATCH: i64 = 512;

/// Where and how the embedded log keeps its data.
#[derive(Debug, Clone)]
pub struct EmbeddedLogConfig {
    /// Directory holding the database and its lock file; created if missing.
    pub dir: PathBuf,
    /// Publishes and commits that may wait for the writer before publishing reports
    /// [`LogError::QueueFull`].
    pub queue_capacity: usize,
    /// The largest record (key and payload) the log accepts; a larger one fails with
    /// [`LogError::TooLarge`], as Kafka fails one over its `message.max.bytes`.
    pub max_record_bytes: usize,
}

/// [`EmbeddedLogConfig::max_record_bytes`] by default: 16 MiB, well above Kafka's
/// 1 MB default, so that a spool can hold what a broker refused.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 << 20;

impl EmbeddedLogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedLogConfig { dir: dir.into(), queue_capacity: 65_536, max_record_bytes: DEFAULT_MAX_RECORD_BYTES }
    }
}

/// The embedded implementation of [`EventLog`]. Clones share one log.
#[derive(Clone)]
pub struct EmbeddedLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog").field("dir", &self.shared.dir).finish()
    }
}

struct Shared {
    dir: PathBuf,
    database: PathBuf,
    writes: SyncSender<WriteOp>,
    max_record_bytes: usize,
    /// Partition count per topic.
    topics: RwLock<HashMap<String, TopicInfo>>,
    /// Bumped by the writer after every commit that appended records.
    appended: watch::Sender<u64>,
    groups: Mutex<HashMap<String, GroupState>>,
    next_member_id: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held for the lifetime of the log; the OS releases the lock if the process dies.
    _lock: std::fs::File,
}

impl Drop for Shared {
    /// Lets the writer finish everything queued before the lock file is released, so a
    /// reopen in the same process never races the old writer.
    fn drop(&mut self) {
        if self.writes.send(WriteOp::Shutdown).is_ok()
            && let Ok(mut writer) = self.writer.lock()
            && let Some(handle) = writer.take()
            && handle.join().is_err()
        {
            tracing::error!("embedded log writer thread panicked");
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct TopicInfo {
    id: i64,
    partitions: i32,
}

enum WriteOp {
    Append {
        topic_id: i64,
        partition: i32,
        timestamp_millis: i64,
        key: Vec<u8>,
        payload: Vec<u8>,
        ack: AckSender,
    },
    Commit {
        group: String,
        positions: Vec<(i64, Position)>,
        ack: oneshot::Sender<Result<(), LogError>>,
    },
    CreateTopic {
        name: String,
        partitions: i32,
        compacted: bool,
        ack: oneshot::Sender<Result<TopicInfo, LogError>>,
    },
    /// Sent when the last handle is dropped: finish what is queued, then stop.
    Shutdown,
}

type AckSender = oneshot::Sender<Result<Ack, LogError>>;

impl EmbeddedLog {
    /// Opens (or creates) the log in `config.dir`.
    pub fn open(config: EmbeddedLogConfig) -> Result<Self, LogError> {
        std::fs::create_dir_all(&config.dir)?;
        let lock_path = config.dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
        if lock.try_lock().is_err() {
            return Err(LogError::Locked { path: config.dir.display().to_string() });
        }
        let database = config.dir.join(DATABASE_FILE);
        let mut writer = open_connection(&database)?;
        create_tables(&writer)?;
        let topics = load_topics(&writer)?;
        let next_offsets = load_next_offsets(&writer)?;
        let (writes, write_queue) = std::sync::mpsc::sync_channel(config.queue_capacity.max(1));
        let (appended, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            dir: config.dir,
            database,
            writes,
            max_record_bytes: config.max_record_bytes,
            topics: RwLock::new(topics),
            appended,
            groups: Mutex::new(HashMap::new()),
            next_member_id: AtomicU64::new(1),
            writer: Mutex::new(None),
            _lock: lock,
        });
        let appended = shared.appended.clone();
        let handle = std::thread::Builder::new().name("tollgate-log-writer".to_owned()).spawn(move || {
            run_writer(&mut writer, write_queue, next_offsets, &appended);
        })?;
        if let Ok(mut writer) = shared.writer.lock() {
            *writer = Some(handle);
        }
        Ok(EmbeddedLog { shared })
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn topic(&self, name: &str) -> Result<TopicInfo, LogError> {
        let topics = self.shared.topics.read().map_err(|_| LogError::Closed)?;
        topics.get(name).copied().ok_or_else(|| LogError::UnknownTopic(name.to_owned()))
    }

    fn append(
        &self,
        topic: &str,
        info: TopicInfo,
        partition: i32,
        key: &[u8],
        payload: &[u8],
    ) -> Result<PendingAck, LogError> {
        let bytes = key.len() + payload.len();
        if bytes > self.shared.max_record_bytes {
            return Err(LogError::TooLarge { topic: topic.to_owned(), bytes });
        }
        let (ack, done) = oneshot::channel();
        let timestamp_millis = tollgate_schemas::now_unix_micros() / 1000;
        self.enqueue(WriteOp::Append {
            topic_id: info.id,
            partition,
            timestamp_millis,
            key: key.to_vec(),
            payload: payload.to_vec(),
            ack,
        })?;
        Ok(PendingAck::new(done))
    }

    fn enqueue(&self, op: WriteOp) -> Result<(), LogError> {
        match self.shared.writes.try_send(op) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(LogError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
    }
}

fn open_connection(path: &Path) -> Result<Connection, LogError> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(std::time::Duration::from_secs(30))?;
    // WAL lets readers run beside the writer; FULL makes every commit durable on return.
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
}

fn create_tables(connection: &Connection) -> Result<(), LogError> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS topics (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL UNIQUE,
             partitions INTEGER NOT NULL,
             compacted INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS records (
             topic_id INTEGER NOT NULL,
             partition INTEGER NOT NULL,
             offset INTEGER NOT NULL,
             timestamp_ms INTEGER NOT NULL,
             key BLOB,
             payload BLOB NOT NULL,
             PRIMARY KEY (topic_id, partition, offset)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS group_offsets (
             group_id TEXT NOT NULL,
             topic_id INTEGER NOT NULL,
             partition INTEGER NOT NULL,
             next_offset INTEGER NOT NULL,
             PRIMARY KEY (group_id, topic_id, partition)
         ) WITHOUT ROWID;",
    )?;
    Ok(())
}

fn load_topics(connection: &Connection) -> Result<HashMap<String, TopicInfo>, LogError> {
    let mut statement = connection.prepare("SELECT id, name, partitions FROM topics")?;
    let rows = statement
        .query_map([], |row| Ok((row.get::<_, String>(1)?, TopicInfo { id: row.get(0)?, partitions: row.get(2)? })))?;
    Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
}

fn load_next_offsets(connection: &Connection) -> Result<HashMap<(i64, i32), i64>, LogError> {
    let mut statement =
        connection.prepare("SELECT topic_id, partition, MAX(offset) + 1 FROM records GROUP BY topic_id, partition")?;
    let rows =
        statement.query_map([], |row| Ok(((row.get::<_, i64>(0)?, row.get::<_, i32>(1)?), row.get::<_, i64>(2)?)))?;
    Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
}

/// The writer loop: take everything queued, apply it in one transaction, then answer.
fn run_writer(
    connection: &mut Connection,
    queue: Receiver<WriteOp>,
    mut next_offsets: HashMap<(i64, i32), i64>,
    appended: &watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(MAX_GROUP_COMMIT);
    let mut shutting_down = false;
    while !shutting_down {
        let Ok(first) = queue.recv() else { break };
        batch.push(first);
        while batch.len() < MAX_GROUP_COMMIT {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if let Some(index) = batch.iter().position(|op| matches!(op, WriteOp::Shutdown)) {
            batch.truncate(index);
            shutting_down = true;
        }
        // Offsets are assigned against a copy so a failed transaction leaves no gap.
        let mut tentative = next_offsets.clone();
        match apply_batch(connection, &batch, &mut tentative) {
            Ok(outcomes) => {
                next_offsets = tentative;
                let any_appended = outcomes.iter().any(|outcome| matches!(outcome, Applied::Appended(_)));
                answer(batch.drain(..), outcomes);
                if any_appended {
                    appended.send_modify(|sequence| *sequence += 1);
                }
            }
            Err(error) => {
                tracing::error!(%error, "embedded log write failed; the batch is refused");
                let message = error.to_string();
                for op in batch.drain(..) {
                    let failure = || LogError::Io(std::io::Error::other(message.clone()));
                    match op {
                        WriteOp::Append { ack, .. } => drop(ack.send(Err(failure()))),
                        WriteOp::Commit { ack, .. } => drop(ack.send(Err(failure()))),
                        WriteOp::CreateTopic { ack, .. } => drop(ack.send(Err(failure()))),
                        WriteOp::Shutdown => {}
                    }
                }
            }
        }
    }
}

enum Applied {
    Appended(Ack),
    Committed,
    Created(TopicInfo),
}

fn apply_batch(
    connection: &mut Connection,
    batch: &[WriteOp],
    next_offsets: &mut HashMap<(i64, i32), i64>,
) -> Result<Vec<Applied>, rusqlite::Error> {
    let transaction = connection.transaction()?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut insert_record = transaction.prepare_cached(
            "INSERT INTO records (topic_id, partition, offset, timestamp_ms, key, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut upsert_offset = transaction.prepare_cached(
            "INSERT INTO group_offsets (group_id, topic_id, partition, next_offset) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_id, topic_id, partition) DO UPDATE SET next_offset = excluded.next_offset",
        )?;
        for op in batch {
            match op {
                WriteOp::Append { topic_id, partition, timestamp_millis, key, payload, .. } => {
                    let next = next_offsets.entry((*topic_id, *partition)).or_insert(0);
                    let offset = *next;
                    insert_record.execute(params![topic_id, partition, offset, timestamp_millis, key, payload])?;
                    *next += 1;
                    outcomes.push(Applied::Appended(Ack { partition: *partition, offset }));
                }
                WriteOp::Commit { group, positions, .. } => {
                    for (topic_id, position) in positions {
                        upsert_offset.execute(params![group, topic_id, position.partition, position.next_offset])?;
                    }
                    outcomes.push(Applied::Committed);
                }
                WriteOp::CreateTopic { name, partitions, compacted, .. } => {
                    transaction.execute(
                        "INSERT INTO topics (name, partitions, compacted) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
                        params![name, partitions, compacted],
                    )?;
                    let info = transaction.query_row(
                        "SELECT id, partitions FROM topics WHERE name = ?1",
                        params![name],
                        |row| Ok(TopicInfo { id: row.get(0)?, partitions: row.get(1)? }),
                    )?;
                    outcomes.push(Applied::Created(info));
                }
                WriteOp::Shutdown => {}
            }
        }
    }
    transaction.commit()?;
    Ok(outcomes)
}

fn answer(ops: impl Iterator<Item = WriteOp>, outcomes: Vec<Applied>) {
    // A dropped receiver means the publisher stopped waiting; the write still stands.
    for (op, outcome) in ops.zip(outcomes) {
        match (op, outcome) {
            (WriteOp::Append { ack, .. }, Applied::Appended(result)) => drop(ack.send(Ok(result))),
            (WriteOp::Commit { ack, .. }, Applied::Committed) => drop(ack.send(Ok(()))),
            (WriteOp::CreateTopic { ack, .. }, Applied::Created(info)) => drop(ack.send(Ok(info))),
            _ => tracing::error!("embedded log writer answered an operation out of order"),
        }
    }
}

#[async_trait::async_trait]
impl EventLog for EmbeddedLog {
    async fn ensure_topic(&self, name: &str, partitions: i32, compacted: bool) -> Result<(), LogError> {
        if partitions < 1 {
            return Err(LogError::Config(format!("topic `{name}` needs at least one partition, not {partitions}")));
        }
        if self.topic(name).is_ok() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        self.enqueue(WriteOp::CreateTopic { name: name.to_owned(), partitions, compacted, ack })?;
        let info = done.await.map_err(|_| LogError::Closed)??;
        self.shared.topics.write().map_err(|_| LogError::Closed)?.insert(name.to_owned(), info);
        Ok(())
    }

    fn publish(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<PendingAck, LogError> {
        let info = self.topic(topic)?;
        self.append(topic, info, partition_for_key(key, info.partitions), key, payload)
    }

    fn publish_to(&self, topic: &str, partition: i32, key: &[u8], payload: &[u8]) -> Result<PendingAck, LogError> {
        let info = self.topic(topic)?;
        if !(0..info.partitions).contains(&partition) {
            return Err(LogError::UnknownPartition { topic: topic.to_owned(), partition });
        }
        self.append(topic, info, partition, key, payload)
    }

    async fn read(&self, topic: &str, partition: i32, from_offset: i64, max: usize) -> Result<Vec<Record>, LogError> {
        let info = self.topic(topic)?;
        let database = self.shared.database.clone();
        let topic = topic.to_owned();
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        run_blocking(move || {
            let connection = open_connection(&database)?;
            let mut statement = connection.prepare(READ_RECORDS)?;
            let mut records = Vec::new();
            read_records(&mut statement, &topic, info.id, partition, from_offset, limit, &mut records)?;
            Ok(records)
        })
        .await
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Subscription>, LogError> {
        let mut subscribed = BTreeMap::new();
        for name in topics {
            subscribed.insert((*name).to_owned(), self.topic(name)?);
        }
        let reader = open_connection(&self.shared.database)?;
        let member_id = self.shared.next_member_id.fetch_add(1, Ordering::Relaxed);
        let generation = {
            let mut groups = self.shared.groups.lock().map_err(|_| LogError::Closed)?;
            let state = groups.entry(group.to_owned()).or_insert_with(GroupState::new);
            state.members.insert(member_id, subscribed.keys().cloned().collect());
            state.bump();
            state.generation.subscribe()
        };
        let mut subscription = EmbeddedSubscription {
            log: self.clone(),
            group: group.to_owned(),
            member_id,
            topics: subscribed,
            reader: Arc::new(Mutex::new(reader)),
            generation,
            assigned_generation: 0,
            appended: self.shared.appended.subscribe(),
            assignment: Vec::new(),
            positions: HashMap::new(),
            buffer: VecDeque::new(),
            next_partition: 0,
        };
        subscription.rebalance().await?;
        Ok(Box::new(subscription))
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, LogError> {
        let info = self.topic(topic)?;
        let database = self.shared.database.clone();
        run_blocking(move || {
            let connection = open_connection(&database)?;
            let mut statement =
                connection.prepare("SELECT MAX(offset) + 1 FROM records WHERE topic_id = ?1 AND partition = ?2")?;
            let mut ends = Vec::with_capacity(usize::try_from(info.partitions).unwrap_or(0));
            for partition in 0..info.partitions {
                let end: Option<i64> = statement.query_row(params![info.id, partition], |row| row.get(0))?;
                ends.push((partition, end.unwrap_or(0)));
            }
            Ok(ends)
        })
        .await
    }
}

/// Up to `?4` records of one partition from offset `?3` on.
const READ_RECORDS: &str = "SELECT offset, timestamp_ms, key, payload FROM records
     WHERE topic_id = ?1 AND partition = ?2 AND offset >= ?3 ORDER BY offset LIMIT ?4";

/// Runs [`READ_RECORDS`] and appends what it finds to `records`.
fn read_records(
    statement: &mut rusqlite::Statement<'_>,
    topic: &str,
    topic_id: i64,
    partition: i32,
    from_offset: i64,
    limit: i64,
    records: &mut Vec<Record>,
) -> Result<(), LogError> {
    let rows = statement.query_map(params![topic_id, partition, from_offset, limit], |row| {
        Ok(Record {
            topic: topic.to_owned(),
            partition,
            offset: row.get(0)?,
            timestamp_millis: row.get(1)?,
            key: row.get(2)?,
            payload: row.get(3)?,
        })
    })?;
    for row in rows {
        records.push(row?);
    }
    Ok(())
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(work).await.map_err(|join_error| LogError::Io(std::io::Error::other(join_error)))?
}

/// Membership of one consumer group.
struct GroupState {
    /// Member id -> topics it reads. Ordered, so every member computes the same split.
    members: BTreeMap<u64, Vec<String>>,
    generation: watch::Sender<u64>,
}

impl GroupState {
    fn new() -> Self {
        GroupState { members: BTreeMap::new(), generation: watch::channel(0).0 }
    }

    fn bump(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// The partitions of `topics` that `member` owns: each partition goes round-robin to
    /// the members reading its topic.
    fn assignment_of(&self, member: u64, topics: &BTreeMap<String, TopicInfo>) -> Vec<(String, i32)> {
        let mut owned = Vec::new();
        for (topic, info) in topics {
            let readers: Vec<u64> = self
                .members
                .iter()
                .filter(|(_, member_topics)| member_topics.contains(topic))
                .map(|(id, _)| *id)
                .collect();
            for partition in 0..info.partitions {
                let slot = usize::try_from(partition).unwrap_or(0) % readers.len().max(1);
                if readers.get(slot) == Some(&member) {
                    owned.push((topic.clone(), partition));
                }
            }
        }
        owned
    }
}

struct EmbeddedSubscription {
    log: EmbeddedLog,
    group: String,
    member_id: u64,
    topics: BTreeMap<String, TopicInfo>,
    reader: Arc<Mutex<Connection>>,
    generation: watch::Receiver<u64>,
    /// The group generation `assignment` was computed for.
    assigned_generation: u64,
    appended: watch::Receiver<u64>,
    assignment: Vec<(String, i32)>,
    /// Next offset to hand out per owned partition.
    positions: HashMap<(String, i32), i64>,
    buffer: VecDeque<Record>,
    /// Where the next fetch round starts, so no partition starves the others.
    next_partition: usize,
}

impl std::fmt::Debug for EmbeddedSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSubscription")
            .field("group", &self.group)
            .field("member_id", &self.member_id)
            .field("assignment", &self.assignment)
            .finish()
    }
}

impl EmbeddedSubscription {
    /// Recomputes the owned partitions after a membership change. Positions of partitions
    /// kept are kept; new partitions start at the group's committed offset.
    ///
    /// Cancel-safe: `assigned_generation` moves only once the new assignment is in place.
    async fn rebalance(&mut self) -> Result<(), LogError> {
        let generation = *self.generation.borrow();
        let assignment = {
            let groups = self.log.shared.groups.lock().map_err(|_| LogError::Closed)?;
            match groups.get(&self.group) {
                Some(state) => state.assignment_of(self.member_id, &self.topics),
                None => Vec::new(),
            }
        };
        self.buffer.clear();
        self.positions.retain(|partition, _| assignment.contains(partition));
        let missing: Vec<(String, i64, i32)> = assignment
            .iter()
            .filter(|partition| !self.positions.contains_key(*partition))
            .filter_map(|(topic, partition)| self.topics.get(topic).map(|info| (topic.clone(), info.id, *partition)))
            .collect();
        let reader = Arc::clone(&self.reader);
        let group = self.group.clone();
        let committed = run_blocking(move || {
            let connection = reader.lock().map_err(|_| LogError::Closed)?;
            let mut statement = connection.prepare_cached(
                "SELECT next_offset FROM group_offsets WHERE group_id = ?1 AND topic_id = ?2 AND partition = ?3",
            )?;
            let mut found = Vec::with_capacity(missing.len());
            for (topic, topic_id, partition) in missing {
                let next: Option<i64> =
                    statement.query_row(params![group, topic_id, partition], |row| row.get(0)).optional()?;
                found.push(((topic, partition), next.unwrap_or(0)));
            }
            Ok(found)
        })
        .await?;
        self.positions.extend(committed);
        self.assignment = assignment;
        self.assigned_generation = generation;
        Ok(())
    }

    /// Reads the next records of each owned partition into the buffer.
    async fn fetch(&mut self) -> Result<(), LogError> {
        if self.assignment.is_empty() {
            return Ok(());
        }
        let start = self.next_partition % self.assignment.len();
        self.next_partition = self.next_partition.wrapping_add(1);
        let wanted: Vec<(String, i64, i32, i64)> = self.assignment[start..]
            .iter()
            .chain(&self.assignment[..start])
            .filter_map(|(topic, partition)| {
                let info = self.topics.get(topic)?;
                let position = self.positions.get(&(topic.clone(), *partition))?;
                Some((topic.clone(), info.id, *partition, *position))
            })
            .collect();
        let reader = Arc::clone(&self.reader);
        let records = run_blocking(move || {
            let connection = reader.lock().map_err(|_| LogError::Closed)?;
            let mut statement = connection.prepare_cached(READ_RECORDS)?;
            let mut records = Vec::new();
            for (topic, topic_id, partition, position) in wanted {
                read_records(&mut statement, &topic, topic_id, partition, position, FETCH_BATCH, &mut records)?;
            }
            Ok(records)
        })
        .await?;
        self.buffer.extend(records);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> Result<Record, LogError> {
        loop {
            if *self.generation.borrow() != self.assigned_generation {
                self.rebalance().await?;
            }
            while let Some(record) = self.buffer.pop_front() {
                let key = (record.topic.clone(), record.partition);
                // Skip anything already handed out (a refetch after a rebalance).
                if let Some(position) = self.positions.get_mut(&key)
                    && record.offset >= *position
                {
                    *position = record.offset + 1;
                    return Ok(record);
                }
            }
            // Mark the current append sequence as seen before reading, so an append that
            // lands during the read still wakes us.
            self.appended.borrow_and_update();
            self.fetch().await?;
            if !self.buffer.is_empty() {
                continue;
            }
            tokio::select! {
                changed = self.appended.changed() => changed.map_err(|_| LogError::Closed)?,
                changed = self.generation.changed() => changed.map_err(|_| LogError::Closed)?,
            }
        }
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut resolved = Vec::with_capacity(positions.len());
        {
            let groups = self.log.shared.groups.lock().map_err(|_| LogError::Closed)?;
            let owned = groups
                .get(&self.group)
                .map(|state| state.assignment_of(self.member_id, &self.topics))
                .unwrap_or_default();
            for position in positions {
                let partition = (position.topic.clone(), position.partition);
                let info = self.topics.get(&position.topic);
                match info {
                    Some(info) if owned.contains(&partition) => resolved.push((info.id, position.clone())),
                    _ => {
                        return Err(LogError::NotAssigned {
                            topic: position.topic.clone(),
                            partition: position.partition,
                        });
                    }
                }
            }
        }
        let (ack, done) = oneshot::channel();
        self.log.enqueue(WriteOp::Commit { group: self.group.clone(), positions: resolved, ack })?;
        done.await.map_err(|_| LogError::Closed)?
    }

    fn assignment(&self) -> Vec<(String, i32)> {
        self.assignment.clone()
    }

    async fn seek(&mut self, topic: &str, partition: i32, next_offset: i64) -> Result<(), LogError> {
        let key = (topic.to_owned(), partition);
        let Some(position) = self.positions.get_mut(&key) else {
            return Err(LogError::NotAssigned { topic: topic.to_owned(), partition });
        };
        *position = next_offset.max(0);
        self.buffer.retain(|record| record.partition != partition || record.topic != topic);
        Ok(())
    }

    fn generation(&self) -> u64 {
        self.assigned_generation
    }
}

impl Drop for EmbeddedSubscription {
    fn drop(&mut self) {
        if let Ok(mut groups) = self.log.shared.groups.lock()
            && let Some(state) = groups.get_mut(&self.group)
        {
            state.members.remove(&self.member_id);
            state.bump();
        }
    }
}
