//! Which keys a shadow rule follows, and what each thing it counts stands for.
//!
//! A shadow rule is the real cache in miniature: it follows the keys whose hash falls under a
//! threshold, keeps their entries within as much of `max_memory`, and scales what it counts
//! back up (SHARDS, Waldspurger et al., FAST '15). With a `sample_rate` the fraction is fixed.
//! Without one the rule follows every key until its shelf holds more than [`MOST_ENTRIES`]
//! entries; then the threshold halves, the entries of the keys no longer followed go, and so
//! on (the paper's fixed-size variant). Following a read costs a lookup in the shelf, which
//! waits on memory once the entries outgrow the CPU's caches: bounding the entries bounds that
//! cost however many keys are read, and a few thousand followed keys still estimate the hit
//! ratio to within a percent or so.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// The most entries a shadow rule without a `sample_rate` keeps before it follows half as
/// many keys (the paper's choice of sample size).
pub(super) const MOST_ENTRIES: usize = 8192;
/// The threshold halves at most this often: one key in 65,536 is still followed.
const MOST_HALVINGS: u32 = 16;

/// A shadow rule's sample of the keys.
pub(super) struct KeySample {
    hasher: ahash::RandomState,
    /// Keys whose hash is at most this are followed.
    threshold: AtomicU64,
    /// The `sample_rate`, when one is set: the threshold then stays where it started.
    fixed: Option<f64>,
    /// How often the threshold halved (shared with the count of evictions, which weighs each
    /// eviction by it as [`KeySample::weight`] does).
    halvings: Arc<AtomicU32>,
}

impl KeySample {
    pub(super) fn new(sample_rate: Option<f64>, halvings: Arc<AtomicU32>) -> KeySample {
        let fraction = sample_rate.unwrap_or(1.0);
        KeySample {
            hasher: ahash::RandomState::new(),
            // Saturates at `u64::MAX` for a fraction of 1: every key.
            threshold: AtomicU64::new((fraction * u64::MAX as f64) as u64),
            fixed: sample_rate,
            halvings,
        }
    }

    /// What the rule's shelf knows `key` by.
    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn hasher(&self) -> &ahash::RandomState {
        &self.hasher
    }

    /// Whether reads of `key` are followed; every key's are until the threshold falls, which
    /// spares them the hash.
    #[inline]
    pub(super) fn follows(&self, key: &[u8]) -> bool {
        let threshold = self.threshold.load(Ordering::Relaxed);
        threshold == u64::MAX || self.hash(key) <= threshold
    }

    /// Whether the key of hash `hash` is still followed.
    pub(super) fn follows_hash(&self, hash: u64) -> bool {
        hash <= self.threshold.load(Ordering::Relaxed)
    }

    /// What one hit, miss or invalidation counted now stands for, in units of the fixed
    /// fraction (see [`KeySample::scale`]): each halving doubles it, so that counts made at
    /// different rates add up.
    #[inline]
    pub(super) fn weight(&self) -> u64 {
        1 << self.halvings.load(Ordering::Relaxed)
    }

    /// What the counters are multiplied by when read: the inverse of the fixed fraction.
    pub(super) fn scale(&self) -> f64 {
        1.0 / self.fixed.unwrap_or(1.0)
    }

    /// What the shelf's own figures (bytes, entries) are multiplied by when read: the inverse
    /// of the fraction followed now.
    pub(super) fn shelf_scale(&self) -> f64 {
        self.scale() * (1u64 << self.halvings.load(Ordering::Relaxed)) as f64
    }

    /// The fraction of `max_memory` the shelf may hold now.
    pub(super) fn fraction(&self) -> f64 {
        1.0 / self.shelf_scale()
    }

    /// After an entry was stored in the shelf: if it holds too many (`entries` counts them,
    /// asked only of a sample that may still shrink), follows half as many keys and returns
    /// the new threshold, under which the caller's shelf keeps its keys. Of two callers that
    /// find too many at once, only one halves.
    pub(super) fn halve_if_full(&self, entries: impl FnOnce() -> usize) -> Option<u64> {
        let halvings = self.halvings.load(Ordering::Relaxed);
        if self.fixed.is_some() || halvings >= MOST_HALVINGS || entries() <= MOST_ENTRIES {
            return None;
        }
        let threshold = self.threshold.load(Ordering::Relaxed);
        let halved = threshold / 2;
        self.threshold
            .compare_exchange(threshold, halved, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        self.halvings.fetch_add(1, Ordering::Relaxed);
        Some(halved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rate: Option<f64>) -> KeySample {
        KeySample::new(rate, Arc::default())
    }

    #[test]
    fn without_a_rate_every_key_is_followed_until_the_shelf_fills_then_half_of_them() {
        let sample = sample(None);
        let keys: Vec<String> = (0..10_000).map(|index| format!("key:{index}")).collect();
        assert!(keys.iter().all(|key| sample.follows(key.as_bytes())));
        assert_eq!((sample.weight(), sample.shelf_scale()), (1, 1.0));
        assert_eq!(sample.halve_if_full(|| MOST_ENTRIES), None);
        let threshold = sample.halve_if_full(|| MOST_ENTRIES + 1).unwrap();
        assert_eq!(threshold, u64::MAX / 2);
        assert_eq!((sample.weight(), sample.shelf_scale()), (2, 2.0));
        assert_eq!(sample.fraction(), 0.5);
        let followed = keys
            .iter()
            .filter(|key| sample.follows(key.as_bytes()))
            .count();
        // Half of 10,000 keys: ±50 at one standard deviation.
        assert!((4_700..=5_300).contains(&followed), "{followed}");
        let hashes_agree = keys.iter().all(|key| {
            sample.follows(key.as_bytes()) == sample.follows_hash(sample.hash(key.as_bytes()))
        });
        assert!(hashes_agree);
    }

    #[test]
    fn the_threshold_stops_halving_at_one_key_in_65536() {
        let sample = sample(None);
        for _ in 0..40 {
            sample.halve_if_full(|| MOST_ENTRIES + 1);
        }
        assert_eq!(sample.weight(), 1 << MOST_HALVINGS);
        assert_eq!(sample.fraction(), 1.0 / 65_536.0);
    }

    #[test]
    fn a_fixed_rate_never_halves_and_scales_its_counts_by_its_inverse() {
        let sample = sample(Some(0.25));
        assert_eq!(sample.halve_if_full(|| 1_000_000), None);
        assert_eq!(
            (sample.weight(), sample.scale(), sample.shelf_scale()),
            (1, 4.0, 4.0)
        );
        assert!(!sample.follows_hash(u64::MAX / 4 + 1024));
    }
}
