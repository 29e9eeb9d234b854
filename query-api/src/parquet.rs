//! DataFusion over a directory of Parquet files written by the processor's Parquet sink.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use object_store::ObjectStore;
use tollgate_schemas::arrow::{RecordBatchError, StoredRecord};
use tollgate_schemas::{GovernanceChange, PolicyViolation, PricedInteraction, QuotaDecision};

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
    pub fn new() -> Self {
        let config = SessionConfig::new().set_bool("datafusion.execution.parquet.schema_force_view_types", false);
        ParquetStore { context: SessionContext::new_with_config(config) }
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
                archive::PRICED_INTERACTIONS => PricedInteraction::arrow_schema(),
                archive::POLICY_VIOLATIONS => PolicyViolation::arrow_schema(),
                archive::QUOTA_DECISIONS => QuotaDecision::arrow_schema(),
                _ => GovernanceChange::arrow_schema(),
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
