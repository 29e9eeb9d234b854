//! DataFusion over a directory of Parquet files written by the processor's Parquet sink.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use object_store::ObjectStore;
use tollgate_schemas::arrow::{RecordBatchError, StoredRecord};
use tollgate_schemas::{AccessEvent, GovernanceChange, PolicyViolation, QuotaDecision, UpstreamHealth};

/// Why a query over the Parquet store failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("query engine: {0}")]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    RecordBatch(#[from] RecordBatchError),
}

/// A DataFusion session with Tollgate's tables registered.
#[derive(Clone)]
pub struct ParquetStore {
    context: SessionContext,
}

impl std::fmt::Debug for ParquetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetStore").finish_non_exhaustive()
    }
}

impl ParquetStore {
    /// A session in which strings read as plain `Utf8`, the type the stored-record layouts
    /// declare, rather than DataFusion's default view types.
    ///
    /// Directory listings are not cached: the processor adds files all the time (and
    /// rewrites a file in place when it replays a range), and DataFusion's listing cache
    /// would otherwise keep the first listing for the session's whole life. File metadata
    /// stays cached, checked against each fresh listing's size and modification time.
    pub fn new() -> Self {
        let config = SessionConfig::new().set_bool("datafusion.execution.parquet.schema_force_view_types", false);
        let caches = CacheManagerConfig::default().with_list_files_cache_limit(0);
        let runtime = RuntimeEnvBuilder::new().with_cache_manager(caches).build_arc();
        let context = match runtime {
            Ok(runtime) => SessionContext::new_with_config_rt(config, runtime),
            // Building the default runtime with one cache fewer does not fail; if it ever
            // did, a session that lists on every query is still needed.
            Err(error) => {
                tracing::error!(%error, "building the query runtime failed; using the defaults");
                SessionContext::new_with_config(config)
            }
        };
        ParquetStore { context }
    }

    /// Registers the Parquet files under `dir` (searched recursively) as table `name`,
    /// with the Arrow schema of `R`.
    pub async fn register<R: StoredRecord>(&self, name: &str, dir: &Path) -> Result<(), QueryError> {
        let schema = R::arrow_schema();
        let options = ParquetReadOptions::default().schema(&schema);
        let location = format!("{}/", dir.display());
        self.context.register_parquet(name, &location, options).await?;
        Ok(())
    }

    /// Registers the tables of a Parquet archive written by the processor's archive stage
    /// (the layout of `tollgate_schemas::archive`) under their table names, each with
    /// its hive partition column `date` (`YYYY-MM-DD`, a string), which prunes files
    /// when a query filters on it. Tables with no files yet read as empty.
    pub async fn register_archive(&self, root: &Path) -> Result<(), QueryError> {
        self.register_archive_tables(&root.display().to_string()).await
    }

    /// [`ParquetStore::register_archive`] for an archive in an object store: `url` is
    /// where the archive is (`s3://bucket/prefix`) and `store` serves that bucket.
    pub async fn register_archive_in(&self, url: &url::Url, store: Arc<dyn ObjectStore>) -> Result<(), QueryError> {
        let mut bucket = url.clone();
        bucket.set_path("");
        self.context.register_object_store(&bucket, store);
        self.register_archive_tables(url.as_str().trim_end_matches('/')).await
    }

    async fn register_archive_tables(&self, root: &str) -> Result<(), QueryError> {
        use tollgate_schemas::archive;
        for table in archive::TABLES {
            let schema = match table {
                // With the Merkle log columns, null in files of an archive without a log.
                archive::PRICED_INTERACTIONS => tollgate_schemas::arrow::archived_priced_schema(),
                archive::POLICY_VIOLATIONS => PolicyViolation::arrow_schema(),
                archive::QUOTA_DECISIONS => QuotaDecision::arrow_schema(),
                archive::GOVERNANCE_CHANGES => GovernanceChange::arrow_schema(),
                archive::ACCESS_EVENTS => AccessEvent::arrow_schema(),
                // archive::UPSTREAM_HEALTH, the last of archive::TABLES.
                _ => UpstreamHealth::arrow_schema(),
            };
            let options = ParquetReadOptions::default()
                .schema(&schema)
                .table_partition_cols(vec![(archive::DATE_COLUMN.to_owned(), DataType::Utf8)]);
            let location = format!("{root}/{}/", table.name);
            self.context.register_parquet(table.name, &location, options).await?;
        }
        Ok(())
    }

    /// The DataFusion session.
    pub fn context(&self) -> &SessionContext {
        &self.context
    }

    /// Runs `sql` and returns the result batches.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        Ok(self.context.sql(sql).await?.collect().await?)
    }

    /// Runs `sql` (which must select the columns of `R`) and decodes the rows as `R`.
    pub async fn query_records<R: StoredRecord>(&self, sql: &str) -> Result<Vec<R>, QueryError> {
        let mut records = Vec::new();
        for batch in self.sql(sql).await? {
            records.extend(R::from_record_batch(&batch)?);
        }
        Ok(records)
    }
}

impl Default for ParquetStore {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use tollgate_schemas::PricedInteraction;
    use tollgate_schemas::archive::PRICED_INTERACTIONS;
    use tollgate_schemas::arrow::{StoredRecord, with_merkle_position};

    use super::*;

    #[tokio::test]
    async fn merkle_positions_read_back_and_files_without_them_read_as_null() {
        let dir = tempfile::tempdir().unwrap();
        let pricer =
            tollgate_processor::pricer::Pricer::new(tollgate_schemas::pricing::PriceCatalog::shipped().unwrap());
        let start = 1_795_737_600_000_000;
        let records: Vec<PricedInteraction> = tollgate_processor::testing::workload(50, 3, start)
            .into_iter()
            .map(|interaction| pricer.priced_interaction(interaction, start).0)
            .collect();
        let write = |path: String, batch: RecordBatch| {
            let bytes = tollgate_processor::sink::parquet::to_bytes(&[batch], Vec::new()).unwrap();
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        let logged = with_merkle_position(&PricedInteraction::to_record_batch(&records[..30]).unwrap(), 2, 7).unwrap();
        write(PRICED_INTERACTIONS.file_path("2026-11-27", 2, 0, 29), logged);
        write(
            PRICED_INTERACTIONS.file_path("2026-11-27", 2, 30, 49),
            PricedInteraction::to_record_batch(&records[30..]).unwrap(),
        );
        let store = ParquetStore::new();
        store.register_archive(dir.path()).await.unwrap();
        let read: Vec<PricedInteraction> =
            store.query_records("SELECT * FROM priced_interactions ORDER BY time, id").await.unwrap();
        assert_eq!(read.len(), 50);
        for (index, record) in records.iter().enumerate() {
            let position = store.merkle_position(record.interaction.id).await.unwrap();
            let want = (index < 30).then_some((2, 7 + index as u64));
            assert_eq!(position, want, "record {index}");
        }

        // Files the processor adds, and a file it rewrites in place, are read as they are
        // now, by the same session.
        let more: Vec<PricedInteraction> = tollgate_processor::testing::workload(5, 4, start)
            .into_iter()
            .map(|interaction| pricer.priced_interaction(interaction, start).0)
            .collect();
        write(PRICED_INTERACTIONS.file_path("2026-11-28", 5, 0, 4), PricedInteraction::to_record_batch(&more).unwrap());
        write(
            PRICED_INTERACTIONS.file_path("2026-11-27", 2, 0, 29),
            PricedInteraction::to_record_batch(&records[..29]).unwrap(),
        );
        let read: Vec<PricedInteraction> = store.query_records("SELECT * FROM priced_interactions").await.unwrap();
        assert_eq!(read.len(), 50 - 1 + 5);
        assert_eq!(store.merkle_position(records[0].interaction.id).await.unwrap(), None);
    }
}
