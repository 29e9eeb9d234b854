//! Storage sinks: where consumed events are written for the query layer.

pub mod clickhouse;
pub mod parquet;

/// Why a sink could not store a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error(transparent)]
    RecordBatch(#[from] tollgate_schemas::arrow::RecordBatchError),
    #[error("i/o on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("stored row is not a valid event: {0}")]
    InvalidRow(String),
    #[error(transparent)]
    Archive(#[from] tollgate_archive::ArchiveError),
}
