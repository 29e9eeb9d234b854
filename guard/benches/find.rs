//! How the detectors' time grows with the text: `Detectors::find` and `Detectors::redact`
//! over texts of 0.5, 1, 2 and 4 MiB, each twice the one before, so each line's ratio to
//! the line above should stay near 2 (linear work). Two texts: the worst case for
//! overlap resolution, `a@b.cc ` repeated (one finding per 7 bytes, about 600,000 in
//! 4 MiB), and prose with a few findings of every kind per kilobyte.
//!
//! Usage: cargo bench -p tollgate-guard --bench find

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A benchmark fails by panicking.

use std::time::{Duration, Instant};

use tollgate_guard::Detectors;

const MIB: usize = 1024 * 1024;
const RUNS: usize = 3;

/// `unit` repeated to `bytes` (whole units only).
fn text_of(unit: &str, bytes: usize) -> String {
    unit.repeat(bytes / unit.len())
}

/// The fastest of `RUNS` runs of `work`, which returns the findings it made.
fn fastest(work: impl Fn() -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut findings = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        findings = std::hint::black_box(work());
        best = best.min(started.elapsed());
    }
    (best, findings)
}

fn main() {
    let detectors = Detectors::shared();
    let prose = concat!(
        "Please summarise the thread below for the weekly report. Jane (jane.doe@example.com, ",
        "+44 20 7946 0958) asked whether card 4111 1111 1111 1111 was refunded to ",
        "GB82 WEST 1234 5698 7654 32; the audit note says SSN 078-05-1121 is a sample and ",
        "the deploy token is api_key=abcd1234efgh5678ijkl. Nothing else in this paragraph ",
        "should be found, however long it runs on about budgets, teams and models. ",
    );
    println!("{:<10} {:>8} {:>10} {:>12} {:>8}", "text", "MiB", "findings", "find ms", "ratio");
    for (name, unit) in [("a@b.cc", "a@b.cc "), ("prose", prose)] {
        let mut previous: Option<Duration> = None;
        for mebibytes in [0.5f64, 1.0, 2.0, 4.0] {
            let text = text_of(unit, (mebibytes * MIB as f64) as usize);
            let (took, findings) = fastest(|| detectors.find(&text).len());
            let ratio = previous
                .map_or_else(|| "-".to_owned(), |before| format!("{:.2}", took.as_secs_f64() / before.as_secs_f64()));
            println!("{name:<10} {mebibytes:>8} {findings:>10} {:>12.1} {ratio:>8}", took.as_secs_f64() * 1e3);
            previous = Some(took);
        }
    }
    println!();
    println!("{:<10} {:>8} {:>10} {:>12} {:>8}", "text", "MiB", "findings", "redact ms", "ratio");
    let mut previous: Option<Duration> = None;
    for mebibytes in [0.5f64, 1.0, 2.0, 4.0] {
        let text = text_of("a@b.cc ", (mebibytes * MIB as f64) as usize);
        let (took, findings) = fastest(|| detectors.redact(&text).1.len());
        let ratio = previous
            .map_or_else(|| "-".to_owned(), |before| format!("{:.2}", took.as_secs_f64() / before.as_secs_f64()));
        println!("{:<10} {mebibytes:>8} {findings:>10} {:>12.1} {ratio:>8}", "a@b.cc", took.as_secs_f64() * 1e3);
        previous = Some(took);
    }
}
