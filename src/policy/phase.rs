//! What a policy is to the request pipeline: a [`Phase`] that decides on each request, in the
//! order [`super::phases`] lists, and hears what happens to the requests it let through. A
//! phase that only watches (hot keys) decides nothing and follows requests to the answers
//! their clients get instead.
//!
//! A phase is the part of a policy shared by every session (its queues, its cache, or nothing
//! at all); what it keeps per session lives in its [`Phase::Session`] value, which the session
//! holds without looking into (and what it keeps of the requests it follows, in its
//! [`Phase::Follower`], which the session's reply queue holds). The rules a phase applies
//! come from the [`Policies`] in force, handed to every call, so that a reload changes them
//! between two requests.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Policies;
use crate::command::CommandInfo;
use crate::config::HostPort;
use crate::resp::request::Args;
use crate::resp::Protocol;
use crate::upstream::{ConnHandle, Reply, ReplySender, Room, SendError, Upstream};

/// How a request goes once the phases let it through: what the phases may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Forwarded on a connection shared with other sessions.
    Shared,
    /// Forwarded on the session's own connection.
    Own,
    /// It needs a connection of the session's own, not opened yet: only a refusal is decided
    /// now (so that a refused `MONITOR` costs no connection), and it meets the phases again
    /// when it is sent there.
    BeforeOwn,
    /// keyward answers it, or sends it aside on a connection of its own.
    Keyward,
}

impl Way {
    /// Whether the request reaches Redis on the session's connection.
    #[inline]
    pub fn forwarded(self) -> bool {
        matches!(self, Way::Shared | Way::Own)
    }
}

/// Who sends the request, as policies see clients.
#[derive(Clone, Copy)]
pub struct Sender<'a> {
    /// The `CLIENT SETNAME` name, if any.
    pub name: Option<&'a [u8]>,
    /// The peer's IP address (without the port: one client, many connections).
    pub address: &'a [u8],
}

/// A request as the phases see it: resolved once by the session, before the first phase.
pub struct Subject<'r, 'a> {
    pub info: &'static CommandInfo,
    pub args: &'r Args<'a>,
    /// Where its keys are in `args`, when some phase needs them ([`Phase::needs_keys`]).
    pub key_positions: &'r [usize],
    pub way: Way,
    pub sender: Sender<'r>,
    pub db: u32,
    pub protocol: Protocol,
    /// When the session took up the batch the request came in, read once for the batch:
    /// after the request arrived and before it is answered, which is all a phase that
    /// compares times with it needs.
    pub now: quanta::Instant,
    /// Where a reply for a request a phase takes goes, and the ticket it will carry.
    pub reply_to: &'r ReplySender,
    pub ticket: u64,
}

/// What a phase that follows a request to its answer is told of it: only what the request
/// itself says, so that a request no phase decides on is followed without its whole
/// [`Subject`] being put together.
#[derive(Clone, Copy)]
pub struct FollowedRequest<'r, 'a> {
    pub info: &'static CommandInfo,
    pub args: &'r Args<'a>,
    /// Where its keys are in `args`.
    pub key_positions: &'r [usize],
}

/// What a phase decides about a request.
pub enum Decision<T> {
    /// On to the next phase (after the last, the request goes its way).
    Pass,
    /// Answered now with this reply, in its place among the client's replies: a refusal, or
    /// a reply the phase had at hand.
    Answer(Bytes),
    /// The request, and everything the client sent after it, waits at the front of the input
    /// until then; it meets this phase again first.
    HoldUntil(Instant),
    /// The request waits until Redis answers this question (sent on a shared connection),
    /// then meets this phase again, which hears the answer first ([`Phase::answered`]).
    Ask(Bytes),
    /// The phase takes the request: it is handed its bytes ([`Phase::hand_over`]) and sends
    /// the reply itself, as `Reply::Fetched` with the subject's ticket.
    Take(T),
}

impl<T> Decision<T> {
    pub fn map<U>(self, wrap: impl FnOnce(T) -> U) -> Decision<U> {
        match self {
            Decision::Pass => Decision::Pass,
            Decision::Answer(reply) => Decision::Answer(reply),
            Decision::HoldUntil(until) => Decision::HoldUntil(until),
            Decision::Ask(question) => Decision::Ask(question),
            Decision::Take(taken) => Decision::Take(wrap(taken)),
        }
    }
}

/// A request a phase took, with what it needs to send it.
pub struct Handover<'r> {
    /// The request as it goes to Redis.
    pub request: Bytes,
    /// The session's shared connection, where its commands stay in order.
    pub conn: &'r ConnHandle,
    /// A place in `conn`'s queue kept for the request, so that a phase sending it there at
    /// once cannot be told the queue is full; or why there is none (the connection is gone,
    /// or the session ended while waiting for room).
    pub room: Result<Room<'r>, SendError>,
    pub reply_to: &'r ReplySender,
    pub ticket: u64,
    pub db: u32,
    /// Redis's address, for errors that name it.
    pub address: &'r HostPort,
}

/// One policy, as the request pipeline runs it.
pub trait Phase: Sized {
    /// What the phase keeps per session: where it stands on the request at the front.
    type Session: Default;
    /// What it keeps of a request it takes, until it is handed the request's bytes.
    type Taken;
    /// What a session keeps of a taken request that the client's later requests wait for.
    type Held;
    /// What the phase follows of one request, from the phases' decision to the answer the
    /// client gets (hot keys: where the request's keys are kept); `Infallible` for a phase that
    /// follows none, so that its place in [`Follows`](crate::policy::phases::Follows) takes no
    /// room: a request's follows then fit in a register and pass through calls without being
    /// read back from memory.
    type Follow;
    /// What a session keeps of the requests the phase follows, as their answers come (hot
    /// keys: the keys and bytes of each); `()` for a phase that follows none.
    type Follower: Default;

    /// The phase's shared part, made once when keyward starts.
    fn new(upstream: &Arc<Upstream>) -> Self;

    /// Whether it has anything to do with a request going this way under `policies`. When
    /// no phase has, the request skips them all; when one has, the request's key positions
    /// are located for it ([`Subject::key_positions`]).
    fn active(&self, policies: &Policies, way: Way) -> bool;

    /// Decides on a request. A request held or asked about meets it again.
    fn decide(
        &self,
        policies: &Policies,
        session: &mut Self::Session,
        subject: &Subject<'_, '_>,
    ) -> Decision<Self::Taken>;

    /// The request is done with (let through, answered or taken) or the policies changed:
    /// whatever was kept for it goes. It may come for a request the phase was to meet and
    /// did not (an earlier phase decided first): there is then nothing to forget.
    #[inline]
    fn done(&self, _session: &mut Self::Session) {}

    /// Redis answered the question of [`Decision::Ask`] (`None`: it could not be asked).
    fn answered(&self, _session: &mut Self::Session, _answer: Option<Reply>) {}

    /// Sends a request the phase took. `Some` when the client's later requests wait until
    /// its reply comes.
    fn hand_over(
        self: &Arc<Self>,
        taken: Self::Taken,
        handover: Handover<'_>,
    ) -> Option<Self::Held>;

    /// Whether the reply to a taken request is another session's (read elsewhere, shared).
    fn answered_elsewhere(_taken: &Self::Taken) -> bool {
        false
    }

    /// Whether a taken request is sent on the session's connection, and so needs a place in its
    /// queue: not when it is read elsewhere (joined to another session's cache fill, or sent
    /// to a replica), which a full queue on the session's connection must not hold up.
    fn uses_session_connection(_taken: &Self::Taken) -> bool {
        true
    }

    /// The client of a held request left: it gets its answer now.
    fn give_up(&self, _held: &Self::Held, _reply_to: &ReplySender, _ticket: u64) {}

    /// Whether it would follow this request, going this way under `policies`, to its answer
    /// ([`Phase::follow`]); when one would, the request's key positions are located for it.
    /// Asked on each pass of the request through the phases (a held request passes again): a
    /// phase that samples requests draws here, and the pass that decides the request's fate
    /// is the one that counts.
    #[inline]
    fn follows(&self, _policies: &Policies, _way: Way) -> bool {
        false
    }

    /// The phases decided a request's fate (it goes on, was taken, or is answered now), and
    /// this phase said it follows it: `Some` if it does. Called once per request.
    #[inline]
    fn follow(
        &self,
        _policies: &Policies,
        _follower: &mut Self::Follower,
        _request: FollowedRequest<'_, '_>,
        _request_len: usize,
    ) -> Option<Self::Follow> {
        None
    }

    /// The answer the client got for a request the phase follows (empty when none came from
    /// Redis: a timeout, or a stream relayed without replies of its own).
    #[inline]
    fn answered_follow(_follower: &mut Self::Follower, _follow: Self::Follow, _answer: &[u8]) {}

    /// Whether the follower gathered something the phase's shared part should have
    /// ([`Phase::gathered`]).
    #[inline]
    fn has_gathered(_follower: &Self::Follower) -> bool {
        false
    }

    /// The session's turn is over (its replies are about to be written): what the follower
    /// gathered goes to the phase's shared part in one go.
    fn gathered(&self, _policies: &Policies, _follower: &mut Self::Follower) {}

    /// Whether it watches forwarded writes under `policies` ([`Phase::writing`]).
    #[inline]
    fn watches_writes(&self, _policies: &Policies) -> bool {
        false
    }

    /// A command the session forwards now writes `key`. `true` if the phase wants to hear
    /// when Redis has answered it ([`Phase::written`]).
    fn writing(&self, _policies: &Policies, _session: &mut Self::Session, _key: &[u8]) -> bool {
        false
    }

    /// Redis answered a write the phase wanted to hear of (or its session ended).
    fn written(&self, _session: &mut Self::Session, _key: &[u8]) {}

    /// A command the session forwards now changes every key (`FLUSHALL`, `SWAPDB`…); `true`
    /// if the phase wants to hear when Redis has answered it ([`Phase::flushed`]).
    fn flushing(&self, _policies: &Policies, _session: &mut Self::Session) -> bool {
        false
    }

    fn flushed(&self, _session: &mut Self::Session) {}

    /// Whether the phase wants Redis's news of changed keys ([`Phase::changed`]).
    fn watches_changes(&self, _policies: &Policies) -> bool {
        false
    }

    /// Redis says `key` changed, by anyone's hand.
    fn changed(&self, _policies: &Policies, _key: &[u8]) {}

    /// Redis's news may have been lost: every key may have changed.
    fn all_changed(&self, _policies: &Policies) {}

    /// The news of some keys may have been lost (one cluster node's invalidation link
    /// dropped): the keys of that node may have changed. A phase that cannot tell which keys
    /// those are treats it as [`Phase::all_changed`].
    fn some_changed(&self, policies: &Policies) {
        self.all_changed(policies);
    }
}
