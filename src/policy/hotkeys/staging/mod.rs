//! What the summaries are handed: the commands seen since they were last brought up to date.
//!
//! Updating the summaries is the dear part of hot keys: a key is folded into its pattern, and
//! four summaries (keys and patterns, by requests and by bytes) each find it, move it in their
//! heap, or weigh it against their filter. Done per command, that cost more than forwarding the
//! command. Staging adds a command's counts to its key's entry in one hash table instead, and
//! hands the summaries each key once, with everything its commands added: at the first count
//! or report after the shortest window's period ends, at every report, and when the table is
//! full. A key asked for a hundred times between flushes is folded and ranked once.
//!
//! A table of every key still costs a random update per command in a table as large as the
//! working set, so a [`Sketch`] comes first: while a key has left no more than a small share
//! of the stage's commands and bytes in it, its command raises two cells of a table that stays
//! in the cache; the other commands are staged. The summaries of keys add the most one key
//! left in the sketch to each count and error, so counts stay upper bounds; patterns get the
//! sketch's commands from a sample of one in [`PATTERN_SAMPLE`], counted that many times over,
//! which folds few keys.
//!
//! Staged counts are exact (but for keys whose hashes agree in the 56 bits an entry keeps, see
//! [`Staged`]); the summaries take weighted observations, and only the order in which keys
//! arrive differs, which Space-Saving's bounds do not depend on.

mod entry;
mod sketch;

use hashbrown::{HashMap, HashTable};
use quanta::Instant;
use rustc_hash::FxHashMap;

use super::fold;
use super::key_hash::key_hash;
#[cfg(doc)]
use super::space_saving::INLINE_KEY;
use super::space_saving::{HeldKey, Tally};
use super::windows::{Of, Period};
use super::By;
pub use entry::Counts;
use entry::{identity, placement, Staged, Sums};
use sketch::{Sketch, Weight};

/// One in this many commands the sketch takes is folded into its pattern, which counts it
/// this many times: folding every command would cost more than staging it.
pub const PATTERN_SAMPLE: u64 = 16;

/// Keys (and sampled patterns) staged per counter of a summary before the stage is flushed. A full
/// stage of the default 1,024 counters holds 16,384 keys in a table of 32,768 slots of 17 bytes (an
/// entry and a control byte): 557 KB, plus the keys themselves in a list of their own (32 bytes
/// each, and an allocation for each key longer than [`INLINE_KEY`], up to 3.6 MB more with the
/// longest keys kept), and 50 to 100 bytes (48 and the map's slack) for each key that outgrew its
/// entry in the period. Sampled patterns count towards the limit too (each about 100 bytes and its
/// pattern), and the sketch takes 64 KiB (8 bytes for each of 4 cells per counter in each of two
/// rows, rounded up to a power of two: 64 to 128 bytes per counter, at most 1 MiB). Up to three
/// stages and their sketches can exist at once, when a flush waits for another's fold (the next
/// stage is made, sized like the last, before the wait). A flush holds the summaries for as long as
/// its keys take to fold and rank (a few milliseconds when full); in exchange a working set of up
/// to this many keys per counter reaches the summaries once per period.
pub const STAGED_PER_COUNTER: usize = 16;

pub struct Staging {
    /// The staged keys' counts, by hash: one place to look, a quarter of a cache line each.
    /// A staged command reads nothing else but the sketch's cells and the table's control
    /// bytes: a stage of 10,000 keys is updated at random over 256 KB.
    staged: HashTable<Staged>,
    /// The staged keys, in the order they came, read only when the stage is flushed.
    keys: Vec<HeldKey>,
    /// The counts of keys that outgrew their entries, by the keys' [`identity`].
    spilled: FxHashMap<u64, Sums>,
    limit: usize,
    /// The period of the shortest window the staged counts fall in (none while empty).
    period: Option<u64>,
    /// When that period ends: counts seen before then join it without the clock's
    /// arithmetic, which costs as much as a hash of the key.
    period_ends: Option<Instant>,
    /// Where each key is folded into its pattern, one buffer for all of them.
    pattern: Vec<u8>,
    /// Where commands of keys too light to stage are counted.
    sketch: Sketch,
    /// The patterns of the sampled commands the sketch took, with their counts scaled.
    /// Seeded like the keys' hash: clients choose the patterns.
    sampled_patterns: HashMap<Vec<u8>, Sums, foldhash::fast::RandomState>,
    /// Commands the sketch takes before the next one sampled for its pattern, and the state of
    /// the generator drawing those gaps.
    until_sample: u64,
    sampler: u64,
}

impl Staging {
    /// A stage for summaries of `capacity` counters.
    pub fn new(capacity: usize) -> Staging {
        Staging {
            staged: HashTable::new(),
            keys: Vec::new(),
            spilled: FxHashMap::default(),
            // The table places keys by at most the low 32 bits of their hash (see `entry`),
            // which 2^31 keys need.
            limit: capacity.saturating_mul(STAGED_PER_COUNTER).min(1 << 31),
            period: None,
            period_ends: None,
            pattern: Vec::new(),
            sketch: Sketch::new(capacity),
            sampled_patterns: HashMap::default(),
            until_sample: 0,
            sampler: 0x2545_f491_4f6c_dd1d,
        }
    }

    /// A stage for summaries of `capacity` counters whose sketch takes nothing, for tests of
    /// what the stage does with the commands it is given.
    #[cfg(test)]
    fn exact(capacity: usize) -> Staging {
        Staging {
            sketch: Sketch::taking_nothing(),
            ..Staging::new(capacity)
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
            sketch: flushed.sketch.emptied(),
            sampled_patterns: HashMap::default(),
            until_sample: flushed.until_sample,
            sampler: flushed.sampler,
        }
    }

    /// The period the staged counts fall in, if any are staged.
    pub fn period(&self) -> Option<u64> {
        self.period
    }

    /// Whether the stage holds as many keys as it may: it must be flushed before more come.
    pub fn is_full(&self) -> bool {
        self.staged.len() + self.sampled_patterns.len() >= self.limit
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
        if self.sketch.keeps(hash, counts.bytes()) {
            if self.until_sample == 0 {
                self.sample_pattern(key, counts);
            } else {
                self.until_sample -= 1;
            }
            return;
        }
        let identity = identity(hash);
        let staged = match self
            .staged
            .find_mut(placement(hash), |staged| staged.is(identity))
        {
            Some(staged) => staged,
            None => {
                self.keys.push(HeldKey::from_slice(key));
                self.staged
                    .insert_unique(placement(hash), Staged::new(hash), |staged| {
                        staged.placement()
                    })
                    .into_mut()
            }
        };
        if !staged.try_add(counts) {
            spill(staged, identity, counts, &mut self.spilled);
        }
    }

    /// Counts a command the sketch took for its key's pattern, as many times as one is
    /// sampled in, and draws how many go by before the next: evenly from 0 to twice the
    /// average, so that no pipeline of a fixed length falls in step with the sampling. Out of
    /// line: one command in 16 of those the sketch takes comes here.
    #[inline(never)]
    fn sample_pattern(&mut self, key: &[u8], counts: Counts) {
        fold::fold(key, &mut self.pattern);
        let scaled = Sums::from(counts).times(PATTERN_SAMPLE);
        match self.sampled_patterns.get_mut(&self.pattern[..]) {
            Some(sums) => *sums += scaled,
            None => {
                self.sampled_patterns.insert(self.pattern.clone(), scaled);
            }
        }
        // xorshift64*: a few instructions, and the sketch's keys cannot steer it.
        self.sampler ^= self.sampler >> 12;
        self.sampler ^= self.sampler << 25;
        self.sampler ^= self.sampler >> 27;
        let draw = self.sampler.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        self.until_sample = draw % (2 * PATTERN_SAMPLE - 1);
    }

    /// Hands every staged key to `period`'s summaries, with its pattern, then the sampled
    /// patterns, and what the sketch kept to the summaries of keys.
    pub fn flush_into(mut self, period: &mut Period) {
        let mut taken = Weight::default();
        for key in &self.keys {
            let key = &key[..];
            let hash = key_hash(key);
            let identity = identity(hash);
            let found = self
                .staged
                .find(placement(hash), |staged| staged.is(identity));
            debug_assert!(found.is_some(), "a key is listed when its entry is made");
            let Some(staged) = found else {
                continue;
            };
            let mut sums = staged.sums();
            if let Some(spilled) = self.spilled.get(&identity) {
                sums += *spilled;
            }
            taken.requests += sums.requests;
            taken.bytes += sums.bytes;
            fold::fold(key, &mut self.pattern);
            hand_over(period, Of::Keys, key, hash, sums);
            let pattern_hash = key_hash(&self.pattern);
            hand_over(period, Of::Patterns, &self.pattern, pattern_hash, sums);
        }
        for (pattern, sums) in &self.sampled_patterns {
            hand_over(period, Of::Patterns, pattern, key_hash(pattern), *sums);
        }
        // What the stage did not take, the sketch did (every command staged was offered first).
        let (offered, bounds) = (self.sketch.offered(), self.sketch.bounds());
        debug_assert!(offered.requests >= taken.requests && offered.bytes >= taken.bytes);
        period.summary_mut(Of::Keys, By::Requests).count_unstaged(
            offered.requests.saturating_sub(taken.requests),
            bounds.requests,
        );
        period
            .summary_mut(Of::Keys, By::Bytes)
            .count_unstaged(offered.bytes.saturating_sub(taken.bytes), bounds.bytes);
    }
}

/// Moves an entry's counts and a command's that did not fit in it to the key's full-width
/// counts in `spilled`.
#[cold]
fn spill(staged: &mut Staged, identity: u64, counts: Counts, spilled: &mut FxHashMap<u64, Sums>) {
    let mut sums = staged.take();
    sums += Sums::from(counts);
    *spilled.entry(identity).or_default() += sums;
}

/// Hands a key's (or a pattern's) counts to `period`'s summaries of `of`, by requests and by
/// bytes.
fn hand_over(period: &mut Period, of: Of, key: &[u8], hash: u64, sums: Sums) {
    for by in [By::Requests, By::Bytes] {
        period
            .summary_mut(of, by)
            .observe(key, hash, tally(sums, by));
    }
}

/// What a key's counts add to a summary ranking `by` requests or bytes.
fn tally(sums: Sums, by: By) -> Tally {
    match by {
        By::Requests => Tally {
            count: sums.requests,
            error: 0,
            writes: sums.writes,
            outbound: 0,
        },
        By::Bytes => Tally {
            count: sums.bytes,
            error: 0,
            writes: sums.write_bytes,
            outbound: sums.outbound,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::hotkeys::space_saving::INLINE_KEY;
    use crate::policy::hotkeys::zipf::zipf_stream;

    /// The period a stage for four counters hands `commands` to.
    fn flushed(commands: &[(&[u8], Counts)]) -> Period {
        let mut staging = Staging::exact(4);
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
            (b"user:1", Counts::of(false, 20, 10)),
            (b"user:2", Counts::of(true, 30, 5)),
            (b"user:1", Counts::of(true, 20, 5)),
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

    /// Keys found again after the table grew many times, spilled ones among them: a pattern
    /// gets every request and byte its keys were sent.
    #[test]
    fn a_grown_stage_hands_over_every_count() {
        let keys: Vec<String> = (0..1_000).map(|n| format!("user:{n}")).collect();
        let mut commands = Vec::new();
        for (n, key) in keys.iter().enumerate() {
            let times = if n % 100 == 0 { 1_500 } else { 3 };
            let counts = Counts::of(n % 2 == 0, 40, 30);
            commands.extend(std::iter::repeat_n((key.as_bytes(), counts), times));
        }
        let mut staging = Staging::exact(64);
        staging.enter(0, None);
        for &(key, counts) in &commands {
            staging.add(key, counts);
        }
        let mut period = Period::new(64);
        staging.flush_into(&mut period);
        let sent = commands.len() as u64;
        let pattern = |by| {
            let summary = period.summary(Of::Patterns, by);
            summary
                .counters()
                .find(|c| c.key == b"user:*")
                .unwrap()
                .tally
        };
        assert_eq!(pattern(By::Requests).count, sent);
        let bytes = pattern(By::Bytes);
        assert_eq!((bytes.count, bytes.outbound), (sent * 70, sent * 30));
    }

    /// With the sketch taking most commands of a skewed stream, and several stages flushed into
    /// one period, every key's count in the summaries of keys is still an upper bound,
    /// `count - error` a lower one, and a key not held had at most the bound, by requests and
    /// by bytes; patterns get about every command.
    #[test]
    fn counts_stay_within_the_bound_with_the_sketch_in_front() {
        const COUNTERS: usize = 64;
        let stream = zipf_stream(50_000, 300_000, 0xb007_d5e1);
        let mut staging = Staging::new(COUNTERS);
        staging.enter(0, None);
        let mut period = Period::new(COUNTERS);
        let (mut flushes, mut staged) = (0, 0);
        let mut exact: FxHashMap<String, Sums> = FxHashMap::default();
        for (n, key) in stream.iter().enumerate() {
            // Stages are flushed into the same period for a report, as hot keys do (these
            // never fill).
            if n > 0 && n % 50_000 == 0 {
                let fresh = Staging::succeeding(&staging);
                staged += staging.keys.len();
                std::mem::replace(&mut staging, fresh).flush_into(&mut period);
                staging.enter(0, None);
                flushes += 1;
            }
            let key = format!("k:{key}");
            let counts = Counts::of(n % 3 == 0, 30 + n as u64 % 50, 10);
            staging.add(key.as_bytes(), counts);
            *exact.entry(key).or_default() += Sums::from(counts);
        }
        staged += staging.keys.len();
        staging.flush_into(&mut period);
        assert_eq!(flushes, 5);
        let seen = exact.len();
        assert!(staged * 2 < seen, "{staged} keys staged of {seen}");
        for (by, truth) in [
            (
                By::Requests,
                (|sums: &Sums| sums.requests) as fn(&Sums) -> u64,
            ),
            (By::Bytes, |sums: &Sums| sums.bytes),
        ] {
            let summary = period.summary(Of::Keys, by);
            assert_eq!(summary.total(), exact.values().map(truth).sum::<u64>());
            let bound = summary.bound();
            assert!(
                bound <= summary.total() * 3 / 2 / COUNTERS as u64,
                "{by:?}: {bound}"
            );
            let mut held = FxHashMap::default();
            for counted in summary.counters() {
                let true_count = truth(&exact[std::str::from_utf8(counted.key).unwrap()]);
                let Tally { count, error, .. } = counted.tally;
                assert!(count >= true_count && count - error <= true_count, "{by:?}");
                assert!(error <= bound);
                held.insert(counted.key.to_vec(), ());
            }
            for (key, sums) in &exact {
                if !held.contains_key(key.as_bytes()) {
                    assert!(truth(sums) <= bound, "{by:?}: {key} not held");
                }
            }
        }
        let patterns = period.summary(Of::Patterns, By::Requests);
        let pattern = patterns.counters().find(|c| c.key == b"k:*").unwrap();
        assert!(pattern.tally.count.abs_diff(300_000) < 6_000, "{pattern:?}");
    }

    #[test]
    fn keys_longer_than_held_inline_are_staged_whole() {
        let long = "user:".repeat(20);
        let period = flushed(&[
            (long.as_bytes(), Counts::of(false, 1, 1)),
            (long.as_bytes(), Counts::of(true, 1, 1)),
            (&long.as_bytes()[..INLINE_KEY], Counts::of(false, 1, 1)),
        ]);
        let whole = tally(&period, By::Requests, long.as_bytes());
        assert_eq!((whole.count, whole.writes), (2, 1));
        let keys = period.summary(Of::Keys, By::Requests).counters().count();
        assert_eq!(keys, 2);
    }

    /// A key asked for more often than its entry counts keeps every request and byte: the
    /// entry's counts move aside each time they fill it, and the flush adds them back.
    #[test]
    fn counts_past_an_entry_are_kept_whole() {
        let read = (&b"busy"[..], Counts::of(false, 30, 70));
        let write = (&b"busy"[..], Counts::of(true, 90, 5));
        let mut commands = vec![read; 5_000];
        commands.extend([write; 3_000]);
        commands.push((b"quiet", Counts::of(false, 1, 2)));
        let period = flushed(&commands);
        let requests = tally(&period, By::Requests, b"busy");
        assert_eq!((requests.count, requests.writes), (8_000, 3_000));
        let bytes = tally(&period, By::Bytes, b"busy");
        assert_eq!(
            (bytes.count, bytes.writes, bytes.outbound),
            (5_000 * 100 + 3_000 * 95, 3_000 * 95, 5_000 * 70 + 3_000 * 5)
        );
        let quiet = tally(&period, By::Bytes, b"quiet");
        assert_eq!((quiet.count, quiet.outbound), (3, 2));
    }

    /// A key whose byte counts outgrow its entry keeps every byte: its entry's counts move
    /// aside, and the flush adds them back.
    #[test]
    fn byte_counts_past_an_entry_are_kept_whole() {
        let big = u64::from(u32::MAX) - 10;
        let period = flushed(&[
            (b"big", Counts::of(true, 20, big)),
            (b"big", Counts::of(false, 5, 6)),
            (b"big", Counts::of(true, 30, 40)),
            (b"small", Counts::of(false, 1, 2)),
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
        let mut staging = Staging::exact(1);
        staging.enter(3, None);
        for n in 0..STAGED_PER_COUNTER {
            assert!(!staging.is_full());
            staging.add(format!("k{n}").as_bytes(), Counts::of(false, 1, 1));
            staging.add(b"k0", Counts::of(false, 1, 1));
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
        let mut staging = Staging::exact(1);
        assert!(!staging.takes(start), "nothing entered yet");
        staging.enter(4, Some(start + second * 50));
        staging.enter(3, Some(start + second * 40));
        assert_eq!(staging.period(), Some(4));
        assert!(staging.takes(start + second * 49));
        assert!(!staging.takes(start + second * 50));
        for n in 0..STAGED_PER_COUNTER {
            staging.add(format!("k{n}").as_bytes(), Counts::of(false, 1, 1));
        }
        assert!(!staging.takes(start), "full");
        let mut endless = Staging::exact(1);
        endless.enter(0, None);
        assert!(
            !endless.takes(start),
            "a period with no end in reach: the clock decides"
        );
    }
}
