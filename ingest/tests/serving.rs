//! Serving on several threads (`server.threads`): connections are shared evenly between
//! the threads, every request on every connection is answered and recorded once, and a
//! graceful shutdown lets a request in progress finish and flushes every thread's events
//! before `run` returns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use support::{TEAM_KEY, TestGateway, http};
use tollgate_schemas::OutcomeStatus;

const THREADS: usize = 3;
const CONNECTIONS: usize = 12;
const REQUESTS_PER_CONNECTION: usize = 10;

/// `tollgate_gateway_connections_accepted_total` per serving thread, from `/metrics`.
async fn connections_by_thread(gateway: &TestGateway) -> Vec<u64> {
    let text = http().get(gateway.url("/metrics")).send().await.unwrap().text().await.unwrap();
    (0..THREADS)
        .map(|thread| {
            let prefix = format!("tollgate_gateway_connections_accepted_total{{thread=\"{thread}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .map_or(0, |value| value.trim().parse().unwrap_or_else(|_| panic!("not a count: {value}")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_threads_share_connections_record_every_request_and_drain_on_shutdown() {
    let mut gateway = TestGateway::start_configured("", None, None, |config| config.threads = THREADS).await;
    let url = gateway.url("/v1/chat/completions");
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]});

    let before = connections_by_thread(&gateway).await;
    // Each client has a connection of its own, and they all start at once.
    let answered: usize = futures::future::join_all((0..CONNECTIONS).map(|_| {
        let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
        let (url, body) = (url.clone(), body.clone());
        async move {
            for _ in 0..REQUESTS_PER_CONNECTION {
                let response = client.post(&url).bearer_auth(TEAM_KEY).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 200, "{:?}", response.text().await);
            }
            REQUESTS_PER_CONNECTION
        }
    }))
    .await
    .into_iter()
    .sum();
    assert_eq!(answered, CONNECTIONS * REQUESTS_PER_CONNECTION);

    // Connections are handed out in turn. The clients opened at least one each (a client
    // may open another when its next request starts before the last one's connection is
    // back in its pool). This scrape's own connection is counted once it has been handed
    // over, which may be just after the thread that serves it has read the counters.
    let by_thread = connections_by_thread(&gateway).await;
    let new: u64 = by_thread.iter().zip(&before).map(|(after, before)| after - before).sum();
    assert!(new >= CONNECTIONS as u64, "{before:?} then {by_thread:?}");
    let (fewest, most) = (by_thread.iter().min().unwrap(), by_thread.iter().max().unwrap());
    assert!(most - fewest <= 1, "connections are shared evenly between the threads: {by_thread:?}");

    // A request still waiting on its upstream when shutdown begins is answered, and its
    // event is flushed before `run` returns.
    gateway.primary.set_delay(Duration::from_millis(800));
    let upstream_before = gateway.primary.requests();
    let slow = tokio::spawn({
        let (url, body) = (url.clone(), body.clone());
        async move { http().post(&url).bearer_auth(TEAM_KEY).json(&body).send().await.unwrap() }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gateway.primary.requests() == upstream_before {
        assert!(tokio::time::Instant::now() < deadline, "the slow request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.stop().await;
    // Cut off, the request would have failed in the client.
    assert_eq!(slow.await.unwrap().status(), 200, "shutdown waited for the request in progress");
    let total = CONNECTIONS * REQUESTS_PER_CONNECTION + 1;
    let stats = gateway.state.recorder.stats();
    assert_eq!(stats.acknowledged, total as u64, "every event was acknowledged by the time run returned: {stats:?}");

    let events = gateway.interactions(total).await;
    assert_eq!(events.len(), total, "one event per request");
    assert_eq!(events.iter().map(|event| event.id).collect::<HashSet<_>>().len(), total, "none twice");
    assert!(events.iter().all(|event| event.outcome.status == OutcomeStatus::Ok), "all succeeded");
}
