//! The upstream connection a session uses, and its moves: from the shared pool to a
//! connection of its own (for connection state) and back on `RESET`, and the commands keyward
//! answers itself from the client's connection state.

use bytes::{Buf, Bytes};

use super::cluster_view::Whereabouts;
use super::local::{self, LocalContext, Outcome};
use super::pinning::Pin;
use super::pipeline::{has_block_option, Flow, Input, Step};
use super::{Closing, Session};
use crate::command::{CommandInfo, Effect, LocalCommand, Role};
use crate::resp::reply;
use crate::resp::request::Args;
use crate::upstream::{ConnHandle, Login, OwnConnection, UpstreamError};

impl Session {
    /// Answers the request that needed a dedicated connection with the error from opening one.
    /// When Redis refused the opening (a busy script, the client's own wrong password), the
    /// client goes on; else it is closed: running what it pipelined after (the commands of a
    /// `MULTI`, say) on the shared connection would change their meaning.
    pub(super) fn refuse_after_failed_open(
        &mut self,
        input: &mut Input,
        consumed: usize,
        info: &CommandInfo,
    ) -> Flow {
        self.received.add(&self.context.command_metrics, info.id);
        input.bytes.advance(consumed);
        if let Some(error) = self.dedicated_error.take() {
            if !error.closes {
                // Inside a `MULTI` keyward deferred, the refusal aborts the transaction, as it
                // would have had `MULTI` reached Redis.
                return self.answer_at_once(error.reply);
            }
            self.replies.push_ready(error.reply, &mut self.output);
        }
        self.closing = Some(Closing::UpstreamGone);
        Flow::Stop
    }

    /// Decides what to do with a request on the session's current connection.
    pub(super) fn step_for(&self, info: &CommandInfo, args: &Args<'_>) -> Step {
        // What keyward answers itself cannot be queued in the transaction Redis keeps (or is
        // about to keep, for a `MULTI` cluster mode deferred): there it is refused as Redis
        // refuses a command not allowed, which aborts the transaction.
        if let Some(command) = self.answered_by_keyward(info) {
            if self.in_transaction || self.client.multi_deferred {
                return Step::Refuse(reply::error("ERR Command not allowed inside a transaction"));
            }
            return Step::Local(command);
        }
        match &self.link {
            Link::Dedicated { streaming, .. } => match info.effect {
                // RESET ends every state that made the connection the session's own: the
                // session goes back to the pool (and logs out of keyward, if it requires a
                // password). Redis would log keyward's own connection out instead.
                Effect::Local(LocalCommand::Reset) => Step::Local(LocalCommand::Reset),
                Effect::Streaming if !streaming => Step::Dedicate { streaming: true },
                _ if info.role == Role::Tracking && self.in_cluster() => tracking_refused(),
                _ => self.pinned_step(info, args).unwrap_or(Step::Forward),
            },
            // Cluster mode, after `MULTI`: the transaction's connection opens with this command.
            Link::Pooled(_) if self.client.multi_deferred => match info.effect {
                Effect::Local(command @ (LocalCommand::Reset | LocalCommand::Quit)) => {
                    Step::Local(command)
                }
                _ => Step::Dedicate { streaming: false },
            },
            Link::Pooled(_) => match info.effect {
                Effect::Stateless => Step::Forward,
                Effect::Local(command) => Step::Local(command),
                Effect::Dedicated if info.role == Role::StartsTransaction && self.in_cluster() => {
                    Step::Local(LocalCommand::DeferredMulti)
                }
                Effect::Dedicated if info.role == Role::Tracking && self.in_cluster() => {
                    tracking_refused()
                }
                Effect::Dedicated => Step::Dedicate { streaming: false },
                Effect::Aside => Step::Aside,
                Effect::DedicatedWithBlockOption if has_block_option(args) => {
                    Step::Dedicate { streaming: false }
                }
                Effect::DedicatedWithBlockOption => Step::Forward,
                Effect::Streaming => Step::Dedicate { streaming: true },
                // Cluster mode's views are keyward's own (`answered_by_keyward`).
                Effect::ClusterView { leaves_state: true } => Step::Dedicate { streaming: false },

                Effect::ClusterView {
                    leaves_state: false,
                } => Step::Forward,
            },
        }
    }

    /// What keyward answers itself of this command, never Redis: its own commands, `AUTH` and
    /// `HELLO` with a listen password (the login is with keyward), and in cluster mode the
    /// views of the cluster and the commands of cluster clients that keyward's one node makes
    /// moot (`READONLY`, `READWRITE`, `ASKING`). None on a stream, where everything reaches
    /// Redis and replies are not followed.
    fn answered_by_keyward(&self, info: &CommandInfo) -> Option<LocalCommand> {
        let command = match info.effect {
            Effect::Local(LocalCommand::Keyward) => LocalCommand::Keyward,
            Effect::Local(command @ (LocalCommand::Auth | LocalCommand::Hello))
                if self.context.listen_password.is_some() =>
            {
                command
            }
            Effect::ClusterView { .. } if self.in_cluster() => LocalCommand::Cluster,
            _ => return None,
        };
        self.counts_replies().then_some(command)
    }

    fn whereabouts(&self) -> Whereabouts {
        let cluster = self.context.upstream.cluster.as_ref();
        Whereabouts {
            arrived_at: self.arrived_at,
            listen: self.context.live.load().config.listen.address,
            healthy: cluster.is_some_and(|cluster| cluster.not_ready_because().is_none()),
        }
    }

    pub(super) fn in_cluster(&self) -> bool {
        self.context.upstream.cluster.is_some()
    }

    /// Whether replies are matched to requests (everywhere but on a streaming connection).
    pub(super) fn counts_replies(&self) -> bool {
        !matches!(
            self.link,
            Link::Dedicated {
                streaming: true,
                ..
            }
        )
    }

    /// Whether nothing is owed on the current connection, so the session may switch.
    pub(super) fn is_quiet(&self) -> bool {
        self.replies.outstanding() == 0 && !self.replies.awaiting_fetches()
    }

    /// Runs a local command; `Some` if it must instead go to Redis on a dedicated connection,
    /// opened as the switch says.
    pub(super) fn run_local(
        &mut self,
        command: LocalCommand,
        info: &CommandInfo,
    ) -> Option<Switch> {
        let facts = self.context.upstream.facts();
        let local_context = LocalContext {
            context: &self.context,
            facts: &facts,
            settings: self.context.upstream.settings(),
            listen_password: self.context.listen_password.as_deref(),
            whereabouts: (command == LocalCommand::Cluster).then(|| self.whereabouts()),
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
                    request: Bytes::new(),
                    transient: false,
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

    pub(super) async fn open_dedicated(&mut self, switch: Switch) {
        let Switch {
            streaming,
            for_monitor,
            login,
            request,
            transient,
        } = switch;
        if let Some(opening) = self.opening.take() {
            opening.start();
        }
        let setup = self.client.setup_commands();
        let opened = self
            .context
            .upstream
            .dedicated(
                OwnConnection {
                    protocol: self.client.protocol,
                    db: self.client.db,
                    setup: &setup,
                    login: login.as_ref(),
                    request: &request,
                    follows_subscriptions: streaming && !for_monitor && login.is_none(),
                },
                self.reply_sender.clone(),
                // A `MONITOR` starts after the spare connection it takes is replaced, so that
                // it does not show that connection's handshake.
                for_monitor,
            )
            .await;
        match opened {
            Ok((conn, opening)) => {
                self.as_own_user |= login.is_some();
                if for_monitor {
                    self.monitoring = Some(self.context.upstream.monitoring());
                }
                self.listing.set_redis_id(opening.redis_id);
                self.pin = opening.node.clone().map(|node| Pin::new(node, transient));
                self.link = Link::Dedicated { conn, streaming };
                self.opening = Some(opening);
                if self.client.multi_deferred {
                    self.start_deferred_transaction();
                }
            }
            Err(error) => {
                let address = &self.context.upstream.address();
                self.dedicated_error = Some(DedicatedError {
                    reply: error.reply(address),
                    // Redis refused the opening (a busy script, the client's own wrong
                    // password): the client goes on, and what it sent after meets Redis
                    // (`EXEC without MULTI` after a refused `MULTI`; `EXECABORT` after a
                    // command refused in a deferred one).
                    closes: !matches!(error, UpstreamError::Busy(_) | UpstreamError::Rejected(_)),
                });
            }
        }
    }
}

/// Cluster mode: Redis would track a client's reads on one node only, while keyward reads its
/// keys on every node.
fn tracking_refused() -> Step {
    let reply = reply::error(
        "ERR keyward does not support CLIENT TRACKING in cluster mode: \
         a [[cache]] rule caches on keyward's side instead",
    );
    Step::Answer { reply, kill: None }
}

/// The upstream connection a session currently uses.
pub(super) enum Link {
    Pooled(ConnHandle),
    Dedicated {
        conn: ConnHandle,
        /// Frames no longer match commands one to one (pub/sub, `MONITOR`): everything is
        /// relayed as it comes and nothing is answered locally.
        streaming: bool,
    },
}

impl Link {
    pub(super) fn conn(&self) -> &ConnHandle {
        match self {
            Link::Pooled(conn) | Link::Dedicated { conn, .. } => conn,
        }
    }
}

/// The connection of its own that the request at the front of the input needs first.
pub(super) struct Switch {
    /// Frames will no longer match commands one to one (see `Link::Dedicated`).
    pub(super) streaming: bool,
    /// The request is `MONITOR`.
    pub(super) for_monitor: bool,
    /// The request authenticates as a user keyward does not know: the connection is opened
    /// as that user, so that it works whatever keyward's own credentials are.
    pub(super) login: Option<Login>,
    /// In cluster mode, the request the connection is opened for: its first key says which
    /// node the connection goes to. Empty otherwise.
    pub(super) request: Bytes,
    /// Cluster mode: the state the connection is opened for ends (see [`Pin`]).
    pub(super) transient: bool,
}

/// Why a connection of the session's own could not be opened, for the request that asked.
pub(super) struct DedicatedError {
    pub(super) reply: Bytes,
    /// The client is closed after the reply (see `refuse_after_failed_open`).
    pub(super) closes: bool,
}
