//! Helpers for tests that need the real services `scripts/test` starts.
//!
//! `scripts/test` starts a Kafka-API broker and a ClickHouse server on free loopback
//! ports and exports their addresses. A test that needs one and runs without it fails
//! with a message naming that command; it never passes silently.

/// Environment variable holding the test broker's `host:port`.
pub const KAFKA_BROKERS_ENV: &str = "TOLLGATE_TEST_KAFKA_BROKERS";
/// Environment variable holding the test ClickHouse server's HTTP URL.
pub const CLICKHOUSE_URL_ENV: &str = "TOLLGATE_TEST_CLICKHOUSE_URL";

/// The value of `name`, or a panic that tells the reader how to run the test.
#[allow(clippy::panic)]
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: this test needs the real services that `scripts/test` starts. \
             Run the suite with `scripts/test` (or `scripts/test -- <cargo test args>` for a subset)."
        ),
    }
}

/// A unique name for a test's topic, group or table: `prefix` plus a random suffix.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let counter = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:08x}-{counter}", std::process::id())
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
