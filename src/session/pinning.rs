//! In cluster mode a session's own connection reaches one node: the primary serving the
//! first key of the command it was opened for (a transaction's first key, a blocking
//! command's key, a watched key). Commands for keys that node does not serve cannot run on
//! it: once the state the connection was opened for has ended and nothing is owed on it, the
//! session goes back to the routed, shared connections; while it lasts, such a command gets
//! Redis Cluster's own `-CROSSSLOT` (inside `MULTI`, the transaction is then aborted, as Redis
//! aborts one whose command it refused).

use super::link::Link;
use super::pipeline::{Flow, Input, Step};
use super::Session;
use crate::command::{CommandInfo, Role};
use crate::config::HostPort;
use crate::resp::reply;
use crate::resp::request::Args;
use crate::upstream::cluster::{key_slot, CROSSSLOT};

/// The node a session's own connection reaches, and what keeps the session on it.
pub(super) struct Pin {
    pub(super) node: HostPort,
    /// Opened for state that ends (a transaction, watched keys, a blocking command), rather
    /// than for state that lasts (tracking, another user's login, pub/sub).
    pub(super) transient: bool,
    /// `WATCH` is in force on the connection.
    watching: bool,
}

impl Pin {
    pub(super) fn new(node: HostPort, transient: bool) -> Pin {
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
    /// For a request the session's own connection would forward: `Some` when its keys are
    /// served by another node than the connection's.
    pub(super) fn step_off_pin(&self, info: &CommandInfo, args: &Args<'_>) -> Option<Step> {
        let pin = self.pin.as_ref()?;
        let map = self.context.upstream.cluster.as_ref()?.map()?;
        let mut keys = Vec::new();
        info.key_positions(args, &mut keys);
        let mut slots = keys.iter().filter_map(|&at| args.get(at)).map(key_slot);
        let elsewhere = slots.any(|slot| {
            let owner = map.owner(slot).map(|owner| &map.shards[owner].primary);
            owner != Some(&pin.node)
        });
        if !elsewhere {
            return None;
        }
        if pin.transient && !pin.watching && !self.in_transaction && self.counts_replies() {
            return Some(Step::Unpin);
        }
        Some(Step::Answer {
            reply: reply::error(CROSSSLOT),
            kill: None,
        })
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
