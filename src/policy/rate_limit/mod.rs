//! `[[rate_limit]]`: GCRA per bucket, in keyward's memory ([`gcra`]) or, for a global rule, in
//! Redis ([`global`]).
//!
//! A rule allows `limit` commands per `period` after a burst of `burst`: one cell is replenished
//! every `period / limit`, at most `burst` are available at once. Buckets are per key, per client
//! or per rule. Idle buckets are dropped by [`RateLimiter::forget_idle`], so millions of
//! distinct keys do not grow memory without bound.
//!
//! A command with several matching keys (`MGET a b`) must conform for each; the keys are checked
//! in order, so keys checked before the one that refused have used a cell for a command that did
//! not run.

mod gcra;
pub mod global;
mod phase;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use quanta::Instant;
use smallvec::SmallVec;

use super::matcher::RuleMatcher;
use crate::config::rules::{Action, Bucket, Mode, OnError, Scope};
use crate::config::RateLimitRule;
use crate::resp::reply;
use gcra::Buckets;
use global::Answer;
pub use phase::{RateLimitSession, RateLimiting};

/// What a rate limit says about one command.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Reject(Bytes),
    /// Hold the command this long, then ask again.
    Delay(Duration),
    /// A global rule: send this request to Redis, hold the command until the answer, then
    /// judge it again with the answer.
    AskRedis(Bytes),
}

/// Who is asking: what `bucket = "client"` counts by.
pub struct Requester<'a> {
    /// The `CLIENT SETNAME` name, else the peer address.
    pub client: &'a [u8],
}

/// The buckets of a rule, kept across reloads as long as the rule's shape (limit, period,
/// burst, bucket, scope) does not change: switching a rule from shadow to enforce keeps what
/// shadow mode counted.
struct BucketState {
    /// By the bucket's hash (see [`RateLimiter::bucket_id`]).
    buckets: Buckets,
    /// Keyed with random keys, so that clients cannot choose keys that share a bucket.
    hasher: foldhash::fast::RandomState,
}

pub struct RateLimiter {
    pub rule: RateLimitRule,
    matcher: RuleMatcher,
    state: Arc<BucketState>,
    /// Counts behind the Prometheus series, kept across reloads for the same series so that
    /// the counters never go backwards.
    allowed: Arc<AtomicU64>,
    limited: Arc<AtomicU64>,
    /// The `action` label of the limited series.
    outcome: &'static str,
    allowed_metric: Counter,
    limited_metric: Counter,
    delay_metric: Histogram,
    buckets_metric: Gauge,
}

impl RateLimiter {
    /// Builds the limiter of a rule; `previous` is the limiter of the rule with the same name
    /// before a reload, whose buckets and counts carry over where they still apply.
    pub fn new(rule: RateLimitRule, previous: Option<&RateLimiter>) -> RateLimiter {
        let name = rule.name.get_ref().clone();
        let outcome = match (rule.mode, rule.action) {
            (Mode::Shadow, _) => "shadow",
            (Mode::Enforce, Action::Reject) => "reject",
            (Mode::Enforce, Action::Delay) => "delay",
        };
        let same_shape = |previous: &&RateLimiter| {
            let old = &previous.rule;
            old.limit.get_ref() == rule.limit.get_ref()
                && old.period == rule.period
                && old.burst() == rule.burst()
                && old.bucket == rule.bucket
                && old.scope() == rule.scope()
        };
        let state = previous.filter(same_shape).map_or_else(
            || {
                Arc::new(BucketState {
                    buckets: Buckets::new(rule.interval(), rule.burst()),
                    hasher: foldhash::fast::RandomState::default(),
                })
            },
            |previous| Arc::clone(&previous.state),
        );
        RateLimiter {
            matcher: RuleMatcher::compile(&rule),
            state,
            allowed: previous.map_or_else(Arc::default, |previous| Arc::clone(&previous.allowed)),
            limited: previous
                .filter(|previous| previous.outcome == outcome)
                .map_or_else(Arc::default, |previous| Arc::clone(&previous.limited)),
            outcome,
            allowed_metric: counter!("keyward_ratelimit_allowed_total", "rule" => name.clone()),
            limited_metric: counter!("keyward_ratelimit_limited_total", "rule" => name.clone(), "action" => outcome),
            delay_metric: histogram!("keyward_ratelimit_delay_seconds", "rule" => name.clone()),
            buckets_metric: gauge!("keyward_ratelimit_buckets", "rule" => name),
            rule,
        }
    }

    pub fn name(&self) -> &str {
        self.rule.name.get_ref()
    }

    pub fn matcher(&self) -> &RuleMatcher {
        &self.matcher
    }

    pub fn is_shadow(&self) -> bool {
        self.rule.mode == Mode::Shadow
    }

    /// Decides for a command this rule matches. `keys` are the command's keys that match the
    /// rule's patterns (used when `bucket = "key"`); `now` is when it came (its batch's time,
    /// [`Subject::now`](crate::policy::phase::Subject)); `delayed` is how long the command has
    /// already been held; `answer` is Redis's answer for a global rule, once it came; `charged`
    /// holds the buckets already charged for this command, which are not charged again when it
    /// is judged again after a delay (nor twice when it names a key twice).
    pub fn decide<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
        requester: &Requester<'_>,
        now: Instant,
        delayed: Duration,
        answer: Option<Answer>,
        charged: &mut Vec<u64>,
    ) -> Verdict {
        // The buckets are the command's matching keys, its client's, or the rule's one. Each
        // scope names them itself: one iterator over all three kinds (a chain of options)
        // cost about 130 instructions per command under callgrind, pipelined.
        let refusal = match (self.rule.scope(), self.rule.bucket) {
            // Charged as they come, without gathering them first: most commands name one key.
            (Scope::Local, Bucket::Key) => self.charge(keys, now, charged),
            (Scope::Local, Bucket::Client) => {
                self.charge([requester.client].into_iter(), now, charged)
            }
            (Scope::Local, Bucket::Rule) => self.charge([&b""[..]].into_iter(), now, charged),
            (Scope::Global, _) => {
                // Inline for the usual handful of keys: deciding costs no allocation.
                let mut buckets: SmallVec<[&[u8]; 4]> = match self.rule.bucket {
                    Bucket::Key => keys.map(|key| key as &[u8]).collect(),
                    Bucket::Client => smallvec::smallvec![requester.client],
                    Bucket::Rule => smallvec::smallvec![&b""[..]],
                };
                buckets.sort_unstable();
                buckets.dedup();
                match answer {
                    None => {
                        return Verdict::AskRedis(global::encode_check(
                            self.name(),
                            &buckets,
                            self.rule.interval(),
                            self.rule.burst(),
                        ))
                    }
                    Some(Ok(None)) => None,
                    Some(Ok(Some((wait, refused)))) => {
                        let bucket = buckets.get(refused).copied().unwrap_or_default();
                        Some((bucket.to_vec(), wait))
                    }
                    Some(Err(reason)) => {
                        return self
                            .undecided(buckets.first().copied().unwrap_or_default(), &reason)
                    }
                }
            }
        };
        let Some((bucket, wait)) = refusal else {
            self.allowed.fetch_add(1, Ordering::Relaxed);
            if !delayed.is_zero() {
                self.delay_metric.record(delayed.as_secs_f64());
            }
            return Verdict::Allow;
        };
        if self.rule.mode == Mode::Shadow {
            self.limited.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(rule = self.name(), bucket = %String::from_utf8_lossy(&bucket), "would rate-limit (shadow)");
            return Verdict::Allow;
        }
        if self.rule.action == Action::Delay && delayed + wait <= self.rule.max_delay() {
            return Verdict::Delay(wait);
        }
        self.limited.fetch_add(1, Ordering::Relaxed);
        Verdict::Reject(reply::error(&rejection(self.name(), &bucket, wait)))
    }

    /// Takes a token from each bucket not charged yet for this request: the first bucket that
    /// has none refuses it (with how long until it has one).
    fn charge<'k>(
        &self,
        buckets: impl Iterator<Item = &'k [u8]>,
        now: Instant,
        charged: &mut Vec<u64>,
    ) -> Option<(Vec<u8>, Duration)> {
        for bucket in buckets {
            let id = self.bucket_id(bucket);
            if charged.contains(&id) {
                continue;
            }
            if let Err(wait) = self.state.buckets.take(id, now) {
                return Some(refused(bucket, wait, now));
            }
            charged.push(id);
        }
        None
    }

    /// Whether the rule's buckets are its clients' (`bucket = "client"`).
    pub fn buckets_by_client(&self) -> bool {
        self.rule.bucket == Bucket::Client
    }

    /// Redis could not decide a global rule: `on_error` does.
    fn undecided(&self, bucket: &[u8], reason: &str) -> Verdict {
        tracing::warn!(rule = self.name(), %reason, "global rate limit undecided; applying on_error");
        match self.rule.on_error {
            OnError::Allow => Verdict::Allow,
            OnError::Deny => {
                self.limited.fetch_add(1, Ordering::Relaxed);
                Verdict::Reject(reply::error(&format!(
                    "RATELIMITED {} {} unavailable: {}",
                    self.name(),
                    printable(bucket),
                    reason
                )))
            }
        }
    }

    /// A bucket's identity in the map: a 64-bit keyed hash, so looking one up allocates
    /// nothing. With a million buckets the odds that two share an identity are about 3e-8.
    fn bucket_id(&self, bucket: &[u8]) -> u64 {
        self.state.hasher.hash_one(bucket)
    }

    /// Drops buckets that are back to full.
    pub fn forget_idle(&self) {
        self.state.buckets.forget_full(Instant::now());
    }

    /// Copies the rule's counts to its Prometheus series. Counting uses plain atomics on the
    /// hot path; the exporter reads them when it is scraped.
    pub fn publish_metrics(&self) {
        self.allowed_metric
            .absolute(self.allowed.load(Ordering::Relaxed));
        self.limited_metric
            .absolute(self.limited.load(Ordering::Relaxed));
        self.buckets_metric.set(self.state.buckets.len() as f64);
    }

    /// (allowed, limited, buckets) for `KEYWARD RATELIMIT STATS`.
    pub fn stats(&self) -> (u64, u64, usize) {
        (
            self.allowed.load(Ordering::Relaxed),
            self.limited.load(Ordering::Relaxed),
            self.state.buckets.len(),
        )
    }
}

/// A bucket that refused a command checked at `now`, and how long until it has a cell. The wait
/// counts from the refusal, not from the batch's time the check used: a command late in a long
/// batch is held, or told to retry, no longer than its bucket needs. Out of line: the path of
/// every command let through does not carry it.
#[cold]
#[inline(never)]
fn refused(bucket: &[u8], wait: Duration, now: Instant) -> (Vec<u8>, Duration) {
    (bucket.to_vec(), wait.saturating_sub(now.elapsed()))
}

/// `RATELIMITED <rule> <bucket> retry in <ms> ms`; the bucket is shown printable and short.
fn rejection(rule: &str, bucket: &[u8], wait: Duration) -> String {
    // Rounded up: retrying after the time shown must succeed.
    let millis = wait.as_nanos().div_ceil(1_000_000).max(1);
    format!(
        "RATELIMITED {rule} {} retry in {millis} ms",
        printable(bucket)
    )
}

/// A bucket as shown in an error line: printable, at most 128 bytes, `-` when empty.
fn printable(bucket: &[u8]) -> String {
    let shown: String = bucket
        .iter()
        .take(128)
        .map(|&byte| {
            if byte.is_ascii_graphic() {
                byte as char
            } else {
                '?'
            }
        })
        .collect();
    if shown.is_empty() {
        "-".into()
    } else {
        shown
    }
}
