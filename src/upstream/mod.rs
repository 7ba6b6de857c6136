//! Connections to Redis: a pool of multiplexed connections per (protocol, database), and
//! dedicated connections for sessions that hold connection state.
//!
//! Pooled connections reconnect by themselves with backoff; while one is down, batches sent to
//! it fail at once with a Redis-style error rather than waiting. A dedicated connection lives
//! as long as its session and is never reopened behind the client's back, because the state it
//! held (a transaction, subscriptions) would be gone.

pub mod cluster;
mod connection;
pub mod credentials;
mod errors;
mod handle;
mod handshake;
mod holds;
pub mod invalidations;
mod lane;
mod own;
mod own_requests;
mod pause;
mod pooled;
mod replicas;
mod reply_to;
mod routing;
pub mod sentinel;
mod settings;
mod spares;
mod subscribed;
pub mod tracking;
mod write_queue;

pub use connection::{Batch, Reply, ReplySender};
pub use errors::UpstreamError;
pub use handle::{ConnHandle, Hold, Room, RoomWait, SendError};
pub use handshake::{connect, next_backoff, read_frame, Handshaken, ServerFacts};
pub use lane::{ClientLane, InLane, LaneListener};
use own::connect_own;
pub use own::{Opening, OwnConnection};
pub use own_requests::{send_own, send_own_then, send_own_when_room, OwnReplies};
pub use pause::{parse_pause, Pause, Paused};
pub use reply_to::{Gathered, ReplyTo};
pub use settings::{client_tls, ClusterSettings, Login, SentinelSettings, UpstreamSettings};
pub use tracking::{Invalidations, TrackingTarget};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

use crate::config::HostPort;
use crate::inbox;
use crate::metrics;
use crate::resp::request::encode_command;
use crate::resp::Protocol;
use arc_swap::ArcSwap;
use cluster::{Cluster, Follower};
use pooled::run_pooled;
pub use replicas::ReplicaPick;
use replicas::Replicas;
use sentinel::Sentinel;
use tokio_util::sync::CancellationToken;

type PoolKey = (Protocol, u32);

/// Shared connections that may be opened beside one pool for sessions leaving held ones.
const MAX_DETOURS: usize = 8;

/// The Redis server keyward fronts, as seen by sessions.
pub struct Upstream {
    settings: UpstreamSettings,
    pools: Mutex<FxHashMap<PoolKey, Arc<[ConnHandle]>>>,
    facts: RwLock<Arc<ServerFacts>>,
    /// Connections opened ahead of need, one per pool (protocol, database): taking one costs
    /// no round trip, so a command that needs its own connection (`XREADGROUP … BLOCK`, `SSUBSCRIBE`) reaches Redis as soon
    /// as the commands sent before it. `None`: one is being opened.
    spares: Mutex<FxHashMap<PoolKey, Option<Handshaken>>>,
    /// Shared connections opened beside a pool for sessions that would otherwise queue
    /// behind a request Redis holds (see [`Upstream::detour`]); at most [`MAX_DETOURS`] a pool.
    detours: Mutex<FxHashMap<PoolKey, Vec<ConnHandle>>>,
    /// Where pooled connections redirect the tracking of cache fills.
    pub tracking: Arc<TrackingTarget>,
    /// The `CLIENT PAUSE` in force, as far as keyward passed it on.
    pub pause: Pause,
    /// Clients running `MONITOR` through keyward (see [`Upstream::monitoring`]).
    monitors: Arc<AtomicUsize>,
    /// In cluster mode, the cluster: pooled connections are then routers to its nodes.
    pub cluster: Option<Arc<Cluster>>,
    /// In sentinel mode, the primary the sentinels name: connections follow it.
    pub sentinel: Option<Arc<Sentinel>>,
    /// The primaries' replicas, for reads that routes send there.
    replicas: Replicas,
    /// `settings.address`, shared for messages (see [`Upstream::address`]).
    configured_address: Arc<HostPort>,
    /// Routers opened so far, so that each spreads keyless commands from another primary.
    routers: AtomicUsize,
}

/// Counts a client's `MONITOR` while it runs.
pub struct Monitoring(Arc<AtomicUsize>);

impl Drop for Monitoring {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// Creates the upstream and opens the default pool (RESP2, db 0) so that readiness reflects
    /// Redis from the start. Must run inside the runtime.
    pub fn start(settings: UpstreamSettings) -> Arc<Upstream> {
        let tracking = Arc::new(TrackingTarget::default());
        let cluster = settings.cluster.as_ref().map(|plan| {
            let cluster = Cluster::new(settings.clone(), plan, Arc::clone(&tracking));
            tokio::spawn(Arc::clone(&cluster).keep_current());
            cluster
        });
        let sentinel = Sentinel::new(&settings);
        if let Some(sentinel) = &sentinel {
            tokio::spawn(Arc::clone(sentinel).keep_current());
        }
        let upstream = Arc::new(Upstream {
            cluster,
            sentinel,
            configured_address: Arc::new(settings.address.clone()),
            replicas: Replicas::default(),
            routers: AtomicUsize::new(0),
            settings,
            pools: Mutex::default(),
            facts: RwLock::default(),
            spares: Mutex::default(),
            detours: Mutex::default(),
            tracking,
            pause: Pause::default(),
            monitors: Arc::default(),
        });
        upstream.pooled(Protocol::Resp2, 0, 0);
        tokio::spawn(retry_refused_credentials(Arc::downgrade(&upstream)));
        upstream
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// The Redis connections go to now, for messages: the primary in sentinel mode, else the
    /// configured address.
    pub fn address(&self) -> Arc<HostPort> {
        match self
            .sentinel
            .as_ref()
            .and_then(|sentinel| sentinel.primary())
        {
            Some(primary) => primary,
            None => Arc::clone(&self.configured_address),
        }
    }

    /// Settings for a connection to the Redis keyward forwards to, and in sentinel mode the
    /// token that ends it when the primary changes.
    pub fn primary_link(&self) -> Result<(UpstreamSettings, Option<CancellationToken>), String> {
        match &self.sentinel {
            Some(sentinel) => {
                let (settings, leave) = sentinel.primary_link()?;
                Ok((settings, Some(leave)))
            }
            None => Ok((self.settings.clone(), None)),
        }
    }

    /// The tracking epoch under which the cache may hold `key`, or `None` while nothing of it
    /// may be served or stored (the invalidation link that would tell of its changes is down).
    #[inline]
    pub fn key_epoch(&self, key: &[u8]) -> Option<u64> {
        match &self.cluster {
            None => {
                // The epoch before the state: a state that changes after it has moved it on.
                let epoch = self.tracking.epoch();
                (self.tracking.state() != Invalidations::Down).then_some(epoch)
            }
            Some(cluster) => cluster.key_epoch(key),
        }
    }

    /// The state of keyward's invalidation links, as one.
    pub fn invalidations(&self) -> Invalidations {
        match &self.cluster {
            None => self.tracking.state(),
            Some(cluster) => cluster.invalidations(),
        }
    }

    /// The pooled connection for a session: always the same one for the same `slot`.
    pub fn pooled(self: &Arc<Self>, protocol: Protocol, db: u32, slot: u64) -> ConnHandle {
        let pool = {
            let mut pools = self.pools.lock();
            pools
                .entry((protocol, db))
                .or_insert_with(|| self.open_pool(protocol, db))
                .clone()
        };
        pool[(slot % pool.len() as u64) as usize].clone()
    }

    fn open_pool(self: &Arc<Self>, protocol: Protocol, db: u32) -> Arc<[ConnHandle]> {
        // Sessions of this pool find a connection of their own ready, even while a busy
        // script makes Redis refuse the `SELECT` a new one would need. (In a cluster, which
        // node it must reach is known only when it is needed.)
        if self.cluster.is_none() && self.sentinel.is_none() {
            self.open_spare((protocol, db));
        }
        // Likewise a shared connection beside the pool, for a session that owes nothing to
        // move to when its own is held (see [`Upstream::detour`]): Redis answers it `-BUSY`
        // during a busy script, where one opened then could not even be set up. (With one
        // pooled connection per thread, no other pooled one may be free.)
        let beside = self.open_shared(protocol, db);
        self.detours
            .lock()
            .entry((protocol, db))
            .or_default()
            .push(beside);
        (0..self.settings.pool_size)
            .map(|_| self.open_shared(protocol, db))
            .collect()
    }

    fn open_shared(self: &Arc<Self>, protocol: Protocol, db: u32) -> ConnHandle {
        let (handle, batches) = ConnHandle::channel();
        let status = Arc::clone(&handle.status);
        match &self.cluster {
            Some(cluster) => {
                let spread = self.routers.fetch_add(1, Ordering::Relaxed);
                let cluster = Arc::clone(cluster);
                let router = cluster::router::run(
                    Arc::clone(self),
                    cluster,
                    protocol,
                    spread,
                    batches,
                    status,
                );
                tokio::spawn(router);
            }
            None => {
                tokio::spawn(run_pooled(
                    Arc::clone(self),
                    None,
                    Arc::clone(&self.tracking),
                    protocol,
                    db,
                    batches,
                    status,
                ));
            }
        }
        handle
    }

    /// A shared connection to one node of the cluster, for a router.
    fn open_node_connection(
        self: &Arc<Self>,
        settings: UpstreamSettings,
        tracking: Arc<TrackingTarget>,
        protocol: Protocol,
    ) -> ConnHandle {
        let (handle, batches) = ConnHandle::channel();
        let status = Arc::clone(&handle.status);
        if let Some(cluster) = &self.cluster {
            cluster.note_connection(&settings.address, &status);
        }
        tokio::spawn(run_pooled(
            Arc::clone(self),
            Some(settings),
            tracking,
            protocol,
            0,
            batches,
            status,
        ));
        handle
    }

    /// A shared connection for a session that owes nothing and whose own connection shows as
    /// held (a script running, a write paused by `CLIENT PAUSE`: see
    /// [`ConnStatus::is_held`](handle::ConnStatus::is_held)): the first connection of the
    /// pool that is not held, looking from the session's `slot` on (so that sessions leaving
    /// spread as they were), else one opened beside the pool. Moving a session that owes
    /// nothing keeps its commands in order, and lets Redis answer it (`-BUSY`, or a read during
    /// a write pause) instead of it waiting for another client's command to end. `None`: every
    /// connection is held and no more may be opened; the session stays where it is.
    pub fn detour(self: &Arc<Self>, protocol: Protocol, db: u32, slot: u64) -> Option<ConnHandle> {
        let free = |conn: &&ConnHandle| !conn.status.is_held();
        let pool = self.pools.lock().get(&(protocol, db)).cloned()?;
        let start = (slot % pool.len() as u64) as usize;
        if let Some(conn) = pool[start..].iter().chain(&pool[..start]).find(free) {
            return Some(conn.clone());
        }
        let mut detours = self.detours.lock();
        let beside = detours.entry((protocol, db)).or_default();
        if let Some(conn) = beside.iter().find(free) {
            return Some(conn.clone());
        }
        if beside.len() >= MAX_DETOURS {
            return None;
        }
        let conn = self.open_shared(protocol, db);
        beside.push(conn.clone());
        Some(conn)
    }

    /// Opens a connection for one session alone, as `wanted` says; replies and pushes go to
    /// `owner`. The session sends its first batches on the handle, then calls
    /// [`Opening::start`], which writes them at once and hands the connection to a task of its
    /// own.
    pub async fn dedicated(
        self: &Arc<Self>,
        wanted: OwnConnection<'_>,
        owner: ReplySender,
        replace_spare_first: bool,
    ) -> Result<(ConnHandle, Opening), UpstreamError> {
        let OwnConnection {
            protocol,
            db,
            setup,
            login,
            request,
            follows_subscriptions,
        } = wanted;
        let (settings, leave) = match &self.cluster {
            None => self.primary_link().map_err(UpstreamError::NoPrimary)?,
            Some(cluster) => {
                let node = cluster
                    .node_for(request)
                    .map_err(UpstreamError::ClusterDown)?;
                (cluster.node_settings(&node), None)
            }
        };
        // Spares wait on the one Redis of a fixed address.
        let (spare, replace) = match (&self.cluster, &self.sentinel) {
            (None, None) => self.take_spare((protocol, db)),
            _ => (None, false),
        };
        if replace && !replace_spare_first && self.monitors.load(Ordering::Relaxed) > 0 {
            // A spare opened now would show its handshake in the MONITOR, amid the commands
            // of the client that took the one before: the next is opened when needed.
            self.spares.lock().remove(&(protocol, db));
        } else if replace && replace_spare_first {
            self.replace_spare((protocol, db)).await;
        } else if replace {
            self.replace_spare_later((protocol, db));
        }
        let (connected, setup_left) = match spare {
            Some(connected) => (connected, setup),
            None => match connect_own(&settings, protocol, db, setup).await {
                Ok(connected) => (connected, &[][..]),
                // Redis refuses keyward's credentials (a password changed in Redis before
                // keyward's was): a client authenticating as a user of its own opens its
                // connection as that user, whose AUTH then follows as it would directly.
                Err(UpstreamError::Refused(refusal)) => {
                    let Some(login) = login else {
                        metrics::upstream_errors("connect", 1);
                        return Err(UpstreamError::Refused(refusal));
                    };
                    let settings = settings.as_client(login);
                    let connected =
                        connect_own(&settings, protocol, db, setup)
                            .await
                            .map_err(|error| match error {
                                UpstreamError::Refused(message) => UpstreamError::Rejected(message),
                                other => other,
                            })?;
                    (connected, &[][..])
                }
                Err(error) => {
                    metrics::upstream_errors("connect", 1);
                    return Err(error);
                }
            },
        };
        let (handle, mut opening) =
            self.serve_dedicated(connected, setup_left, owner, &settings.address);
        opening.leave = leave;
        if let (Some(cluster), Some(node), true) =
            (&self.cluster, &opening.node, follows_subscriptions)
        {
            opening.follower = Some(Follower {
                cluster: Arc::clone(cluster),
                protocol,
                db,
                setup: setup.to_vec(),
                node: Arc::clone(node),
            });
        }
        Ok((handle, opening))
    }

    /// A handle for a dedicated connection just handshaken, and its [`Opening`]; `setup`
    /// commands not yet run go first.
    fn serve_dedicated(
        &self,
        connected: Handshaken,
        setup_left: &[Vec<Vec<u8>>],
        owner: ReplySender,
        address: &HostPort,
    ) -> (ConnHandle, Opening) {
        let (handle, batches) = ConnHandle::channel();
        handle.status.set_up();
        if !setup_left.is_empty() {
            // Ahead of anything the session sends; nobody reads the replies (a name the
            // session already accepted is valid).
            let mut bytes = BytesMut::new();
            for command in setup_left {
                encode_command(command, &mut bytes);
            }
            let (ignored, _) = inbox::channel();
            let _ = handle.send(Batch {
                bytes: bytes.freeze(),
                count: setup_left.len() as u32,
                reply_to: ignored.into(),
                tracked: false,
                measured: None,
                hold: None,
                lane: None,
            });
        }
        let opening = Opening {
            redis_id: connected.client_id,
            node: self
                .cluster
                .as_ref()
                .map(|_| Arc::new(ArcSwap::from_pointee(address.clone()))),
            follower: None,
            leave: None,
            stream: connected.stream,
            batches,
            owner,
            address: address.to_string(),
            tracking: Arc::clone(&self.tracking),
            status: Arc::clone(&handle.status),
        };
        (handle, opening)
    }

    /// Marks a client's `MONITOR` as running until the returned guard is dropped: meanwhile
    /// spares are not opened ahead of need, so that their handshakes do not show in it.
    pub fn monitoring(&self) -> Monitoring {
        self.monitors.fetch_add(1, Ordering::Relaxed);
        Monitoring(Arc::clone(&self.monitors))
    }

    /// Runs one command on a connection of its own and hands its reply to `reply_to` as the
    /// answer to the session's request `ticket`: for commands that must not wait behind
    /// anything (`SCRIPT KILL` while a script holds the session's shared connection).
    pub fn send_aside(
        self: &Arc<Self>,
        protocol: Protocol,
        request: Bytes,
        ticket: u64,
        reply_to: ReplySender,
    ) {
        let upstream = Arc::clone(self);
        tokio::spawn(async move {
            let address = &upstream.address();
            let owner = inbox::channel().0;
            let bytes = match upstream
                .dedicated(OwnConnection::plain(protocol, &request), owner, false)
                .await
            {
                Ok((conn, opening)) => match send_own(&conn, request, 1, false) {
                    Ok(replies) => {
                        opening.start();
                        // The connection closes when `conn` is dropped, after the reply.
                        replies.all().await.unwrap_or_else(|error| error)
                    }
                    Err(error) => error.reply(address, 1),
                },
                Err(error) => error.reply(address),
            };
            let _ = reply_to.send(Reply::Fetched { ticket, bytes });
        });
    }

    /// Reads keyward's password file again; if the password changed, or Redis refuses the one
    /// in use, tries it at once, so that readiness reflects it without waiting for a
    /// connection to be needed.
    pub fn reread_credentials(self: &Arc<Self>) {
        let changed = self.settings.credentials.reread();
        if !changed && self.settings.credentials.refusal().is_none() {
            return;
        }
        let upstream = Arc::clone(self);
        tokio::runtime::Handle::current().spawn(async move { upstream.try_credentials().await });
    }

    /// Opens a connection and lets it go: the handshake records whether Redis accepts
    /// keyward's credentials (see [`Credentials::note_refused`]).
    async fn try_credentials(&self) {
        if let Ok((settings, _)) = self.primary_link() {
            let _ = handshake::connect(&settings, Protocol::Resp2, 0, &[], false).await;
        }
    }

    pub fn facts(&self) -> Arc<ServerFacts> {
        if let Some(facts) = self.cluster.as_ref().and_then(|cluster| cluster.facts()) {
            return facts;
        }
        Arc::clone(&self.facts.read())
    }

    /// Ready when a connection of the default pool is up and Redis accepts keyward's
    /// credentials (connections opened before a password change stay up, but no new one
    /// would open).
    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_none()
    }

    /// Why keyward is not ready, if it is not.
    pub fn not_ready_because(&self) -> Option<String> {
        if let Some(refusal) = self.settings.credentials.refusal() {
            return Some(format!("Redis refuses keyward's credentials: {refusal}"));
        }
        if let Some(cluster) = &self.cluster {
            return cluster.not_ready_because();
        }
        if let Some(reason) = self.sentinel.as_ref().and_then(|s| s.not_ready_because()) {
            return Some(reason);
        }
        let pools = self.pools.lock();
        let pool = pools
            .get(&(Protocol::Resp2, 0))
            .map_or(&[][..], |pool| &pool[..]);
        if pool.iter().any(|conn| conn.status.is_up()) {
            return None;
        }
        // What the last attempt ran into tells an SRE where to look.
        Some(
            match pool.iter().find_map(|conn| conn.status.last_error()) {
                Some(error) => format!("upstream Redis unavailable: {error}"),
                None => "upstream Redis unavailable".to_string(),
            },
        )
    }

    /// (connections up, connections in all pools and beside them, last error seen) for
    /// `KEYWARD INFO`.
    pub fn pool_state(&self) -> (usize, usize, Option<String>) {
        let pools = self.pools.lock();
        let detours = self.detours.lock();
        let beside = detours.values().flat_map(|conns| conns.iter());
        let conns = pools.values().flat_map(|pool| pool.iter()).chain(beside);
        let (mut up, mut total, mut last_error) = (0, 0, None);
        for conn in conns {
            total += 1;
            if conn.status.is_up() {
                up += 1;
            } else if last_error.is_none() {
                last_error = conn.status.last_error();
            }
        }
        (up, total, last_error)
    }
}

/// How often keyward tries its credentials again while Redis refuses them.
const CREDENTIALS_RETRY: Duration = Duration::from_secs(2);

/// While Redis refuses keyward's credentials, tries them again now and then: a password put
/// back in Redis (not in keyward) makes keyward ready again, though it opens no connection.
async fn retry_refused_credentials(upstream: std::sync::Weak<Upstream>) {
    loop {
        tokio::time::sleep(CREDENTIALS_RETRY).await;
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        if upstream.settings.credentials.refusal().is_some() {
            upstream.try_credentials().await;
        }
    }
}
