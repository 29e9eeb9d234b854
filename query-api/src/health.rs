//! Provider health timeline: when each upstream's circuit breaker was open, and where the
//! traffic that would have gone to it went meanwhile.
//!
//! Gateways publish an [`UpstreamHealth`] event when a breaker opens (closed traffic
//! failed `consecutive_failures` times in a row) and when it closes (a probe succeeded).
//! Every gateway instance has its own breakers, so an outage window is one instance's
//! `opened` up to its next `closed` for that upstream (`closed_by: probe`). A gateway
//! publishes `reset` for every upstream when it starts, since its breakers start closed:
//! that ends a window an earlier run left open (`closed_by: restart`), as does a second
//! `opened` with neither between. A window with no end yet is `ongoing` and ends, for
//! this report, at the end of the range (or now, if sooner).
//!
//! For each window the report counts the model calls of that instance whose route's first
//! target is the upstream (`preferred_upstream`) and that another upstream served or
//! that failed: the traffic the outage moved. Interactions recorded before gateways
//! recorded `preferred_upstream` are not counted.
//!
//! Both backends read the same events and run the same counts, so their answers are
//! equal.

use std::collections::BTreeMap;

use serde::Serialize;
use tollgate_schemas::{BreakerTransition, UpstreamHealth};

use crate::clickhouse::{ClickHouseQueries, Value};
use crate::params::{ApiError, TimeRange};
use crate::parquet::ParquetStore;
use crate::performance::{json_int, json_text};
use crate::store::{Bind, ListQuery, int, rfc3339, string};

/// The most breaker events a report reads, and the most windows it returns (the latest).
pub const MAX_EVENTS: usize = 20_000;
pub const MAX_WINDOWS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthQuery {
    pub range: TimeRange,
    /// One upstream only.
    pub upstream: Option<String>,
    /// Now, in microseconds: where an ongoing window ends when the range ends later.
    pub now: i64,
}

/// The health report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// One timeline per upstream with a window in the range, by name.
    pub upstreams: Vec<UpstreamTimeline>,
    /// Windows were left out (only the latest [`MAX_WINDOWS`] are given).
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamTimeline {
    pub upstream: String,
    pub provider: String,
    /// Seconds within the range when at least one gateway instance had the breaker open.
    pub open_seconds: f64,
    /// Oldest first.
    pub windows: Vec<OutageWindow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutageWindow {
    pub gateway_instance: String,
    pub opened_at: String,
    /// Absent while the window is ongoing.
    pub closed_at: Option<String>,
    /// `probe` (a probe succeeded) or `restart` (the gateway instance started again);
    /// absent while the window is ongoing.
    pub closed_by: Option<&'static str>,
    pub ongoing: bool,
    /// Until `closed_at`, or until the range's end (or now) while ongoing.
    pub duration_seconds: f64,
    /// Failed attempts in a row that opened the breaker.
    pub consecutive_failures: u32,
    /// The last of those failures (`status 503`, `timeout`, `unreachable: ...`).
    pub reason: Option<String>,
    pub moved: MovedTraffic,
}

/// Model calls that preferred the upstream during a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MovedTraffic {
    /// Every such call that the upstream itself did not serve.
    pub requests: i64,
    /// Of those, answered `ok` by another upstream.
    pub served_elsewhere: i64,
    /// Of those, with any other outcome.
    pub failed: i64,
    /// Who served them: upstream (absent for calls no upstream served) and count, most first.
    pub served_by: Vec<ServedBy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServedBy {
    pub upstream: Option<String>,
    pub requests: i64,
    pub ok: i64,
}

const PROBE: &str = "probe";
const RESTART: &str = "restart";

/// A window before its traffic is counted. Times in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    pub gateway_instance: String,
    pub upstream: String,
    pub provider: String,
    pub opened: i64,
    pub closed: Option<i64>,
    pub closed_by: Option<&'static str>,
    pub consecutive_failures: u32,
    pub reason: Option<String>,
}

impl Window {
    fn end(&self, query: &HealthQuery) -> i64 {
        self.closed.unwrap_or_else(|| query.range.to.min(query.now.max(self.opened)))
    }
}

/// Pairs each instance's `opened` with its next `closed` per upstream (`events` in time
/// order) and keeps the windows that overlap the range: the latest [`MAX_WINDOWS`],
/// oldest first, and whether any were left out.
pub(crate) fn windows(events: &[UpstreamHealth], query: &HealthQuery) -> (Vec<Window>, bool) {
    let mut open: BTreeMap<(&str, &str), Window> = BTreeMap::new();
    let mut done = Vec::new();
    for event in events {
        let key = (event.gateway_instance.as_str(), event.upstream.as_str());
        match event.transition {
            BreakerTransition::Opened => {
                if let Some(mut earlier) = open.remove(&key) {
                    earlier.closed = Some(event.time_unix_micros);
                    earlier.closed_by = Some(RESTART);
                    done.push(earlier);
                }
                open.insert(
                    key,
                    Window {
                        gateway_instance: event.gateway_instance.clone(),
                        upstream: event.upstream.clone(),
                        provider: event.provider.clone(),
                        opened: event.time_unix_micros,
                        closed: None,
                        closed_by: None,
                        consecutive_failures: event.consecutive_failures,
                        reason: event.reason.clone(),
                    },
                );
            }
            BreakerTransition::Closed | BreakerTransition::Reset => {
                if let Some(mut window) = open.remove(&key) {
                    window.closed = Some(event.time_unix_micros);
                    window.closed_by =
                        Some(if event.transition == BreakerTransition::Closed { PROBE } else { RESTART });
                    done.push(window);
                }
            }
        }
    }
    done.extend(open.into_values());
    done.retain(|window| window.opened < query.range.to && window.end(query) > query.range.from);
    done.sort_by(|a, b| {
        (a.opened, &a.upstream, &a.gateway_instance).cmp(&(b.opened, &b.upstream, &b.gateway_instance))
    });
    let truncated = done.len() > MAX_WINDOWS;
    if truncated {
        done.drain(..done.len() - MAX_WINDOWS);
    }
    (done, truncated)
}

/// Seconds of `range` covered by at least one of `spans` (`[start, end)` in microseconds).
fn covered_seconds(mut spans: Vec<(i64, i64)>, range: TimeRange) -> f64 {
    spans.sort_unstable();
    let mut total = 0i64;
    let mut current: Option<(i64, i64)> = None;
    for (start, end) in spans {
        let (start, end) = (start.max(range.from), end.min(range.to));
        if end <= start {
            continue;
        }
        current = match current {
            Some((from, to)) if start <= to => Some((from, to.max(end))),
            Some((from, to)) => {
                total += to - from;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((from, to)) = current {
        total += to - from;
    }
    total as f64 / 1e6
}

/// The report from counted windows.
fn report(counted: Vec<(Window, MovedTraffic)>, query: &HealthQuery, truncated: bool) -> HealthReport {
    let mut timelines: BTreeMap<String, UpstreamTimeline> = BTreeMap::new();
    let mut spans: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (window, moved) in counted {
        let end = window.end(query);
        spans.entry(window.upstream.clone()).or_default().push((window.opened, end));
        let timeline = timelines.entry(window.upstream.clone()).or_insert_with(|| UpstreamTimeline {
            upstream: window.upstream.clone(),
            provider: window.provider.clone(),
            open_seconds: 0.0,
            windows: Vec::new(),
        });
        timeline.windows.push(OutageWindow {
            gateway_instance: window.gateway_instance,
            opened_at: rfc3339(window.opened),
            closed_at: window.closed.map(rfc3339),
            closed_by: window.closed_by,
            ongoing: window.closed.is_none(),
            duration_seconds: (end - window.opened) as f64 / 1e6,
            consecutive_failures: window.consecutive_failures,
            reason: window.reason,
            moved,
        });
    }
    for (upstream, spans) in spans {
        if let Some(timeline) = timelines.get_mut(&upstream) {
            timeline.open_seconds = covered_seconds(spans, query.range);
        }
    }
    HealthReport { upstreams: timelines.into_values().collect(), truncated }
}

/// Moved traffic from `(served upstream, outcome, count)` rows.
fn moved(rows: Vec<(Option<String>, String, i64)>) -> MovedTraffic {
    let mut served: BTreeMap<Option<String>, ServedBy> = BTreeMap::new();
    let mut traffic = MovedTraffic::default();
    for (upstream, outcome, count) in rows {
        let ok = if outcome == "ok" { count } else { 0 };
        traffic.requests += count;
        traffic.served_elsewhere += ok;
        traffic.failed += count - ok;
        let line = served.entry(upstream.clone()).or_insert(ServedBy { upstream, requests: 0, ok: 0 });
        line.requests += count;
        line.ok += ok;
    }
    traffic.served_by = served.into_values().collect();
    traffic.served_by.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.upstream.cmp(&b.upstream)));
    traffic
}

/// The breaker events up to the range's end, oldest first.
fn event_query(query: &HealthQuery) -> ListQuery {
    ListQuery {
        range: Some(TimeRange { from: 0, to: query.range.to }),
        equals: query.upstream.iter().map(|upstream| ("upstream", upstream.clone())).collect(),
        after: None,
        limit: MAX_EVENTS,
    }
}

/// Model calls of gateway `instance` whose route prefers `preferred` and that `other`
/// (the same upstream) did not serve; the arguments are placeholders.
fn moved_condition(instance: &str, preferred: &str, other: &str) -> String {
    format!(
        "kind = 'model_call' AND gateway_instance = {instance} AND preferred_upstream = {preferred} \
         AND (upstream IS NULL OR upstream <> {other})"
    )
}

impl ParquetStore {
    /// See [`crate::health`].
    pub async fn health(&self, query: &HealthQuery) -> Result<HealthReport, ApiError> {
        let events = self.list::<UpstreamHealth>(&event_query(query)).await?.items;
        let (windows, truncated) = windows(&events, query);
        let mut counted = Vec::with_capacity(windows.len());
        for window in windows {
            let mut bind = Bind::default();
            let range = bind.range(TimeRange { from: window.opened, to: window.end(query) });
            let instance = bind.add(datafusion::scalar::ScalarValue::Utf8(Some(window.gateway_instance.clone())));
            let upstream = bind.add(datafusion::scalar::ScalarValue::Utf8(Some(window.upstream.clone())));
            let condition = moved_condition(&instance, &upstream, &upstream);
            // One row per id: the archive keeps every published copy.
            let sql = format!(
                "SELECT upstream, outcome, count(DISTINCT id) AS requests FROM priced_interactions \
                 WHERE {range} AND {condition} GROUP BY upstream, outcome"
            );
            let mut rows = Vec::new();
            for batch in self.bound(&sql, bind).await? {
                for row in 0..batch.num_rows() {
                    rows.push((
                        string(&batch, "upstream", row),
                        string(&batch, "outcome", row).unwrap_or_default(),
                        int(&batch, "requests", row),
                    ));
                }
            }
            counted.push((window, moved(rows)));
        }
        Ok(report(counted, query, truncated))
    }
}

impl ClickHouseQueries {
    /// See [`crate::health`].
    pub async fn health(&self, query: &HealthQuery) -> Result<HealthReport, ApiError> {
        let events = self.list::<UpstreamHealth>(&event_query(query)).await?.items;
        let (windows, truncated) = windows(&events, query);
        let mut counted = Vec::with_capacity(windows.len());
        for window in windows {
            let sql = format!(
                "SELECT upstream, outcome, uniqExact(id) AS requests FROM priced_interactions \
                 WHERE time >= ? AND time < ? AND {} GROUP BY upstream, outcome",
                moved_condition("?", "?", "?")
            );
            let bind = vec![
                Value::Int(window.opened),
                Value::Int(window.end(query)),
                Value::Text(window.gateway_instance.clone()),
                Value::Text(window.upstream.clone()),
                Value::Text(window.upstream.clone()),
            ];
            let rows = self
                .rows(&sql, bind)
                .await?
                .into_iter()
                .map(|row| {
                    (
                        json_text(&row, "upstream"),
                        json_text(&row, "outcome").unwrap_or_default(),
                        json_int(&row, "requests"),
                    )
                })
                .collect();
            counted.push((window, moved(rows)));
        }
        Ok(report(counted, query, truncated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time: i64, instance: &str, upstream: &str, transition: BreakerTransition) -> UpstreamHealth {
        UpstreamHealth {
            schema_version: tollgate_schemas::SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            time_unix_micros: time,
            gateway_instance: instance.to_owned(),
            upstream: upstream.to_owned(),
            provider: "openai".to_owned(),
            transition,
            consecutive_failures: 3,
            cool_down_millis: 1_000,
            reason: Some("status 503".to_owned()),
        }
    }

    const S: i64 = 1_000_000;

    #[test]
    fn windows_pair_each_instance_opening_with_its_next_closing() {
        use BreakerTransition::{Closed, Opened, Reset};
        let events = [
            event(10 * S, "a", "primary", Opened),
            event(12 * S, "b", "primary", Opened),
            event(20 * S, "a", "primary", Closed),
            event(25 * S, "a", "primary", Closed), // no window open: ignored
            event(30 * S, "b", "primary", Opened), // b restarted mid-outage
            event(40 * S, "a", "backup", Opened),
            event(44 * S, "c", "primary", Opened),
            event(46 * S, "c", "primary", Reset), // c started again
            event(47 * S, "c", "primary", Reset), // nothing open: ignored
        ];
        let query = HealthQuery { range: TimeRange { from: 0, to: 100 * S }, upstream: None, now: 50 * S };
        let (found, truncated) = windows(&events, &query);
        assert!(!truncated);
        let spans: Vec<_> = found
            .iter()
            .map(|w| (w.gateway_instance.as_str(), w.upstream.as_str(), w.opened / S, w.end(&query) / S))
            .collect();
        assert_eq!(
            spans,
            [
                ("a", "primary", 10, 20),
                ("b", "primary", 12, 30),
                ("b", "primary", 30, 50),
                ("a", "backup", 40, 50),
                ("c", "primary", 44, 46)
            ]
        );
        let ends: Vec<_> = found.iter().map(|w| w.closed_by).collect();
        assert_eq!(ends, [Some("probe"), Some("restart"), None, None, Some("restart")]);
        assert!(found[3].closed.is_none(), "still open: ends now");

        let late = HealthQuery { range: TimeRange { from: 21 * S, to: 100 * S }, upstream: None, now: 50 * S };
        assert_eq!(windows(&events, &late).0.len(), 4, "a window that ended before the range is left out");

        let counted = found.into_iter().map(|window| (window, MovedTraffic::default())).collect();
        let report = report(counted, &query, false);
        assert_eq!(report.upstreams.len(), 2);
        assert_eq!(report.upstreams[1].upstream, "primary");
        assert!((report.upstreams[1].open_seconds - 40.0).abs() < 1e-9, "10..50 once, though two instances overlap");
        assert!(report.upstreams[0].windows[0].ongoing);
    }

    #[test]
    fn moved_traffic_adds_up_by_serving_upstream() {
        let traffic = moved(vec![
            (Some("backup".to_owned()), "ok".to_owned(), 7),
            (Some("backup".to_owned()), "upstream_error".to_owned(), 1),
            (None, "upstream_unreachable".to_owned(), 2),
        ]);
        assert_eq!((traffic.requests, traffic.served_elsewhere, traffic.failed), (10, 7, 3));
        assert_eq!(traffic.served_by[0], ServedBy { upstream: Some("backup".to_owned()), requests: 8, ok: 7 });
    }
}
