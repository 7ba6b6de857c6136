//! Where Redis sends invalidations for the keys keyward caches, as pooled connections need to
//! know it.
//!
//! Cache fills run on the reading session's own pooled connection (so that Redis runs them in
//! the client's order), and Redis tracks the keys a connection reads. Each pooled connection
//! therefore turns tracking on, redirected to keyward's invalidation connection, before its
//! first fill, and again whenever that connection has been replaced (its client id changed).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::resp::request::encode_command;

/// The state of keyward's invalidation connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidations {
    /// Not connected: nothing may be served from or stored into the cache.
    Down,
    /// Redis cannot track keys (before 6.0, or tracking refused): only `ttl` bounds entries.
    Unsupported,
    /// Invalidations go to the connection with this client id.
    RedirectTo(i64),
}

const DOWN: i64 = 0;
const UNSUPPORTED: i64 = -1;

#[derive(Debug, Default)]
pub struct TrackingTarget {
    /// `DOWN`, `UNSUPPORTED` or a client id.
    redirect: AtomicI64,
    /// Moved on whenever invalidations may have been lost; a fill started under an older epoch
    /// is not stored, and an entry stored under one is not served.
    epoch: AtomicU64,
    /// Where new epochs come from. The targets of a cluster's nodes share one clock, so that
    /// epochs of different nodes (and of the slots that move between them) compare: a key's
    /// epoch, the greatest of those that cover it, changes whenever any of them does.
    clock: Arc<AtomicU64>,
}

impl TrackingTarget {
    /// A target whose epochs come from the same clock as `other`'s.
    pub fn sharing_clock(other: &TrackingTarget) -> TrackingTarget {
        TrackingTarget {
            clock: Arc::clone(&other.clock),
            ..TrackingTarget::default()
        }
    }

    pub fn state(&self) -> Invalidations {
        match self.redirect.load(Ordering::Acquire) {
            DOWN => Invalidations::Down,
            UNSUPPORTED => Invalidations::Unsupported,
            id => Invalidations::RedirectTo(id),
        }
    }

    /// Every change starts a new epoch: a read that began under another state (one that may
    /// have gone untracked) is never stored.
    pub fn set(&self, state: Invalidations) {
        let value = match state {
            Invalidations::Down => DOWN,
            Invalidations::Unsupported => UNSUPPORTED,
            Invalidations::RedirectTo(id) => id,
        };
        self.redirect.store(value, Ordering::Release);
        self.lose_invalidations();
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A new epoch from the shared clock, greater than every epoch given before.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Invalidations may have been lost (the invalidation connection dropped, or a connection
    /// could not turn tracking on): fills in flight must not be stored.
    pub fn lose_invalidations(&self) {
        let next = self.tick();
        self.epoch.fetch_max(next, Ordering::AcqRel);
    }
}

/// One pooled connection's part in tracking: the target its fills redirect invalidations to,
/// and the one it last named to Redis (0: none yet).
pub struct Fills<'a> {
    target: &'a TrackingTarget,
    registered: i64,
}

impl<'a> Fills<'a> {
    pub fn new(target: &'a TrackingTarget) -> Fills<'a> {
        Fills {
            target,
            registered: 0,
        }
    }

    /// The commands to write before a fill: tracking on (when the redirect target changed
    /// since the connection last named one), then `CLIENT CACHING YES`, which makes Redis track
    /// the keys of the next command only.
    pub fn commands_before_fill(&mut self) -> SmallVec<[Bytes; 2]> {
        const CACHING_YES: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$3\r\nYES\r\n";
        let Invalidations::RedirectTo(id) = self.target.state() else {
            return SmallVec::new();
        };
        let mut commands = SmallVec::new();
        if self.registered != id {
            self.registered = id;
            let mut tracking = BytesMut::new();
            let id = id.to_string();
            let args: [&[u8]; 6] = [
                b"CLIENT",
                b"TRACKING",
                b"ON",
                b"REDIRECT",
                id.as_bytes(),
                b"OPTIN",
            ];
            encode_command(&args, &mut tracking);
            commands.push(tracking.freeze());
        }
        commands.push(Bytes::from_static(CACHING_YES));
        commands
    }

    /// Redis refused to track: the fill after it must not be stored, and the next fill turns
    /// tracking on again first.
    pub fn refused(&mut self) {
        self.target.lose_invalidations();
        self.registered = 0;
    }

    /// The connection is closing: Redis forgets what it was tracking, so invalidations for
    /// the keys filled through it will never come, and their entries must not be served.
    pub fn end(&self) {
        if self.registered != 0 {
            self.target.lose_invalidations();
        }
    }
}
