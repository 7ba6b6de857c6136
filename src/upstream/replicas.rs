//! The primary's replicas, for reads that `[[route]]` rules send there: which replicas there
//! are and how far behind, as the primary's `INFO replication` says every second, and a
//! pooled connection to each, opened on first use.
//!
//! The primary is asked only once a route wants a replica, and for as long as keyward runs
//! after; in sentinel mode the question follows the primary through failovers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use parking_lot::Mutex;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use rustc_hash::FxHashMap;
use tokio::io::AsyncWriteExt;

use super::handle::ConnHandle;
use super::handshake::{self, read_frame};
use super::{next_backoff, Upstream};
use crate::config::HostPort;
use crate::metrics;
use crate::resp::request::encode_command;
use crate::resp::Protocol;

/// How often the primary is asked about its replicas.
const ASK_EVERY: Duration = Duration::from_secs(1);

/// One replica as the primary reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub address: HostPort,
    /// Whole seconds since the replica last acknowledged the primary's stream.
    pub lag: u64,
    /// The replica follows the stream (`state=online`).
    pub online: bool,
}

#[derive(Default)]
pub struct Replicas {
    known: ArcSwap<Vec<Replica>>,
    /// One shared connection per replica and protocol.
    conns: Mutex<FxHashMap<(HostPort, Protocol), ConnHandle>>,
    /// Round-robin over the replicas that qualify.
    next: AtomicUsize,
    /// A route asked for a replica: the primary is asked about them from then on.
    wanted: AtomicBool,
}

impl Replicas {
    /// The replicas as last reported.
    pub fn known(&self) -> Arc<Vec<Replica>> {
        self.known.load_full()
    }
}

impl Upstream {
    /// A connection to a replica of the primary that is online and at most `max_lag` behind,
    /// taking turns; `None` when none is (or none is known yet).
    pub fn replica(self: &Arc<Self>, max_lag: Duration, protocol: Protocol) -> Option<ConnHandle> {
        let replicas = &self.replicas;
        if !replicas.wanted.load(Ordering::Relaxed)
            && !replicas.wanted.swap(true, Ordering::Relaxed)
        {
            tokio::spawn(follow_replicas(Arc::downgrade(self)));
        }
        let known = replicas.known.load();
        let eligible = |replica: &&Replica| replica.online && replica.lag <= max_lag.as_secs();
        let count = known.iter().filter(eligible).count();
        if count == 0 {
            return None;
        }
        let turn = replicas.next.fetch_add(1, Ordering::Relaxed) % count;
        let replica = known.iter().filter(eligible).nth(turn)?;
        let mut conns = replicas.conns.lock();
        let conn = conns
            .entry((replica.address.clone(), protocol))
            .or_insert_with(|| {
                let settings = super::UpstreamSettings {
                    address: replica.address.clone(),
                    ..self.settings().clone()
                };
                self.open_node_connection(settings, Arc::default(), protocol)
            });
        Some(conn.clone())
    }
}

/// Asks the primary about its replicas every second, on a connection of its own, for as long
/// as keyward runs.
async fn follow_replicas(upstream: std::sync::Weak<Upstream>) {
    let mut backoff = Duration::ZERO;
    loop {
        let Some(strong) = upstream.upgrade() else {
            return;
        };
        let link = strong.primary_link();
        drop(strong);
        let ended = match link {
            Ok((settings, leave)) => {
                let asking = ask_about_replicas(&upstream, &settings);
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
        tracing::debug!(reason = %ended, "not following the primary's replicas");
        backoff = next_backoff(backoff);
        tokio::time::sleep(backoff).await;
    }
}

/// Asks `INFO replication` every [`ASK_EVERY`] and records the answer; returns why it stopped.
async fn ask_about_replicas(
    upstream: &std::sync::Weak<Upstream>,
    settings: &super::UpstreamSettings,
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
        let replicas = replicas_in(&text);
        for replica in &replicas {
            metrics::replica_lag(&replica.address.to_string(), replica.lag);
        }
        upstream.replicas.known.store(Arc::new(replicas));
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
