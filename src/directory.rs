//! The client sessions keyward serves, by the id `CLIENT ID` gives each: what a command that
//! names another client (`CLIENT KILL ID`, `CLIENT UNBLOCK`, `CLIENT TRACKING … REDIRECT`)
//! needs to reach it.
//!
//! keyward's ids start at [`FIRST_ID`], far above the ids Redis gives its clients (from 1, one
//! a connection), so that an id names one or the other, never both: an id read from
//! `CLIENT LIST` is Redis's, one from `CLIENT ID` through keyward is keyward's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;

/// The first id keyward gives out.
pub const FIRST_ID: u64 = 1_000_000_000_001;

pub struct Directory {
    sessions: Mutex<FxHashMap<u64, Arc<Listing>>>,
    next_id: AtomicU64,
}

impl Default for Directory {
    fn default() -> Directory {
        Directory {
            sessions: Mutex::default(),
            next_id: AtomicU64::new(FIRST_ID),
        }
    }
}

/// Who an id names.
pub enum Named {
    /// A session keyward serves.
    Session(Arc<Listing>),
    /// A session keyward served, gone now.
    Gone,
    /// Not an id keyward gave out: one of Redis's.
    Redis,
}

/// What other sessions may learn of one session, and do to it.
pub struct Listing {
    /// The id in Redis of the session's own connection; 0 while it uses shared ones (Redis
    /// numbers its clients from 1).
    redis_id: AtomicU64,
    /// Cancelled when the session must stop reading: keyward shuts down, or it is killed.
    stop: CancellationToken,
    killed: AtomicBool,
}

impl Directory {
    /// Gives a new session its id and lists it; its [`Listing::stop`] follows `shutdown`.
    pub fn enter(&self, shutdown: &CancellationToken) -> (u64, Arc<Listing>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let listing = Arc::new(Listing {
            redis_id: AtomicU64::new(0),
            stop: shutdown.child_token(),
            killed: AtomicBool::new(false),
        });
        self.lock().insert(id, Arc::clone(&listing));
        (id, listing)
    }

    pub fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Who `id` names.
    pub fn find(&self, id: u64) -> Named {
        if !(FIRST_ID..self.next_id.load(Ordering::Relaxed)).contains(&id) {
            return Named::Redis;
        }
        match self.lock().get(&id) {
            Some(listing) => Named::Session(Arc::clone(listing)),
            None => Named::Gone,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FxHashMap<u64, Arc<Listing>>> {
        self.sessions.lock()
    }
}

impl Listing {
    /// Records the session's own connection (`Some` of its Redis id) or its return to shared
    /// ones (`None`).
    pub fn set_redis_id(&self, id: Option<u64>) {
        self.redis_id.store(id.unwrap_or(0), Ordering::Release);
    }

    /// The id in Redis of the session's own connection, while it has one.
    pub fn redis_id(&self) -> Option<u64> {
        Some(self.redis_id.load(Ordering::Acquire)).filter(|&id| id != 0)
    }

    /// Closes the session, as `CLIENT KILL` closes a Redis client: at once, without the replies
    /// it still owes.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.stop.cancel();
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Cancelled when the session must stop: see [`Listing::is_killed`] for why.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }
}
