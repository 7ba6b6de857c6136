//! The `CLIENT PAUSE` keyward passed on to Redis, so that sessions know which of their commands
//! Redis will hold until it ends (a pause set on Redis directly is noticed only once a command
//! has waited [`HELD_TOO_LONG`](super::connection::HELD_TOO_LONG)).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a pause holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paused {
    /// `CLIENT PAUSE … WRITE`: writes, and what Redis holds with them.
    Writes,
    /// `CLIENT PAUSE … ALL`, Redis's default.
    Everything,
}

pub struct Pause {
    started: Instant,
    /// When the pause ends, in milliseconds since `started` (see [`Pause::now`]); 0 when none
    /// is known.
    until: AtomicU64,
    /// `CLIENT PAUSE … ALL` rather than `WRITE`.
    all: AtomicBool,
}

impl Default for Pause {
    fn default() -> Pause {
        Pause {
            started: Instant::now(),
            until: AtomicU64::new(0),
            all: AtomicBool::new(false),
        }
    }
}

impl Pause {
    /// A pause of `length` begins; as in Redis, the later end and the stricter mode prevail.
    pub fn begin(&self, length: Duration, paused: Paused) {
        let all = paused == Paused::Everything;
        let now = self.now();
        let until = now.saturating_add(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
        if self.until.fetch_max(until, Ordering::Relaxed) < now {
            self.all.store(all, Ordering::Relaxed);
        } else {
            self.all.fetch_or(all, Ordering::Relaxed);
        }
    }

    /// `CLIENT UNPAUSE`.
    pub fn end(&self) {
        self.until.store(0, Ordering::Relaxed);
        self.all.store(false, Ordering::Relaxed);
    }

    /// The pause in force now, if any.
    pub fn in_force(&self) -> Option<Paused> {
        let until = self.until.load(Ordering::Relaxed);
        if until == 0 || until <= self.now() {
            return None;
        }
        Some(match self.all.load(Ordering::Relaxed) {
            true => Paused::Everything,
            false => Paused::Writes,
        })
    }

    /// Milliseconds since `started`, from 1 (0 means no pause).
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

/// `CLIENT PAUSE timeout [WRITE|ALL]`: the pause's length and what it holds, or `None` if
/// Redis will refuse it.
pub fn parse_pause(args: &[&[u8]]) -> Option<(Duration, Paused)> {
    let millis: i64 = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
    let paused = match args.get(3) {
        None => Paused::Everything,
        Some(mode) if mode.eq_ignore_ascii_case(b"all") => Paused::Everything,
        Some(mode) if mode.eq_ignore_ascii_case(b"write") => Paused::Writes,
        Some(_) => return None,
    };
    Some((Duration::from_millis(u64::try_from(millis).ok()?), paused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_later_end_and_the_stricter_mode_prevail_until_unpaused() {
        let pause = Pause::default();
        assert_eq!(pause.in_force(), None);
        pause.begin(Duration::from_secs(60), Paused::Writes);
        assert_eq!(pause.in_force(), Some(Paused::Writes));
        pause.begin(Duration::from_secs(1), Paused::Everything);
        assert_eq!(pause.in_force(), Some(Paused::Everything));
        pause.end();
        assert_eq!(pause.in_force(), None);
        pause.begin(Duration::ZERO, Paused::Everything);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(pause.in_force(), None);
        // As long as Redis allows, without overflowing.
        pause.begin(Duration::from_millis(i64::MAX as u64), Paused::Writes);
        assert_eq!(pause.in_force(), Some(Paused::Writes));
    }

    #[test]
    fn pause_arguments_are_read_as_redis_reads_them() {
        let args = |line: &'static str| -> Vec<&'static [u8]> {
            line.split(' ').map(str::as_bytes).collect()
        };
        assert_eq!(
            parse_pause(&args("CLIENT PAUSE 100")),
            Some((Duration::from_millis(100), Paused::Everything))
        );
        assert_eq!(
            parse_pause(&args("CLIENT PAUSE 100 write")),
            Some((Duration::from_millis(100), Paused::Writes))
        );
        assert_eq!(parse_pause(&args("CLIENT PAUSE soon")), None);
        assert_eq!(parse_pause(&args("CLIENT PAUSE -5")), None);
        assert_eq!(parse_pause(&args("CLIENT PAUSE 100 reads")), None);
    }
}
