//! Handing requests to the session's connection: batches cut from the read buffer without a
//! copy, requests parked while the connection's queue is full (the client is read no further
//! until there is room), requests a phase took, handed to it with room kept for them, and
//! answers keyward puts in their place among the replies owed.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::link::Link;
use super::pipeline::{Flow, Input};
use super::{Closing, Session};
use crate::context::Context;
use crate::policy::hotkeys::HotKeys;
use crate::policy::phase::Handover;
use crate::policy::phases::{Held, Phases, Taken};
use crate::upstream::{Batch, ConnHandle, Hold, Reply, ReplySender, Room, SendError};

impl Session {
    /// Answers the request at the front with keyward's `reply` (a refusal, or keyward's answer
    /// for a command that names a client), in its place among the replies owed. On a
    /// streaming link replies are relayed as they come, so it is too. `Flow::Stop` when the
    /// transaction's abort marker waits for room: nothing after it may be sent before it.
    pub(super) fn answer_at_once(&mut self, reply: Bytes) -> Flow {
        if self.in_transaction && self.counts_replies() {
            self.refuse_in_transaction(reply);
        } else {
            self.client.multi_refused |= self.client.multi_deferred;
            self.replies.push_ready(reply, &mut self.output);
        }
        self.flow_after_marker()
    }

    /// A transaction whose `MULTI` keyward deferred (cluster mode) has reached its node, on
    /// the session's own connection: it is in force there from now. If a command was refused
    /// meanwhile, the abort marker follows `MULTI` there, its reply dropped (the refusal was
    /// given); waiting for room, it stops the input.
    pub(super) fn start_deferred_transaction(&mut self) {
        self.client.multi_deferred = false;
        self.in_transaction = true;
        if std::mem::take(&mut self.client.multi_refused) {
            self.refuse_in_transaction(Bytes::new());
        }
    }

    /// Nothing after an abort marker waiting for room may be sent before it: the input stops
    /// until it is sent (see [`AfterParked`]).
    pub(super) fn flow_after_marker(&self) -> Flow {
        match self.parked_after {
            Some(_) => Flow::Stop,
            None => Flow::Next,
        }
    }

    /// Inside `MULTI`, a refused command must also abort the transaction, as a command Redis
    /// refuses at queue time does: a command Redis does not know is queued in its place (so
    /// `EXEC` answers `-EXECABORT`), and its error reply is replaced by the refusal. When the
    /// connection's queue is full, or requests wait for room before it, the marker waits too,
    /// in order, and the requests after it wait until it is sent.
    fn refuse_in_transaction(&mut self, refusal: Bytes) {
        let Link::Dedicated { conn, .. } = &self.link else {
            self.replies.push_ready(refusal, &mut self.output);
            return;
        };
        let sent = if self.parked.is_some() || self.parked_after.is_some() {
            Err(SendError::Busy)
        } else {
            conn.send(abort_marker(self.reply_sender.clone()))
        };
        match sent {
            Ok(()) => self.replies.push_substitute(refusal),
            Err(SendError::Busy) => {
                self.replies.push_substitute(refusal);
                self.parked_after = Some(AfterParked::AbortMarker);
            }
            Err(SendError::Gone) => {
                // Without the marker the transaction would commit the rest: close the client,
                // so Redis discards it with the connection.
                self.replies.push_ready(refusal, &mut self.output);
                self.closing = Some(Closing::UpstreamGone);
            }
        }
    }

    /// Hands the requests gathered in `batch` (the front of the input) to the connection.
    pub(super) fn send_batch(&mut self, input: &mut Input) {
        let batch = std::mem::take(&mut input.batch);
        if batch.len == 0 {
            return;
        }
        let bytes = input.bytes.split_to(batch.len).freeze();
        self.forward(bytes, batch.count, batch.holds, input.hotkeys);
    }

    /// Hands requests to the session's connection. `holds`: Redis may hold one of them for
    /// long, so a shared connection shows as held until they are answered.
    pub(super) fn forward(
        &mut self,
        bytes: Bytes,
        count: u32,
        holds: bool,
        hotkeys: Option<&Arc<HotKeys>>,
    ) {
        self.leave_held_connection();
        let hold = match &self.link {
            Link::Pooled(conn) if holds => Some(conn.hold()),
            _ => None,
        };
        if let Some(parked) = &mut self.parked {
            let measured = self.replies.follows_commands();
            parked.join(&bytes, count, self.replies.lengths_wanted(measured), hold);
            self.handed_over(count, false);
            return;
        }
        let follows = self.replies.follows_commands();
        let (lane, handed) = self.lane_for_batch(holds, count, hotkeys);
        let in_lane = lane.is_some();
        // Whoever hears the replies of followed commands (the session, or the lane's listener)
        // has their lengths measured, unless there is only one.
        let measured = follows && (count > 1 || !handed);
        let batch = Batch {
            bytes,
            count,
            reply_to: self.reply_sender.clone().into(),
            tracked: false,
            measured: self.replies.lengths_wanted(measured),
            hold,
            lane,
        };
        let offered = self.link.conn().offer(batch);
        if offered.is_err() {
            self.take_follows_back(count, handed);
        }
        match offered {
            Ok(()) => self.handed_over(count, in_lane),
            Err((SendError::Busy, batch)) => {
                self.parked = Some(Parked::from(batch));
                self.handed_over(count, false);
            }
            Err((error, _)) => {
                let address = &self.context.upstream.address();
                let error = error.reply(address, u64::from(count));
                let written = std::mem::take(&mut self.written_keys);
                self.context
                    .phases
                    .end_writes(&mut self.phase_states, written);
                if self.counts_replies() {
                    self.replies.unsend(count as usize);
                }
                for _ in 0..count {
                    self.replies.push_ready(error.clone(), &mut self.output);
                }
            }
        }
    }

    /// A session that owes nothing moves off a shared connection that Redis holds (see
    /// [`Upstream::detour`](crate::upstream::Upstream::detour)).
    fn leave_held_connection(&mut self) {
        let Link::Pooled(conn) = &self.link else {
            return;
        };
        if !conn.status.is_held() || self.parked.is_some() || !self.is_quiet() {
            return;
        }
        let upstream = &self.context.upstream;
        if let Some(conn) = upstream.detour(self.client.protocol, self.client.db, self.client.id) {
            self.link = Link::Pooled(conn);
        }
    }

    /// Accounts for `count` requests now in the connection's hands (or parked in front of it),
    /// whose replies it writes to the client itself if `in_lane`.
    fn handed_over(&mut self, count: u32, in_lane: bool) {
        let written =
            (!self.written_keys.is_empty()).then(|| std::mem::take(&mut self.written_keys));
        if self.counts_replies() {
            self.replies.push_upstream(count, written, in_lane);
        } else if let Some(written) = written {
            self.context
                .phases
                .end_writes(&mut self.phase_states, written);
        }
    }

    /// Hands a request a phase took to that phase, with a place kept for it in the session's
    /// connection's queue when it goes out there. When the queue is full, or requests before
    /// it wait for room, it waits (parked) as they do, and the input after it waits too: the
    /// client is pushed back, not refused.
    pub(super) fn hand_over(&mut self, taken: TakenRequest) -> Flow {
        // A read joined to another session's fill, or sent to a replica, sends nothing here: it
        // needs no place in the queue, and waits for none.
        let sends = Phases::uses_session_connection(&taken.taken);
        let room = match (&self.parked, sends) {
            (None, true) => self.link.conn().reserve(),
            _ => Err(SendError::Busy),
        };
        if sends && matches!(room, Err(SendError::Busy)) {
            self.parked_after = Some(AfterParked::Taken(taken));
            return Flow::Stop;
        }
        let ticket = taken.ticket;
        let held = self.hand_over_in(taken, room);
        self.hold_taken(ticket, held)
    }

    /// The input waits while the phase that took a request holds it.
    fn hold_taken(&mut self, ticket: u64, held: Option<Held>) -> Flow {
        match held {
            Some(held) => {
                self.holds.taken = Some((ticket, held));
                self.stop_waiting_if_closed();
                Flow::Stop
            }
            None => Flow::Next,
        }
    }

    /// A client that closed (or half-closed) its side no longer waits in line, whether its
    /// request was held before the close was read or after: the phase holding it gives it up,
    /// and the client gets Redis's answer now, as it would directly.
    pub(super) fn stop_waiting_if_closed(&self) {
        if !matches!(self.closing, Some(Closing::ClientDone)) {
            return;
        }
        if let Some((ticket, held)) = &self.holds.taken {
            let phases = &self.context.phases;
            phases.give_up(held, &self.reply_sender, *ticket);
        }
    }

    /// Hands a taken request over in `room` (or with why there is none).
    fn hand_over_in(&self, taken: TakenRequest, room: Result<Room<'_>, SendError>) -> Option<Held> {
        let (conn, reply_to) = (self.link.conn(), &self.reply_sender);
        hand_over_taken(&self.context, conn, reply_to, self.client.db, taken, room)
    }

    /// The session ends with a taken request still waiting for room: it is handed over
    /// anyway, for the other clients its phase may have joined to it (readers of one cache
    /// fill), who get its answer. A task of its own waits for room in line with the others
    /// waiting, so that they are not told the queue is busy while others wait for room.
    pub(super) fn hand_over_parked_take_at_end(&mut self) {
        let Some(AfterParked::Taken(taken)) = self.parked_after.take() else {
            return;
        };
        let conn = self.link.conn().clone();
        let wait = conn.wait_for_room();
        let context = Arc::clone(&self.context);
        let (reply_to, db) = (self.reply_sender.clone(), self.client.db);
        tokio::spawn(async move {
            let ticket = taken.ticket;
            let room = wait.await;
            if let Some(held) = hand_over_taken(&context, &conn, &reply_to, db, taken, room) {
                context.phases.give_up(&held, &reply_to, ticket);
            }
        });
    }

    /// Sends the parked requests in the place `room` kept for them or, when none are left,
    /// what waits after them: a taken request, handed over in it, or a transaction's abort
    /// marker. Their replies are already expected: if the connection is gone, they are
    /// answered as a broken connection's are.
    pub(super) fn unpark(&mut self, room: Result<Room<'_>, SendError>) {
        let (batch, count) = match (self.parked.take(), self.parked_after.take()) {
            (Some(parked), after) => {
                self.parked_after = after;
                let count = parked.count;
                (parked.into_batch(self.reply_sender.clone()), count)
            }
            (None, Some(AfterParked::Taken(taken))) => {
                let ticket = taken.ticket;
                let held = self.hand_over_in(taken, room);
                self.hold_taken(ticket, held);
                return;
            }
            (None, Some(AfterParked::AbortMarker)) => (abort_marker(self.reply_sender.clone()), 1),
            (None, None) => return,
        };
        match room {
            Ok(room) => room.send(batch),
            Err(error) => {
                let address = &self.context.upstream.address();
                let error = error.reply(address, u64::from(count));
                let _ = self.reply_sender.send(Reply::Failed { count, error });
            }
        }
    }
}

/// Hands a request a phase took to that phase, with `room` on `conn`, the connection of the
/// session whose replies go to `reply_to`.
fn hand_over_taken(
    context: &Context,
    conn: &ConnHandle,
    reply_to: &ReplySender,
    db: u32,
    taken: TakenRequest,
    room: Result<Room<'_>, SendError>,
) -> Option<Held> {
    let address = context.upstream.address();
    let handover = Handover {
        request: taken.request,
        conn,
        room,
        reply_to,
        ticket: taken.ticket,
        db,
        address: &address,
    };
    context.phases.hand_over(taken.taken, handover)
}

/// What waits for room after the parked requests, if any are parked; nothing after it is read
/// until it is sent.
pub(super) enum AfterParked {
    /// A request a phase took, to be handed over with the room.
    Taken(TakenRequest),
    /// The marker that aborts the transaction a refused command was in.
    AbortMarker,
}

/// A command Redis does not know, queued in place of a refused one so that the transaction
/// it was in aborts; its reply is replaced by the refusal.
fn abort_marker(reply_to: ReplySender) -> Batch {
    const ABORTS_TRANSACTION: &[u8] = b"*1\r\n$24\r\nKEYWARD.REFUSED.IN.MULTI\r\n";
    Batch {
        bytes: Bytes::from_static(ABORTS_TRANSACTION),
        count: 1,
        reply_to: reply_to.into(),
        tracked: false,
        measured: None,
        hold: None,
        lane: None,
    }
}

/// A request a phase took, waiting to be handed over (see [`Session::hand_over`]).
pub(super) struct TakenRequest {
    pub(super) taken: Taken,
    /// The request as it goes to Redis.
    pub(super) request: Bytes,
    /// Where its reply goes among those the session owes.
    pub(super) ticket: u64,
}

/// Requests waiting for room in their connection's queue, in order.
pub(super) struct Parked {
    bytes: BytesMut,
    count: u32,
    measured: Option<Vec<u32>>,
    hold: Option<Hold>,
}

impl Parked {
    pub(super) fn join(
        &mut self,
        bytes: &[u8],
        count: u32,
        measured: Option<Vec<u32>>,
        hold: Option<Hold>,
    ) {
        self.bytes.extend_from_slice(bytes);
        self.count += count;
        if self.measured.is_none() {
            self.measured = measured;
        }
        if self.hold.is_none() {
            self.hold = hold;
        }
    }

    fn into_batch(self, reply_to: ReplySender) -> Batch {
        Batch {
            bytes: self.bytes.freeze(),
            count: self.count,
            reply_to: reply_to.into(),
            tracked: false,
            measured: self.measured,
            hold: self.hold,
            lane: None,
        }
    }
}

impl From<Batch> for Parked {
    fn from(batch: Batch) -> Parked {
        Parked {
            bytes: BytesMut::from(&batch.bytes[..]),
            count: batch.count,
            measured: batch.measured,
            hold: batch.hold,
        }
    }
}
