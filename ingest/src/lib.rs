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
//! reservations), [`metrics`] (Prometheus), and [`app`] (the router). [`simulator`] is a provider
//! that speaks the OpenAI and Anthropic wire formats, for tests and demos.

pub mod app;
pub mod breaker;
pub mod config;
pub mod draft;
pub mod error;
pub mod governance;
pub mod keys;
pub mod mcp;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod quota;
pub mod recorder;
pub mod request;
pub mod simulator;
pub mod sse;
pub mod stream;
pub mod upstream;
pub mod usage;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::{GatewayState, app};

/// How long shutdown waits for the recorder to settle events still in flight.
const FLUSH_ON_SHUTDOWN: Duration = Duration::from_secs(10);

/// Serves the gateway on `listener` until `shutdown` resolves, then stops taking
/// connections, lets requests in progress (streams included) finish, and flushes the
/// recorder.
pub async fn run(
    listener: TcpListener,
    state: Arc<GatewayState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Without TCP_NODELAY, a response written in several pieces (an event stream, an MCP
    // answer) waits on the client's delayed ACK: about 40 ms per request.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    });
    // Off the async workers, before the first request that counts tokens needs it.
    tokio::task::spawn_blocking(usage::warm_up);
    // Every breaker starts closed: this ends any outage window an earlier run of this
    // instance left open (it stopped during an outage).
    for upstream in state.routes.load().upstreams.iter() {
        let reset = proxy::health_event(&state, upstream, tollgate_schemas::BreakerTransition::Reset, 0, None);
        state.recorder.record_health(&reset);
    }
    let served = axum::serve(listener, app(Arc::clone(&state))).with_graceful_shutdown(shutdown).await;
    if !state.recorder.close(FLUSH_ON_SHUTDOWN).await {
        tracing::error!("some interactions were not acknowledged before shutdown");
    }
    served
}
