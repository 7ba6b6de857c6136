//! A local rule's buckets: GCRA (the generic cell rate algorithm) over a sharded table that
//! keeps one theoretical arrival time per bucket.
//!
//! Kept here rather than taken from a rate-limiting crate: under callgrind, the `governor`
//! crate's keyed limiter took about 120 instructions of a pipelined GET under a rule, since it
//! reads the clock for every check and takes a map shard's read lock to then compare-and-swap
//! the bucket. A check here reads the time of the session's batch, which the session already
//! has, and updates a plain integer under one shard's lock. The algorithm is the one the global
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

/// One shard's buckets: theoretical arrival times (nanoseconds since [`Buckets::start`]) by
/// bucket identity. On a cache line of its own, so that threads locking neighbouring shards do
/// not take the line from each other.
#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<HashMap<u64, u64, FxBuildHasher>>);

/// The cell rate, in nanoseconds: a cell every `interval`, and `tolerance` (`(burst - 1) ×
/// interval`) of them ahead of time at most.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    interval: u64,
    tolerance: u64,
}

impl Gcra {
    fn new(interval: Duration, burst: u32) -> Gcra {
        let interval = u64::try_from(interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }

    /// A cell asked for at `now` from a bucket whose theoretical arrival time is `tat` (`now`
    /// for a full bucket): `Ok` with the bucket's next arrival time if it conforms, else `Err`
    /// with how long until it would.
    #[inline]
    fn conform(self, tat: u64, now: u64) -> Result<u64, u64> {
        let earliest = tat.saturating_sub(self.tolerance);
        if now < earliest {
            return Err(earliest - now);
        }
        Ok(tat.max(now).saturating_add(self.interval))
    }
}

/// The buckets of a local rule, by identity (a keyed hash of the bucket's name).
pub struct Buckets {
    gcra: Gcra,
    /// Times are kept as nanoseconds since this.
    start: Instant,
    shards: Box<[Shard]>,
}

impl Buckets {
    /// Buckets that allow a command every `interval`, `burst` at once at most.
    pub fn new(interval: Duration, burst: u32) -> Buckets {
        Buckets {
            gcra: Gcra::new(interval, burst),
            start: Instant::now(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    /// Takes a cell from bucket `id` for a command that came at `now`: `Err` with how long
    /// until the bucket has one.
    #[inline]
    pub fn take(&self, id: u64, now: Instant) -> Result<(), Duration> {
        self.take_at(id, self.since_start(now))
            .map_err(Duration::from_nanos)
    }

    #[inline]
    fn take_at(&self, id: u64, now: u64) -> Result<(), u64> {
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
        let full_before = self
            .since_start(now)
            .saturating_sub(FULL_FOR.as_nanos() as u64);
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            shard.retain(|_, tat| *tat > full_before);
            shard.shrink_to_fit();
        }
    }

    /// Buckets in the table (those not full, and those full only for a moment).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.0.lock().len()).sum()
    }

    #[inline]
    fn shard(&self, id: u64) -> &Shard {
        // The table's hash mixes the low bits; the shard takes others.
        &self.shards[(id >> 40) as usize % SHARDS]
    }

    #[inline]
    fn since_start(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(elapsed).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MILLI: u64 = 1_000_000;

    /// Offers a command to one bucket every `step` nanoseconds for `total`; returns the times
    /// of the allowed ones.
    fn allowed_times(buckets: &Buckets, step: u64, total: u64) -> Vec<u64> {
        (0..=total / step)
            .map(|n| n * step)
            .filter(|&now| buckets.take_at(7, now).is_ok())
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
        assert!(buckets.take_at(1, 0).is_ok() && buckets.take_at(1, 0).is_ok());
        let wait = buckets.take_at(1, 30 * MILLI).unwrap_err();
        assert_eq!(wait, 70 * MILLI);
        assert!(buckets.take_at(1, 30 * MILLI + wait - 1).is_err());
        assert!(buckets.take_at(1, 30 * MILLI + wait).is_ok());
        // Another bucket is untouched by all this.
        assert!(buckets.take_at(2, 30 * MILLI).is_ok());
    }

    /// Sweeping drops only buckets full for a while, so no decision changes with it.
    #[test]
    fn sweeping_forgets_full_buckets_only() {
        let buckets = Buckets::new(Duration::from_secs(10), 1);
        let start = buckets.start;
        assert!(buckets.take(1, start).is_ok());
        assert!(buckets.take(2, start + Duration::from_secs(20)).is_ok());
        assert_eq!(buckets.len(), 2);
        // Bucket 1 is full again from 10 s, bucket 2 only from 30 s.
        buckets.forget_full(start + Duration::from_secs(25));
        assert_eq!(buckets.len(), 1);
        assert!(buckets.take(2, start + Duration::from_secs(25)).is_err());
        assert!(buckets.take(1, start + Duration::from_secs(25)).is_ok());
    }
}
