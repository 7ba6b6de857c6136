//! Hot keys and big keys: the keys (and folded key patterns) that take the most requests or
//! bytes, per sliding window, and the commands whose reply or written value is over
//! `big_key_bytes`.
//!
//! Counts come from weighted, filtered Space-Saving summaries of `capacity` counters (see
//! [`space_saving`]), built as [`windows`] describes and fed through a [`staging`] area: a
//! small count-min sketch takes each command whose key has left little in it so far, and an
//! exact table stages the rest, so that each staged key reaches the summaries once per flush
//! rather than once per command. Every key's count reported is an upper bound, overstating by
//! at most the report's `error_bound`, and `count - error` is a lower bound; a key the
//! summaries do not hold had at most `error_bound`. `error_bound` never exceeds one and a half
//! times the window's total divided by `capacity` for the shortest window (the summaries'
//! share and the sketch's); for longer ones it stayed within four and a half times that in
//! the tests. Patterns count the sketch's commands one in
//! [`PATTERN_SAMPLE`](staging::PATTERN_SAMPLE), scaled back up: a pattern's count is exact
//! for its staged keys and an estimate for the rest. With `sample_rate` below 1, counts are
//! scaled up from the sampled commands.

pub mod big_keys;
pub mod fold;
pub mod key_hash;
pub mod lane;
pub mod phase;
pub mod record;
pub mod space_saving;
pub mod staging;
pub mod windows;
#[cfg(test)]
mod zipf;

use std::cell::Cell;
use std::fmt::Write as _;
use std::ops::AddAssign;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use quanta::Instant;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::command::CommandTable;
use crate::config::HotKeysConfig;
use big_keys::{BigKeys, BigKeysReport, Side};
use record::{Observation, Recorder};
use space_saving::{SpaceSaving, Tally};
use staging::Staging;
use windows::{Of, Period, PeriodClock, Windows};

/// What a report ranks keys by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum By {
    Requests = 0,
    /// Bytes in (requests) and out (replies) together.
    Bytes = 1,
}

impl By {
    pub fn parse(text: &str) -> Option<By> {
        [By::Requests, By::Bytes]
            .into_iter()
            .find(|by| by.name().eq_ignore_ascii_case(text))
    }

    pub fn name(self) -> &'static str {
        match self {
            By::Requests => "requests",
            By::Bytes => "bytes",
        }
    }
}

pub struct HotKeys {
    pub config: HotKeysConfig,
    /// Where sessions add what they count: a lock taken once per batch of answers, and held
    /// only for a few additions per command unless a flush has to wait for another one.
    stage: Mutex<Staging>,
    /// The summaries, under a lock of their own, so that sessions keep staging while a flushed
    /// stage is folded into them.
    windows: Mutex<Windows>,
    clock: PeriodClock,
    big_keys: BigKeys,
    /// A command is sampled when its draw is below this: `sample_rate` of the draws' range.
    sample_below: u64,
}

/// One line of a report, in the report's unit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub key: String,
    /// An upper bound.
    pub count: u64,
    /// How much `count` may overstate (0: exact, sampling aside).
    pub error: u64,
    /// Of `count - error`: from commands that read, and from commands that write.
    pub reads: u64,
    pub writes: u64,
    /// By bytes, of `count - error`: what came in with requests and went out with replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// In cluster mode, the primary serving the key now (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub window: String,
    pub by: By,
    /// Requests (or bytes) counted in the window, scaled for sampling.
    pub total: u64,
    /// The most any key's count below may overstate, and the most a key the summaries do not
    /// hold can have had (one not listed, unless `limit` cut the list).
    pub error_bound: u64,
    pub keys: Vec<Entry>,
    pub patterns: Vec<Entry>,
}

impl HotKeys {
    pub fn new(config: HotKeysConfig) -> HotKeys {
        let lengths: Vec<Duration> = config.windows.iter().map(|w| w.get()).collect();
        let capacity = config.capacity.get();
        let windows = Windows::new(&lengths, capacity, Instant::now());
        HotKeys {
            stage: Mutex::new(Staging::new(capacity)),
            clock: windows.clock(),
            windows: Mutex::new(windows),
            big_keys: BigKeys::default(),
            // Saturates at `u64::MAX` for a rate of 1 (which `sampled` does not draw for).
            sample_below: (config.sample_rate * 18_446_744_073_709_551_616.0) as u64,
            config,
        }
    }

    /// Whether this command is sampled: a pseudo-random draw, so that no repeating pattern of
    /// commands falls in step with the sampling. Each thread draws from a sequence of its own:
    /// a counter shared by every command cost a locked instruction each, a tenth of the
    /// request loop's time on one thread, and a cache line bounced between worker threads.
    #[inline]
    pub fn sampled(&self) -> bool {
        if self.config.sample_rate >= 1.0 {
            return true;
        }
        thread_local! {
            static DRAWS: Cell<u64> = const { Cell::new(0) };
        }
        // SplitMix64 over the thread's counter: cheap and well spread.
        let mut z = DRAWS.with(|draws| {
            let next = draws.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            draws.set(next);
            next
        });
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z < self.sample_below
    }

    /// Stages the counts of the commands `recorder` has finished, flushing the stage first if
    /// it holds an earlier period's counts or no room, and notes the big ones.
    pub fn record(&self, recorder: &mut Recorder, now: Instant) {
        let threshold = self.config.big_key_bytes.get();
        let mut stage = self.stage.lock();
        if !stage.takes(now) {
            drop(stage);
            stage = self.stage_for(now);
        }
        for (key, seen) in recorder.finished() {
            if stage.is_full() {
                self.flush(stage, now);
                stage = self.stage_for(now);
            }
            stage.add(key, seen.counts);
            if seen.value > threshold || seen.counts.outbound > threshold {
                self.note_big_key(key, seen, threshold);
            }
        }
        drop(stage);
        recorder.discard();
    }

    /// The stage, locked and entered for counts seen `now`; flushed first if it holds an
    /// earlier period's counts or no room (other sessions may add to a new stage meanwhile).
    fn stage_for(&self, now: Instant) -> MutexGuard<'_, Staging> {
        let period = self.clock.number(now);
        let mut stage = self.stage.lock();
        while stage.is_full() || stage.period().is_some_and(|staged| staged < period) {
            self.flush(stage, now);
            stage = self.stage.lock();
        }
        stage.enter(period, self.clock.end_of(period));
        stage
    }

    #[cold]
    fn note_big_key(&self, key: &[u8], seen: &Observation, threshold: u64) {
        let command = &CommandTable::global().by_id(seen.command as usize).name;
        let times = self.scaled(1);
        for (side, size) in [
            (Side::Value, seen.value),
            (Side::Reply, seen.counts.outbound),
        ] {
            if size > threshold {
                self.big_keys.record(key, command, side, size, times);
            }
        }
    }

    /// The configured window closest to `wanted` (the first one when none is asked for).
    pub fn window(&self, wanted: Option<Duration>) -> Option<Duration> {
        let mut lengths = self.config.windows.iter().map(|w| w.get());
        match wanted {
            None => lengths.next(),
            Some(wanted) => lengths.find(|length| *length == wanted),
        }
    }

    /// The top `limit` keys and patterns of a configured window, ranked `by`.
    pub fn report(&self, window: Duration, by: By, limit: usize) -> Option<Report> {
        let now = Instant::now();
        self.flush(self.stage.lock(), now);
        let mut windows = self.windows.lock();
        let periods = windows.periods(window, now)?;
        let summaries = |of: Of| -> Vec<&SpaceSaving> {
            periods
                .iter()
                .map(|period: &&Period| period.summary(of, by))
                .collect()
        };
        let (keys, patterns) = (summaries(Of::Keys), summaries(Of::Patterns));
        let total: u64 = keys.iter().map(|summary| summary.total()).sum();
        let error_bound: u64 = keys.iter().map(|summary| summary.bound()).sum();
        let rescale = |entries: Vec<Entry>| -> Vec<Entry> {
            entries
                .into_iter()
                .map(|entry| Entry {
                    count: self.scaled(entry.count),
                    error: self.scaled(entry.error),
                    reads: self.scaled(entry.reads),
                    writes: self.scaled(entry.writes),
                    bytes_in: entry.bytes_in.map(|n| self.scaled(n)),
                    bytes_out: entry.bytes_out.map(|n| self.scaled(n)),
                    ..entry
                })
                .collect()
        };
        Some(Report {
            window: humantime::format_duration(window).to_string(),
            by,
            total: self.scaled(total),
            error_bound: self.scaled(error_bound),
            keys: rescale(merge(&keys, by, limit)),
            patterns: rescale(merge(&patterns, by, limit)),
        })
    }

    /// The largest big keys seen, largest first.
    pub fn big_keys(&self, limit: usize) -> BigKeysReport {
        BigKeysReport {
            threshold_bytes: self.config.big_key_bytes.get(),
            keys: self.big_keys.largest(limit),
        }
    }

    /// Prometheus gauges for the top `export_top` keys of each window, by requests and by
    /// bytes, written as text. They are rendered at each scrape rather than registered, so
    /// keys that leave the top leave the output too and the number of series stays bounded.
    /// `node_of` names the node serving a key, in cluster mode: a `node` label then says which
    /// node a hot key weighs on.
    pub fn render_prometheus(&self, out: &mut String, node_of: impl Fn(&str) -> Option<String>) {
        let top = self.config.export_top;
        if top == 0 {
            return;
        }
        for by in [By::Requests, By::Bytes] {
            let name = by.name();
            let _ = writeln!(
                out,
                "# HELP keyward_hotkey_{name} {name} of the hottest keys (upper bound), per window"
            );
            let _ = writeln!(out, "# TYPE keyward_hotkey_{name} gauge");
            for window in self.config.windows.iter().map(|w| w.get()) {
                let Some(report) = self.report(window, by, top) else {
                    continue;
                };
                for entry in &report.keys {
                    let node = node_of(&entry.key)
                        .map(|node| format!(",node=\"{}\"", label_value(&node)))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "keyward_hotkey_{name}{{window=\"{}\",key=\"{}\"{node}}} {}",
                        report.window,
                        label_value(&entry.key),
                        entry.count
                    );
                }
            }
        }
    }

    /// Hands the staged counts to the summaries, leaving a new stage in place. The summaries'
    /// lock is taken before the stage's is let go, so stages reach them in the order they were
    /// taken; the fold itself runs with the stage free for other sessions, unless one of them
    /// has to flush too and waits for this fold with the stage locked.
    fn flush(&self, mut stage: MutexGuard<'_, Staging>, now: Instant) {
        let Some(period) = stage.period() else {
            return;
        };
        let fresh = Staging::succeeding(&stage);
        let staged = std::mem::replace(&mut *stage, fresh);
        let mut windows = self.windows.lock();
        drop(stage);
        staged.flush_into(windows.counting(self.clock.moment(period, now)));
    }

    fn scaled(&self, value: u64) -> u64 {
        (value as f64 / self.config.sample_rate).round() as u64
    }
}

impl AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.count += other.count;
        self.error += other.error;
        self.writes += other.writes;
        self.outbound += other.outbound;
    }
}

/// Adds up summaries of one stream's consecutive stretches. A key missing from one may still
/// have had up to that one's bound there, which counts towards its count and its error.
fn merge(summaries: &[&SpaceSaving], by: By, limit: usize) -> Vec<Entry> {
    // Per key: its tally, and which summaries held it (bit per summary).
    let mut merged: FxHashMap<&[u8], (Tally, u32)> = FxHashMap::default();
    for (bit, summary) in summaries.iter().enumerate() {
        for counted in summary.counters() {
            let (tally, held) = merged.entry(counted.key).or_default();
            *tally += counted.tally;
            *held |= 1 << bit;
        }
    }
    let mut entries: Vec<Entry> = merged
        .into_iter()
        .map(|(key, (mut tally, held))| {
            for (bit, summary) in summaries.iter().enumerate() {
                if held & (1 << bit) == 0 {
                    tally.count += summary.bound();
                    tally.error += summary.bound();
                }
            }
            let known = tally.count - tally.error;
            let bytes = |amount| (by == By::Bytes).then_some(amount);
            Entry {
                key: String::from_utf8_lossy(key).into_owned(),
                count: tally.count,
                error: tally.error,
                reads: known.saturating_sub(tally.writes),
                writes: tally.writes,
                bytes_in: bytes(known.saturating_sub(tally.outbound)),
                bytes_out: bytes(tally.outbound),
                node: None,
            }
        })
        .collect();
    entries.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    entries.truncate(limit);
    entries
}

/// Escapes a Prometheus label value.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;
    use record::follow_command;
    use zipf::zipf_stream;

    #[test]
    fn counts_keep_the_true_top_20_within_the_bound() {
        // A stream over a million keys, most of them too light to be staged.
        let config = HotKeysConfig {
            enabled: true,
            windows: vec![ConfigDuration::from_millis(3_600_000)],
            ..HotKeysConfig::default()
        };
        let hotkeys = HotKeys::new(config);
        let mut recorder = Recorder::default();
        let mut exact: FxHashMap<String, u64> = FxHashMap::default();
        for pipeline in zipf_stream(1_000_000, 1_000_000, 0x5eed_0f57_a6e0).chunks(16) {
            for key in pipeline {
                let key = format!("key:{key}");
                follow_command(&mut recorder, &["GET", &key], b"$-1\r\n");
                *exact.entry(key).or_default() += 1;
            }
            hotkeys.record(&mut recorder, Instant::now());
        }
        let report = hotkeys
            .report(Duration::from_secs(3600), By::Requests, 20)
            .expect("the configured window");
        assert_eq!(report.total, 1_000_000);
        // The summaries' bound, and the sketch's share (a 2,048th of the period's commands).
        assert!(report.error_bound <= report.total / 1024 + report.total / 2048);
        let mut truth: Vec<(&String, &u64)> = exact.iter().collect();
        truth.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let reported: Vec<&str> = report.keys.iter().map(|e| e.key.as_str()).collect();
        let found = truth[..20]
            .iter()
            .filter(|(key, _)| reported.contains(&key.as_str()))
            .count();
        assert!(found >= 19, "only {found} of the true top 20 reported");
        for entry in &report.keys {
            let true_count = exact[&entry.key];
            assert!(entry.count >= true_count && entry.count - entry.error <= true_count);
            assert!(entry.error <= report.error_bound);
        }
        // Commands the sketch took count for their pattern one in 16, sixteen times over.
        let pattern = &report.patterns[0];
        assert_eq!(pattern.key, "key:*");
        assert!(pattern.count.abs_diff(1_000_000) < 10_000, "{pattern:?}");
    }
}
