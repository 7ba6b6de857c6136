//! In cluster mode a session's own connection reaches one node: the primary serving the
//! first key of the command it was opened for (a transaction's first key, a blocking
//! command's key, a watched key). Commands for keys that node does not serve cannot run on
//! it: once the state the connection was opened for has ended and nothing is owed on it, the
//! session goes back to the routed, shared connections; while it lasts, such a command gets
//! Redis Cluster's own `-CROSSSLOT` (inside `MULTI`, the transaction is then aborted, as Redis
//! aborts one whose command it refused).

use bytes::{Bytes, BytesMut};

use super::link::Link;
use super::pipeline::{Flow, Input, Step};
use super::Session;
use crate::command::{CommandInfo, LocalCommand, Role};
use crate::inbox;
use crate::resp::frame;
use crate::resp::reply;
use crate::resp::request::Args;
use crate::upstream::cluster::{key_slot, NodeCell, CROSSSLOT};
use crate::upstream::{Batch, Reply};

/// The node a session's own connection reaches, and what keeps the session on it.
pub(super) struct Pin {
    pub(super) node: NodeCell,
    /// Opened for state that ends (a transaction, watched keys, a blocking command), rather
    /// than for state that lasts (tracking, another user's login, pub/sub).
    pub(super) transient: bool,
    /// `WATCH` is in force on the connection.
    watching: bool,
}

impl Pin {
    pub(super) fn new(node: NodeCell, transient: bool) -> Pin {
        Pin {
            node,
            transient,
            watching: false,
        }
    }

    /// Notes what a command forwarded on the connection does to its watched keys.
    pub(super) fn follow(&mut self, role: Role) {
        match role {
            Role::Watches => self.watching = true,
            Role::Unwatches | Role::EndsTransaction => self.watching = false,
            _ => {}
        }
    }
}

impl Session {
    /// For a request the session's own connection would forward, in cluster mode: what else
    /// to do with it, if anything.
    ///
    /// Once the state the connection was opened for has ended, a request that is not for
    /// this node's keys alone (keys elsewhere, or none: `SCAN`, `DBSIZE`, `SCRIPT LOAD` must
    /// reach every primary) takes the session back to the routed connections. A `MULTI` then
    /// is answered here: the transaction stays on this connection if its first key is served
    /// here, else it goes where that key is.
    pub(super) fn pinned_step(&self, info: &CommandInfo, args: &Args<'_>) -> Option<Step> {
        let pin = self.pin.as_ref()?;
        let map = self.context.upstream.cluster.as_ref()?.map()?;
        let released =
            pin.transient && !pin.watching && !self.in_transaction && self.counts_replies();
        if released && !self.client.multi_deferred && info.role == Role::StartsTransaction {
            return Some(Step::Local(LocalCommand::DeferredMulti));
        }
        let mut keys = Vec::new();
        info.key_positions(args, &mut keys);
        let mut slots = keys.iter().filter_map(|&at| args.get(at)).map(key_slot);
        let node = pin.node.load();
        let elsewhere = slots.any(|slot| {
            let owner = map.owner(slot).map(|owner| &map.shards[owner].primary);
            owner != Some(&**node)
        });
        match (released, elsewhere, keys.is_empty()) {
            (true, false, _) if self.client.multi_deferred => Some(Step::ResumeMulti),
            (true, true, _) | (true, false, true) => Some(Step::Unpin),
            (false, true, _) => Some(Step::Answer {
                reply: reply::error(CROSSSLOT),
                kill: None,
            }),
            _ => None,
        }
    }

    /// Replies from the session's own connection, with any `MOVED` or `ASK` replaced: the
    /// connection is bound to its node, so keyward cannot follow them, and the client must
    /// never see one (see
    /// [`bound_redirection`](crate::upstream::cluster::Cluster::bound_redirection)).
    pub(super) fn without_redirections(&self, reply: Reply, pin: &Pin) -> Reply {
        let Reply::Frames {
            bytes,
            count,
            lengths,
        } = reply
        else {
            return reply;
        };
        let Some(cluster) = &self.context.upstream.cluster else {
            return Reply::Frames {
                bytes,
                count,
                lengths,
            };
        };
        let redirection =
            |frame: &[u8]| frame.starts_with(b"-MOVED ") || frame.starts_with(b"-ASK ");
        if !frame::frames(&bytes).any(redirection) {
            return Reply::Frames {
                bytes,
                count,
                lengths,
            };
        }
        let node = pin.node.load();
        let redirected = |frame: &[u8]| cluster.bound_redirection(frame, &node);
        let mut rewritten = BytesMut::with_capacity(bytes.len());
        let mut new_lengths = Vec::with_capacity(lengths.len());
        for frame in frame::frames(&bytes) {
            let frame = redirected(frame).unwrap_or_else(|| bytes.slice_ref(frame));
            if !lengths.is_empty() {
                new_lengths.push(frame.len() as u32);
            }
            rewritten.extend_from_slice(&frame);
        }
        Reply::Frames {
            bytes: rewritten.freeze(),
            count,
            lengths: new_lengths,
        }
    }

    /// The transaction whose `MULTI` keyward answered starts on the session's own
    /// connection: `MULTI` goes ahead of the request, its `+OK` (already given) dropped.
    pub(super) fn resume_multi(&mut self, input: &mut Input) -> Flow {
        self.send_batch(input);
        if self.parked.is_some() {
            return Flow::Stop;
        }
        let (dropped, _) = inbox::channel();
        let multi = Batch {
            bytes: Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n"),
            count: 1,
            reply_to: dropped.into(),
            tracked: false,
            measured: None,
            hold: None,
            lane: None,
        };
        if self.link.conn().send(multi).is_err() {
            // The connection cannot take it: the transaction opens one of its own.
            return self.unpin(input);
        }
        self.start_deferred_transaction();
        self.flow_after_marker()
    }

    /// Leaves the session's own connection for the routed, shared ones, once nothing is owed
    /// on it; the request at the front then runs again there.
    pub(super) fn unpin(&mut self, input: &mut Input) -> Flow {
        self.send_batch(input);
        if !self.is_quiet() {
            self.waiting_for_quiet = true;
            return Flow::Stop;
        }
        self.pin = None;
        self.blocked = false;
        self.listing.set_redis_id(None);
        let (protocol, db, id) = (self.client.protocol, self.client.db, self.client.id);
        self.link = Link::Pooled(self.context.upstream.pooled(protocol, db, id));
        Flow::Next
    }
}
