//! State shared by every session: the upstream, settings sessions act on, counters that
//! `KEYWARD INFO` reports, and the shutdown signal.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::command::CommandTable;
use crate::directory::Directory;
use crate::metrics::CommandMetrics;
use crate::policy::phases::Phases;
use crate::reload::LiveConfig;
use crate::upstream::invalidations::Listener;
use crate::upstream::Upstream;

pub struct Context {
    pub upstream: Arc<Upstream>,
    /// The shared part of every policy phase (cache fills in flight, lock queues), across
    /// config reloads.
    pub phases: Phases,
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
            phases: Phases::new(&upstream),
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

/// Redis's news about changed keys reach the phases that watch them (cached entries are
/// dropped, lock queues waiting on a key try again).
impl Listener for Arc<Context> {
    fn wanted(&self) -> bool {
        self.phases.watch_changes(&self.live.load().policies)
    }

    fn changed(&self, keys: &[Vec<u8>]) {
        self.phases.changed(&self.live.load().policies, keys);
    }

    fn everything_changed(&self) {
        self.phases.all_changed(&self.live.load().policies);
    }

    fn some_changed(&self) {
        self.phases.some_changed(&self.live.load().policies);
    }
}
