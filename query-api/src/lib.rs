//! Tollgate's read side: the compliance query API over the stored record.
//!
//! [`server`] is the HTTP API (`tollgate query-api`): cost reports for finance (JSON and
//! CSV, grouped and bucketed in any time zone) and interaction search and detail for
//! auditors, behind API tokens with roles ([`auth`]); every parameter is checked first
//! ([`params`]) and reaches SQL only as a bound value ([`store`]). [`parquet`] registers
//! the processor's Parquet archive with DataFusion and turns rows back into events
//! through the Arrow layouts of `tollgate-schemas`. [`clickhouse`] answers the cost report
//! from the ClickHouse tables, identically.
//!
//! This crate never writes to the stores: it has no producer, no sink and no migration.
//! Storage is the processor's job.

pub mod auth;
pub mod clickhouse;
pub mod params;
pub mod parquet;
pub mod server;
pub mod store;
