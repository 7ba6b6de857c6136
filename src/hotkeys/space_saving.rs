//! The Space-Saving heavy-hitter summary (Metwally, Agrawal, El Abbadi, 2005).
//!
//! It keeps at most `capacity` counters. A key already counted is incremented; a new key takes
//! over the smallest counter, inheriting its count as possible overcount (`error`). For every
//! key reported, `count - error <= true count <= count`, and `error <= total / capacity`; any
//! key whose true count exceeds `total / capacity` is always present. Counters live in a
//! min-heap (indexed by key), so an update costs O(log capacity).

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

/// One counted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub key: Box<[u8]>,
    /// Upper bound of the key's true count.
    pub count: u64,
    /// How much of `count` may belong to keys that held this counter before.
    pub error: u64,
    /// Of the observations since this key took the counter: writes (the rest are reads).
    pub writes: u64,
}

#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    /// The counters, each in a fixed slot for as long as it lives.
    slots: Vec<Counted>,
    /// Each slot's key hash.
    hashes: Vec<u64>,
    /// Slot numbers as a min-heap by count. Heap moves touch only these numbers and
    /// `heap_position`, never the key index: with many keys of equal count (a uniform stream)
    /// a new key sinks through many levels, and rehashing keys at each step dominated.
    heap: Vec<u32>,
    /// Each slot's place in `heap`.
    heap_position: Vec<u32>,
    /// Slot numbers by key hash. The hash is computed once per key and shared by every summary
    /// the key goes to (see [`key_hash`]).
    index: HashTable<u32>,
    total: u64,
}

/// The hash summaries index a key by.
pub fn key_hash(key: &[u8]) -> u64 {
    FxBuildHasher.hash_one(key)
}

impl SpaceSaving {
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.clamp(1, u32::MAX as usize),
            slots: Vec::new(),
            hashes: Vec::new(),
            heap: Vec::new(),
            heap_position: Vec::new(),
            index: HashTable::new(),
            total: 0,
        }
    }

    /// Total weight observed.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn observe(&mut self, key: &[u8], weight: u64, write: bool) {
        self.observe_hashed(key, key_hash(key), weight, write);
    }

    /// [`observe`](Self::observe) with the key's [`key_hash`] already computed.
    pub fn observe_hashed(&mut self, key: &[u8], hash: u64, weight: u64, write: bool) {
        self.total += weight;
        let writes = if write { weight } else { 0 };
        let slots = &self.slots;
        let found = self
            .index
            .find(hash, |&slot| &*slots[slot as usize].key == key)
            .copied();
        if let Some(slot) = found {
            let counted = &mut self.slots[slot as usize];
            counted.count += weight;
            counted.writes += writes;
            self.sift_down(self.heap_position[slot as usize] as usize);
            return;
        }
        let counted = |count, error| Counted {
            key: key.into(),
            count,
            error,
            writes,
        };
        let slot = if self.slots.len() < self.capacity {
            let slot = self.slots.len() as u32;
            self.slots.push(counted(weight, 0));
            self.hashes.push(hash);
            self.heap.push(slot);
            self.heap_position.push(self.heap.len() as u32 - 1);
            self.sift_up(self.heap.len() - 1);
            slot
        } else {
            let slot = self.heap[0];
            let floor = self.slots[slot as usize].count;
            if let Ok(entry) = self
                .index
                .find_entry(self.hashes[slot as usize], |&held| held == slot)
            {
                entry.remove();
            }
            self.slots[slot as usize] = counted(floor + weight, floor);
            self.hashes[slot as usize] = hash;
            self.sift_down(0);
            slot
        };
        let hashes = &self.hashes;
        self.index
            .insert_unique(hash, slot, |&held| hashes[held as usize]);
    }

    /// The smallest count held: the most a key not held can have been seen.
    pub fn floor(&self) -> u64 {
        if self.slots.len() < self.capacity {
            0
        } else {
            self.heap
                .first()
                .map_or(0, |&slot| self.slots[slot as usize].count)
        }
    }

    /// Every counter, in no particular order.
    pub fn counters(&self) -> &[Counted] {
        &self.slots
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.hashes.clear();
        self.heap.clear();
        self.heap_position.clear();
        self.index.clear();
        self.total = 0;
    }

    fn count_at(&self, index: usize) -> u64 {
        self.slots[self.heap[index] as usize].count
    }

    fn sift_up(&mut self, mut index: usize) {
        while index > 0 {
            let parent = (index - 1) / 2;
            if self.count_at(parent) <= self.count_at(index) {
                break;
            }
            self.swap(parent, index);
            index = parent;
        }
    }

    fn sift_down(&mut self, mut index: usize) {
        loop {
            let (left, right) = (2 * index + 1, 2 * index + 2);
            let mut smallest = index;
            if left < self.heap.len() && self.count_at(left) < self.count_at(smallest) {
                smallest = left;
            }
            if right < self.heap.len() && self.count_at(right) < self.count_at(smallest) {
                smallest = right;
            }
            if smallest == index {
                return;
            }
            self.swap(index, smallest);
            index = smallest;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.heap_position[self.heap[a] as usize] = a as u32;
        self.heap_position[self.heap[b] as usize] = b as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxHashMap;

    /// A Zipf(s = 1.0) stream over `keys` keys, from a fixed seed.
    fn zipf_stream(keys: usize, length: usize, mut seed: u64) -> Vec<usize> {
        let weights: Vec<f64> = (1..=keys).map(|rank| 1.0 / rank as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut cumulative = Vec::with_capacity(keys);
        let mut sum = 0.0;
        for weight in &weights {
            sum += weight / total;
            cumulative.push(sum);
        }
        (0..length)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let draw = (seed >> 11) as f64 / (1u64 << 53) as f64;
                cumulative.partition_point(|&c| c < draw).min(keys - 1)
            })
            .collect()
    }

    #[test]
    fn finds_the_true_top_20_of_a_zipf_stream_within_its_bound() {
        let stream = zipf_stream(1_000_000, 2_000_000, 0x5eed_1234_abcd_ef01);
        let mut exact: FxHashMap<usize, u64> = FxHashMap::default();
        let mut summary = SpaceSaving::new(1024);
        for &key in &stream {
            *exact.entry(key).or_default() += 1;
            summary.observe(format!("key:{key}").as_bytes(), 1, false);
        }
        let mut true_top: Vec<(usize, u64)> = exact.iter().map(|(k, c)| (*k, *c)).collect();
        true_top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let true_top: Vec<String> = true_top[..20]
            .iter()
            .map(|(k, _)| format!("key:{k}"))
            .collect();
        let mut reported: Vec<&Counted> = summary.counters().iter().collect();
        reported.sort_by_key(|c| std::cmp::Reverse(c.count));
        let reported_top: Vec<String> = reported[..20]
            .iter()
            .map(|c| String::from_utf8_lossy(&c.key).into_owned())
            .collect();
        let found = true_top
            .iter()
            .filter(|key| reported_top.contains(key))
            .count();
        assert!(found >= 19, "only {found} of the true top 20 reported");
        let bound = summary.total() / 1024;
        for counted in &reported[..20] {
            let key: usize = String::from_utf8_lossy(&counted.key)[4..].parse().unwrap();
            let truth = exact[&key];
            assert!(counted.count >= truth && counted.count - counted.error <= truth);
            assert!(
                counted.error <= bound,
                "error {} over the bound {bound}",
                counted.error
            );
        }
    }

    #[test]
    fn keeps_exact_counts_while_under_capacity() {
        let mut summary = SpaceSaving::new(4);
        for (key, times) in [("a", 5), ("b", 3), ("c", 1)] {
            for _ in 0..times {
                summary.observe(key.as_bytes(), 1, key == "b");
            }
        }
        let mut counters = summary.counters().to_vec();
        counters.sort_by_key(|c| std::cmp::Reverse(c.count));
        assert_eq!(counters[0].count, 5);
        assert_eq!(
            (counters[1].count, counters[1].writes, counters[1].error),
            (3, 3, 0)
        );
        assert_eq!(summary.floor(), 0);
    }
}
