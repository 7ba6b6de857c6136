//! Exact counts of the keys seen since the summaries were last brought up to date.
//!
//! Updating the summaries is the dear part of hot keys: a key is folded into its pattern, and
//! four summaries (keys and patterns, by requests and by bytes) each find it, move it in their
//! heap, or weigh it against their filter. Done per command, that cost more than forwarding the
//! command. Staging adds a command's counts to its key's entry in one hash table instead, and
//! hands the summaries each key once, with everything its commands added: at the first count
//! or report after the shortest window's period ends, at every report, and when the table is
//! full. A key asked for a hundred times between flushes is folded and ranked once.
//!
//! The summaries take weighted observations, and staged counts are exact (but for keys whose
//! 64-bit hashes agree, see [`Staged`]), so their guarantees hold unchanged; only the order in
//! which keys arrive differs, which Space-Saving's bounds do not depend on.

use std::ops::AddAssign;

use hashbrown::HashTable;
use quanta::Instant;
use rustc_hash::FxHashMap;

use super::fold;
use super::key_hash::key_hash;
#[cfg(doc)]
use super::space_saving::INLINE_KEY;
use super::space_saving::{HeldKey, Tally};
use super::windows::{Of, Period};
use super::By;

/// Keys staged per counter of a summary before the stage is flushed. A full stage of the
/// default 1,024 counters holds 16,384 keys in a table of 32,768 slots of 33 bytes (an entry
/// and a control byte): 1.1 MB, plus the keys themselves in a list of their own (32 bytes
/// each, and an allocation for each key longer than [`INLINE_KEY`], up to 3.6 MB more with
/// the longest keys kept). Two full stages can exist at once, when a flush waits for another's
/// fold. A flush holds the summaries for as long as its keys take to fold and rank (a few
/// milliseconds when full); in exchange a working set of up to this many keys per counter
/// reaches the summaries once per period.
pub const STAGED_PER_COUNTER: usize = 16;

/// A staged key's counts, found by the key's hash alone, in half a cache line. Every command
/// updates one entry at random among the stage's, which has long left the cache since that
/// key's last command: a stage of 10,000 keys touches 320 KB of entries rather than the
/// 640 KB it took with the key kept in each, and an update reads nothing else but the
/// table's control bytes. The key's bytes are read only when the stage is flushed.
#[repr(align(32))]
struct Staged {
    /// The key's [`key_hash`]. Keys of one stage are told apart by it: a seeded 64-bit hash
    /// makes two of a full stage's 16,384 keys agree about once in 10^11 stages, and nobody
    /// sending keys can pick keys that do.
    hash: u64,
    /// Where the key is in the stage's list of keys.
    key: u32,
    /// Saturating: more than four billion requests for one key within one period of the
    /// shortest window (over a million a second for an hour) are counted as four billion.
    requests: u32,
    /// Of `requests`, from commands that write.
    writes: u32,
    /// Bytes in and out together, of all commands and of those that write, and of `bytes`,
    /// what went out with replies. A key that would pass four billion of them within a
    /// period moves its byte counts to the stage's side map of spilled counts first.
    bytes: u32,
    write_bytes: u32,
    outbound: u32,
}

const _: () = assert!(std::mem::size_of::<Staged>() == 32);

/// One command's counts for one of its keys.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Bytes it brought in for the key and took back out.
    pub inbound: u64,
    pub outbound: u64,
    pub write: bool,
}

impl Staged {
    fn new(hash: u64, key: u32) -> Staged {
        Staged {
            hash,
            key,
            requests: 0,
            writes: 0,
            bytes: 0,
            write_bytes: 0,
            outbound: 0,
        }
    }

    /// Adds a command's counts; its byte counts go to `spilled` first when the entry's would
    /// overflow.
    #[inline]
    fn add(&mut self, counts: Counts, spilled: &mut FxHashMap<u32, Tally>) {
        self.requests = self.requests.saturating_add(1);
        self.writes = self.writes.saturating_add(u32::from(counts.write));
        let bytes = counts.inbound.saturating_add(counts.outbound);
        let held = u64::from(self.bytes) + bytes;
        if held > u64::from(u32::MAX) {
            self.spill(bytes, counts, spilled);
            return;
        }
        // Neither part can pass the whole, which fits.
        self.bytes = held as u32;
        self.write_bytes += bytes as u32 * u32::from(counts.write);
        self.outbound += counts.outbound as u32;
    }

    /// Moves the entry's byte counts and this command's (`bytes` in and out) to the key's
    /// tally in `spilled`, in the form a summary ranking by bytes takes.
    #[cold]
    fn spill(&mut self, bytes: u64, counts: Counts, spilled: &mut FxHashMap<u32, Tally>) {
        *spilled.entry(self.key).or_default() += Tally {
            count: u64::from(self.bytes) + bytes,
            error: 0,
            writes: u64::from(self.write_bytes) + bytes * u64::from(counts.write),
            outbound: u64::from(self.outbound) + counts.outbound,
        };
        self.bytes = 0;
        self.write_bytes = 0;
        self.outbound = 0;
    }

    /// What the staged commands add to a summary ranking `by` requests or bytes, with the
    /// byte counts the entry spilled.
    fn tally(&self, by: By, spilled: Tally) -> Tally {
        match by {
            By::Requests => Tally {
                count: u64::from(self.requests),
                error: 0,
                writes: u64::from(self.writes),
                outbound: 0,
            },
            By::Bytes => {
                let mut tally = Tally {
                    count: u64::from(self.bytes),
                    error: 0,
                    writes: u64::from(self.write_bytes),
                    outbound: u64::from(self.outbound),
                };
                tally += spilled;
                tally
            }
        }
    }
}

pub struct Staging {
    /// The staged keys' counts, by hash: one place to look.
    staged: HashTable<Staged>,
    /// The staged keys, in the order they came.
    keys: Vec<HeldKey>,
    /// Byte counts that did not fit in their entries, by the number of their key, in the form
    /// a summary ranking by bytes takes.
    spilled: FxHashMap<u32, Tally>,
    limit: usize,
    /// The period of the shortest window the staged counts fall in (none while empty).
    period: Option<u64>,
    /// When that period ends: counts seen before then join it without the clock's
    /// arithmetic, which costs as much as a hash of the key.
    period_ends: Option<Instant>,
    /// Where each key is folded into its pattern while flushing, one buffer for all of them.
    pattern: Vec<u8>,
}

impl AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.count += other.count;
        self.error += other.error;
        self.writes += other.writes;
        self.outbound += other.outbound;
    }
}

impl Staging {
    /// A stage for summaries of `capacity` counters.
    pub fn new(capacity: usize) -> Staging {
        Staging {
            staged: HashTable::new(),
            keys: Vec::new(),
            spilled: FxHashMap::default(),
            // An entry numbers its key in 32 bits.
            limit: capacity
                .saturating_mul(STAGED_PER_COUNTER)
                .min(u32::MAX as usize),
            period: None,
            period_ends: None,
            pattern: Vec::new(),
        }
    }

    /// An empty stage with room for as many keys as `flushed` held: a busy stage is refilled
    /// by about as many, and growing to that size again would rehash every key several times.
    pub fn succeeding(flushed: &Staging) -> Staging {
        Staging {
            staged: HashTable::with_capacity(flushed.staged.len()),
            keys: Vec::with_capacity(flushed.keys.len()),
            spilled: FxHashMap::default(),
            limit: flushed.limit,
            period: None,
            period_ends: None,
            pattern: Vec::new(),
        }
    }

    /// The period the staged counts fall in, if any are staged.
    pub fn period(&self) -> Option<u64> {
        self.period
    }

    /// Whether the stage holds as many keys as it may: it must be flushed before more come.
    pub fn is_full(&self) -> bool {
        self.staged.len() >= self.limit
    }

    /// Readies the stage for counts seen in `period`, which ends at `ends`. Counts of a
    /// session that read the clock just before a period ended may join the next period's:
    /// the stage keeps the later.
    pub fn enter(&mut self, period: u64, ends: Option<Instant>) {
        if self.period.is_none_or(|staged| period > staged) {
            self.period = Some(period);
            self.period_ends = ends;
        }
    }

    /// Whether counts seen at `at` join the staged period as they are (the stage entered a
    /// period that has not ended by then, and has room).
    #[inline]
    pub fn takes(&self, at: Instant) -> bool {
        self.period_ends.is_some_and(|ends| at < ends) && !self.is_full()
    }

    /// Adds a command's counts for `key`, in the period last [entered](Self::enter).
    #[inline]
    pub fn add(&mut self, key: &[u8], counts: Counts) {
        let hash = key_hash(key);
        let spilled = &mut self.spilled;
        if let Some(staged) = self.staged.find_mut(hash, |staged| staged.hash == hash) {
            staged.add(counts, spilled);
            return;
        }
        let mut fresh = Staged::new(hash, self.keys.len() as u32);
        fresh.add(counts, spilled);
        self.keys.push(HeldKey::from_slice(key));
        self.staged.insert_unique(hash, fresh, |staged| staged.hash);
    }

    /// Hands every staged key to `period`'s summaries, with its pattern.
    pub fn flush_into(mut self, period: &mut Period) {
        for staged in &self.staged {
            let key = &self.keys[staged.key as usize][..];
            let spilled = self.spilled.get(&staged.key).copied().unwrap_or_default();
            fold::fold(key, &mut self.pattern);
            let pattern_hash = key_hash(&self.pattern);
            for by in [By::Requests, By::Bytes] {
                let tally = staged.tally(by, spilled);
                period
                    .summary_mut(Of::Keys, by)
                    .observe(key, staged.hash, tally);
                period
                    .summary_mut(Of::Patterns, by)
                    .observe(&self.pattern, pattern_hash, tally);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::hotkeys::space_saving::INLINE_KEY;

    fn counts(write: bool, inbound: u64, outbound: u64) -> Counts {
        Counts {
            inbound,
            outbound,
            write,
        }
    }

    /// The period a stage for four counters hands `commands` to.
    fn flushed(commands: &[(&[u8], Counts)]) -> Period {
        let mut staging = Staging::new(4);
        staging.enter(0, None);
        for &(key, counts) in commands {
            staging.add(key, counts);
        }
        let mut period = Period::new(4);
        staging.flush_into(&mut period);
        period
    }

    /// What `period`'s summary of keys by `by` counted for `key`.
    fn tally(period: &Period, by: By, key: &[u8]) -> Tally {
        let summary = period.summary(Of::Keys, by);
        summary.counters().find(|c| c.key == key).unwrap().tally
    }

    #[test]
    fn a_flush_hands_each_key_once_with_its_sums() {
        let period = flushed(&[
            (b"user:1", counts(false, 20, 10)),
            (b"user:2", counts(true, 30, 5)),
            (b"user:1", counts(true, 20, 5)),
        ]);
        let requests = tally(&period, By::Requests, b"user:1");
        assert_eq!((requests.count, requests.writes), (2, 1));
        let bytes = tally(&period, By::Bytes, b"user:1");
        assert_eq!((bytes.count, bytes.writes, bytes.outbound), (55, 25, 15));
        let patterns: Vec<_> = period
            .summary(Of::Patterns, By::Requests)
            .counters()
            .collect();
        assert_eq!(patterns.len(), 1);
        assert_eq!(
            (patterns[0].key, patterns[0].tally.count),
            (&b"user:*"[..], 3)
        );
    }

    #[test]
    fn keys_longer_than_held_inline_are_staged_whole() {
        let long = "user:".repeat(20);
        let period = flushed(&[
            (long.as_bytes(), counts(false, 1, 1)),
            (long.as_bytes(), counts(true, 1, 1)),
            (&long.as_bytes()[..INLINE_KEY], counts(false, 1, 1)),
        ]);
        let whole = tally(&period, By::Requests, long.as_bytes());
        assert_eq!((whole.count, whole.writes), (2, 1));
        let keys = period.summary(Of::Keys, By::Requests).counters().count();
        assert_eq!(keys, 2);
    }

    #[test]
    fn request_counts_saturate_instead_of_wrapping() {
        let mut spilled = FxHashMap::default();
        let mut staged = Staged::new(0, 0);
        staged.requests = u32::MAX - 1;
        staged.writes = u32::MAX;
        staged.add(counts(true, 1, 1), &mut spilled);
        staged.add(counts(true, 1, 1), &mut spilled);
        assert_eq!((staged.requests, staged.writes), (u32::MAX, u32::MAX));
        assert_eq!(staged.bytes, 4);
    }

    /// A key whose byte counts outgrow its entry keeps every byte: its entry's counts move
    /// aside, and the flush adds them back.
    #[test]
    fn byte_counts_past_an_entry_are_kept_whole() {
        let big = u64::from(u32::MAX) - 10;
        let period = flushed(&[
            (b"big", counts(true, 20, big)),
            (b"big", counts(false, 5, 6)),
            (b"big", counts(true, 30, 40)),
            (b"small", counts(false, 1, 2)),
        ]);
        let big_bytes = tally(&period, By::Bytes, b"big");
        assert_eq!(
            (big_bytes.count, big_bytes.writes, big_bytes.outbound),
            (big + 20 + 11 + 70, big + 20 + 70, big + 6 + 40)
        );
        let small_bytes = tally(&period, By::Bytes, b"small");
        assert_eq!((small_bytes.count, small_bytes.writes), (3, 0));
        let big_requests = tally(&period, By::Requests, b"big");
        assert_eq!((big_requests.count, big_requests.writes), (3, 2));
    }

    #[test]
    fn the_stage_is_full_at_its_limit() {
        let mut staging = Staging::new(1);
        staging.enter(3, None);
        for n in 0..STAGED_PER_COUNTER {
            assert!(!staging.is_full());
            staging.add(format!("k{n}").as_bytes(), counts(false, 1, 1));
            staging.add(b"k0", counts(false, 1, 1));
        }
        assert!(staging.is_full());
        assert_eq!(staging.period(), Some(3));
    }

    /// Counts seen before the staged period ends join it; from its end, or into a full stage,
    /// the clock is read again; an earlier period entered late changes nothing.
    #[test]
    fn the_stage_takes_counts_until_its_period_ends() {
        let start = Instant::now();
        let second = std::time::Duration::from_secs(1);
        let mut staging = Staging::new(1);
        assert!(!staging.takes(start), "nothing entered yet");
        staging.enter(4, Some(start + second * 50));
        staging.enter(3, Some(start + second * 40));
        assert_eq!(staging.period(), Some(4));
        assert!(staging.takes(start + second * 49));
        assert!(!staging.takes(start + second * 50));
        for n in 0..STAGED_PER_COUNTER {
            staging.add(format!("k{n}").as_bytes(), counts(false, 1, 1));
        }
        assert!(!staging.takes(start), "full");
        let mut endless = Staging::new(1);
        endless.enter(0, None);
        assert!(
            !endless.takes(start),
            "a period with no end in reach: the clock decides"
        );
    }
}
