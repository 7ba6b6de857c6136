//! `[[route]]`: reads that may go to a replica of the primary, to spread read load.
//!
//! A read on a shared connection whose keys all match a route's patterns, with a command the
//! route names, goes to a replica of the primary serving its keys (in a cluster, the primary
//! of their hash slot) that is online and at most `max_lag` behind, taking turns
//! (`read_from = "replica"`; with `"replica_preferred"` the primary serves it when no replica
//! qualifies). Its reply takes its place among the client's replies, whichever answers first.
//! Until keyward has heard from a primary about its replicas (just after the first routed read
//! of its keys, or after a failover), the primary serves its reads.
//!
//! A session reads from the primary alone while Redis has not answered a write of its (on any
//! connection), and for `max_lag` after it answered the last: a replica may not have the
//! write yet. A write inside a transaction counts as answered when Redis queues it, and
//! `EXEC` when the session sends it. Writes never go to a replica.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use metrics::{counter, Counter};

use super::matcher::RuleMatcher;
use super::phase::{Decision, Handover, Phase, Subject, Way};
use super::Policies;
use crate::command::{flags, Role};
use crate::config::{HostPort, ReadFrom, RouteRule};
use crate::resp::reply;
use crate::upstream::cluster::key_slot;
use crate::upstream::{send_own_when_room, ConnHandle, ReplicaPick, Reply, Upstream};

/// One `[[route]]` rule, compiled.
pub struct Route {
    pub rule: RouteRule,
    matcher: RuleMatcher,
    replica_reads: Counter,
}

impl Route {
    pub fn new(rule: RouteRule) -> Route {
        Route {
            matcher: RuleMatcher::compile(&rule),
            replica_reads: counter!("keyward_replica_reads_total", "route" => rule.name.get_ref().clone()),
            rule,
        }
    }
}

/// The route phase: the replicas it sends reads to are the upstream's.
pub struct Routing {
    upstream: Arc<Upstream>,
}

/// What a session keeps of its writes. A write may wait in keyward or in its connection's queue
/// for longer than `max_lag` (Redis is slow), and a read sent to a replica meanwhile would run
/// before it: so the time that counts is when Redis answered it.
#[derive(Default)]
pub struct Writes {
    /// When it last wrote, or last heard Redis answer a write of its: the later.
    last: Option<Instant>,
    /// Keys its writes name that Redis has not answered yet (one per key written, or per
    /// command that changes every key).
    unanswered: u32,
}

impl Writes {
    /// It wrote, or Redis answered a write of its, now.
    fn mark(&mut self) {
        self.last = Some(Instant::now());
    }

    /// Whether a replica may not have what the session wrote.
    fn lately(&self, max_lag: std::time::Duration) -> bool {
        self.unanswered > 0 || self.last.is_some_and(|at| at.elapsed() < max_lag)
    }
}

/// A read taken for a replica.
pub struct ToReplica {
    conn: ConnHandle,
    route: Arc<Route>,
}

impl Routing {
    /// The primary serving every one of `keys`: in a cluster, only keys of one hash slot have
    /// one.
    fn primary_serving<'k>(&self, mut keys: impl Iterator<Item = &'k [u8]>) -> Option<HostPort> {
        let first = keys.next()?;
        let Some(cluster) = &self.upstream.cluster else {
            return Some(HostPort::clone(&self.upstream.address()));
        };
        let slot = key_slot(first);
        if !keys.all(|key| key_slot(key) == slot) {
            return None;
        }
        cluster.primary_of_slot(slot)
    }
}

impl Phase for Routing {
    type Session = Writes;
    type Taken = ToReplica;
    type Held = Infallible;
    type Follow = Infallible;
    type Follower = ();

    fn new(upstream: &Arc<Upstream>) -> Routing {
        Routing {
            upstream: Arc::clone(upstream),
        }
    }

    /// Reads on shared connections to route, and writes anywhere to remember.
    #[inline]
    fn active(&self, policies: &Policies, way: Way) -> bool {
        way.forwarded() && !policies.routes.is_empty()
    }

    fn decide(
        &self,
        policies: &Policies,
        writes: &mut Writes,
        subject: &Subject<'_, '_>,
    ) -> Decision<ToReplica> {
        let info = subject.info;
        if !info.has_flag(flags::READONLY) {
            if info.has_flag(flags::WRITE) || info.role == Role::EndsTransaction {
                writes.mark();
            }
            return Decision::Pass;
        }
        // Replicas are reached in database 0.
        if subject.way != Way::Shared || subject.db != 0 || subject.key_positions.is_empty() {
            return Decision::Pass;
        }
        let keys = || {
            subject
                .key_positions
                .iter()
                .filter_map(|&at| subject.args.get(at))
        };
        let route = policies.routes.iter().find(|route| {
            route.matcher.applies_to(info) && keys().all(|key| route.matcher.matches_key(key))
        });
        let Some(route) = route else {
            return Decision::Pass;
        };
        let max_lag = route.rule.max_lag.get();
        if route.rule.read_from == ReadFrom::Primary || writes.lately(max_lag) {
            return Decision::Pass;
        }
        // In a cluster, the replicas of the primary serving the keys, if one serves them all
        // (keys of several slots go the way Redis Cluster has them go).
        let Some(primary) = self.primary_serving(keys()) else {
            return Decision::Pass;
        };
        match self.upstream.replica(&primary, max_lag, subject.protocol) {
            ReplicaPick::Replica(conn) => Decision::Take(ToReplica {
                conn,
                route: Arc::clone(route),
            }),
            ReplicaPick::NotKnownYet => Decision::Pass,
            ReplicaPick::NoneWithinLag if route.rule.read_from == ReadFrom::ReplicaPreferred => {
                Decision::Pass
            }
            ReplicaPick::NoneWithinLag => Decision::Answer(reply::error(&format!(
                "ERR keyward: no replica within max_lag {:?} for route {:?}",
                max_lag,
                route.rule.name.get_ref()
            ))),
        }
    }

    /// Every write, while routes exist: a session's reads stay on the primary until Redis has
    /// answered its writes.
    #[inline]
    fn watches_writes(&self, policies: &Policies) -> bool {
        !policies.routes.is_empty()
    }

    fn writing(&self, _: &Policies, writes: &mut Writes, _: &[u8]) -> bool {
        writes.unanswered += 1;
        true
    }

    fn written(&self, writes: &mut Writes, _: &[u8]) {
        writes.unanswered = writes.unanswered.saturating_sub(1);
        writes.mark();
    }

    fn flushing(&self, policies: &Policies, writes: &mut Writes) -> bool {
        self.writing(policies, writes, &[])
    }

    fn flushed(&self, writes: &mut Writes) {
        self.written(writes, &[]);
    }

    /// The read goes to the replica's connection, whatever the session's own waits for.
    fn uses_session_connection(_: &ToReplica) -> bool {
        false
    }

    fn hand_over(self: &Arc<Self>, taken: ToReplica, handover: Handover<'_>) -> Option<Infallible> {
        taken.route.replica_reads.increment(1);
        let (reply_to, ticket) = (handover.reply_to.clone(), handover.ticket);
        let (primary, address) = (handover.conn.clone(), handover.address.clone());
        let request = handover.request;
        tokio::spawn(async move {
            let mut bytes = ask(&taken.conn, request.clone(), &address).await;
            // The slot moved while the replica was chosen: its primary, through the session's
            // connection, knows where it went.
            if bytes.starts_with(b"-MOVED ") || bytes.starts_with(b"-ASK ") {
                bytes = ask(&primary, request, &address).await;
            }
            let _ = reply_to.send(Reply::Fetched { ticket, bytes });
        });
        None
    }
}

/// Sends `request` on `conn` (once its queue has room) and waits for its reply, or the error
/// reply owed for it.
async fn ask(conn: &ConnHandle, request: Bytes, address: &HostPort) -> Bytes {
    match send_own_when_room(conn, request, 1, false).await {
        Ok(replies) => replies.all().await.unwrap_or_else(|error| error),
        Err(error) => error.reply(address, 1),
    }
}
