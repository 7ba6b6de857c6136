//! The request pipeline: each decoded request is classified once, then meets the phases in
//! a fixed order, and is forwarded, answered, held or handed to a policy:
//!
//! 1. classify: the command is resolved from the table, and what it needs of the connection
//!    (forward, answer locally, a connection of its own, send aside) decided
//!    ([`Session::step_for`]); commands that name clients are translated ([`client_ids`]).
//! 2. hot keys decide whether to follow the request.
//! 3. the policy phases, in the order of [`policy::phases`] (deny, rate limit, lock, cache):
//!    each passes it on, answers it, holds it (until a time, or until Redis answers a
//!    question), or takes it and answers it later; a forwarded write is noted for the phases
//!    that watch writes.
//! 4. dispatch: the request joins the batch for the session's connection, or is answered.
//!
//! Replies come back through the reply queue ([`replies`]), where hot keys, metrics and the
//! end of watched writes observe them.
//!
//! Every request runs these steps, so they are written for it: each step has one caller and
//! is inlined into it (the release build splits the crate into several codegen units, and a
//! call across them, with the request's state moved in and out, cost about 100 instructions
//! per pipelined request), and what is handed from step to step is small.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::client_ids::{self, Asker, Redirect, Translation};
use super::forward::TakenRequest;
use super::link::{Link, Switch};
use super::phase_run::PhaseRun;
use super::{Closing, Session};
use crate::command::{
    flags, CommandInfo, CommandTable, Effect, Holding, LocalCommand, Notice, Role,
};
use crate::directory::Listing;
use crate::metrics;
use crate::policy::hotkeys::HotKeys;
use crate::policy::phase::{Decision, Way};
use crate::policy::phases::{Follows, Phases, Roles, Taken, WrittenKeys};
use crate::policy::Policies;
use crate::resp::reply;
use crate::resp::request::{Args, Decoded, RequestDecoder};
use crate::upstream::{parse_pause, Paused};

/// What the loop over the input does after one request.
pub(super) enum Flow {
    /// On to the next request.
    Next,
    /// No more requests for now: the front one is held or waits, or the session closes.
    Stop,
    /// The request at the front needs a connection of the session's own first.
    Dedicate(Switch),
}

/// The input while its requests are processed. It is taken out of the session meanwhile, so
/// that a request's arguments, borrowed from it, stay readable while the phases change the
/// session's state.
pub(super) struct Input<'a> {
    pub bytes: BytesMut,
    decoder: RequestDecoder,
    /// Forwarded requests gathered at the front, not yet handed to the connection.
    pub batch: PendingBatch,
    /// Hot keys, as the policies judging this input have them: where a batch's counts go when
    /// its replies take the lane (see `Session::lane_for_batch`), without a second look at the
    /// policies for each batch.
    pub hotkeys: Option<&'a Arc<HotKeys>>,
}

/// Forwarded requests gathered at the front of the input, not yet handed to a connection.
#[derive(Default)]
pub(super) struct PendingBatch {
    pub len: usize,
    pub count: u32,
    /// Redis may hold one of the requests for long (see [`Session::forward`]).
    pub holds: bool,
}

impl Input<'_> {
    /// Takes the request at the front of the input out of it, to send on its own.
    pub fn take_request(&mut self, consumed: usize, rewritten: Option<Bytes>) -> Bytes {
        match rewritten {
            Some(encoded) => {
                self.bytes.advance(consumed);
                encoded
            }
            None => self.bytes.split_to(consumed).freeze(),
        }
    }
}

/// A request past the policies, on its way to be sent or answered. Kept small: it is handed
/// on for every request.
pub(super) struct Request {
    pub info: &'static CommandInfo,
    /// Its length at the front of the input.
    pub consumed: usize,
    /// What goes to Redis instead of the client's bytes: an inline request encoded, or one
    /// whose client ids were translated.
    pub rewritten: Option<Bytes>,
    /// When the requests of this pass over the input were sent, for latency metrics.
    pub sent_at: quanta::Instant,
    /// What the phases follow of it to its answer. It travels with the request to the reply
    /// queue (or to the answer keyward gives), so nothing of one request waits in the session
    /// for the next to pick up.
    pub follows: Follows,
}

impl Session {
    /// Runs every complete request in the input through the pipeline. Returns `Some(switch)`
    /// when the request at the front needs a dedicated connection opened first.
    pub(super) fn process_input(&mut self) -> Option<Switch> {
        if self.is_holding() || self.parked.is_some() || self.parked_after.is_some() {
            return None;
        }
        self.waiting_for_quiet = false;
        if self.input.is_empty() {
            // A wake-up for replies alone (most of them, unpipelined): nothing to decode, and
            // no policies or clock to read.
            return None;
        }
        let active = self.context.live.load();
        let mut input = Input {
            bytes: std::mem::take(&mut self.input),
            decoder: std::mem::take(&mut self.decoder),
            batch: PendingBatch::default(),
            hotkeys: active.policies.hotkeys.as_ref(),
        };
        let switch = self.process(&mut input, &active.policies);
        self.input = input.bytes;
        self.decoder = input.decoder;
        switch
    }

    fn process(&mut self, input: &mut Input, policies: &Policies) -> Option<Switch> {
        let sent_at = self.now();
        let mut dedicate = None;
        while matches!(
            self.closing,
            None | Some(Closing::ClientDone | Closing::Shutdown)
        ) {
            let Some((consumed, rewritten)) = self.next_request(input) else {
                break;
            };
            match self.process_request(input, policies, consumed, rewritten, sent_at) {
                Flow::Next => {}
                Flow::Stop => break,
                Flow::Dedicate(switch) => {
                    dedicate = Some(switch);
                    break;
                }
            }
        }
        self.send_batch(input);
        self.received.flush(&self.context.command_metrics);
        dedicate
    }

    /// Decodes the request after the batch gathered so far: its length, and its bytes when
    /// the decoder had to encode them (an inline request). `None` when there is none to run
    /// now (incomplete, or a protocol error, which closes the session after its reply).
    #[inline(always)]
    fn next_request(&mut self, input: &mut Input) -> Option<(usize, Option<Bytes>)> {
        loop {
            let decoded = match input.decoder.decode(&input.bytes[input.batch.len..]) {
                Ok(decoded) => decoded,
                Err(error) => {
                    self.send_batch(input);
                    metrics::protocol_error();
                    tracing::debug!(peer = %self.peer, error = %error.0, "protocol error");
                    self.replies
                        .push_ready(reply::error(&error.message()), &mut self.output);
                    self.closing = Some(Closing::ProtocolError);
                    return None;
                }
            };
            match decoded {
                Decoded::Incomplete { needed } => {
                    self.input_needed = needed;
                    return None;
                }
                Decoded::Empty { consumed } => {
                    // Never forwarded: Redis ignores them, and a malformed one is not worth
                    // the risk of Redis closing a shared connection.
                    self.send_batch(input);
                    input.bytes.advance(consumed);
                }
                Decoded::Request {
                    consumed,
                    rewritten,
                } => {
                    self.input_needed = 0;
                    return Some((consumed, rewritten));
                }
            }
        }
    }

    /// Takes one request through the pipeline, in order: classify, the policy phases, then
    /// dispatch.
    #[inline(always)]
    fn process_request(
        &mut self,
        input: &mut Input,
        policies: &Policies,
        consumed: usize,
        rewritten: Option<Bytes>,
        sent_at: quanta::Instant,
    ) -> Flow {
        let start = input.batch.len;
        let source = match &rewritten {
            Some(encoded) => &encoded[..],
            None => &input.bytes[start..start + consumed],
        };
        let args = input.decoder.args(source);
        let info = CommandTable::global().lookup_after(self.last_command, &args);
        self.last_command = Some(info);
        let (step, replacement) = self.classify(info, &args);
        match step {
            Step::Unpin => return self.unpin(input),
            Step::ResumeMulti => return self.resume_multi(input),
            _ => {}
        }
        if matches!(step, Step::Forward)
            && self.replies.awaiting_shared_reads()
            && !info.has_flag(flags::READONLY)
        {
            // An earlier read of this client rides on another session's cache fill, on
            // another connection: this command must not reach Redis before it.
            self.send_batch(input);
            self.waiting_for_quiet = true;
            return Flow::Stop;
        }
        if matches!(step, Step::Local(_)) {
            self.local_args.clear();
            self.local_args.extend(args.iter().map(<[u8]>::to_vec));
        }
        let pause = match info.notice {
            Notice::Pause => parse_pause(&args.iter().collect::<Vec<_>>()),
            _ => None,
        };
        let blocks = is_blocking(info, &args);
        let phases = &self.context.phases;
        let way = self.way(&step);
        let roles = way.map_or_else(Roles::default, |way| phases.roles(policies, way));
        let (decision, follows) = match way {
            Some(way) if roles.deciding != 0 || roles.following != 0 => {
                self.key_positions.clear();
                info.key_positions(&args, &mut self.key_positions);
                let run = PhaseRun {
                    way,
                    roles,
                    request_len: source.len(),
                    now: sent_at,
                };
                self.run_phases(policies, info, &args, run)
            }
            _ => (Decision::Pass, Follows::default()),
        };
        let taken = match decision {
            Decision::Pass => None,
            Decision::Take(taken) => Some(taken),
            Decision::Answer(refusal) => {
                return self.refuse(input, info, consumed, refusal, follows)
            }
            Decision::HoldUntil(until) => {
                // The request stays at the front of the input, and so does everything the
                // client pipelined after it.
                self.send_batch(input);
                self.holds.until = Some(until);
                return Flow::Stop;
            }
            Decision::Ask(question) => return self.ask(input, question),
        };
        // How the request goes, when some phase decides on it.
        let deciding = way.filter(|_| roles.deciding != 0);
        let mut writes = self.note_writes(policies, info, &args, deciding, taken.as_ref());
        self.follow_transaction(&step, info, args.len());
        let request = Request {
            info,
            consumed,
            rewritten: replacement.or(rewritten),
            sent_at,
            follows,
        };
        if let Some(taken) = taken {
            return self.take(input, taken, request, &mut writes);
        }
        if matches!(step, Step::Forward) {
            if blocks {
                self.blocked = true;
            }
            if let (Some((length, paused)), false) = (pause, self.in_transaction) {
                self.context.upstream.pause.begin(length, paused);
            }
        }
        self.dispatch(input, step, request, &mut writes)
    }

    /// How the request goes once the phases let it through, which tells them what they may
    /// do with it; `None` for one refused before the phases (unauthenticated, or answered by
    /// keyward inside a transaction).
    #[inline(always)]
    fn way(&self, step: &Step) -> Option<Way> {
        match step {
            Step::Forward => Some(match self.link {
                Link::Pooled(_) => Way::Shared,
                Link::Dedicated { .. } => Way::Own,
            }),
            Step::Dedicate { .. } => Some(Way::BeforeOwn),
            Step::Aside | Step::Relabel(_) | Step::Local(_) | Step::Answer { .. } => {
                Some(Way::Keyward)
            }
            Step::Refuse(_) | Step::Unpin | Step::ResumeMulti => None,
        }
    }

    /// The classify phase: what the request needs of the session's connection, and the
    /// request as it goes to Redis when the client ids it names are translated.
    #[inline(always)]
    fn classify(&mut self, info: &'static CommandInfo, args: &Args<'_>) -> (Step, Option<Bytes>) {
        let allowed = self.client.authenticated
            || matches!(
                info.effect,
                Effect::Local(LocalCommand::Auth | LocalCommand::Hello | LocalCommand::Quit)
            );
        let step = match allowed {
            true => self.step_for(info, args),
            false => Step::Refuse(reply::error("NOAUTH Authentication required.")),
        };
        let translates = info.notice == Notice::NamesClients
            && self.counts_replies()
            && matches!(step, Step::Forward | Step::Dedicate { .. });
        if !translates {
            return (step, None);
        }
        let asker = Asker {
            id: self.client.id,
            in_transaction: self.in_transaction,
            as_own_user: self.as_own_user,
            redirect: &mut self.redirect,
        };
        match client_ids::translate(&info.name, args, &self.context.sessions, asker) {
            Some(Translation::Answered(reply)) => (Step::Answer { reply, kill: None }, None),
            Some(Translation::Kill(listing)) => {
                let reply = Bytes::from_static(b":1\r\n");
                (
                    Step::Answer {
                        reply,
                        kill: Some(listing),
                    },
                    None,
                )
            }
            Some(Translation::Relabelled(redirect)) if matches!(step, Step::Forward) => {
                (Step::Relabel(redirect), None)
            }
            Some(Translation::Rewritten(request)) => (step, Some(request)),
            Some(Translation::Relabelled(_)) | None => (step, None),
        }
    }

    /// A request held until Redis answers a phase's question. If the question cannot be
    /// sent, the phase hears so at once and decides again.
    fn ask(&mut self, input: &mut Input, question: Bytes) -> Flow {
        self.send_batch(input);
        let upstream = &self.context.upstream;
        if self.holds.ask(upstream, self.client.id, question) {
            return Flow::Stop;
        }
        self.context.phases.answered(&mut self.phase_states, None);
        Flow::Next
    }

    /// A request a phase answered (a refusal, or a reply it had at hand), or one refused
    /// before the phases: answered at once, in its place.
    pub(super) fn refuse(
        &mut self,
        input: &mut Input,
        info: &CommandInfo,
        consumed: usize,
        refusal: Bytes,
        follows: Follows,
    ) -> Flow {
        self.replies.followers.answered(follows, &refusal);
        self.received.add(&self.context.command_metrics, info.id);
        self.send_batch(input);
        input.bytes.advance(consumed);
        self.answer_at_once(refusal)
    }

    /// Follows `MULTI` and its end on the session's own connection, where a refused command
    /// must also abort the transaction (see [`Session::answer_at_once`]). Redis refuses a
    /// command with the wrong number of arguments: a refused `MULTI` starts no transaction and
    /// a refused `DISCARD` ends none, but a refused `EXEC` discards it.
    #[inline(always)]
    fn follow_transaction(&mut self, step: &Step, info: &CommandInfo, arguments: usize) {
        if !matches!(step, Step::Forward)
            || !self.counts_replies()
            || !matches!(self.link, Link::Dedicated { .. })
            || (!info.arity_ok(arguments) && &*info.name != "exec")
        {
            return;
        }
        match info.role {
            Role::StartsTransaction => self.in_transaction = true,
            Role::EndsTransaction => self.in_transaction = false,
            _ => {}
        }
        if let Some(pin) = &mut self.pin {
            pin.follow(info.role);
        }
    }

    /// A request a phase took: the phase sends it and brings its reply. While it holds the
    /// request (a lock attempt in its queue), the requests after it wait.
    fn take(
        &mut self,
        input: &mut Input,
        taken: Taken,
        request: Request,
        writes: &mut Option<WrittenKeys>,
    ) -> Flow {
        self.received
            .add(&self.context.command_metrics, request.info.id);
        self.send_batch(input);
        let bytes = input.take_request(request.consumed, request.rewritten);
        let ticket = self.replies.next_ticket();
        let shared = Phases::answered_elsewhere(&taken);
        self.replies
            .push_fetched(shared, request.follows, writes.take().unwrap_or_default());
        self.hand_over(TakenRequest {
            taken,
            request: bytes,
            ticket,
        })
    }
}

/// What a request turns into. Its tag is a whole word: with a byte's, the seven bytes after it
/// (a small payload, or none) were copied in two overlapping moves each time a step was moved,
/// and the second move read back across both of the first one's writes, which waits for them
/// to reach the cache (about a fifth of the request loop's time under perf).
#[repr(u64)]
pub(super) enum Step {
    /// Answered with this error at once: the client has not authenticated, or keyward would
    /// answer the command itself inside a transaction (which the refusal aborts).
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
    /// Cluster mode: the session's own connection reaches another node than this request's
    /// keys, and holds no state any more: back to the routed, shared connections first.
    Unpin,
    /// Cluster mode: the transaction keyward answered `MULTI` for starts on the session's own
    /// connection, which serves this request's keys.
    ResumeMulti,
}

/// Whether Redis may hold a command for long now, so that a shared connection shows as held
/// from the moment it is sent (see [`Hold`]).
pub(super) fn may_be_held(holding: Holding, pause: Option<Paused>) -> bool {
    match holding {
        Holding::Always => true,
        Holding::InWritePause => pause.is_some(),
        Holding::InFullPause => pause == Some(Paused::Everything),
    }
}

/// `XREAD`/`XREADGROUP` block only with a `BLOCK` option. Options are read by position
/// (`GROUP g c`, `COUNT n`, `BLOCK ms`, `NOACK`) up to `STREAMS`, so a group or consumer
/// named "block" or "streams" is not mistaken for one.
pub(super) fn has_block_option(args: &Args<'_>) -> bool {
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
        _ => info.has_flag(flags::BLOCKING) || info.role == Role::WaitsForReplicas,
    }
}
