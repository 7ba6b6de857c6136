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
//! The summaries take weighted observations, and staged counts are exact, so their guarantees
//! hold unchanged; only the order in which keys arrive differs, which Space-Saving's bounds do
//! not depend on.

use std::ops::AddAssign;

use hashbrown::HashTable;
use quanta::Instant;

use super::fold;
use super::key_hash::key_hash;
#[cfg(doc)]
use super::space_saving::INLINE_KEY;
use super::space_saving::{holds, HeldKey, Tally};
use super::windows::{Of, Period};
use super::By;

/// Keys staged per counter of a summary before the stage is flushed. A full stage of the
/// default 1,024 counters holds 16,384 keys in a table of 32,768 slots of 65 bytes (an entry
/// and a control byte): 2.1 MB, plus an allocation for each key longer than [`INLINE_KEY`]
/// (up to 3.6 MB more with the longest keys kept). Two full stages can exist at once, when a
/// flush waits for another's fold. A flush holds the summaries for as long as its keys take to
/// fold and rank (a few milliseconds when full); in exchange a working set of up to this many
/// keys per counter reaches the summaries once per period.
pub const STAGED_PER_COUNTER: usize = 16;

/// A staged key and what its commands added, in one cache line: an update reads the table's
/// control bytes and this line, and nothing else for a key of up to [`INLINE_KEY`] bytes.
#[repr(align(64))]
struct Staged {
    key: HeldKey,
    /// Saturating: more than four billion requests for one key within one period of the
    /// shortest window (over a million a second for an hour) are counted as four billion.
    requests: u32,
    /// Of `requests`, from commands that write.
    writes: u32,
    /// Bytes in and out together, of all commands and of those that write.
    bytes: u64,
    write_bytes: u64,
    /// Of `bytes`, what went out with replies.
    outbound: u64,
}

const _: () = assert!(std::mem::size_of::<Staged>() == 64);

/// One command's counts for one of its keys.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Bytes it brought in for the key and took back out.
    pub inbound: u64,
    pub outbound: u64,
    pub write: bool,
}

impl Staged {
    fn add(&mut self, counts: Counts) {
        let bytes = counts.inbound + counts.outbound;
        let write = u64::from(counts.write);
        self.requests = self.requests.saturating_add(1);
        self.writes = self.writes.saturating_add(u32::from(counts.write));
        self.bytes += bytes;
        self.write_bytes += bytes * write;
        self.outbound += counts.outbound;
    }

    /// What the staged commands add to a summary ranking `by` requests or bytes.
    fn tally(&self, by: By) -> Tally {
        match by {
            By::Requests => Tally {
                count: u64::from(self.requests),
                error: 0,
                writes: u64::from(self.writes),
                outbound: 0,
            },
            By::Bytes => Tally {
                count: self.bytes,
                error: 0,
                writes: self.write_bytes,
                outbound: self.outbound,
            },
        }
    }
}

pub struct Staging {
    /// The staged keys by hash, their counts held in the table itself: one place to look.
    staged: HashTable<Staged>,
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
            limit: capacity.saturating_mul(STAGED_PER_COUNTER),
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
        let found = self.staged.find_mut(hash, |staged| holds(&staged.key, key));
        if let Some(staged) = found {
            staged.add(counts);
            return;
        }
        let mut fresh = Staged {
            key: HeldKey::from_slice(key),
            requests: 0,
            writes: 0,
            bytes: 0,
            write_bytes: 0,
            outbound: 0,
        };
        fresh.add(counts);
        self.staged
            .insert_unique(hash, fresh, |staged| key_hash(&staged.key));
    }

    /// Hands every staged key to `period`'s summaries, with its pattern.
    pub fn flush_into(mut self, period: &mut Period) {
        for staged in &self.staged {
            let key = &staged.key[..];
            let hash = key_hash(key);
            fold::fold(key, &mut self.pattern);
            let pattern_hash = key_hash(&self.pattern);
            for by in [By::Requests, By::Bytes] {
                let tally = staged.tally(by);
                period.summary_mut(Of::Keys, by).observe(key, hash, tally);
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

    #[test]
    fn a_flush_hands_each_key_once_with_its_sums() {
        let mut staging = Staging::new(4);
        staging.enter(0, None);
        staging.add(b"user:1", counts(false, 20, 10));
        staging.add(b"user:2", counts(true, 30, 5));
        staging.add(b"user:1", counts(true, 20, 5));
        let mut period = Period::new(4);
        staging.flush_into(&mut period);
        let requests: Vec<_> = period.summary(Of::Keys, By::Requests).counters().collect();
        let user_1 = requests.iter().find(|c| c.key == b"user:1").unwrap();
        assert_eq!((user_1.tally.count, user_1.tally.writes), (2, 1));
        let bytes: Vec<_> = period.summary(Of::Keys, By::Bytes).counters().collect();
        let user_1 = bytes.iter().find(|c| c.key == b"user:1").unwrap();
        assert_eq!(
            (
                user_1.tally.count,
                user_1.tally.writes,
                user_1.tally.outbound
            ),
            (55, 25, 15)
        );
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
    fn keys_longer_than_an_entry_holds_are_staged_whole() {
        let long = "user:".repeat(20);
        let mut staging = Staging::new(4);
        staging.enter(0, None);
        staging.add(long.as_bytes(), counts(false, 1, 1));
        staging.add(long.as_bytes(), counts(true, 1, 1));
        staging.add(&long.as_bytes()[..INLINE_KEY], counts(false, 1, 1));
        let mut period = Period::new(4);
        staging.flush_into(&mut period);
        let requests: Vec<_> = period.summary(Of::Keys, By::Requests).counters().collect();
        let whole = requests.iter().find(|c| c.key == long.as_bytes()).unwrap();
        assert_eq!((whole.tally.count, whole.tally.writes), (2, 1));
        assert_eq!(requests.len(), 2);
    }

    #[test]
    fn request_counts_saturate_instead_of_wrapping() {
        let mut staged = Staged {
            key: HeldKey::from_slice(b"k"),
            requests: u32::MAX - 1,
            writes: u32::MAX,
            bytes: 0,
            write_bytes: 0,
            outbound: 0,
        };
        staged.add(counts(true, 1, 1));
        staged.add(counts(true, 1, 1));
        assert_eq!((staged.requests, staged.writes), (u32::MAX, u32::MAX));
        assert_eq!(staged.bytes, 4);
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
