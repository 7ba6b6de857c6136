//! The client sessions keyward serves, by the id `CLIENT ID` gives each: what a command that
//! names another client (`CLIENT KILL ID`, `CLIENT UNBLOCK`, `CLIENT TRACKING … REDIRECT`)
//! needs to reach it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Directory {
    sessions: Mutex<FxHashMap<u64, Arc<Listing>>>,
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
    /// Lists session `id`; its [`Listing::stop`] follows `shutdown`.
    pub fn enter(&self, id: u64, shutdown: &CancellationToken) -> Arc<Listing> {
        let listing = Arc::new(Listing {
            redis_id: AtomicU64::new(0),
            stop: shutdown.child_token(),
            killed: AtomicBool::new(false),
        });
        self.lock().insert(id, Arc::clone(&listing));
        listing
    }

    pub fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The session with this keyward id, if it is still connected.
    pub fn find(&self, id: u64) -> Option<Arc<Listing>> {
        self.lock().get(&id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<u64, Arc<Listing>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
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
