//! Where a rule keeps the reads it cached, by key, within `max_memory`.
//!
//! A rule in force keeps each key and reply as they are. A shadow rule only counts what it
//! would have served, so it keeps no bytes at all: a 64-bit hash for each key, a 64-bit
//! stand-in for each shape (the shape itself when it fits), and the size the real entry would
//! have. Its lookups then touch one small entry instead of the key, the shape and the reply
//! scattered over the heap, which is most of what a lookup costs when the keys do not fit in
//! the CPU's caches; and it weighs its entries as the real cache would, so that it evicts what
//! the real cache would and its counts say what enforcing the rule would give.

use std::hash::Hash;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use quanta::Instant;
use quick_cache::{DefaultHashBuilder, Equivalent, Lifecycle, Weighter};
use smallvec::SmallVec;

use super::sample::Halvings;

/// Bytes an entry costs beyond its key and replies (bookkeeping in keyward and the cache).
const ENTRY_OVERHEAD: usize = 96;
/// Bytes each cached reply of an entry costs beyond its shape and reply.
const VARIANT_OVERHEAD: usize = 48;

/// The cached reads of one key: `S` tells one read's shape from another, `R` is what is kept
/// of its reply (a shadow rule: only what its sample keeps the read by).
#[derive(Clone)]
pub(super) struct KeyEntries<S, R> {
    variants: SmallVec<[Variant<S, R>; 1]>,
    /// What the entry counts against `max_memory`, fixed when it is stored.
    weight: u64,
}

/// One cached read of a key.
#[derive(Clone, Copy)]
pub(super) struct Variant<S, R> {
    pub(super) shape: S,
    pub(super) reply: R,
    /// The bytes of the shape and the reply, for `max_memory`.
    pub(super) size: usize,
    /// When it stops being served: `ttl` after it was read, or sooner if the key expires.
    pub(super) expires_at: Instant,
    /// The tracking epoch it was read in: served only while that epoch lasts.
    pub(super) epoch: u64,
}

#[derive(Clone)]
struct EntryWeighter;

impl<K, S, R, H: Deref<Target = KeyEntries<S, R>>> Weighter<K, H> for EntryWeighter {
    fn weight(&self, _: &K, entries: &H) -> u64 {
        entries.weight
    }
}

/// Entries of plain numbers, held as they are (see [`Shelf`]): a copy of a key's one entry
/// costs less than cloning it entry by entry.
pub(super) struct Inline<S, R>(KeyEntries<S, R>);

impl<S: Copy, R: Copy> Clone for Inline<S, R> {
    fn clone(&self) -> Self {
        let variants = match &self.0.variants[..] {
            [one] => SmallVec::from_buf([*one]),
            many => SmallVec::from_slice(many),
        };
        Inline(KeyEntries {
            variants,
            weight: self.0.weight,
        })
    }
}

impl<S, R> Deref for Inline<S, R> {
    type Target = KeyEntries<S, R>;

    fn deref(&self) -> &KeyEntries<S, R> {
        &self.0
    }
}

impl<S, R> From<KeyEntries<S, R>> for Inline<S, R> {
    fn from(entries: KeyEntries<S, R>) -> Self {
        Inline(entries)
    }
}

/// A rule in force's shelf: keys, shapes and replies as they are.
pub(super) type ReplyShelf = Shelf<Bytes, Arc<KeyEntries<Bytes, Bytes>>>;
/// A shadow rule's shelf: hashes of keys, stand-ins for shapes, and nothing of the replies but
/// the hash of the key each read was followed by (an `MGET`'s first), which its sample keeps
/// it by.
pub(super) type GhostShelf = Shelf<u64, Inline<u64, u64>>;

/// Counts the entries the cache drops to stay within `max_memory`, each for as many as a
/// shadow rule's sample stands for now (a rule in force's never halves).
#[derive(Clone)]
pub(super) struct CountEvictions {
    pub(super) evicted: Arc<AtomicU64>,
    pub(super) halvings: Halvings,
}

impl<K, V> Lifecycle<K, V> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: K, _: V) {
        self.evicted
            .fetch_add(self.halvings.weight(), Ordering::Relaxed);
    }
}

/// A rule's entries: by key `K`, each read told apart by shape `S` and keeping `R` of its reply.
/// The cache clones what holds a key's entries (`H`) on every lookup: an `Arc` when they own
/// replies, the entries themselves when they are a few numbers (a shadow rule's, [`Inline`]),
/// which spares a lookup the pointer to follow and the count to change.
pub(super) struct Shelf<K, H> {
    cache: quick_cache::sync::Cache<K, H, EntryWeighter, DefaultHashBuilder, CountEvictions>,
}

impl<K, S, R, H> Shelf<K, H>
where
    K: Hash + Eq + Clone,
    S: PartialEq + Clone,
    R: Clone,
    H: Clone + Deref<Target = KeyEntries<S, R>> + From<KeyEntries<S, R>>,
{
    /// A shelf of `capacity` bytes, as weighed by [`Shelf::insert`].
    pub(super) fn new(capacity: u64, evictions: CountEvictions) -> Self {
        Shelf {
            cache: quick_cache::sync::Cache::with(
                (capacity / 256).clamp(16, 1 << 24) as usize,
                capacity,
                EntryWeighter,
                DefaultHashBuilder::default(),
                evictions,
            ),
        }
    }

    /// What is kept of the reply to `shape` of `key`, if it has not expired and was read in
    /// the current tracking `epoch`.
    pub(super) fn get<Q, T>(&self, key: &Q, shape: &T, epoch: u64, now: Instant) -> Option<R>
    where
        Q: Hash + Equivalent<K> + ?Sized,
        S: PartialEq<T>,
        T: ?Sized,
    {
        let entries = self.cache.get(key)?;
        entries
            .variants
            .iter()
            .find(|variant| {
                variant.epoch == epoch && variant.shape == *shape && now < variant.expires_at
            })
            .map(|variant| variant.reply.clone())
    }

    /// Keeps `read` of `key` (whose name is `key_len` bytes), beside the key's other reads of
    /// the same epoch that have not expired at `now`.
    pub(super) fn insert(&self, key: K, key_len: usize, read: Variant<S, R>, now: Instant) {
        let mut entries = self
            .cache
            .get(&key)
            .map(|entries| (*entries).clone())
            .unwrap_or(KeyEntries {
                variants: SmallVec::new(),
                weight: 0,
            });
        entries.variants.retain(|variant| {
            variant.shape != read.shape && variant.epoch == read.epoch && now < variant.expires_at
        });
        entries.variants.push(read);
        let variants: usize = entries
            .variants
            .iter()
            .map(|variant| variant.size + VARIANT_OVERHEAD)
            .sum();
        entries.weight = (key_len + variants + ENTRY_OVERHEAD) as u64;
        self.cache.insert(key, H::from(entries));
    }

    /// Drops every read of `key`; whether there was any.
    pub(super) fn remove<Q>(&self, key: &Q) -> bool
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.cache.remove(key).is_some()
    }

    pub(super) fn clear(&self) {
        self.cache.clear();
    }

    /// Keeps only the keys with a read whose kept part `keep` says to keep.
    pub(super) fn retain_reads(&self, keep: impl Fn(&R) -> bool) {
        self.cache
            .retain(|_, entries| entries.variants.iter().any(|read| keep(&read.reply)));
    }

    /// Weighs at most `capacity` bytes from now on, dropping the least used entries beyond.
    pub(super) fn set_capacity(&self, capacity: u64) {
        self.cache.set_capacity(capacity);
    }

    /// The bytes held, as weighed.
    pub(super) fn weight(&self) -> u64 {
        self.cache.weight()
    }

    pub(super) fn len(&self) -> usize {
        self.cache.len()
    }
}
