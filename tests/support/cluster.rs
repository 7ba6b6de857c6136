//! A Redis Cluster on loopback: six `redis-server` processes made into three primaries with a
//! replica each by `redis-cli --cluster create`, for tests of keyward in front of a cluster
//! (redirections, slots moved by hand, failovers). Its nodes are stopped when it is dropped,
//! and when the test process exits, for a cluster shared through a `static`.

use std::iter;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::free_port;
use super::node::{command, connect, query, watched_redis_server};

/// Three primaries and their replicas.
const NODES: usize = 6;

/// How long a node may go unheard before the others declare it failed, in milliseconds:
/// short, so that a killed primary is replaced within seconds.
const NODE_TIMEOUT: &str = "2000";

/// How long the cluster may take to form, or to heal after a failure.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// Six `redis-server` processes made one cluster, killed when dropped (their logs are printed
/// if the test failed). They keep no data on disk, but for the copies replicas receive.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    /// `None` once killed.
    child: Option<Child>,
}

impl RedisCluster {
    /// A new cluster, once every node agrees on who serves each slot and every replica holds
    /// a copy of its primary.
    pub fn start() -> RedisCluster {
        // A free port can be taken by a parallel test (or by a cluster's own bus connections)
        // before redis-server binds it; the node then exits. Try again on fresh ports.
        for _ in 0..3 {
            if let Some(cluster) = RedisCluster::launch() {
                cluster.create();
                cluster.wait_until_formed();
                return cluster;
            }
        }
        panic!("a redis-server of the cluster exited at start three times");
    }

    /// One cluster for all the tests of a test binary that do not change it (no slot moved;
    /// no node killed either: [`RedisCluster::kill_node`] needs a cluster of one's own), as a
    /// cluster takes seconds to form.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(RedisCluster::start)
    }

    /// Starts the six nodes, each knowing only itself; `None` if one exited before listening.
    fn launch() -> Option<RedisCluster> {
        let ports = free_ports(2 * NODES);
        let (ports, bus_ports) = ports.split_at(NODES);
        let dir = tempfile::tempdir().expect("a temp dir");
        let nodes = ports
            .iter()
            .zip(bus_ports)
            .map(|(&port, &bus_port)| Node::spawn(dir.path(), port, bus_port))
            .collect();
        let mut cluster = RedisCluster { nodes, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Redis logs this line only once it holds its ports; a port that merely answers may
        // belong to another test's process.
        while !cluster
            .ports()
            .iter()
            .all(|&port| cluster.log(port).contains("Ready to accept connections"))
        {
            if cluster.nodes.iter_mut().any(Node::exited) {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster's nodes did not listen"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(cluster)
    }

    /// Makes the nodes one cluster as an operator would: `redis-cli` assigns the slots,
    /// introduces the nodes to each other and makes one node of each pair a replica. It waits
    /// for the nodes to agree, with no limit of its own: the harness gives it one.
    fn create(&self) {
        let log_path = self.dir.path().join("create.log");
        let log = std::fs::File::create(&log_path).expect("a log file");
        let mut redis_cli = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(self.ports().iter().map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .expect("redis-cli is installed");
        let deadline = Instant::now() + SETTLE_LIMIT;
        let created = loop {
            if let Some(status) = redis_cli.try_wait().expect("redis-cli's status") {
                break status.success();
            }
            if Instant::now() > deadline {
                let _ = redis_cli.kill();
                let _ = redis_cli.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            created,
            "redis-cli --cluster create failed or hung:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// Waits until the cluster is healthy with three primaries of one replica each, and every
    /// replica has copied its primary: a replica that never did counts its data as too old
    /// to take over, and would leave its slots unserved if its primary were killed.
    fn wait_until_formed(&self) {
        self.wait_until("the cluster is formed", || {
            let layout = self.agreed_layout()?;
            if layout.len() != 3 || layout.iter().any(|shard| shard.replicas.len() != 1) {
                return Err(format!(
                    "not yet three primaries of one replica: {layout:?}"
                ));
            }
            for shard in &layout {
                let replica = shard.replicas[0];
                let info: String = query(replica, &["INFO", "replication"])
                    .map_err(|err| format!("node {replica}: {err}"))?;
                if !info.contains("master_link_status:up") {
                    return Err(format!("replica {replica} has not copied its primary yet"));
                }
            }
            Ok(())
        });
    }

    /// Waits until every node reports `cluster_state:ok` and all of them name the same running
    /// primary for every slot: after [`RedisCluster::kill_node`] of a primary, until its
    /// replica has taken over (the node timeout, then an election: seconds).
    pub fn wait_until_healthy(&self) {
        self.wait_until("the cluster is healthy", || self.agreed_layout().map(drop));
    }

    /// The ports of the running nodes (a killed one is left out).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect()
    }

    /// The port of a primary, to start from.
    pub fn seed_port(&self) -> u16 {
        self.primaries()[0]
    }

    /// The running nodes that are primaries now, each by its own account.
    pub fn primaries(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|&port| is_primary(port))
            .collect()
    }

    /// The running nodes that are replicas now, each by its own account.
    pub fn replicas(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|&port| !is_primary(port))
            .collect()
    }

    /// The primary the replica at `port` follows, by its own account (`ROLE`).
    pub fn primary_followed_by(&self, port: u16) -> u16 {
        let (_, _, primary, _, _): (String, String, u16, String, i64) = command(port, &["ROLE"]);
        primary
    }

    /// A running replica of the primary at `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        self.replicas()
            .into_iter()
            .find(|&replica| self.primary_followed_by(replica) == port)
            .unwrap_or_else(|| panic!("no replica follows {port}"))
    }

    /// A primary other than the one at `port`: where a slot of that one can move.
    pub fn other_primary(&self, port: u16) -> u16 {
        self.primaries()
            .into_iter()
            .find(|&primary| primary != port)
            .expect("another primary")
    }

    /// The node's id, which `CLUSTER SETSLOT` and `CLUSTER NODES` use to name it.
    pub fn node_id(&self, port: u16) -> String {
        command(port, &["CLUSTER", "MYID"])
    }

    /// The port of the primary serving `slot` now, as the first running node sees it.
    pub fn slot_owner(&self, slot: u16) -> u16 {
        let view = view(self.ports()[0]);
        layout(&view)
            .into_iter()
            .find(|shard| shard.slots.contains(&slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
            .primary
    }

    /// The slot that `key` hashes to, as Redis computes it.
    pub fn key_slot(&self, key: &str) -> u16 {
        command(self.ports()[0], &["CLUSTER", "KEYSLOT", key])
    }

    /// A plain client of the node at `port`: it follows no redirection.
    pub fn client(&self, port: u16) -> redis::Connection {
        connect(port).unwrap_or_else(|err| panic!("a connection to node {port}: {err}"))
    }

    /// `kill -9` of a node: it disappears without a word, as in a crash. If it was a
    /// primary, its slots are unserved until [`RedisCluster::wait_until_healthy`] returns.
    pub fn kill_node(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port && node.child.is_some())
            .unwrap_or_else(|| panic!("no running node on {port}"));
        node.kill();
    }

    /// Moves `slot` and its keys from the primary at `from` to the one at `to`, as
    /// `redis-cli --cluster reshard` does.
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16) {
        self.begin_migration(slot, from, to);
        self.move_keys(slot, from, to);
        self.finish_migration(slot, to);
    }

    /// Marks `slot` as leaving `from` for `to`: `from` keeps serving the keys it still holds
    /// and answers `ASK` for the others. The target first, as `redis-cli` does: it must take
    /// the clients that the source sends it.
    pub fn begin_migration(&self, slot: u16, from: u16, to: u16) {
        let (slot, from_id, to_id) = (slot.to_string(), self.node_id(from), self.node_id(to));
        let () = command(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        let () = command(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    }

    /// Moves the keys of a migrating `slot` from `from` to `to`, 100 at a time.
    pub fn move_keys(&self, slot: u16, from: u16, to: u16) {
        let slot = slot.to_string();
        loop {
            let keys: Vec<Vec<u8>> = command(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            if keys.is_empty() {
                return;
            }
            // With `KEYS`, the single-key argument stays empty.
            let () = redis::cmd("MIGRATE")
                .arg(&["127.0.0.1", &to.to_string(), "", "0", "5000", "KEYS"])
                .arg(&keys)
                .query(&mut self.client(from))
                .unwrap_or_else(|err| panic!("MIGRATE from {from} to {to}: {err}"));
        }
    }

    /// Gives `slot` to `to` on every primary, `to` first (it claims the slot under a new
    /// config epoch, which wins over older claims in gossip), and waits until every node
    /// names `to` as its owner.
    pub fn finish_migration(&self, slot: u16, to: u16) {
        let (slot_arg, to_id) = (slot.to_string(), self.node_id(to));
        let others = self.primaries().into_iter().filter(|&port| port != to);
        for port in iter::once(to).chain(others) {
            let () = command(port, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
        }
        self.wait_until(&format!("every node says {to} serves slot {slot}"), || {
            for port in self.ports() {
                let view = try_view(port)?;
                if !layout(&view)
                    .iter()
                    .any(|shard| shard.primary == to && shard.slots.contains(&slot))
                {
                    return Err(format!("node {port} does not know yet"));
                }
            }
            Ok(())
        });
    }

    /// The cluster's slots, as every running node sees them; `Err` says what is not so yet:
    /// a node not `cluster_state:ok` (a slot unserved), two nodes disagreeing, or slots still
    /// assigned to a killed node (before the others notice, they still count it as running).
    fn agreed_layout(&self) -> Result<Vec<Shard>, String> {
        let ports = self.ports();
        let mut layouts = Vec::new();
        for &port in &ports {
            let info: String =
                query(port, &["CLUSTER", "INFO"]).map_err(|err| format!("node {port}: {err}"))?;
            if !info.contains("cluster_state:ok") {
                return Err(format!("node {port} reports cluster_state:fail"));
            }
            layouts.push(layout(&try_view(port)?));
        }
        let agreed = layouts.pop().expect("a running node");
        if layouts.iter().any(|layout| *layout != agreed) {
            return Err("the nodes disagree on who serves which slots".to_string());
        }
        match agreed.iter().find(|shard| !ports.contains(&shard.primary)) {
            Some(shard) => Err(format!("killed node {} still serves slots", shard.primary)),
            None => Ok(agreed),
        }
    }

    /// Polls `check` until it passes; fails the test after [`SETTLE_LIMIT`] with its last
    /// complaint and every node's `CLUSTER NODES`.
    fn wait_until(&self, what: &str, mut check: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let complaint = match check() {
                Ok(()) => return,
                Err(complaint) => complaint,
            };
            if Instant::now() > deadline {
                let views: Vec<String> = self
                    .ports()
                    .into_iter()
                    .map(|port| {
                        let nodes = query::<String>(port, &["CLUSTER", "NODES"]);
                        format!(
                            "node {port} sees:\n{}",
                            nodes.unwrap_or_else(|e| e.to_string())
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting until {what}: {complaint}\n{}",
                    views.join("")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self, port: u16) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{port}.log")))
            .unwrap_or_default()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let port = node.port;
                eprintln!("--- cluster node {port} log ---\n{}", self.log(port));
            }
        }
    }
}

impl Node {
    /// Starts a node on `port`, with its cluster bus on `bus_port`: named, since Redis would
    /// otherwise take `port + 10000`, which nothing has checked is free.
    fn spawn(dir: &Path, port: u16, bus_port: u16) -> Node {
        let child = watched_redis_server(dir)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(dir.join(format!("nodes-{port}.conf")))
            .args(["--cluster-port", &bus_port.to_string()])
            .args(["--cluster-node-timeout", NODE_TIMEOUT])
            // Roles change only by failover: a replica never moves to another primary.
            .args(["--cluster-allow-replica-migration", "no"])
            .args(["--save", "", "--appendonly", "no"])
            // A primary otherwise waits 5 s for more replicas before it sends its data.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(dir)
            // A replica writes the copy it receives to this file before loading it: one per
            // node, or replicas sharing the directory would load each other's.
            .arg("--dbfilename")
            .arg(format!("dump-{port}.rdb"))
            .arg("--logfile")
            .arg(dir.join(format!("node-{port}.log")))
            .stdout(Stdio::null())
            .spawn()
            .expect("sh and redis-server are installed");
        Node {
            port,
            child: Some(child),
        }
    }

    /// True if the node has exited by itself.
    fn exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("a node starting");
        child.try_wait().ok().flatten().is_some()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `count` distinct free loopback ports (two calls to `free_port` may return the same one).
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < count {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// A primary, the slots it serves and its replicas, as one node sees them (ports).
#[derive(Debug, PartialEq)]
struct Shard {
    slots: std::ops::RangeInclusive<u16>,
    primary: u16,
    replicas: Vec<u16>,
}

/// The slot ranges of a view, in order, each with its primary and that primary's replicas
/// (those not suspected to have failed), as `CLUSTER SLOTS` would list them.
fn layout(view: &[Peer]) -> Vec<Shard> {
    let mut shards: Vec<Shard> = view
        .iter()
        .flat_map(|primary| {
            let mut replicas: Vec<u16> = view
                .iter()
                .filter(|peer| peer.primary_id.as_deref() == Some(primary.id.as_str()))
                .filter(|peer| !peer.has_flag("fail") && !peer.has_flag("fail?"))
                .map(|peer| peer.port)
                .collect();
            replicas.sort_unstable();
            primary.slots.iter().map(move |slots| Shard {
                slots: slots.clone(),
                primary: primary.port,
                replicas: replicas.clone(),
            })
        })
        .collect();
    shards.sort_by_key(|shard| *shard.slots.start());
    shards
}

/// A node as one member of the cluster sees it: a line of `CLUSTER NODES`.
struct Peer {
    id: String,
    port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`…
    flags: String,
    /// The primary's id, for a replica.
    primary_id: Option<String>,
    /// The slot ranges it serves; the ones being moved in or out are not listed apart.
    slots: Vec<std::ops::RangeInclusive<u16>>,
}

impl Peer {
    /// Parses `<id> <ip>:<port>@<bus port>[,<hostname>] <flags> <primary id or -> <ping sent>
    /// <pong received> <config epoch> <link state> <slot or range>…`, where a slot being
    /// moved shows as `[slot->-id]` or `[slot-<-id]`.
    fn parse(line: &str) -> Option<Peer> {
        let fields: Vec<&str> = line.split(' ').collect();
        let (address, _bus) = fields.get(1)?.split_once('@')?;
        let slots = fields
            .get(8..)
            .unwrap_or_default()
            .iter()
            .filter(|field| !field.starts_with('['))
            .map(|field| {
                let (start, end) = field.split_once('-').unwrap_or((field, field));
                Some(start.parse().ok()?..=end.parse().ok()?)
            })
            .collect::<Option<_>>()?;
        Some(Peer {
            id: fields[0].to_string(),
            port: address.rsplit_once(':')?.1.parse().ok()?,
            flags: fields.get(2)?.to_string(),
            primary_id: Some(fields.get(3)?.to_string()).filter(|id| id != "-"),
            slots,
        })
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flags.split(',').any(|own| own == flag)
    }
}

/// The cluster as the node at `port` sees it, from `CLUSTER NODES`.
fn try_view(port: u16) -> Result<Vec<Peer>, String> {
    let nodes: String =
        query(port, &["CLUSTER", "NODES"]).map_err(|err| format!("node {port}: {err}"))?;
    nodes
        .lines()
        .map(|line| Peer::parse(line).ok_or_else(|| format!("node {port}: cannot read {line:?}")))
        .collect()
}

/// Like [`try_view`], failing the test if the node does not answer.
fn view(port: u16) -> Vec<Peer> {
    try_view(port).unwrap_or_else(|err| panic!("{err}"))
}

/// Whether the node at `port` is a primary, by its own account.
fn is_primary(port: u16) -> bool {
    view(port)
        .into_iter()
        .find(|peer| peer.has_flag("myself"))
        .expect("CLUSTER NODES lists the node itself")
        .has_flag("master")
}
