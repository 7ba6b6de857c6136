//! One contended lock key: its waiters in arrival order, and the task that hands the lock to
//! them one by one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;

use super::{LockReport, Waiter};
use crate::resp::{frame, reply};
use crate::upstream::{send_own_when_room, ConnHandle, Reply, ReplySender};

/// Deletes the lock only if it still holds the token (a waiter that left won it).
const RELEASE: &[u8] =
    b"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// The longest a queue waits without hearing from Redis before it looks at the lock again: a
/// lost invalidation costs at most this much.
const SAFETY_POLL: Duration = Duration::from_secs(1);

pub struct Queue {
    key: Bytes,
    state: Mutex<State>,
    /// Bumped when the lock may have been released; the driver waits for a bump after it last
    /// looked at the lock, so that one release heard twice (through keyward and from Redis)
    /// costs one try, not two.
    wake: watch::Sender<u64>,
    max_waiters: usize,
}

#[derive(Default)]
struct State {
    waiters: VecDeque<Waiter>,
    /// The driver has finished: a new attempt needs a new queue.
    closed: bool,
    /// The token keyward last granted the lock with.
    holder: Option<Bytes>,
}

/// What a try of a waiter's `SET … NX` came to.
enum Outcome {
    Acquired(Bytes),
    Lost(Bytes),
    /// An error, or a reply that is not a lock answer: passed on as it is.
    Other(Bytes),
}

impl Queue {
    pub fn new(key: Bytes, first: Option<Waiter>, max_waiters: usize) -> Queue {
        Queue {
            key,
            state: Mutex::new(State {
                waiters: first.into_iter().collect(),
                ..State::default()
            }),
            wake: watch::Sender::new(0),
            max_waiters,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Queues a waiter behind the others; gives it back if the queue has closed. Beyond
    /// `max_waiters` the attempt goes to Redis once and its answer is passed on.
    pub fn push(&self, waiter: Waiter) -> Option<Waiter> {
        let mut state = self.state();
        if state.closed {
            return Some(waiter);
        }
        if state.waiters.len() >= self.max_waiters {
            drop(state);
            try_once(waiter);
            return None;
        }
        waiter.rule.metrics.waiters.increment(1.0);
        state.waiters.push_back(waiter);
        None
    }

    pub fn give_up(&self, reply_to: &ReplySender, ticket: u64) {
        let mut state = self.state();
        if let Some(waiter) = state
            .waiters
            .iter_mut()
            .find(|waiter| waiter.ticket == ticket && waiter.reply_to.same_channel(reply_to))
        {
            waiter.gave_up = true;
        }
        drop(state);
        self.wake();
    }

    pub fn wake(&self) {
        self.wake.send_modify(|wakes| *wakes += 1);
    }

    pub fn report(&self, db: u32) -> Option<LockReport> {
        let state = self.state();
        let oldest = state.waiters.front()?;
        Some(LockReport {
            key: String::from_utf8_lossy(&self.key).into_owned(),
            rule: oldest.rule.name().to_string(),
            db,
            holder: state
                .holder
                .as_ref()
                .map(|token| String::from_utf8_lossy(token).into_owned()),
            waiters: state.waiters.len(),
            oldest_wait_ms: oldest.since.elapsed().as_millis() as u64,
        })
    }

    /// Answers the waiters past `max_wait` and drops those whose client left; the head
    /// waiter's request and connection, or `None` (and the queue closes) once nobody waits.
    fn next_head(&self) -> Option<(Bytes, ConnHandle, bool, Instant)> {
        let mut state = self.state();
        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(state.waiters.len());
        for waiter in state.waiters.drain(..) {
            let deadline = waiter.since + waiter.rule.max_wait();
            if waiter.reply_to.is_closed() {
                waiter.rule.metrics.waiters.decrement(1.0);
            } else if deadline <= now || waiter.gave_up {
                waiter.rule.metrics.waiters.decrement(1.0);
                time_out(waiter);
            } else {
                kept.push_back(waiter);
            }
        }
        state.waiters = kept;
        let Some(head) = state.waiters.front() else {
            state.closed = true;
            return None;
        };
        let earliest = state
            .waiters
            .iter()
            .map(|waiter| waiter.since + waiter.rule.max_wait())
            .min()
            .unwrap_or(now);
        Some((
            head.request.clone(),
            head.conn.clone(),
            head.with_get,
            earliest,
        ))
    }

    /// Settles the head waiter after a try.
    fn settle_head(&self, outcome: Outcome) -> Settled {
        let mut state = self.state();
        let Some(head) = state.waiters.front_mut() else {
            return Settled::Answered { granted: false };
        };
        let (reply, granted) = match outcome {
            Outcome::Lost(reply) => {
                if head.lost_reply.is_none() {
                    // The client would now have slept and tried again, maybe many times.
                    head.rule.metrics.retries_saved.increment(1);
                    head.rule.metrics.contended.increment(1);
                }
                // Kept from the latest try: with `GET` it names the holder as it is now.
                head.lost_reply = Some(reply);
                return Settled::StillWaiting;
            }
            Outcome::Acquired(_) if head.reply_to.is_closed() => {
                // The client left while its try was on the way: nobody would release it.
                let Some(head) = state.waiters.pop_front() else {
                    return Settled::Answered { granted: false };
                };
                head.rule.metrics.waiters.decrement(1.0);
                return Settled::Abandoned {
                    conn: head.conn,
                    token: head.token,
                };
            }
            Outcome::Acquired(reply) => {
                let waited = head.since.elapsed();
                let metrics = &head.rule.metrics;
                metrics.wait.record(waited.as_secs_f64());
                if head.lost_reply.is_some() {
                    metrics.after_wait.increment(1);
                } else {
                    metrics.immediate.increment(1);
                }
                state.holder = Some(head.token.clone());
                (reply, true)
            }
            Outcome::Other(reply) => (reply, false),
        };
        let Some(head) = state.waiters.pop_front() else {
            return Settled::Answered { granted: false };
        };
        head.rule.metrics.waiters.decrement(1.0);
        let _ = head.reply_to.send(Reply::Fetched {
            ticket: head.ticket,
            bytes: reply,
        });
        Settled::Answered { granted }
    }
}

/// What became of the head waiter after a try.
enum Settled {
    /// It lost and keeps waiting.
    StillWaiting,
    /// It got its answer (the lock, or an error).
    Answered { granted: bool },
    /// It won the lock, but its client has left: the lock must be given back.
    Abandoned { conn: ConnHandle, token: Bytes },
}

/// Hands the lock to the queue's waiters in order, until nobody waits.
pub async fn drive(queue: &Queue) {
    let mut released = queue.wake.subscribe();
    // Right after a grant the lock is held: wait for its release before trying again.
    let mut held = false;
    while let Some((request, conn, with_get, earliest_deadline)) = queue.next_head() {
        if !held {
            let outcome = classify(send(&conn, request, 1, false).await, with_get);
            match queue.settle_head(outcome) {
                Settled::StillWaiting => {}
                Settled::Answered { granted } => {
                    held = granted;
                    continue;
                }
                Settled::Abandoned { conn, token } => {
                    let release = command(&[b"EVAL", RELEASE, b"1", &queue.key, &token]);
                    send(&conn, release, 1, false).await;
                    continue;
                }
            }
        }
        held = false;
        // Releases heard before this look at the lock are stale.
        released.borrow_and_update();
        // Read the holder's token with tracking on, so that Redis tells keyward when the key
        // is deleted, overwritten or expires; and its remaining time, for the safety timer.
        // Both in one round trip; tracking covers only the GET (the first command after it).
        let mut look = BytesMut::new();
        crate::resp::request::encode_command(&[&b"GET"[..], &queue.key], &mut look);
        crate::resp::request::encode_command(&[&b"PTTL"[..], &queue.key], &mut look);
        let answers = send(&conn, look.freeze(), 2, true).await;
        let mut frames = frame::frames(&answers);
        let holder = frames.next().map(|holder| answers.slice_ref(holder));
        let lifetime = frames.next();
        queue.state().holder = holder.as_ref().and_then(frame::bulk);
        let wait = match lifetime.and_then(frame::integer) {
            // The key is gone already: try at once.
            Some(-2) => continue,
            Some(ms) if ms >= 0 => Duration::from_millis(ms as u64 + 1).min(SAFETY_POLL),
            _ => SAFETY_POLL,
        };
        let until = (Instant::now() + wait).min(earliest_deadline);
        tokio::select! {
            _ = released.changed() => {}
            () = tokio::time::sleep_until(until.into()) => {}
        }
    }
}

/// Sends one attempt and passes Redis's answer on, whatever it is (shadow mode, or a queue
/// that is full).
pub fn try_once(waiter: Waiter) {
    tokio::spawn(async move {
        let reply = send(&waiter.conn, waiter.request.clone(), 1, false).await;
        let metrics = &waiter.rule.metrics;
        match classify(reply.clone(), waiter.with_get) {
            Outcome::Acquired(_) => metrics.immediate.increment(1),
            Outcome::Lost(_) => metrics.contended.increment(1),
            Outcome::Other(_) => {}
        }
        let _ = waiter.reply_to.send(Reply::Fetched {
            ticket: waiter.ticket,
            bytes: reply,
        });
    });
}

/// A waiter past `max_wait` gets the answer Redis gave its last try; one that never tried
/// (it queued behind others) tries once now, so its answer is Redis's own.
fn time_out(waiter: Waiter) {
    waiter.rule.metrics.timeout.increment(1);
    waiter
        .rule
        .metrics
        .wait
        .record(waiter.since.elapsed().as_secs_f64());
    match waiter.lost_reply {
        Some(reply) => {
            let _ = waiter.reply_to.send(Reply::Fetched {
                ticket: waiter.ticket,
                bytes: reply,
            });
        }
        None => try_once(waiter),
    }
}

/// Sends `count` commands on `conn` (once its queue has room) and waits for their replies (an
/// error reply if there are none).
async fn send(conn: &ConnHandle, request: Bytes, count: u32, tracked: bool) -> Bytes {
    match send_own_when_room(conn, request, count, tracked).await {
        Ok(replies) => replies.all().await.unwrap_or_else(|error| error),
        Err(_) => reply::error("ERR upstream unavailable"),
    }
}

fn classify(reply: Bytes, with_get: bool) -> Outcome {
    let nil = frame::is_nil(&reply);
    match (with_get, reply.first()) {
        (false, Some(b'+')) => Outcome::Acquired(reply),
        (false, _) if nil => Outcome::Lost(reply),
        (true, _) if nil => Outcome::Acquired(reply),
        (true, Some(b'$')) => Outcome::Lost(reply),
        _ => Outcome::Other(reply),
    }
}

fn command(args: &[&[u8]]) -> Bytes {
    let mut out = bytes::BytesMut::new();
    crate::resp::request::encode_command(args, &mut out);
    out.freeze()
}
