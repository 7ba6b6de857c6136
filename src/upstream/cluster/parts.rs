//! The parts a client command is sent as: one, or one per slot or primary, each with where
//! it must go and what came back.

use bytes::Bytes;
use smallvec::{smallvec, SmallVec};

use super::merge::Merge;
use super::plan::Plan;
use super::SlotMap;
use crate::config::HostPort;

pub(super) struct Part {
    pub(super) bytes: Bytes,
    pub(super) slot: Option<u16>,
    /// Set when the part must go to this node whatever the map says (a fan-out, a redirection).
    pub(super) pinned: Option<HostPort>,
    pub(super) hops: u8,
    pub(super) tries: u32,
    pub(super) reply: Option<Bytes>,
}

impl Part {
    pub(super) fn new(bytes: Bytes, slot: Option<u16>, pinned: Option<HostPort>) -> Part {
        Part {
            bytes,
            slot,
            pinned,
            hops: 0,
            tries: 0,
            reply: None,
        }
    }
}

/// A command's parts as planned, and how their replies merge; `Err`: keyward's answer.
pub(super) fn parts(
    planned: Plan,
    command: Bytes,
    map: &SlotMap,
) -> Result<(Merge, SmallVec<[Part; 1]>), Bytes> {
    Ok(match planned {
        Plan::Answer(answer) => return Err(answer),
        Plan::Slot(slot) => (Merge::One, smallvec![Part::new(command, Some(slot), None)]),
        Plan::Anywhere => (Merge::One, smallvec![Part::new(command, None, None)]),
        Plan::PubSub => {
            let node = map.pubsub_node().cloned();
            (Merge::One, smallvec![Part::new(command, None, node)])
        }
        Plan::Split { parts, merge } => {
            let parts = parts.into_iter();
            let by_slot = parts.map(|(slot, bytes)| Part::new(bytes, Some(slot), None));
            (merge, by_slot.collect())
        }
        Plan::Everywhere(merge) => {
            let shards = map.shards.iter();
            let everywhere =
                shards.map(|shard| Part::new(command.clone(), None, Some(shard.primary.clone())));
            (merge, everywhere.collect())
        }
        Plan::Scan { node, command } => {
            let primary = map.shards[node].primary.clone();
            let merge = Merge::Scan {
                node,
                nodes: map.shards.len(),
            };
            (merge, smallvec![Part::new(command, None, Some(primary))])
        }
    })
}
