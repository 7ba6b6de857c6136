//! The last phase of the request pipeline: a request the policies let through joins the batch
//! for the session's connection, is answered by keyward, goes aside, or waits for a connection
//! of the session's own.

use std::sync::Arc;

use bytes::{Buf, Bytes};

use super::link::{Link, Switch};
use super::local;
use super::pipeline::{may_be_held, Flow, Input, Request, Step};
use super::{Closing, Session};
use crate::command::{flags, Effect, LocalCommand, Notice, Role};
use crate::directory::Listing;
use crate::policy::phases::WrittenKeys;

impl Session {
    /// Sends or answers a request the earlier phases passed on. The keys it writes stay in the
    /// caller's frame, where they were just noted (most often as `None`), as for a request a
    /// phase took: moved in by value, they were copied in 16-byte loads across those fresh
    /// 8-byte writes, which waits until the writes reach the cache (a fifth of the request
    /// loop's perf samples).
    #[inline(always)]
    pub(super) fn dispatch(
        &mut self,
        input: &mut Input,
        step: Step,
        request: Request,
        writes: &mut Option<WrittenKeys>,
    ) -> Flow {
        let id = request.info.id;
        match step {
            Step::Refuse(refusal) => self.refuse(
                input,
                request.info,
                request.consumed,
                refusal,
                request.follows,
            ),
            Step::Answer { reply, kill } => {
                self.received.add(&self.context.command_metrics, id);
                self.send_batch(input);
                input.bytes.advance(request.consumed);
                let answered = self.answer_at_once(reply);
                match self.kill(kill) {
                    Flow::Next => answered,
                    stop => stop,
                }
            }
            Step::Forward => {
                self.forward_request(input, request, writes);
                Flow::Next
            }
            Step::Local(command) => self.run_local_step(input, command, request),
            Step::Aside => {
                self.received.add(&self.context.command_metrics, id);
                self.send_batch(input);
                let bytes = input.take_request(request.consumed, request.rewritten);
                let ticket = self.replies.next_ticket();
                self.replies
                    .push_fetched(false, request.follows, WrittenKeys::new());
                if request.info.notice == Notice::Unpause {
                    self.context.upstream.pause.end();
                }
                self.context.upstream.send_aside(
                    self.client.protocol,
                    bytes,
                    ticket,
                    self.reply_sender.clone(),
                );
                Flow::Next
            }
            Step::Unpin => self.unpin(input),
            Step::ResumeMulti => self.resume_multi(input),
            Step::Relabel(redirect) => {
                self.received.add(&self.context.command_metrics, id);
                self.send_batch(input);
                let bytes = input.take_request(request.consumed, request.rewritten);
                let ticket = self.replies.next_ticket();
                let sent = match self.parked {
                    Some(_) => Err(bytes),
                    None => redirect.fetch_relabelled(
                        self.link.conn(),
                        bytes,
                        ticket,
                        self.reply_sender.clone(),
                    ),
                };
                match sent {
                    Ok(()) => {
                        self.replies
                            .push_fetched(false, request.follows, WrittenKeys::new());
                    }
                    Err(bytes) => {
                        // No room now: sent as it is, in order, and the reply unrelabelled.
                        self.replies
                            .command_sent(id, request.sent_at, request.follows);
                        self.forward(bytes, 1, false, input.hotkeys);
                    }
                }
                Flow::Next
            }
            Step::Dedicate { streaming } => self.dedicate(input, request, streaming),
        }
    }

    /// Closes the client a `CLIENT KILL` named, once answered. Nothing the client sent after
    /// killing itself runs, as in Redis.
    pub(super) fn kill(&mut self, kill: Option<Arc<Listing>>) -> Flow {
        let Some(listing) = kill else {
            return Flow::Next;
        };
        listing.kill();
        if Arc::ptr_eq(&listing, &self.listing) {
            self.closing = Some(Closing::Killed);
            return Flow::Stop;
        }
        Flow::Next
    }

    /// Adds a request to the batch for the session's connection (or sends it on its own when
    /// keyward rewrote it). A blocking command and `CLIENT PAUSE` were noted before.
    #[inline(always)]
    fn forward_request(
        &mut self,
        input: &mut Input,
        request: Request,
        writes: &mut Option<WrittenKeys>,
    ) {
        let Request {
            info,
            consumed,
            rewritten,
            sent_at,
            follows,
        } = request;
        self.received.add(&self.context.command_metrics, info.id);
        if rewritten.is_some() {
            // The batch ahead goes first, so sends are numbered in order.
            self.send_batch(input);
        }
        if self.counts_replies() {
            self.replies.command_sent(info.id, sent_at, follows);
        } else if !follows.is_empty() {
            // Relayed as a stream: no reply of its own to answer it.
            self.replies.followers.answered(follows, &[]);
        }
        let holds = may_be_held(info.holding, self.context.upstream.pause.in_force());
        // The command's writes end with its own reply, not an earlier batch's (a rewritten
        // request's batch ahead was sent above).
        if let Some(writes) = writes {
            self.written_keys.append(writes);
        }
        match rewritten {
            None => {
                input.batch.len += consumed;
                input.batch.count += 1;
                input.batch.holds |= holds;
            }
            Some(encoded) => {
                input.bytes.advance(consumed);
                self.forward(encoded, 1, holds, input.hotkeys);
            }
        }
    }

    /// Runs a command keyward answers from the client's connection state, once the replies
    /// owed on the connection it may change are in.
    fn run_local_step(
        &mut self,
        input: &mut Input,
        command: LocalCommand,
        request: Request,
    ) -> Flow {
        self.send_batch(input);
        if local::may_change_connection(command) && !self.is_quiet() {
            self.waiting_for_quiet = true;
            return Flow::Stop;
        }
        if self.dedicated_error.is_some() {
            return self.refuse_after_failed_open(input, request.consumed, request.info);
        }
        if let Some(switch) = self.run_local(command, request.info) {
            return Flow::Dedicate(switch);
        }
        self.received
            .add(&self.context.command_metrics, request.info.id);
        input.bytes.advance(request.consumed);
        Flow::Next
    }

    /// A request that needs a connection of the session's own: opened once nothing is owed on
    /// the current one.
    pub(super) fn dedicate(
        &mut self,
        input: &mut Input,
        request: Request,
        streaming: bool,
    ) -> Flow {
        self.send_batch(input);
        if self.dedicated_error.is_some() {
            return self.refuse_after_failed_open(input, request.consumed, request.info);
        }
        if !self.is_quiet() {
            self.waiting_for_quiet = true;
            return Flow::Stop;
        }
        if let Link::Dedicated { streaming: now, .. } = &mut self.link {
            // Already dedicated: this request turns the connection into a stream.
            *now = true;
            return Flow::Next;
        }
        // Cluster mode: the connection is the session's while the state it is opened for
        // lasts; for a transaction, watched keys or a blocked wait, that ends.
        let transient = !streaming
            && (self.client.multi_deferred
                || request.info.has_flag(flags::BLOCKING)
                || request.info.effect == Effect::DedicatedWithBlockOption
                || matches!(
                    request.info.role,
                    Role::StartsTransaction | Role::Watches | Role::WaitsForReplicas
                ));
        let request_bytes = match (&self.context.upstream.cluster, request.rewritten) {
            (None, _) => Bytes::new(),
            (Some(_), Some(rewritten)) => rewritten,
            (Some(_), None) => Bytes::copy_from_slice(&input.bytes[..request.consumed]),
        };
        Flow::Dedicate(Switch {
            streaming,
            for_monitor: request.info.role == Role::Monitor,
            login: None,
            request: request_bytes,
            transient,
        })
    }
}
