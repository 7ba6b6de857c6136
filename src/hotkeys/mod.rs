//! Hot keys: the keys (and folded key patterns) that take the most requests, per sliding
//! window, counted by a Space-Saving summary of bounded size.
//!
//! Each window keeps two summaries: the last complete window and the current one, so a report
//! covers between one and two window lengths. Within a report, every count is an upper bound
//! and `count - error` a lower bound of the requests the key got (see [`space_saving`]); with
//! `capacity` counters, `error` never exceeds the window's requests divided by `capacity`, and
//! any key with more requests than that is always listed. With `sample_rate` below 1, counts
//! are scaled up from the sampled commands.

pub mod fold;
pub mod space_saving;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::hash::BuildHasher;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::config::HotKeysConfig;
use space_saving::{key_hash, SpaceSaving};

pub struct HotKeys {
    pub config: HotKeysConfig,
    windows: Mutex<Vec<Window>>,
    /// Commands offered, for sampling.
    offered: AtomicU64,
}

struct Window {
    length: Duration,
    started: Instant,
    current: Summaries,
    previous: Summaries,
}

#[derive(Clone)]
struct Summaries {
    keys: SpaceSaving,
    patterns: SpaceSaving,
}

impl Summaries {
    fn new(capacity: usize) -> Summaries {
        Summaries {
            keys: SpaceSaving::new(capacity),
            patterns: SpaceSaving::new(capacity),
        }
    }
}

/// One line of a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub key: String,
    /// Requests, an upper bound.
    pub requests: u64,
    /// How much `requests` may overstate (0: exact, sampling aside).
    pub error: u64,
    pub reads: u64,
    pub writes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub window: String,
    /// Requests counted in the window, scaled for sampling.
    pub requests: u64,
    /// The most any count below may overstate.
    pub error_bound: u64,
    pub keys: Vec<Entry>,
    pub patterns: Vec<Entry>,
}

impl HotKeys {
    pub fn new(config: HotKeysConfig) -> HotKeys {
        let now = Instant::now();
        let capacity = config.capacity.get();
        let windows = config
            .windows
            .iter()
            .map(|length| Window {
                length: length.get(),
                started: now,
                current: Summaries::new(capacity),
                previous: Summaries::new(capacity),
            })
            .collect();
        HotKeys {
            config,
            windows: Mutex::new(windows),
            offered: AtomicU64::new(0),
        }
    }

    /// Whether this command is sampled: a pseudo-random draw, so that no repeating pattern of
    /// commands falls in step with the sampling.
    pub fn sampled(&self) -> bool {
        let rate = self.config.sample_rate;
        if rate >= 1.0 {
            return true;
        }
        // SplitMix64 over a shared counter: cheap, lock-free, well spread.
        let mut z = self
            .offered
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < rate
    }

    /// Counts one command's keys (at most [`MAX_KEYS_PER_COMMAND`] of them, each cut to
    /// [`MAX_KEY_LEN`] bytes), so that neither memory nor the time the lock is held depends on
    /// what a client sends.
    pub fn observe<'k>(&self, keys: impl Iterator<Item = &'k [u8]>, write: bool) {
        let mut pattern = Vec::new();
        let mut shortened = Vec::new();
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        for window in windows.iter_mut() {
            window.rotate(now);
        }
        for key in keys.take(MAX_KEYS_PER_COMMAND) {
            let key = shorten(key, &mut shortened);
            fold::fold(key, &mut pattern);
            let (key_hash, pattern_hash) = (key_hash(key), key_hash(&pattern));
            for window in windows.iter_mut() {
                window.current.keys.observe_hashed(key, key_hash, 1, write);
                window
                    .current
                    .patterns
                    .observe_hashed(&pattern, pattern_hash, 1, write);
            }
        }
    }

    /// The configured window closest to `wanted` (the first one when none is asked for).
    pub fn window(&self, wanted: Option<Duration>) -> Option<Duration> {
        let lengths = self.config.windows.iter().map(|w| w.get());
        match wanted {
            None => lengths.clone().next(),
            Some(wanted) => lengths.clone().find(|length| *length == wanted),
        }
    }

    /// The top `limit` keys and patterns of a configured window.
    pub fn report(&self, window: Duration, limit: usize) -> Option<Report> {
        let scale = 1.0 / self.config.sample_rate;
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window_state = windows.iter_mut().find(|w| w.length == window)?;
        window_state.rotate(Instant::now());
        let scaled = |value: u64| (value as f64 * scale).round() as u64;
        let keys = merge(
            &window_state.previous.keys,
            &window_state.current.keys,
            limit,
        );
        let patterns = merge(
            &window_state.previous.patterns,
            &window_state.current.patterns,
            limit,
        );
        let requests = window_state.previous.keys.total() + window_state.current.keys.total();
        let capacity = self.config.capacity.get() as u64;
        let rescale = |entries: Vec<Entry>| -> Vec<Entry> {
            entries
                .into_iter()
                .map(|entry| Entry {
                    requests: scaled(entry.requests),
                    error: scaled(entry.error),
                    reads: scaled(entry.reads),
                    writes: scaled(entry.writes),
                    ..entry
                })
                .collect()
        };
        Some(Report {
            window: humantime::format_duration(window).to_string(),
            requests: scaled(requests),
            error_bound: scaled(requests / capacity),
            keys: rescale(keys),
            patterns: rescale(patterns),
        })
    }

    /// Prometheus gauges for the top `export_top` keys of each window, written as text. They
    /// are rendered at each scrape rather than registered, so keys that leave the top leave
    /// the output too and the number of series stays bounded.
    pub fn render_prometheus(&self, out: &mut String) {
        let top = self.config.export_top;
        if top == 0 {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP keyward_hotkey_requests Requests to the hottest keys (upper bound), per window"
        );
        let _ = writeln!(out, "# TYPE keyward_hotkey_requests gauge");
        for window in self.config.windows.iter().map(|w| w.get()) {
            if let Some(report) = self.report(window, top) {
                for entry in &report.keys {
                    let _ = writeln!(
                        out,
                        "keyward_hotkey_requests{{window=\"{}\",key=\"{}\"}} {}",
                        report.window,
                        label_value(&entry.key),
                        entry.requests
                    );
                }
            }
        }
    }
}

impl Window {
    fn rotate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        let periods = (elapsed.as_nanos() / self.length.as_nanos().max(1)) as u32;
        if periods == 0 {
            return;
        }
        if periods >= 2 {
            self.previous.keys.clear();
            self.previous.patterns.clear();
        } else {
            std::mem::swap(&mut self.previous, &mut self.current);
        }
        self.current.keys.clear();
        self.current.patterns.clear();
        // On the window's own schedule, so a late rotation never stretches a period.
        self.started += self.length * periods;
    }
}

/// Keys counted per command at most (`MGET` of a million keys counts the first ones).
pub const MAX_KEYS_PER_COMMAND: usize = 64;
/// Bytes of a key kept; a longer key is kept as its start and a hash of the whole.
pub const MAX_KEY_LEN: usize = 200;

fn shorten<'a>(key: &'a [u8], buffer: &'a mut Vec<u8>) -> &'a [u8] {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let hash = rustc_hash::FxBuildHasher.hash_one(key);
    buffer.clear();
    buffer.extend_from_slice(&key[..MAX_KEY_LEN]);
    buffer.extend_from_slice(format!("...#{hash:016x}").as_bytes());
    buffer
}

/// Adds two summaries. A key missing from one may still have had up to that one's floor
/// there, which counts towards its upper bound and its error.
fn merge(previous: &SpaceSaving, current: &SpaceSaving, limit: usize) -> Vec<Entry> {
    let summaries = [previous, current];
    // Per key: the entry, and which summaries held it (bit per summary).
    let mut merged: FxHashMap<&[u8], (Entry, u8)> = FxHashMap::default();
    for (bit, summary) in summaries.iter().enumerate() {
        for counted in summary.counters() {
            let (entry, held) = merged.entry(&counted.key).or_insert_with(|| {
                let entry = Entry {
                    key: String::from_utf8_lossy(&counted.key).into_owned(),
                    requests: 0,
                    error: 0,
                    reads: 0,
                    writes: 0,
                };
                (entry, 0)
            });
            entry.requests += counted.count;
            entry.error += counted.error;
            entry.writes += counted.writes;
            entry.reads += (counted.count - counted.error).saturating_sub(counted.writes);
            *held |= 1 << bit;
        }
    }
    let mut entries: Vec<Entry> = merged
        .into_values()
        .map(|(mut entry, held)| {
            for (bit, summary) in summaries.iter().enumerate() {
                if held & (1 << bit) == 0 {
                    entry.requests += summary.floor();
                    entry.error += summary.floor();
                }
            }
            entry
        })
        .collect();
    entries.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.key.cmp(&b.key)));
    entries.truncate(limit);
    entries
}

/// Escapes a Prometheus label value.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
