//! The `CLIENT PAUSE` keyward passed on to Redis, so that sessions know which of their commands
//! Redis will hold until it ends (a pause set on Redis directly is noticed only once a command
//! has waited [`HELD_TOO_LONG`](super::connection::HELD_TOO_LONG)).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::command::Holding;

pub struct Pause {
    started: Instant,
    /// When the pause ends, in milliseconds since `started`; 0 when none is known.
    until: AtomicU64,
    /// `CLIENT PAUSE … ALL` (Redis's default) rather than `WRITE`.
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
    pub fn begin(&self, length: Duration, all: bool) {
        let until = self.millis(Instant::now() + length);
        if self.until.fetch_max(until, Ordering::Relaxed) < self.now() {
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

    /// Whether Redis holds a command that `holding` describes now.
    pub fn holds(&self, holding: Holding) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        if until == 0 || holding == Holding::Always {
            return holding == Holding::Always;
        }
        until > self.now() && (holding == Holding::InWritePause || self.all.load(Ordering::Relaxed))
    }

    fn now(&self) -> u64 {
        self.millis(Instant::now())
    }

    fn millis(&self, at: Instant) -> u64 {
        at.duration_since(self.started).as_millis() as u64 + 1
    }
}

/// `CLIENT PAUSE timeout [WRITE|ALL]`: the pause's length and whether it holds everything, or
/// `None` if Redis will refuse it.
pub fn parse_pause(args: &[&[u8]]) -> Option<(Duration, bool)> {
    let millis: u64 = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
    let all = match args.get(3) {
        None => true,
        Some(mode) if mode.eq_ignore_ascii_case(b"all") => true,
        Some(mode) if mode.eq_ignore_ascii_case(b"write") => false,
        Some(_) => return None,
    };
    Some((Duration::from_millis(millis), all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_pause_holds_writes_and_scripts_until_it_ends() {
        let pause = Pause::default();
        assert!(!pause.holds(Holding::InWritePause));
        assert!(pause.holds(Holding::Always));
        pause.begin(Duration::from_secs(60), false);
        assert!(pause.holds(Holding::InWritePause));
        assert!(!pause.holds(Holding::InFullPause));
        pause.begin(Duration::from_secs(1), true);
        assert!(pause.holds(Holding::InFullPause));
        pause.end();
        assert!(!pause.holds(Holding::InWritePause));
        pause.begin(Duration::ZERO, true);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!pause.holds(Holding::InFullPause));
    }

    #[test]
    fn pause_arguments_are_read_as_redis_reads_them() {
        let args = |line: &'static str| -> Vec<&'static [u8]> {
            line.split(' ').map(str::as_bytes).collect()
        };
        assert_eq!(
            parse_pause(&args("CLIENT PAUSE 100")),
            Some((Duration::from_millis(100), true))
        );
        assert_eq!(
            parse_pause(&args("CLIENT PAUSE 100 write")),
            Some((Duration::from_millis(100), false))
        );
        assert_eq!(parse_pause(&args("CLIENT PAUSE soon")), None);
        assert_eq!(parse_pause(&args("CLIENT PAUSE 100 reads")), None);
    }
}
