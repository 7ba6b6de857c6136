//! Writes that cache and lock rules watch, from the moment a session forwards them until Redis
//! answers: reads of their keys are not cached meanwhile, and lock queues waiting on a key try
//! again once a write that may have released it is answered.

use bytes::Bytes;

use super::Session;
use crate::command::{flags, CommandInfo, Role};
use crate::context::Context;
use crate::policy::cache::{Coherence, Written};
use crate::policy::Policies;
use crate::resp::request::Args;

impl Session {
    /// Hands on the written keys whose writes Redis has answered: reads of them may be
    /// cached again, and waiters for a lock they name try again.
    pub(super) fn finish_writes(&mut self) {
        let written = self.replies.take_finished_writes();
        end_writes(&self.context, written);
    }
}

/// A write through keyward: the cached reads of its keys go at once, and no read of them is
/// stored until Redis has answered it; keys that cache or lock rules watch are remembered in
/// `written` until then. A flush drops everything.
pub(super) fn note_writes(
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
    if info.role == Role::ChangesEveryKey {
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
pub(super) fn end_writes(context: &Context, written: Vec<Written>) {
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

/// The lock attempt a session waits for.
pub(super) struct AwaitedLock {
    pub(super) ticket: u64,
    pub(super) db: u32,
    pub(super) key: Bytes,
    /// What the attempt writes, ended when it is answered.
    pub(super) writes: Vec<Written>,
}
