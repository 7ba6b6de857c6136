//! The order in which a session owes replies to its client.
//!
//! A client must get its replies in the order of its requests, whether a reply comes from
//! Redis, from keyward itself, or is an error keyward gives in Redis's place. Each entry is
//! either a ready reply or a number of replies owed by the upstream connection; upstream
//! replies arrive in order, so a count is all that is needed to match them.
//!
//! Replies are never given up on here: a shared connection that stops answering is reset by
//! its own watch (`request_timeout`), which fails everything it owes.

mod handed;
mod sent;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use quanta::Instant;

use crate::metrics::CommandMetrics;
use crate::policy::phases::{Followers, Follows, Written, WrittenKeys};
use crate::upstream::Reply;
use sent::{Answered, Sent};

enum Expected {
    Ready(Bytes),
    /// One reply owed by upstream that the client must not see: this is written instead.
    Substitute(Bytes),
    Upstream {
        remaining: u32,
        /// Keys written by these commands that cache or lock rules watch (`None` when
        /// there are none, as for most batches: no list to drop per reply).
        written: Option<WrittenKeys>,
    },
    /// A request a policy phase took, whose reply the phase brings (`Reply::Fetched`), apart
    /// from the connection's replies. `shared`: the reply is another session's read, on
    /// another connection.
    Fetched {
        ticket: u64,
        shared: bool,
        follows: Follows,
        /// Keys it writes that other phases watch, over when its reply comes.
        written: WrittenKeys,
    },
}

/// What the session must do after an upstream event.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterReply {
    Continue,
    /// The dedicated connection is gone: close the client as Redis would have.
    CloseClient,
    /// keyward stops the session ([`Reply::Stop`]).
    Stop,
}

#[derive(Default)]
pub struct ReplyQueue {
    entries: VecDeque<Expected>,
    /// Replies owed by upstream, over all entries.
    outstanding: u64,
    /// Forwarded commands awaiting their replies.
    sent: Sent,
    /// Entries awaiting a cache fill, and how many of them ride on another session's read.
    fetching: u32,
    fetching_shared: u32,
    next_ticket: u64,
    /// Written keys whose writes Redis has answered (or that failed), to be handed on.
    finished_writes: Vec<Written>,
    /// What the phases keep of the requests they follow, told each answer as it comes.
    pub followers: Followers,
    /// A list that brought reply lengths, kept for the next measured batch.
    spare_lengths: Vec<u32>,
    /// Replies at the front that the connection may write to the client itself (see
    /// [`ClientLane`](crate::upstream::ClientLane)), not settled yet: nothing else may be
    /// written to the client until they are.
    in_lane: u64,
}

impl ReplyQueue {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replies still owed by the upstream connection (timed-out ones excluded).
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// Cache fills still to answer a request of this session.
    pub fn awaiting_fetches(&self) -> bool {
        self.fetching > 0
    }

    /// Some request waits for a read made on another connection: a write must not overtake
    /// it there.
    pub fn awaiting_shared_reads(&self) -> bool {
        self.fetching_shared > 0
    }

    /// The ticket the next [`push_fetched`](Self::push_fetched) will carry.
    pub fn next_ticket(&self) -> u64 {
        self.next_ticket
    }

    pub fn push_fetched(&mut self, shared: bool, follows: Follows, written: WrittenKeys) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.fetching += 1;
        self.fetching_shared += u32::from(shared);
        self.entries.push_back(Expected::Fetched {
            ticket,
            shared,
            follows,
            written,
        });
    }

    /// A reply keyward made itself; written at once if nothing is owed before it.
    pub fn push_ready(&mut self, reply: Bytes, output: &mut BytesMut) {
        if self.entries.is_empty() {
            output.extend_from_slice(&reply);
        } else {
            self.entries.push_back(Expected::Ready(reply));
        }
    }

    pub fn command_sent(&mut self, command_id: usize, at: Instant, follows: Follows) {
        self.sent.push(command_id, at, follows);
    }

    /// For a batch about to be sent, if `wanted`: an empty list for the replies' lengths (from
    /// an earlier reply if one brought any).
    pub fn lengths_wanted(&mut self, wanted: bool) -> Option<Vec<u32>> {
        wanted.then(|| std::mem::take(&mut self.spare_lengths))
    }

    /// Some phase follows commands that await their replies (and needs each one's frame).
    pub fn follows_commands(&self) -> bool {
        !self.sent.followed.is_empty()
    }

    /// Forgets the latest `count` sends, which never reached a connection.
    pub fn unsend(&mut self, count: usize) {
        self.sent.unsend(count, &mut self.followers);
    }

    /// One upstream reply to be replaced by `reply` (see `Expected::Substitute`).
    pub fn push_substitute(&mut self, reply: Bytes) {
        self.outstanding += 1;
        self.entries.push_back(Expected::Substitute(reply));
    }

    /// `count` replies owed by upstream, which the connection writes to the client itself if
    /// `in_lane`.
    pub fn push_upstream(&mut self, count: u32, written: Option<WrittenKeys>, in_lane: bool) {
        if in_lane {
            self.in_lane += u64::from(count);
        }
        if count == 0 {
            self.finished_writes.extend(written.into_iter().flatten());
            return;
        }
        self.outstanding += u64::from(count);
        self.entries.push_back(Expected::Upstream {
            remaining: count,
            written,
        });
    }

    /// Replies in the lane are not settled yet: the client's socket is not the session's.
    pub fn lane_in_use(&self) -> bool {
        self.in_lane > 0
    }

    /// All that is owed is replies in the lane.
    pub fn owes_only_lane(&self) -> bool {
        self.in_lane > 0 && self.entries.len() == 1
    }

    /// `count` replies were written to the client through the lane, the latest at `at`.
    pub fn lane_written(
        &mut self,
        count: u32,
        output: &mut BytesMut,
        metrics: &CommandMetrics,
        at: Instant,
    ) {
        self.settle(count, Bytes::new(), &[], output, metrics, at);
    }

    /// Written keys whose writes are over, since the last call.
    pub fn take_finished_writes(&mut self) -> Vec<Written> {
        std::mem::take(&mut self.finished_writes)
    }

    /// Every written key still remembered, over or not (the session is ending).
    pub fn take_all_writes(&mut self) -> Vec<Written> {
        let mut all = std::mem::take(&mut self.finished_writes);
        for entry in &mut self.entries {
            match entry {
                Expected::Upstream {
                    written: Some(written),
                    ..
                }
                | Expected::Fetched { written, .. } => all.extend(written.drain(..)),
                _ => {}
            }
        }
        all
    }

    /// Handles one message from the upstream connection, which came at `now`.
    pub fn on_reply(
        &mut self,
        reply: Reply,
        output: &mut BytesMut,
        metrics: &CommandMetrics,
        now: Instant,
    ) -> AfterReply {
        match reply {
            Reply::Push(bytes) => output.extend_from_slice(&bytes),
            // Settled by the session before it hands on the next message.
            Reply::LaneWritten => {}
            Reply::Frames {
                bytes,
                count,
                lengths,
            } => {
                if self.substituted() {
                    self.write_ready(output);
                    return AfterReply::Continue;
                }
                self.settle(count, bytes, &lengths, output, metrics, now);
                if lengths.capacity() > self.spare_lengths.capacity() {
                    self.spare_lengths = lengths;
                    self.spare_lengths.clear();
                }
            }
            Reply::Failed { count, error } => {
                if self.substituted() {
                    self.write_ready(output);
                    return AfterReply::Continue;
                }
                let errors = error.repeat(count as usize).into();
                self.settle(count, errors, &[], output, metrics, now);
            }
            Reply::Closed { error } => {
                self.fail_all(&error, output);
                return AfterReply::CloseClient;
            }
            Reply::Fetched { ticket, bytes } => self.fetched(ticket, bytes, output),
            Reply::Stop => return AfterReply::Stop,
        }
        AfterReply::Continue
    }

    fn fetched(&mut self, ticket: u64, bytes: Bytes, output: &mut BytesMut) {
        let entry = self.entries.iter_mut().find(
            |entry| matches!(entry, Expected::Fetched { ticket: waiting, .. } if *waiting == ticket),
        );
        if let Some(entry) = entry {
            if let Expected::Fetched {
                shared,
                follows,
                written,
                ..
            } = entry
            {
                self.finished_writes.extend(written.drain(..));
                self.fetching -= 1;
                self.fetching_shared -= u32::from(*shared);
                self.followers.answered(std::mem::take(follows), &bytes);
            }
            *entry = Expected::Ready(bytes);
            self.write_ready(output);
        }
    }

    /// Answers everything still owed with `error` (the connection is gone).
    fn fail_all(&mut self, error: &Bytes, output: &mut BytesMut) {
        for entry in &mut self.entries {
            match entry {
                Expected::Upstream {
                    remaining, written, ..
                } => {
                    self.finished_writes
                        .extend(written.take().into_iter().flatten());
                    *entry = Expected::Ready(error.repeat(*remaining as usize).into());
                }
                Expected::Substitute(_) => *entry = Expected::Ready(error.clone()),
                // A fill answers them whatever becomes of this connection.
                Expected::Ready(_) | Expected::Fetched { .. } => {}
            }
        }
        let answered = Answered::none(usize::MAX);
        self.sent.take(answered, &mut self.followers, |_, _, _| {});
        self.outstanding = 0;
        self.in_lane = 0;
        self.write_ready(output);
    }

    /// A substitute sent on its own is answered by exactly one frame, which it replaces.
    fn substituted(&mut self) -> bool {
        let Some(Expected::Substitute(reply)) = self.entries.front() else {
            return false;
        };
        let reply = reply.clone();
        self.entries.pop_front();
        self.outstanding = self.outstanding.saturating_sub(1);
        self.entries.push_front(Expected::Ready(reply));
        true
    }

    /// Hands `count` upstream replies to the requests they answer: written at once when those
    /// are first in line, else kept in place behind the cache fills still awaited before them.
    fn settle(
        &mut self,
        count: u32,
        bytes: Bytes,
        lengths: &[u32],
        output: &mut BytesMut,
        metrics: &CommandMetrics,
        now: Instant,
    ) {
        self.outstanding = self.outstanding.saturating_sub(u64::from(count));
        // Replies in the lane are the first owed, so these settle them first.
        self.in_lane = self.in_lane.saturating_sub(u64::from(count));
        let owed_by = self
            .entries
            .iter()
            .position(|entry| matches!(entry, Expected::Upstream { .. }));
        let Some(mut index) = owed_by else {
            // Frames nobody is waiting for (e.g. a RESP2 message on a dedicated connection):
            // written as they come.
            output.extend_from_slice(&bytes);
            return;
        };
        let answered = Answered {
            count: count as usize,
            replies: &bytes,
            lengths,
        };
        self.sent.take(
            answered,
            &mut self.followers,
            |command_id, sent_at, taken| metrics.replied(command_id, now - sent_at, taken),
        );
        if index == 0 {
            output.extend_from_slice(&bytes);
        } else {
            self.entries.insert(index, Expected::Ready(bytes));
            index += 1;
        }
        let mut owed = count;
        while owed > 0 {
            let Some(Expected::Upstream {
                remaining, written, ..
            }) = self.entries.get_mut(index)
            else {
                break;
            };
            let taken = owed.min(*remaining);
            *remaining -= taken;
            owed -= taken;
            if *remaining == 0 {
                if let Some(written) = written.take() {
                    self.finished_writes.extend(written);
                }
                self.entries.remove(index);
            }
        }
        self.write_ready(output);
    }

    fn write_ready(&mut self, output: &mut BytesMut) {
        while let Some(Expected::Ready(reply)) = self.entries.front() {
            output.extend_from_slice(reply);
            self.entries.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommandTable;

    fn frames(bytes: &'static [u8], count: u32) -> Reply {
        Reply::frames(Bytes::from_static(bytes), count)
    }

    #[test]
    fn ready_replies_wait_for_earlier_upstream_ones() {
        let metrics = CommandMetrics::new(CommandTable::global());
        let mut queue = ReplyQueue::default();
        let mut output = BytesMut::new();
        queue.push_upstream(2, None, false);
        queue.push_ready(Bytes::from_static(b"+local\r\n"), &mut output);
        queue.push_upstream(1, None, false);
        assert!(output.is_empty());
        queue.on_reply(frames(b":1\r\n", 1), &mut output, &metrics, Instant::now());
        assert_eq!(&output[..], b":1\r\n");
        queue.on_reply(frames(b":2\r\n", 1), &mut output, &metrics, Instant::now());
        assert_eq!(&output[..], b":1\r\n:2\r\n+local\r\n");
        queue.on_reply(frames(b":3\r\n", 1), &mut output, &metrics, Instant::now());
        assert_eq!(&output[..], b":1\r\n:2\r\n+local\r\n:3\r\n");
        assert!(queue.is_empty());
    }

    #[test]
    fn what_comes_after_replies_in_the_lane_waits_until_they_are_written() {
        let metrics = CommandMetrics::new(CommandTable::global());
        let mut queue = ReplyQueue::default();
        let mut output = BytesMut::new();
        queue.push_upstream(2, None, true);
        assert!(queue.owes_only_lane());
        queue.push_ready(Bytes::from_static(b"+local\r\n"), &mut output);
        queue.push_upstream(1, None, false);
        assert!(output.is_empty() && !queue.owes_only_lane());
        queue.lane_written(1, &mut output, &metrics, Instant::now());
        assert!(output.is_empty() && queue.lane_in_use());
        // The socket took the second reply in part: the rest comes the usual way.
        queue.on_reply(frames(b"2\r\n", 1), &mut output, &metrics, Instant::now());
        assert_eq!(&output[..], b"2\r\n+local\r\n");
        assert!(!queue.lane_in_use());
        queue.on_reply(frames(b":3\r\n", 1), &mut output, &metrics, Instant::now());
        assert_eq!(&output[..], b"2\r\n+local\r\n:3\r\n");
        assert!(queue.is_empty());
    }

    #[test]
    fn upstream_replies_wait_behind_a_cache_fill() {
        let metrics = CommandMetrics::new(CommandTable::global());
        let mut queue = ReplyQueue::default();
        let mut output = BytesMut::new();
        queue.push_upstream(1, None, false);
        let ticket = queue.next_ticket();
        queue.push_fetched(true, Follows::default(), WrittenKeys::new());
        queue.push_upstream(2, None, false);
        queue.on_reply(frames(b":1\r\n", 1), &mut output, &metrics, Instant::now());
        queue.on_reply(
            frames(b":2\r\n:3\r\n", 2),
            &mut output,
            &metrics,
            Instant::now(),
        );
        assert_eq!(&output[..], b":1\r\n");
        assert!(queue.awaiting_shared_reads() && queue.outstanding() == 0);
        let fetched = Reply::Fetched {
            ticket,
            bytes: Bytes::from_static(b"$4\r\nfill\r\n"),
        };
        queue.on_reply(fetched, &mut output, &metrics, Instant::now());
        assert_eq!(&output[..], b":1\r\n$4\r\nfill\r\n:2\r\n:3\r\n");
        assert!(queue.is_empty() && !queue.awaiting_fetches());
    }

    /// Measuring reply lengths allocates nothing once warm: the list that brought them comes
    /// back, emptied, for the next measured batch.
    #[test]
    fn the_list_that_brought_reply_lengths_is_used_again() {
        let metrics = CommandMetrics::new(CommandTable::global());
        let mut queue = ReplyQueue::default();
        let mut output = BytesMut::new();
        assert_eq!(queue.lengths_wanted(true).unwrap().capacity(), 0);
        queue.push_upstream(2, None, false);
        let mut lengths = Vec::with_capacity(16);
        lengths.extend([4, 4]);
        let reply = Reply::Frames {
            bytes: Bytes::from_static(b":1\r\n:2\r\n"),
            count: 2,
            lengths,
        };
        queue.on_reply(reply, &mut output, &metrics, Instant::now());
        assert_eq!(&output[..], b":1\r\n:2\r\n");
        let spare = queue.lengths_wanted(true).unwrap();
        assert!(spare.is_empty() && spare.capacity() >= 16);
        assert_eq!(
            queue.lengths_wanted(true).unwrap().capacity(),
            0,
            "handed out once"
        );
    }

    /// Follows `GET <key>` for hot keys, as the session does when it forwards it.
    fn send_followed_get(queue: &mut ReplyQueue, key: &str) {
        let mut request = BytesMut::new();
        crate::resp::request::encode_command(&["GET", key], &mut request);
        let mut decoder = crate::resp::request::RequestDecoder::default();
        decoder.decode(&request).unwrap();
        let args = decoder.args(&request);
        let info = CommandTable::global().lookup(&args);
        let follows = Follows {
            hotkeys: queue
                .followers
                .hotkeys
                .start(info, &args, &[1], request.len()),
            ..Follows::default()
        };
        queue.command_sent(info.id, Instant::now(), follows);
        queue.push_upstream(1, None, false);
    }

    #[test]
    fn hot_keys_get_their_own_replies_whatever_else_arrives() {
        let metrics = CommandMetrics::new(CommandTable::global());
        let mut queue = ReplyQueue::default();
        let mut output = BytesMut::new();
        // A frame nobody waits for (a message from a link just left) answers nothing.
        queue.on_reply(
            frames(b"+stray\r\n", 1),
            &mut output,
            &metrics,
            Instant::now(),
        );
        send_followed_get(&mut queue, "a");
        send_followed_get(&mut queue, "b");
        // A send that never reached a connection is forgotten, and finished empty.
        queue.unsend(1);
        queue.on_reply(
            frames(b"$2\r\nhi\r\n", 1),
            &mut output,
            &metrics,
            Instant::now(),
        );
        let seen: Vec<(Vec<u8>, u64)> = queue
            .followers
            .hotkeys
            .finished()
            .map(|(key, seen)| (key.to_vec(), seen.counts.outbound))
            .collect();
        assert_eq!(seen, [(b"a".to_vec(), 8), (b"b".to_vec(), 0)]);
    }

    #[test]
    fn hot_keys_take_reply_lengths_from_the_connection_or_walk_the_replies() {
        let metrics = CommandMetrics::new(CommandTable::global());
        let mut output = BytesMut::new();
        let outbound = |queue: &mut ReplyQueue| -> Vec<(Vec<u8>, u64)> {
            let seen = queue
                .followers
                .hotkeys
                .finished()
                .map(|(key, seen)| (key.to_vec(), seen.counts.outbound))
                .collect();
            queue.followers.hotkeys.discard();
            seen
        };
        for lengths in [vec![5, 9, 4], Vec::new()] {
            let mut queue = ReplyQueue::default();
            send_followed_get(&mut queue, "a");
            // Not followed: its reply is passed over.
            queue.command_sent(0, Instant::now(), Follows::default());
            queue.push_upstream(1, None, false);
            send_followed_get(&mut queue, "c");
            assert!(queue.follows_commands());
            let reply = Reply::Frames {
                bytes: Bytes::from_static(b"+OK\r\n$3\r\nabc\r\n:1\r\n"),
                count: 3,
                lengths,
            };
            queue.on_reply(reply, &mut output, &metrics, Instant::now());
            assert_eq!(
                outbound(&mut queue),
                [(b"a".to_vec(), 5), (b"c".to_vec(), 4)]
            );
            assert!(!queue.follows_commands());
        }
    }
}
