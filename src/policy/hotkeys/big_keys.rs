//! Big keys: commands whose reply, or the value they write, is over `big_key_bytes`.
//!
//! A few big values explain many a slow Redis (one `GET` of a 50 MB string blocks everyone
//! behind it), so they are listed apart from the hot keys, largest first. The list is bounded:
//! when it is full, a new entry replaces the smallest if it is larger.

use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Entries kept at most.
pub const BIG_KEYS_KEPT: usize = 100;

/// Which side of a command was big.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The reply Redis sent.
    Reply,
    /// The value a write command sent.
    Value,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Reply => "reply",
            Side::Value => "value",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BigKey {
    pub key: String,
    pub command: String,
    pub side: Side,
    /// The largest size seen, in bytes.
    pub bytes: u64,
    /// Times seen over the threshold (scaled for sampling).
    pub times: u64,
    /// When last seen, in seconds since the Unix epoch.
    pub last_seen: u64,
}

/// What `GET /bigkeys` and `KEYWARD BIGKEYS` show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BigKeysReport {
    pub threshold_bytes: u64,
    /// Largest first.
    pub keys: Vec<BigKey>,
}

#[derive(Default)]
pub struct BigKeys {
    kept: Mutex<Vec<BigKey>>,
}

impl BigKeys {
    pub fn record(&self, key: &[u8], command: &str, side: Side, bytes: u64, times: u64) {
        metrics::counter!("keyward_big_keys_total", "side" => side.name()).increment(times);
        let key = String::from_utf8_lossy(key);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let mut kept = self.kept.lock();
        if let Some(seen) = kept
            .iter_mut()
            .find(|seen| seen.side == side && seen.command == command && seen.key == key)
        {
            seen.bytes = seen.bytes.max(bytes);
            seen.times += times;
            seen.last_seen = now;
            return;
        }
        let entry = BigKey {
            key: key.into_owned(),
            command: command.to_string(),
            side,
            bytes,
            times,
            last_seen: now,
        };
        if kept.len() < BIG_KEYS_KEPT {
            kept.push(entry);
        } else if let Some(smallest) = kept.iter_mut().min_by_key(|seen| seen.bytes) {
            if smallest.bytes < bytes {
                *smallest = entry;
            }
        }
    }

    /// The largest `limit`, largest first.
    pub fn largest(&self, limit: usize) -> Vec<BigKey> {
        let mut kept = self.kept.lock().clone();
        kept.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.key.cmp(&b.key)));
        kept.truncate(limit);
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_and_merges_repeats() {
        let big_keys = BigKeys::default();
        for n in 0..BIG_KEYS_KEPT as u64 + 10 {
            big_keys.record(format!("k{n}").as_bytes(), "get", Side::Reply, 1000 + n, 1);
        }
        big_keys.record(b"k109", "get", Side::Reply, 5, 1);
        let largest = big_keys.largest(usize::MAX);
        assert_eq!(largest.len(), BIG_KEYS_KEPT);
        assert_eq!((largest[0].key.as_str(), largest[0].bytes), ("k109", 1109));
        assert_eq!(largest[0].times, 2);
        assert_eq!(largest.last().unwrap().bytes, 1010);
    }
}
