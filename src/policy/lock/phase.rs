//! The lock phase: a lock attempt on a key a rule names is taken into the key's queue
//! ([`LockTable::attempt`]), and the client's later requests wait with it. Writes of such keys
//! may release a lock: once Redis has answered one, the key's waiters try again.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;

use super::attempt::{self, Claim, LockAttempt};
use super::LockTable;
use crate::policy::phase::{Decision, Handover, Phase, Subject, Way};
use crate::policy::Policies;
use crate::upstream::{ReplySender, Upstream};

/// A lock attempt waiting in a queue: the key, in its database.
pub struct Queued {
    db: u32,
    key: Bytes,
}

impl Phase for LockTable {
    type Session = ();
    /// Boxed: a claim is the largest thing a phase takes, and every request's decision is
    /// as large as the largest; a lock attempt is rare enough to pay for the allocation.
    type Taken = Box<Claim>;
    type Held = Queued;
    type Follow = Infallible;
    type Follower = ();

    fn new(_: &Arc<Upstream>) -> LockTable {
        LockTable::default()
    }

    /// Lock attempts, and writes that may release a lock.
    #[inline]
    fn active(&self, policies: &Policies, way: Way) -> bool {
        way.forwarded() && !policies.locks.is_empty()
    }

    /// Only on a shared connection: the waiter is tried again on it, in the client's order.
    #[inline(always)]
    fn decide(
        &self,
        policies: &Policies,
        _: &mut (),
        subject: &Subject<'_, '_>,
    ) -> Decision<Box<Claim>> {
        if subject.way != Way::Shared {
            return Decision::Pass;
        }
        match attempt::claim(&policies.locks, subject.info, subject.args) {
            Some(claim) => Decision::Take(Box::new(claim)),
            None => Decision::Pass,
        }
    }

    fn hand_over(self: &Arc<Self>, claim: Box<Claim>, handover: Handover<'_>) -> Option<Queued> {
        let queued = Queued {
            db: handover.db,
            key: claim.key.clone(),
        };
        self.attempt(LockAttempt {
            claim: *claim,
            db: handover.db,
            request: handover.request,
            conn: handover.conn.clone(),
            reply_to: handover.reply_to.clone(),
            ticket: handover.ticket,
        });
        Some(queued)
    }

    fn give_up(&self, queued: &Queued, reply_to: &ReplySender, ticket: u64) {
        self.leave(queued.db, &queued.key, reply_to, ticket);
    }

    #[inline]
    fn watches_writes(&self, policies: &Policies) -> bool {
        !policies.locks.is_empty()
    }

    /// Only writes of keys that rules in force name: a shadow rule queues nobody.
    fn writing(&self, policies: &Policies, _: &mut Self::Session, key: &[u8]) -> bool {
        policies
            .locks
            .iter()
            .any(|rule| !rule.is_shadow() && rule.matches_key(key))
    }

    fn written(&self, _: &mut Self::Session, key: &[u8]) {
        self.released(key);
    }

    fn flushing(&self, policies: &Policies, _: &mut Self::Session) -> bool {
        !policies.locks.is_empty()
    }

    fn flushed(&self, _: &mut Self::Session) {
        self.wake_all();
    }

    fn watches_changes(&self, policies: &Policies) -> bool {
        !policies.locks.is_empty()
    }

    fn changed(&self, _: &Policies, key: &[u8]) {
        self.released(key);
    }

    fn all_changed(&self, _: &Policies) {
        self.wake_all();
    }
}
