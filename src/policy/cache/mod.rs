//! Read caching: `[[cache]]` rules answer matching reads from keyward's memory.
//!
//! Correctness comes from Redis itself. Every fill is read on the client's own pooled
//! connection with tracking on (so Redis runs it in the client's order), and Redis then tells
//! keyward's invalidation connection when the key changes: a write by anyone, an expiry, an
//! eviction, a flush. A fill is stored only if nothing invalidated its key while it was in
//! flight ([`coherence`]); when the invalidation connection drops, everything is flushed and
//! the cache is bypassed until it is back ([`invalidation`]).
//!
//! Entries are kept per Redis key, so that one invalidation drops every cached read of that
//! key: each entry holds the replies of the reads made of it, told apart by their *shape*
//! (database, protocol, command and the arguments after the key).

pub mod coherence;
mod phase;
mod sample;
mod shelf;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quanta::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use metrics::{counter, gauge, Counter, Gauge};

pub use crate::command::cacheable::Kind;
use crate::command::CommandInfo;
use crate::config::rules::Mode;
use crate::config::CacheRule;
use crate::policy::matcher::RuleMatcher;
use crate::resp::frame;
use crate::resp::request::Args;
use crate::resp::Protocol;
pub use coherence::{Coherence, Fill};
use sample::{Followed, Halvings, KeySample};
use shelf::{CountEvictions, GhostShelf, ReplyShelf, Shelf, Variant};

/// Where a rule keeps what it read (see [`shelf`]).
enum Entries {
    /// A rule in force: keys, shapes and replies as they are.
    Replies(ReplyShelf),
    /// A shadow rule: hashes of keys, stand-ins for shapes ([`ghost_shape`]), and the replies'
    /// sizes, for the keys of its `sample`, within as much of `max_memory`: the real cache in
    /// miniature ([`sample`]).
    Ghosts {
        shelf: GhostShelf,
        sample: KeySample,
    },
}

/// What a rule has counted.
#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    evictions: Arc<AtomicU64>,
}

/// A rule's Prometheus series, updated when `/metrics` is scraped.
struct RuleMetrics {
    hits: Counter,
    misses: Counter,
    invalidations: Counter,
    evictions: Counter,
    bytes: Gauge,
    entries: Gauge,
}

/// One `[[cache]]` rule and the entries it holds.
pub struct RuleCache {
    pub rule: CacheRule,
    matcher: RuleMatcher,
    entries: Entries,
    counters: Counters,
    metrics: RuleMetrics,
}

/// A rule's figures, for `KEYWARD CACHE STATS` and the admin page.
#[derive(Debug, serde::Serialize)]
pub struct RuleStats {
    pub hits: u64,
    pub misses: u64,
    pub invalidations: u64,
    pub evictions: u64,
    pub bytes: u64,
    pub entries: u64,
}

impl RuleCache {
    pub fn new(rule: CacheRule) -> RuleCache {
        let counters = Counters::default();
        let capacity = rule.max_memory.get();
        let halvings = Halvings::default();
        let evictions = CountEvictions {
            evicted: Arc::clone(&counters.evictions),
            halvings: halvings.clone(),
        };
        let entries = match rule.mode {
            Mode::Enforce => Entries::Replies(Shelf::new(capacity, evictions)),
            Mode::Shadow => {
                let sample_rate = rule.sample_rate.as_ref().map(|rate| *rate.get_ref());
                let sample = KeySample::new(sample_rate, halvings);
                Entries::Ghosts {
                    shelf: Shelf::new(share(capacity, sample.fraction()), evictions),
                    sample,
                }
            }
        };
        let name = rule.name.get_ref().clone();
        let metrics = RuleMetrics {
            hits: counter!("keyward_cache_hits_total", "rule" => name.clone()),
            misses: counter!("keyward_cache_misses_total", "rule" => name.clone()),
            invalidations: counter!("keyward_cache_invalidations_total", "rule" => name.clone()),
            evictions: counter!("keyward_cache_evictions_total", "rule" => name.clone()),
            bytes: gauge!("keyward_cache_bytes", "rule" => name.clone()),
            entries: gauge!("keyward_cache_entries", "rule" => name),
        };
        RuleCache {
            matcher: RuleMatcher::compile(&rule),
            rule,
            entries,
            counters,
            metrics,
        }
    }

    pub fn name(&self) -> &str {
        self.rule.name.get_ref()
    }

    pub fn is_shadow(&self) -> bool {
        self.rule.mode == Mode::Shadow
    }

    fn ttl(&self) -> Duration {
        self.rule.ttl.get()
    }

    /// Whether this rule caches reads of `key` (by some command).
    pub fn matches_key(&self, key: &[u8]) -> bool {
        self.matcher.matches_key(key)
    }

    /// Whether the rule looks up and stores reads of `key`: all of them, but for a shadow rule
    /// that follows a sample of the keys, whose other keys' reads go to Redis as if it had none.
    fn follows(&self, key: &[u8]) -> Option<Followed> {
        match &self.entries {
            Entries::Ghosts { sample, .. } => sample.follows(key),
            Entries::Replies(_) => Some(Followed { hash: None }),
        }
    }

    /// What one hit, miss or invalidation counts for ([`KeySample::weight`]).
    fn weight(&self) -> u64 {
        match &self.entries {
            Entries::Ghosts { sample, .. } => sample.weight(),
            Entries::Replies(_) => 1,
        }
    }

    /// The reply cached for `shape` of `key`, if it has not expired and was read in the
    /// current tracking `epoch`; under a shadow rule, an empty reply for a read it would have
    /// served. `hash` is the key's hash under the rule's sample, if already taken.
    fn get(
        &self,
        key: &[u8],
        hash: Option<u64>,
        shape: &[u8],
        epoch: u64,
        now: Instant,
    ) -> Option<Bytes> {
        match &self.entries {
            Entries::Replies(shelf) => shelf.get(key, shape, epoch, now),
            Entries::Ghosts { shelf, sample } => shelf
                .get(
                    &hash.unwrap_or_else(|| sample.hash(key)),
                    &ghost_shape(sample.hasher(), shape),
                    epoch,
                    now,
                )
                .map(|_| Bytes::new()),
        }
    }

    /// The reply cached for `shape` of `keys` read at `epochs` (for `MGET`, the reply put
    /// together from each key's element), if every key has one; under a shadow rule, an
    /// empty reply for a read it would have served. The read is `followed` by its first key.
    fn lookup(
        &self,
        keys: &[&[u8]],
        followed: Followed,
        epochs: &[u64],
        shape: &[u8],
        kind: Kind,
        now: Instant,
    ) -> Option<Bytes> {
        let hashes = std::iter::once(followed.hash).chain(std::iter::repeat(None));
        let mut lookups = keys.iter().zip(hashes).zip(epochs);
        let get = |((key, hash), &epoch): ((&&[u8], Option<u64>), &u64)| {
            self.get(key, hash, shape, epoch, now)
        };
        match kind {
            Kind::OneKey => lookups.next().and_then(get),
            // A shadow rule only needs to know that it would have served every key.
            Kind::PerKey if self.is_shadow() => {
                lookups.all(|lookup| get(lookup).is_some()).then(Bytes::new)
            }
            Kind::PerKey => assemble(lookups.map(get)),
        }
    }

    /// Stores a reply unless the rule does not keep it (an error; a nil, unless `cache_nil`).
    /// `read_by` is the key the read was followed by (its first), which a shadow rule's
    /// sample keeps it by, with what following it found.
    fn insert(
        &self,
        key: &[u8],
        read_by: (&[u8], Followed),
        shape: &[u8],
        reply: &[u8],
        epoch: u64,
        lifetime: Option<Duration>,
    ) {
        if !self.keeps(reply) {
            return;
        }
        let (now, ttl) = (Instant::now(), self.ttl());
        let expires_at = now + lifetime.map_or(ttl, |lifetime| lifetime.min(ttl));
        let size = shape.len() + reply.len();
        match &self.entries {
            // An entry holds copies of its own bytes, and nothing more than it is weighed at.
            // The reply is part of the buffer its connection read it into (64 KiB, shared with
            // other replies), the key and shape part of the flight's key, and an `MGET`
            // element part of the whole reply: a slice would keep all of it alive.
            Entries::Replies(shelf) => {
                let read = Variant {
                    shape: Bytes::copy_from_slice(shape),
                    reply: Bytes::copy_from_slice(reply),
                    size,
                    expires_at,
                    epoch,
                };
                shelf.insert(Bytes::copy_from_slice(key), key.len(), read, now);
            }
            Entries::Ghosts { shelf, sample } => {
                let (first_key, followed) = read_by;
                let read_by = followed.hash.unwrap_or_else(|| sample.hash(first_key));
                // The read's first key is the very slice it is followed by.
                let hash = match std::ptr::eq(key, first_key) {
                    true => read_by,
                    false => sample.hash(key),
                };
                let read = Variant {
                    shape: ghost_shape(sample.hasher(), shape),
                    reply: read_by,
                    size,
                    expires_at,
                    epoch,
                };
                shelf.insert(hash, key.len(), read, now);
                // An `MGET`'s other keys stay while the read is followed, whatever their own
                // hashes.
                let shrink = |threshold: u64, fraction: f64| {
                    shelf.retain_reads(|read_by| *read_by <= threshold);
                    shelf.set_capacity(share(self.rule.max_memory.get(), fraction));
                };
                sample.halve_if_full(|| shelf.len(), shrink);
            }
        }
    }

    fn keeps(&self, reply: &[u8]) -> bool {
        match reply.first() {
            None | Some(b'-' | b'!') => false,
            Some(_) if frame::is_nil(reply) => self.rule.cache_nil,
            Some(_) => true,
        }
    }

    /// Drops every cached read of `key`.
    fn invalidate(&self, key: &[u8]) {
        let removed = match &self.entries {
            Entries::Replies(shelf) => shelf.remove(key),
            Entries::Ghosts { shelf, sample } => shelf.remove(&sample.hash(key)),
        };
        if removed {
            let weight = self.weight();
            self.counters
                .invalidations
                .fetch_add(weight, Ordering::Relaxed);
        }
    }

    pub fn flush(&self) {
        match &self.entries {
            Entries::Replies(shelf) => shelf.clear(),
            Entries::Ghosts { shelf, .. } => shelf.clear(),
        }
    }

    fn count(&self, hit: bool) {
        let counter = if hit {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(self.weight(), Ordering::Relaxed);
    }

    pub fn stats(&self) -> RuleStats {
        // A sampled shadow rule's figures, scaled to all keys: what the rule would see.
        let (bytes, entries, counts_scale, shelf_scale) = match &self.entries {
            Entries::Replies(shelf) => (shelf.weight(), shelf.len(), 1.0, 1.0),
            Entries::Ghosts { shelf, sample } => (
                shelf.weight(),
                shelf.len(),
                sample.scale(),
                sample.shelf_scale(),
            ),
        };
        let scaled = |counted: u64, scale: f64| (counted as f64 * scale).round() as u64;
        let read = |counter: &AtomicU64| scaled(counter.load(Ordering::Relaxed), counts_scale);
        RuleStats {
            hits: read(&self.counters.hits),
            misses: read(&self.counters.misses),
            invalidations: read(&self.counters.invalidations),
            evictions: read(&self.counters.evictions),
            bytes: scaled(bytes, shelf_scale),
            entries: scaled(entries as u64, shelf_scale),
        }
    }

    pub fn publish_metrics(&self) {
        let stats = self.stats();
        self.metrics.hits.absolute(stats.hits);
        self.metrics.misses.absolute(stats.misses);
        self.metrics.invalidations.absolute(stats.invalidations);
        self.metrics.evictions.absolute(stats.evictions);
        self.metrics.bytes.set(stats.bytes as f64);
        self.metrics.entries.set(stats.entries as f64);
    }
}

/// An `MGET` reply from cached elements, if every one is cached.
fn assemble(elements: impl Iterator<Item = Option<Bytes>>) -> Option<Bytes> {
    let mut count = 0;
    let mut body = Vec::new();
    for element in elements {
        body.extend_from_slice(&element?);
        count += 1;
    }
    let mut reply = BytesMut::with_capacity(body.len() + 16);
    crate::resp::put_header(&mut reply, b'*', count);
    reply.extend_from_slice(&body);
    Some(reply.freeze())
}

/// The rule that caches a read of `keys`: the first rule in force that covers it, else the
/// first shadow rule that does, so that adding a shadow rule never stops a rule in force from
/// serving. `None` when no rule does (for `MGET`, one rule must cover every key). Inlined
/// into each kind's copy of the consultation (`Coherence::consult_keys`), where a one-key
/// read's loop over its keys is one step.
#[inline(always)]
fn rule_for<'r>(
    rules: &'r [Arc<RuleCache>],
    info: &CommandInfo,
    keys: &[&[u8]],
) -> Option<&'r Arc<RuleCache>> {
    let mut shadow = None;
    for rule in rules {
        let matcher = &rule.matcher;
        if !matcher.applies_to(info) || !keys.iter().all(|key| matcher.matches_key(key)) {
            continue;
        }
        if !rule.is_shadow() {
            return Some(rule);
        }
        shadow = shadow.or(Some(rule));
    }
    shadow
}

/// `fraction` of `capacity` bytes, at least one.
fn share(capacity: u64, fraction: f64) -> u64 {
    (capacity as f64 * fraction).max(1.0) as u64
}

/// What a shadow rule keeps of a shape: the 7 bytes of a read without arguments as they are;
/// a longer shape's hash, with the top bit set, so that the two never meet. Most reads have
/// no arguments, and are spared a hash.
fn ghost_shape(hasher: &foldhash::quality::RandomState, shape: &[u8]) -> u64 {
    match <[u8; 7]>::try_from(shape) {
        Ok([b0, b1, b2, b3, b4, b5, b6]) => u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, 0]),
        Err(_) => hasher.hash_one(shape) | 1 << 63,
    }
}

/// Writes the shape of a read into `out`: database, protocol, command, and for a one-key
/// read the arguments after the key (an `MGET` element's shape has none). Without arguments
/// it is 7 bytes, which a shadow rule keeps as they are ([`ghost_shape`]).
fn write_shape(
    out: &mut Vec<u8>,
    db: u32,
    protocol: Protocol,
    info: &CommandInfo,
    args: &Args<'_>,
    kind: Kind,
) {
    out.clear();
    let [db0, db1, db2, db3] = db.to_be_bytes();
    // Command ids fit in 16 bits (`CommandTable::from_tsv`).
    let [id0, id1] = (info.id as u16).to_be_bytes();
    out.extend_from_slice(&[db0, db1, db2, db3, protocol.version(), id0, id1]);
    if kind == Kind::OneKey {
        for arg in (2..args.len()).filter_map(|index| args.get(index)) {
            // Arguments are compared as written: command options are case-insensitive in
            // Redis, so `withscores` and `WITHSCORES` are cached apart, which is only a miss.
            out.put_u32(arg.len() as u32);
            out.put_slice(arg);
        }
    }
}
