//! One reply from the replies of a command's parts: a command split by slot, or sent to every
//! primary, answers as one Redis would.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use bytes::{BufMut, Bytes, BytesMut};

use super::info;
use crate::resp::frame::{self, array_elements};
use crate::resp::{parse_int, reply};

/// How a command's parts' replies make its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Merge {
    /// One part: its reply as it is.
    One,
    /// Integers, added (`DEL`, `EXISTS`, `DBSIZE`).
    Sum,
    /// The first error, else the first reply (`MSET`, `FLUSHALL`).
    AllOk,
    /// The one reply every part gave (`SCRIPT LOAD`'s digest).
    Same,
    /// Arrays, joined (`KEYS`).
    Concat,
    /// Arrays of 0/1, true where every part says true (`SCRIPT EXISTS`).
    AllTrue,
    /// Arrays whose elements go back where the client asked for them (`MGET`): part `i`'s
    /// `j`th element is element `places[i][j]` of the reply.
    Elements {
        places: Vec<Vec<usize>>,
        total: usize,
    },
    /// A `SCAN` step on primary `node` of `nodes`: the node's cursor becomes keyward's.
    Scan { node: usize, nodes: usize },
    /// `INFO`: see [`info`].
    Info,
    /// Any part's reply that is not a nil, picked at random (`RANDOMKEY`).
    AnyOf,
}

/// `SCAN` cursors carry the primary's index in their low bits.
pub(super) const SCAN_NODE_BITS: u32 = 10;

pub(super) fn merge(merge: &Merge, replies: &[Bytes]) -> Bytes {
    if let Some(error) = replies.iter().find(|reply| is_error(reply)) {
        return error.clone();
    }
    let merged = match merge {
        Merge::One | Merge::AllOk => replies.first().cloned(),
        Merge::Sum => sum(replies),
        Merge::Same => same(replies),
        Merge::Concat => concat(replies),
        Merge::AllTrue => all_true(replies),
        Merge::Elements { places, total } => elements(replies, places, *total),
        Merge::Scan { node, nodes } => scan_step(replies, *node, *nodes),
        Merge::Info => info::merge(replies),
        Merge::AnyOf => any_of(replies),
    };
    merged.unwrap_or_else(|| reply::error("ERR keyward: a cluster node gave an unexpected reply"))
}

pub(super) fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-' | b'!'))
}

fn integer(reply: &[u8]) -> Option<i64> {
    frame::integer(reply)
}

fn sum(replies: &[Bytes]) -> Option<Bytes> {
    let mut total = 0i64;
    for reply in replies {
        total = total.checked_add(integer(reply)?)?;
    }
    Some(Bytes::from(format!(":{total}\r\n")))
}

fn any_of(replies: &[Bytes]) -> Option<Bytes> {
    let found: Vec<&Bytes> = replies
        .iter()
        .filter(|reply| !frame::is_nil(reply))
        .collect();
    if found.is_empty() {
        return replies.first().cloned();
    }
    // Each `RandomState` is seeded anew: a random pick without a generator of its own.
    let pick = RandomState::new().hash_one(found.len()) as usize % found.len();
    Some(found[pick].clone())
}

fn same(replies: &[Bytes]) -> Option<Bytes> {
    let first = replies.first()?;
    if replies.iter().all(|reply| reply == first) {
        return Some(first.clone());
    }
    Some(reply::error(
        "ERR keyward: the cluster's primaries answered differently",
    ))
}

/// The elements of an array reply, whatever its length.
fn array(reply: &[u8]) -> Option<Vec<&[u8]>> {
    let rest = reply.strip_prefix(b"*")?;
    let end = memchr::memchr(b'\r', rest)?;
    let count = usize::try_from(parse_int(&rest[..end])?).ok()?;
    let elements: Vec<&[u8]> = array_elements(reply, count)?.collect();
    (elements.len() == count).then_some(elements)
}

fn concat(replies: &[Bytes]) -> Option<Bytes> {
    let parts = replies
        .iter()
        .map(|reply| array(reply))
        .collect::<Option<Vec<_>>>()?;
    Some(array_of(
        parts.iter().flatten().copied(),
        parts.iter().map(Vec::len).sum(),
    ))
}

fn all_true(replies: &[Bytes]) -> Option<Bytes> {
    let parts = replies
        .iter()
        .map(|reply| array(reply))
        .collect::<Option<Vec<_>>>()?;
    let len = parts.first()?.len();
    let mut out = BytesMut::new();
    out.put_slice(format!("*{len}\r\n").as_bytes());
    for index in 0..len {
        let mut all = true;
        for part in &parts {
            all &= integer(part.get(index)?)? != 0;
        }
        out.put_slice(if all { b":1\r\n" } else { b":0\r\n" });
    }
    Some(out.freeze())
}

fn elements(replies: &[Bytes], places: &[Vec<usize>], total: usize) -> Option<Bytes> {
    let mut slots: Vec<Option<&[u8]>> = vec![None; total];
    for (reply, places) in replies.iter().zip(places) {
        for (element, &place) in array_elements(reply, places.len())?.zip(places) {
            *slots.get_mut(place)? = Some(element);
        }
    }
    let elements = slots.into_iter().collect::<Option<Vec<_>>>()?;
    Some(array_of(elements.into_iter(), total))
}

fn array_of<'a>(elements: impl Iterator<Item = &'a [u8]>, len: usize) -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(format!("*{len}\r\n").as_bytes());
    for element in elements {
        out.put_slice(element);
    }
    out.freeze()
}

/// A primary's `SCAN` reply with keyward's cursor: the node's cursor and index while the node
/// has more, else the next primary's index with cursor 0, else 0 when it was the last.
fn scan_step(replies: &[Bytes], node: usize, nodes: usize) -> Option<Bytes> {
    let reply = replies.first()?;
    let mut parts = array_elements(reply, 2)?;
    let cursor = frame::bulk(&Bytes::copy_from_slice(parts.next()?))?;
    let keys = parts.next()?;
    let cursor: u64 = std::str::from_utf8(&cursor).ok()?.parse().ok()?;
    let next = match cursor {
        0 if node + 1 < nodes => (node + 1) as u64,
        0 => 0,
        cursor => cursor.checked_mul(1 << SCAN_NODE_BITS)? | node as u64,
    };
    let next = next.to_string();
    let mut out = BytesMut::new();
    out.put_slice(format!("*2\r\n${}\r\n{next}\r\n", next.len()).as_bytes());
    out.put_slice(keys);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn integers_add_up_and_errors_win() {
        let replies = [bytes(":2\r\n"), bytes(":0\r\n"), bytes(":3\r\n")];
        assert_eq!(merge(&Merge::Sum, &replies), bytes(":5\r\n"));
        let failed = [bytes(":2\r\n"), bytes("-ERR down\r\n")];
        assert_eq!(merge(&Merge::Sum, &failed), bytes("-ERR down\r\n"));
    }

    #[test]
    fn elements_go_back_in_the_clients_order() {
        let replies = [
            bytes("*2\r\n$1\r\na\r\n$-1\r\n"),
            bytes("*1\r\n$1\r\nb\r\n"),
        ];
        let places = vec![vec![0, 2], vec![1]];
        let merged = merge(&Merge::Elements { places, total: 3 }, &replies);
        assert_eq!(merged, bytes("*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n"));
    }

    #[test]
    fn arrays_join_and_flags_combine() {
        let replies = [
            bytes("*1\r\n$1\r\na\r\n"),
            bytes("*0\r\n"),
            bytes("*1\r\n$1\r\nb\r\n"),
        ];
        assert_eq!(
            merge(&Merge::Concat, &replies),
            bytes("*2\r\n$1\r\na\r\n$1\r\nb\r\n")
        );
        let exists = [bytes("*2\r\n:1\r\n:1\r\n"), bytes("*2\r\n:1\r\n:0\r\n")];
        assert_eq!(merge(&Merge::AllTrue, &exists), bytes("*2\r\n:1\r\n:0\r\n"));
    }

    #[test]
    fn scan_cursors_carry_the_node() {
        let step = |reply: &str, node, nodes| merge(&Merge::Scan { node, nodes }, &[bytes(reply)]);
        let more = step("*2\r\n$2\r\n12\r\n*1\r\n$1\r\nk\r\n", 1, 3);
        assert_eq!(
            more,
            bytes(&format!(
                "*2\r\n$5\r\n{}\r\n*1\r\n$1\r\nk\r\n",
                12 * 1024 + 1
            ))
        );
        let next_node = step("*2\r\n$1\r\n0\r\n*0\r\n", 1, 3);
        assert_eq!(next_node, bytes("*2\r\n$1\r\n2\r\n*0\r\n"));
        let done = step("*2\r\n$1\r\n0\r\n*0\r\n", 2, 3);
        assert_eq!(done, bytes("*2\r\n$1\r\n0\r\n*0\r\n"));
    }

    #[test]
    fn differing_answers_are_an_error() {
        let replies = [bytes("$1\r\na\r\n"), bytes("$1\r\nb\r\n")];
        assert!(is_error(&merge(&Merge::Same, &replies)));
        assert_eq!(merge(&Merge::Same, &replies[..1]), bytes("$1\r\na\r\n"));
    }
}
