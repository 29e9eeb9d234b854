//! Writing record batches as Parquet files (zstd).

use std::fs::File;
use std::path::Path;

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::SinkError;

/// Writer settings shared by every Tollgate Parquet file, with `metadata` as the file's
/// key-value metadata.
pub fn writer_properties(metadata: Vec<KeyValue>) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(format!("tollgate {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata((!metadata.is_empty()).then_some(metadata))
        .build()
}

/// `batches` (all with the same schema) as the bytes of one Parquet file. The same
/// batches and metadata always give the same bytes.
pub fn to_bytes(batches: &[RecordBatch], metadata: Vec<KeyValue>) -> Result<Vec<u8>, SinkError> {
    let Some(first) = batches.first() else { return Ok(Vec::new()) };
    let mut writer = ArrowWriter::try_new(Vec::new(), first.schema(), Some(writer_properties(metadata)))?;
    for batch in batches {
        writer.write(batch)?;
    }
    Ok(writer.into_inner()?)
}

/// Writes `batches` (all with the same schema) to `path` as one Parquet file.
///
/// The file appears complete or not at all: it is written beside `path` under a temporary
/// name, synced, and renamed into place, so a reader never sees a half-written file and a
/// rewrite of the same path replaces it whole.
pub fn write_file(path: &Path, batches: &[RecordBatch]) -> Result<(), SinkError> {
    let Some(first) = batches.first() else { return Ok(()) };
    let io_error = |source| SinkError::Io { path: path.display().to_string(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error)?;
    }
    let temporary = path.with_extension("parquet.tmp");
    let file = File::create(&temporary).map_err(io_error)?;
    let mut writer = ArrowWriter::try_new(file, first.schema(), Some(writer_properties(Vec::new())))?;
    for batch in batches {
        writer.write(batch)?;
    }
    let file = writer.into_inner()?;
    file.sync_all().map_err(io_error)?;
    std::fs::rename(&temporary, path).map_err(io_error)?;
    Ok(())
}
