//! The judging phase of a session's requests: deny rules, then rate limits.
//!
//! A session keeps one [`Judging`]: where the policies stand on the request at the front of
//! its input. Most requests are judged at once; one that a rate limit delays, or whose global
//! rule must first ask Redis, stays at the front of the input (with everything pipelined after
//! it) and is judged again when the delay ends or the answer comes, without charging a bucket
//! twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::deny::Client;
use super::rate_limit::global;
use super::rate_limit::Verdict;
use super::{Policies, Progress};
use crate::command::CommandInfo;
use crate::resp::request::Args;
use crate::resp::Protocol;
use crate::upstream::{Batch, Reply, Upstream};

/// How much of the judging a request meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Deny rules and rate limits: a request about to be forwarded.
    Full,
    /// Only whether a deny rule in force refuses it: a request that needs a connection of its
    /// own, checked before one is opened. It is judged in full when it is sent there.
    BeforeDedicating,
    /// Deny rules alone: a request keyward answers itself or sends aside.
    DenyRules,
    /// Nothing to judge (no rule applies to requests of its kind).
    Nothing,
}

/// Who sends the request, as policies see clients.
pub struct Sender<'a> {
    /// The `CLIENT SETNAME` name, if any.
    pub name: Option<&'a [u8]>,
    /// The peer's IP address.
    pub address: &'a [u8],
}

#[derive(Default)]
pub struct Judging {
    /// Reused for `bucket = "client"`: `name:<name>`, else `addr:<ip>`.
    client_bucket: Vec<u8>,
    /// A rate limit holds the request at the front of the input until then.
    pub hold_until: Option<Instant>,
    /// When the held request was first delayed, to enforce `max_delay`.
    delayed_since: Option<Instant>,
    /// Answers to the questions keyward asks Redis for global rate limits, apart from the
    /// client's replies. Opened on first use: most sessions never ask.
    answers: Option<(mpsc::UnboundedSender<Reply>, mpsc::UnboundedReceiver<Reply>)>,
    /// A question is out (for the rate limit with this index); the request at the front of
    /// the input waits for its answer.
    pub awaiting: Option<usize>,
    /// Where the policies stand on the request at the front of the input.
    progress: Progress,
}

impl Judging {
    /// Judges the request at the front of the input. A request let through or refused is
    /// done with; a delayed one is held (see [`Judging::hold_until`]), and one that needs
    /// Redis's answer first is asked about with [`Judging::ask`].
    #[inline(always)]
    pub fn judge(
        &mut self,
        policies: &Policies,
        scope: Scope,
        info: &CommandInfo,
        args: &Args<'_>,
        key_positions: &[usize],
        sender: Sender<'_>,
    ) -> Verdict {
        let verdict = match scope {
            Scope::Nothing => Verdict::Allow,
            Scope::Full => {
                self.client_bucket.clear();
                match sender.name {
                    Some(name) => {
                        self.client_bucket.extend_from_slice(b"name:");
                        self.client_bucket.extend_from_slice(name);
                    }
                    None => {
                        self.client_bucket.extend_from_slice(b"addr:");
                        self.client_bucket.extend_from_slice(sender.address);
                    }
                }
                let client = Client {
                    name: sender.name,
                    address: sender.address,
                    bucket: &self.client_bucket,
                };
                self.progress.follow(policies);
                let delayed = self
                    .delayed_since
                    .map_or(Duration::ZERO, |since| since.elapsed());
                policies.judge(
                    info,
                    args,
                    key_positions,
                    &client,
                    delayed,
                    &mut self.progress,
                )
            }
            Scope::BeforeDedicating | Scope::DenyRules => {
                let client = Client {
                    name: sender.name,
                    address: sender.address,
                    bucket: sender.address,
                };
                let counting_shadow = scope == Scope::DenyRules;
                policies
                    .denies(info, args, key_positions, &client, counting_shadow)
                    .map_or(Verdict::Allow, Verdict::Reject)
            }
        };
        match &verdict {
            Verdict::Allow | Verdict::Reject(_) => {
                self.delayed_since = None;
                self.progress.start_over();
            }
            Verdict::Delay(wait) => {
                let now = Instant::now();
                self.delayed_since.get_or_insert(now);
                self.hold_until = Some(now + *wait);
            }
            Verdict::AskRedis(..) => {}
        }
        verdict
    }

    /// Asks Redis `question` for the rate limit `rule`, on a pooled connection. `false` if it
    /// could not be sent: the rule's `on_error` then decides when the request is judged again.
    pub fn ask(
        &mut self,
        upstream: &Arc<Upstream>,
        client_id: u64,
        rule: usize,
        question: Bytes,
    ) -> bool {
        let batch = Batch {
            bytes: question,
            count: 1,
            reply_to: self
                .answers
                .get_or_insert_with(mpsc::unbounded_channel)
                .0
                .clone(),
            tracked: false,
            measured: false,
            hold: None,
        };
        let conn = upstream.pooled(Protocol::Resp2, 0, client_id);
        if conn.send(batch).is_ok() {
            self.awaiting = Some(rule);
            return true;
        }
        self.progress
            .record_answer(rule, Err("upstream busy or gone".into()));
        false
    }

    /// Redis's answer to the question out; waits for ever when none is.
    pub async fn next_answer(&mut self) -> Option<Reply> {
        match &mut self.answers {
            Some((_, answers)) => answers.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Takes Redis's answer to the question out, for the next judgement.
    pub fn answered(&mut self, answer: Option<Reply>) {
        let rule = self.awaiting.take().unwrap_or_default();
        self.progress.record_answer(
            rule,
            match answer {
                Some(Reply::Frames { bytes, .. }) => global::read_answer(&bytes),
                Some(Reply::Failed { error, .. }) => {
                    Err(String::from_utf8_lossy(&error).trim().to_string())
                }
                _ => Err("no answer from Redis".to_string()),
            },
        );
    }

    /// The request is held: delayed, or waiting for Redis's answer.
    pub fn is_holding(&self) -> bool {
        self.hold_until.is_some() || self.awaiting.is_some()
    }
}
