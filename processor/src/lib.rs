//! Tollgate's stream processors: they consume the interaction log and turn it into money
//! and governance, and they write the stored record.
//!
//! Today this crate holds the storage sinks every later stage writes through:
//! [`sink::parquet`] (Parquet files with zstd, readable by DataFusion, DuckDB and pyarrow)
//! and [`sink::clickhouse`] (versioned migrations, metering rows kept apart from captured
//! content, `ReplacingMergeTree` so a replayed event never shows twice).
//!
//! It does not serve queries (that is `tollgate-query-api`) and does not define event
//! layouts (that is `tollgate-schemas`).

pub mod sink;
