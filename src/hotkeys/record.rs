//! Following a command from its request to its answer, so that each of its keys is counted
//! with the bytes that went each way.
//!
//! A session starts a [`Pending`] when a command is judged and finishes it when the answer is
//! known (from Redis, the cache, a refusal or a timeout). Finished commands wait in the
//! session's [`Recorder`] until it hands them to the stage in one go, so a pipeline of
//! commands takes the stage's lock once.
//!
//! Bytes are attributed per key: a command with one key gets the whole request and reply. With
//! several, each key gets its own arguments (itself and the values up to the next key) plus an
//! equal share of the rest of the request, and its own element of an array reply with one
//! element per key (as `MGET` has); any other reply is shared equally.

use std::hash::BuildHasher;

use std::ops::Range;

use super::staging::Counts;
use crate::command::CommandInfo;
use crate::resp::frame;
use crate::resp::request::Args;

/// Keys counted per command at most (`MGET` of a million keys counts the first ones).
pub const MAX_KEYS_PER_COMMAND: usize = 64;
/// Bytes of a key kept; a longer key is kept as its start and a hash of the whole.
pub const MAX_KEY_LEN: usize = 200;

/// A command hot keys follow: its place among the recorder's followed commands.
#[derive(Debug)]
pub struct Pending(u32);

/// One command's keys, kept from its request until they are counted. The slot (and its
/// buffers) is reused by later commands once they are.
#[derive(Default)]
struct Followed {
    /// The kept keys, one after another.
    key_bytes: Vec<u8>,
    /// Per kept key, where it is in `key_bytes` and what it is counted for.
    keys: Vec<Observation>,
    /// Keys the command named, kept or not.
    named: u32,
}

impl Followed {
    /// Keeps one key with the bytes its command brought for it.
    fn keep(&mut self, key: &[u8], inbound: u64, value: u64, write: bool, command: usize) {
        let start = self.key_bytes.len() as u32;
        if key.len() <= MAX_KEY_LEN {
            self.key_bytes.extend_from_slice(key);
        } else {
            push_shortened(key, &mut self.key_bytes);
        }
        self.keys.push(Observation {
            key: start..self.key_bytes.len() as u32,
            counts: Counts {
                inbound,
                outbound: 0,
                write,
            },
            value,
            command: command as u32,
        });
    }

    /// Keeps the keys of a command that names several: each gets its own arguments (itself
    /// and what follows it up to the next key) and an equal share of the rest of the request.
    #[cold]
    fn keep_each(
        &mut self,
        info: &CommandInfo,
        args: &Args<'_>,
        key_positions: &[usize],
        request_len: usize,
    ) {
        let write = info.has_flag(crate::command::flags::WRITE);
        let kept = &key_positions[..key_positions.len().min(MAX_KEYS_PER_COMMAND)];
        // Key specs list keys in order nearly always, and then a key's arguments end where the
        // next key's begin; otherwise the nearest key after it is searched for.
        let ascending = key_positions.windows(2).all(|pair| pair[0] < pair[1]);
        let next_key_after = |nth: usize, position: usize| -> usize {
            let next = if ascending {
                key_positions.get(nth + 1).copied()
            } else {
                kept.iter()
                    .chain(key_positions.get(kept.len()))
                    .copied()
                    .filter(|&other| other > position)
                    .min()
            };
            next.unwrap_or(args.len())
        };
        let mut segments = 0;
        for (nth, &position) in kept.iter().enumerate() {
            let key = args.get(position).unwrap_or_default();
            let values = argument_bytes(args, position + 1..next_key_after(nth, position));
            let own = key.len() as u64 + values;
            segments += own;
            self.keep(key, own, if write { values } else { 0 }, write, info.id);
        }
        // The request bytes that belong to no key: the command name, the framing, arguments
        // before the first key.
        let share = (request_len as u64).saturating_sub(segments) / key_positions.len() as u64;
        for key in &mut self.keys {
            key.counts.inbound += share;
        }
    }
}

/// Gives each of a command's `named` keys its own element of an array answer with one element
/// per key (as `MGET` has), or an equal share of any other answer.
#[cold]
fn share_answer(keys: &mut [Observation], named: u32, answer: &[u8]) {
    let mut elements = frame::array_elements(answer, named as usize);
    let even_share = answer.len() as u64 / u64::from(named.max(1));
    for key in keys {
        key.counts.outbound = elements
            .as_mut()
            .and_then(Iterator::next)
            .map_or(even_share, |element| element.len() as u64);
    }
}

/// The bytes of the arguments at `positions`.
fn argument_bytes(args: &Args<'_>, positions: Range<usize>) -> u64 {
    positions
        .filter_map(|at| args.get(at))
        .map(|arg| arg.len() as u64)
        .sum()
}

/// A key of a followed command, and the bytes that went each way for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Where the key is in its command's kept keys.
    key: Range<u32>,
    /// What the key counts for; its outbound bytes are known once the command is finished.
    pub counts: Counts,
    /// Value bytes a write command sent for the key (0 for reads).
    pub value: u64,
    /// The command's id in the command table.
    pub command: u32,
}

/// A session's commands on their way through hot keys. Followed commands live in slots that
/// are reused, so following a command costs no allocation once the session has warmed up,
/// and a finished one waits in its slot until the session hands its keys to the stage.
#[derive(Default)]
pub struct Recorder {
    following: Vec<Followed>,
    free: Vec<u32>,
    /// Slots of the commands whose answers are known, in the order they were finished.
    finished: Vec<u32>,
}

impl Recorder {
    /// Starts following a command whose request took `request_len` bytes; none for a command
    /// without keys, which hot keys do not count.
    #[inline]
    pub fn start(
        &mut self,
        info: &CommandInfo,
        args: &Args<'_>,
        key_positions: &[usize],
        request_len: usize,
    ) -> Option<Pending> {
        if key_positions.is_empty() {
            return None;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.following.push(Followed::default());
            self.following.len() as u32 - 1
        });
        let followed = &mut self.following[slot as usize];
        followed.key_bytes.clear();
        followed.keys.clear();
        followed.named = key_positions.len() as u32;
        match *key_positions {
            // Most commands: the key gets the whole request, and a write's value is all that
            // follows the key.
            [position] => {
                let write = info.has_flag(crate::command::flags::WRITE);
                let value = if write {
                    argument_bytes(args, position + 1..args.len())
                } else {
                    0
                };
                let key = args.get(position).unwrap_or_default();
                followed.keep(key, request_len as u64, value, write, info.id);
            }
            _ => followed.keep_each(info, args, key_positions, request_len),
        }
        Some(Pending(slot))
    }

    /// The command's answer is known: `answer` is what the client gets (empty when it got
    /// nothing from Redis, e.g. after a timeout).
    #[inline]
    pub fn finish(&mut self, pending: Pending, answer: &[u8]) {
        let Some(followed) = self.following.get_mut(pending.0 as usize) else {
            return;
        };
        match &mut followed.keys[..] {
            [only] if followed.named == 1 => only.counts.outbound = answer.len() as u64,
            keys => share_answer(keys, followed.named, answer),
        }
        self.finished.push(pending.0);
    }

    /// Finished commands wait to be counted.
    pub fn has_finished(&self) -> bool {
        !self.finished.is_empty()
    }

    /// The keys of the finished commands, each with its observation.
    pub fn finished(&self) -> impl Iterator<Item = (&[u8], &Observation)> {
        self.finished.iter().flat_map(|&slot| {
            let followed = &self.following[slot as usize];
            followed.keys.iter().map(|seen| {
                let key = &followed.key_bytes[seen.key.start as usize..seen.key.end as usize];
                (key, seen)
            })
        })
    }

    /// Frees the finished commands' slots (their keys are counted, or hot keys were turned
    /// off).
    pub fn discard(&mut self) {
        self.free.append(&mut self.finished);
    }
}

/// Appends a key longer than [`MAX_KEY_LEN`] as its start and a hash of the whole.
#[cold]
fn push_shortened(key: &[u8], out: &mut Vec<u8>) {
    let hash = rustc_hash::FxBuildHasher.hash_one(key);
    out.extend_from_slice(&key[..MAX_KEY_LEN]);
    out.extend_from_slice(format!("...#{hash:016x}").as_bytes());
}

/// Starts following the command `words` and finishes it with `answer`, as a session would.
#[cfg(test)]
pub(crate) fn follow_command(recorder: &mut Recorder, words: &[&str], answer: &[u8]) {
    use crate::command::CommandTable;
    use crate::resp::request::{Decoded, RequestDecoder};
    let mut request = bytes::BytesMut::new();
    crate::upstream::encode_command(words, &mut request);
    let mut decoder = RequestDecoder::default();
    let Ok(Decoded::Request { consumed, .. }) = decoder.decode(&request) else {
        panic!("not a request");
    };
    let args = decoder.args(&request);
    let info = CommandTable::global().lookup(&args);
    let mut positions = Vec::new();
    info.key_positions(&args, &mut positions);
    let pending = recorder.start(info, &args, &positions, consumed).unwrap();
    recorder.finish(pending, answer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts and finishes one command, returning what is counted.
    fn follow(words: &[&str], answer: &[u8]) -> Vec<(Vec<u8>, Observation)> {
        let mut recorder = Recorder::default();
        follow_command(&mut recorder, words, answer);
        recorder
            .finished()
            .map(|(key, seen)| (key.to_vec(), seen.clone()))
            .collect()
    }

    #[test]
    fn one_key_gets_the_whole_request_and_reply() {
        let seen = follow(&["SET", "user:1", "hello"], b"+OK\r\n");
        assert_eq!(seen.len(), 1);
        let expected = "*3\r\n$3\r\nSET\r\n$6\r\nuser:1\r\n$5\r\nhello\r\n".len() as u64;
        assert_eq!(
            (
                &seen[0].0[..],
                seen[0].1.counts.inbound,
                seen[0].1.counts.outbound
            ),
            (&b"user:1"[..], expected, 5)
        );
        assert!(seen[0].1.counts.write);
        assert_eq!(seen[0].1.value, 5);
    }

    #[test]
    fn reads_write_no_value() {
        let seen = follow(&["GET", "user:1"], b"$5\r\nhello\r\n");
        assert_eq!(
            (
                seen[0].1.value,
                seen[0].1.counts.outbound,
                seen[0].1.counts.write
            ),
            (0, 11, false)
        );
    }

    #[test]
    fn mget_elements_go_to_their_keys() {
        let seen = follow(
            &["MGET", "a", "b"],
            b"*2\r\n$1\r\nx\r\n$10\r\n0123456789\r\n",
        );
        let outbound: Vec<u64> = seen.iter().map(|(_, o)| o.counts.outbound).collect();
        assert_eq!(outbound, [7, 17]);
        assert_eq!(seen[0].0, b"a");
    }

    #[test]
    fn mset_values_go_to_their_keys() {
        let seen = follow(&["MSET", "a", "1", "b", "1234567890"], b"+OK\r\n");
        let values: Vec<u64> = seen.iter().map(|(_, o)| o.value).collect();
        assert_eq!(values, [1, 10]);
        assert!(seen[1].1.counts.inbound > seen[0].1.counts.inbound);
        // Any other reply is shared.
        assert_eq!(seen[0].1.counts.outbound, 2);
    }

    #[test]
    fn keys_listed_out_of_order_get_the_same_arguments() {
        use crate::command::CommandTable;
        use crate::resp::request::RequestDecoder;
        let mut request = bytes::BytesMut::new();
        crate::upstream::encode_command(&["MSET", "a", "1", "b", "1234567890"], &mut request);
        let mut decoder = RequestDecoder::default();
        decoder.decode(&request).unwrap();
        let args = decoder.args(&request);
        let info = CommandTable::global().lookup(&args);
        let values = |positions: &[usize]| -> Vec<(Vec<u8>, u64)> {
            let mut recorder = Recorder::default();
            let pending = recorder
                .start(info, &args, positions, request.len())
                .unwrap();
            recorder.finish(pending, b"+OK\r\n");
            let mut seen: Vec<_> = recorder
                .finished()
                .map(|(key, observation)| (key.to_vec(), observation.value))
                .collect();
            seen.sort();
            seen
        };
        assert_eq!(values(&[3, 1]), values(&[1, 3]));
        assert_eq!(values(&[1, 3]), [(b"a".to_vec(), 1), (b"b".to_vec(), 10)]);
    }

    #[test]
    fn long_keys_are_cut_and_many_keys_capped() {
        let long = "k".repeat(1000);
        let seen = follow(&["GET", &long], b"$-1\r\n");
        assert!(seen[0].0.len() < 250 && seen[0].0.starts_with(b"kkkk"));
        let keys: Vec<String> = (0..100).map(|n| format!("key:{n}")).collect();
        let mut words = vec!["MGET"];
        words.extend(keys.iter().map(String::as_str));
        assert_eq!(follow(&words, b"*0\r\n").len(), MAX_KEYS_PER_COMMAND);
    }

    #[test]
    fn a_command_without_a_reply_counts_its_request() {
        let seen = follow(&["INCR", "n"], b"");
        assert_eq!(
            (seen[0].1.counts.outbound, seen[0].1.counts.write),
            (0, true)
        );
        assert!(seen[0].1.counts.inbound > 0);
    }
}
