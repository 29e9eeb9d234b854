//! A per-upstream circuit breaker.
//!
//! After `failure_threshold` consecutive failed attempts the breaker opens and the gateway
//! stops sending to that upstream for `cool_down`. When the cool-down has passed, one
//! request at a time is let through as a probe (half-open); its success closes the breaker,
//! its failure opens it for another cool-down. Only failures that say the upstream is
//! unhealthy count (connect errors, timeouts, 429, 5xx); a 400 for a bad prompt does not.
//!
//! The breaker only counts and answers; it never sleeps. Transitions are returned to the
//! caller so they can be logged and recorded.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a breaker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// Traffic is refused until the cool-down ends.
    Open,
    /// The cool-down is over; one probe request is in flight.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
}

/// A circuit breaker for one upstream. Cheap to consult on every request.
#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    cool_down: Duration,
    inner: Mutex<Inner>,
}

/// A change of state that [`CircuitBreaker::record`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerChange {
    pub from: BreakerState,
    pub to: BreakerState,
    /// Consecutive failed attempts, the one recorded included.
    pub consecutive_failures: u32,
}

impl BreakerChange {
    /// The breaker opened after closed traffic failed: the start of an outage window
    /// (a failed probe re-opening it continues the window).
    pub fn opened(&self) -> bool {
        self.from == BreakerState::Closed && self.to == BreakerState::Open
    }

    /// A probe succeeded: the end of the outage window.
    pub fn closed(&self) -> bool {
        self.to == BreakerState::Closed
    }
}

/// Permission to send one attempt. Report its result with [`CircuitBreaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    probe: bool,
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, cool_down: Duration) -> Self {
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            cool_down,
            inner: Mutex::new(Inner { state: BreakerState::Closed, consecutive_failures: 0, opened_at: None }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// How long the breaker stays open before it lets a probe through.
    pub fn cool_down(&self) -> Duration {
        self.cool_down
    }

    /// Whether an attempt may be sent now. `None` while the breaker is open, or while a
    /// half-open probe is already in flight.
    pub fn admit(&self, now: Instant) -> Option<Admission> {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Some(Admission { probe: false }),
            BreakerState::HalfOpen => None,
            BreakerState::Open => {
                let cooled = inner.opened_at.is_none_or(|opened| now.duration_since(opened) >= self.cool_down);
                if cooled {
                    inner.state = BreakerState::HalfOpen;
                    Some(Admission { probe: true })
                } else {
                    None
                }
            }
        }
    }

    /// Records the result of an admitted attempt. Returns the change when the state changed.
    pub fn record(&self, admission: Admission, healthy: bool, now: Instant) -> Option<BreakerChange> {
        let mut inner = self.lock();
        let before = inner.state;
        if healthy {
            inner.consecutive_failures = 0;
            if admission.probe || inner.state == BreakerState::HalfOpen {
                inner.state = BreakerState::Closed;
                inner.opened_at = None;
            }
        } else {
            inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
            let trips = admission.probe
                || inner.state == BreakerState::HalfOpen
                || (inner.state == BreakerState::Closed && inner.consecutive_failures >= self.failure_threshold);
            if trips {
                inner.state = BreakerState::Open;
                inner.opened_at = Some(now);
            }
        }
        (inner.state != before).then_some(BreakerChange {
            from: before,
            to: inner.state,
            consecutive_failures: inner.consecutive_failures,
        })
    }

    /// Gives back a probe admission whose attempt was never sent (the request was
    /// cancelled), so the next request may probe instead.
    pub fn release(&self, admission: Admission) {
        if admission.probe {
            let mut inner = self.lock();
            if inner.state == BreakerState::HalfOpen {
                inner.state = BreakerState::Open;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another request panicked mid-update; the counters are
        // still meaningful.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cool_down() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(10));
        let start = Instant::now();
        for failure in 0..3 {
            let admission = breaker.admit(start).unwrap();
            let change = breaker.record(admission, false, start).map(|change| change.to);
            assert_eq!(change, (failure == 2).then_some(BreakerState::Open));
        }
        assert_eq!(breaker.admit(start + Duration::from_secs(9)), None, "open during the cool-down");
        let probe = breaker.admit(start + Duration::from_secs(10)).unwrap();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.admit(start + Duration::from_secs(10)), None, "one probe at a time");
        let closed = breaker.record(probe, true, start + Duration::from_secs(11)).unwrap();
        assert!(closed.closed() && !closed.opened(), "{closed:?}");
        assert!(breaker.admit(start + Duration::from_secs(11)).is_some());
    }

    #[test]
    fn a_failed_probe_reopens_and_a_success_resets_the_count() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(5));
        let start = Instant::now();
        let first = breaker.admit(start).unwrap();
        breaker.record(first, false, start);
        let second = breaker.admit(start).unwrap();
        breaker.record(second, true, start);
        let third = breaker.admit(start).unwrap();
        assert_eq!(breaker.record(third, false, start), None, "the success reset the count");
        let fourth = breaker.admit(start).unwrap();
        let opened = breaker.record(fourth, false, start).unwrap();
        assert!(opened.opened(), "{opened:?}");
        assert_eq!(opened.consecutive_failures, 2);
        let probe = breaker.admit(start + Duration::from_secs(5)).unwrap();
        let reopened_at = start + Duration::from_secs(6);
        let reopened = breaker.record(probe, false, reopened_at).unwrap();
        assert_eq!(reopened.to, BreakerState::Open);
        assert!(!reopened.opened(), "a failed probe continues the window: {reopened:?}");
        assert_eq!(breaker.admit(reopened_at + Duration::from_secs(4)), None, "a new cool-down started");
    }

    #[test]
    fn a_released_probe_lets_the_next_request_probe() {
        let breaker = CircuitBreaker::new(1, Duration::ZERO);
        let now = Instant::now();
        let admission = breaker.admit(now).unwrap();
        breaker.record(admission, false, now);
        let probe = breaker.admit(now).unwrap();
        breaker.release(probe);
        assert!(breaker.admit(now).is_some());
    }
}
