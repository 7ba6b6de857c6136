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
use std::num::NonZeroU64;
use std::ops::Range;

use super::space_saving::INLINE_KEY;
use super::staging::Counts;
use crate::command::CommandInfo;
use crate::resp::frame;
use crate::resp::request::Args;

mod detach;
mod queue;

pub use detach::{Detached, Places};
use queue::Queue;

/// Keys counted per command at most (`MGET` of a million keys counts the first ones).
pub const MAX_KEYS_PER_COMMAND: usize = 64;
/// Bytes of a key kept; a longer key is kept as its start and a hash of the whole.
pub const MAX_KEY_LEN: usize = 200;

/// A command hot keys follow: its number in the order the recorder started following, plus
/// one, so that an `Option<Pending>` takes no more room than a number.
#[derive(Debug)]
pub struct Pending(NonZeroU64);

impl Pending {
    fn new(number: u64) -> Pending {
        Pending(NonZeroU64::MIN.saturating_add(number))
    }

    fn number(&self) -> u64 {
        self.0.get() - 1
    }
}

/// A followed command not yet counted. Its kept keys run from its `first_key` to the next
/// command's.
#[derive(Debug, Clone, Copy)]
struct Followed {
    /// The number of its first kept key, in the order keys were kept.
    first_key: u64,
    /// The number of the first byte its long keys (if any) take in the recorder's buffer.
    long_bytes: u64,
    /// Keys the command named, kept or not.
    named: u32,
    finished: bool,
}

/// Where a kept key's bytes are: in its observation, or, when longer than [`INLINE_KEY`], in
/// the recorder's buffer of long keys (by the numbers of its bytes since the recorder began),
/// so that keeping a key never costs an allocation of its own.
#[derive(Debug, Clone)]
enum KeptKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Long(Range<u64>),
}

/// A key of a followed command, and the bytes that went each way for it.
#[derive(Debug, Clone)]
pub struct Observation {
    key: KeptKey,
    /// What the key counts for; its outbound bytes are known once the command is finished.
    pub counts: Counts,
    /// Value bytes a write command sent for the key (0 for reads).
    pub value: u64,
    /// The command's id in the command table.
    pub command: u32,
}

/// A session's commands on their way through hot keys, in the order they were started: a
/// command's keys go to the back when it is judged, and leave from the front once it and every
/// command before it have their answers. Answers come in that order nearly always (Redis
/// answers in order; a refusal or a cache hit is answered as it is judged), so the queues hold
/// about the commands in flight. They are reused without allocating, and a command's keys sit
/// next to the previous command's: on a busy proxy, memory the counting path touches is what it
/// costs (see BENCHMARKS.md), more than its instructions.
#[derive(Default)]
pub struct Recorder {
    commands: Queue<Followed>,
    keys: Queue<Observation>,
    /// The numbers of the command at the front of `commands` and of the key at the front of
    /// `keys`.
    first: u64,
    first_key: u64,
    /// Commands at the front that are finished.
    finished: usize,
    /// The bytes of the kept keys longer than [`INLINE_KEY`], in the order kept, and the
    /// number of the first.
    long_keys: Queue<u8>,
    first_long_byte: u64,
}

impl Recorder {
    /// Starts following a command whose request took `request_len` bytes; none for a command
    /// without keys, which hot keys do not count. Inlined into the request loop, as the steps
    /// of the pipeline are: a call here cost about 10 instructions a command.
    #[inline(always)]
    pub fn start(
        &mut self,
        info: &CommandInfo,
        args: &Args<'_>,
        key_positions: &[usize],
        request_len: usize,
    ) -> Option<Pending> {
        let first_key = self.first_key + self.keys.len() as u64;
        let long_bytes = self.long_keys_end();
        match *key_positions {
            [] => return None,
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
                self.keep(key, request_len as u64, value, write, info.id);
            }
            _ => self.keep_each(info, args, key_positions, request_len),
        }
        self.commands.push_back(Followed {
            first_key,
            long_bytes,
            named: key_positions.len() as u32,
            finished: false,
        });
        Some(Pending::new(self.first + self.commands.len() as u64 - 1))
    }

    /// The command's answer is known: `answer` is what the client gets (empty when it got
    /// nothing from Redis, e.g. after a timeout).
    #[inline]
    pub fn finish(&mut self, pending: Pending, answer: &[u8]) {
        // A command already counted is not found (and never asked for).
        self.finish_nth(pending.number().wrapping_sub(self.first) as usize, answer);
    }

    /// Finishes the `nth` command in line, if there is one.
    #[inline]
    fn finish_nth(&mut self, nth: usize, answer: &[u8]) {
        let Some(followed) = self.commands.as_mut_slice().get_mut(nth) else {
            return;
        };
        followed.finished = true;
        let first_key = (followed.first_key - self.first_key) as usize;
        match followed.named {
            1 => {
                if let Some(only) = self.keys.as_mut_slice().get_mut(first_key) {
                    only.counts.outbound = answer.len() as u64;
                }
            }
            named => self.share_answer(nth, named, answer),
        }
        if nth == self.finished {
            self.finished += 1;
            while self
                .commands
                .as_slice()
                .get(self.finished)
                .is_some_and(|command| command.finished)
            {
                self.finished += 1;
            }
        }
    }

    /// Finished commands wait to be counted.
    pub fn has_finished(&self) -> bool {
        self.finished > 0
    }

    /// The keys of the finished commands at the front, each with its observation.
    pub fn finished(&self) -> impl Iterator<Item = (&[u8], &Observation)> {
        self.keys.as_slice()[..self.keys_from(self.finished)]
            .iter()
            .map(|seen| {
                let key = match &seen.key {
                    KeptKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
                    KeptKey::Long(range) => {
                        let start = (range.start - self.first_long_byte) as usize;
                        let end = (range.end - self.first_long_byte) as usize;
                        self.long_keys
                            .as_slice()
                            .get(start..end)
                            .unwrap_or_default()
                    }
                };
                (key, seen)
            })
    }

    /// Drops the finished commands at the front (their keys are counted, or hot keys were
    /// turned off).
    pub fn discard(&mut self) {
        let keys = self.keys_from(self.finished);
        self.keys.drop_front(keys);
        self.commands.drop_front(self.finished);
        self.first += self.finished as u64;
        self.first_key += keys as u64;
        self.finished = 0;
        // Long keys no command still holds leave with them.
        let held_from = self
            .commands
            .as_slice()
            .first()
            .map_or(self.long_keys_end(), |command| command.long_bytes);
        self.long_keys
            .drop_front((held_from - self.first_long_byte) as usize);
        self.first_long_byte = held_from;
    }

    /// Gives each of the `nth` command's `named` keys its own element of an array answer with
    /// one element per key (as `MGET` has), or an equal share of any other answer.
    #[cold]
    fn share_answer(&mut self, nth: usize, named: u32, answer: &[u8]) {
        let mut elements = frame::array_elements(answer, named as usize);
        let even_share = answer.len() as u64 / u64::from(named.max(1));
        let keys = self.keys_from(nth)..self.keys_from(nth + 1);
        for key in &mut self.keys.as_mut_slice()[keys] {
            key.counts.outbound = elements
                .as_mut()
                .and_then(Iterator::next)
                .map_or(even_share, |element| element.len() as u64);
        }
    }

    /// Where the keys of the `nth` command in line start in `keys` (where they end, past the
    /// last command).
    fn keys_from(&self, nth: usize) -> usize {
        let command = self.commands.as_slice().get(nth);
        command.map_or(self.keys.len(), |command| {
            (command.first_key - self.first_key) as usize
        })
    }

    /// The number the next byte put in the buffer of long keys takes.
    fn long_keys_end(&self) -> u64 {
        self.first_long_byte + self.long_keys.len() as u64
    }

    /// Keeps one key with the bytes its command brought for it. Inlined into both callers:
    /// a call costs a third of what keeping a key does. A short key is copied into its place
    /// in the queue, not into an array then moved: that move read the copy back at other
    /// offsets than it was written at, which waits for the writes to reach the cache.
    #[inline(always)]
    fn keep(&mut self, key: &[u8], inbound: u64, value: u64, write: bool, command: usize) {
        let kept = if key.len() <= INLINE_KEY {
            KeptKey::Inline {
                len: key.len() as u8,
                bytes: [0; INLINE_KEY],
            }
        } else {
            self.keep_long(key)
        };
        let observation = self.keys.push_back(Observation {
            key: kept,
            counts: Counts {
                inbound,
                outbound: 0,
                write,
            },
            value,
            command: command as u32,
        });
        if let KeptKey::Inline { bytes, .. } = &mut observation.key {
            bytes[..key.len()].copy_from_slice(key);
        }
    }

    /// Puts a key longer than [`INLINE_KEY`] in the buffer of long keys.
    fn keep_long(&mut self, key: &[u8]) -> KeptKey {
        let start = self.long_keys_end();
        if key.len() <= MAX_KEY_LEN {
            self.long_keys.extend_from_slice(key);
        } else {
            push_shortened(key, &mut self.long_keys);
        }
        KeptKey::Long(start..self.long_keys_end())
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
        let first_kept = self.keys.len() - kept.len();
        for key in &mut self.keys.as_mut_slice()[first_kept..] {
            key.counts.inbound += share;
        }
    }
}

/// The bytes of the arguments at `positions`.
fn argument_bytes(args: &Args<'_>, positions: Range<usize>) -> u64 {
    positions
        .filter_map(|at| args.get(at))
        .map(|arg| arg.len() as u64)
        .sum()
}

/// Appends a key longer than [`MAX_KEY_LEN`] as its start and a hash of the whole.
#[cold]
fn push_shortened(key: &[u8], out: &mut Queue<u8>) {
    let hash = rustc_hash::FxBuildHasher.hash_one(key);
    out.extend_from_slice(&key[..MAX_KEY_LEN]);
    out.extend_from_slice(format!("...#{hash:016x}").as_bytes());
}

/// Starts following the command `words` and finishes it with `answer`, as a session would.
#[cfg(test)]
pub(crate) fn follow_command(recorder: &mut Recorder, words: &[&str], answer: &[u8]) {
    let pending = start_command(recorder, words);
    recorder.finish(pending, answer);
}

/// Starts following the command `words`, as a session does before forwarding it.
#[cfg(test)]
pub(crate) fn start_command(recorder: &mut Recorder, words: &[&str]) -> Pending {
    use crate::command::CommandTable;
    use crate::resp::request::{Decoded, RequestDecoder};
    let mut request = bytes::BytesMut::new();
    crate::resp::request::encode_command(words, &mut request);
    let mut decoder = RequestDecoder::default();
    let Ok(Decoded::Request { consumed, .. }) = decoder.decode(&request) else {
        panic!("not a request");
    };
    let args = decoder.args(&request);
    let info = CommandTable::global().lookup(&args);
    let mut positions = Vec::new();
    info.key_positions(&args, &mut positions);
    recorder.start(info, &args, &positions, consumed).unwrap()
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
        crate::resp::request::encode_command(&["MSET", "a", "1", "b", "1234567890"], &mut request);
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

    /// Starts following `GET key`, as a session does when it judges the command.
    fn start_get(recorder: &mut Recorder, key: &str) -> Pending {
        use crate::command::CommandTable;
        use crate::resp::request::RequestDecoder;
        let mut request = bytes::BytesMut::new();
        crate::resp::request::encode_command(&["GET", key], &mut request);
        let mut decoder = RequestDecoder::default();
        decoder.decode(&request).unwrap();
        let args = decoder.args(&request);
        let info = CommandTable::global().lookup(&args);
        recorder.start(info, &args, &[1], request.len()).unwrap()
    }

    fn counted(recorder: &mut Recorder) -> Vec<(String, u64)> {
        let seen = recorder
            .finished()
            .map(|(key, seen)| {
                let key = String::from_utf8_lossy(key).into_owned();
                (key, seen.counts.outbound)
            })
            .collect();
        recorder.discard();
        seen
    }

    #[test]
    fn commands_are_counted_once_those_before_them_are_answered() {
        let mut recorder = Recorder::default();
        let first = start_get(&mut recorder, "first");
        let second = start_get(&mut recorder, "second");
        // Answered out of order (a refusal or a cache hit while `first` awaits Redis).
        recorder.finish(second, b"-ERR\r\n");
        assert!(!recorder.has_finished());
        assert!(counted(&mut recorder).is_empty());
        recorder.finish(first, b"$-1\r\n");
        let third = start_get(&mut recorder, "third");
        assert_eq!(
            counted(&mut recorder),
            [("first".to_string(), 5), ("second".to_string(), 6)]
        );
        recorder.finish(third, b"+x\r\n");
        assert_eq!(counted(&mut recorder), [("third".to_string(), 4)]);
        assert!(recorder.commands.is_empty() && recorder.keys.is_empty());
    }

    #[test]
    fn long_keys_share_one_buffer_that_does_not_grow_while_commands_stay_in_flight() {
        let mut recorder = Recorder::default();
        let key = |n: usize| format!("{}:{n:04}", "long".repeat(10));
        let mut in_flight = std::collections::VecDeque::new();
        for n in 0..1_000 {
            in_flight.push_back((n, start_get(&mut recorder, &key(n))));
            // Always two commands in flight: the buffer never empties.
            if in_flight.len() > 2 {
                let (answered, pending) = in_flight.pop_front().unwrap();
                recorder.finish(pending, b"$-1\r\n");
                assert_eq!(counted(&mut recorder), [(key(answered), 5)]);
            }
        }
        assert!(recorder.long_keys.held() <= 6 * key(0).len());
        assert!(recorder.long_keys.capacity() < 1_000 * key(0).len() / 4);
    }
}
