//! Tollgate's Parquet archive as storage: where it is (a local directory or an object
//! store such as S3), the progress markers its writer keeps, and its tamper evidence, a
//! Merkle log per partition of priced interactions with signed checkpoints
//! ([`transparency`]).
//!
//! The file layout itself is defined in `tollgate_schemas::archive`. This crate reads and
//! writes objects; it does not consume the event log (the processor's archive stage does)
//! and does not answer queries (the query API does, with DataFusion).

pub mod transparency;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tollgate_schemas::SourceOffset;
use tollgate_schemas::archive::Table;

/// Why an archive operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("archive location `{location}`: {message}")]
    Location { location: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    RecordBatch(#[from] tollgate_schemas::arrow::RecordBatchError),
    #[error("signing key: {0}")]
    Key(String),
}

/// The archive's storage: an object store and the prefix everything goes under.
#[derive(Debug, Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    root: Path,
    location: String,
}

/// A partition's progress marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Every record before this offset is archived.
    pub next_offset: i64,
    /// A range being written: `[first, last]`.
    pub pending: Option<[i64; 2]>,
    /// For priced interactions: the highest source offset seen in each source partition
    /// before `next_offset` (or before the pending range), which is where duplicate
    /// detection resumes.
    #[serde(default)]
    pub sources: Vec<SourceOffset>,
    /// For priced interactions: the size of the partition's Merkle log before
    /// `next_offset` (or before the pending range).
    #[serde(default)]
    pub leaves: u64,
    pub instance: String,
    pub updated_unix_micros: i64,
}

impl Archive {
    /// Opens the archive at `location`: a local directory (created if missing), or an
    /// object store URL such as `s3://bucket/prefix` with `options` for the store
    /// (`aws_endpoint`, `aws_region`, credentials, ...; the `AWS_*` environment variables
    /// fill in what `options` does not say).
    pub fn open(location: &str, options: &BTreeMap<String, String>) -> Result<Archive, ArchiveError> {
        let invalid = |message: String| ArchiveError::Location { location: location.to_owned(), message };
        if location.contains("://") {
            let url = url::Url::parse(location).map_err(|error| invalid(error.to_string()))?;
            let mut builder_options: Vec<(String, String)> =
                options.iter().map(|(name, value)| (name.clone(), value.clone())).collect();
            if url.scheme() == "s3" {
                for (name, value) in std::env::vars() {
                    let lower = name.to_ascii_lowercase();
                    if lower.starts_with("aws_") && !options.contains_key(&lower) {
                        builder_options.push((lower, value));
                    }
                }
            }
            let (store, root) =
                object_store::parse_url_opts(&url, builder_options).map_err(|error| invalid(error.to_string()))?;
            return Ok(Archive { store: Arc::from(store), root, location: location.to_owned() });
        }
        std::fs::create_dir_all(location).map_err(|error| invalid(error.to_string()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(location)
            .map_err(|error| invalid(error.to_string()))?
            .with_automatic_cleanup(true);
        Ok(Archive { store: Arc::new(store), root: Path::default(), location: location.to_owned() })
    }

    /// Where the archive is, as configured.
    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The object path of `relative` (a path in the archive's layout).
    pub fn path(&self, relative: &str) -> Path {
        relative.split('/').filter(|part| !part.is_empty()).fold(self.root.clone(), |path, part| path.join(part))
    }

    /// `relative` as written (its path within the archive) from an object path.
    fn relative(&self, path: &Path) -> String {
        let prefix = self.root.as_ref();
        let full = path.as_ref();
        full.strip_prefix(prefix).unwrap_or(full).trim_start_matches('/').to_owned()
    }

    /// The object at `relative`, or `None` if there is none.
    pub async fn get(&self, relative: &str) -> Result<Option<bytes::Bytes>, ArchiveError> {
        match self.store.get(&self.path(relative)).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Writes `bytes` at `relative`, replacing any object there. A reader sees the old
    /// object or the new one, never part of one.
    pub async fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        self.store.put(&self.path(relative), PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// The paths (relative to the archive) of every object under `relative`, sorted.
    pub async fn list(&self, relative: &str) -> Result<Vec<String>, ArchiveError> {
        let prefix = self.path(relative);
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut paths: Vec<String> = objects.iter().map(|object| self.relative(&object.location)).collect();
        paths.sort();
        Ok(paths)
    }

    /// The progress marker of `partition` of `table`, if it was ever written.
    pub async fn progress(&self, table: Table, partition: i32) -> Result<Option<Progress>, ArchiveError> {
        let path = table.progress_path(partition);
        let Some(bytes) = self.get(&path).await? else { return Ok(None) };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| ArchiveError::Invalid { path, message: error.to_string() })
    }

    pub async fn set_progress(&self, table: Table, partition: i32, progress: &Progress) -> Result<(), ArchiveError> {
        let path = table.progress_path(partition);
        let bytes = serde_json::to_vec(progress)
            .map_err(|error| ArchiveError::Invalid { path: path.clone(), message: error.to_string() })?;
        self.put(&path, bytes).await
    }

    /// The data files of `partition` of `table`, in log order: by first offset, then by
    /// date. Each is `(path, first_offset, last_offset, date)`.
    pub async fn data_files(&self, table: Table, partition: i32) -> Result<Vec<DataFile>, ArchiveError> {
        let marker = format!("{}-p{partition:03}-", table.name);
        let mut files = Vec::new();
        for path in self.list(table.name).await? {
            let Some(name) = path.rsplit('/').next() else { continue };
            let Some(range) = name.strip_prefix(&marker).and_then(|rest| rest.strip_suffix(".parquet")) else {
                continue;
            };
            let Some((first, last)) = range.split_once('-') else { continue };
            let (Ok(first), Ok(last)) = (first.parse::<i64>(), last.parse::<i64>()) else { continue };
            let date = path.split('/').find_map(|part| part.strip_prefix("date=")).unwrap_or_default().to_owned();
            files.push(DataFile { path, first_offset: first, last_offset: last, date });
        }
        files.sort_by(|a, b| (a.first_offset, &a.date).cmp(&(b.first_offset, &b.date)));
        Ok(files)
    }

    /// The rows of the Parquet file at `relative`, as `R`.
    pub async fn read_records<R: tollgate_schemas::arrow::StoredRecord>(
        &self,
        relative: &str,
    ) -> Result<Vec<R>, ArchiveError> {
        let Some(bytes) = self.get(relative).await? else {
            return Err(ArchiveError::Invalid { path: relative.to_owned(), message: "no such file".to_owned() });
        };
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
        let mut records = Vec::new();
        for batch in reader {
            let batch = batch
                .map_err(|error| ArchiveError::Invalid { path: relative.to_owned(), message: error.to_string() })?;
            records.extend(R::from_record_batch(&batch)?);
        }
        Ok(records)
    }
}

/// One data file of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Relative to the archive.
    pub path: String,
    pub first_offset: i64,
    pub last_offset: i64,
    pub date: String,
}
