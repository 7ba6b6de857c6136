//! Redis Cluster behind keyward: the slot map, kept current, and the routers that send each
//! command to the node serving its slot.
//!
//! Sessions do not know the cluster is there. A pooled connection in cluster mode is a
//! [`router`]: it takes a session's batch as a connection to one Redis would, sends each
//! command to its slot's primary on connections of its own (one per node, so a session's
//! commands to one node stay in order), follows redirections, splits and fans out what must
//! be, and hands the replies back in request order.
//!
//! The map comes from `CLUSTER SHARDS` (`CLUSTER SLOTS` before Redis 7). It is read at start,
//! every `refresh_interval`, and soon after anything suggests it is stale: a `MOVED`, a node
//! that cannot be reached.

mod delivery;
mod discovery;
mod follow;
mod info;
mod map;
mod merge;
mod parts;
mod plan;
mod redirect;
pub(super) mod router;
mod slots;

pub use follow::{Follower, NodeCell};
pub use map::{Shard, SlotMap};
pub use plan::CROSSSLOT;
pub use slots::{key_slot, SLOTS};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::Serialize;
use tokio::sync::Notify;

use super::handle::ConnStatus;
use super::tracking::{Invalidations, TrackingTarget};
use super::{ClusterSettings, ServerFacts, UpstreamSettings};
use crate::command::CommandTable;
use crate::config::HostPort;
use crate::metrics;
use crate::resp::reply;
use crate::resp::request::{Decoded, RequestDecoder};
use redirect::Redirect;

/// On-demand refreshes come at most this often, however many redirections ask for one.
const REFRESH_GAP: Duration = Duration::from_millis(100);

/// The cluster as keyward knows it.
pub struct Cluster {
    /// Credentials, TLS and timeouts for every node; the address is each node's own.
    settings: UpstreamSettings,
    seeds: Vec<HostPort>,
    refresh_interval: Duration,
    map: ArcSwapOption<SlotMap>,
    /// Wakes the refresher before its interval is up.
    refresh: Notify,
    /// Why the last refresh failed, while no refresh has succeeded since.
    last_error: Mutex<Option<String>>,
    /// What the node that last described the cluster said of itself (`HELLO`).
    facts: ArcSwapOption<ServerFacts>,
    /// Every connection routers opened to a node, for the nodes' state in reports.
    connections: Mutex<Vec<(HostPort, Arc<ConnStatus>)>>,
    /// The whole cluster's tracking target, whose epoch moves on when the whole cache is
    /// flushed. Its clock is every node's.
    pub tracking: Arc<TrackingTarget>,
    /// Each node's own target: where its connections redirect the tracking of cache fills,
    /// and what says whether the cache may serve the keys of its slots.
    node_tracking: Mutex<FxHashMap<HostPort, Arc<TrackingTarget>>>,
    /// Each slot's epoch, moved on when the slot changes owner: what was cached of its keys
    /// was tracked by the node they left.
    slot_epochs: Box<[AtomicU64]>,
}

/// One node as reports show it (`KEYWARD INFO`, `/config`).
#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub address: String,
    /// Empty for a node met through a redirection, until the next refresh.
    pub id: String,
    /// `primary`, or `replica` (keyward sends replicas only the reads `[[route]]` rules send).
    pub role: &'static str,
    /// The slot ranges a primary serves, such as `0-5460,5462`.
    pub slots: String,
    /// `up` when a connection to it is up, `down` with the last error otherwise, `unused` when
    /// keyward has no connection to it.
    pub state: String,
}

impl Cluster {
    pub fn new(
        settings: UpstreamSettings,
        plan: &ClusterSettings,
        tracking: Arc<TrackingTarget>,
    ) -> Arc<Cluster> {
        Arc::new(Cluster {
            settings,
            seeds: plan.seeds.clone(),
            refresh_interval: plan.refresh_interval,
            tracking,
            node_tracking: Mutex::default(),
            slot_epochs: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            map: ArcSwapOption::empty(),
            refresh: Notify::new(),
            last_error: Mutex::default(),
            facts: ArcSwapOption::empty(),
            connections: Mutex::default(),
        })
    }

    /// The slot map, once keyward has read one.
    pub fn map(&self) -> Option<Arc<SlotMap>> {
        self.map.load_full()
    }

    /// Why there is no slot map, or why the last attempt to read it failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    pub fn facts(&self) -> Option<Arc<ServerFacts>> {
        self.facts.load_full()
    }

    /// Why keyward cannot serve every slot, if it cannot.
    pub fn not_ready_because(&self) -> Option<String> {
        let Some(map) = self.map() else {
            let reason = self.last_error().unwrap_or_else(|| "not read yet".into());
            return Some(format!("the cluster's slot map is unknown: {reason}"));
        };
        match map.unserved() {
            0 => None,
            unserved => Some(format!("{unserved} hash slots are served by no primary")),
        }
    }

    /// The primary a session's own connection goes to: the one serving the first key of
    /// `request`, the command it is opened for, or any when it has none.
    pub fn node_for(&self, request: &[u8]) -> Result<HostPort, String> {
        let map = self.map().ok_or_else(|| {
            self.not_ready_because()
                .unwrap_or_else(|| "the cluster's slot map is unknown".into())
        })?;
        let mut decoder = RequestDecoder::default();
        let slot = match decoder.decode(request) {
            Ok(Decoded::Request { .. }) => {
                let args = decoder.args(request);
                let mut keys = Vec::new();
                CommandTable::global()
                    .lookup(&args)
                    .key_positions(&args, &mut keys);
                keys.first().and_then(|&at| args.get(at)).map(key_slot)
            }
            _ => None,
        };
        let node = match slot {
            Some(slot) => map
                .owner(slot)
                .and_then(|owner| map.shards.get(owner))
                .map(|shard| &shard.primary),
            None => map.pubsub_node(),
        };
        node.cloned().ok_or_else(|| "Hash slot not served".into())
    }

    /// The primary serving `slot` now.
    pub fn primary_of_slot(&self, slot: u16) -> Option<HostPort> {
        let map = self.map.load();
        let map = map.as_ref()?;
        let owner = map.owner(slot)?;
        Some(map.shards[owner].primary.clone())
    }

    /// The primary serving `key` now, as `host:port`.
    pub fn node_of_key(&self, key: &[u8]) -> Option<String> {
        let primary = self.primary_of_slot(key_slot(key))?;
        Some(primary.to_string())
    }

    /// Whether the node at `address` serves slots as a primary now.
    pub fn is_primary(&self, address: &HostPort) -> bool {
        let map = self.map.load();
        map.as_ref()
            .is_some_and(|map| map.shards.iter().any(|shard| &shard.primary == address))
    }

    /// The tracking target of the node at `address`.
    pub fn node_tracking(&self, address: &HostPort) -> Arc<TrackingTarget> {
        let mut targets = self.node_tracking.lock();
        let target = targets
            .entry(address.clone())
            .or_insert_with(|| Arc::new(TrackingTarget::sharing_clock(&self.tracking)));
        Arc::clone(target)
    }

    /// The epoch under which the cache may hold `key`: the greatest of its node's, its slot's
    /// and the whole cluster's. `None` while nothing of it may be served or stored: its node's
    /// invalidation link is down, or no primary serves it.
    pub fn key_epoch(&self, key: &[u8]) -> Option<u64> {
        let slot = key_slot(key);
        let map = self.map.load();
        let target = map.as_ref()?.tracker(slot)?;
        // The epochs before the state: a state that changes after them has moved them on.
        let epoch = target
            .epoch()
            .max(self.slot_epochs[usize::from(slot)].load(Ordering::Acquire))
            .max(self.tracking.epoch());
        (target.state() != Invalidations::Down).then_some(epoch)
    }

    /// The state of the cluster's invalidation links, as one: down while one primary's is,
    /// unsupported when one cannot track, else up (the id is any node's link's).
    pub fn invalidations(&self) -> Invalidations {
        let Some(map) = self.map() else {
            return Invalidations::Down;
        };
        let mut whole = Invalidations::Down;
        for shard in &map.shards {
            match self.node_tracking(&shard.primary).state() {
                Invalidations::Down => return Invalidations::Down,
                Invalidations::Unsupported => whole = Invalidations::Unsupported,
                Invalidations::RedirectTo(id) if whole == Invalidations::Down => {
                    whole = Invalidations::RedirectTo(id)
                }
                Invalidations::RedirectTo(_) => {}
            }
        }
        whole
    }

    /// Installs `map`, with each primary's tracking target; slots that changed owner start a
    /// new epoch once the map that routes them to their new owner is in force (a fill routed
    /// by the old map then is not stored).
    fn install(&self, map: SlotMap) {
        let map = Arc::new(map.tracked_by(|primary| self.node_tracking(primary)));
        let old = self.map.swap(Some(Arc::clone(&map)));
        let Some(old) = old else {
            return;
        };
        let mut epoch = None;
        for slot in 0..SLOTS as u16 {
            if !map.same_owner(&old, slot) {
                let epoch = *epoch.get_or_insert_with(|| self.tracking.tick());
                self.slot_epochs[usize::from(slot)].fetch_max(epoch, Ordering::AcqRel);
            }
        }
    }

    /// Notes a connection to a node, whose state reports then show.
    pub(super) fn note_connection(&self, address: &HostPort, status: &Arc<ConnStatus>) {
        let mut connections = self.connections.lock();
        // Connections whose status nobody else holds any more are closed.
        connections.retain(|(_, status)| Arc::strong_count(status) > 1);
        connections.push((address.clone(), Arc::clone(status)));
    }

    /// The nodes of the slot map, primaries first, with the state of keyward's connections.
    pub fn nodes(&self) -> Vec<NodeReport> {
        let Some(map) = self.map() else {
            return Vec::new();
        };
        let connections = self.connections.lock();
        let state = |address: &HostPort| {
            let statuses = connections.iter().filter(|(node, _)| node == address);
            let mut state = "unused".to_string();
            for (_, status) in statuses {
                if status.is_up() {
                    return "up".to_string();
                }
                state = match status.last_error() {
                    Some(error) => format!("down: {error}"),
                    None => "down".to_string(),
                };
            }
            state
        };
        let primaries = map.shards.iter().map(|shard| NodeReport {
            address: shard.primary.to_string(),
            id: shard.id.clone(),
            role: "primary",
            slots: shard
                .ranges
                .iter()
                .map(|&(start, end)| match start == end {
                    true => start.to_string(),
                    false => format!("{start}-{end}"),
                })
                .collect::<Vec<_>>()
                .join(","),
            state: state(&shard.primary),
        });
        let replicas = map.shards.iter().flat_map(|shard| &shard.replicas);
        let replicas = replicas.map(|replica| NodeReport {
            address: replica.to_string(),
            id: String::new(),
            role: "replica",
            slots: String::new(),
            state: state(replica),
        });
        primaries.chain(replicas).collect()
    }

    /// The settings for a connection to the node at `address`.
    pub fn node_settings(&self, address: &HostPort) -> UpstreamSettings {
        self.settings.at(address)
    }

    /// Asks for the map to be read again soon.
    pub fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    /// A node answered `MOVED`: `slot` is served at `address` from now on, and the rest of
    /// the map is read again, since a slot seldom moves alone.
    pub fn moved(&self, slot: u16, address: &HostPort) {
        if let Some(map) = self.map() {
            if map.owner(slot).map(|owner| &map.shards[owner].primary) != Some(address) {
                self.install(map.with_owner(slot, address));
            }
        }
        self.refresh_soon();
    }

    /// A `MOVED` or `ASK` that a node answered on a connection bound to it (a session's own:
    /// a transaction, a watch, a blocked command), which cannot follow the redirection: the
    /// map learns of it, and the client gets a `-TRYAGAIN` in its place, never a
    /// redirection. `None` for any other reply.
    pub fn bound_redirection(&self, frame: &[u8], node: &HostPort) -> Option<Bytes> {
        if !(frame.starts_with(b"-MOVED ") || frame.starts_with(b"-ASK ")) {
            return None;
        }
        let (slot, how) = match Redirect::read(frame, node)? {
            Redirect::Moved { slot, address } => {
                self.moved(slot, &address);
                (slot, "moved away from")
            }
            Redirect::Ask { slot, .. } => {
                self.refresh_soon();
                (slot, "is migrating away from")
            }
            Redirect::TryAgain => return None,
        };
        Some(reply::error(&format!(
            "TRYAGAIN hash slot {slot} {how} the node this connection is bound to \
             (a transaction, a watch or a blocking command): the command did not run"
        )))
    }

    /// Reads the map at once, then keeps it current for as long as keyward runs.
    pub async fn keep_current(self: Arc<Self>) {
        loop {
            match discovery::read_map(self.candidates(), |address| self.node_settings(address))
                .await
            {
                Ok((map, facts)) => {
                    self.note_new_map(map);
                    if let Some(facts) = facts {
                        self.facts.store(Some(Arc::new(facts)));
                    }
                    *self.last_error.lock() = None;
                }
                Err(error) => {
                    if self.last_error.lock().replace(error.clone()).is_none() {
                        tracing::warn!(%error, "cannot read the cluster's slot map");
                    }
                }
            }
            metrics::cluster_slot_map_refreshed();
            tokio::time::sleep(REFRESH_GAP).await;
            let wait = match self.map() {
                Some(_) => self.refresh_interval,
                // No map yet: keep trying as a connection to a down Redis would.
                None => Duration::from_millis(500),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.refresh.notified() => {}
            }
        }
    }

    fn note_new_map(&self, map: SlotMap) {
        let changed = self.map().is_none_or(|old| old.shards != map.shards);
        if changed {
            let primaries: Vec<String> = map
                .shards
                .iter()
                .map(|shard| shard.primary.to_string())
                .collect();
            tracing::info!(?primaries, unserved = map.unserved(), "cluster slot map");
            self.install(map);
        }
    }

    /// Nodes to ask for the map: the primaries known now, then their replicas, then the
    /// configured seeds; nodes keyward cannot reach now go last, so that a dead primary's
    /// connect timeout does not delay the map that names its successor.
    fn candidates(&self) -> Vec<HostPort> {
        let mut candidates: Vec<HostPort> = self
            .map()
            .map(|map| {
                let primaries = map.shards.iter().map(|shard| shard.primary.clone());
                let replicas = map.shards.iter().flat_map(|shard| shard.replicas.clone());
                primaries.chain(replicas).collect()
            })
            .unwrap_or_default();
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let connections = self.connections.lock();
        let unreachable = |address: &HostPort| {
            let mut statuses = connections.iter().filter(|(node, _)| node == address);
            statuses.next().is_some()
                && !connections
                    .iter()
                    .any(|(node, status)| node == address && status.is_up())
        };
        candidates.sort_by_key(unreachable);
        candidates
    }
}
