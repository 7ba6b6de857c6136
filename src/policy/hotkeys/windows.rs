//! Sliding windows, built from the periods of the shortest one.
//!
//! Commands are counted only in the shortest window's current period. When that period ends,
//! every longer window absorbs it whole, so a command costs one update however many windows
//! are configured. Each window keeps its last complete period and its current one; a longer
//! window's report adds the shortest window's current period, which it has not absorbed yet.

use std::time::Duration;

use quanta::Instant;

use super::space_saving::SpaceSaving;
use super::By;

/// What a summary counts: keys, or folded key patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Of {
    Keys = 0,
    Patterns = 1,
}

/// The summaries of one stretch of time: keys and folded key patterns, each ranked by
/// requests and by bytes.
#[derive(Clone)]
pub struct Period {
    /// By [`Of`], then by [`By`].
    summaries: [[SpaceSaving; 2]; 2],
}

impl Period {
    pub(super) fn new(capacity: usize) -> Period {
        let summary = SpaceSaving::new(capacity);
        let ranked = [summary.clone(), summary];
        Period {
            summaries: [ranked.clone(), ranked],
        }
    }

    pub fn summary(&self, of: Of, by: By) -> &SpaceSaving {
        &self.summaries[of as usize][by as usize]
    }

    pub fn summary_mut(&mut self, of: Of, by: By) -> &mut SpaceSaving {
        &mut self.summaries[of as usize][by as usize]
    }

    fn summaries(&mut self) -> impl Iterator<Item = &mut SpaceSaving> {
        self.summaries.iter_mut().flatten()
    }

    fn clear(&mut self) {
        self.summaries().for_each(SpaceSaving::clear);
    }

    fn absorb(&mut self, other: &Period) {
        for (mine, theirs) in self.summaries().zip(other.summaries.iter().flatten()) {
            mine.absorb(theirs);
        }
    }
}

struct Window {
    length: Duration,
    started: Instant,
    current: Period,
    previous: Period,
}

impl Window {
    /// Moves on to the period `at` falls in.
    fn advance(&mut self, at: Instant) {
        let elapsed = at.saturating_duration_since(self.started);
        let periods = elapsed.as_nanos() / self.length.as_nanos().max(1);
        if periods == 0 {
            return;
        }
        if periods >= 2 {
            self.previous.clear();
        } else {
            std::mem::swap(&mut self.previous, &mut self.current);
        }
        self.current.clear();
        // On the window's own schedule, so a late move never stretches a period.
        self.started += self.length * u32::try_from(periods).unwrap_or(u32::MAX);
    }
}

/// Numbers the periods of the shortest window, so that a session can tell, without the
/// summaries' lock, whether staged counts belong to a period that has ended.
#[derive(Debug, Clone, Copy)]
pub struct PeriodClock {
    origin: Instant,
    /// In u64, which holds 584 years: a division of u128 is a call, and this one runs for
    /// every batch of counts.
    length_nanos: u64,
}

impl PeriodClock {
    pub fn number(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed).map_or(u64::MAX, |elapsed| elapsed / self.length_nanos)
    }

    /// The first instant after `period` (none past what an `Instant` holds).
    pub fn end_of(&self, period: u64) -> Option<Instant> {
        self.after_origin((u128::from(period) + 1) * u128::from(self.length_nanos))
    }

    /// The moment counts staged in `period` are counted at: `now` if it falls in that period,
    /// else the period's nearest instant.
    pub fn moment(&self, period: u64, now: Instant) -> Instant {
        let length = u128::from(self.length_nanos);
        let start = u128::from(period) * length;
        match (
            self.after_origin(start),
            self.after_origin(start + length - 1),
        ) {
            (Some(first), Some(last)) => now.clamp(first, last),
            _ => now,
        }
    }

    /// The instant `nanos` after the origin (none past what an `Instant` holds).
    fn after_origin(&self, nanos: u128) -> Option<Instant> {
        u64::try_from(nanos)
            .ok()
            .and_then(|nanos| self.origin.checked_add(Duration::from_nanos(nanos)))
    }
}

pub struct Windows {
    /// In configured order.
    windows: Vec<Window>,
    /// The shortest window: the one commands are counted in.
    shortest: usize,
}

impl Windows {
    pub fn new(lengths: &[Duration], capacity: usize, now: Instant) -> Windows {
        let windows: Vec<Window> = lengths
            .iter()
            .map(|&length| Window {
                length,
                started: now,
                current: Period::new(capacity),
                previous: Period::new(capacity),
            })
            .collect();
        let shortest = (0..windows.len())
            .min_by_key(|&index| windows[index].length)
            .unwrap_or(0);
        Windows { windows, shortest }
    }

    /// The clock of the periods [`counting`](Self::counting) moves through.
    pub fn clock(&self) -> PeriodClock {
        let (origin, length) = self
            .windows
            .get(self.shortest)
            .map_or((Instant::now(), Duration::MAX), |w| (w.started, w.length));
        PeriodClock {
            origin,
            length_nanos: u64::try_from(length.as_nanos()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// The period commands seen now are counted in.
    pub fn counting(&mut self, now: Instant) -> &mut Period {
        self.advance(now);
        &mut self.windows[self.shortest].current
    }

    /// The periods a report of the window of `length` adds up: its own two, and for a longer
    /// window the shortest one's current period, which it has not absorbed yet.
    pub fn periods(&mut self, length: Duration, now: Instant) -> Option<Vec<&Period>> {
        self.advance(now);
        let index = self.windows.iter().position(|w| w.length == length)?;
        let window = &self.windows[index];
        let mut periods = vec![&window.previous, &window.current];
        if index != self.shortest {
            periods.push(&self.windows[self.shortest].current);
        }
        Some(periods)
    }

    fn advance(&mut self, now: Instant) {
        let Some(shortest) = self.windows.get(self.shortest) else {
            return;
        };
        let ended = shortest.started + shortest.length;
        if now >= ended {
            // The period that ended goes, whole, into the period of each longer window that
            // its last instant belongs to.
            let last_instant = ended - Duration::from_nanos(1);
            let (before, rest) = self.windows.split_at_mut(self.shortest);
            let (shortest, after) = rest.split_first_mut().expect("the shortest window");
            for window in before.iter_mut().chain(after.iter_mut()) {
                window.advance(last_instant);
                window.current.absorb(&shortest.current);
            }
        }
        for window in &mut self.windows {
            window.advance(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::hotkeys::key_hash::key_hash;
    use crate::policy::hotkeys::space_saving::Tally;

    fn count(period: &mut Period, key: &[u8], times: u64) {
        let tally = Tally {
            count: times,
            ..Tally::default()
        };
        period
            .summary_mut(Of::Keys, By::Requests)
            .observe(key, key_hash(key), tally);
    }

    fn total(periods: &[&Period]) -> u64 {
        periods
            .iter()
            .map(|p| p.summary(Of::Keys, By::Requests).total())
            .sum()
    }

    #[test]
    fn longer_windows_absorb_each_period_of_the_shortest() {
        let second = Duration::from_secs(1);
        let start = Instant::now();
        let mut windows = Windows::new(&[second * 10, second * 60], 16, start);
        count(windows.counting(start), b"a", 5);
        count(windows.counting(start + second * 12), b"a", 7);
        let tens = windows.periods(second * 10, start + second * 12).unwrap();
        assert_eq!(tens.len(), 2, "the shortest window absorbs nothing");
        assert_eq!(total(&tens), 12);
        let minute = windows.periods(second * 60, start + second * 12).unwrap();
        assert_eq!(
            minute.len(),
            3,
            "a longer window adds the shortest's current period"
        );
        // The first period, absorbed, and the current one of the shortest window.
        assert_eq!(total(&minute), 12);
        // At 25s the 10s window holds only the period from 20s; the minute holds all.
        let tens = windows.periods(second * 10, start + second * 25).unwrap();
        assert_eq!(total(&tens), 7);
        let minute = windows.periods(second * 60, start + second * 25).unwrap();
        assert_eq!(total(&minute), 12);
        // Two minutes later everything has aged out.
        let minute = windows.periods(second * 60, start + second * 150).unwrap();
        assert_eq!(total(&minute), 0);
    }

    #[test]
    fn the_clock_numbers_the_shortest_windows_periods() {
        let second = Duration::from_secs(1);
        let origin = Instant::now();
        let clock = Windows::new(&[second * 60, second * 10], 16, origin).clock();
        let now = origin + second * 25;
        assert_eq!(clock.number(now), 2);
        assert_eq!(clock.moment(2, now), now);
        let last_of_1 = origin + second * 20 - Duration::from_nanos(1);
        assert_eq!(clock.moment(1, now), last_of_1);
        assert_eq!(
            clock.moment(3, now),
            origin + second * 30,
            "a clock read late"
        );
        assert_eq!(clock.end_of(2), Some(origin + second * 30));
        assert_eq!(clock.end_of(u64::MAX), None, "past what an Instant holds");
    }

    #[test]
    fn a_period_ending_with_a_longer_one_counts_in_that_one() {
        let second = Duration::from_secs(1);
        let start = Instant::now();
        let mut windows = Windows::new(&[second * 30, second * 10], 16, start);
        count(windows.counting(start + second * 25), b"a", 3);
        // At 30s the 30s window's first period ends, with the 10s period [20s, 30s) in it.
        let thirty = windows.periods(second * 30, start + second * 31).unwrap();
        assert_eq!(total(&thirty[..1]), 3, "the completed period holds it");
        assert_eq!(total(&thirty[1..]), 0);
    }
}
