//! Serving: `server.threads` threads, each with its own event loop.
//!
//! Every serving thread runs a current-thread Tokio runtime that drives everything its
//! connections need: the requests, the upstream connections that
//! [`crate::upstream::UpstreamClient`] takes from that thread's own pool, and the tasks
//! that follow each request's event to its acknowledgement. So a request never hops
//! between threads. On a work-stealing runtime it does whenever a second worker is idle,
//! because the parked worker owns the I/O driver and runs the tasks it wakes; on two cores
//! that hop cost more added latency than the second core gave back in throughput (see
//! BENCHMARKS.md).
//!
//! The runtime that calls [`run`] accepts connections and hands them to the serving
//! threads in turn, so they share the connections evenly, however they arrive. It also
//! keeps the background work: following governance and quota decisions, MCP sessions,
//! draining the spool.
//!
//! Shutdown: accepting stops, the threads finish the requests in progress, the recorder
//! is flushed while their runtimes still drive the acknowledgement tasks, and then they
//! end. If the future of [`run`] is dropped instead, the threads stop the same way, without
//! the flush.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::app::{GatewayState, app};
use crate::metrics::ThreadLabels;

/// How long shutdown waits for the recorder to settle events still in flight.
const FLUSH_ON_SHUTDOWN: Duration = Duration::from_secs(10);

thread_local! {
    static THREAD_INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Which serving thread is calling: `0..server.threads` on a serving thread, 0 elsewhere.
pub fn thread_index() -> usize {
    THREAD_INDEX.with(Cell::get)
}

/// A connection handed to a serving thread.
type Handoff = (std::net::TcpStream, SocketAddr);

/// Serves the gateway on `listener` with `state.config.threads` threads until `shutdown`
/// resolves, then stops taking connections, lets requests in progress (streams included)
/// finish, and flushes the recorder. Returns the first error of a serving thread; one that
/// fails before `shutdown` stops the others.
pub async fn run(
    listener: TcpListener,
    state: Arc<GatewayState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Off the async workers, before the first request that counts tokens needs it.
    tokio::task::spawn_blocking(crate::usage::warm_up);
    // Every breaker starts closed: this ends any outage window an earlier run of this
    // instance left open (it stopped during an outage).
    for upstream in state.routes.load().upstreams.iter() {
        let reset = crate::proxy::health_event(&state, upstream, tollgate_schemas::BreakerTransition::Reset, 0, None);
        state.recorder.record_health(&reset);
    }
    // Built here, so the MCP supervisors it starts run on this runtime.
    let router = app(Arc::clone(&state));
    let (stop, stopping) = watch::channel(false);
    let (release, released) = watch::channel(false);
    let (served, mut finished) = mpsc::unbounded_channel();
    let count = state.config.threads.max(1);
    let mut threads = Vec::with_capacity(count);
    let mut handoffs = Vec::with_capacity(count);
    for index in 0..count {
        let (handoff, connections) = mpsc::unbounded_channel::<Handoff>();
        let router = router.clone();
        let stopping = stopping.clone();
        let mut released = released.clone();
        let served = served.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name(format!("tollgate-serve-{index}")).spawn(move || {
            THREAD_INDEX.with(|cell| cell.set(index));
            runtime.block_on(async move {
                let _ = served.send(serve_thread(connections, router, stopping).await);
                // So `finished` ends once every thread has reported or died, even while
                // the others wait below.
                drop(served);
                // Until the recorder is flushed: this runtime drives the tasks that follow
                // the acknowledgements of the events its requests recorded.
                let _ = released.wait_for(|released| *released).await;
            });
        })?;
        threads.push(thread);
        let accepted = state.metrics.connections.get_or_create(&ThreadLabels { thread: index.to_string() }).clone();
        handoffs.push((handoff, accepted));
    }
    drop(served);

    let mut results = Vec::with_capacity(count);
    let mut next = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(early) = finished.recv() => {
                tracing::error!(?early, "a serving thread stopped; stopping the gateway");
                results.push(early);
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, address)) => {
                    // Without TCP_NODELAY, a response written in several pieces (an event
                    // stream, an MCP answer) waits on the client's delayed ACK: about 40 ms
                    // per request.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "TCP_NODELAY not set");
                    }
                    let mut connection = match stream.into_std() {
                        Ok(stream) => Some((stream, address)),
                        Err(error) => {
                            tracing::warn!(%error, "an accepted connection could not be handed over");
                            None
                        }
                    };
                    // To the next thread in turn; past one that is gone (it panicked), to
                    // the one after.
                    for _ in 0..count {
                        let Some(handoff) = connection.take() else { break };
                        let (thread, accepted) = &handoffs[next % count];
                        next += 1;
                        match thread.send(handoff) {
                            Ok(()) => {
                                accepted.inc();
                            }
                            Err(mpsc::error::SendError(returned)) => connection = Some(returned),
                        }
                    }
                    if connection.is_some() {
                        tracing::error!("no serving thread is left; stopping the gateway");
                        break;
                    }
                }
                // The connection went away before it was accepted.
                Err(error) if is_connection_error(&error) => {}
                // Out of file descriptors or memory: wait for some to be released rather
                // than spin.
                Err(error) => {
                    tracing::error!(%error, "accepting a connection failed; retrying in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop.send(true);
    drop(handoffs);
    while results.len() < count {
        let Some(result) = finished.recv().await else { break };
        results.push(result);
    }
    if !state.recorder.close(FLUSH_ON_SHUTDOWN).await {
        tracing::error!("some interactions were not acknowledged before shutdown");
    }
    let _ = release.send(true);
    let _ = tokio::task::spawn_blocking(move || threads.into_iter().map(std::thread::JoinHandle::join).count()).await;
    if results.len() < count {
        return Err(std::io::Error::other("a serving thread ended without finishing its requests"));
    }
    results.into_iter().collect()
}

/// One serving thread: serves the connections handed to it until `stopping` says stop (or
/// its sender is gone), then finishes the requests in progress.
async fn serve_thread(
    connections: mpsc::UnboundedReceiver<Handoff>,
    router: Router,
    mut stopping: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(Handoffs { connections }, router)
        .with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        })
        .await
}

/// The connections handed to one serving thread, as a listener.
struct Handoffs {
    connections: mpsc::UnboundedReceiver<Handoff>,
}

impl axum::serve::Listener for Handoffs {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Some((stream, address)) = self.connections.recv().await else {
                // No more connections: the gateway is stopping, which ends the serving.
                return std::future::pending().await;
            };
            match TcpStream::from_std(stream) {
                Ok(stream) => return (stream, address),
                Err(error) => tracing::warn!(%error, %address, "a connection could not be served; closed"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "connections are handed over, not accepted here"))
    }
}

fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
