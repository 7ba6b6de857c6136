//! Handing what Redis sent on a connection to whoever is owed it: runs of complete reply
//! frames to the session at the head of the queue, pushes to the connection's owner.

use std::collections::VecDeque;
use std::io;

use bytes::{Bytes, BytesMut};

use super::connection::{Pending, Reply, ReplySender, READ_CHUNK};
use super::errors::Breakage;
use super::lane::{InLane, Written};
use super::reply_to::ReplyTo;
use super::tracking::Fills;
use crate::net::Stream;
use crate::resp::frame::{is_push, FrameScanner};

/// Reads what Redis sent and routes the complete replies to their sessions. `Err` when the
/// connection broke.
pub(super) fn read_replies(
    stream: &Stream,
    input: &mut BytesMut,
    scanner: &mut FrameScanner,
    pending: &mut VecDeque<Pending>,
    owner: Option<&ReplySender>,
    fills: &mut Fills<'_>,
    demoted: Option<&mut bool>,
) -> Result<(), Breakage> {
    if input.capacity() - input.len() < READ_CHUNK / 4 {
        input.reserve(READ_CHUNK);
    }
    match stream.read_available(input) {
        Ok(0) => Err(Breakage::ClosedByRedis),
        Ok(_) => route(input, scanner, pending, owner, fills, demoted),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(error) => Err(Breakage::Io(error)),
    }
}

/// Hands every complete frame in `input` to whoever is owed it. `demoted`, when given, is set
/// by a `-READONLY` reply.
fn route(
    input: &mut BytesMut,
    scanner: &mut FrameScanner,
    pending: &mut VecDeque<Pending>,
    owner: Option<&ReplySender>,
    fills: &mut Fills<'_>,
    mut demoted: Option<&mut bool>,
) -> Result<(), Breakage> {
    let mut run_len = 0;
    let mut run_count = 0;
    while let Some(len) = scanner
        .scan(&input[run_len..])
        .map_err(Breakage::Malformed)?
    {
        let push = is_push(&input[run_len..]);
        if let Some(demoted) = demoted.as_deref_mut() {
            *demoted |= input[run_len..].starts_with(b"-READONLY");
        }
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
                Reply::frames(frame, 1)
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
        match &mut head.reply_to {
            Some(reply_to) => {
                let lengths = &head.lengths;
                match through_lane(&mut head.lane, bytes, *run_count, lengths, reply_to) {
                    Some(bytes) => reply_to.send(Reply::Frames {
                        bytes,
                        count: *run_count,
                        lengths: std::mem::take(&mut head.lengths),
                    }),
                    // The lane's listener had the lengths; the list serves the batch's next run.
                    None => head.lengths.clear(),
                }
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
            let spent = pending.pop_front().map(|done| done.lengths);
            pass_on_lengths(spent, pending.front_mut());
        }
    }
    *run_len = 0;
    *run_count = 0;
}

/// A list of lengths that a finished batch still holds (its replies were heard through the
/// lane, so none went to its session) serves the batch next in line, if that one measures and
/// has none: the sessions of such batches get no list back to send with their next one, and
/// each would allocate one. Under pipelined load the next batch is nearly always such a one
/// (another session's), and when it is not the list is dropped, as before.
fn pass_on_lengths(spent: Option<Vec<u32>>, next: Option<&mut Pending>) {
    if let (Some(mut list), Some(next)) = (spent, next) {
        if next.measured && next.lengths.capacity() == 0 && list.capacity() > 0 {
            list.clear();
            next.lengths = list;
        }
    }
}

/// Writes a run to its client through the lane its batch came with, if it came with one, and
/// tells the session if it asked. Returns what is left for the session to write: the whole
/// run without a lane, what the socket did not take (after which the batch's replies all go
/// the usual way, still heard by the lane's listener), or nothing.
fn through_lane(
    lane: &mut Option<InLane>,
    bytes: Bytes,
    count: u32,
    lengths: &[u32],
    session: &mut ReplyTo,
) -> Option<Bytes> {
    let Some(way) = lane else {
        return Some(bytes);
    };
    match way.write(&bytes, lengths, count) {
        Written::All { tell } => {
            if tell {
                session.send(Reply::LaneWritten);
            }
            None
        }
        Written::Part(sent) => Some(bytes.slice(sent..)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::inbox;

    use super::*;
    use crate::upstream::tracking::TrackingTarget;
    use crate::upstream::ConnHandle;

    fn pending_for(count: u32) -> (Pending, inbox::Receiver<Reply>) {
        let (reply_to, replies) = inbox::channel();
        (
            Pending {
                reply_to: Some(reply_to.into()),
                remaining: count,
                taken_at: Instant::now(),
                measured: false,
                lengths: Vec::new(),
                _hold: None,
                lane: None,
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
        route(
            input,
            scanner,
            pending,
            owner,
            &mut Fills::new(&target),
            None,
        )
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

    /// A batch whose list of lengths stayed with it (its replies went through the lane) leaves
    /// the list to the next batch that measures, emptied, instead of each allocating one.
    #[test]
    fn a_spent_list_of_lengths_serves_the_next_measured_batch() {
        let spent = || {
            let mut list = Vec::with_capacity(16);
            list.extend([5, 9]);
            Some(list)
        };
        let (mut next, _replies) = pending_for(2);
        pass_on_lengths(spent(), Some(&mut next));
        assert_eq!(
            next.lengths.capacity(),
            0,
            "the next batch does not measure"
        );
        next.measured = true;
        pass_on_lengths(spent(), Some(&mut next));
        assert!(next.lengths.is_empty() && next.lengths.capacity() >= 16);
        next.lengths.push(7);
        pass_on_lengths(spent(), Some(&mut next));
        assert_eq!(next.lengths, [7], "a batch's own list is kept");
    }

    #[test]
    fn pushes_go_to_the_owner_between_replies() {
        let (head, mut replies) = pending_for(2);
        let (owner, mut owned) = inbox::channel();
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

    #[test]
    fn a_readonly_reply_marks_a_demoted_primary_and_still_reaches_its_session() {
        let (waiting, mut replies) = pending_for(2);
        let mut pending = VecDeque::from([waiting]);
        let mut input = BytesMut::from(
            &b"+OK\r\n-READONLY You can't write against a read only replica.\r\n"[..],
        );
        let target = TrackingTarget::default();
        let mut demoted = false;
        let scanner = &mut FrameScanner::default();
        let fills = &mut Fills::new(&target);
        route(
            &mut input,
            scanner,
            &mut pending,
            None,
            fills,
            Some(&mut demoted),
        )
        .unwrap();
        assert!(demoted);
        let Ok(Reply::Frames { bytes, count, .. }) = replies.try_recv() else {
            panic!("the replies reach the session");
        };
        assert_eq!(count, 2);
        assert!(bytes.ends_with(b"read only replica.\r\n"));
    }
}
