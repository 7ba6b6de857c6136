//! The primaries' replicas, for reads that `[[route]]` rules send there: which replicas each
//! primary has and how far behind they are, as its `INFO replication` says every second, and a
//! pooled connection to each replica, opened on first use.
//!
//! A primary is asked only once a route wants one of its replicas, and from then on: in
//! sentinel mode the question follows the primary through failovers; in cluster mode each
//! primary is asked for as long as it serves slots.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use parking_lot::Mutex;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::io::AsyncWriteExt;

use super::handle::ConnHandle;
use super::handshake::{self, read_frame};
use super::{next_backoff, Upstream, UpstreamSettings};
use crate::config::HostPort;
use crate::metrics;
use crate::resp::request::encode_command;
use crate::resp::Protocol;

/// How often a primary is asked about its replicas.
const ASK_EVERY: Duration = Duration::from_secs(1);

/// One replica as its primary reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub address: HostPort,
    /// Whole seconds since the replica last acknowledged the primary's stream.
    pub lag: u64,
    /// The replica follows the stream (`state=online`).
    pub online: bool,
}

/// Where a read for a replica can go.
pub enum ReplicaPick {
    /// The shared connection to the replica whose turn it is.
    Replica(ConnHandle),
    /// The primary lists no replica that is online and within the lag allowed.
    NoneWithinLag,
    /// The primary has not been heard from about its replicas yet (keyward starts asking it
    /// now): only the primary is known to serve the read.
    NotKnownYet,
}

#[derive(Default)]
pub struct Replicas {
    /// Each primary's replicas as it last reported them, by the primary's address.
    known: ArcSwap<FxHashMap<HostPort, Arc<[Replica]>>>,
    /// One shared connection per replica and protocol.
    conns: Mutex<FxHashMap<(HostPort, Protocol), ConnHandle>>,
    /// Round-robin over the replicas that qualify.
    next: AtomicUsize,
    /// The primaries being asked about their replicas (outside cluster mode, the configured
    /// address stands for whichever primary keyward forwards to).
    followed: Mutex<FxHashSet<HostPort>>,
}

impl Replicas {
    /// Records what `primary` said of its replicas, and closes connections to replicas no
    /// primary lists any more.
    fn record(&self, primary: &HostPort, replicas: Option<Vec<Replica>>) {
        self.known.rcu(|known| {
            let mut known = FxHashMap::clone(known);
            match &replicas {
                Some(replicas) => known.insert(primary.clone(), Arc::from(replicas.as_slice())),
                None => known.remove(primary),
            };
            known
        });
        let known = self.known.load();
        let listed = |address: &HostPort| {
            known
                .values()
                .any(|replicas| replicas.iter().any(|replica| &replica.address == address))
        };
        self.conns.lock().retain(|(address, _), _| listed(address));
    }
}

impl Upstream {
    /// A replica of `primary` that is online and at most `max_lag` behind, taking turns.
    pub fn replica(
        self: &Arc<Self>,
        primary: &HostPort,
        max_lag: Duration,
        protocol: Protocol,
    ) -> ReplicaPick {
        let replicas = &self.replicas;
        let known = replicas.known.load();
        let Some(of_primary) = known.get(primary) else {
            self.follow_replicas_of(primary);
            return ReplicaPick::NotKnownYet;
        };
        let eligible = |replica: &&Replica| replica.online && replica.lag <= max_lag.as_secs();
        let count = of_primary.iter().filter(eligible).count();
        let turn = replicas.next.fetch_add(1, Ordering::Relaxed) % count.max(1);
        let Some(replica) = of_primary.iter().filter(eligible).nth(turn) else {
            return ReplicaPick::NoneWithinLag;
        };
        let mut conns = replicas.conns.lock();
        let conn = conns
            .entry((replica.address.clone(), protocol))
            .or_insert_with(|| {
                let settings = UpstreamSettings {
                    reads_replica: true,
                    ..self.settings().at(&replica.address)
                };
                self.open_node_connection(settings, Arc::default(), protocol)
            });
        ReplicaPick::Replica(conn.clone())
    }
}

impl Upstream {
    /// Starts asking `primary` about its replicas, unless that is under way.
    fn follow_replicas_of(self: &Arc<Self>, primary: &HostPort) {
        let followed_as = match &self.cluster {
            Some(_) => primary,
            None => &self.settings.address,
        };
        if self.replicas.followed.lock().insert(followed_as.clone()) {
            let node = self.cluster.is_some().then(|| primary.clone());
            tokio::spawn(follow_replicas(Arc::downgrade(self), node));
        }
    }
}

/// Asks a primary about its replicas every second, on a connection of its own: `node` in
/// cluster mode, for as long as it serves slots; else the primary keyward forwards to, for
/// as long as keyward runs.
async fn follow_replicas(upstream: Weak<Upstream>, node: Option<HostPort>) {
    let mut backoff = Duration::ZERO;
    loop {
        let Some(strong) = upstream.upgrade() else {
            return;
        };
        let link = match (&node, &strong.cluster) {
            (Some(node), Some(cluster)) => {
                if !cluster.is_primary(node) {
                    strong.replicas.followed.lock().remove(node);
                    strong.replicas.record(node, None);
                    return;
                }
                Ok((cluster.node_settings(node), None))
            }
            _ => strong.primary_link(),
        };
        drop(strong);
        let ended = match link {
            Ok((settings, leave)) => {
                let asking = ask_about_replicas(&upstream, &settings, node.is_some());
                match leave {
                    Some(leave) => tokio::select! {
                        ended = asking => ended,
                        () = leave.cancelled() => "the primary changed".to_string(),
                    },
                    None => asking.await,
                }
            }
            Err(reason) => reason,
        };
        tracing::debug!(reason = %ended, "not following a primary's replicas");
        backoff = next_backoff(backoff);
        tokio::time::sleep(backoff).await;
    }
}

/// Asks `INFO replication` every [`ASK_EVERY`] and records the answer; returns why it stopped.
/// A cluster node is asked only while it serves slots.
async fn ask_about_replicas(
    upstream: &Weak<Upstream>,
    settings: &UpstreamSettings,
    cluster_node: bool,
) -> String {
    let connected = match handshake::connect(settings, Protocol::Resp2, 0, &[], false).await {
        Ok(connected) => connected,
        Err(error) => return error.to_string(),
    };
    let mut stream = connected.stream;
    let mut input = BytesMut::new();
    let mut question = BytesMut::new();
    encode_command(&[&b"INFO"[..], b"replication"], &mut question);
    loop {
        if let Err(error) = stream.write_all(&question).await {
            return error.to_string();
        }
        let answer = tokio::time::timeout(
            settings.request_timeout,
            read_frame(&mut stream, &mut input, decode),
        )
        .await;
        let text = match answer {
            Ok(Ok(OwnedFrame::BulkString(text))) => String::from_utf8_lossy(&text).into_owned(),
            Ok(Ok(other)) => return format!("unexpected reply to INFO: {other:?}"),
            Ok(Err(error)) => return error,
            Err(_) => return format!("no answer to INFO within {:?}", settings.request_timeout),
        };
        let Some(upstream) = upstream.upgrade() else {
            return "keyward is stopping".into();
        };
        let still_primary = |cluster: &super::Cluster| cluster.is_primary(&settings.address);
        if cluster_node && !upstream.cluster.as_deref().is_some_and(still_primary) {
            return "the node serves no slots any more".into();
        }
        let replicas = replicas_in(&text);
        for replica in &replicas {
            metrics::replica_lag(&replica.address.to_string(), replica.lag);
        }
        upstream.replicas.record(&settings.address, Some(replicas));
        drop(upstream);
        tokio::time::sleep(ASK_EVERY).await;
    }
}

/// The replicas an `INFO replication` text lists: `slave0:ip=…,port=…,state=online,…,lag=0`.
fn replicas_in(text: &str) -> Vec<Replica> {
    text.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim_end().split_once(':')?;
            name.strip_prefix("slave")?.parse::<u32>().ok()?;
            let field = |wanted: &str| {
                fields
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(wanted)?.strip_prefix('='))
            };
            Some(Replica {
                address: HostPort::new(field("ip")?, field("port")?.parse().ok()?),
                lag: field("lag")
                    .and_then(|lag| lag.parse().ok())
                    .unwrap_or(u64::MAX),
                online: field("state") == Some("online"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_read_from_info() {
        let text = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
                    slave0:ip=127.0.0.1,port=6381,state=online,offset=42,lag=0\r\n\
                    slave1:ip=10.0.0.2,port=6382,state=wait_bgsave,offset=0,lag=3\r\n\
                    master_replid:abc\r\n";
        assert_eq!(
            replicas_in(text),
            [
                Replica {
                    address: HostPort::new("127.0.0.1", 6381),
                    lag: 0,
                    online: true
                },
                Replica {
                    address: HostPort::new("10.0.0.2", 6382),
                    lag: 3,
                    online: false
                },
            ]
        );
    }
}
