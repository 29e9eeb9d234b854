//! The gateway (`tollgate gateway`): the single checkpoint for model and tool traffic.
//!
//! Its job is to authenticate virtual keys, apply request-time policy and the live quota
//! decisions it follows on the decisions topic, route to providers and MCP servers, and
//! publish one `Interaction` per call through `tollgate-eventlog` without making the
//! request wait on storage.
//!
//! It does not price, aggregate or store anything: spend, budgets and reports are the
//! processor's and the query API's, built from the events this crate publishes.
//!
//! So far this crate holds the request side's building blocks: [`config`] (the validated
//! configuration file), [`error`] (provider-style
//! error bodies, so the official SDKs raise their own typed errors), [`keys`] (virtual
//! keys stored as SHA-256 hashes, with model allow-lists) and [`request`]
//! (parsing and validating provider request bodies while passing unknown fields through),
//! plus [`simulator`], a provider that speaks the OpenAI and Anthropic wire formats for
//! tests and demos. [`app`] is the HTTP surface so far: `/healthz`, `GET /v1/models`
//! (the models the caller's key may use) and provider-style answers to unknown routes and
//! wrong methods. Proxying, routing and recording are not written yet.

pub mod app;
pub mod config;
pub mod error;
pub mod keys;
pub mod request;
pub mod simulator;
