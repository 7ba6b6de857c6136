//! A count-min sketch in front of the stage, so that only keys with a real share of a stage's
//! commands or bytes take an entry of their own.
//!
//! Staging every key costs a random update in a table as large as the stage's working set:
//! over 10,000 keys, about a tenth of what keyward spends on a pipelined `GET` (BENCHMARKS.md,
//! twenty-sixth and twenty-seventh rounds). A command whose key has left at most `1 / share`
//! of the stage's commands and bytes so far in the sketch (`share` is twice the summaries'
//! capacity, rounded up to a power of two) adds to two cells of a table of a few tens of
//! kilobytes instead, which stays in the cache; the other commands are staged. The first
//! `share` commands of a stage are all staged, so a quiet proxy counts every command exactly.
//!
//! Conservative update (a cell grows only as far as the key's new estimate) keeps every
//! estimate at or above what its key left in the sketch, and every cell at or below the
//! share in force when it was written. A busy key is staged but for the commands that follow
//! the share up as the stage's total grows: what any key left in the sketch is at most the
//! largest cell, [`bounds`](Sketch::bounds), which never exceeds the stage's total divided by
//! `share`. The summaries add it to every count and error they report, and a key that never
//! reached the stage had no more than it.

/// Cells per summary counter in each of the two rows: more cells, fewer keys share one, and
/// fewer light keys look heavy enough to be staged.
const CELLS_PER_COUNTER: usize = 4;
/// Cells per row at most (512 KiB a row): a larger `capacity` stages more keys instead.
const MAX_CELLS: usize = 1 << 16;
/// The most a half of a cell holds.
const HALF: u64 = u32::MAX as u64;

/// Requests and bytes: offered to the sketch, or the most one key left there.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Weight {
    pub requests: u64,
    pub bytes: u64,
}

pub struct Sketch {
    /// Two rows of cells; each cell holds a request count in its low 32 bits and a byte count
    /// in its high 32, so one command reads and writes two words.
    cells: Box<[u64]>,
    row_mask: u64,
    /// Log2 of `share`: a threshold is a total shifted right by it.
    share_shift: u32,
    /// Every command and byte offered since the stage began, staged or not: what the stage
    /// did not take, the sketch did.
    offered: Weight,
}

impl Sketch {
    /// A sketch for summaries of `capacity` counters.
    pub fn new(capacity: usize) -> Sketch {
        // As the summaries do: past that, the share only grows beyond any stage's total, and
        // the stage takes every command.
        let capacity = capacity.clamp(1, u32::MAX as usize);
        let row = (capacity.saturating_mul(CELLS_PER_COUNTER))
            .clamp(1, MAX_CELLS)
            .next_power_of_two();
        Sketch {
            cells: vec![0; 2 * row].into_boxed_slice(),
            row_mask: row as u64 - 1,
            share_shift: capacity
                .saturating_mul(2)
                .next_power_of_two()
                .trailing_zeros(),
            offered: Weight::default(),
        }
    }

    /// A sketch that takes no command, so that tests of the stage see every command staged.
    #[cfg(test)]
    pub fn taking_nothing() -> Sketch {
        Sketch {
            share_shift: 63,
            ..Sketch::new(1)
        }
    }

    /// An empty sketch of the same size, for the stage after this one.
    pub fn emptied(&self) -> Sketch {
        Sketch {
            cells: vec![0; self.cells.len()].into_boxed_slice(),
            offered: Weight::default(),
            ..*self
        }
    }

    /// Counts a command of `bytes` for the key of `hash` in the sketch, if the key's estimate
    /// stays within the stage's share with it; otherwise leaves the sketch as it was and
    /// answers false: the command must be staged.
    #[inline]
    pub fn keeps(&mut self, hash: u64, bytes: u64) -> bool {
        let request_share = (self.offered.requests >> self.share_shift).min(HALF);
        let byte_share = (self.offered.bytes >> self.share_shift).min(HALF);
        self.offered.requests += 1;
        self.offered.bytes += bytes;
        // Each row from bits of its own: rows taken from the same bits would make the same
        // keys collide in both.
        let first = ((hash >> 32) & self.row_mask) as usize;
        let second = (self.row_mask + 1 + ((hash >> 48) & self.row_mask)) as usize;
        let (a, b) = (self.cells[first], self.cells[second]);
        let requests = (a & HALF).min(b & HALF) + 1;
        let key_bytes = (a >> 32).min(b >> 32).saturating_add(bytes);
        if requests > request_share || key_bytes > byte_share {
            return false;
        }
        for place in [first, second] {
            let cell = self.cells[place];
            self.cells[place] = (cell & HALF).max(requests) | (cell >> 32).max(key_bytes) << 32;
        }
        true
    }

    /// Every command and byte offered, staged or not.
    pub fn offered(&self) -> Weight {
        self.offered
    }

    /// The most weight (requests, bytes) any one key left in the sketch: its largest cells.
    pub fn bounds(&self) -> Weight {
        self.cells
            .iter()
            .fold(Weight::default(), |bounds, &cell| Weight {
                requests: bounds.requests.max(cell & HALF),
                bytes: bounds.bytes.max(cell >> 32),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::hotkeys::key_hash::key_hash;
    use crate::policy::hotkeys::zipf::zipf_stream;
    use rustc_hash::FxHashMap;

    #[test]
    fn a_stages_first_commands_are_all_staged() {
        let mut sketch = Sketch::new(1024);
        for n in 0..2048u64 {
            assert!(!sketch.keeps(key_hash(&n.to_le_bytes()), 10));
        }
        assert_eq!(sketch.bounds(), Weight::default());
        assert!(
            sketch.keeps(key_hash(b"light"), 10),
            "the share is one command now"
        );
        let one = Weight {
            requests: 1,
            bytes: 10,
        };
        assert_eq!(sketch.bounds(), one);
    }

    /// Over a skewed stream, the heavy keys are staged, most commands are not, and no key left
    /// more in the sketch than its bounds, which stay within the total's share.
    #[test]
    fn what_a_key_leaves_in_the_sketch_is_within_its_bounds() {
        let mut sketch = Sketch::new(64);
        let mut left: FxHashMap<usize, Weight> = FxHashMap::default();
        let mut hottest_staged = 0;
        let mut bytes_offered: u64 = 0;
        let stream = zipf_stream(20_000, 200_000, 0x5ce7_c4a1);
        for (n, key) in stream.iter().enumerate() {
            let bytes = 20 + (n as u64 % 7) * 100;
            bytes_offered += bytes;
            let hash = key_hash(&key.to_le_bytes());
            if sketch.keeps(hash, bytes) {
                let key_left = left.entry(*key).or_default();
                key_left.requests += 1;
                key_left.bytes += bytes;
            } else if *key == 0 {
                hottest_staged += 1;
            }
        }
        let bounds = sketch.bounds();
        assert!(bounds.requests <= stream.len() as u64 / 128);
        assert!(bounds.bytes <= bytes_offered / 128);
        for key_left in left.values() {
            assert!(key_left.requests <= bounds.requests && key_left.bytes <= bounds.bytes);
        }
        let offered = sketch.offered();
        assert_eq!(
            (offered.requests, offered.bytes),
            (stream.len() as u64, bytes_offered)
        );
        let unstaged: u64 = left.values().map(|l| l.requests).sum();
        assert!(unstaged > stream.len() as u64 / 2, "{unstaged}");
        let hottest = stream.iter().filter(|key| **key == 0).count();
        assert!(
            hottest_staged * 10 > hottest * 9,
            "{hottest_staged} of {hottest}"
        );
    }

    /// A command too big for the key's share is staged even when the key is new.
    #[test]
    fn a_big_command_is_staged() {
        let mut sketch = Sketch::new(1);
        for n in 0..100u64 {
            sketch.keeps(key_hash(&n.to_le_bytes()), 10);
        }
        assert!(!sketch.keeps(key_hash(b"big"), 1 << 20));
        assert!(sketch.keeps(key_hash(b"small"), 1));
    }
}
