//! Which keys a shadow rule follows, and what each thing it counts stands for.
//!
//! A shadow rule is the real cache in miniature: it follows the keys whose hash falls under a
//! threshold, keeps their entries within as much of `max_memory`, and scales what it counts
//! back up (SHARDS, Waldspurger et al., FAST '15). With a `sample_rate` the fraction is fixed.
//! Without one the rule follows every key until its shelf holds more than [`MOST_ENTRIES`]
//! entries; then the threshold halves, the reads followed by keys above it go, and so on (the
//! paper's fixed-size variant). Following a read costs a lookup in the shelf, which
//! waits on memory once the entries outgrow the CPU's caches: bounding the entries bounds that
//! cost however many keys are read, and a few thousand followed keys still estimate the hit
//! ratio to within a percent or so.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The most entries a shadow rule without a `sample_rate` keeps before it follows half as
/// many keys (the paper's choice of sample size).
const MOST_ENTRIES: usize = 8192;
/// The sample halves at most this often: one key in 65,536 is still followed.
const MOST_HALVINGS: u32 = 16;

/// How often a shadow rule's sample halved, shared with what counts its evictions: each hit,
/// miss, invalidation or eviction counted now stands for `1 << halvings` of those counted
/// before the first halving, so that counts made at different rates add up.
#[derive(Clone, Default)]
pub(super) struct Halvings(Arc<AtomicU32>);

impl Halvings {
    fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// What one thing counted now stands for.
    #[inline]
    pub(super) fn weight(&self) -> u64 {
        1 << self.get()
    }
}

/// The first key of a read a rule follows, with its hash when the sample took it to decide:
/// the lookup that comes next needs that hash, and a key's hash costs as much as the rest of
/// the lookup.
#[derive(Clone, Copy)]
pub(super) struct Followed {
    pub hash: Option<u64>,
}

/// A shadow rule's sample of the keys.
pub(super) struct KeySample {
    hasher: foldhash::quality::RandomState,
    /// Keys whose hash is at most this, shifted right once per halving, are followed.
    first_threshold: u64,
    /// The `sample_rate`, when one is set: the sample then never halves.
    fixed: Option<f64>,
    halvings: Halvings,
}

impl KeySample {
    pub(super) fn new(sample_rate: Option<f64>, halvings: Halvings) -> KeySample {
        let fraction = sample_rate.unwrap_or(1.0);
        KeySample {
            hasher: foldhash::quality::RandomState::default(),
            // Saturates at `u64::MAX` for a fraction of 1: every key.
            first_threshold: (fraction * u64::MAX as f64) as u64,
            fixed: sample_rate,
            halvings,
        }
    }

    /// What the rule's shelf knows `key` by.
    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn hasher(&self) -> &foldhash::quality::RandomState {
        &self.hasher
    }

    fn threshold(&self) -> u64 {
        self.first_threshold >> self.halvings.get()
    }

    /// Whether reads of `key` are followed; every key's are until the sample shrinks, which
    /// spares them the hash. A key followed comes with its hash once deciding took it.
    #[inline]
    pub(super) fn follows(&self, key: &[u8]) -> Option<Followed> {
        let threshold = self.threshold();
        if threshold == u64::MAX {
            return Some(Followed { hash: None });
        }
        let hash = self.hash(key);
        (hash <= threshold).then_some(Followed { hash: Some(hash) })
    }

    /// What one hit, miss or invalidation counted now stands for, in units of the fixed
    /// fraction ([`KeySample::scale`]).
    #[inline]
    pub(super) fn weight(&self) -> u64 {
        self.halvings.weight()
    }

    /// What the counters are multiplied by when read: the inverse of the fixed fraction.
    pub(super) fn scale(&self) -> f64 {
        1.0 / self.fixed.unwrap_or(1.0)
    }

    /// What the shelf's own figures (bytes, entries) are multiplied by when read: the inverse
    /// of the fraction followed now.
    pub(super) fn shelf_scale(&self) -> f64 {
        self.scale() * self.weight() as f64
    }

    /// The fraction of `max_memory` the shelf may hold now.
    pub(super) fn fraction(&self) -> f64 {
        1.0 / self.shelf_scale()
    }

    /// After a read was stored in the shelf: if it holds more than [`MOST_ENTRIES`]
    /// (`entries` counts them, asked only of a sample that may still shrink), follows half as
    /// many keys and has `shrink` make the shelf keep only the reads followed by a key of hash
    /// at most the new threshold, within the new fraction of `max_memory`. Reads are stored
    /// one at a time (under the cache's flights lock), so one full shelf halves it once.
    pub(super) fn halve_if_full(
        &self,
        entries: impl FnOnce() -> usize,
        shrink: impl FnOnce(u64, f64),
    ) {
        if self.fixed.is_some() || self.halvings.get() >= MOST_HALVINGS {
            return;
        }
        if entries() <= MOST_ENTRIES {
            return;
        }
        self.halvings.0.fetch_add(1, Ordering::Relaxed);
        shrink(self.threshold(), self.fraction());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rate: Option<f64>) -> KeySample {
        KeySample::new(rate, Halvings::default())
    }

    /// Halves `sample` if a shelf of `entries` is too full; the threshold it was told.
    fn halve(sample: &KeySample, entries: usize) -> Option<u64> {
        let mut told = None;
        sample.halve_if_full(|| entries, |threshold, _| told = Some(threshold));
        told
    }

    #[test]
    fn without_a_rate_every_key_is_followed_until_the_shelf_fills_then_half_of_them() {
        let sample = sample(None);
        let keys: Vec<String> = (0..10_000).map(|index| format!("key:{index}")).collect();
        assert!(keys
            .iter()
            .all(|key| sample.follows(key.as_bytes()).is_some()));
        assert_eq!((sample.weight(), sample.shelf_scale()), (1, 1.0));
        assert_eq!(halve(&sample, MOST_ENTRIES), None);
        let threshold = halve(&sample, MOST_ENTRIES + 1).unwrap();
        assert_eq!(threshold, u64::MAX / 2);
        assert_eq!((sample.weight(), sample.shelf_scale()), (2, 2.0));
        assert_eq!(sample.fraction(), 0.5);
        let followed = keys
            .iter()
            .filter(|key| sample.follows(key.as_bytes()).is_some())
            .count();
        // Half of 10,000 keys: ±50 at one standard deviation.
        assert!((4_700..=5_300).contains(&followed), "{followed}");
        let by_hash = keys.iter().all(|key| {
            let followed = sample.follows(key.as_bytes()).map(|followed| followed.hash);
            let hash = sample.hash(key.as_bytes());
            followed == (hash <= threshold).then_some(Some(hash))
        });
        assert!(by_hash);
    }

    #[test]
    fn the_threshold_stops_halving_at_one_key_in_65536() {
        let sample = sample(None);
        for _ in 0..40 {
            halve(&sample, MOST_ENTRIES + 1);
        }
        assert_eq!(sample.weight(), 1 << MOST_HALVINGS);
        assert_eq!(sample.fraction(), 1.0 / 65_536.0);
    }

    #[test]
    fn a_fixed_rate_never_halves_and_scales_its_counts_by_its_inverse() {
        let sample = sample(Some(0.25));
        assert_eq!(halve(&sample, 1_000_000), None);
        assert_eq!(
            (sample.weight(), sample.scale(), sample.shelf_scale()),
            (1, 4.0, 4.0)
        );
        assert_eq!(sample.threshold(), (0.25 * u64::MAX as f64) as u64);
    }
}
