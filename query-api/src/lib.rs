//! Tollgate's read side: the compliance query API over the stored record.
//!
//! Today this crate holds the Parquet reader every report is built on: [`parquet`]
//! registers a directory of Tollgate Parquet files with DataFusion and turns query results
//! back into events through the Arrow layouts of `tollgate-schemas`.
//!
//! This crate never writes: it has no producer, no sink and no migration. Storage is the
//! processor's job.

pub mod parquet;
