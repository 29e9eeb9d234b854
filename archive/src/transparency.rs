//! Tamper evidence: a Merkle log over the archived priced interactions, in the style of
//! Certificate Transparency (RFC 6962/9162), with signed checkpoints.
//!
//! Each partition of the priced-interactions table has its own log. Its leaves are the
//! records in archive order (data files by first offset, then by date; rows in file
//! order), and a leaf is `SHA-256(0x00 || canonical bytes)` where the canonical bytes are
//! the record's JSON encoding (`tollgate_schemas::encode`), which a stored row decodes
//! back to exactly. The tree arithmetic and proofs are `tlog_tiles` (a port of Go's
//! `sumdb/tlog`); checkpoints are C2SP `tlog-checkpoint` texts signed as C2SP signed notes
//! with an Ed25519 key (`signed_note`), with the time as an extension line.
//!
//! Objects, under `_merkle/{table}/pNNN/`:
//!
//! - `hashes-FIRST-END.bin`: the tree's stored hashes (`tlog::stored_hash_index` order,
//!   32 bytes each) added by leaves `FIRST..END`, one file per archived range;
//! - `checkpoint`: the newest signed checkpoint; `checkpoints/SIZE`: every one written.
//!
//! [`verify_partition`] trusts only a checkpoint's signature. It rebuilds the tree from
//! the stored rows and compares roots; when they differ it uses the stored hashes, once
//! they are shown to reproduce the signed root, to name each altered, missing or
//! reordered record.

use std::collections::HashMap;

use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};
use tlog_tiles::checkpoint::Checkpoint;
pub use tlog_tiles::tlog::Hash;
use tlog_tiles::tlog::{self, HashReader};
use tollgate_schemas::PricedInteraction;
use tollgate_schemas::archive::{self, Table};

use crate::{Archive, ArchiveError};

const MERKLE_DIR: &str = "_merkle";

/// The directory of `partition`'s log.
fn log_dir(table: Table, partition: i32) -> String {
    format!("{MERKLE_DIR}/{}/p{partition:03}", table.name)
}

/// The leaf hash of a priced interaction.
pub fn leaf_hash(record: &PricedInteraction) -> Result<Hash, ArchiveError> {
    let bytes = tollgate_schemas::encode(record).map_err(|error| ArchiveError::Invalid {
        path: format!("interaction {}", record.interaction.id),
        message: error.to_string(),
    })?;
    Ok(tlog::record_hash(&bytes))
}

/// A new signing key and its verifier key for a log named `name` (for example
/// `tollgate.example.com`), in the signed-note text forms `PRIVATE+KEY+name+id+key` and
/// `name+id+key`.
pub fn generate_key(name: &str) -> Result<(String, String), ArchiveError> {
    if !signed_note::is_key_name_valid(name) {
        return Err(ArchiveError::Key(format!("`{name}` is not a valid key name (no spaces or `+`)")));
    }
    Ok(signed_note::generate_key(&mut rand_core::OsRng, name))
}

/// Signs checkpoints.
pub struct LogSigner {
    signer: StandardSigner,
    name: String,
}

impl std::fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSigner").field("name", &self.name).finish_non_exhaustive()
    }
}

impl LogSigner {
    /// A signer from a signing key in the `PRIVATE+KEY+name+id+key` form.
    pub fn new(skey: &str) -> Result<Self, ArchiveError> {
        let signer = StandardSigner::new(skey.trim()).map_err(|error| ArchiveError::Key(error.to_string()))?;
        let name = skey.trim().split('+').nth(2).unwrap_or_default().to_owned();
        Ok(LogSigner { signer, name })
    }

    /// The origin line of `partition`'s checkpoints.
    pub fn origin(&self, table: Table, partition: i32) -> String {
        origin(&self.name, table, partition)
    }
}

fn origin(name: &str, table: Table, partition: i32) -> String {
    format!("{name}/{}/p{partition:03}", table.name)
}

/// Reads stored hashes from memory.
struct Stored<'a>(&'a [Hash]);

impl HashReader for Stored<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|index| {
                usize::try_from(*index)
                    .ok()
                    .and_then(|index| self.0.get(index))
                    .copied()
                    .ok_or(tlog::Error::IndexesNotInTree)
            })
            .collect()
    }
}

fn tree_error(error: tlog::Error) -> ArchiveError {
    ArchiveError::Invalid { path: "merkle tree".to_owned(), message: error.to_string() }
}

/// One partition's Merkle log, held in memory as its stored hashes (about 64 bytes per
/// leaf).
#[derive(Debug, Clone, Default)]
pub struct PartitionLog {
    stored: Vec<Hash>,
    size: u64,
}

impl PartitionLog {
    /// The log of `partition` as saved, up to `size` leaves. Hash files beyond `size`
    /// (left by a range whose writing was cut short) are ignored.
    pub async fn load(archive: &Archive, table: Table, partition: i32, size: u64) -> Result<Self, ArchiveError> {
        let mut log = PartitionLog::default();
        let dir = log_dir(table, partition);
        for path in archive.list(&dir).await? {
            let Some(range) = path.rsplit('/').next().and_then(|name| name.strip_prefix("hashes-")) else { continue };
            let Some((first, end)) = range.strip_suffix(".bin").and_then(|range| range.split_once('-')) else {
                continue;
            };
            let (Ok(first), Ok(end)) = (first.parse::<u64>(), end.parse::<u64>()) else { continue };
            if first >= size || end > size {
                continue;
            }
            let invalid = |message: String| ArchiveError::Invalid { path: path.clone(), message };
            if first != log.size {
                return Err(invalid(format!("expected hashes from leaf {}, found {first}", log.size)));
            }
            let bytes = archive.get(&path).await?.unwrap_or_default();
            let wanted = tlog::stored_hash_count(end) - tlog::stored_hash_count(first);
            if bytes.len() as u64 != wanted * 32 {
                return Err(invalid(format!("{} bytes instead of {}", bytes.len(), wanted * 32)));
            }
            for chunk in bytes.chunks_exact(32) {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(chunk);
                log.stored.push(Hash(hash));
            }
            log.size = end;
        }
        if log.size != size {
            return Err(ArchiveError::Invalid {
                path: dir,
                message: format!("the hash files cover {} leaves, not {size}", log.size),
            });
        }
        Ok(log)
    }

    /// Leaves in the log.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf.
    pub fn append(&mut self, leaf: Hash) -> Result<(), ArchiveError> {
        let hashes = tlog::stored_hashes_for_record_hash(self.size, leaf, &Stored(&self.stored)).map_err(tree_error)?;
        self.stored.extend(hashes);
        self.size += 1;
        Ok(())
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ArchiveError> {
        if size > self.size {
            return Err(tree_error(tlog::Error::IndexesNotInTree));
        }
        tlog::tree_hash(size, &Stored(&self.stored)).map_err(tree_error)
    }

    /// Leaf `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let position = usize::try_from(tlog::stored_hash_index(0, index)).ok()?;
        (index < self.size).then(|| self.stored.get(position).copied()).flatten()
    }

    /// The audit path showing that leaf `index` is in the tree of `tree_size` leaves.
    pub fn inclusion_proof(&self, index: u64, tree_size: u64) -> Result<Vec<Hash>, ArchiveError> {
        if tree_size > self.size {
            return Err(tree_error(tlog::Error::IndexesNotInTree));
        }
        tlog::prove_record(tree_size, index, &Stored(&self.stored)).map_err(tree_error)
    }

    /// The proof that the tree of `old_size` leaves is a prefix of the tree of `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ArchiveError> {
        if new_size > self.size {
            return Err(tree_error(tlog::Error::IndexesNotInTree));
        }
        tlog::prove_tree(new_size, old_size, &Stored(&self.stored)).map_err(tree_error)
    }

    /// Saves the stored hashes added by leaves `first_leaf..size` as one hash file.
    pub async fn save(
        &self,
        archive: &Archive,
        table: Table,
        partition: i32,
        first_leaf: u64,
    ) -> Result<(), ArchiveError> {
        let from = usize::try_from(tlog::stored_hash_count(first_leaf)).unwrap_or(usize::MAX);
        let hashes = self.stored.get(from..).unwrap_or_default();
        let mut bytes = Vec::with_capacity(hashes.len() * 32);
        for hash in hashes {
            bytes.extend_from_slice(&hash.0);
        }
        let path = format!("{}/hashes-{first_leaf:020}-{:020}.bin", log_dir(table, partition), self.size);
        archive.put(&path, bytes).await
    }
}

/// Checks an inclusion proof: that `leaf` is leaf `index` of the tree of `tree_size` with
/// root `root`.
pub fn check_inclusion(proof: &[Hash], tree_size: u64, root: Hash, index: u64, leaf: Hash) -> bool {
    tlog::check_record(&proof.to_vec(), tree_size, root, index, leaf).is_ok()
}

/// Checks a consistency proof between two tree heads.
pub fn check_consistency(proof: &[Hash], old_size: u64, old_root: Hash, new_size: u64, new_root: Hash) -> bool {
    tlog::check_tree(&proof.to_vec(), new_size, new_root, old_size, old_root).is_ok()
}

/// The size a signed checkpoint states, read without checking its signature (the reader
/// of a proof checks that).
pub fn checkpoint_size(note: &[u8]) -> Result<u64, ArchiveError> {
    let invalid = |message: String| ArchiveError::Invalid { path: "checkpoint".to_owned(), message };
    let note = Note::from_bytes(note).map_err(|error| invalid(format!("not a signed note: {error}")))?;
    let checkpoint =
        Checkpoint::from_bytes(note.text()).map_err(|error| invalid(format!("not a checkpoint: {error}")))?;
    Ok(checkpoint.size())
}

/// That leaf `leaf_index` of a partition's log is `leaf_hash`, and is in the tree of the
/// signed `checkpoint`: RFC 9162 inclusion proof (section 2.1.3) with the checkpoint it
/// leads to. Hashes are standard base64.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InclusionProof {
    pub partition: i32,
    pub leaf_index: u64,
    pub tree_size: u64,
    pub leaf_hash: String,
    pub hashes: Vec<String>,
    /// The signed checkpoint (a C2SP signed note), as stored.
    pub checkpoint: String,
}

/// That the tree of the checkpoint of `old_size` leaves is a prefix of the tree of the
/// one of `new_size` leaves: RFC 9162 consistency proof (section 2.1.4), with both signed
/// checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsistencyProof {
    pub partition: i32,
    pub old_size: u64,
    pub new_size: u64,
    pub hashes: Vec<String>,
    pub old_checkpoint: String,
    pub new_checkpoint: String,
}

fn encode_hash(hash: &Hash) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(hash.0)
}

/// Records which stored hashes a proof reads, answering with zeros: which hashes a proof
/// needs depends only on the tree's shape, so a first pass names them and a second,
/// over just those hashes, makes the proof.
#[derive(Default)]
struct Recording(std::cell::RefCell<Vec<u64>>);

impl HashReader for Recording {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        self.0.borrow_mut().extend_from_slice(indexes);
        Ok(vec![Hash([0; 32]); indexes.len()])
    }
}

struct Fetched(HashMap<u64, Hash>);

impl HashReader for Fetched {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        indexes.iter().map(|index| self.0.get(index).copied().ok_or(tlog::Error::IndexesNotInTree)).collect()
    }
}

/// Stored hashes `indexes` of `partition`'s log of `size` leaves, read from the hash
/// files by range.
async fn fetch_stored(
    archive: &Archive,
    table: Table,
    partition: i32,
    size: u64,
    indexes: &[u64],
) -> Result<Fetched, ArchiveError> {
    let mut wanted: Vec<u64> = indexes.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut fetched = HashMap::new();
    for path in archive.list(&log_dir(table, partition)).await? {
        let Some(range) = path.rsplit('/').next().and_then(|name| name.strip_prefix("hashes-")) else { continue };
        let Some((first, end)) = range.strip_suffix(".bin").and_then(|range| range.split_once('-')) else { continue };
        let (Ok(first), Ok(end)) = (first.parse::<u64>(), end.parse::<u64>()) else { continue };
        if end > size {
            continue;
        }
        let (from, to) = (tlog::stored_hash_count(first), tlog::stored_hash_count(end));
        let inside: Vec<u64> = wanted.iter().copied().filter(|index| (from..to).contains(index)).collect();
        if inside.is_empty() {
            continue;
        }
        let ranges: Vec<std::ops::Range<u64>> =
            inside.iter().map(|index| (index - from) * 32..(index - from + 1) * 32).collect();
        let chunks = archive.store().get_ranges(&archive.path(&path), &ranges).await?;
        for (index, chunk) in inside.into_iter().zip(chunks) {
            let hash: [u8; 32] = chunk.as_ref().try_into().map_err(|_| ArchiveError::Invalid {
                path: path.clone(),
                message: format!("stored hash {index} is cut short"),
            })?;
            fetched.insert(index, Hash(hash));
        }
    }
    Ok(Fetched(fetched))
}

/// An inclusion proof of leaf `leaf_index` (whose hash is `leaf`) of `partition`'s log
/// against the newest signed checkpoint, or `None` when no checkpoint covers it yet.
pub async fn prove_inclusion(
    archive: &Archive,
    table: Table,
    partition: i32,
    leaf_index: u64,
    leaf: Hash,
) -> Result<Option<InclusionProof>, ArchiveError> {
    let Some(note) = read_checkpoint(archive, table, partition, None).await? else { return Ok(None) };
    let tree_size = checkpoint_size(&note)?;
    if leaf_index >= tree_size {
        return Ok(None);
    }
    let recording = Recording::default();
    tlog::prove_record(tree_size, leaf_index, &recording).map_err(tree_error)?;
    let fetched = fetch_stored(archive, table, partition, tree_size, &recording.0.take()).await?;
    let hashes = tlog::prove_record(tree_size, leaf_index, &fetched).map_err(tree_error)?;
    Ok(Some(InclusionProof {
        partition,
        leaf_index,
        tree_size,
        leaf_hash: encode_hash(&leaf),
        hashes: hashes.iter().map(encode_hash).collect(),
        checkpoint: String::from_utf8_lossy(&note).into_owned(),
    }))
}

/// A consistency proof between the signed checkpoints of `old_size` and `new_size`
/// leaves of `partition`'s log, or `None` when either was never signed.
pub async fn prove_consistency(
    archive: &Archive,
    table: Table,
    partition: i32,
    old_size: u64,
    new_size: u64,
) -> Result<Option<ConsistencyProof>, ArchiveError> {
    let (Some(old), Some(new)) = (
        read_checkpoint(archive, table, partition, Some(old_size)).await?,
        read_checkpoint(archive, table, partition, Some(new_size)).await?,
    ) else {
        return Ok(None);
    };
    let recording = Recording::default();
    tlog::prove_tree(new_size, old_size, &recording).map_err(tree_error)?;
    let fetched = fetch_stored(archive, table, partition, new_size, &recording.0.take()).await?;
    let hashes = tlog::prove_tree(new_size, old_size, &fetched).map_err(tree_error)?;
    Ok(Some(ConsistencyProof {
        partition,
        old_size,
        new_size,
        hashes: hashes.iter().map(encode_hash).collect(),
        old_checkpoint: String::from_utf8_lossy(&old).into_owned(),
        new_checkpoint: String::from_utf8_lossy(&new).into_owned(),
    }))
}

fn decode_hash(text: &str) -> Option<Hash> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    Some(Hash(bytes.try_into().ok()?))
}

/// Checks `proof`: its checkpoint is signed by `verifier_key` and the leaf is in that
/// checkpoint's tree at its index. `Err` when the key cannot be used.
pub fn check_inclusion_proof(proof: &InclusionProof, verifier_key: &str) -> Result<bool, ArchiveError> {
    StandardVerifier::new(verifier_key.trim()).map_err(|error| ArchiveError::Key(error.to_string()))?;
    let Ok(head) = open_checkpoint(proof.checkpoint.as_bytes(), verifier_key) else { return Ok(false) };
    let hashes: Option<Vec<Hash>> = proof.hashes.iter().map(|hash| decode_hash(hash)).collect();
    let (Some(hashes), Some(leaf)) = (hashes, decode_hash(&proof.leaf_hash)) else { return Ok(false) };
    Ok(head.size == proof.tree_size && check_inclusion(&hashes, head.size, head.root, proof.leaf_index, leaf))
}

/// The sizes of every checkpoint `partition`'s log has signed, oldest first.
pub async fn checkpoint_sizes(archive: &Archive, table: Table, partition: i32) -> Result<Vec<u64>, ArchiveError> {
    let dir = format!("{}/checkpoints", log_dir(table, partition));
    let mut sizes: Vec<u64> = archive
        .list(&dir)
        .await?
        .iter()
        .filter_map(|path| path.rsplit('/').next().and_then(|name| name.parse().ok()))
        .collect();
    sizes.sort_unstable();
    Ok(sizes)
}

/// A verified checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeHead {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// When it was signed, if it says.
    pub time_unix_micros: Option<i64>,
}

/// Signs and saves a checkpoint of `partition`'s log (as the newest, and in the history).
pub async fn write_checkpoint(
    archive: &Archive,
    signer: &LogSigner,
    table: Table,
    partition: i32,
    log: &PartitionLog,
    time_unix_micros: i64,
) -> Result<Vec<u8>, ArchiveError> {
    let root = log.root(log.size())?;
    let extension = format!("time {time_unix_micros}\n");
    let checkpoint = Checkpoint::new(&signer.origin(table, partition), log.size(), root, &extension)
        .map_err(|error| ArchiveError::Key(error.to_string()))?;
    let mut note = Note::new(&checkpoint.to_bytes(), &[]).map_err(|error| ArchiveError::Key(error.to_string()))?;
    note.add_sigs(&[&signer.signer]).map_err(|error| ArchiveError::Key(error.to_string()))?;
    let bytes = note.to_bytes();
    let dir = log_dir(table, partition);
    archive.put(&format!("{dir}/checkpoints/{:020}", log.size()), bytes.clone()).await?;
    archive.put(&format!("{dir}/checkpoint"), bytes.clone()).await?;
    Ok(bytes)
}

/// The newest checkpoint of `partition` (or the one of `size` leaves), as signed.
pub async fn read_checkpoint(
    archive: &Archive,
    table: Table,
    partition: i32,
    size: Option<u64>,
) -> Result<Option<bytes::Bytes>, ArchiveError> {
    let dir = log_dir(table, partition);
    match size {
        Some(size) => archive.get(&format!("{dir}/checkpoints/{size:020}")).await,
        None => archive.get(&format!("{dir}/checkpoint")).await,
    }
}

/// Verifies a signed checkpoint with `verifier_key` (`name+id+key`) and reads it.
pub fn open_checkpoint(note: &[u8], verifier_key: &str) -> Result<TreeHead, ArchiveError> {
    let key_error = |error: String| ArchiveError::Key(error);
    let verifier = StandardVerifier::new(verifier_key.trim()).map_err(|error| key_error(error.to_string()))?;
    let note = Note::from_bytes(note).map_err(|error| key_error(format!("not a signed note: {error}")))?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|error| key_error(format!("signature: {error}")))?;
    let checkpoint =
        Checkpoint::from_bytes(note.text()).map_err(|error| key_error(format!("not a checkpoint: {error}")))?;
    let time_unix_micros =
        checkpoint.extension().lines().find_map(|line| line.strip_prefix("time ")).and_then(|time| time.parse().ok());
    Ok(TreeHead {
        origin: checkpoint.origin().to_owned(),
        size: checkpoint.size(),
        root: *checkpoint.hash(),
        time_unix_micros,
    })
}

/// What is wrong with a record, or with the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A stored record matches no record of the signed log.
    Altered,
    /// A record of the signed log is not stored.
    Missing,
    /// A stored record is out of its signed place.
    Reordered,
    /// The log's stored hashes do not reproduce the signed root, so problems cannot be
    /// located record by record.
    HashesAltered,
    /// Records are stored but no checkpoint covers them.
    NoCheckpoint,
    /// The checkpoint's signature does not verify, or it is not this partition's.
    BadCheckpoint,
}

/// One finding of a verification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The record's place in the signed log.
    pub position: Option<u64>,
    /// The interaction id of the stored record concerned.
    pub interaction_id: Option<uuid::Uuid>,
    /// The data file holding it, and its row there.
    pub file: Option<String>,
    pub row: Option<usize>,
    pub detail: String,
}

/// The result of verifying one partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub table: &'static str,
    pub partition: i32,
    /// Leaves covered by the newest checkpoint (0 if none verified).
    pub checkpoint_size: u64,
    /// Records stored in the partition's files.
    pub stored_records: u64,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A stored record as a leaf.
struct StoredLeaf {
    hash: Hash,
    id: uuid::Uuid,
    file: String,
    row: usize,
}

/// Verifies the stored records of `partition` of the priced interactions against its
/// newest checkpoint, signed by the holder of `verifier_key`.
pub async fn verify_partition(archive: &Archive, partition: i32, verifier_key: &str) -> Result<Report, ArchiveError> {
    let table = archive::PRICED_INTERACTIONS;
    let mut leaves = Vec::new();
    for file in archive.data_files(table, partition).await? {
        let records: Vec<PricedInteraction> = archive.read_records(&file.path).await?;
        for (row, record) in records.iter().enumerate() {
            leaves.push(StoredLeaf {
                hash: leaf_hash(record)?,
                id: record.interaction.id,
                file: file.path.clone(),
                row,
            });
        }
    }
    let mut report = Report {
        table: table.name,
        partition,
        checkpoint_size: 0,
        stored_records: leaves.len() as u64,
        problems: Vec::new(),
    };
    let problem =
        |kind, detail: String| Problem { kind, position: None, interaction_id: None, file: None, row: None, detail };
    let Some(note) = read_checkpoint(archive, table, partition, None).await? else {
        if !leaves.is_empty() {
            report
                .problems
                .push(problem(ProblemKind::NoCheckpoint, format!("{} records and no checkpoint", leaves.len())));
        }
        return Ok(report);
    };
    let head = match open_checkpoint(&note, verifier_key) {
        Ok(head) if head.origin.ends_with(&format!("/{}/p{partition:03}", table.name)) => head,
        Ok(head) => {
            report
                .problems
                .push(problem(ProblemKind::BadCheckpoint, format!("the checkpoint is for `{}`", head.origin)));
            return Ok(report);
        }
        Err(error) => {
            report.problems.push(problem(ProblemKind::BadCheckpoint, error.to_string()));
            return Ok(report);
        }
    };
    report.checkpoint_size = head.size;

    let mut rebuilt = PartitionLog::default();
    for leaf in &leaves {
        rebuilt.append(leaf.hash)?;
    }
    if rebuilt.size() >= head.size && rebuilt.root(head.size)? == head.root {
        return Ok(report);
    }

    // Something differs: find what, with the stored hashes if they are authentic.
    let authentic = match PartitionLog::load(archive, table, partition, head.size).await {
        Ok(log) if log.root(head.size).is_ok_and(|root| root == head.root) => log,
        outcome => {
            let why = match outcome {
                Ok(_) => "they do not reproduce the signed root".to_owned(),
                Err(error) => error.to_string(),
            };
            report.problems.push(problem(
                ProblemKind::HashesAltered,
                format!("the stored records do not match the checkpoint of {} records, and the log's hash files cannot locate the difference: {why}", head.size),
            ));
            return Ok(report);
        }
    };
    let mut places: HashMap<[u8; 32], u64> = HashMap::new();
    for index in 0..head.size {
        if let Some(hash) = authentic.leaf(index) {
            places.entry(hash.0).or_insert(index);
        }
    }
    let mut seen = vec![false; usize::try_from(head.size).unwrap_or(0)];
    let mut furthest: Option<u64> = None;
    for (position, leaf) in leaves.iter().enumerate() {
        let about = |kind, position: Option<u64>, detail: String| Problem {
            kind,
            position,
            interaction_id: Some(leaf.id),
            file: Some(leaf.file.clone()),
            row: Some(leaf.row),
            detail,
        };
        match places.get(&leaf.hash.0) {
            None if (position as u64) < head.size => report.problems.push(about(
                ProblemKind::Altered,
                Some(position as u64),
                format!("interaction {} is not the record the log signed at this place", leaf.id),
            )),
            None => {} // After the checkpoint: not covered yet.
            Some(&index) => {
                if let Some(slot) = usize::try_from(index).ok().and_then(|index| seen.get_mut(index)) {
                    *slot = true;
                }
                if furthest.is_some_and(|furthest| index < furthest) {
                    report.problems.push(about(
                        ProblemKind::Reordered,
                        Some(index),
                        format!("interaction {} is stored after records the log signed after it", leaf.id),
                    ));
                }
                furthest = furthest.max(Some(index));
            }
        }
    }
    // A stored record that replaced the signed one at its place is one alteration, not
    // an alteration and a missing record.
    let altered: std::collections::BTreeSet<u64> = report
        .problems
        .iter()
        .filter(|problem| problem.kind == ProblemKind::Altered)
        .filter_map(|problem| problem.position)
        .collect();
    for (index, found) in seen.iter().enumerate() {
        if !found && !altered.contains(&(index as u64)) {
            let after = (index > 0)
                .then(|| authentic.leaf(index as u64 - 1))
                .flatten()
                .and_then(|previous| leaves.iter().find(|leaf| leaf.hash == previous).map(|leaf| leaf.id.to_string()));
            report.problems.push(Problem {
                kind: ProblemKind::Missing,
                position: Some(index as u64),
                interaction_id: None,
                file: None,
                row: None,
                detail: match after {
                    Some(previous) => {
                        format!("record {index} of the signed log (the one after interaction {previous}) is not stored")
                    }
                    None => format!("record {index} of the signed log is not stored"),
                },
            });
        }
    }
    if report.problems.is_empty() {
        // The same records in the same order, yet a different root: cannot happen unless
        // the hash function does; say so rather than pass.
        report.problems.push(problem(
            ProblemKind::HashesAltered,
            "the stored records do not reproduce the signed root".to_owned(),
        ));
    }
    Ok(report)
}

/// The priced-interaction partitions that have data files or a log.
pub async fn partitions(archive: &Archive) -> Result<Vec<i32>, ArchiveError> {
    let table = archive::PRICED_INTERACTIONS;
    let mut found = std::collections::BTreeSet::new();
    for path in
        archive.list(table.name).await?.into_iter().chain(archive.list(&format!("{MERKLE_DIR}/{}", table.name)).await?)
    {
        let digits = path.split(['/', '-']).find_map(|part| {
            part.strip_prefix('p').filter(|rest| rest.len() == 3 && rest.bytes().all(|b| b.is_ascii_digit()))
        });
        if let Some(partition) = digits.and_then(|digits| digits.parse().ok()) {
            found.insert(partition);
        }
    }
    Ok(found.into_iter().collect())
}

/// Whether the archive keeps a Merkle log over the priced interactions: whether any
/// partition has one. One delimited listing, however large the log.
pub async fn keeps_log(archive: &Archive) -> Result<bool, ArchiveError> {
    let prefix = archive.path(&format!("{MERKLE_DIR}/{}", archive::PRICED_INTERACTIONS.name));
    let listing = archive.store().list_with_delimiter(Some(&prefix)).await?;
    Ok(!listing.common_prefixes.is_empty())
}

/// Verifies every partition (see [`verify_partition`]).
pub async fn verify(archive: &Archive, verifier_key: &str) -> Result<Vec<Report>, ArchiveError> {
    let mut reports = Vec::new();
    for partition in partitions(archive).await? {
        reports.push(verify_partition(archive, partition, verifier_key).await?);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(n: u8) -> Hash {
        tlog::record_hash(&[n])
    }

    #[test]
    fn proofs_from_the_log_check_and_tampering_fails_them() {
        let mut log = PartitionLog::default();
        for n in 0..37 {
            log.append(leaf(n)).unwrap();
        }
        let root = log.root(37).unwrap();
        for index in [0, 1, 17, 36] {
            let proof = log.inclusion_proof(index, 37).unwrap();
            assert!(check_inclusion(&proof, 37, root, index, leaf(u8::try_from(index).unwrap())));
            assert!(!check_inclusion(&proof, 37, root, index, leaf(200)));
        }
        let old = log.root(20).unwrap();
        let proof = log.consistency_proof(20, 37).unwrap();
        assert!(check_consistency(&proof, 20, old, 37, root));
        assert!(!check_consistency(&proof, 20, leaf(9), 37, root));
        assert_eq!(log.leaf(5), Some(leaf(5)));
        assert_eq!(log.leaf(37), None);
    }

    #[test]
    fn checkpoints_verify_only_with_their_key() {
        let (skey, vkey) = generate_key("audit.example").unwrap();
        let (_, other) = generate_key("audit.example").unwrap();
        let signer = LogSigner::new(&skey).unwrap();
        let mut log = PartitionLog::default();
        log.append(leaf(1)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let note = runtime
            .block_on(write_checkpoint(&archive, &signer, archive::PRICED_INTERACTIONS, 2, &log, 1_795_000_000_000_000))
            .unwrap();
        let head = open_checkpoint(&note, &vkey).unwrap();
        assert_eq!(head.size, 1);
        assert_eq!(head.root, log.root(1).unwrap());
        assert_eq!(head.origin, "audit.example/priced_interactions/p002");
        assert_eq!(head.time_unix_micros, Some(1_795_000_000_000_000));
        assert!(open_checkpoint(&note, &other).is_err());
        let mut forged = note.clone();
        let position = forged.iter().position(|byte| *byte == b'\n').unwrap() + 1;
        forged[position] = b'9'; // the size line
        assert!(open_checkpoint(&forged, &vkey).is_err());
        assert!(generate_key("has space").is_err());
    }
}
