//! Command latency histograms with fixed buckets, where recording a run of commands answered
//! together costs one bucket search and three relaxed atomic adds, however long the run.
//!
//! Why not the exporter's histograms: metrics-exporter-prometheus keeps every sample until its
//! upkeep folds them into buckets (every 5 s, or at a scrape), and `record_many` stores one
//! sample per command. Under a pipelined load that was about 240 instructions per forwarded
//! command (more than the request decoder), and millions of samples held between upkeeps.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: from a fast loopback round trip to a stalled Redis.
pub const BOUNDS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// One command's latencies: a count per bucket (the last one past every bound) and their sum.
pub struct LatencyHistogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    /// The sum of all observations in seconds, as `f64` bits (Prometheus's `_sum`).
    sum: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl LatencyHistogram {
    /// `count` commands that each took `elapsed`.
    pub fn record_many(&self, elapsed: Duration, count: u64) {
        let seconds = elapsed.as_secs_f64();
        // A value on a bound belongs to that bound's bucket (Prometheus's `le`).
        let bucket = BOUNDS.partition_point(|&bound| bound < seconds);
        self.buckets[bucket].fetch_add(count, Ordering::Relaxed);
        let added = seconds * count as f64;
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + added).to_bits())
            });
    }

    /// How many observations the histogram holds.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }

    /// Adds this histogram's count per bucket (not cumulative) to `counts`, one per bucket.
    pub fn add_counts_to(&self, counts: &mut [u64]) {
        for (total, bucket) in counts.iter_mut().zip(&self.buckets) {
            *total += bucket.load(Ordering::Relaxed);
        }
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of series `name` with `labels` (already
    /// formatted, as `command="get"`). The `# HELP` and `# TYPE` lines are the caller's, once
    /// per metric.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bucket, bound) in self
            .buckets
            .iter()
            .zip(BOUNDS.iter().map(Some).chain([None]))
        {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = bound.map_or_else(|| "+Inf".to_string(), f64::to_string);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::LatencyHistogram;
    use std::time::Duration;

    #[test]
    fn a_run_lands_in_one_bucket_and_buckets_are_cumulative() {
        let histogram = LatencyHistogram::default();
        histogram.record_many(Duration::from_micros(30), 16);
        histogram.record_many(Duration::from_micros(100), 2);
        histogram.record_many(Duration::from_secs(60), 1);
        let mut out = String::new();
        histogram.render(&mut out, "lat", "command=\"get\"");
        let line = |suffix: &str| {
            out.lines()
                .find(|line| line.starts_with(&format!("lat_{suffix}")))
                .unwrap_or_else(|| panic!("{suffix} in {out}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(line("bucket{command=\"get\",le=\"0.00005\"}"), "16");
        assert_eq!(
            line("bucket{command=\"get\",le=\"0.0001\"}"),
            "18",
            "100 µs is on a bound"
        );
        assert_eq!(line("bucket{command=\"get\",le=\"10\"}"), "18");
        assert_eq!(line("bucket{command=\"get\",le=\"+Inf\"}"), "19");
        assert_eq!(line("count{command=\"get\"}"), "19");
        assert_eq!(histogram.count(), 19);
        let sum: f64 = line("sum{command=\"get\"}").parse().unwrap();
        assert!(
            (sum - (16.0 * 30e-6 + 2.0 * 100e-6 + 60.0)).abs() < 1e-9,
            "{sum}"
        );
    }
}
