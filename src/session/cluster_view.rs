//! What a cluster-aware client (ioredis `Cluster`, redis-py `RedisCluster`, `redis-cli -c`)
//! sees when it asks keyward about the cluster in cluster mode: a cluster of one node,
//! keyward itself, serving all 16384 slots. The client then sends everything here and is never
//! redirected; keyward does the routing.

use std::net::SocketAddr;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::resp::reply::{self, ReplyWriter};
use crate::resp::Protocol;
use crate::upstream::cluster::SLOTS;

/// Where clients reach this keyward, as the cluster view names it.
pub struct Whereabouts {
    /// The local end of the client's connection, when it is a plain TCP one.
    pub arrived_at: Option<SocketAddr>,
    /// `[listen] address`.
    pub listen: SocketAddr,
    /// Whether every slot is served now (`CLUSTER INFO`'s `cluster_state`).
    pub healthy: bool,
}

impl Whereabouts {
    /// The address to announce: the one the client reached, else the listen address, with a
    /// wildcard listen address read as loopback.
    fn address(&self) -> SocketAddr {
        let mut address = self.arrived_at.unwrap_or(self.listen);
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        address
    }

    /// A node id (40 hex digits, as Redis's) that stays the same for the same address, across
    /// restarts.
    fn node_id(&self) -> String {
        let digest = Sha256::digest(format!("keyward {}", self.address()).as_bytes());
        digest
            .iter()
            .take(20)
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// The answer to `CLUSTER SLOTS|SHARDS|NODES|INFO|MYID`, `READONLY`, `READWRITE` or `ASKING`.
pub fn answer(args: &[Vec<u8>], protocol: Protocol, whereabouts: &Whereabouts) -> Bytes {
    let name = args[0].to_ascii_lowercase();
    if name != b"cluster" {
        // READONLY, READWRITE, ASKING: keyward picks the node for every command.
        return reply::simple("OK");
    }
    let address = whereabouts.address();
    let ip = address.ip().to_string();
    let port = i64::from(address.port());
    let id = whereabouts.node_id();
    let last = SLOTS as i64 - 1;
    let writer = ReplyWriter::new(protocol);
    match args[1].to_ascii_lowercase().as_slice() {
        b"slots" => writer
            .array(1)
            .array(3)
            .integer(0)
            .integer(last)
            .array(3)
            .bulk(ip.as_bytes())
            .integer(port)
            .bulk(id.as_bytes())
            .finish(),
        b"shards" => writer
            .array(1)
            .map(2)
            .bulk(b"slots")
            .array(2)
            .integer(0)
            .integer(last)
            .bulk(b"nodes")
            .array(1)
            .map(7)
            .bulk(b"id")
            .bulk(id.as_bytes())
            .bulk(b"port")
            .integer(port)
            .bulk(b"ip")
            .bulk(ip.as_bytes())
            .bulk(b"endpoint")
            .bulk(ip.as_bytes())
            .bulk(b"role")
            .bulk(b"master")
            .bulk(b"replication-offset")
            .integer(0)
            .bulk(b"health")
            .bulk(b"online")
            .finish(),
        b"nodes" => {
            let line = format!("{id} {ip}:{port}@0 myself,master - 0 0 1 connected 0-{last}\n");
            writer.bulk(line.as_bytes()).finish()
        }
        b"info" => {
            let state = if whereabouts.healthy { "ok" } else { "fail" };
            let served = if whereabouts.healthy { SLOTS } else { 0 };
            let info = format!(
                "cluster_state:{state}\r\ncluster_slots_assigned:{SLOTS}\r\ncluster_slots_ok:{served}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:1\r\ncluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\n",
                SLOTS - served
            );
            writer.bulk(info.as_bytes()).finish()
        }
        _ => writer.bulk(id.as_bytes()).finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|word| word.as_bytes().to_vec()).collect()
    }

    fn whereabouts() -> Whereabouts {
        Whereabouts {
            arrived_at: None,
            listen: "0.0.0.0:6380".parse().unwrap(),
            healthy: true,
        }
    }

    #[test]
    fn one_node_serves_every_slot() {
        let view = whereabouts();
        let id = view.node_id();
        assert_eq!(id.len(), 40);
        let slots = answer(&args(&["CLUSTER", "SLOTS"]), Protocol::Resp2, &view);
        let expected = format!(
            "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:6380\r\n$40\r\n{id}\r\n"
        );
        assert_eq!(slots, Bytes::from(expected));
        let nodes = answer(&args(&["cluster", "nodes"]), Protocol::Resp2, &view);
        let line = format!("{id} 127.0.0.1:6380@0 myself,master - 0 0 1 connected 0-16383\n");
        assert_eq!(nodes, Bytes::from(format!("${}\r\n{line}\r\n", line.len())));
        let readonly = answer(&args(&["READONLY"]), Protocol::Resp2, &view);
        assert_eq!(readonly, reply::simple("OK"));
    }

    #[test]
    fn the_address_is_the_one_the_client_reached() {
        let view = Whereabouts {
            arrived_at: Some("10.1.2.3:7000".parse().unwrap()),
            ..whereabouts()
        };
        let myid = answer(&args(&["CLUSTER", "MYID"]), Protocol::Resp2, &view);
        assert_ne!(view.node_id(), whereabouts().node_id());
        assert!(String::from_utf8_lossy(&myid).contains(&view.node_id()));
        let shards = answer(&args(&["CLUSTER", "SHARDS"]), Protocol::Resp3, &view);
        assert!(shards.starts_with(b"*1\r\n%2\r\n"));
        assert!(String::from_utf8_lossy(&shards).contains("10.1.2.3"));
    }
}
