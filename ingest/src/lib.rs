//! The gateway (`tollgate gateway`): the single checkpoint for model and tool traffic.
//!
//! It authenticates virtual keys, applies request-time policy, routes each call to a
//! provider with retries, fallbacks and circuit breakers (whose openings and closings it
//! records as `UpstreamHealth` events), and publishes one `Interaction` per call through `tollgate-eventlog` without making the request wait on storage (a
//! local durable spool takes over while the log is unreachable).
//!
//! It does not price, aggregate or store anything: spend, budgets and reports are the
//! processor's and the query API's, built from the events this crate publishes.
//!
//! The parts: [`config`] (the validated configuration file), [`governance`] (keys, team
//! policies and providers followed from the governance topic), [`keys`] (virtual keys stored
//! as SHA-256 hashes), [`policy`] (rate limits and the prompt PII guard), [`request`] (provider request bodies parsed with unknown fields
//! kept), [`error`] (provider-style error bodies, so the official SDKs raise their own typed
//! errors), [`proxy`] (the provider routes: checks, routing, forwarding), [`upstream`] and
//! [`breaker`] (pooled clients and circuit breakers per upstream), [`stream`] and [`sse`]
//! (metering event streams without changing them), [`usage`] (provider usage and the
//! tokenizer fallback), [`draft`] (one call's facts, recorded once), [`recorder`]
//! (publishing, spooling, draining), [`quota`] (live budget decisions with in-flight
//! reservations), [`metrics`] (Prometheus), [`app`] (the router), and [`serve`] (one
//! event loop per serving thread). [`simulator`] is a provider that speaks the OpenAI and
//! Anthropic wire formats, for tests and demos.

pub mod app;
pub mod breaker;
pub mod config;
pub mod draft;
pub mod error;
pub mod governance;
pub mod keys;
pub mod mcp;
pub mod mcp_transport;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod quota;
pub mod recorder;
pub mod request;
pub mod serve;
pub mod simulator;
pub mod sse;
pub mod stream;
pub mod upstream;
pub mod usage;

pub use serve::run;
