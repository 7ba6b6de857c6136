//! The slot map: which primary serves each hash slot, and each primary's replicas, as the
//! cluster last described itself (`CLUSTER SHARDS`, or `CLUSTER SLOTS` before Redis 7).

use redis_protocol::resp3::types::OwnedFrame;

use std::sync::Arc;

use super::super::handshake::{elements, field, text};
use super::super::tracking::TrackingTarget;
use super::slots::SLOTS;
use crate::config::HostPort;

/// In `owners`: no primary serves the slot.
const UNSERVED: u16 = u16::MAX;

/// One primary and what it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub primary: HostPort,
    /// The primary's node id; empty when the cluster did not say (a node met through `MOVED`
    /// before the next refresh).
    pub id: String,
    pub replicas: Vec<HostPort>,
    /// Inclusive slot ranges, in order.
    pub ranges: Vec<(u16, u16)>,
}

/// Which primary serves each slot.
#[derive(Debug, Clone)]
pub struct SlotMap {
    /// Primaries, ordered by address: `SCAN` walks them in this order, so it must not depend
    /// on the order a node happened to list them in.
    pub shards: Vec<Shard>,
    /// For each slot, its primary's index in `shards`, or [`UNSERVED`].
    owners: Box<[u16]>,
    /// Each primary's tracking target, in the order of `shards` (see [`SlotMap::tracked_by`]):
    /// the cache asks it whether a key's entries may be served.
    trackers: Vec<Arc<TrackingTarget>>,
}

impl SlotMap {
    /// The index in `shards` of the primary serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.owners[usize::from(slot)] {
            UNSERVED => None,
            index => Some(usize::from(index)),
        }
    }

    /// The primary that sessions' own connections without a key (`SUBSCRIBE`, `MULTI` before
    /// its first key) reach, and where `PUBLISH` and `PUBSUB` go, so that their counts are of
    /// the subscribers keyward put there.
    pub fn pubsub_node(&self) -> Option<&HostPort> {
        self.shards.first().map(|shard| &shard.primary)
    }

    /// The tracking target of the primary serving `slot`.
    pub fn tracker(&self, slot: u16) -> Option<&TrackingTarget> {
        self.trackers.get(self.owner(slot)?).map(|target| &**target)
    }

    /// The map with each primary's tracking target, from `target_of`.
    pub fn tracked_by(mut self, target_of: impl Fn(&HostPort) -> Arc<TrackingTarget>) -> SlotMap {
        self.trackers = self
            .shards
            .iter()
            .map(|shard| target_of(&shard.primary))
            .collect();
        self
    }

    /// Whether `slot` is served by the same primary in `self` as in `other`.
    pub fn same_owner(&self, other: &SlotMap, slot: u16) -> bool {
        self.primary_of(slot) == other.primary_of(slot)
    }

    fn primary_of(&self, slot: u16) -> Option<&HostPort> {
        self.owner(slot).map(|owner| &self.shards[owner].primary)
    }

    /// Slots no primary serves.
    pub fn unserved(&self) -> usize {
        self.owners
            .iter()
            .filter(|&&owner| owner == UNSERVED)
            .count()
    }

    /// The map after a `MOVED`: `slot` is served by the primary at `address` (one this map
    /// may not know yet). Only the slot changes; the refresh that follows corrects the rest.
    pub fn with_owner(&self, slot: u16, address: &HostPort) -> SlotMap {
        let mut shards = self.shards.clone();
        let index = match shards.iter().position(|shard| shard.primary == *address) {
            Some(index) => index,
            None => {
                shards.push(Shard {
                    primary: address.clone(),
                    id: String::new(),
                    replicas: Vec::new(),
                    ranges: Vec::new(),
                });
                shards.len() - 1
            }
        };
        let mut owners = self.owners.clone();
        owners[usize::from(slot)] = index as u16;
        SlotMap::ordered(shards, owners)
    }

    /// Reads a `CLUSTER SHARDS` reply. `tls`: nodes are reached on their TLS port.
    pub fn from_shards(reply: &OwnedFrame, tls: bool) -> Result<SlotMap, String> {
        let mut shards = Vec::new();
        for shard in elements(reply) {
            let ranges = slot_ranges(field(shard, "slots").map_or(&[], elements))?;
            if ranges.is_empty() {
                continue;
            }
            let nodes: Vec<_> = field(shard, "nodes")
                .map_or(&[][..], elements)
                .iter()
                .collect();
            let is_primary = |node: &&OwnedFrame| {
                field(node, "role").and_then(text).as_deref() == Some("master")
            };
            let is_online = |node: &&OwnedFrame| {
                field(node, "health").and_then(text).as_deref() == Some("online")
            };
            // A primary that failed stays listed as one until it comes back as a replica:
            // the live primary is the one to route to.
            let primary = nodes
                .iter()
                .find(|node| is_primary(node) && is_online(node))
                .or_else(|| nodes.iter().find(|node| is_primary(node)))
                .ok_or("a shard serving slots has no primary")?;
            // A replica that has copied nothing yet (offset 0) says `loading`: only a failed
            // one is left out.
            let is_failed = |node: &&OwnedFrame| {
                field(node, "health").and_then(text).as_deref() == Some("failed")
            };
            let replicas = nodes
                .iter()
                .filter(|node| !is_primary(node) && !is_failed(node))
                .filter_map(|node| shard_node_address(node, tls))
                .collect();
            shards.push(Shard {
                primary: shard_node_address(primary, tls)
                    .ok_or("a shard's primary has no address")?,
                id: field(primary, "id").and_then(text).unwrap_or_default(),
                replicas,
                ranges,
            });
        }
        SlotMap::from_list(shards)
    }

    /// Reads a `CLUSTER SLOTS` reply: one entry per slot range, primary first.
    pub fn from_slots(reply: &OwnedFrame) -> Result<SlotMap, String> {
        let mut shards: Vec<Shard> = Vec::new();
        for range in elements(reply) {
            let parts = elements(range);
            let (Some(start), Some(end), Some(primary)) = (
                parts.first().and_then(slot_number),
                parts.get(1).and_then(slot_number),
                parts.get(2),
            ) else {
                return Err("malformed CLUSTER SLOTS entry".into());
            };
            let address = slots_node_address(primary).ok_or("a slot range has no primary")?;
            let replicas = parts[3..].iter().filter_map(slots_node_address).collect();
            match shards.iter_mut().find(|shard| shard.primary == address) {
                Some(shard) => shard.ranges.push((start, end)),
                None => shards.push(Shard {
                    primary: address,
                    id: elements(primary).get(2).and_then(text).unwrap_or_default(),
                    replicas,
                    ranges: vec![(start, end)],
                }),
            }
        }
        SlotMap::from_list(shards)
    }

    fn from_list(shards: Vec<Shard>) -> Result<SlotMap, String> {
        if shards.is_empty() {
            return Err("the cluster serves no slots".into());
        }
        let mut owners = vec![UNSERVED; SLOTS].into_boxed_slice();
        for (index, shard) in shards.iter().enumerate() {
            for &(start, end) in &shard.ranges {
                if start > end || usize::from(end) >= SLOTS {
                    return Err(format!("slot range {start}-{end} is not one"));
                }
                owners[usize::from(start)..=usize::from(end)].fill(index as u16);
            }
        }
        Ok(SlotMap::ordered(shards, owners))
    }

    /// Sorts the shards by address, renumbering `owners` to match.
    fn ordered(shards: Vec<Shard>, mut owners: Box<[u16]>) -> SlotMap {
        let mut order: Vec<usize> = (0..shards.len()).collect();
        order.sort_by_key(|&index| address_key(&shards[index].primary));
        let mut renumbered = vec![0u16; shards.len()];
        for (new, &old) in order.iter().enumerate() {
            renumbered[old] = new as u16;
        }
        for owner in owners.iter_mut().filter(|owner| **owner != UNSERVED) {
            *owner = renumbered[usize::from(*owner)];
        }
        let mut slots = shards.into_iter().map(Some).collect::<Vec<_>>();
        let shards = order
            .iter()
            .map(|&old| slots[old].take().expect("each shard once"))
            .collect();
        let mut map = SlotMap {
            shards,
            owners,
            trackers: Vec::new(),
        };
        map.recompute_ranges();
        map
    }

    /// `ranges` of every shard, from `owners` (after a `MOVED` changed one slot).
    fn recompute_ranges(&mut self) {
        for shard in &mut self.shards {
            shard.ranges.clear();
        }
        let mut slot = 0;
        while slot < SLOTS {
            let owner = self.owners[slot];
            let start = slot;
            while slot < SLOTS && self.owners[slot] == owner {
                slot += 1;
            }
            if owner != UNSERVED {
                let range = (start as u16, (slot - 1) as u16);
                self.shards[usize::from(owner)].ranges.push(range);
            }
        }
    }
}

fn address_key(address: &HostPort) -> (String, u16) {
    (address.host().to_string(), address.port())
}

fn slot_number(frame: &OwnedFrame) -> Option<u16> {
    text(frame)?
        .parse()
        .ok()
        .filter(|&slot: &u16| usize::from(slot) < SLOTS)
}

fn slot_ranges(bounds: &[OwnedFrame]) -> Result<Vec<(u16, u16)>, String> {
    bounds
        .chunks(2)
        .map(|pair| {
            match (
                pair.first().and_then(slot_number),
                pair.get(1).and_then(slot_number),
            ) {
                (Some(start), Some(end)) => Ok((start, end)),
                _ => Err("malformed slot range in CLUSTER SHARDS".to_string()),
            }
        })
        .collect()
}

/// A node's address in `CLUSTER SHARDS`: its announced endpoint (or its IP when the
/// endpoint is unknown, `?`), on its TLS port when keyward speaks TLS.
fn shard_node_address(node: &OwnedFrame, tls: bool) -> Option<HostPort> {
    let port_field = if tls { "tls-port" } else { "port" };
    let port = field(node, port_field)
        .or_else(|| field(node, "port"))
        .and_then(text)?
        .parse()
        .ok()?;
    let host = field(node, "endpoint")
        .and_then(text)
        .filter(|endpoint| !endpoint.is_empty() && endpoint != "?")
        .or_else(|| field(node, "ip").and_then(text))?;
    Some(HostPort::new(&host, port))
}

/// A node in `CLUSTER SLOTS`: `[host, port, id, …]`.
fn slots_node_address(node: &OwnedFrame) -> Option<HostPort> {
    let parts = elements(node);
    let host = parts
        .first()
        .and_then(text)
        .filter(|host| !host.is_empty() && host != "?")?;
    let port = parts.get(1).and_then(text)?.parse().ok()?;
    Some(HostPort::new(&host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::resp3::decode::complete::decode;

    fn frame(text: &str) -> OwnedFrame {
        decode(text.as_bytes()).unwrap().unwrap().0
    }

    fn bulk(text: &str) -> String {
        format!("${}\r\n{text}\r\n", text.len())
    }

    fn node(id: &str, port: u16, role: &str, health: &str) -> String {
        let mut out = String::from("*14\r\n");
        for (key, value) in [
            ("id", bulk(id)),
            ("port", format!(":{port}\r\n")),
            ("ip", bulk("127.0.0.1")),
            ("endpoint", bulk("127.0.0.1")),
            ("role", bulk(role)),
            ("replication-offset", ":0\r\n".into()),
            ("health", bulk(health)),
        ] {
            out.push_str(&bulk(key));
            out.push_str(&value);
        }
        out
    }

    fn shard(ranges: &[(u16, u16)], nodes: &[String]) -> String {
        let mut out = format!("*4\r\n{}*{}\r\n", bulk("slots"), ranges.len() * 2);
        for (start, end) in ranges {
            out.push_str(&format!(":{start}\r\n:{end}\r\n"));
        }
        out.push_str(&format!("{}*{}\r\n", bulk("nodes"), nodes.len()));
        for node in nodes {
            out.push_str(node);
        }
        out
    }

    #[test]
    fn shards_give_each_slot_its_live_primary() {
        let reply = format!(
            "*3\r\n{}{}{}",
            shard(
                &[(10923, 16383)],
                &[
                    node("c", 7002, "master", "online"),
                    node("f", 7005, "replica", "online")
                ]
            ),
            shard(
                &[(0, 5460)],
                &[
                    node("a", 7000, "master", "failed"),
                    node("d", 7003, "master", "online")
                ]
            ),
            shard(&[(5461, 10922)], &[node("b", 7001, "master", "online")]),
        );
        let map = SlotMap::from_shards(&frame(&reply), false).unwrap();
        let ports: Vec<_> = map
            .shards
            .iter()
            .map(|shard| shard.primary.port())
            .collect();
        assert_eq!(
            ports,
            [7001, 7002, 7003],
            "ordered by address, the live primary"
        );
        assert_eq!(map.owner(0), Some(2));
        assert_eq!(map.owner(5461), Some(0));
        assert_eq!(map.owner(16383), Some(1));
        assert_eq!(map.shards[1].replicas, [HostPort::new("127.0.0.1", 7005)]);
        assert_eq!(map.shards[2].id, "d");
        assert_eq!(map.unserved(), 0);
    }

    #[test]
    fn slots_reply_groups_ranges_by_primary() {
        let primary =
            |port: u16, id: &str| format!("*3\r\n{}:{port}\r\n{}", bulk("10.0.0.1"), bulk(id));
        let reply = format!(
            "*3\r\n*3\r\n:0\r\n:99\r\n{}*3\r\n:100\r\n:199\r\n{}*4\r\n:200\r\n:16383\r\n{}{}",
            primary(7000, "a"),
            primary(7001, "b"),
            primary(7000, "a"),
            primary(7003, "d"),
        );
        let map = SlotMap::from_slots(&frame(&reply)).unwrap();
        assert_eq!(map.shards.len(), 2);
        assert_eq!(map.shards[0].ranges, [(0, 99), (200, 16383)]);
        assert_eq!(map.shards[1].ranges, [(100, 199)]);
        assert_eq!(map.unserved(), 0);
    }

    #[test]
    fn a_moved_slot_changes_owner_alone() {
        let reply = format!(
            "*1\r\n{}",
            shard(&[(0, 16383)], &[node("a", 7000, "master", "online")])
        );
        let map = SlotMap::from_shards(&frame(&reply), false).unwrap();
        let moved = map.with_owner(42, &HostPort::new("127.0.0.1", 6999));
        assert_eq!(moved.owner(42), Some(0), "the new node sorts first");
        assert_eq!(moved.owner(41), Some(1));
        assert_eq!(moved.shards[1].ranges, [(0, 41), (43, 16383)]);
        assert_eq!(moved.shards[0].ranges, [(42, 42)]);
        assert_eq!(map.owner(42), Some(0), "the old map is unchanged");
    }

    #[test]
    fn uncovered_slots_are_counted() {
        let reply = format!(
            "*1\r\n{}",
            shard(&[(0, 99)], &[node("a", 7000, "master", "online")])
        );
        let map = SlotMap::from_shards(&frame(&reply), false).unwrap();
        assert_eq!(map.unserved(), SLOTS - 100);
        assert_eq!(map.owner(100), None);
    }
}
