//! Lock fairness: `[[lock]]` rules turn spin-retry locks into FIFO queues.
//!
//! Apps take a lock with `SET key token NX PX ms` and, when Redis answers nil, sleep and try
//! again. Under contention a newcomer often beats a client that has waited for seconds, and
//! the retries flood Redis. For a key a lock rule names, keyward answers a losing attempt only
//! when it wins: the attempt waits in a queue for the key, and when the lock is released
//! keyward sends the head waiter's own command again (its own token and expiry) on the
//! waiter's connection. Redis alone decides who holds the lock, so two keywards in front of
//! one Redis never both grant it.
//!
//! A release is noticed however it happens: after every losing try keyward reads the key's
//! `PTTL` with tracking on, so Redis tells the invalidation connection when the key is deleted,
//! overwritten or expires; the `PTTL` also arms a timer as the safety net.

pub mod attempt;
mod phase;
mod queue;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::config::rules::Mode;
use crate::config::LockRule;
use crate::policy::matcher::RuleMatcher;
use crate::upstream::{ConnHandle, ReplySender};
pub use attempt::LockAttempt;
pub use phase::Queued;
use queue::Queue;

/// One `[[lock]]` rule and its metrics.
pub struct RuleLocks {
    pub rule: LockRule,
    matcher: RuleMatcher,
    metrics: LockMetrics,
}

struct LockMetrics {
    wait: Histogram,
    waiters: Gauge,
    immediate: Counter,
    after_wait: Counter,
    timeout: Counter,
    retries_saved: Counter,
    contended: Counter,
}

impl RuleLocks {
    pub fn new(rule: LockRule) -> RuleLocks {
        let name = rule.name.get_ref().clone();
        let grants = |outcome: &'static str| counter!("keyward_lock_grants_total", "rule" => name.clone(), "outcome" => outcome);
        let metrics = LockMetrics {
            wait: histogram!("keyward_lock_wait_seconds", "rule" => name.clone()),
            waiters: gauge!("keyward_lock_waiters", "rule" => name.clone()),
            immediate: grants("immediate"),
            after_wait: grants("after_wait"),
            timeout: grants("timeout"),
            retries_saved: counter!("keyward_lock_retries_saved_total", "rule" => name.clone()),
            contended: counter!("keyward_lock_contended_total", "rule" => name),
        };
        RuleLocks {
            matcher: RuleMatcher::compile(&rule),
            rule,
            metrics,
        }
    }

    pub fn name(&self) -> &str {
        self.rule.name.get_ref()
    }

    pub fn matches_key(&self, key: &[u8]) -> bool {
        self.matcher.matches_key(key)
    }

    pub fn is_shadow(&self) -> bool {
        self.rule.mode == Mode::Shadow
    }

    fn max_wait(&self) -> Duration {
        self.rule.max_wait.get()
    }
}

/// A client waiting for a lock.
struct Waiter {
    rule: Arc<RuleLocks>,
    /// The client's own `SET … NX …`, sent again on its behalf.
    request: Bytes,
    /// The client's pooled connection: its commands stay in order there.
    conn: ConnHandle,
    reply_to: ReplySender,
    ticket: u64,
    /// The client's token (the `SET` value), shown as the holder once it wins.
    token: Bytes,
    /// `SET … GET` answers the old value when it loses and nil when it wins.
    with_get: bool,
    since: Instant,
    /// The reply Redis gave to the latest losing try, answered on `max_wait`.
    lost_reply: Option<Bytes>,
    /// The client closed its side: it is answered now, not when its turn comes.
    gave_up: bool,
}

/// A lock: a key in a database. Clients of both protocols wait in one queue (each waiter is
/// tried on its own connection, and gets replies in its own protocol).
type LockKey = (u32, Bytes);

/// Every queue of waiters, by key.
#[derive(Default)]
pub struct LockTable {
    queues: Mutex<FxHashMap<LockKey, Arc<Queue>>>,
}

/// One contended key, for `KEYWARD LOCKS` and `/locks`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LockReport {
    pub key: String,
    pub rule: String,
    pub db: u32,
    /// The token of the client keyward last granted the lock, if keyward granted it.
    pub holder: Option<String>,
    pub waiters: usize,
    pub oldest_wait_ms: u64,
}

impl LockTable {
    /// Takes a lock attempt: tried at once if nobody waits for the key, else queued behind
    /// the waiters already there. The answer comes as `Reply::Fetched`.
    pub fn attempt(self: &Arc<Self>, attempt: LockAttempt) {
        let LockAttempt {
            claim,
            db,
            request,
            conn,
            reply_to,
            ticket,
        } = attempt;
        let rule = claim.rule;
        let key = (db, claim.key);
        let mut waiter = Waiter {
            rule: Arc::clone(&rule),
            request,
            conn,
            reply_to,
            ticket,
            token: claim.token,
            with_get: claim.with_get,
            since: Instant::now(),
            lost_reply: None,
            gave_up: false,
        };
        if rule.is_shadow() {
            queue::try_once(waiter);
            return;
        }
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get(&key) {
            match queue.push(waiter) {
                None => return,
                // That queue's driver is finishing: a new queue takes over.
                Some(returned) => waiter = returned,
            }
        }
        rule.metrics.waiters.increment(1.0);
        let max_waiters = rule.rule.max_waiters.get() as usize;
        let queue = Arc::new(Queue::new(key.1.clone(), Some(waiter), max_waiters));
        queues.insert(key.clone(), Arc::clone(&queue));
        drop(queues);
        let table = Arc::clone(self);
        tokio::spawn(async move {
            queue::drive(&queue).await;
            let mut queues = table.queues.lock();
            if queues
                .get(&key)
                .is_some_and(|current| Arc::ptr_eq(current, &queue))
            {
                queues.remove(&key);
            }
        });
    }

    /// Redis said `key` changed (deleted, overwritten, expired): its queues try again.
    pub fn released(&self, key: &[u8]) {
        let queues = self.queues.lock();
        for ((_, name), queue) in queues.iter() {
            if &name[..] == key {
                queue.wake();
            }
        }
    }

    /// The client waiting with `ticket` for the lock on `key` closed its side: it gets Redis's
    /// answer now (the nil it got, or one more try) instead of waiting for its turn.
    pub fn leave(&self, db: u32, key: &Bytes, reply_to: &ReplySender, ticket: u64) {
        let queues = self.queues.lock();
        if let Some(queue) = queues.get(&(db, key.clone())) {
            queue.give_up(reply_to, ticket);
        }
    }

    /// The invalidation connection dropped: releases may have gone unnoticed.
    pub fn wake_all(&self) {
        let queues = self.queues.lock();
        for queue in queues.values() {
            queue.wake();
        }
    }

    pub fn report(&self) -> Vec<LockReport> {
        let queues = self.queues.lock();
        let mut reports: Vec<LockReport> = queues
            .iter()
            .filter_map(|((db, _), queue)| queue.report(*db))
            .collect();
        reports.sort_by_key(|report| std::cmp::Reverse(report.oldest_wait_ms));
        reports
    }
}
