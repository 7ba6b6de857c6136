//! Forwarded commands awaiting their replies, in the order they were sent: what latency
//! metrics and the phases that follow requests (hot keys) need of each reply once it comes.

use std::collections::VecDeque;

use quanta::Instant;

use crate::policy::phases::{Followers, Follows};
use crate::resp::frame;

/// Forwarded commands awaiting their replies: runs of one command sent at one time, for
/// latency metrics (one record per run), and beside them the commands phases follow, by
/// their place in the order of sending, each answered with its own reply frame.
#[derive(Default)]
pub(super) struct Sent {
    runs: VecDeque<SentRun>,
    pub(super) followed: VecDeque<(u64, Follows)>,
    /// Commands sent (less those unsent), and commands answered, since the session began.
    sent: u64,
    answered: u64,
}

struct SentRun {
    command_id: usize,
    at: Instant,
    count: usize,
}

impl Sent {
    pub(super) fn push(&mut self, command_id: usize, at: Instant, follows: Follows) {
        if !follows.is_empty() {
            self.followed.push_back((self.sent, follows));
        }
        self.sent += 1;
        match self.runs.back_mut() {
            Some(run) if run.command_id == command_id && run.at == at => run.count += 1,
            _ => self.runs.push_back(SentRun {
                command_id,
                at,
                count: 1,
            }),
        }
    }

    /// The place in the order of sending of the first of the latest `count` commands sent.
    pub(super) fn first_of_latest(&self, count: u32) -> u64 {
        self.sent.saturating_sub(u64::from(count))
    }

    /// Forgets the latest `count` sends; the followed ones among them are answered empty.
    pub(super) fn unsend(&mut self, mut count: usize, followers: &mut Followers) {
        while count > 0 {
            let Some(run) = self.runs.back_mut() else {
                break;
            };
            let taken = count.min(run.count);
            run.count -= taken;
            count -= taken;
            self.sent -= taken as u64;
            if run.count == 0 {
                self.runs.pop_back();
            }
        }
        while self.followed.back().is_some_and(|(at, _)| *at >= self.sent) {
            if let Some((_, follows)) = self.followed.pop_back() {
                followers.answered(follows, &[]);
            }
        }
    }

    /// Removes the oldest sends that `answered` covers, calling `replied` for each run (or
    /// part of one), and answers the followed commands among them with their own frames.
    pub(super) fn take(
        &mut self,
        answered: Answered<'_>,
        followers: &mut Followers,
        mut replied: impl FnMut(usize, Instant, usize),
    ) {
        let first = self.answered;
        let mut count = answered.count;
        while count > 0 {
            let Some(run) = self.runs.front_mut() else {
                break;
            };
            let taken = count.min(run.count);
            replied(run.command_id, run.at, taken);
            run.count -= taken;
            count -= taken;
            self.answered += taken as u64;
            if run.count == 0 {
                self.runs.pop_front();
            }
        }
        // Replies are looked at only as far as the last followed command among them.
        let mut replies = frame::replies(answered.replies, answered.lengths, answered.count);
        let mut next_frame = first;
        while self
            .followed
            .front()
            .is_some_and(|(at, _)| *at < self.answered)
        {
            let Some((at, follows)) = self.followed.pop_front() else {
                break;
            };
            let frame = replies.nth((at - next_frame) as usize).unwrap_or_default();
            next_frame = at + 1;
            followers.answered(follows, frame);
        }
    }
}

/// The oldest sends that have their answers: `count` of them, with `replies` (one frame
/// each) or none when they timed out or failed.
pub(super) struct Answered<'a> {
    pub count: usize,
    pub replies: &'a [u8],
    /// Each reply's length, if the connection measured them (else they are walked).
    pub lengths: &'a [u32],
}

impl Answered<'_> {
    pub(super) fn none(count: usize) -> Answered<'static> {
        Answered {
            count,
            replies: &[],
            lengths: &[],
        }
    }
}
