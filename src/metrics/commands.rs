//! Per-command series: how many of each command keyward received, and how long Redis took to
//! answer them.
//!
//! They are resolved to a slot once per command and kept in a table indexed by command id:
//! recording on the hot path is then an atomic add, with no label hashing. Labels are command
//! names from the command table (unknown commands share one label), which keeps cardinality
//! bounded whatever clients send. keyward renders these series itself, after the exporter's,
//! so that the admin page can read the same counts it exports.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;

use super::latency::{LatencyHistogram, BOUNDS};
use crate::command::CommandTable;

const COMMANDS_TOTAL: &str = "keyward_commands_total";
const COMMAND_DURATION: &str = "keyward_command_duration_seconds";

/// One command's series.
#[derive(Default)]
struct CommandSeries {
    received: AtomicU64,
    latency: LatencyHistogram,
}

/// Per-command counters and latency histograms, created on first use of each command.
pub struct CommandMetrics {
    slots: Box<[OnceLock<CommandSeries>]>,
}

/// Every command seen so far, added up: what the admin page turns into rates and percentiles
/// by comparing two of them.
#[derive(Debug, Serialize)]
pub struct CommandTotals {
    /// `(command, received)`, for each command received at least once, in table order.
    pub received: Vec<(String, u64)>,
    /// Upper bounds of the latency buckets, in seconds (the last bucket is past them all).
    pub latency_bounds: &'static [f64],
    /// Timed commands per latency bucket, over every command (not cumulative).
    pub latency_counts: Vec<u64>,
}

impl CommandMetrics {
    pub fn new(table: &CommandTable) -> CommandMetrics {
        CommandMetrics {
            slots: (0..table.len()).map(|_| OnceLock::new()).collect(),
        }
    }

    fn slot(&self, id: usize) -> &CommandSeries {
        let index = id.min(self.slots.len() - 1);
        self.slots[index].get_or_init(CommandSeries::default)
    }

    pub fn received(&self, id: usize, count: u64) {
        self.slot(id).received.fetch_add(count, Ordering::Relaxed);
    }

    /// `count` commands of one kind, sent together and answered together.
    pub fn replied(&self, id: usize, elapsed: Duration, count: usize) {
        self.slot(id).latency.record_many(elapsed, count as u64);
    }

    /// The commands seen so far, with their slots.
    fn seen(&self) -> impl Iterator<Item = (&str, &CommandSeries)> {
        self.slots.iter().enumerate().filter_map(|(id, slot)| {
            let series = slot.get()?;
            Some((&*CommandTable::global().by_id(id).name, series))
        })
    }

    /// Appends the counter and the latency histogram of every command seen so far to a
    /// `/metrics` body.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {COMMANDS_TOTAL} Commands received, by command");
        let _ = writeln!(out, "# TYPE {COMMANDS_TOTAL} counter");
        for (name, series) in self.seen() {
            let received = series.received.load(Ordering::Relaxed);
            let _ = writeln!(out, "{COMMANDS_TOTAL}{{command=\"{name}\"}} {received}");
        }
        let _ = writeln!(
            out,
            "# HELP {COMMAND_DURATION} Time from receiving a forwarded command to its reply from Redis"
        );
        let _ = writeln!(out, "# TYPE {COMMAND_DURATION} histogram");
        for (name, series) in self.seen() {
            // A command keyward answers itself (`SELECT`, `CLIENT SETNAME`, `KEYWARD`) is
            // counted but never timed: no empty histogram for it.
            if series.latency.count() > 0 {
                series
                    .latency
                    .render(out, COMMAND_DURATION, &format!("command=\"{name}\""));
            }
        }
    }

    /// The totals of every command seen so far.
    pub fn totals(&self) -> CommandTotals {
        let mut totals = CommandTotals {
            received: Vec::new(),
            latency_bounds: &BOUNDS,
            latency_counts: vec![0; BOUNDS.len() + 1],
        };
        for (name, series) in self.seen() {
            let received = series.received.load(Ordering::Relaxed);
            totals.received.push((name.to_string(), received));
            series.latency.add_counts_to(&mut totals.latency_counts);
        }
        totals
    }
}

/// Counts a run of identical commands (a pipeline of `GET`s) before recording it, so that
/// recording costs one atomic add per run instead of one per command.
#[derive(Default)]
pub struct ReceivedTally {
    run: Option<(usize, u64)>,
}

impl ReceivedTally {
    pub fn add(&mut self, metrics: &CommandMetrics, id: usize) {
        match &mut self.run {
            Some((run_id, count)) if *run_id == id => *count += 1,
            _ => {
                self.flush(metrics);
                self.run = Some((id, 1));
            }
        }
    }

    pub fn flush(&mut self, metrics: &CommandMetrics) {
        if let Some((id, count)) = self.run.take() {
            metrics.received(id, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_every_command() {
        let table = CommandTable::global();
        let metrics = CommandMetrics::new(table);
        let id = |name: &str| table.find_name(name).expect("a known command").id;
        metrics.received(id("get"), 3);
        metrics.received(id("set"), 2);
        metrics.replied(id("get"), Duration::from_micros(30), 3);
        metrics.replied(id("set"), Duration::from_secs(60), 2);
        let totals = metrics.totals();
        let mut received = totals.received.clone();
        received.sort();
        assert_eq!(received, [("get".into(), 3), ("set".into(), 2)]);
        assert_eq!(totals.latency_counts.len(), totals.latency_bounds.len() + 1);
        assert_eq!(totals.latency_counts[0], 3);
        assert_eq!(totals.latency_counts.last(), Some(&2));
        let mut body = String::new();
        metrics.render(&mut body);
        assert!(
            body.contains("keyward_commands_total{command=\"get\"} 3\n"),
            "{body}"
        );
    }
}
