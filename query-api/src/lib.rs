//! Tollgate's query side: the compliance API over the stored record, the governance
//! administration, and the dashboard.
//!
//! [`server`] is the HTTP API (`tollgate query-api`): cost reports for finance (JSON and
//! CSV, grouped and bucketed in any time zone), latency and reliability reports
//! ([`performance`]), the provider health timeline ([`health`]), and interaction search and detail for auditors, behind API tokens
//! with roles ([`auth`]); every parameter is checked first ([`params`]) and reaches SQL
//! only as a bound value ([`store`]). [`parquet`] registers the processor's Parquet
//! archive with DataFusion and turns rows back into events through the Arrow layouts of
//! `tollgate-schemas`. [`clickhouse`] answers the same questions from the ClickHouse
//! tables, identically.
//!
//! Every authenticated request is recorded as an access event on the event log before
//! its answer leaves ([`access`]); auditors read that log back through the API.
//!
//! Admins change what Tollgate enforces through it: API tokens ([`admin`]), and virtual
//! keys, team policies, budgets, providers and price catalogs ([`manage`]). Each change is
//! a governance event on the log, which every service follows. [`dashboard`] serves the
//! browser dashboard, which calls the same API.
//!
//! This crate never writes to the stores: it has no sink and no migration; access events
//! and governance changes on the log are its only output. Storage is the processor's job.

pub mod access;
pub mod admin;
pub mod auth;
pub mod clickhouse;
pub mod dashboard;
pub mod export;
pub mod focus;
pub mod health;
pub mod manage;
pub mod params;
pub mod parquet;
pub mod performance;
pub mod server;
pub mod store;
