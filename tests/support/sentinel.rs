//! Redis Sentinel on loopback: a primary with two replicas, watched by three sentinels, for
//! tests of keyward finding the primary through the sentinels (`SENTINEL
//! GET-MASTER-ADDR-BY-NAME`) and following it through failovers (`+switch-master`). Every
//! process has a directory of its own; all are stopped when the set is dropped, and when the
//! test process exits, for a set shared through a `static`.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::Value;

use super::free_port;
use super::node::{command, connect, query, watched_redis_server};

/// How long the primary may go unanswered before a sentinel counts it down, in milliseconds:
/// short, so that a killed primary is replaced within seconds.
const DOWN_AFTER: &str = "1000";

/// How many sentinels must count the primary down before one of them fails it over: two of
/// three, so that one sentinel lost still leaves a failover possible.
const QUORUM: &str = "2";

/// How long the set may take to form, or to settle after a failover. The slowest is
/// [`SentinelSet::failover`]: the sentinels demote the old primary some 10 s after the
/// promotion.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// The file each server logs to, in its own directory.
const LOG: &str = "redis.log";

/// A primary, its two replicas and three sentinels watching them, killed when dropped (their
/// logs are printed if the test failed). They keep no data on disk, but for the copies
/// replicas receive.
pub struct SentinelSet {
    master_name: String,
    /// The primary and its replicas: which is which changes with failovers.
    nodes: Vec<Server>,
    sentinels: Vec<Server>,
}

/// One `redis-server` of the set, a data node or a sentinel, in a directory of its own.
struct Server {
    port: u16,
    /// `None` once killed.
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// What a data node says it is (`ROLE`).
#[derive(Debug, PartialEq)]
enum Role {
    Primary,
    /// A replica of the node at port `of`; `in_sync` once it holds its copy and follows the
    /// stream (`connected`, what `INFO` calls `master_link_status:up`).
    Replica {
        of: u16,
        in_sync: bool,
    },
}

impl SentinelSet {
    /// A new set whose sentinels monitor the primary as `master_name`, once both replicas hold
    /// a copy of the primary and every sentinel knows the primary, both replicas and the two
    /// other sentinels.
    pub fn start(master_name: &str) -> SentinelSet {
        let primary = Server::start_node(None);
        let primary_port = primary.port;
        let nodes = vec![
            primary,
            Server::start_node(Some(primary_port)),
            Server::start_node(Some(primary_port)),
        ];
        let mut set = SentinelSet {
            master_name: master_name.to_string(),
            nodes,
            sentinels: Vec::new(),
        };
        // A sentinel finds the replicas in the primary's `INFO`, which it reads every 10 s:
        // started once they are in sync, it finds them at its first look.
        set.wait_until("both replicas hold a copy of the primary", || {
            set.check_replicas_follow(primary_port)
        });
        set.sentinels = (0..3)
            .map(|_| Server::start_sentinel(master_name, primary_port))
            .collect();
        set.wait_until("every sentinel knows the whole set", || {
            set.check_sentinels_know_all(primary_port)
        });
        set
    }

    /// One set for all the tests of a test binary that leave its roles alone (no failover,
    /// nothing killed: those need a set of their own), as a set takes seconds to form.
    pub fn shared() -> &'static SentinelSet {
        static SHARED: OnceLock<SentinelSet> = OnceLock::new();
        SHARED.get_or_init(|| SentinelSet::start("shared"))
    }

    /// The name the sentinels know the primary by.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The ports of the running sentinels (a killed one is left out).
    pub fn sentinel_ports(&self) -> Vec<u16> {
        running(&self.sentinels)
    }

    /// The port of the primary now: the node the first running sentinel names, which must
    /// say it is the primary. Between a primary's failure and its replacement the test fails:
    /// [`SentinelSet::wait_for_new_primary`] waits for that.
    pub fn primary(&self) -> u16 {
        let sentinel = self.any_sentinel();
        let port = named_primary(sentinel, &self.master_name).unwrap_or_else(|err| panic!("{err}"));
        let role = role(port).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            role,
            Role::Primary,
            "sentinel {sentinel} names {port} as the primary, which disagrees"
        );
        port
    }

    /// The running data nodes that are replicas now, each by its own account (one may still
    /// follow a primary that is gone, until the sentinels point it to the new one).
    pub fn replicas(&self) -> Vec<u16> {
        running(&self.nodes)
            .into_iter()
            .filter(|&port| {
                let role = role(port).unwrap_or_else(|err| panic!("{err}"));
                matches!(role, Role::Replica { .. })
            })
            .collect()
    }

    /// A plain client of the server at `port`, a data node or a sentinel.
    pub fn client(&self, port: u16) -> redis::Connection {
        connect(port).unwrap_or_else(|err| panic!("a connection to {port}: {err}"))
    }

    /// Has a sentinel promote a replica at once (`SENTINEL FAILOVER`, which asks the others
    /// for no agreement), then waits until every running sentinel names it, it says it is
    /// the primary, and every other data node is its replica in sync: the old primary too,
    /// which the sentinels demote only some 10 s after the promotion. Returns its port.
    pub fn failover(&self) -> u16 {
        let old = self.primary();
        let () = command(
            self.any_sentinel(),
            &["SENTINEL", "FAILOVER", &self.master_name],
        );
        let new = self.wait_for_new_primary(old);
        self.wait_until(&format!("every other node is a replica of {new}"), || {
            self.check_replicas_follow(new)
        });
        new
    }

    /// `kill -9` of the primary: it disappears without a word, as in a crash. Returns its
    /// port, for [`SentinelSet::wait_for_new_primary`].
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary();
        kill(&mut self.nodes, port);
        port
    }

    /// Waits until every running sentinel names the same primary other than `old_port`, and
    /// that node says it is the primary; returns its port. After
    /// [`SentinelSet::kill_primary`], that takes the sentinels' down-after time, their
    /// agreement that the primary is down, the election of one of them to fail it over, and
    /// the promotion: seconds.
    pub fn wait_for_new_primary(&self, old_port: u16) -> u16 {
        let what = format!("the sentinels name a primary other than {old_port}");
        self.wait_until(&what, || {
            let port = self.agreed_primary()?;
            if port == old_port {
                return Err(format!("the sentinels still name {old_port}"));
            }
            match role(port)? {
                Role::Primary => Ok(port),
                role => Err(format!("the sentinels name {port}, which is {role:?}")),
            }
        })
    }

    /// `kill -9` of the sentinel at `port`.
    pub fn kill_sentinel(&mut self, port: u16) {
        kill(&mut self.sentinels, port);
    }

    /// The port of a running sentinel, to ask.
    fn any_sentinel(&self) -> u16 {
        *self
            .sentinel_ports()
            .first()
            .expect("a sentinel still running")
    }

    /// The primary every running sentinel names; `Err` if one names none, or another.
    fn agreed_primary(&self) -> Result<u16, String> {
        let mut named = Vec::new();
        for sentinel in self.sentinel_ports() {
            named.push((sentinel, named_primary(sentinel, &self.master_name)?));
        }
        let (_, port) = *named.first().ok_or("no sentinel is running")?;
        if named.iter().any(|&(_, other)| other != port) {
            return Err(format!(
                "the sentinels disagree: {named:?} (sentinel, primary)"
            ));
        }
        Ok(port)
    }

    /// `Err` unless every running data node but `primary` is its replica, in sync.
    fn check_replicas_follow(&self, primary: u16) -> Result<(), String> {
        let wanted = Role::Replica {
            of: primary,
            in_sync: true,
        };
        for port in running(&self.nodes).into_iter().filter(|&p| p != primary) {
            let role = role(port)?;
            if role != wanted {
                return Err(format!("{port} is {role:?}, not yet {wanted:?}"));
            }
        }
        Ok(())
    }

    /// `Err` unless every sentinel names `primary` at its address, counts it up, and counts
    /// two replicas and two other sentinels (`SENTINEL MASTER`).
    fn check_sentinels_know_all(&self, primary: u16) -> Result<(), String> {
        let primary = primary.to_string();
        let wanted = [
            ("ip", "127.0.0.1"),
            ("port", &primary),
            ("flags", "master"),
            ("num-slaves", "2"),
            ("num-other-sentinels", "2"),
        ];
        for sentinel in self.sentinel_ports() {
            let state = self.master_state(sentinel)?;
            for (field, value) in wanted {
                let known = state.get(field).map(String::as_str);
                if known != Some(value) {
                    return Err(format!("sentinel {sentinel} has {field} {known:?}"));
                }
            }
        }
        Ok(())
    }

    /// The primary as the sentinel at `sentinel` knows it: `SENTINEL MASTER`'s fields.
    fn master_state(&self, sentinel: u16) -> Result<HashMap<String, String>, String> {
        query(sentinel, &["SENTINEL", "MASTER", &self.master_name])
            .map_err(|err| format!("sentinel {sentinel}: {err}"))
    }

    /// What each sentinel and each data node says, for a timeout's message.
    fn describe(&self) -> String {
        let mut lines = Vec::new();
        for sentinel in self.sentinel_ports() {
            let line = match self.master_state(sentinel) {
                Ok(state) => {
                    let field = |name| state.get(name).map_or("?", String::as_str);
                    format!(
                        "sentinel {sentinel}: primary {}, flags {}, {} replicas, {} other \
                         sentinels",
                        field("port"),
                        field("flags"),
                        field("num-slaves"),
                        field("num-other-sentinels")
                    )
                }
                Err(err) => err,
            };
            lines.push(line);
        }
        for port in running(&self.nodes) {
            lines.push(match role(port) {
                Ok(role) => format!("node {port}: {role:?}"),
                Err(err) => err,
            });
        }
        lines.join("\n")
    }

    /// Polls `check` until it passes and returns what it found; fails the test after
    /// [`SETTLE_LIMIT`] with its last complaint and what every server says.
    fn wait_until<T>(&self, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let complaint = match check() {
                Ok(found) => return found,
                Err(complaint) => complaint,
            };
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}: {complaint}\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (kind, servers) in [("node", &self.nodes), ("sentinel", &self.sentinels)] {
                for server in servers {
                    eprintln!("--- {kind} {} log ---\n{}", server.port, server.log());
                }
            }
        }
    }
}

impl Server {
    /// A data node that keeps nothing on disk; with `primary`, its replica.
    fn start_node(primary: Option<u16>) -> Server {
        Server::start("Ready to accept connections", |redis, port, dir| {
            redis
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                // A primary otherwise waits 5 s for more replicas before it sends its data.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(dir)
                .arg("--logfile")
                .arg(dir.join(LOG));
            if let Some(primary) = primary {
                redis.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
            }
        })
    }

    /// A sentinel monitoring the primary at `primary_port` as `master_name`. It runs from a
    /// configuration file of its own, as Sentinel requires: it writes what it learns there.
    fn start_sentinel(master_name: &str, primary_port: u16) -> Server {
        Server::start("+monitor master", |redis, port, dir| {
            let config = dir.join("sentinel.conf");
            let text = format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 dir {dir}\n\
                 logfile {log}\n\
                 sentinel monitor {master_name} 127.0.0.1 {primary_port} {QUORUM}\n\
                 sentinel down-after-milliseconds {master_name} {DOWN_AFTER}\n\
                 sentinel failover-timeout {master_name} 5000\n\
                 sentinel parallel-syncs {master_name} 1\n",
                dir = dir.display(),
                log = dir.join(LOG).display(),
            );
            std::fs::write(&config, text).expect("sentinel.conf written");
            redis.arg(config).arg("--sentinel");
        })
    }

    /// Starts `redis-server` under the watchdog, in a new directory, with the arguments
    /// `configure` adds for a free port and that directory, and waits until its log says
    /// `ready`. A free port can be taken by a parallel test before redis-server binds it; it
    /// then exits. Try again on a fresh port.
    fn start(ready: &str, configure: impl Fn(&mut Command, u16, &Path)) -> Server {
        for _ in 0..3 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("a temp dir");
            let mut redis = watched_redis_server(dir.path());
            configure(&mut redis, port, dir.path());
            let child = redis
                .stdout(Stdio::null())
                .spawn()
                .expect("sh and redis-server are installed");
            let mut server = Server {
                port,
                child: Some(child),
                dir,
            };
            if server.wait_ready(ready) {
                return server;
            }
        }
        panic!("a redis-server of the sentinel set exited at start three times");
    }

    /// Waits until the log says `ready`, which Redis logs only once it holds its port (a port
    /// that merely answers may belong to another test's process); `false` if it exited first.
    fn wait_ready(&mut self, ready: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(ready) {
            let child = self.child.as_mut().expect("a server starting");
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG)).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The ports of the servers still running.
fn running(servers: &[Server]) -> Vec<u16> {
    servers
        .iter()
        .filter(|server| server.child.is_some())
        .map(|server| server.port)
        .collect()
}

/// `kill -9` of the running server at `port`.
fn kill(servers: &mut [Server], port: u16) {
    let mut child = servers
        .iter_mut()
        .find(|server| server.port == port)
        .and_then(|server| server.child.take())
        .unwrap_or_else(|| panic!("no running server on {port}"));
    let _ = child.kill();
    let _ = child.wait();
}

/// The port of the primary the sentinel at `sentinel` names for `master_name`.
fn named_primary(sentinel: u16, master_name: &str) -> Result<u16, String> {
    let address: Option<(String, u16)> = query(
        sentinel,
        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name],
    )
    .map_err(|err| format!("sentinel {sentinel}: {err}"))?;
    match address {
        Some((ip, port)) if ip == "127.0.0.1" => Ok(port),
        Some((ip, port)) => Err(format!("sentinel {sentinel} names {ip}:{port}")),
        None => Err(format!("sentinel {sentinel} does not know {master_name}")),
    }
}

/// What the data node at `port` says it is: `ROLE` answers `master <offset> <replicas>` or
/// `slave <ip> <port> <link state> <offset>`.
fn role(port: u16) -> Result<Role, String> {
    let reply: Vec<Value> = query(port, &["ROLE"]).map_err(|err| format!("node {port}: {err}"))?;
    let field = |index: usize| -> Option<String> {
        reply
            .get(index)
            .and_then(|value| redis::from_redis_value(value).ok())
    };
    match field(0).as_deref() {
        Some("master") => Ok(Role::Primary),
        Some("slave") => match field(2).and_then(|port| port.parse().ok()) {
            Some(of) => Ok(Role::Replica {
                of,
                in_sync: field(3).as_deref() == Some("connected"),
            }),
            None => Err(format!("node {port} answers ROLE with {reply:?}")),
        },
        _ => Err(format!("node {port} answers ROLE with {reply:?}")),
    }
}
