//! The rate-limit phase: the first rule in force that matches decides (allow, refuse, delay,
//! or ask Redis for a global rule); a shadow rule only counts, and the search goes on past it.
//!
//! A request that a rule delays, or whose global rule must first ask Redis, stays at the front
//! of the session's input and meets this phase again when the delay ends or the answer comes.
//! What a session keeps here ([`RateLimitSession`]) makes sure that judging it again never
//! charges a bucket twice.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::global::{self, Answer};
use super::{Requester, Verdict};
use crate::policy::phase::{Decision, Handover, Phase, Subject, Way};
use crate::policy::Policies;
use crate::upstream::{Reply, Upstream};

pub struct RateLimiting;

/// Where the rate limits stand on the request at the front of a session's input.
#[derive(Debug, Default)]
pub struct RateLimitSession {
    /// Reused for `bucket = "client"`: `name:<name>`, else `addr:<ip>`, so that a client
    /// cannot name itself after another's address. Written when a rule first needs it for a
    /// request (empty until then).
    client_bucket: Vec<u8>,
    /// The rule (by index) the request is judged from when it comes back: the one that held
    /// it, or whose question to Redis is out. Those before it did not match it or only counted
    /// it in shadow (a rule in force that lets a request through decides).
    from_rule: usize,
    /// Buckets already charged for this request (which also keeps a key named twice in one
    /// command from being charged twice).
    charged: Vec<u64>,
    /// Redis's answer to the question of the global rule at `from_rule`.
    answer: Option<Answer>,
    /// When the request was first delayed, to enforce `max_delay`.
    delayed_since: Option<Instant>,
}

impl RateLimitSession {
    /// The answer to `rule`'s question, if it asked one.
    fn take_answer(&mut self, rule: usize) -> Option<Answer> {
        if rule == self.from_rule {
            self.answer.take()
        } else {
            None
        }
    }

    fn bucket_for(&mut self, subject: &Subject<'_, '_>) {
        self.client_bucket.clear();
        match subject.sender.name {
            Some(name) => {
                self.client_bucket.extend_from_slice(b"name:");
                self.client_bucket.extend_from_slice(name);
            }
            None => {
                self.client_bucket.extend_from_slice(b"addr:");
                self.client_bucket.extend_from_slice(subject.sender.address);
            }
        }
    }
}

impl Phase for RateLimiting {
    type Session = RateLimitSession;
    type Taken = Infallible;
    type Held = Infallible;
    type Follow = Infallible;
    type Follower = ();

    fn new(_: &Arc<Upstream>) -> RateLimiting {
        RateLimiting
    }

    #[inline]
    fn active(&self, policies: &Policies, way: Way) -> bool {
        way.forwarded() && !policies.rate_limits.is_empty()
    }

    #[inline(always)]
    fn decide(
        &self,
        policies: &Policies,
        session: &mut RateLimitSession,
        subject: &Subject<'_, '_>,
    ) -> Decision<Infallible> {
        if policies.rate_limits.is_empty() || !subject.way.forwarded() {
            return Decision::Pass;
        }
        let delayed = session
            .delayed_since
            .map_or(Duration::ZERO, |since| since.elapsed());
        let from = session.from_rule;
        let rules = policies.rate_limits.get(from..).unwrap_or_default();
        for (index, limiter) in (from..).zip(rules) {
            let matcher = limiter.matcher();
            if !matcher.applies_to(subject.info) {
                continue;
            }
            let mut matching = matcher
                .matching_keys(subject.args, subject.key_positions)
                .peekable();
            if matcher.has_key_patterns() && matching.peek().is_none() {
                continue;
            }
            if limiter.buckets_by_client() && session.client_bucket.is_empty() {
                session.bucket_for(subject);
            }
            let answer = session.take_answer(index);
            let requester = Requester {
                client: &session.client_bucket,
            };
            let charged = &mut session.charged;
            let verdict =
                limiter.decide(matching, &requester, subject.now, delayed, answer, charged);
            match verdict {
                Verdict::Allow => {
                    session.charged.clear();
                    if !limiter.is_shadow() {
                        return Decision::Pass;
                    }
                }
                Verdict::Reject(refusal) => return Decision::Answer(refusal),
                Verdict::Delay(wait) => {
                    session.from_rule = index;
                    let now = Instant::now();
                    session.delayed_since.get_or_insert(now);
                    return Decision::HoldUntil(now + wait);
                }
                Verdict::AskRedis(question) => {
                    session.from_rule = index;
                    return Decision::Ask(question);
                }
            }
        }
        Decision::Pass
    }

    /// Forgets the request judged, for the next one. The lists keep their memory, so judging
    /// a command costs no allocation once a session has judged a few.
    #[inline(always)]
    fn done(&self, session: &mut RateLimitSession) {
        // A command naming a million keys leaves no million-entry list behind it.
        const KEPT: usize = 64;
        session.client_bucket.clear();
        session.from_rule = 0;
        session.charged.clear();
        if session.charged.capacity() > KEPT {
            session.charged.shrink_to(KEPT);
        }
        session.answer = None;
        session.delayed_since = None;
    }

    fn answered(&self, session: &mut RateLimitSession, answer: Option<Reply>) {
        let answer = match answer {
            Some(Reply::Frames { bytes, .. }) => global::read_answer(&bytes),
            Some(Reply::Failed { error, .. }) => {
                Err(String::from_utf8_lossy(&error).trim().to_string())
            }
            _ => Err("no answer from Redis".to_string()),
        };
        session.answer = Some(answer);
    }

    fn hand_over(self: &Arc<Self>, taken: Infallible, _: Handover<'_>) -> Option<Infallible> {
        match taken {}
    }
}

#[cfg(test)]
mod tests {
    use super::{RateLimitSession, RateLimiting};
    use crate::policy::phase::Phase;

    /// What a session kept of a request goes when the request is done with, and its lists
    /// keep no more than a little memory.
    #[test]
    fn a_request_done_with_leaves_nothing_behind() {
        let mut session = RateLimitSession {
            from_rule: 3,
            charged: (0..10_000).collect(),
            answer: Some(Ok(None)),
            delayed_since: Some(std::time::Instant::now()),
            ..RateLimitSession::default()
        };
        RateLimiting.done(&mut session);
        assert!(session.from_rule == 0 && session.charged.is_empty());
        assert!(session.charged.capacity() <= 64);
        assert!(session.answer.is_none() && session.delayed_since.is_none());
    }
}
