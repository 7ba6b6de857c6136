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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use metrics::{counter, gauge, Counter, Gauge};
use smallvec::SmallVec;

pub use crate::command::cacheable::Kind;
use crate::command::CommandInfo;
use crate::config::rules::Mode;
use crate::config::CacheRule;
use crate::policy::matcher::RuleMatcher;
use crate::resp::frame;
use crate::resp::request::Args;
use crate::resp::Protocol;
pub use coherence::{Coherence, Fill};

/// Bytes an entry costs beyond its key and replies (bookkeeping in keyward and the cache).
const ENTRY_OVERHEAD: usize = 96;
/// Bytes each cached reply of an entry costs beyond its shape and reply.
const VARIANT_OVERHEAD: usize = 48;

/// The cached replies for one Redis key.
#[derive(Clone, Default)]
struct KeyEntries {
    variants: SmallVec<[Variant; 1]>,
    /// What the entry counts against `max_memory`, fixed when it is stored.
    weight: u64,
}

#[derive(Clone)]
struct Variant {
    shape: Bytes,
    reply: Bytes,
    /// When it stops being served: `ttl` after it was read, or sooner if the key expires.
    expires_at: Instant,
    /// The tracking epoch it was read in: served only while that epoch lasts.
    epoch: u64,
}

impl KeyEntries {
    fn weigh(&mut self, key: &[u8]) {
        let variants: usize = self
            .variants
            .iter()
            .map(|variant| variant.shape.len() + variant.reply.len() + VARIANT_OVERHEAD)
            .sum();
        self.weight = (key.len() + variants + ENTRY_OVERHEAD) as u64;
    }
}

#[derive(Clone)]
struct EntryWeighter;

impl quick_cache::Weighter<Bytes, Arc<KeyEntries>> for EntryWeighter {
    fn weight(&self, _: &Bytes, entries: &Arc<KeyEntries>) -> u64 {
        entries.weight
    }
}

/// Counts the entries the cache drops to stay within `max_memory`.
#[derive(Clone)]
struct CountEvictions(Arc<Counters>);

impl quick_cache::Lifecycle<Bytes, Arc<KeyEntries>> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: Bytes, _: Arc<KeyEntries>) {
        self.0.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

type Store = quick_cache::sync::Cache<
    Bytes,
    Arc<KeyEntries>,
    EntryWeighter,
    quick_cache::DefaultHashBuilder,
    CountEvictions,
>;

/// What a rule has counted.
#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    evictions: AtomicU64,
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
    store: Store,
    counters: Arc<Counters>,
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
        let counters = Arc::new(Counters::default());
        let capacity = rule.max_memory.get();
        let store = Store::with(
            (capacity / 256).clamp(16, 1 << 24) as usize,
            capacity,
            EntryWeighter,
            quick_cache::DefaultHashBuilder::default(),
            CountEvictions(Arc::clone(&counters)),
        );
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
            store,
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

    /// Whether this rule caches `info` on `key`.
    fn covers(&self, info: &CommandInfo, key: &[u8]) -> bool {
        self.matcher.applies_to(info) && self.matcher.matches_key(key)
    }

    /// The reply cached for `shape` of `key`, if it has not expired and was read in the
    /// current tracking `epoch`.
    fn get(&self, key: &[u8], shape: &[u8], epoch: u64, now: Instant) -> Option<Bytes> {
        let entries = self.store.get(key)?;
        entries
            .variants
            .iter()
            .find(|variant| {
                variant.epoch == epoch && &variant.shape[..] == shape && now < variant.expires_at
            })
            .map(|variant| variant.reply.clone())
    }

    /// Stores a reply unless the rule does not keep it (an error; a nil, unless `cache_nil`).
    fn insert(
        &self,
        key: &Bytes,
        shape: &Bytes,
        reply: Bytes,
        epoch: u64,
        lifetime: Option<Duration>,
    ) {
        if !self.keeps(&reply) {
            return;
        }
        let (now, ttl) = (Instant::now(), self.ttl());
        let mut entries = self
            .store
            .get(key)
            .map(|entries| (*entries).clone())
            .unwrap_or_default();
        entries.variants.retain(|variant| {
            variant.shape != *shape && variant.epoch == epoch && now < variant.expires_at
        });
        entries.variants.push(Variant {
            shape: shape.clone(),
            reply,
            expires_at: now + lifetime.map_or(ttl, |lifetime| lifetime.min(ttl)),
            epoch,
        });
        entries.weigh(key);
        self.store.insert(key.clone(), Arc::new(entries));
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
        if self.store.remove(key).is_some() {
            self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn flush(&self) {
        self.store.clear();
    }

    fn count(&self, hit: bool) {
        let counter = if hit {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> RuleStats {
        RuleStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            invalidations: self.counters.invalidations.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            bytes: self.store.weight(),
            entries: self.store.len() as u64,
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

/// The rule that caches a read: the first rule in force that covers it, else the first
/// shadow rule that does, so that adding a shadow rule never stops a rule in force from
/// serving. `None` when no rule does (for `MGET`, one rule must cover every key).
fn rule_for<'r>(
    rules: &'r [Arc<RuleCache>],
    info: &CommandInfo,
    args: &Args<'_>,
    kind: Kind,
) -> Option<&'r Arc<RuleCache>> {
    let first = args.get(1)?;
    let covers = |rule: &&Arc<RuleCache>| {
        rule.covers(info, first)
            && (kind == Kind::OneKey
                || (2..args.len())
                    .filter_map(|index| args.get(index))
                    .all(|key| rule.matcher.matches_key(key)))
    };
    let mut shadow = None;
    for rule in rules.iter().filter(covers) {
        if !rule.is_shadow() {
            return Some(rule);
        }
        shadow.get_or_insert(rule);
    }
    shadow
}

/// Writes the shape of a read into `out`: database, protocol, command, and for a one-key
/// read the arguments after the key (an `MGET` element's shape has none).
fn write_shape(
    out: &mut Vec<u8>,
    db: u32,
    protocol: Protocol,
    info: &CommandInfo,
    args: &Args<'_>,
    kind: Kind,
) {
    out.clear();
    out.put_u32(db);
    out.put_u8(protocol.version());
    out.put_u32(info.id as u32);
    if kind == Kind::OneKey {
        for arg in (2..args.len()).filter_map(|index| args.get(index)) {
            // Arguments are compared as written: command options are case-insensitive in
            // Redis, so `withscores` and `WITHSCORES` are cached apart, which is only a miss.
            out.put_u32(arg.len() as u32);
            out.put_slice(arg);
        }
    }
}
