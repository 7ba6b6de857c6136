//! A client's socket that an upstream connection writes replies to itself.
//!
//! Without it, every unpipelined request crosses between two tasks twice: its batch to the
//! connection's task, its reply back to the session's task, which then writes it. The second
//! crossing (a wake-up of the session, its loop, its inbox) costs about as much as the rest of
//! the request. When a session owes its client nothing else (nothing queued before the
//! request, nothing unwritten), no reply of its own can come before this one, so the
//! connection may write it to the client's socket as it reads it and only count it here; the
//! session settles the count the next time it wakes, usually for the client's next request.
//!
//! The two never write to the socket at once: the session writes nothing while replies it
//! handed over this way are unsettled, and the connection writes only those. A reply the
//! socket does not take whole goes to the session as usual (what is left of it), and so does
//! everything after it in that batch.
//!
//! A session that follows requests to their answers (hot keys count their keys with the
//! replies' sizes) would be woken for every batch's replies all the same. So a batch may ask
//! that the lane's [`LaneListener`] hear its replies first: the session hands what it follows
//! to the listener, and the connection finishes it there. The listener hears every reply of
//! such a batch, also those that go the usual way after the socket did not take one whole.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quanta::Instant;

use crate::net::Stream;

/// Hears the replies of a batch sent with [`InLane::told`] set, whole, in order and before
/// the client can have them (so before the client's next request reaches the session).
pub trait LaneListener: Send + Sync {
    /// The next `count` replies of the batch, one frame each (with their lengths, when the
    /// batch asked the connection to measure them), which came at `now`.
    fn reply(&self, replies: &[u8], lengths: &[u32], count: u32, now: Instant);
}

/// A batch's way to its client: the lane, and whether its listener hears the replies.
pub struct InLane {
    lane: Arc<ClientLane>,
    told: bool,
    /// The socket did not take a reply whole: the rest of the batch goes the usual way, and
    /// the listener still hears it.
    socket_full: bool,
}

impl InLane {
    pub fn new(lane: Arc<ClientLane>, told: bool) -> InLane {
        InLane {
            lane,
            told,
            socket_full: false,
        }
    }

    /// Writes the batch's next `count` replies to the client, if the socket takes them now
    /// and took every one before them.
    pub(super) fn write(&mut self, replies: &Bytes, lengths: &[u32], count: u32) -> Written {
        let writes = !self.socket_full;
        let written = self.lane.write(replies, lengths, count, self.told, writes);
        if let Written::Part(_) = written {
            self.socket_full = true;
        }
        written
    }
}

pub struct ClientLane {
    stream: Arc<Stream>,
    listener: Arc<dyn LaneListener>,
    /// Replies written to the client through the lane, since it opened.
    written: AtomicU64,
    /// When the latest of them was written, in nanoseconds after `opened`.
    written_at: AtomicU64,
    opened: Instant,
    /// The session waits for a message once a reply is written: it has more to write after
    /// it, or is leaving, or needs the connection quiet.
    wake: AtomicBool,
    /// The session ended: its client is written nothing more.
    closed: AtomicBool,
}

/// What became of replies handed to [`ClientLane::write`].
pub(super) enum Written {
    /// All of them reached the socket; the session is to be told (it asked to be woken).
    All { tell: bool },
    /// The socket took this many bytes (none when the lane is closed, or an earlier run of
    /// the batch did not fit); the rest goes the usual way.
    Part(usize),
}

impl ClientLane {
    pub fn new(stream: Arc<Stream>, listener: Arc<dyn LaneListener>) -> Arc<ClientLane> {
        Arc::new(ClientLane {
            stream,
            listener,
            written: AtomicU64::new(0),
            written_at: AtomicU64::new(0),
            opened: Instant::now(),
            wake: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    /// Writes `count` complete replies to the client, if `writes` and the socket takes them
    /// now. The listener hears them first if `told`, whatever becomes of them: they answer
    /// requests Redis ran.
    fn write(
        &self,
        replies: &Bytes,
        lengths: &[u32],
        count: u32,
        told: bool,
        writes: bool,
    ) -> Written {
        // One clock read serves both: the listener's and the session's time of the reply.
        let now = Instant::now();
        if told {
            self.listener.reply(replies, lengths, count, now);
        }
        if !writes || self.closed.load(Ordering::Relaxed) {
            return Written::Part(0);
        }
        let mut sent = 0;
        while sent < replies.len() {
            match self.stream.try_write(&replies[sent..]) {
                Ok(written) if written > 0 => sent += written,
                _ => return Written::Part(sent),
            }
        }
        let at = now.saturating_duration_since(self.opened).as_nanos() as u64;
        self.written_at.store(at, Ordering::Relaxed);
        // Ordered with the session's request to be woken (see [`ClientLane::ask_wake`]).
        self.written.fetch_add(u64::from(count), Ordering::SeqCst);
        Written::All {
            tell: self.wake.swap(false, Ordering::SeqCst),
        }
    }

    /// Replies written through the lane so far, and when the latest was.
    pub fn written(&self) -> (u64, Instant) {
        let written = self.written.load(Ordering::SeqCst);
        let nanos = self.written_at.load(Ordering::Relaxed);
        (written, self.opened + Duration::from_nanos(nanos))
    }

    /// Asks for a message when the next reply is written. Returns how many are written by
    /// now: a count that moved since the caller looked means one came first, and no message
    /// may follow it.
    pub fn ask_wake(&self) -> u64 {
        self.wake.store(true, Ordering::SeqCst);
        self.written.load(Ordering::SeqCst)
    }

    /// The session is gone: replies in flight go the usual way, to nobody.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}
