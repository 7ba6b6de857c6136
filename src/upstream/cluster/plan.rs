//! Where a command goes in a cluster: to its slot's primary, to any primary, split into one
//! command per slot, to every primary, or nowhere (`-CROSSSLOT`, as Redis Cluster answers).

use bytes::{Bytes, BytesMut};

use super::merge::{Merge, SCAN_NODE_BITS};
use super::slots::key_slot;
use crate::command::CommandInfo;
use crate::resp::reply;
use crate::resp::request::{encode_command, Args};

/// Redis Cluster's own answer to a command whose keys are in several slots.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// How one command is sent.
pub(super) enum Plan {
    /// To the primary serving this slot (every key of the command is in it).
    Slot(u16),
    /// No keys: any primary answers it the same.
    Anywhere,
    /// `PUBLISH` and `PUBSUB`: to the primary where subscriptions go (see
    /// [`SlotMap::pubsub_node`](super::SlotMap::pubsub_node)).
    PubSub,
    /// Keys in several slots: one command per slot, merged.
    Split {
        parts: Vec<(u16, Bytes)>,
        merge: Merge,
    },
    /// To every primary, merged.
    Everywhere(Merge),
    /// One `SCAN` step, on the primary with this index.
    Scan { node: usize, command: Bytes },
    /// keyward answers at once.
    Answer(Bytes),
}

/// The plan for a command; `keys` is scratch space for key positions. `nodes` is how many
/// primaries the map has.
pub(super) fn plan(
    info: &CommandInfo,
    args: &Args<'_>,
    nodes: usize,
    keys: &mut Vec<usize>,
) -> Plan {
    if let Some(merge) = everywhere(&info.name) {
        return Plan::Everywhere(merge);
    }
    match &*info.name {
        "scan" => return scan(args, nodes),
        "publish" | "pubsub|channels" | "pubsub|numsub" | "pubsub|numpat" => return Plan::PubSub,
        _ => {}
    }
    keys.clear();
    info.key_positions(args, keys);
    let mut slots = keys.iter().filter_map(|&at| args.get(at)).map(key_slot);
    let Some(first) = slots.next() else {
        return Plan::Anywhere;
    };
    if slots.all(|slot| slot == first) {
        return Plan::Slot(first);
    }
    match split(&info.name, args, keys) {
        Some(plan) => plan,
        None => Plan::Answer(reply::error(CROSSSLOT)),
    }
}

/// Commands that act on, or describe, the whole keyspace, or on scripts every primary must
/// hold so that `EVALSHA` and `FCALL` work on whichever node a key lives.
fn everywhere(name: &str) -> Option<Merge> {
    Some(match name {
        "dbsize" => Merge::Sum,
        "keys" => Merge::Concat,
        "flushall" | "flushdb" | "script|flush" | "function|delete" | "function|flush"
        | "function|restore" => Merge::AllOk,
        "script|load" | "function|load" => Merge::Same,
        "script|exists" => Merge::AllTrue,
        "info" => Merge::Info,
        "randomkey" => Merge::AnyOf,
        _ => return None,
    })
}

/// `SCAN cursor …`: keyward's cursor is the node's cursor with the primary's index in its low
/// bits; the node sees its own.
fn scan(args: &Args<'_>, nodes: usize) -> Plan {
    let cursor = args
        .get(1)
        .and_then(|cursor| std::str::from_utf8(cursor).ok()?.parse::<u64>().ok());
    let Some(cursor) = cursor else {
        return Plan::Answer(reply::error("ERR invalid cursor"));
    };
    let node = (cursor & ((1 << SCAN_NODE_BITS) - 1)) as usize;
    if node >= nodes.max(1) {
        return Plan::Answer(reply::error("ERR invalid cursor"));
    }
    let node_cursor = (cursor >> SCAN_NODE_BITS).to_string();
    let mut rewritten: Vec<&[u8]> = args.iter().collect();
    rewritten[1] = node_cursor.as_bytes();
    let mut command = BytesMut::new();
    encode_command(&rewritten, &mut command);
    Plan::Scan {
        node,
        command: command.freeze(),
    }
}

/// Commands whose keys act independently, so that one command per slot does what the one
/// command would: `keys` are their positions in `args`.
fn split(name: &str, args: &Args<'_>, keys: &[usize]) -> Option<Plan> {
    let (merge_kind, values) = match name {
        "mget" => (MergeKind::Elements, 0),
        "mset" => (MergeKind::AllOk, 1),
        "del" | "unlink" | "exists" | "touch" => (MergeKind::Sum, 0),
        _ => return None,
    };
    let name = args.get(0)?;
    // Slots in the order their first key came, each with the keys' places among the keys.
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (place, &at) in keys.iter().enumerate() {
        let slot = key_slot(args.get(at)?);
        match groups.iter_mut().find(|(group, _)| *group == slot) {
            Some((_, places)) => places.push(place),
            None => groups.push((slot, vec![place])),
        }
    }
    let parts = groups
        .iter()
        .map(|(slot, places)| {
            let mut command: Vec<&[u8]> = vec![name];
            for &place in places {
                let at = keys[place];
                command.extend((at..=at + values).filter_map(|arg| args.get(arg)));
            }
            let mut bytes = BytesMut::new();
            encode_command(&command, &mut bytes);
            (*slot, bytes.freeze())
        })
        .collect();
    let merge = match merge_kind {
        MergeKind::Sum => Merge::Sum,
        MergeKind::AllOk => Merge::AllOk,
        MergeKind::Elements => Merge::Elements {
            places: groups.into_iter().map(|(_, places)| places).collect(),
            total: keys.len(),
        },
    };
    Some(Plan::Split { parts, merge })
}

enum MergeKind {
    Sum,
    AllOk,
    Elements,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommandTable;
    use crate::resp::request::{Decoded, RequestDecoder};

    fn plan_of(command: &[&str], nodes: usize) -> Plan {
        let mut encoded = BytesMut::new();
        encode_command(command, &mut encoded);
        let mut decoder = RequestDecoder::default();
        assert!(matches!(
            decoder.decode(&encoded),
            Ok(Decoded::Request { .. })
        ));
        let args = decoder.args(&encoded);
        let info = CommandTable::global().lookup(&args);
        plan(info, &args, nodes, &mut Vec::new())
    }

    fn text(bytes: &Bytes) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn keys_in_one_slot_go_to_it() {
        assert!(matches!(plan_of(&["GET", "foo{bar}"], 3), Plan::Slot(5061)));
        assert!(matches!(
            plan_of(&["MSET", "{a}1", "x", "{a}2", "y"], 3),
            Plan::Slot(_)
        ));
        assert!(matches!(
            plan_of(&["EVAL", "return 1", "0"], 3),
            Plan::Anywhere
        ));
        assert!(matches!(plan_of(&["PING"], 3), Plan::Anywhere));
    }

    #[test]
    fn multi_key_commands_split_by_slot_keeping_values() {
        let Plan::Split { parts, merge } = plan_of(&["MSET", "a", "1", "b", "2", "{a}c", "3"], 3)
        else {
            panic!("MSET over two slots is split");
        };
        assert_eq!(merge, Merge::AllOk);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, key_slot(b"a"));
        assert!(text(&parts[0].1).contains("$1\r\na\r\n$1\r\n1\r\n$4\r\n{a}c\r\n$1\r\n3\r\n"));
        let Plan::Split { merge, .. } = plan_of(&["MGET", "a", "b", "{a}c"], 3) else {
            panic!("MGET over two slots is split");
        };
        let places = vec![vec![0, 2], vec![1]];
        assert_eq!(merge, Merge::Elements { places, total: 3 });
    }

    #[test]
    fn unsplittable_commands_get_crossslot() {
        for command in [
            &["RENAME", "a", "b"][..],
            &["MSETNX", "a", "1", "b", "2"],
            &["SUNIONSTORE", "d", "a", "b"],
            &["EVAL", "return 1", "2", "a", "b"],
        ] {
            let Plan::Answer(answer) = plan_of(command, 3) else {
                panic!("{command:?} is refused");
            };
            assert_eq!(text(&answer), format!("-{CROSSSLOT}\r\n"), "{command:?}");
        }
    }

    #[test]
    fn scan_cursors_name_their_node() {
        let Plan::Scan { node, command } =
            plan_of(&["SCAN", &(7 << 10 | 2).to_string(), "COUNT", "5"], 3)
        else {
            panic!("SCAN is a scan step");
        };
        assert_eq!(node, 2);
        assert!(text(&command).starts_with("*4\r\n$4\r\nSCAN\r\n$1\r\n7\r\n"));
        assert!(matches!(plan_of(&["SCAN", "3"], 3), Plan::Answer(_)));
        assert!(matches!(plan_of(&["SCAN", "x"], 3), Plan::Answer(_)));
    }
}
