//! State shared by every session: the upstream, settings sessions act on, counters that
//! `KEYWARD INFO` reports, and the shutdown signal.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::command::CommandTable;
use crate::directory::Directory;
use crate::metrics::CommandMetrics;
use crate::policy::cache::Coherence;
use crate::policy::lock::LockTable;
use crate::reload::LiveConfig;
use crate::upstream::invalidations::Listener;
use crate::upstream::Upstream;

pub struct Context {
    pub upstream: Arc<Upstream>,
    /// Cache fills in flight and invalidations, across config reloads.
    pub cache: Arc<Coherence>,
    /// Waiters for contended locks, across config reloads.
    pub locks: Arc<LockTable>,
    /// The config and policies in force, swapped on reload.
    pub live: Arc<LiveConfig>,
    /// The password clients must `AUTH` with, when keyward requires one.
    pub listen_password: Option<String>,
    /// Idle clients are closed after this long, if set.
    pub idle_timeout: Option<Duration>,
    pub command_metrics: CommandMetrics,
    pub started: Instant,
    /// Open client connections, for `max_clients` and `KEYWARD INFO`.
    pub clients: AtomicUsize,
    pub connections_received: AtomicU64,
    /// Sessions by client id, for commands that name another client.
    pub sessions: Directory,
    /// Cancelled when keyward starts shutting down: sessions stop reading and drain.
    pub shutdown: CancellationToken,
}

impl Context {
    pub fn new(
        upstream: Arc<Upstream>,
        live: Arc<LiveConfig>,
        listen_password: Option<String>,
        idle_timeout: Option<Duration>,
    ) -> Context {
        Context {
            cache: Arc::new(Coherence::new(Arc::clone(&upstream.tracking))),
            locks: Arc::default(),
            upstream,
            live,
            listen_password,
            idle_timeout,
            command_metrics: CommandMetrics::new(CommandTable::global()),
            started: Instant::now(),
            clients: AtomicUsize::new(0),
            connections_received: AtomicU64::new(0),
            sessions: Directory::default(),
            shutdown: CancellationToken::new(),
        }
    }
}

/// Redis's news about changed keys reach the rules in force: cached entries are dropped, and
/// lock queues waiting on a key try again.
impl Listener for Arc<Context> {
    fn wanted(&self) -> bool {
        let active = self.live.load();
        !active.policies.caches.is_empty() || !active.policies.locks.is_empty()
    }

    fn changed(&self, keys: &[Vec<u8>]) {
        let active = self.live.load();
        for key in keys {
            self.cache.invalidate(&active.policies.caches, key);
            self.locks.released(key);
        }
    }

    fn everything_changed(&self) {
        self.cache.flush_all(&self.live.load().policies.caches);
        self.locks.wake_all();
    }
}
