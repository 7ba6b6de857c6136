//! Where a batch's replies go: to the session (or relay) that sent it, through its inbox; or,
//! for commands keyward sends on its own behalf, gathered where they are read (the
//! connection's task; in cluster mode, the router's) and handed to a closure once the last has
//! come.
//!
//! A cache fill used to wait for its replies in a task of its own, woken through a channel of
//! its own: about a fifth of what a miss cost beyond a hit (see BENCHMARKS.md). Gathering
//! spends neither; the closure runs where the replies are read.

use bytes::{Bytes, BytesMut};

use super::connection::{Reply, ReplySender};
use crate::resp::reply;

/// What a gathering hands its closure: every reply frame, in order; or the error reply owed
/// when the connection failed first.
pub type Gathered = Result<Bytes, Bytes>;

pub enum ReplyTo {
    Inbox(ReplySender),
    /// Boxed: a batch carries its `ReplyTo`, and most go to an inbox.
    Gather(Box<Gathering>),
}

/// Replies to `count` commands on their way to a closure.
pub struct Gathering {
    count: u32,
    received: u32,
    frames: BytesMut,
    then: Option<Box<dyn FnOnce(Gathered) + Send>>,
}

impl From<ReplySender> for ReplyTo {
    fn from(inbox: ReplySender) -> ReplyTo {
        ReplyTo::Inbox(inbox)
    }
}

impl ReplyTo {
    /// Gathers the replies to `count` commands for `then`, which is called once: with them all,
    /// or with the error owed when the connection failed (or the batch was dropped) first.
    pub fn gather(count: u32, then: impl FnOnce(Gathered) + Send + 'static) -> ReplyTo {
        ReplyTo::Gather(Box::new(Gathering {
            count,
            received: 0,
            frames: BytesMut::new(),
            then: Some(Box::new(then)),
        }))
    }

    pub fn send(&mut self, reply: Reply) {
        match self {
            ReplyTo::Inbox(inbox) => {
                let _ = inbox.send(reply);
            }
            ReplyTo::Gather(gathering) => gathering.take(reply),
        }
    }

    /// Whether both go to the same inbox: one session's batches, whose replies keep its order.
    pub fn same_inbox(&self, other: &ReplyTo) -> bool {
        match (self, other) {
            (ReplyTo::Inbox(one), ReplyTo::Inbox(other)) => one.same_channel(other),
            _ => false,
        }
    }
}

impl Gathering {
    fn take(&mut self, reply: Reply) {
        match reply {
            Reply::Frames { bytes, count, .. } => {
                self.received += count;
                let all = self.received >= self.count;
                if all && self.frames.is_empty() {
                    self.finish(Ok(bytes));
                } else {
                    self.frames.extend_from_slice(&bytes);
                    if all {
                        let frames = self.frames.split().freeze();
                        self.finish(Ok(frames));
                    }
                }
            }
            Reply::Failed { error, .. } | Reply::Closed { error } => self.finish(Err(error)),
            _ => self.finish(Err(connection_closed())),
        }
    }

    fn finish(&mut self, gathered: Gathered) {
        if let Some(then) = self.then.take() {
            then(gathered);
        }
    }
}

impl Drop for Gathering {
    /// Nothing hangs: replies that will never come (the connection is gone with the batch)
    /// end the gathering too.
    fn drop(&mut self) {
        if let Some(then) = self.then.take() {
            then(Err(connection_closed()));
        }
    }
}

/// The error a command's sender gets when its connection went away before its reply came.
pub(super) fn connection_closed() -> Bytes {
    reply::error("ERR upstream connection closed")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn gathering(count: u32) -> (ReplyTo, Arc<Mutex<Vec<Gathered>>>) {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&heard);
        let reply_to = ReplyTo::gather(count, move |gathered| into.lock().unwrap().push(gathered));
        (reply_to, heard)
    }

    fn frames(bytes: &'static [u8], count: u32) -> Reply {
        Reply::frames(Bytes::from_static(bytes), count)
    }

    #[test]
    fn replies_that_come_in_runs_are_handed_over_once_all_came() {
        let (mut reply_to, heard) = gathering(3);
        reply_to.send(frames(b"$1\r\na\r\n", 1));
        assert!(heard.lock().unwrap().is_empty());
        reply_to.send(frames(b":5\r\n:6\r\n", 2));
        drop(reply_to);
        let heard = heard.lock().unwrap();
        assert_eq!(*heard, [Ok(Bytes::from_static(b"$1\r\na\r\n:5\r\n:6\r\n"))]);
    }

    #[test]
    fn a_failed_or_dropped_gathering_ends_with_an_error_once() {
        let (mut reply_to, heard) = gathering(2);
        reply_to.send(frames(b"+OK\r\n", 1));
        let error = Bytes::from_static(b"-ERR upstream gone\r\n");
        reply_to.send(Reply::Failed {
            count: 1,
            error: error.clone(),
        });
        drop(reply_to);
        assert_eq!(*heard.lock().unwrap(), [Err(error)]);

        let (reply_to, heard) = gathering(1);
        drop(reply_to);
        assert_eq!(*heard.lock().unwrap(), [Err(connection_closed())]);
    }
}
