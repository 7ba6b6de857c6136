//! One connection to Redis, driven by one task that writes batches of commands and routes the
//! replies back to the sessions that sent them.
//!
//! Replies come back in the order commands were written, so routing needs no tags: the task
//! keeps a queue of (session, replies still owed) and hands each run of complete frames to the
//! session at its head, as one buffer slice, or writes it to that session's client itself when
//! the batch came with the client's lane (see [`ClientLane`](super::ClientLane)). A session's
//! batch is never interleaved with another's, so the replies to one batch are contiguous.
//!
//! Caveat: a session that gave up on its replies (timeout, disconnect) still has them routed to
//! it; it discards them itself. Dropping them here would need the task to know about sessions.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::errors::Breakage;
use super::handle::{ConnStatus, Hold, HELD_TOO_LONG};
use super::lane::InLane;
use super::reply_to::ReplyTo;
use super::routing::read_replies;
use super::tracking::{Fills, TrackingTarget};
use super::write_queue::WriteQueue;
use crate::inbox;
use crate::net::Stream;
use crate::resp::frame::FrameScanner;

/// Commands from one session, already encoded, that expect `count` replies.
pub struct Batch {
    pub bytes: Bytes,
    pub count: u32,
    pub reply_to: ReplyTo,
    /// A cache fill: Redis must track the keys it reads, so that keyward hears when they
    /// change (see `tracking`).
    pub tracked: bool,
    /// `Some` when the sender wants each reply's length with the replies (hot keys follow
    /// some of these commands): the connection delimits every frame anyway, and the session
    /// walking them again would cost as much. The list is where the lengths go, recycled from
    /// an earlier reply, so that measuring allocates nothing once a session has done it; the
    /// list of a batch whose replies the lane's listener hears goes on to the batch after it.
    pub measured: Option<Vec<u32>>,
    /// Set when the batch holds a command Redis may hold for long (see [`Hold`]).
    pub hold: Option<Hold>,
    /// Set when the session owes its client nothing before these replies: they may be
    /// written to the client's socket from here (see [`ClientLane`](super::ClientLane)).
    pub lane: Option<InLane>,
}

/// What a session receives from its upstream connection.
#[derive(Debug)]
pub enum Reply {
    /// `count` complete reply frames, in order, with each one's length if the batch was
    /// `measured` (else none).
    Frames {
        bytes: Bytes,
        count: u32,
        lengths: Vec<u32>,
    },
    /// A RESP3 push (pub/sub message, invalidation): not a reply to any command.
    Push(Bytes),
    /// Replies went to the client through its lane, and the session asked to hear of it.
    LaneWritten,
    /// The connection failed before `count` replies arrived; each gets `error`.
    Failed { count: u32, error: Bytes },
    /// A dedicated connection ended; `error` is owed for whatever was still in flight.
    Closed { error: Bytes },
    /// The reply to a read that a cache fill made on the session's behalf (it may have been
    /// another session's read of the same thing), for the session's request `ticket`.
    Fetched { ticket: u64, bytes: Bytes },
    /// Not from Redis: the session must stop (keyward shuts down, or `CLIENT KILL` named it).
    /// It comes by the channel the session waits on anyway, so that waiting for it costs the
    /// session nothing.
    Stop,
}

impl Reply {
    /// `count` complete frames, without their lengths.
    pub fn frames(bytes: Bytes, count: u32) -> Reply {
        Reply::Frames {
            bytes,
            count,
            lengths: Vec::new(),
        }
    }
}

pub type ReplySender = inbox::Sender<Reply>;

/// Stop taking batches while this much is written but not yet accepted by the socket.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Read in steps of this size.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// How a shared connection tells a request Redis holds on purpose from a connection that
/// stopped answering.
pub(super) struct StallCheck {
    /// `request_timeout`: how long the oldest request waits before Redis is asked about it,
    /// and again between askings while Redis holds it.
    pub timeout: Duration,
    /// Asks Redis, on a connection of its own and within `timeout`, whether it holds this
    /// connection's request on purpose (see [`super::holds`]).
    pub probe: Box<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>,
}

/// What a shared connection knows of its oldest waiting request.
#[derive(Default)]
struct Watch {
    /// When the watched request was taken; `None` while nothing waits.
    since: Option<Instant>,
    /// When to look at it again.
    next: Option<Instant>,
    /// Redis's answer, once asked, to whether it holds the request on purpose, and when to
    /// stop waiting for it.
    asked: Option<(oneshot::Receiver<bool>, Instant)>,
}

impl Watch {
    /// Watches `oldest`, the oldest waiting request's arrival, if it is another than the
    /// one watched.
    fn follow(&mut self, oldest: Option<Instant>, stall: &StallCheck, status: &ConnStatus) {
        if oldest == self.since {
            return;
        }
        if self.since.is_some() {
            status.set_held(false);
        }
        *self = Watch {
            since: oldest,
            next: oldest.and_then(|since| since.checked_add(HELD_TOO_LONG.min(stall.timeout))),
            asked: None,
        };
    }
}

/// Time for an answer from Redis to reach the connection after the probe's own limit.
const PROBE_SLACK: Duration = Duration::from_millis(50);
/// How often a connection looks for Redis's answer while it is asked.
const PROBE_POLL: Duration = Duration::from_millis(5);

/// Why [`serve`] returned.
pub(super) enum ServeEnd {
    /// Every handle was dropped: nobody will send here again.
    Released,
    /// The connection broke (or was dropped because Redis left a request unanswered past
    /// `request_timeout`); everything in flight has been failed.
    Broken(Breakage),
}

pub(super) struct Pending {
    /// `None` for keyward's own tracking commands before a fill: their replies are checked,
    /// not delivered.
    pub(super) reply_to: Option<ReplyTo>,
    pub(super) remaining: u32,
    /// When the batch was taken for writing, to notice a connection that stopped answering.
    pub(super) taken_at: Instant,
    pub(super) measured: bool,
    /// The lengths of the frames routed to it since its last delivery, if `measured`.
    pub(super) lengths: Vec<u32>,
    /// Released with the batch's last reply.
    pub(super) _hold: Option<Hold>,
    /// Where its replies are written, until the socket does not take one whole (see
    /// [`InLane`]).
    pub(super) lane: Option<InLane>,
}

/// What one connection holds while it runs.
#[derive(Default)]
pub(super) struct ConnState {
    pending: VecDeque<Pending>,
    input: BytesMut,
    scanner: FrameScanner,
    output: WriteQueue,
    /// The connection's health as its handles see it.
    status: Arc<ConnStatus>,
    /// Sentinel mode: cancelled when the primary changes, which ends the connection. A node
    /// that answers `-READONLY` is no longer the primary: that ends it too.
    leave: Option<CancellationToken>,
    /// A `-READONLY` was read.
    demoted: bool,
}

/// Runs one connection until it breaks or is released. `owner` receives frames that answer no
/// queued batch (pushes, RESP2 pub/sub messages) on a dedicated connection; on a shared one a
/// reply nobody asked for means Redis and keyward disagree, and the connection is dropped.
///
/// `stall` (shared connections only) bounds how long the oldest batch may wait for its
/// replies unless Redis holds it on purpose: past it the connection is dropped and everything
/// in flight fails, so that sessions never wait without end for a stalled server, while a
/// script Redis runs or a write Redis postpones waits as it would on Redis directly.
pub(super) async fn serve(
    stream: Stream,
    mut state: ConnState,
    batches: &mut mpsc::Receiver<Batch>,
    owner: Option<&ReplySender>,
    stall: Option<&StallCheck>,
    tracking: &TrackingTarget,
    broken_reply: impl Fn(&Breakage) -> Bytes,
) -> ServeEnd {
    state.input.reserve(READ_CHUNK);
    let mut fills = Fills::new(tracking);
    let end = drive(&stream, batches, owner, stall, &mut fills, &mut state).await;
    fills.end();
    state.status.set_held(false);
    if let ServeEnd::Broken(reason) = &end {
        let error = broken_reply(reason);
        for waiting in state.pending.drain(..) {
            let Some(mut reply_to) = waiting.reply_to else {
                continue;
            };
            reply_to.send(Reply::Failed {
                count: waiting.remaining,
                error: error.clone(),
            });
        }
        if let Some(owner) = owner {
            let _ = owner.send(Reply::Closed { error });
        }
    }
    end
}

impl ConnState {
    /// A new connection's state, whose waiting requests `status` shows.
    pub(super) fn reporting_to(status: Arc<ConnStatus>) -> ConnState {
        ConnState {
            status,
            ..ConnState::default()
        }
    }

    /// The state of a connection to a primary that Sentinel names: it ends when `leave` is
    /// cancelled (the primary changed), or when the node answers `-READONLY`.
    pub(super) fn following_primary(mut self, leave: Option<CancellationToken>) -> ConnState {
        self.leave = leave;
        self
    }

    /// Takes the batches already queued for a connection of one session's own and writes
    /// them as far as the socket takes them now, from the session's task: the session's
    /// command reaches Redis without waiting for the connection's task to be scheduled, so
    /// what other clients send after it cannot overtake it. (Write errors are left for
    /// [`serve`] to find.)
    pub(super) fn written_ahead(
        stream: &Stream,
        batches: &mut mpsc::Receiver<Batch>,
        status: Arc<ConnStatus>,
    ) -> ConnState {
        let mut state = ConnState::reporting_to(status);
        let now = Instant::now();
        while let Ok(batch) = batches.try_recv() {
            state.output.push(batch, &mut state.pending, now);
        }
        let _ = state.output.flush(stream);
        state
    }
}

async fn drive(
    stream: &Stream,
    batches: &mut mpsc::Receiver<Batch>,
    owner: Option<&ReplySender>,
    stall: Option<&StallCheck>,
    fills: &mut Fills<'_>,
    state: &mut ConnState,
) -> ServeEnd {
    let ConnState {
        pending,
        input,
        scanner,
        output,
        status,
        leave,
        demoted,
    } = state;
    let follows_primary = leave.is_some();
    let left = async {
        match leave {
            Some(leave) => leave.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(left);
    // Armed at the watched request's next look (held, then asked about), or sooner for a new
    // oldest request; firing early only re-arms it. No clock is read per batch.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed_for: Option<Instant> = None;
    let mut watch = Watch::default();
    let runs_after_wakers = runs_after_wakers();
    loop {
        if let Some(stall) = stall {
            watch.follow(pending.front().map(|oldest| oldest.taken_at), stall, status);
        }
        if let Some(next) = watch
            .next
            .filter(|next| armed_for.is_none_or(|at| *next < at))
        {
            timer.as_mut().reset(next.into());
            armed_for = Some(next);
        }
        tokio::select! {
            // Batches before replies: Redis works on the next requests while the replies to
            // the last ones are handed out (fewer, larger writes under load).
            biased;
            batch = batches.recv(), if output.bytes < WRITE_HIGH_WATER => {
                let Some(batch) = batch else {
                    return ServeEnd::Released;
                };
                let now = Instant::now();
                output.take(batch, pending, now, fills);
                // Let every session woken in this tick queue its batch first, so that one
                // write carries them all. A connection of one session's own has nobody to wait
                // for: its command goes out now, ahead of what other sessions send later.
                if owner.is_none() && !runs_after_wakers {
                    tokio::task::yield_now().await;
                }
                while output.bytes < WRITE_HIGH_WATER {
                    let Ok(batch) = batches.try_recv() else {
                        break;
                    };
                    output.take(batch, pending, now, fills);
                }
                if let Err(error) = output.flush(stream) {
                    return ServeEnd::Broken(Breakage::Io(error));
                }
            }
            readiness = stream.readable() => {
                let read = readiness
                    .map_err(Breakage::Io)
                    .and_then(|()| {
                        let demoted = follows_primary.then_some(&mut *demoted);
                        read_replies(stream, input, scanner, pending, owner, fills, demoted)
                    });
                if let Err(error) = read {
                    return ServeEnd::Broken(error);
                }
                if follows_primary && *demoted {
                    return ServeEnd::Broken(Breakage::NotPrimary);
                }
            }
            readiness = stream.writable(), if !output.is_empty() => {
                if let Err(error) = readiness.and_then(|()| output.flush(stream)) {
                    return ServeEnd::Broken(Breakage::Io(error));
                }
            }
            () = &mut left => return ServeEnd::Broken(Breakage::PrimaryChanged),
            () = &mut timer, if armed_for.is_some() => {
                armed_for = None;
                if let Some(stall) = stall {
                    if let Err(reason) = look_again(&mut watch, stall, status) {
                        return ServeEnd::Broken(reason);
                    }
                }
            }
        }
    }
}

/// Whether a task woken by a session runs only after every task woken before it. On one
/// thread it does: the other sessions whose clients spoke in the same poll of the driver run
/// first, so their batches are queued by then without a yield, which would cost one more poll
/// of the driver. Several worker threads run a woken task next, before the others.
fn runs_after_wakers() -> bool {
    tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
}

/// Looks at the oldest waiting request again when its time comes: past [`HELD_TOO_LONG`] it
/// shows as held; past `request_timeout` Redis is asked whether it holds it on purpose, and
/// asked again every `request_timeout` while it does. `Err` when it does not.
fn look_again(watch: &mut Watch, stall: &StallCheck, status: &ConnStatus) -> Result<(), Breakage> {
    let (Some(since), Some(next)) = (watch.since, watch.next) else {
        return Ok(());
    };
    let now = Instant::now();
    if now < next {
        return Ok(());
    }
    if !status.held.load(Ordering::Relaxed) && now.duration_since(since) >= HELD_TOO_LONG {
        status.set_held(true);
    }
    watch.next = match watch.asked.take() {
        Some((mut answer, give_up)) => match answer.try_recv() {
            Ok(true) => now.checked_add(stall.timeout),
            Err(oneshot::error::TryRecvError::Empty) if now < give_up => {
                watch.asked = Some((answer, give_up));
                now.checked_add(PROBE_POLL)
            }
            _ => return Err(Breakage::Stalled(stall.timeout)),
        },
        None if now.duration_since(since) >= stall.timeout => {
            let (tell, answer) = oneshot::channel();
            let probe = (stall.probe)();
            tokio::spawn(async move {
                let _ = tell.send(probe.await);
            });
            let give_up = now.checked_add(stall.timeout + PROBE_SLACK).unwrap_or(now);
            watch.asked = Some((answer, give_up));
            now.checked_add(PROBE_POLL)
        }
        None => since.checked_add(stall.timeout),
    };
    Ok(())
}
