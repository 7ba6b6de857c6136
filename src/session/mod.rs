//! One client connection: decode requests, answer or forward each, and write replies back in
//! request order.
//!
//! A session forwards over a pooled upstream connection shared with other sessions, and moves
//! to a connection of its own when it needs connection state (`MULTI`, `WATCH`, blocking
//! commands, pub/sub, `MONITOR`, another user…). It stays there for the rest of its life, as
//! it would be on Redis directly. Whenever the session changes connection (a new database, a
//! new protocol, a dedicated connection), it first waits for every reply owed on the old one,
//! so that Redis runs its commands in the client's order.
//!
//! Forwarding copies nothing: consecutive forwarded requests are cut from the read buffer as
//! one slice and handed to the upstream connection as one batch.

mod client_ids;
use pinning::Pin;
mod cluster_view;
mod dispatch;
mod forward;
mod holds;
mod keyward;
mod lane;
mod link;
mod local;
mod phase_run;
mod pinning;
mod pipeline;
mod replies;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio_util::sync::CancellationToken;

use crate::command::CommandInfo;
use crate::context::Context;
use crate::directory::Listing;
use crate::inbox;
use crate::metrics::{self, ReceivedTally};
use crate::net::Stream;
use crate::policy::hotkeys::lane::LaneCount;
use crate::policy::phases::{PhaseStates, WrittenKeys};
use crate::resp::request::RequestDecoder;
use crate::upstream::{ClientLane, Monitoring, Opening, Reply, Room, RoomWait, SendError};
use client_ids::Redirect;
use forward::{AfterParked, Parked};
use holds::Holds;
use link::{DedicatedError, Link};
use local::ClientState;
use replies::{AfterReply, ReplyQueue};

/// Read in steps of this size.
const READ_CHUNK: usize = 16 * 1024;
/// Stop reading requests while this much output waits for a slow client.
const OUTPUT_HIGH_WATER: usize = 1024 * 1024;
/// Redis's default `client-output-buffer-limit pubsub` hard limit.
const STREAMING_OUTPUT_LIMIT: usize = 32 * 1024 * 1024;
/// Stop reading while this much unprocessed input is buffered (a request that needs more,
/// such as one large value, raises it to its own size).
const INPUT_HIGH_WATER: usize = 1024 * 1024;

/// Why the session stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// The client closed its side; owed replies are still written.
    ClientDone,
    Quit,
    ProtocolError,
    /// The session's dedicated upstream connection is gone.
    UpstreamGone,
    /// The client was idle for longer than `idle_timeout`.
    IdleTimeout,
    /// The client let its output grow past the limit; it is closed without its output.
    OutputLimit,
    /// Another client's `CLIENT KILL` named it: closed at once, as Redis closes it.
    Killed,
    Shutdown,
}

pub struct Session {
    context: Arc<Context>,
    /// The session's entry in the directory of sessions, where other clients find it.
    listing: Arc<Listing>,
    peer: SocketAddr,
    client: ClientState,
    link: Link,
    replies: ReplyQueue,
    reply_sender: inbox::Sender<Reply>,
    reply_receiver: inbox::Receiver<Reply>,
    decoder: RequestDecoder,
    input: BytesMut,
    /// Bytes the request at the front of `input` needs before it can be decoded.
    input_needed: usize,
    output: BytesMut,
    closing: Option<Closing>,
    /// A request waits for the current connection to owe nothing before it may run.
    waiting_for_quiet: bool,
    /// Set when opening a dedicated connection failed: the request that asked for it is
    /// answered with this error instead.
    dedicated_error: Option<DedicatedError>,
    /// Reused for copying a local command's arguments out of the read buffer.
    local_args: Vec<Vec<u8>>,
    received: ReceivedTally,
    /// The command of the previous request: pipelines usually repeat one command.
    last_command: Option<&'static CommandInfo>,
    /// A blocking command may be waiting in Redis; cleared once nothing is owed.
    blocked: bool,
    /// Reused for the key positions of commands that policies look at.
    key_positions: Vec<usize>,
    /// The client's IP address, as policies see it (one client, many connections).
    peer_ip: Vec<u8>,
    /// Where the policy phases stand on the request at the front of the input.
    phase_states: PhaseStates,
    /// The request at the front is held by a phase.
    holds: Holds,
    /// The session's dedicated connection is inside `MULTI`: a command refused there must
    /// also make Redis abort the transaction.
    in_transaction: bool,
    /// When the client last sent something or was last sent something, for `idle_timeout`.
    last_active: quanta::Instant,
    /// The time of this turn of the session's loop, read once when first needed: a turn is
    /// microseconds long, and every clock read costs each request. The requests' times come
    /// from `quanta`'s clock (the CPU's time-stamp counter, scaled to nanoseconds): a reading
    /// is a plain count, so a latency is one subtraction, where two of std's `Instant`s cost
    /// about 40 instructions to subtract, and each reading about 40 more.
    clock: Option<quanta::Instant>,
    /// Keys written by requests in the batch being gathered, that phases watch.
    written_keys: WrittenKeys,
    /// Forwarded requests the connection had no room for yet: the session stops reading and
    /// sends them once there is room, so a full queue slows the client down instead of
    /// refusing its commands. Later requests join them, so nothing overtakes them.
    parked: Option<Parked>,
    /// What waits for room likewise after the parked requests, if there are any: a request a
    /// phase took, or a transaction's abort marker. Nothing after it is read until it is sent.
    parked_after: Option<AfterParked>,
    /// A connection of the session's own, just opened: started once the requests that asked
    /// for it are handed over, so that they are written at once.
    opening: Option<Opening>,
    /// Where `CLIENT TRACKING … REDIRECT` last sent the session's invalidations.
    redirect: Option<Redirect>,
    /// Held while the session runs `MONITOR`.
    monitoring: Option<Monitoring>,
    /// The session's connection was opened for an `AUTH` as a user keyward does not know:
    /// Redis applies that user's ACL, so keyward acts on nothing for it (see `client_ids`).
    as_own_user: bool,
    /// The local end of the client's TCP connection (`None` over TLS), which the cluster view
    /// announces as keyward's address.
    arrived_at: Option<SocketAddr>,
    /// Cluster mode: the node the session's own connection reaches.
    pin: Option<Pin>,
    /// The client's socket, for a connection to write replies to (see [`ClientLane`]).
    lane: Option<Arc<ClientLane>>,
    /// Replies written through the lane that the session has settled.
    lane_settled: u64,
    /// Where hot keys count a batch whose replies go through the lane (see [`LaneCount`]).
    lane_count: Arc<LaneCount>,
}

impl Session {
    pub fn new(context: Arc<Context>, peer: SocketAddr) -> Session {
        let (id, listing) = context.sessions.enter(&context.shutdown);
        let client = ClientState::new(id, context.listen_password.is_none());
        let link = Link::Pooled(context.upstream.pooled(client.protocol, client.db, id));
        let (reply_sender, reply_receiver) = inbox::channel();
        Session {
            context,
            listing,
            peer,
            client,
            link,
            replies: ReplyQueue::default(),
            reply_sender,
            reply_receiver,
            decoder: RequestDecoder::default(),
            // Buffers grow on first use, so an idle connection costs little memory.
            input: BytesMut::new(),
            input_needed: 0,
            output: BytesMut::new(),
            closing: None,
            waiting_for_quiet: false,
            dedicated_error: None,
            local_args: Vec::new(),
            received: ReceivedTally::default(),
            last_command: None,
            blocked: false,
            key_positions: Vec::new(),
            peer_ip: peer.ip().to_canonical().to_string().into_bytes(),
            phase_states: PhaseStates::default(),
            holds: Holds::default(),
            in_transaction: false,
            last_active: quanta::Instant::now(),
            clock: None,
            written_keys: WrittenKeys::new(),
            parked: None,
            parked_after: None,
            opening: None,
            redirect: None,
            monitoring: None,
            as_own_user: false,
            arrived_at: None,
            pin: None,
            lane: None,
            lane_settled: 0,
            lane_count: Arc::default(),
        }
    }

    /// Serves the client until it leaves, breaks the protocol, or keyward shuts down.
    pub async fn run(mut self, stream: Stream) {
        if let Stream::Tcp(tcp) = &stream {
            self.arrived_at = tcp.local_addr().ok();
        }
        let peer = self.peer;
        let stream = Arc::new(stream);
        let listener = Arc::clone(&self.lane_count);
        self.lane = Some(ClientLane::new(Arc::clone(&stream), listener));
        match self.drive(&stream).await {
            Ok(()) => tracing::debug!(%peer, "client session ended"),
            Err(error) => tracing::debug!(%peer, %error, "client connection failed"),
        }
    }

    async fn drive(&mut self, stream: &Stream) -> io::Result<()> {
        let hold = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(hold);
        let mut hold_armed = None;
        let idle = tokio::time::sleep(self.context.idle_timeout.unwrap_or_default());
        tokio::pin!(idle);
        let _stop_watch = watch_stop(self.listing.stop().clone(), self.reply_sender.clone());
        // Parked requests' wait for room, kept from turn to turn so that it keeps its place.
        let mut room_wait: Option<RoomWait> = None;
        loop {
            self.settle_lane();
            while let Some(switch) = self.process_input() {
                self.open_dedicated(switch).await;
                self.clock = None;
            }
            if let Some(opening) = self.opening.take() {
                opening.start();
            }
            self.hand_gathered_to_phases();
            self.write_output(stream)?;
            if self.finished() {
                return Ok(());
            }
            if self.holds.until != hold_armed {
                if let Some(until) = self.holds.until {
                    hold.as_mut().reset(until.into());
                }
                hold_armed = self.holds.until;
            }
            let wants_input = self.wants_input();
            if self.lane_written_meanwhile(wants_input) {
                continue;
            }
            self.clock = None;
            let parked = self.parked.is_some() || self.parked_after.is_some();
            if !parked {
                room_wait = None;
            } else if room_wait.is_none() {
                room_wait = Some(self.link.conn().wait_for_room());
            }
            tokio::select! {
                biased;
                reply = self.reply_receiver.recv() => {
                    // The session holds a sender itself, so the channel never closes.
                    if let Some(reply) = reply {
                        self.on_reply(reply);
                        while let Ok(reply) = self.reply_receiver.try_recv() {
                            self.on_reply(reply);
                        }
                    }
                }
                readiness = stream.readable(), if wants_input => {
                    readiness?;
                    self.read(stream)?;
                }
                readiness = stream.writable(), if !self.output.is_empty() && !self.replies.lane_in_use() => readiness?,
                () = &mut hold, if hold_armed.is_some() => {
                    self.holds.until = None;
                    hold_armed = None;
                }
                () = &mut idle, if self.context.idle_timeout.is_some() && self.closing.is_none() => {
                    // A reply the lane wrote is activity, and leaves nothing owed.
                    self.settle_lane();
                    match self.idle_left() {
                        Some(left) if !left.is_zero() => {
                            idle.as_mut().reset((Instant::now() + left).into());
                        }
                        Some(_) => self.closing = Some(Closing::IdleTimeout),
                        // Not idle in Redis's sense: look again after a full timeout.
                        None => idle
                            .as_mut()
                            .reset((Instant::now() + self.context.idle_timeout.unwrap_or_default()).into()),
                    }
                }
                // One branch for what held requests wait for (few sessions ever do): each
                // branch of this loop costs every wake-up of every session.
                awaited = async {
                    if let Some(wait) = &mut room_wait {
                        return Awaited::Room(wait.await);
                    }
                    Awaited::Answer(self.holds.next_answer().await)
                }, if parked || self.holds.asking => match awaited {
                    Awaited::Room(room) => {
                        room_wait = None;
                        self.unpark(room);
                    }
                    Awaited::Answer(answer) => {
                        self.holds.asking = false;
                        self.context.phases.answered(&mut self.phase_states, answer);
                    }
                },
            }
        }
    }

    /// Whether the session is done: it stopped reading and owes nothing more. A client that
    /// closed its side while blocked or subscribed is let go at once, as Redis frees a client
    /// at end of stream: the blocked command or subscriptions would otherwise hold the session
    /// (and the client waiting for the close) until they time out. Otherwise the owed replies
    /// are still written, as Redis writes the replies to what it already ran:
    /// `printf 'PING\r\n' | nc` gets its `PONG`.
    fn finished(&self) -> bool {
        match self.closing {
            None => false,
            // A held request is still owed its reply.
            Some(Closing::ClientDone | Closing::Shutdown) if self.is_holding() => false,
            Some(Closing::ClientDone) if !self.counts_replies() || self.blocked => true,
            Some(Closing::OutputLimit | Closing::IdleTimeout | Closing::Killed) => true,
            Some(_) => self.replies.is_empty() && self.output.is_empty(),
        }
    }

    /// How long until an idle client is to be closed: `None` while it may not be (it owes or
    /// is owed something, is subscribed or blocked, as Redis exempts those).
    fn idle_left(&self) -> Option<std::time::Duration> {
        let exempt = !self.counts_replies()
            || self.blocked
            || !self.replies.is_empty()
            || self.is_holding()
            || self.waiting_for_quiet
            || !self.input.is_empty()
            || !self.output.is_empty();
        if exempt {
            return None;
        }
        let deadline = self.last_active + self.context.idle_timeout?;
        Some(deadline.saturating_duration_since(quanta::Instant::now()))
    }

    /// A request is held by a policy phase: delayed, waiting for Redis's answer, or taken.
    fn is_holding(&self) -> bool {
        self.holds.any()
    }

    fn wants_input(&self) -> bool {
        // A client waiting for a lock is still read (what it sends waits in the input), so
        // that its leaving is noticed and it leaves the lock's queue at once.
        self.closing.is_none()
            && !self.waiting_for_quiet
            && self.parked.is_none()
            && self.parked_after.is_none()
            && (!self.is_holding() || self.holds.taken.is_some())
            && self.output.len() < OUTPUT_HIGH_WATER
            && self.input.len() < INPUT_HIGH_WATER.max(self.input_needed)
    }

    /// The time of this turn of the loop (see `clock`).
    #[inline(always)]
    fn now(&mut self) -> quanta::Instant {
        *self.clock.get_or_insert_with(quanta::Instant::now)
    }

    fn read(&mut self, stream: &Stream) -> io::Result<()> {
        let wanted = READ_CHUNK.max(self.input_needed.saturating_sub(self.input.len()));
        if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
            self.input.reserve(wanted);
        }
        match stream.read_available(&mut self.input) {
            Ok(0) => {
                self.closing = Some(Closing::ClientDone);
                self.stop_waiting_if_closed();
            }
            Ok(_) => self.last_active = self.now(),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
        Ok(())
    }

    fn write_output(&mut self, stream: &Stream) -> io::Result<()> {
        if self.replies.lane_in_use() {
            // The connection may be writing to the socket (see `lane`).
            return Ok(());
        }
        while !self.output.is_empty() {
            match stream.try_write(&self.output) {
                Ok(written) => {
                    self.output.advance(written);
                    self.last_active = self.now();
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
        }
        if self.output.is_empty() && self.output.capacity() > 4 * OUTPUT_HIGH_WATER {
            self.output = BytesMut::new();
        }
        Ok(())
    }

    fn on_reply(&mut self, reply: Reply) {
        self.settle_lane();
        if !self.counts_replies() {
            match reply {
                Reply::LaneWritten => {}
                Reply::Frames { bytes, .. } | Reply::Push(bytes) | Reply::Fetched { bytes, .. } => {
                    self.output.extend_from_slice(&bytes);
                    self.enforce_streaming_output_limit();
                }
                Reply::Failed { .. } | Reply::Closed { .. } => {
                    self.closing = Some(Closing::UpstreamGone)
                }
                Reply::Stop => self.stop(),
            }
            return;
        }
        let reply = match &self.pin {
            Some(pin) => self.without_redirections(reply, pin),
            None => reply,
        };
        if let Reply::Failed { .. } = &reply {
            // What the lane's listener awaited of a batch, if anything, will not come.
            self.lane_count.give_up();
        }
        if let Reply::Fetched { ticket, .. } = &reply {
            self.holds
                .taken
                .take_if(|(taken_ticket, _)| taken_ticket == ticket);
        }
        let now = self.now();
        let metrics = &self.context.command_metrics;
        let after = self.replies.on_reply(reply, &mut self.output, metrics, now);
        let finished = self.replies.take_finished_writes();
        self.context
            .phases
            .end_writes(&mut self.phase_states, finished);
        match after {
            AfterReply::Continue => {}
            AfterReply::CloseClient => self.closing = Some(Closing::UpstreamGone),
            AfterReply::Stop => self.stop(),
        }
        if self.replies.is_empty() {
            self.blocked = false;
        }
    }

    /// keyward stops the session: it shuts down, or `CLIENT KILL` named the session.
    fn stop(&mut self) {
        if self.closing.is_none() {
            self.closing = Some(if self.listing.is_killed() {
                Closing::Killed
            } else {
                Closing::Shutdown
            });
        }
    }

    /// A subscriber that does not read its messages would make keyward buffer them without
    /// end (keyward reads Redis as fast as it can, so Redis's own limit never applies). Past
    /// Redis's pub/sub hard limit the client is disconnected, as Redis would.
    fn enforce_streaming_output_limit(&mut self) {
        if self.output.len() > STREAMING_OUTPUT_LIMIT && self.closing != Some(Closing::OutputLimit)
        {
            tracing::warn!(
                peer = %self.peer,
                bytes = self.output.len(),
                "client does not read its messages; closing it (output limit)"
            );
            metrics::output_limit_disconnect();
            self.output = BytesMut::new();
            self.closing = Some(Closing::OutputLimit);
        }
    }

    /// Hands what the phases following requests gathered this turn (hot keys: the keys of
    /// the answered commands) to their shared parts, all at once.
    fn hand_gathered_to_phases(&mut self) {
        if !self.replies.followers.has_gathered() {
            return;
        }
        let live = self.context.live.load();
        let followers = &mut self.replies.followers;
        self.context.phases.gathered(&live.policies, followers);
    }
}

impl Drop for Session {
    /// Writes still unanswered when the client goes end here: their keys must not stay
    /// uncacheable, nor their locks' waiters unwoken.
    fn drop(&mut self) {
        if let Some(lane) = &self.lane {
            lane.close();
        }
        self.hand_over_parked_take_at_end();
        let mut written = self.replies.take_all_writes();
        written.extend(self.written_keys.drain(..));
        self.context
            .phases
            .end_writes(&mut self.phase_states, written);
        self.context.sessions.leave(self.client.id);
    }
}

/// What a held request's wait ended with.
enum Awaited {
    /// A place in the connection's queue for the parked requests (or why there is none).
    Room(Result<Room<'static>, SendError>),
    /// Redis's answer to a policy's question (a global rate limit).
    Answer(Option<Reply>),
}

/// Counts a client connection for as long as it lives.
pub struct ClientGuard(Arc<Context>);

impl ClientGuard {
    /// Counts a new client if there is room for it under `max_clients` (else counts it as
    /// rejected). Checking and counting are one step, so clients arriving at once through
    /// both front doors (RESP and REST) cannot both take the last place.
    pub fn admit(context: &Arc<Context>, max_clients: usize) -> Option<ClientGuard> {
        let counted =
            context
                .clients
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |clients| {
                    (clients < max_clients).then_some(clients + 1)
                });
        if counted.is_err() {
            metrics::client_rejected();
            return None;
        }
        context.connections_received.fetch_add(1, Ordering::Relaxed);
        metrics::client_connected();
        Some(ClientGuard(Arc::clone(context)))
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
        metrics::client_disconnected();
    }
}

/// Ends the task that tells the session to stop, when the session ends first.
struct StopWatch(tokio::task::AbortHandle);

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends [`Reply::Stop`] to the session once `stop` is cancelled, from a task of its own: a
/// cancellation future among the session's own branches cost about 300 instructions per
/// unpipelined request (polled each time the session waits), a message costs nothing until
/// it comes.
fn watch_stop(stop: CancellationToken, inbox: inbox::Sender<Reply>) -> StopWatch {
    let watch = tokio::spawn(async move {
        stop.cancelled().await;
        let _ = inbox.send(Reply::Stop);
    });
    StopWatch(watch.abort_handle())
}
