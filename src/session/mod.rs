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
mod keyward;
mod local;
mod replies;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use tokio::sync::mpsc;

use crate::command::cacheable;
use crate::command::{flags, CommandInfo, CommandTable, Effect, Holding, LocalCommand, Notice};
use crate::context::Context;
use crate::directory::Listing;
use crate::metrics::{self, ReceivedTally};
use crate::net::Stream;
use crate::policy::cache::coherence::Read;
use crate::policy::cache::{Coherence, Lookup, Written};
use crate::policy::deny::Client;
use crate::policy::hotkeys::record::Pending;
use crate::policy::lock::attempt::{self, LockAttempt};
use crate::policy::rate_limit::global;
use crate::policy::rate_limit::Verdict;
use crate::policy::{Policies, Progress};
use crate::resp::request::{Args, Decoded, RequestDecoder};
use crate::resp::{reply, Protocol};
use crate::upstream::{
    parse_pause, Batch, ConnHandle, Hold, Login, Monitoring, Opening, Paused, Reply, ReplySender,
    SendError, UpstreamError,
};
use client_ids::{Asker, Redirect, Translation};
use local::{ClientState, LocalContext, Outcome};
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

/// The upstream connection a session currently uses.
enum Link {
    Pooled(ConnHandle),
    Dedicated {
        conn: ConnHandle,
        /// Frames no longer match commands one to one (pub/sub, `MONITOR`): everything is
        /// relayed as it comes and nothing is answered locally.
        streaming: bool,
    },
}

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

/// What a request turns into.
enum Step {
    /// Answered with this error at once (the client has not authenticated).
    Refuse(Bytes),
    /// Answered by keyward, once the policies let it through: a command that names a client
    /// Redis does not know (see [`client_ids`]), which may close that client.
    Answer {
        reply: Bytes,
        kill: Option<Arc<Listing>>,
    },
    Forward,
    Local(LocalCommand),
    /// The session needs its own upstream connection before this request can run.
    Dedicate {
        streaming: bool,
    },
    /// Sent at once on a connection of its own, whatever the session's connection waits for.
    Aside,
    /// Sent on the session's connection; the reply names the redirect by keyward's id.
    Relabel(Redirect),
}

pub struct Session {
    context: Arc<Context>,
    /// The session's entry in the directory of sessions, where other clients find it.
    listing: Arc<Listing>,
    peer: SocketAddr,
    client: ClientState,
    link: Link,
    replies: ReplyQueue,
    reply_sender: mpsc::UnboundedSender<Reply>,
    reply_receiver: mpsc::UnboundedReceiver<Reply>,
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
    /// Reused for `bucket = "client"`: `name:<name>`, else `addr:<ip>`.
    client_bucket: Vec<u8>,
    /// A rate limit holds the request at the front of the input until then.
    hold_until: Option<Instant>,
    /// When the held request was first delayed, to enforce `max_delay`.
    delayed_since: Option<Instant>,
    /// Answers to the questions keyward asks Redis for its own policies (global rate limits),
    /// apart from the client's replies. Opened on first use: most sessions never ask.
    policy_channel: Option<(mpsc::UnboundedSender<Reply>, mpsc::UnboundedReceiver<Reply>)>,
    /// A question is out (for the rate limit with this index); the request at the front of
    /// the input waits for its answer.
    awaiting_redis: Option<usize>,
    /// Where the policies stand on the request at the front of the input while it is held.
    progress: Progress,
    /// The session's dedicated connection is inside `MULTI`: a command refused there must
    /// also make Redis abort the transaction.
    in_transaction: bool,
    /// When the client last sent something or was last sent something, for `idle_timeout`.
    last_active: Instant,
    /// Reused for the shape of cacheable reads.
    cache_shape: Vec<u8>,
    /// A lock attempt waits in a lock queue; the requests after it wait with it.
    awaiting_lock: Option<AwaitedLock>,
    /// Keys written by requests in the batch being gathered (see `note_writes`).
    written_keys: Vec<Written>,
    /// Hot keys follow the request being judged: its keys, until its answer is known.
    observation: Option<Pending>,
    /// Forwarded requests the connection had no room for yet: the session stops reading and
    /// sends them once there is room, so a full queue slows the client down instead of
    /// refusing its commands. Later requests join them, so nothing overtakes them.
    parked: Option<Parked>,
    /// Whether hot keys have decided on sampling the request at the front of the input.
    hot_keys_looked: bool,
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
}

impl Session {
    pub fn new(context: Arc<Context>, peer: SocketAddr) -> Session {
        let (id, listing) = context.sessions.enter(&context.shutdown);
        let client = ClientState::new(id, context.listen_password.is_none());
        let link = Link::Pooled(context.upstream.pooled(client.protocol, client.db, id));
        let (reply_sender, reply_receiver) = mpsc::unbounded_channel();
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
            client_bucket: Vec::new(),
            hold_until: None,
            delayed_since: None,
            policy_channel: None,
            awaiting_redis: None,
            progress: Progress::default(),
            in_transaction: false,
            last_active: Instant::now(),
            cache_shape: Vec::new(),
            awaiting_lock: None,
            written_keys: Vec::new(),
            observation: None,
            hot_keys_looked: false,
            parked: None,
            opening: None,
            redirect: None,
            monitoring: None,
            as_own_user: false,
        }
    }

    /// Serves the client until it leaves, breaks the protocol, or keyward shuts down.
    pub async fn run(mut self, stream: Stream) {
        let peer = self.peer;
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
        // Made once and kept: a cancellation future made anew on every turn of the loop joins
        // and leaves the token's waiter list each time, hundreds of instructions per wake-up.
        let stop = self.listing.stop().clone();
        let stopping = stop.cancelled();
        tokio::pin!(stopping);
        loop {
            while let Some(switch) = self.process_input() {
                self.open_dedicated(switch).await;
            }
            if let Some(opening) = self.opening.take() {
                opening.start();
            }
            self.count_hot_keys();
            self.write_output(stream)?;
            if self.finished() {
                return Ok(());
            }
            if self.hold_until != hold_armed {
                if let Some(until) = self.hold_until {
                    hold.as_mut().reset(until.into());
                }
                hold_armed = self.hold_until;
            }
            let wants_input = self.wants_input();
            let parked_on = self.parked.is_some().then(|| self.link.conn().clone());
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
                readiness = stream.writable(), if !self.output.is_empty() => readiness?,
                () = &mut hold, if hold_armed.is_some() => {
                    self.hold_until = None;
                    hold_armed = None;
                }
                () = &mut idle, if self.context.idle_timeout.is_some() && self.closing.is_none() => {
                    match self.idle_deadline() {
                        Some(deadline) if deadline > Instant::now() => {
                            idle.as_mut().reset(deadline.into());
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
                    if let Some(conn) = &parked_on {
                        conn.room().await;
                        return Awaited::Room;
                    }
                    match &mut self.policy_channel {
                        Some((_, answers)) => Awaited::Answer(answers.recv().await),
                        None => std::future::pending().await,
                    }
                }, if parked_on.is_some() || self.awaiting_redis.is_some() => match awaited {
                    Awaited::Room => self.unpark(),
                    Awaited::Answer(answer) => {
                        let rule = self.awaiting_redis.take().unwrap_or_default();
                        self.progress.record_answer(rule, match answer {
                            Some(Reply::Frames { bytes, .. }) => global::read_answer(&bytes),
                            Some(Reply::Failed { error, .. }) => {
                                Err(String::from_utf8_lossy(&error).trim().to_string())
                            }
                            _ => Err("no answer from Redis".to_string()),
                        });
                    }
                },
                () = &mut stopping, if self.closing.is_none() => {
                    self.closing = Some(if self.listing.is_killed() {
                        Closing::Killed
                    } else {
                        Closing::Shutdown
                    });
                }
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

    /// When an idle client is to be closed: `None` while it may not be (it owes or is owed
    /// something, is subscribed or blocked, as Redis exempts those).
    fn idle_deadline(&self) -> Option<Instant> {
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
        self.last_active.checked_add(self.context.idle_timeout?)
    }

    /// A request is held by a policy: delayed, or waiting for Redis's answer.
    fn is_holding(&self) -> bool {
        self.hold_until.is_some() || self.awaiting_redis.is_some() || self.awaiting_lock.is_some()
    }

    fn wants_input(&self) -> bool {
        // A client waiting for a lock is still read (what it sends waits in the input), so
        // that its leaving is noticed and it leaves the lock's queue at once.
        self.closing.is_none()
            && !self.waiting_for_quiet
            && self.parked.is_none()
            && (!self.is_holding() || self.awaiting_lock.is_some())
            && self.output.len() < OUTPUT_HIGH_WATER
            && self.input.len() < INPUT_HIGH_WATER.max(self.input_needed)
    }

    fn read(&mut self, stream: &Stream) -> io::Result<()> {
        let wanted = READ_CHUNK.max(self.input_needed.saturating_sub(self.input.len()));
        if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
            self.input.reserve(wanted);
        }
        match stream.read_available(&mut self.input) {
            Ok(0) => {
                self.closing = Some(Closing::ClientDone);
                // A client that closed (or half-closed) its side no longer waits in line: it
                // gets Redis's answer now, as it would directly.
                if let Some(lock) = &self.awaiting_lock {
                    let locks = &self.context.locks;
                    locks.give_up(lock.db, &lock.key, &self.reply_sender, lock.ticket);
                }
            }
            Ok(_) => self.last_active = Instant::now(),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
        Ok(())
    }

    fn write_output(&mut self, stream: &Stream) -> io::Result<()> {
        while !self.output.is_empty() {
            match stream.try_write(&self.output) {
                Ok(written) => {
                    self.output.advance(written);
                    self.last_active = Instant::now();
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
        if !self.counts_replies() {
            match reply {
                Reply::Frames { bytes, .. } | Reply::Push(bytes) | Reply::Fetched { bytes, .. } => {
                    self.output.extend_from_slice(&bytes);
                    self.enforce_streaming_output_limit();
                }
                Reply::Failed { .. } | Reply::Closed { .. } => {
                    self.closing = Some(Closing::UpstreamGone)
                }
            }
            return;
        }
        if let Reply::Fetched { ticket, .. } = &reply {
            if let Some(lock) = self.awaiting_lock.take_if(|lock| lock.ticket == *ticket) {
                end_writes(&self.context, lock.writes);
            }
        }
        let after = self
            .replies
            .on_reply(reply, &mut self.output, &self.context.command_metrics);
        self.finish_writes();
        if after == AfterReply::CloseClient {
            self.closing = Some(Closing::UpstreamGone);
        }
        if self.replies.is_empty() {
            self.blocked = false;
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

    /// Decodes and dispatches every complete request in the input. Returns `Some(switch)`
    /// when the request at the front needs a dedicated connection opened first.
    fn process_input(&mut self) -> Option<Switch> {
        if self.is_holding() || self.parked.is_some() {
            return None;
        }
        self.waiting_for_quiet = false;
        let active = self.context.live.load();
        let mut batch = PendingBatch::default();
        let sent_at = Instant::now();
        let mut dedicate = None;
        while matches!(
            self.closing,
            None | Some(Closing::ClientDone | Closing::Shutdown)
        ) {
            let decoded = match self.decoder.decode(&self.input[batch.len..]) {
                Ok(decoded) => decoded,
                Err(error) => {
                    self.send_batch(&mut batch);
                    metrics::protocol_error();
                    tracing::debug!(peer = %self.peer, error = %error.0, "protocol error");
                    self.replies
                        .push_ready(reply::error(&error.message()), &mut self.output);
                    self.closing = Some(Closing::ProtocolError);
                    break;
                }
            };
            let (consumed, rewritten) = match decoded {
                Decoded::Incomplete { needed } => {
                    self.input_needed = needed;
                    break;
                }
                Decoded::Empty { consumed } => {
                    // Never forwarded: Redis ignores them, and a malformed one is not worth
                    // the risk of Redis closing a shared connection.
                    self.send_batch(&mut batch);
                    self.input.advance(consumed);
                    continue;
                }
                Decoded::Request {
                    consumed,
                    rewritten,
                } => (consumed, rewritten),
            };
            self.input_needed = 0;
            let source = rewritten
                .as_deref()
                .unwrap_or(&self.input[batch.len..batch.len + consumed]);
            let args = self.decoder.args(source);
            let info = CommandTable::global().lookup_after(self.last_command, &args);
            self.last_command = Some(info);
            let step = if self.client.authenticated
                || matches!(
                    info.effect,
                    Effect::Local(LocalCommand::Auth | LocalCommand::Hello | LocalCommand::Quit)
                ) {
                self.step_for(info, &args)
            } else {
                Step::Refuse(reply::error("NOAUTH Authentication required."))
            };
            let pause = match info.notice {
                Notice::Pause => parse_pause(&args.iter().collect::<Vec<_>>()),
                _ => None,
            };
            // Set when the request goes to Redis changed (see `client_ids`).
            let mut replacement = None;
            let translates = info.notice == Notice::NamesClients
                && self.counts_replies()
                && matches!(step, Step::Forward | Step::Dedicate { .. });
            let step = match translates {
                true => match client_ids::translate(
                    &info.name,
                    &args,
                    &self.context.sessions,
                    Asker {
                        id: self.client.id,
                        in_transaction: self.in_transaction,
                        as_own_user: self.as_own_user,
                        redirect: &mut self.redirect,
                    },
                ) {
                    Some(Translation::Answered(reply)) => Step::Answer { reply, kill: None },
                    Some(Translation::Kill(listing)) => Step::Answer {
                        reply: Bytes::from_static(b":1\r\n"),
                        kill: Some(listing),
                    },
                    Some(Translation::Relabelled(redirect)) if matches!(step, Step::Forward) => {
                        Step::Relabel(redirect)
                    }
                    Some(Translation::Rewritten(request)) => {
                        replacement = Some(request);
                        step
                    }
                    Some(Translation::Relabelled(_)) | None => step,
                },
                false => step,
            };
            if matches!(step, Step::Forward)
                && self.replies.awaiting_shared_reads()
                && !info.has_flag(flags::READONLY)
            {
                // An earlier read of this client rides on another session's cache fill, on
                // another connection: this command must not reach Redis before it.
                self.send_batch(&mut batch);
                self.waiting_for_quiet = true;
                break;
            }
            if matches!(step, Step::Local(_)) {
                self.local_args.clear();
                self.local_args.extend(args.iter().map(<[u8]>::to_vec));
            }
            let blocks = is_blocking(info, &args);
            let policies = &active.policies;
            let mut follows_hot_keys = false;
            if let (Step::Forward, Some(hotkeys), false) =
                (&step, &policies.hotkeys, self.hot_keys_looked)
            {
                // Once per request, however many times it is judged (a delay, a reload).
                self.hot_keys_looked = true;
                follows_hot_keys = hotkeys.sampled();
            }
            let needs_keys = match step {
                Step::Forward => follows_hot_keys || policies.judges() || policies.watches_writes(),
                Step::Dedicate { .. } | Step::Aside | Step::Relabel(_) => {
                    policies.judges() || policies.watches_writes()
                }
                Step::Local(_) => !policies.denials.is_empty(),
                Step::Answer { .. } => !policies.denials.is_empty(),
                Step::Refuse(_) => false,
            };
            if needs_keys {
                self.key_positions.clear();
                info.key_positions(&args, &mut self.key_positions);
            }
            if follows_hot_keys {
                self.observation =
                    self.replies
                        .observations
                        .start(info, &args, &self.key_positions, source.len());
            }
            let verdict = match step {
                Step::Forward | Step::Dedicate { .. } | Step::Aside | Step::Relabel(_)
                    if policies.judges() =>
                {
                    self.client_bucket.clear();
                    match &self.client.name {
                        Some(name) => {
                            self.client_bucket.extend_from_slice(b"name:");
                            self.client_bucket.extend_from_slice(name);
                        }
                        None => {
                            self.client_bucket.extend_from_slice(b"addr:");
                            self.client_bucket.extend_from_slice(&self.peer_ip);
                        }
                    }
                    let caller = Client {
                        name: self.client.name.as_deref(),
                        address: &self.peer_ip,
                        bucket: &self.client_bucket,
                    };
                    if matches!(step, Step::Forward) {
                        self.progress.follow(&active.policies);
                        let delayed = self
                            .delayed_since
                            .map_or(Duration::ZERO, |since| since.elapsed());
                        active.policies.judge(
                            info,
                            &args,
                            &self.key_positions,
                            &caller,
                            delayed,
                            &mut self.progress,
                        )
                    } else if matches!(step, Step::Dedicate { .. }) {
                        // Before a dedicated connection is opened for it: only a refusal
                        // matters now, the command is judged in full when it is sent.
                        active
                            .policies
                            .refuses(info, &args, &self.key_positions, &caller)
                            .map_or(Verdict::Allow, Verdict::Reject)
                    } else {
                        active
                            .policies
                            .denies(info, &args, &self.key_positions, &caller)
                            .map_or(Verdict::Allow, Verdict::Reject)
                    }
                }
                Step::Local(_) | Step::Answer { .. } if !active.policies.denials.is_empty() => {
                    let caller = Client {
                        name: self.client.name.as_deref(),
                        address: &self.peer_ip,
                        bucket: &self.peer_ip,
                    };
                    active
                        .policies
                        .denies(info, &args, &self.key_positions, &caller)
                        .map_or(Verdict::Allow, Verdict::Reject)
                }
                _ => Verdict::Allow,
            };
            let is_multi = &*info.name == "multi";
            let ends_transaction = matches!(&*info.name, "exec" | "discard" | "reset");
            match verdict {
                Verdict::Allow => {
                    self.delayed_since = None;
                    if matches!(step, Step::Forward) {
                        self.hot_keys_looked = false;
                        self.progress.start_over();
                    }
                }
                Verdict::Reject(refusal) => {
                    self.delayed_since = None;
                    self.hot_keys_looked = false;
                    self.progress.start_over();
                    if let Some(pending) = self.observation.take() {
                        self.replies.observations.finish(pending, &refusal);
                    }
                    self.received.add(&self.context.command_metrics, info.id);
                    self.send_batch(&mut batch);
                    self.input.advance(consumed);
                    self.answer_at_once(refusal);
                    continue;
                }
                Verdict::AskRedis(rule, question) => {
                    self.send_batch(&mut batch);
                    let batch = Batch {
                        bytes: question,
                        count: 1,
                        reply_to: self
                            .policy_channel
                            .get_or_insert_with(mpsc::unbounded_channel)
                            .0
                            .clone(),
                        tracked: false,
                        measured: false,
                        hold: None,
                    };
                    let conn = self
                        .context
                        .upstream
                        .pooled(Protocol::Resp2, 0, self.client.id);
                    if conn.send(batch).is_ok() {
                        self.awaiting_redis = Some(rule);
                        break;
                    }
                    // Judged again at once, with on_error deciding.
                    self.progress
                        .record_answer(rule, Err("upstream busy or gone".into()));
                    continue;
                }
                Verdict::Delay(wait) => {
                    // The request stays at the front of the input, and so does everything the
                    // client pipelined after it.
                    self.send_batch(&mut batch);
                    let now = Instant::now();
                    self.delayed_since.get_or_insert(now);
                    self.hold_until = Some(now + wait);
                    break;
                }
            }
            // Only a request the policies let through may read, fill or wait: a refused or
            // held one must not start (or join) a read others would wait on.
            let lock = match (&step, &self.link) {
                (Step::Forward, Link::Pooled(_)) => {
                    attempt::claim(&active.policies.locks, info, &args)
                }
                _ => None,
            };
            let cacheable = match (&step, &self.link, &lock) {
                (Step::Forward, Link::Pooled(_), None) if !active.policies.caches.is_empty() => {
                    cacheable::request_kind(info, &args)
                }
                _ => None,
            };
            let mut command_writes = Vec::new();
            let lookup = match cacheable {
                Some(kind) => {
                    let read = Read {
                        info,
                        args: &args,
                        db: self.client.db,
                        protocol: self.client.protocol,
                        reply_to: &self.reply_sender,
                        ticket: self.replies.next_ticket(),
                    };
                    self.context.cache.consult(
                        &active.policies.caches,
                        read,
                        kind,
                        &mut self.cache_shape,
                    )
                }
                None => {
                    if matches!(step, Step::Forward) && policies.watches_writes() {
                        note_writes(
                            &self.context.cache,
                            &active.policies,
                            info,
                            &args,
                            &self.key_positions,
                            &mut command_writes,
                        );
                    }
                    Lookup::Bypass
                }
            };
            if matches!(step, Step::Forward)
                && self.counts_replies()
                && matches!(self.link, Link::Dedicated { .. })
            {
                if is_multi {
                    self.in_transaction = true;
                } else if ends_transaction {
                    self.in_transaction = false;
                }
            }

            let rewritten = replacement.or(rewritten);
            if let Some(claim) = lock {
                self.received.add(&self.context.command_metrics, info.id);
                self.send_batch(&mut batch);
                let request = self.take_request(consumed, rewritten);
                let Link::Pooled(conn) = &self.link else {
                    break;
                };
                let ticket = self.replies.next_ticket();
                // The attempt's own SET NX never releases a lock: its end wakes no waiter.
                let writes = command_writes
                    .into_iter()
                    .filter_map(|written| match written {
                        Written::Key { key, cached, .. } => cached.then_some(Written::Key {
                            key,
                            cached,
                            locked: false,
                        }),
                        Written::Flush => Some(Written::Flush),
                    })
                    .collect();
                self.awaiting_lock = Some(AwaitedLock {
                    ticket,
                    db: self.client.db,
                    key: claim.key.clone(),
                    writes,
                });
                let attempt = LockAttempt {
                    claim,
                    db: self.client.db,
                    request,
                    conn: conn.clone(),
                    reply_to: self.reply_sender.clone(),
                    ticket,
                };
                self.replies.push_fetched(false, self.observation.take());
                self.context.locks.attempt(attempt);
                break;
            }
            if !matches!(lookup, Lookup::Bypass) {
                self.received.add(&self.context.command_metrics, info.id);
                self.send_batch(&mut batch);
                self.answer_from_cache(lookup, consumed, rewritten);
                continue;
            }
            match step {
                Step::Refuse(refusal) => {
                    self.received.add(&self.context.command_metrics, info.id);
                    self.send_batch(&mut batch);
                    self.input.advance(consumed);
                    self.replies.push_ready(refusal, &mut self.output);
                }
                Step::Answer { reply, kill } => {
                    self.received.add(&self.context.command_metrics, info.id);
                    self.send_batch(&mut batch);
                    self.input.advance(consumed);
                    self.answer_at_once(reply);
                    if let Some(listing) = kill {
                        listing.kill();
                        if Arc::ptr_eq(&listing, &self.listing) {
                            // Nothing the client sent after it runs, as in Redis.
                            self.closing = Some(Closing::Killed);
                            break;
                        }
                    }
                }
                Step::Forward => {
                    self.received.add(&self.context.command_metrics, info.id);
                    if rewritten.is_some() {
                        // The batch ahead goes first, so sends are numbered in order.
                        self.send_batch(&mut batch);
                    }
                    let observed = self.observation.take();
                    if self.counts_replies() {
                        self.replies.command_sent(info.id, sent_at, observed);
                    } else if let Some(pending) = observed {
                        // Relayed as a stream: no reply of its own to count.
                        self.replies.observations.finish(pending, &[]);
                    }
                    if blocks {
                        self.blocked = true;
                    }
                    if let (Some((length, paused)), false) = (pause, self.in_transaction) {
                        self.context.upstream.pause.begin(length, paused);
                    }
                    let holds = may_be_held(info.holding, self.context.upstream.pause.in_force());
                    // The command's writes end with its own reply, not an earlier batch's (a
                    // rewritten request's batch ahead was sent above).
                    self.written_keys.append(&mut command_writes);
                    match rewritten {
                        None => {
                            batch.len += consumed;
                            batch.count += 1;
                            batch.holds |= holds;
                        }
                        Some(encoded) => {
                            self.input.advance(consumed);
                            self.forward(encoded, 1, holds);
                        }
                    }
                }
                Step::Local(command) => {
                    self.send_batch(&mut batch);
                    if local::may_change_connection(command) && !self.is_quiet() {
                        self.waiting_for_quiet = true;
                        break;
                    }
                    if self.dedicated_error.is_some() {
                        if self.refuse_after_failed_open(consumed, info) {
                            break;
                        }
                        continue;
                    }
                    if let Some(switch) = self.run_local(command, info) {
                        dedicate = Some(switch);
                        break;
                    }
                    self.received.add(&self.context.command_metrics, info.id);
                    self.input.advance(consumed);
                }
                Step::Aside => {
                    self.received.add(&self.context.command_metrics, info.id);
                    self.send_batch(&mut batch);
                    let request = self.take_request(consumed, rewritten);
                    let ticket = self.replies.next_ticket();
                    self.replies.push_fetched(false, self.observation.take());
                    if info.notice == Notice::Unpause {
                        self.context.upstream.pause.end();
                    }
                    // These commands act on the whole server: database 0 spares the
                    // connection a SELECT, which Redis refuses while a script is busy.
                    self.context.upstream.send_aside(
                        self.client.protocol,
                        request,
                        ticket,
                        self.reply_sender.clone(),
                    );
                }
                Step::Relabel(redirect) => {
                    self.received.add(&self.context.command_metrics, info.id);
                    self.send_batch(&mut batch);
                    let request = self.take_request(consumed, rewritten);
                    let ticket = self.replies.next_ticket();
                    let sent = match self.parked {
                        Some(_) => Err(request),
                        None => redirect.fetch_relabelled(
                            self.link.conn(),
                            request,
                            ticket,
                            self.reply_sender.clone(),
                        ),
                    };
                    match sent {
                        Ok(()) => self.replies.push_fetched(false, self.observation.take()),
                        Err(request) => {
                            // No room now: sent as it is, in order, and the reply unrelabelled.
                            let observed = self.observation.take();
                            self.replies.command_sent(info.id, sent_at, observed);
                            self.forward(request, 1, false);
                        }
                    }
                }
                Step::Dedicate { streaming } => {
                    self.send_batch(&mut batch);
                    if self.dedicated_error.is_some() {
                        if self.refuse_after_failed_open(consumed, info) {
                            break;
                        }
                        continue;
                    }
                    if !self.is_quiet() {
                        self.waiting_for_quiet = true;
                        break;
                    }
                    if let Link::Dedicated { streaming: now, .. } = &mut self.link {
                        // Already dedicated: this request turns the connection into a stream.
                        *now = true;
                        continue;
                    }
                    dedicate = Some(Switch {
                        streaming,
                        for_monitor: &*info.name == "monitor",
                        login: None,
                    });
                    break;
                }
            }
        }
        self.send_batch(&mut batch);
        self.received.flush(&self.context.command_metrics);
        dedicate
    }

    /// Counts the commands whose answers came since the last call in the hot keys, all at
    /// once.
    fn count_hot_keys(&mut self) {
        if !self.replies.observations.has_finished() {
            return;
        }
        match &self.context.live.load().policies.hotkeys {
            Some(hotkeys) => hotkeys.record(&mut self.replies.observations, Instant::now()),
            None => self.replies.observations.discard(),
        }
    }

    /// Hands on the written keys whose writes Redis has answered: reads of them may be
    /// cached again, and waiters for a lock they name try again.
    fn finish_writes(&mut self) {
        let written = self.replies.take_finished_writes();
        end_writes(&self.context, written);
    }

    /// Takes the request at the front of the input out of it, to send on its own.
    fn take_request(&mut self, consumed: usize, rewritten: Option<Bytes>) -> Bytes {
        match rewritten {
            Some(encoded) => {
                self.input.advance(consumed);
                encoded
            }
            None => self.input.split_to(consumed).freeze(),
        }
    }

    /// Answers a read the cache took (a hit, a fill, or a wait for another session's fill).
    fn answer_from_cache(&mut self, lookup: Lookup, consumed: usize, rewritten: Option<Bytes>) {
        let request = self.take_request(consumed, rewritten);
        match lookup {
            Lookup::Bypass => {}
            Lookup::Hit(reply) => {
                if let Some(pending) = self.observation.take() {
                    self.replies.observations.finish(pending, &reply);
                }
                self.replies.push_ready(reply, &mut self.output);
            }
            Lookup::Joined => self.replies.push_fetched(true, self.observation.take()),
            Lookup::Fetch(flight) => {
                let Link::Pooled(conn) = &self.link else {
                    return;
                };
                self.replies.push_fetched(false, self.observation.take());
                let address = &self.context.upstream.settings().address;
                self.context
                    .cache
                    .fetch(flight, conn, request, |error| error.reply(address, 1));
            }
        }
    }

    /// Answers the request at the front with keyward's `reply` (a refusal, or keyward's answer
    /// for a command that names a client), in its place among the replies owed. On a
    /// streaming link replies are relayed as they come, so it is too.
    fn answer_at_once(&mut self, reply: Bytes) {
        if self.in_transaction && self.counts_replies() {
            self.refuse_in_transaction(reply);
        } else {
            self.replies.push_ready(reply, &mut self.output);
        }
    }

    /// Inside `MULTI`, a refused command must also abort the transaction, as a command Redis
    /// refuses at queue time does: a command Redis does not know is queued in its place (so
    /// `EXEC` answers `-EXECABORT`), and its error reply is replaced by the refusal.
    fn refuse_in_transaction(&mut self, refusal: Bytes) {
        const ABORTS_TRANSACTION: &[u8] = b"*1\r\n$24\r\nKEYWARD.REFUSED.IN.MULTI\r\n";
        let Link::Dedicated { conn, .. } = &self.link else {
            self.replies.push_ready(refusal, &mut self.output);
            return;
        };
        let batch = Batch {
            bytes: Bytes::from_static(ABORTS_TRANSACTION),
            count: 1,
            reply_to: self.reply_sender.clone(),
            tracked: false,
            measured: false,
            hold: None,
        };
        match conn.send(batch) {
            Ok(()) => self.replies.push_substitute(refusal),
            Err(_) => {
                // Without the marker the transaction would commit the rest: close the client,
                // so Redis discards it with the connection.
                self.replies.push_ready(refusal, &mut self.output);
                self.closing = Some(Closing::UpstreamGone);
            }
        }
    }

    /// Answers the request that needed a dedicated connection with the error from opening one,
    /// then closes the client: running what it pipelined after (the commands of a `MULTI`, say)
    /// on the shared connection would change their meaning.
    /// `true` if the client is closed.
    fn refuse_after_failed_open(&mut self, consumed: usize, info: &CommandInfo) -> bool {
        self.received.add(&self.context.command_metrics, info.id);
        self.input.advance(consumed);
        if let Some(error) = self.dedicated_error.take() {
            self.replies.push_ready(error.reply, &mut self.output);
            if !error.closes {
                return false;
            }
        }
        self.closing = Some(Closing::UpstreamGone);
        true
    }

    /// Decides what to do with a request on the session's current connection.
    fn step_for(&self, info: &CommandInfo, args: &Args<'_>) -> Step {
        match &self.link {
            Link::Dedicated { streaming, .. } => match info.effect {
                Effect::Local(LocalCommand::Keyward) if !streaming => {
                    Step::Local(LocalCommand::Keyward)
                }
                // RESET ends every state that made the connection the session's own: the
                // session goes back to the pool (and logs out of keyward, if it requires a
                // password). Redis would log keyward's own connection out instead.
                Effect::Local(LocalCommand::Reset) => Step::Local(LocalCommand::Reset),
                // With a listen password, AUTH is with keyward, wherever the session is.
                Effect::Local(command @ (LocalCommand::Auth | LocalCommand::Hello))
                    if self.context.listen_password.is_some() && !streaming =>
                {
                    Step::Local(command)
                }
                Effect::Streaming if !streaming => Step::Dedicate { streaming: true },
                _ => Step::Forward,
            },
            Link::Pooled(_) => match info.effect {
                Effect::Stateless => Step::Forward,
                Effect::Local(command) => Step::Local(command),
                Effect::Dedicated => Step::Dedicate { streaming: false },
                Effect::Aside => Step::Aside,
                Effect::DedicatedWithBlockOption if has_block_option(args) => {
                    Step::Dedicate { streaming: false }
                }
                Effect::DedicatedWithBlockOption => Step::Forward,
                Effect::Streaming => Step::Dedicate { streaming: true },
            },
        }
    }

    /// Whether replies are matched to requests (everywhere but on a streaming connection).
    fn counts_replies(&self) -> bool {
        !matches!(
            self.link,
            Link::Dedicated {
                streaming: true,
                ..
            }
        )
    }

    /// Whether nothing is owed on the current connection, so the session may switch.
    fn is_quiet(&self) -> bool {
        self.replies.outstanding() == 0 && !self.replies.awaiting_fetches()
    }

    /// Runs a local command; `Some` if it must instead go to Redis on a dedicated connection,
    /// opened as the switch says.
    fn run_local(&mut self, command: LocalCommand, info: &CommandInfo) -> Option<Switch> {
        let facts = self.context.upstream.facts();
        let local_context = LocalContext {
            context: &self.context,
            facts: &facts,
            settings: self.context.upstream.settings(),
            listen_password: self.context.listen_password.as_deref(),
        };
        let before = (self.client.protocol, self.client.db);
        let outcome = local::execute(
            command,
            info,
            &self.local_args,
            &mut self.client,
            &local_context,
        );
        match outcome {
            Outcome::Reply(reply) => self.replies.push_ready(reply, &mut self.output),
            Outcome::ReplyThenClose(reply) => {
                self.replies.push_ready(reply, &mut self.output);
                self.closing = Some(Closing::Quit);
            }
            Outcome::NeedsDedicated(login) => {
                return Some(Switch {
                    streaming: false,
                    for_monitor: false,
                    login,
                })
            }
        }
        if command == LocalCommand::Reset {
            // Dropping a dedicated connection ends its state in Redis (subscriptions, MULTI).
            self.listing.set_redis_id(None);
            self.redirect = None;
            self.monitoring = None;
            self.as_own_user = false;
            self.link = Link::Pooled(self.context.upstream.pooled(
                self.client.protocol,
                self.client.db,
                self.client.id,
            ));
            self.in_transaction = false;
            self.blocked = false;
        } else if before != (self.client.protocol, self.client.db) {
            if let Link::Pooled(_) = self.link {
                self.link = Link::Pooled(self.context.upstream.pooled(
                    self.client.protocol,
                    self.client.db,
                    self.client.id,
                ));
            }
        }
        None
    }

    async fn open_dedicated(&mut self, switch: Switch) {
        let Switch {
            streaming,
            for_monitor,
            login,
        } = switch;
        if let Some(opening) = self.opening.take() {
            opening.start();
        }
        let setup = self.client.setup_commands();
        let opened = self
            .context
            .upstream
            .dedicated(
                self.client.protocol,
                self.client.db,
                &setup,
                self.reply_sender.clone(),
                // A `MONITOR` starts after the spare connection it takes is replaced, so that
                // it does not show that connection's handshake.
                for_monitor,
                login.as_ref(),
            )
            .await;
        match opened {
            Ok((conn, opening)) => {
                self.as_own_user |= login.is_some();
                if for_monitor {
                    self.monitoring = Some(self.context.upstream.monitoring());
                }
                self.listing.set_redis_id(opening.redis_id);
                self.link = Link::Dedicated { conn, streaming };
                self.opening = Some(opening);
            }
            Err(error) => {
                let address = &self.context.upstream.settings().address;
                self.dedicated_error = Some(DedicatedError {
                    reply: error.reply(address),
                    // Redis refused the request itself, as it would have directly (a busy
                    // script, the client's own wrong password): what the client sent after it
                    // meets Redis as it would have (`EXEC without MULTI`).
                    closes: !matches!(error, UpstreamError::Busy(_) | UpstreamError::Rejected(_)),
                });
            }
        }
    }

    /// Hands the requests gathered in `batch` (the front of the input) to the connection.
    fn send_batch(&mut self, batch: &mut PendingBatch) {
        if batch.len == 0 {
            return;
        }
        let bytes = self.input.split_to(batch.len).freeze();
        let (count, holds) = (batch.count, batch.holds);
        *batch = PendingBatch::default();
        self.forward(bytes, count, holds);
    }

    /// Hands requests to the session's connection. `holds`: Redis may hold one of them for
    /// long, so a shared connection shows as held until they are answered.
    fn forward(&mut self, bytes: Bytes, count: u32, holds: bool) {
        self.leave_held_connection();
        let conn = self.link.conn();
        let measured = self.replies.follows_commands();
        let hold = match &self.link {
            Link::Pooled(conn) if holds => Some(conn.hold()),
            _ => None,
        };
        if let Some(parked) = &mut self.parked {
            parked.join(&bytes, count, measured, hold);
            self.handed_over(count);
            return;
        }
        let batch = Batch {
            bytes,
            count,
            reply_to: self.reply_sender.clone(),
            tracked: false,
            measured,
            hold,
        };
        match conn.offer(batch) {
            Ok(()) => self.handed_over(count),
            Err((SendError::Busy, batch)) => {
                self.parked = Some(Parked::from(batch));
                self.handed_over(count);
            }
            Err((error, _)) => {
                let address = &self.context.upstream.settings().address;
                let error = error.reply(address, u64::from(count));
                end_writes(&self.context, std::mem::take(&mut self.written_keys));
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

    /// Accounts for `count` requests now in the connection's hands (or parked in front of it).
    fn handed_over(&mut self, count: u32) {
        let written = std::mem::take(&mut self.written_keys);
        if self.counts_replies() {
            self.replies.push_upstream(count, written);
        } else {
            end_writes(&self.context, written);
        }
    }

    /// Sends the parked requests now that the connection has room. Their replies are already
    /// expected: if the connection is gone, they are answered as a broken connection's are.
    fn unpark(&mut self) {
        let Some(parked) = self.parked.take() else {
            return;
        };
        let count = parked.count;
        let batch = parked.into_batch(self.reply_sender.clone());
        match self.link.conn().offer(batch) {
            Ok(()) => {}
            Err((SendError::Busy, batch)) => self.parked = Some(Parked::from(batch)),
            Err((error, _)) => {
                let address = &self.context.upstream.settings().address;
                let error = error.reply(address, u64::from(count));
                let _ = self.reply_sender.send(Reply::Failed { count, error });
            }
        }
    }
}

impl Link {
    fn conn(&self) -> &ConnHandle {
        match self {
            Link::Pooled(conn) | Link::Dedicated { conn, .. } => conn,
        }
    }
}

/// Requests waiting for room in their connection's queue, in order.
struct Parked {
    bytes: BytesMut,
    count: u32,
    measured: bool,
    hold: Option<Hold>,
}

impl Parked {
    fn join(&mut self, bytes: &[u8], count: u32, measured: bool, hold: Option<Hold>) {
        self.bytes.extend_from_slice(bytes);
        self.count += count;
        self.measured |= measured;
        if self.hold.is_none() {
            self.hold = hold;
        }
    }

    fn into_batch(self, reply_to: ReplySender) -> Batch {
        Batch {
            bytes: self.bytes.freeze(),
            count: self.count,
            reply_to,
            tracked: false,
            measured: self.measured,
            hold: self.hold,
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

impl Drop for Session {
    /// Writes still unanswered when the client goes end here: their keys must not stay
    /// uncacheable, nor their locks' waiters unwoken.
    fn drop(&mut self) {
        let mut written = self.replies.take_all_writes();
        written.append(&mut self.written_keys);
        if let Some(lock) = self.awaiting_lock.take() {
            written.extend(lock.writes);
        }
        end_writes(&self.context, written);
        self.context.sessions.leave(self.client.id);
    }
}

/// A write through keyward: the cached reads of its keys go at once, and no read of them is
/// stored until Redis has answered it; keys that cache or lock rules watch are remembered in
/// `written` until then. A flush drops everything.
fn note_writes(
    cache: &Coherence,
    policies: &Policies,
    info: &CommandInfo,
    args: &Args<'_>,
    key_positions: &[usize],
    written: &mut Vec<Written>,
) {
    if info.has_flag(flags::READONLY) {
        return;
    }
    if matches!(&*info.name, "flushall" | "flushdb" | "swapdb") {
        cache.begin_flush(&policies.caches);
        written.push(Written::Flush);
        return;
    }
    for key in key_positions
        .iter()
        .filter_map(|&position| args.get(position))
    {
        // Only rules in force serve or hold anything: for shadow rules, dropping the entries
        // is enough (their counts may be off by a read that raced the write).
        let covering = |shadow: bool| {
            policies
                .caches
                .iter()
                .any(|rule| rule.is_shadow() == shadow && rule.matches_key(key))
        };
        let cached = covering(false);
        let locked = policies
            .locks
            .iter()
            .any(|rule| !rule.is_shadow() && rule.matches_key(key));
        if cached {
            cache.begin_write(&policies.caches, key);
        } else if covering(true) {
            cache.invalidate(&policies.caches, key);
        }
        if cached || locked {
            written.push(Written::Key {
                key: Bytes::copy_from_slice(key),
                cached,
                locked,
            });
        }
    }
}

fn end_writes(context: &Context, written: Vec<Written>) {
    if written.is_empty() {
        return;
    }
    for write in written {
        match write {
            Written::Key {
                key,
                cached,
                locked,
            } => {
                if cached {
                    context.cache.end_write(&key);
                }
                if locked {
                    context.locks.released(&key);
                }
            }
            Written::Flush => {
                context.cache.end_flush();
                context.locks.wake_all();
            }
        }
    }
}

/// What a held request's wait ended with.
enum Awaited {
    /// The connection has room for the parked requests.
    Room,
    /// Redis's answer to a policy's question (a global rate limit).
    Answer(Option<Reply>),
}

/// The connection of its own that the request at the front of the input needs first.
struct Switch {
    /// Frames will no longer match commands one to one (see `Link::Dedicated`).
    streaming: bool,
    /// The request is `MONITOR`.
    for_monitor: bool,
    /// The request authenticates as a user keyward does not know: the connection is opened
    /// as that user, so that it works whatever keyward's own credentials are.
    login: Option<Login>,
}

/// Why a connection of the session's own could not be opened, for the request that asked.
struct DedicatedError {
    reply: Bytes,
    /// The client is closed after the reply (see `refuse_after_failed_open`).
    closes: bool,
}

/// The lock attempt a session waits for.
struct AwaitedLock {
    ticket: u64,
    db: u32,
    key: Bytes,
    /// What the attempt writes, ended when it is answered.
    writes: Vec<Written>,
}

/// Forwarded requests gathered at the front of the input, not yet handed to a connection.
#[derive(Default)]
struct PendingBatch {
    len: usize,
    count: u32,
    /// Redis may hold one of the requests for long (see [`Session::forward`]).
    holds: bool,
}

/// Whether Redis may hold a command for long now, so that a shared connection shows as held
/// from the moment it is sent (see [`Hold`]).
fn may_be_held(holding: Holding, pause: Option<Paused>) -> bool {
    match holding {
        Holding::Always => true,
        Holding::InWritePause => pause.is_some(),
        Holding::InFullPause => pause == Some(Paused::Everything),
    }
}

/// `XREAD`/`XREADGROUP` block only with a `BLOCK` option. Options are read by position
/// (`GROUP g c`, `COUNT n`, `BLOCK ms`, `NOACK`) up to `STREAMS`, so a group or consumer
/// named "block" or "streams" is not mistaken for one.
fn has_block_option(args: &Args<'_>) -> bool {
    let mut index = 1;
    while let Some(arg) = args.get(index) {
        let skip = if arg.eq_ignore_ascii_case(b"block") {
            return true;
        } else if arg.eq_ignore_ascii_case(b"streams") {
            return false;
        } else if arg.eq_ignore_ascii_case(b"group") {
            2
        } else if arg.eq_ignore_ascii_case(b"count") {
            1
        } else {
            0
        };
        index += skip + 1;
    }
    false
}

/// Whether the command may wait in Redis for something to happen.
fn is_blocking(info: &CommandInfo, args: &Args<'_>) -> bool {
    match info.effect {
        Effect::DedicatedWithBlockOption => has_block_option(args),
        _ => info.has_flag(flags::BLOCKING) || &*info.name == "wait",
    }
}

/// Counts a client connection for as long as it lives.
pub struct ClientGuard(Arc<Context>);

impl ClientGuard {
    pub fn new(context: Arc<Context>) -> ClientGuard {
        context.clients.fetch_add(1, Ordering::Relaxed);
        context.connections_received.fetch_add(1, Ordering::Relaxed);
        metrics::client_connected();
        ClientGuard(context)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
        metrics::client_disconnected();
    }
}
