//! A local rule's buckets: GCRA (the generic cell rate algorithm) over a sharded table that
//! keeps one theoretical arrival time per bucket.
//!
//! Kept here rather than taken from a rate-limiting crate: under callgrind, the `governor`
//! crate's keyed limiter took about 120 instructions of a pipelined GET under a rule, since it
//! reads the clock for every check and takes a map shard's read lock to then compare-and-swap
//! the bucket. A check here reads the time of the session's batch, which the session already
//! has, and updates one instant under one shard's lock. The algorithm is the one the global
//! rules run in Redis (see `global.rs`).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use quanta::Instant;
use rustc_hash::FxBuildHasher;

/// Shards of the table, so that sessions on different worker threads rarely want one lock.
const SHARDS: usize = 64;

/// A bucket full for this long is dropped by [`Buckets::forget_full`]: a batch's time can be a
/// little older than the time the table is swept at, and such a bucket must still be found.
const FULL_FOR: Duration = Duration::from_secs(1);

/// One shard's buckets: theoretical arrival times by bucket identity. On a cache line of its
/// own, so that threads locking neighbouring shards do not take the line from each other.
#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<HashMap<u64, Instant, FxBuildHasher>>);

/// The cell rate: a cell every `interval`, and `tolerance` (`(burst - 1) × interval`) of them
/// ahead of time at most. Times stay `quanta` instants, as the sessions read them: the table
/// needs no origin of its own.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    interval: Duration,
    tolerance: Duration,
}

impl Gcra {
    fn new(interval: Duration, burst: u32) -> Gcra {
        Gcra {
            interval,
            tolerance: interval.saturating_mul(burst.max(1) - 1),
        }
    }

    /// A cell asked for at `now` from a bucket whose theoretical arrival time is `tat` (`now`
    /// for a full bucket): `Ok` with the bucket's next arrival time if it conforms, else `Err`
    /// with how long until it would.
    #[inline]
    fn conform(self, tat: Instant, now: Instant) -> Result<Instant, Duration> {
        // No earliest time before the clock's origin: the bucket conforms.
        if let Some(earliest) = tat.checked_sub(self.tolerance) {
            if now < earliest {
                return Err(earliest.duration_since(now));
            }
        }
        let from = tat.max(now);
        // An instant is 64 bits of nanoseconds, which end after 584 years; rules keep a bucket
        // within a century ahead (`config::rule_checks::check_rate_limits`).
        Ok(from.checked_add(self.interval).unwrap_or(from))
    }
}

/// The buckets of a local rule, by identity (a keyed hash of the bucket's name).
pub struct Buckets {
    gcra: Gcra,
    shards: Box<[Shard]>,
}

impl Buckets {
    /// Buckets that allow a command every `interval` ([`RateLimitRule::interval`], never
    /// zero), `burst` at once at most.
    ///
    /// [`RateLimitRule::interval`]: crate::config::RateLimitRule::interval
    pub fn new(interval: Duration, burst: u32) -> Buckets {
        Buckets {
            gcra: Gcra::new(interval, burst),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    /// Takes a cell from bucket `id` for a command that came at `now`: `Err` with how long
    /// until the bucket has one.
    #[inline]
    pub fn take(&self, id: u64, now: Instant) -> Result<(), Duration> {
        let mut shard = self.shard(id).0.lock();
        match shard.get_mut(&id) {
            Some(tat) => *tat = self.gcra.conform(*tat, now)?,
            // A bucket not in the table is full: its first cell always conforms.
            None => {
                let tat = self.gcra.conform(now, now)?;
                shard.insert(id, tat);
            }
        }
        Ok(())
    }

    /// Drops the buckets that have been full for a while: one not in the table is full, so
    /// this changes no decision, and millions of keys seen once do not keep memory.
    pub fn forget_full(&self, now: Instant) {
        let Some(full_before) = now.checked_sub(FULL_FOR) else {
            return;
        };
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            shard.retain(|_, tat| *tat > full_before);
            shard.shrink_to_fit();
        }
    }

    /// Buckets in the table: those not full, and full ones until the first sweep a second
    /// after they filled.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.0.lock().len()).sum()
    }

    #[inline]
    fn shard(&self, id: u64) -> &Shard {
        // The table's hash mixes the low bits; the shard takes others.
        &self.shards[(id >> 40) as usize % SHARDS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MILLI: u64 = 1_000_000;

    /// The instant `nanos` after a mock clock's origin.
    fn at(nanos: u64) -> Instant {
        let (clock, _) = quanta::Clock::mock();
        clock.now() + Duration::from_nanos(nanos)
    }

    /// Offers a command to one bucket every `step` nanoseconds for `total`; returns the times
    /// of the allowed ones.
    fn allowed_times(buckets: &Buckets, step: u64, total: u64) -> Vec<u64> {
        (0..=total / step)
            .map(|n| n * step)
            .filter(|&now| buckets.take(7, at(now)).is_ok())
            .collect()
    }

    #[test]
    fn never_more_than_the_quota_and_never_short_by_more_than_one() {
        // (limit, period in ms, burst), as rules write them.
        for (limit, period, burst) in [
            (5, 900_000, 5),
            (10, 3_600_000, 3),
            (60, 60_000, 60),
            (100, 1_000, 1),
        ] {
            let interval = period * MILLI / limit;
            let buckets = Buckets::new(Duration::from_nanos(interval), burst);
            // A divisor of the interval, so that offers fall exactly when cells free up.
            let step = interval / 8;
            let total = period * MILLI * 3;
            let times = allowed_times(&buckets, step, total);
            // Over every window of the run, at most burst + window / interval are allowed, and
            // at least that minus one when offered faster than the rate.
            for window in [interval * 2, period * MILLI, total] {
                for start in (0..times.len()).step_by((times.len() / 20).max(1)) {
                    let from = times[start];
                    let count = times
                        .iter()
                        .filter(|&&t| t >= from && t < from + window)
                        .count();
                    let most = burst as usize + (window / interval) as usize;
                    assert!(
                        count <= most,
                        "{limit}/{period}ms burst {burst}: {count} > {most} in {window} ns"
                    );
                }
            }
            let expected = burst as usize + (total / interval) as usize;
            assert!(
                times.len() + 1 >= expected && times.len() <= expected,
                "{limit}/{period}ms burst {burst}: {} allowed over {total} ns, GCRA allows {expected}",
                times.len()
            );
        }
    }

    /// A refused command is told how long until its bucket has a cell, and a cell is there
    /// then, not before.
    #[test]
    fn the_wait_told_is_exact() {
        let buckets = Buckets::new(Duration::from_millis(100), 2);
        assert!(buckets.take(1, at(0)).is_ok() && buckets.take(1, at(0)).is_ok());
        let wait = buckets.take(1, at(30 * MILLI)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(70));
        assert!(buckets.take(1, at(100 * MILLI - 1)).is_err());
        assert!(buckets.take(1, at(100 * MILLI)).is_ok());
        // Another bucket is untouched by all this.
        assert!(buckets.take(2, at(30 * MILLI)).is_ok());
    }

    /// Sweeping drops only buckets full for a while, so no decision changes with it.
    #[test]
    fn sweeping_forgets_full_buckets_only() {
        let second = 1_000 * MILLI;
        let buckets = Buckets::new(Duration::from_secs(10), 1);
        assert!(buckets.take(1, at(second)).is_ok());
        assert!(buckets.take(2, at(21 * second)).is_ok());
        assert_eq!(buckets.len(), 2);
        // Bucket 1 is full again from 11 s, bucket 2 only from 31 s.
        buckets.forget_full(at(25 * second));
        assert_eq!(buckets.len(), 1);
        assert!(buckets.take(2, at(25 * second)).is_err());
        assert!(buckets.take(1, at(25 * second)).is_ok());
    }
}
