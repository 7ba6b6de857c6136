//! The Space-Saving heavy-hitter summary (Metwally, Agrawal, El Abbadi, 2005), weighted, and
//! mergeable so that longer windows can be built from the periods of the shortest.
//!
//! It keeps at most `capacity` counters. A key already counted gets the weight added; a new key
//! takes over the smallest counter, inheriting its count as possible overcount (`error`). For
//! every key held, `count - error <= true weight <= count`; a key not held has at most
//! [`bound`](SpaceSaving::bound). For a summary fed only by [`observe`](SpaceSaving::observe),
//! `bound` is the smallest count, which never exceeds `total / capacity`, so any key with more
//! than that is always held. Counters live in a min-heap, so an update costs O(log capacity).
//!
//! Observations go through a filter first (Filtered Space-Saving, Homem and Carvalho, 2010):
//! once the summary is full, a key it does not hold adds its weight to one of
//! [`FILTER_CELLS_PER_COUNTER`] × `capacity` cells picked by its hash, and takes over the
//! smallest counter only when its cell's weight would exceed that counter. A counter taken
//! over leaves its count in its own key's cell. So every key not held has at most its cell's
//! weight, which never exceeds the smallest count, and a key admitted inherits its cell's
//! weight as `error` rather than the smallest count: the guarantees above hold unchanged, the
//! errors are usually far smaller, and a key from the long tail costs one cell instead of a
//! takeover (on 10,000 keys drawn evenly with 1,024 counters, 9 in 10 commands would each
//! take a counter over; with the filter, about 1 in 10 does). The sum of the counts still
//! never exceeds the weight observed: a takeover raises the count it takes from the smallest,
//! which is at least the cell's weight, by no more than the observation's own weight.
//!
//! [`absorb`](SpaceSaving::absorb) adds another summary's counters. A key held here but not
//! there may have had up to the other's bound there, so it is credited with that, and the bound
//! grows by it; a key held there but not here may have had up to this summary's bound here,
//! which it inherits as count and error when it takes a counter. For a window absorbed from
//! periods of `N` total weight, `bound` stayed within `3N / capacity` on the Zipf streams of
//! the tests (the credits are at most the sum of the periods' bounds).
//!
//! Weight that reached no counter, because the stage's sketch kept it, is counted by
//! [`count_unstaged`](SpaceSaving::count_unstaged) with the most any one key had of it, `U`:
//! every count and error reported grows by `U`, and so does the bound. The sketch keeps `U`
//! within `N / (2 capacity)`, so the shortest window's bound stays within `1.5 N / capacity`,
//! and windows absorbed from such periods stayed within `4.5 N / capacity` in the tests.
//! Absorbing uses plain Space-Saving's takeover, and a summary that has absorbed stays with it:
//! the keys the absorbed summaries did not hold were never counted in its cells.

use hashbrown::HashTable;
use smallvec::SmallVec;

/// What one observation adds to a key's counter, in the summary's unit (requests or bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    /// Of `count`, how much may belong to other keys (0 for a fresh observation).
    pub error: u64,
    /// Of `count`, how much came from commands that write.
    pub writes: u64,
    /// Of `count`, how much went from Redis to the client (replies), the rest came in.
    pub outbound: u64,
}

/// A counted key, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted<'a> {
    pub key: &'a [u8],
    pub hash: u64,
    /// `count` is an upper bound of the key's true weight; `writes` and `outbound` are exact
    /// for the part of it counted since the key took its counter (`count - error`).
    pub tally: Tally,
}

/// Filter cells per counter: more cells mean fewer keys share one, so fewer tail keys reach
/// the smallest count and take a counter over. Rounded up to a power of two, they cost 64 to
/// 128 bytes per counter, in the summaries that observe (the shortest window's).
pub const FILTER_CELLS_PER_COUNTER: usize = 8;

/// A counter's key and everything but its count, which lives in the heap. One cache line:
/// an update touches memory the rest of the proxy has pushed out of the cache since the last
/// one, so what it touches is what it costs. Keys up to [`INLINE_KEY`] bytes live in the slot
/// itself.
#[derive(Debug, Clone)]
#[repr(align(64))]
struct Slot {
    key: HeldKey,
    hash: u64,
    error: u64,
    writes: u64,
    outbound: u64,
}

/// Key bytes held without an allocation of their own, in a summary's slot or a stage entry.
pub const INLINE_KEY: usize = 24;

/// A key as the summaries and the stage hold it: inline up to [`INLINE_KEY`] bytes.
pub type HeldKey = SmallVec<[u8; INLINE_KEY]>;

/// Whether a held key is `key`, compared without a call for the common lengths (8 to 16
/// bytes: `user:1234`, `session:ab12cd34`), where a call to `memcmp` costs more than the
/// comparison.
#[inline]
pub fn holds(held: &HeldKey, key: &[u8]) -> bool {
    let n = key.len();
    if held.len() != n {
        return false;
    }
    if (8..=16).contains(&n) {
        let word = |bytes: &[u8], at: usize| {
            u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
        };
        return word(held, 0) == word(key, 0) && word(held, n - 8) == word(key, n - 8);
    }
    held[..] == *key
}

/// Children per heap node: a wider heap is shallower, and a new key, which sinks to the
/// bottom when counts are even, moves through fewer levels.
const ARITY: usize = 4;

#[derive(Debug, Clone, Copy)]
struct HeapEntry {
    count: u64,
    slot: u32,
}

#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    /// The counters, each in a fixed slot for as long as it lives; a slot taken over keeps
    /// its key buffer, so a new key costs no allocation once the summary is full.
    slots: Vec<Slot>,
    /// A 4-ary min-heap by count. Counts sit in the heap itself, so sifting compares neighbouring
    /// entries instead of chasing slot numbers; a move touches `heap_position`, never the
    /// key index.
    heap: Vec<HeapEntry>,
    /// Each slot's place in `heap`.
    heap_position: Vec<u32>,
    /// Slot numbers by key hash. The hash is computed once per key and shared by every summary
    /// the key goes to (see [`key_hash`](super::key_hash::key_hash)).
    index: HashTable<u32>,
    /// The weight of keys not held, by cell (see the module's notes); allocated when a full
    /// summary first observes a key it does not hold, so summaries that never fill (a few
    /// patterns) or are only absorbed into (longer windows) cost nothing here.
    filter: Vec<u64>,
    /// Whether other summaries were absorbed into this one: the keys they did not hold were
    /// never counted in cells, so from then on a key not held takes a counter over at once, as
    /// in plain Space-Saving (never the case for the summaries that observe, which nothing is
    /// absorbed into).
    absorbed: bool,
    total: u64,
    /// Credited to keys by [`absorb`](Self::absorb) for summaries they were missing from.
    credited: u64,
    /// The most weight any key had that reached no counter (see
    /// [`count_unstaged`](Self::count_unstaged)): part of every count and error reported.
    unstaged_bound: u64,
}

impl SpaceSaving {
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.clamp(1, u32::MAX as usize),
            slots: Vec::new(),
            heap: Vec::new(),
            heap_position: Vec::new(),
            index: HashTable::new(),
            filter: Vec::new(),
            absorbed: false,
            total: 0,
            credited: 0,
            unstaged_bound: 0,
        }
    }

    /// Total weight observed.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn observe(&mut self, key: &[u8], hash: u64, tally: Tally) {
        self.total += tally.count;
        if let Some(slot) = self.find(key, hash) {
            self.increase(slot, tally);
        } else if self.slots.len() < self.capacity {
            self.push(key, hash, tally);
        } else if self.absorbed {
            self.add(key, hash, tally);
        } else {
            if self.filter.is_empty() {
                let cells = (self.capacity * FILTER_CELLS_PER_COUNTER).next_power_of_two();
                self.filter = vec![0; cells];
            }
            let cell = self.cell(hash);
            let seen = self.filter[cell];
            if seen + tally.count <= self.floor() {
                self.filter[cell] = seen + tally.count;
            } else {
                let inherited = Tally {
                    count: seen + tally.count,
                    error: seen + tally.error,
                    ..tally
                };
                self.take_over_smallest(key, hash, inherited);
            }
        }
    }

    /// Counts `weight` that reached no counter, spread over keys that each had at most `bound`
    /// of it (what the stage's sketch kept): every count and error reported, and the bound,
    /// grow by `bound`, so counts stay upper bounds and a key not held stays within the bound.
    pub fn count_unstaged(&mut self, weight: u64, bound: u64) {
        self.total += weight;
        self.unstaged_bound += bound;
    }

    /// Adds every counter of `other` (a summary of a later stretch of the same stream).
    pub fn absorb(&mut self, other: &SpaceSaving) {
        let was_empty = self.slots.is_empty();
        for counted in other.counters() {
            self.add(counted.key, counted.hash, counted.tally);
        }
        let credit = other.bound();
        // Filled from the other alone (with room for all its counters, so that none took
        // another over), a summary whose smallest count is the other's bound or more already
        // bounds every key it does not hold.
        let covered = was_empty && self.capacity >= other.capacity && self.floor() >= credit;
        if credit > 0 && !covered {
            for slot in 0..self.slots.len() {
                let held = &self.slots[slot];
                if other.find(&held.key, held.hash).is_none() {
                    self.slots[slot].error += credit;
                    self.heap[self.heap_position[slot] as usize].count += credit;
                }
            }
            // Counts only grew: one pass restores the heap.
            for index in (0..self.heap.len().div_ceil(ARITY)).rev() {
                self.sift_down(index);
            }
            self.credited += credit;
        }
        self.total += other.total;
        self.absorbed = true;
    }

    /// The most any key's count overstates, and the most a key not held can have had.
    pub fn bound(&self) -> u64 {
        self.floor() + self.credited + self.unstaged_bound
    }

    /// Every counter, in no particular order.
    pub fn counters(&self) -> impl Iterator<Item = Counted<'_>> {
        self.heap.iter().map(|entry| {
            let slot = &self.slots[entry.slot as usize];
            Counted {
                key: &slot.key,
                hash: slot.hash,
                tally: Tally {
                    count: entry.count + self.unstaged_bound,
                    error: slot.error + self.unstaged_bound,
                    writes: slot.writes,
                    outbound: slot.outbound,
                },
            }
        })
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.heap.clear();
        self.heap_position.clear();
        self.index.clear();
        self.filter.fill(0);
        self.absorbed = false;
        self.total = 0;
        self.credited = 0;
        self.unstaged_bound = 0;
    }

    fn find(&self, key: &[u8], hash: u64) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&slot| holds(&slots[slot as usize].key, key))
            .copied()
    }

    /// Adds a counter of another summary, which the filter has already seen through: a key not
    /// held takes a free counter or the smallest (plain Space-Saving).
    fn add(&mut self, key: &[u8], hash: u64, tally: Tally) {
        if let Some(slot) = self.find(key, hash) {
            self.increase(slot, tally);
            return;
        }
        // A key not held had at most the bound so far (what the stretches absorbed before had
        // of it included), which it inherits as count and error.
        let bound = self.floor() + self.credited;
        let inherited = Tally {
            count: bound + tally.count,
            error: bound + tally.error,
            ..tally
        };
        if self.slots.len() < self.capacity {
            self.push(key, hash, inherited);
        } else {
            self.take_over_smallest(key, hash, inherited);
        }
    }

    fn increase(&mut self, slot: u32, tally: Tally) {
        let held = &mut self.slots[slot as usize];
        held.error += tally.error;
        held.writes += tally.writes;
        held.outbound += tally.outbound;
        let position = self.heap_position[slot as usize] as usize;
        self.heap[position].count += tally.count;
        self.sift_down(position);
    }

    fn push(&mut self, key: &[u8], hash: u64, tally: Tally) {
        let slot = self.slots.len() as u32;
        self.slots.push(Slot {
            key: HeldKey::from_slice(key),
            hash,
            error: tally.error,
            writes: tally.writes,
            outbound: tally.outbound,
        });
        self.heap.push(HeapEntry {
            count: tally.count,
            slot,
        });
        self.heap_position.push(self.heap.len() as u32 - 1);
        self.sift_up(self.heap.len() - 1);
        self.index_slot(hash, slot);
    }

    /// Gives the smallest counter to `key`, with `tally` already including what it inherits.
    /// The key evicted leaves its count in its filter cell, which keeps that cell an upper
    /// bound of every key there that is not held.
    fn take_over_smallest(&mut self, key: &[u8], hash: u64, tally: Tally) {
        let HeapEntry {
            count: evicted,
            slot,
        } = self.heap[0];
        let old_hash = self.slots[slot as usize].hash;
        if let Ok(entry) = self.index.find_entry(old_hash, |&held| held == slot) {
            entry.remove();
        }
        if !self.filter.is_empty() {
            let cell = self.cell(old_hash);
            self.filter[cell] = self.filter[cell].max(evicted);
        }
        let taken = &mut self.slots[slot as usize];
        taken.key.clear();
        taken.key.extend_from_slice(key);
        taken.hash = hash;
        taken.error = tally.error;
        taken.writes = tally.writes;
        taken.outbound = tally.outbound;
        self.heap[0].count = tally.count;
        self.sift_down(0);
        self.index_slot(hash, slot);
    }

    fn index_slot(&mut self, hash: u64, slot: u32) {
        let slots = &self.slots;
        self.index
            .insert_unique(hash, slot, |&held| slots[held as usize].hash);
    }

    /// The filter cell of a key's hash (once there is a filter). The index takes a hash's
    /// low bits and top seven, so the cell comes from bits in between.
    fn cell(&self, hash: u64) -> usize {
        (hash >> 24) as usize & (self.filter.len() - 1)
    }

    /// The smallest count held once full: the most a key never held can have been seen.
    fn floor(&self) -> u64 {
        if self.slots.len() < self.capacity {
            0
        } else {
            self.heap.first().map_or(0, |entry| entry.count)
        }
    }

    fn sift_up(&mut self, mut index: usize) {
        let moving = self.heap[index];
        while index > 0 {
            let parent = (index - 1) / ARITY;
            if self.heap[parent].count <= moving.count {
                break;
            }
            self.place(index, self.heap[parent]);
            index = parent;
        }
        self.place(index, moving);
    }

    /// Moves the entry at `index` down past every child with a smaller count. The entry is
    /// written once, where it stops; the children it passes move up one level each.
    fn sift_down(&mut self, mut index: usize) {
        let moving = self.heap[index];
        let len = self.heap.len();
        loop {
            let first = ARITY * index + 1;
            if first >= len {
                break;
            }
            let mut child = first;
            for other in first + 1..(first + ARITY).min(len) {
                if self.heap[other].count < self.heap[child].count {
                    child = other;
                }
            }
            if self.heap[child].count >= moving.count {
                break;
            }
            self.place(index, self.heap[child]);
            index = child;
        }
        self.place(index, moving);
    }

    fn place(&mut self, index: usize, entry: HeapEntry) {
        self.heap[index] = entry;
        self.heap_position[entry.slot as usize] = index as u32;
    }
}

#[cfg(test)]
mod tests;
