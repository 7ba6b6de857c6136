//! `[[rate_limit]]`: GCRA per bucket, with the `governor` crate's keyed limiter.
//!
//! A rule allows `limit` commands per `period` after a burst of `burst`: one cell is replenished
//! every `period / limit`, at most `burst` are available at once. Buckets are per key, per client
//! or per rule. Idle buckets are dropped by [`RateLimiter::forget_idle`], so millions of
//! distinct keys do not grow memory without bound.
//!
//! A command with several matching keys (`MGET a b`) must conform for each; the keys are checked
//! in order, so keys checked before the one that refused have used a cell for a command that did
//! not run.

pub mod global;
mod phase;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::Quota;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use rustc_hash::FxBuildHasher;
use smallvec::SmallVec;

use super::matcher::RuleMatcher;
use crate::config::rules::{Action, Bucket, Mode, OnError, Scope};
use crate::config::RateLimitRule;
use crate::resp::reply;
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

/// GCRA state per bucket, keyed by the bucket's hash (see [`RateLimiter::bucket_id`]).
type Buckets = governor::RateLimiter<u64, DashMapStateStore<u64, FxBuildHasher>, DefaultClock>;

/// The buckets of a rule, kept across reloads as long as the rule's shape (limit, period,
/// burst, bucket, scope) does not change: switching a rule from shadow to enforce keeps what
/// shadow mode counted.
struct BucketState {
    limiter: Buckets,
    /// Keyed with random keys, so that clients cannot choose keys that share a bucket.
    hasher: ahash::RandomState,
}

pub struct RateLimiter {
    pub rule: RateLimitRule,
    matcher: RuleMatcher,
    state: Arc<BucketState>,
    /// Time between two cells, `period / limit`.
    interval: Duration,
    clock: DefaultClock,
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
        let (quota, interval) = quota(&rule);
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
                    limiter: Buckets::dashmap_with_clock_and_hasher(
                        quota,
                        DefaultClock::default(),
                        FxBuildHasher,
                    ),
                    hasher: ahash::RandomState::new(),
                })
            },
            |previous| Arc::clone(&previous.state),
        );
        RateLimiter {
            matcher: RuleMatcher::compile(&rule),
            state,
            interval,
            clock: DefaultClock::default(),
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
    /// rule's patterns (used when `bucket = "key"`); `delayed` is how long the command has
    /// already been held; `answer` is Redis's answer for a global rule, once it came; `charged`
    /// holds the buckets already charged for this command, which are not charged again when it
    /// is judged again after a delay (nor twice when it names a key twice).
    pub fn decide<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
        requester: &Requester<'_>,
        delayed: Duration,
        answer: Option<Answer>,
        charged: &mut Vec<u64>,
    ) -> Verdict {
        // The buckets are the command's matching keys, its client's, or the rule's one. Each
        // scope names them itself: one iterator over all three kinds (a chain of options)
        // cost about 130 instructions per command under callgrind, pipelined.
        let refusal = match (self.rule.scope(), self.rule.bucket) {
            // Charged as they come, without gathering them first: most commands name one key.
            (Scope::Local, Bucket::Key) => self.charge(keys, charged),
            (Scope::Local, Bucket::Client) => self.charge([requester.client].into_iter(), charged),
            (Scope::Local, Bucket::Rule) => self.charge([&b""[..]].into_iter(), charged),
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
                            self.interval,
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
        charged: &mut Vec<u64>,
    ) -> Option<(Vec<u8>, Duration)> {
        for bucket in buckets {
            let id = self.bucket_id(bucket);
            if charged.contains(&id) {
                continue;
            }
            let refusal = self.take(id, bucket);
            if refusal.is_some() {
                return refusal;
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

    /// Takes one cell from a bucket: `None` if it conformed, else the bucket and the wait.
    fn take(&self, id: u64, bucket: &[u8]) -> Option<(Vec<u8>, Duration)> {
        match self.state.limiter.check_key(&id) {
            Ok(()) => None,
            Err(not_until) => Some((bucket.to_vec(), not_until.wait_time_from(self.clock.now()))),
        }
    }

    /// A bucket's identity in the map: a 64-bit keyed hash, so looking one up allocates
    /// nothing. With a million buckets the odds that two share an identity are about 3e-8.
    fn bucket_id(&self, bucket: &[u8]) -> u64 {
        self.state.hasher.hash_one(bucket)
    }

    /// Drops buckets that are back to full.
    pub fn forget_idle(&self) {
        self.state.limiter.retain_recent();
        self.state.limiter.shrink_to_fit();
    }

    /// Copies the rule's counts to its Prometheus series. Counting uses plain atomics on the
    /// hot path; the exporter reads them when it is scraped.
    pub fn publish_metrics(&self) {
        self.allowed_metric
            .absolute(self.allowed.load(Ordering::Relaxed));
        self.limited_metric
            .absolute(self.limited.load(Ordering::Relaxed));
        self.buckets_metric.set(self.state.limiter.len() as f64);
    }

    /// (allowed, limited, buckets) for `KEYWARD RATELIMIT STATS`.
    pub fn stats(&self) -> (u64, u64, usize) {
        (
            self.allowed.load(Ordering::Relaxed),
            self.limited.load(Ordering::Relaxed),
            self.state.limiter.len(),
        )
    }
}

/// The GCRA quota of a rule: one cell every `period / limit`, at most `burst` at once. Also
/// returns the interval between cells.
fn quota(rule: &RateLimitRule) -> (Quota, Duration) {
    let limit = (*rule.limit.get_ref()).max(1);
    let interval = (rule.period.get() / limit).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rule.burst().max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    (quota, interval)
}

/// `RATELIMITED <rule> <bucket> retry in <ms> ms`; the bucket is shown printable and short.
fn rejection(rule: &str, bucket: &[u8], wait: Duration) -> String {
    // Rounded up: retrying after the time shown must succeed.
    let millis = wait.as_micros().div_ceil(1000).max(1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use governor::clock::FakeRelativeClock;

    fn rule(limit: u32, period: &str, burst: u32) -> RateLimitRule {
        let text = format!(
            "[[rate_limit]]\nname = \"r\"\nlimit = {limit}\nperiod = \"{period}\"\nburst = {burst}\n"
        );
        Config::parse(&text).unwrap().0.rate_limit.remove(0)
    }

    /// Offers a command every `step` for `total`, on a simulated clock; returns the times of
    /// the allowed ones.
    fn allowed_times(rule: &RateLimitRule, step: Duration, total: Duration) -> Vec<Duration> {
        let clock = FakeRelativeClock::default();
        let limiter = governor::RateLimiter::direct_with_clock(quota(rule).0, clock.clone());
        let mut now = Duration::ZERO;
        let mut allowed = Vec::new();
        while now <= total {
            if limiter.check().is_ok() {
                allowed.push(now);
            }
            clock.advance(step);
            now += step;
        }
        allowed
    }

    #[test]
    fn never_more_than_the_quota_and_never_short_by_more_than_one() {
        for (limit, period, burst) in [(5, "15m", 5), (10, "1h", 3), (60, "1m", 60), (100, "1s", 1)]
        {
            let rule = rule(limit, period, burst);
            let interval = rule.period.get() / limit;
            // A divisor of the interval, so that offers fall exactly when cells free up.
            let step = interval / 8;
            let total = rule.period.get() * 3;
            let times = allowed_times(&rule, step, total);
            // Over every window of the run, at most burst + window / interval are allowed, and
            // at least that minus one when offered faster than the rate.
            for window in [interval * 2, rule.period.get(), total] {
                for start in (0..times.len()).step_by((times.len() / 20).max(1)) {
                    let from = times[start];
                    let count = times
                        .iter()
                        .filter(|&&t| t >= from && t < from + window)
                        .count();
                    let most = burst as usize + (window.as_nanos() / interval.as_nanos()) as usize;
                    assert!(
                        count <= most,
                        "{limit}/{period} burst {burst}: {count} > {most} in {window:?}"
                    );
                }
            }
            let expected = burst as usize + (total.as_nanos() / interval.as_nanos()) as usize;
            assert!(
                times.len() + 1 >= expected && times.len() <= expected,
                "{limit}/{period} burst {burst}: {} allowed over {total:?}, GCRA allows {expected}",
                times.len()
            );
        }
    }
}
