//! One connection to Redis, driven by one task that writes batches of commands and routes the
//! replies back to the sessions that sent them.
//!
//! Replies come back in the order commands were written, so routing needs no tags: the task
//! keeps a queue of (session, replies still owed) and hands each run of complete frames to the
//! session at its head, as one buffer slice. A session's batch is never interleaved with
//! another's, so the replies to one batch are contiguous.
//!
//! Caveat: a session that gave up on its replies (timeout, disconnect) still has them routed to
//! it; it discards them itself. Dropping them here would need the task to know about sessions.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use tokio::sync::{mpsc, oneshot};

use super::errors::Breakage;
use super::handle::{ConnStatus, Hold, HELD_TOO_LONG};
use super::tracking::{Fills, TrackingTarget};
use super::write_queue::WriteQueue;
use crate::net::Stream;
use crate::resp::frame::{is_push, FrameScanner};

/// Commands from one session, already encoded, that expect `count` replies.
pub struct Batch {
    pub bytes: Bytes,
    pub count: u32,
    pub reply_to: ReplySender,
    /// A cache fill: Redis must track the keys it reads, so that keyward hears when they
    /// change (see `tracking`).
    pub tracked: bool,
    /// `Some` when the sender wants each reply's length with the replies (hot keys follow
    /// some of these commands): the connection delimits every frame anyway, and the session
    /// walking them again would cost as much. The list is where the lengths go, recycled from
    /// an earlier reply, so that measuring allocates nothing once a session has done it.
    pub measured: Option<Vec<u32>>,
    /// Set when the batch holds a command Redis may hold for long (see [`Hold`]).
    pub hold: Option<Hold>,
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
    /// The connection failed before `count` replies arrived; each gets `error`.
    Failed { count: u32, error: Bytes },
    /// A dedicated connection ended; `error` is owed for whatever was still in flight.
    Closed { error: Bytes },
    /// The reply to a read that a cache fill made on the session's behalf (it may have been
    /// another session's read of the same thing), for the session's request `ticket`.
    Fetched { ticket: u64, bytes: Bytes },
}

pub type ReplySender = mpsc::UnboundedSender<Reply>;

/// Stop taking batches while this much is written but not yet accepted by the socket.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Read in steps of this size.
const READ_CHUNK: usize = 64 * 1024;

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
    pub(super) reply_to: Option<ReplySender>,
    pub(super) remaining: u32,
    /// When the batch was taken for writing, to notice a connection that stopped answering.
    pub(super) taken_at: Instant,
    pub(super) measured: bool,
    /// The lengths of the frames routed to it since its last delivery, if `measured`.
    pub(super) lengths: Vec<u32>,
    /// Released with the batch's last reply.
    pub(super) _hold: Option<Hold>,
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
            let Some(reply_to) = waiting.reply_to else {
                continue;
            };
            let _ = reply_to.send(Reply::Failed {
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
    } = state;
    // Armed at the watched request's next look (held, then asked about), or earlier when a
    // new oldest request needs an earlier one; firing early only re-arms it. No clock is read
    // per batch.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed_for: Option<Instant> = None;
    let mut watch = Watch::default();
    loop {
        let oldest = pending.front().map(|oldest| oldest.taken_at);
        if let (Some(stall), true) = (stall, oldest != watch.since) {
            if watch.since.is_some() {
                status.set_held(false);
            }
            watch = Watch {
                since: oldest,
                next: oldest.and_then(|since| since.checked_add(HELD_TOO_LONG.min(stall.timeout))),
                asked: None,
            };
        }
        if let Some(next) = watch
            .next
            .filter(|next| armed_for.is_none_or(|at| *next < at))
        {
            timer.as_mut().reset(next.into());
            armed_for = Some(next);
        }
        tokio::select! {
            biased;
            readiness = stream.readable() => {
                let read = readiness
                    .map_err(Breakage::Io)
                    .and_then(|()| read_replies(stream, input, scanner, pending, owner, fills));
                if let Err(error) = read {
                    return ServeEnd::Broken(error);
                }
            }
            batch = batches.recv(), if output.bytes < WRITE_HIGH_WATER => {
                let Some(batch) = batch else {
                    return ServeEnd::Released;
                };
                let now = Instant::now();
                output.take(batch, pending, now, fills);
                // Let every session woken in this tick queue its batch first, so that one
                // write carries them all. A connection of one session's own has nobody to wait
                // for: its command goes out now, ahead of what other sessions send later.
                if owner.is_none() {
                    tokio::task::yield_now().await;
                }
                while output.bytes < WRITE_HIGH_WATER {
                    match batches.try_recv() {
                        Ok(batch) => {
                            output.take(batch, pending, now, fills)
                        }
                        Err(_) => break,
                    }
                }
                if let Err(error) = output.flush(stream) {
                    return ServeEnd::Broken(Breakage::Io(error));
                }
            }
            readiness = stream.writable(), if !output.is_empty() => {
                if let Err(error) = readiness.and_then(|()| output.flush(stream)) {
                    return ServeEnd::Broken(Breakage::Io(error));
                }
            }
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

/// Reads what Redis sent and routes the complete replies to their sessions. `Err` when the
/// connection broke.
fn read_replies(
    stream: &Stream,
    input: &mut BytesMut,
    scanner: &mut FrameScanner,
    pending: &mut VecDeque<Pending>,
    owner: Option<&ReplySender>,
    fills: &mut Fills<'_>,
) -> Result<(), Breakage> {
    if input.capacity() - input.len() < READ_CHUNK / 4 {
        input.reserve(READ_CHUNK);
    }
    match stream.read_available(input) {
        Ok(0) => Err(Breakage::ClosedByRedis),
        Ok(_) => route(input, scanner, pending, owner, fills),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(error) => Err(Breakage::Io(error)),
    }
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

/// Hands every complete frame in `input` to whoever is owed it.
fn route(
    input: &mut BytesMut,
    scanner: &mut FrameScanner,
    pending: &mut VecDeque<Pending>,
    owner: Option<&ReplySender>,
    fills: &mut Fills<'_>,
) -> Result<(), Breakage> {
    let mut run_len = 0;
    let mut run_count = 0;
    while let Some(len) = scanner
        .scan(&input[run_len..])
        .map_err(Breakage::Malformed)?
    {
        let push = is_push(&input[run_len..]);
        if push || pending.is_empty() {
            deliver_run(input, pending, &mut run_len, &mut run_count, fills);
            let frame = input.split_to(len).freeze();
            let Some(owner) = owner else {
                if push {
                    // Out-of-band data on a shared connection (a tracking invalidation sent
                    // here by someone's REDIRECT): nobody on it asked for it.
                    tracing::debug!("dropping a push on a shared upstream connection");
                    continue;
                }
                return Err(Breakage::UnaskedReply);
            };
            let _ = owner.send(if push {
                Reply::Push(frame)
            } else {
                Reply::Frames {
                    bytes: frame,
                    count: 1,
                    lengths: Vec::new(),
                }
            });
            continue;
        }
        run_len += len;
        run_count += 1;
        if let Some(head) = pending.front_mut() {
            if head.measured {
                if head.lengths.is_empty() {
                    // Room for the batch's replies at once (growing one at a time would cost
                    // more than the lengths save).
                    head.lengths
                        .reserve((head.remaining - run_count + 1).min(1024) as usize);
                }
                head.lengths.push(len as u32);
            }
            if head.remaining == run_count {
                deliver_run(input, pending, &mut run_len, &mut run_count, fills);
            }
        }
    }
    deliver_run(input, pending, &mut run_len, &mut run_count, fills);
    Ok(())
}

fn deliver_run(
    input: &mut BytesMut,
    pending: &mut VecDeque<Pending>,
    run_len: &mut usize,
    run_count: &mut u32,
    fills: &mut Fills<'_>,
) {
    if *run_count == 0 {
        return;
    }
    let bytes = input.split_to(*run_len).freeze();
    if let Some(head) = pending.front_mut() {
        match &head.reply_to {
            Some(reply_to) => {
                let _ = reply_to.send(Reply::Frames {
                    bytes,
                    count: *run_count,
                    lengths: std::mem::take(&mut head.lengths),
                });
            }
            // Tracking could not be turned on: the fill after it is not tracked, so it must
            // not be stored, and the next fill turns tracking on again first.
            None if bytes.first() == Some(&b'-') => {
                tracing::warn!(
                    reply = %String::from_utf8_lossy(&bytes).trim_end(),
                    "Redis refused to track a cache fill"
                );
                fills.refused();
            }
            None => {}
        }
        head.remaining -= *run_count;
        if head.remaining == 0 {
            pending.pop_front();
        }
    }
    *run_len = 0;
    *run_count = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ConnHandle;

    fn pending_for(count: u32) -> (Pending, mpsc::UnboundedReceiver<Reply>) {
        let (reply_to, replies) = mpsc::unbounded_channel();
        (
            Pending {
                reply_to: Some(reply_to),
                remaining: count,
                taken_at: Instant::now(),
                measured: false,
                lengths: Vec::new(),
                _hold: None,
            },
            replies,
        )
    }

    #[test]
    fn a_hold_shows_its_connection_held_until_the_reply_comes() {
        let (handle, _batches) = ConnHandle::channel();
        let (mut script, _replies) = pending_for(1);
        script._hold = Some(handle.hold());
        assert!(handle.status.is_held());
        let mut pending = VecDeque::from([script]);
        let mut input = BytesMut::from(&b"+done\r\n"[..]);
        route_untracked(&mut input, &mut FrameScanner::default(), &mut pending, None).unwrap();
        assert!(pending.is_empty());
        assert!(!handle.status.is_held());
    }

    fn frames(reply: Reply) -> (Vec<u8>, u32) {
        match reply {
            Reply::Frames { bytes, count, .. } => (bytes.to_vec(), count),
            other => panic!("expected frames, got {other:?}"),
        }
    }

    /// Routes on a connection whose fills are not tracked.
    fn route_untracked(
        input: &mut BytesMut,
        scanner: &mut FrameScanner,
        pending: &mut VecDeque<Pending>,
        owner: Option<&ReplySender>,
    ) -> Result<(), Breakage> {
        let target = TrackingTarget::default();
        route(input, scanner, pending, owner, &mut Fills::new(&target))
    }

    #[test]
    fn routes_runs_of_frames_per_batch_across_partial_reads() {
        let (first, mut first_replies) = pending_for(2);
        let (second, mut second_replies) = pending_for(1);
        let mut pending = VecDeque::from([first, second]);
        let mut input = BytesMut::from(&b"+OK\r\n:1\r\n$3\r\nab"[..]);
        let scanner = &mut FrameScanner::default();
        route_untracked(&mut input, scanner, &mut pending, None).unwrap();
        assert_eq!(
            frames(first_replies.try_recv().unwrap()),
            (b"+OK\r\n:1\r\n".to_vec(), 2)
        );
        assert!(second_replies.try_recv().is_err());
        input.extend_from_slice(b"c\r\n");
        route_untracked(&mut input, scanner, &mut pending, None).unwrap();
        assert_eq!(
            frames(second_replies.try_recv().unwrap()),
            (b"$3\r\nabc\r\n".to_vec(), 1)
        );
        assert!(pending.is_empty() && input.is_empty());
    }

    #[test]
    fn a_measured_batch_gets_each_reply_length_with_each_run() {
        let (mut head, mut replies) = pending_for(3);
        head.measured = true;
        let mut pending = VecDeque::from([head]);
        let mut input = BytesMut::from(&b"+OK\r\n$3\r\nabc\r\n*2\r\n:1"[..]);
        let scanner = &mut FrameScanner::default();
        route_untracked(&mut input, scanner, &mut pending, None).unwrap();
        input.extend_from_slice(b"\r\n:2\r\n");
        route_untracked(&mut input, scanner, &mut pending, None).unwrap();
        let lengths = |reply| match reply {
            Reply::Frames { lengths, .. } => lengths,
            other => panic!("expected frames, got {other:?}"),
        };
        assert_eq!(lengths(replies.try_recv().unwrap()), [5, 9]);
        assert_eq!(lengths(replies.try_recv().unwrap()), [12]);
    }

    #[test]
    fn pushes_go_to_the_owner_between_replies() {
        let (head, mut replies) = pending_for(2);
        let (owner, mut owned) = mpsc::unbounded_channel();
        let mut pending = VecDeque::from([head]);
        let mut input = BytesMut::from(&b":1\r\n>2\r\n+invalidate\r\n*0\r\n:2\r\n"[..]);
        route_untracked(
            &mut input,
            &mut FrameScanner::default(),
            &mut pending,
            Some(&owner),
        )
        .unwrap();
        assert_eq!(frames(replies.try_recv().unwrap()).1, 1);
        assert!(matches!(owned.try_recv().unwrap(), Reply::Push(_)));
        assert_eq!(frames(replies.try_recv().unwrap()), (b":2\r\n".to_vec(), 1));
    }

    #[test]
    fn an_unexpected_reply_on_a_shared_connection_is_an_error() {
        let mut input = BytesMut::from(&b"+OK\r\n"[..]);
        assert!(route_untracked(
            &mut input,
            &mut FrameScanner::default(),
            &mut VecDeque::new(),
            None,
        )
        .is_err());
        let mut push = BytesMut::from(&b">2\r\n+invalidate\r\n*0\r\n"[..]);
        assert!(route_untracked(
            &mut push,
            &mut FrameScanner::default(),
            &mut VecDeque::new(),
            None,
        )
        .is_ok());
    }
}
