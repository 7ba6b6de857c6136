//! A router's replies on their way back: each session's batches answered in the order it sent
//! them, whichever node answered first, without one session waiting for another's.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::super::connection::Reply;
use super::super::handle::Hold;
use super::super::reply_to::ReplyTo;

/// The batches whose replies are not all handed back, oldest first.
#[derive(Default)]
pub(super) struct Deliveries {
    waiting: VecDeque<Waiting>,
    /// The id of the first in `waiting`.
    first: u64,
}

/// A session's batch.
struct Waiting {
    reply_to: ReplyTo,
    replies: Vec<Option<Bytes>>,
    /// Replies already handed back, from the first.
    delivered: usize,
    measured: bool,
    _hold: Option<Hold>,
}

impl Waiting {
    fn is_done(&self) -> bool {
        self.delivered == self.replies.len()
    }
}

impl Deliveries {
    /// Takes a batch of `count` commands; its id names it in [`Deliveries::answer`].
    pub(super) fn open(
        &mut self,
        reply_to: ReplyTo,
        count: usize,
        measured: bool,
        hold: Option<Hold>,
    ) -> u64 {
        self.waiting.push_back(Waiting {
            reply_to,
            replies: vec![None; count],
            delivered: 0,
            measured,
            _hold: hold,
        });
        self.first + self.waiting.len() as u64 - 1
    }

    /// The reply to command `index` of batch `batch`.
    pub(super) fn answer(&mut self, batch: u64, index: usize, reply: Bytes) {
        let at = batch.wrapping_sub(self.first) as usize;
        if let Some(waiting) = self.waiting.get_mut(at) {
            waiting.replies[index] = Some(reply);
        }
    }

    /// Hands back every reply that is ready and whose session has nothing older still
    /// owed, and forgets the batches fully answered.
    pub(super) fn deliver(&mut self) {
        let mut unfinished: Vec<usize> = Vec::new();
        for at in 0..self.waiting.len() {
            let this = &self.waiting[at];
            let behind_older = unfinished
                .iter()
                .any(|&older| self.waiting[older].reply_to.same_inbox(&this.reply_to));
            if !behind_older {
                hand_back(&mut self.waiting[at]);
            }
            if !self.waiting[at].is_done() {
                unfinished.push(at);
            }
        }
        while self.waiting.front().is_some_and(Waiting::is_done) {
            self.waiting.pop_front();
            self.first += 1;
        }
    }
}

/// Sends a batch's replies that are ready, from the first not yet handed back, in one piece.
fn hand_back(waiting: &mut Waiting) {
    let start = waiting.delivered;
    let ready = waiting.replies[start..]
        .iter()
        .take_while(|reply| reply.is_some())
        .count();
    if ready == 0 {
        return;
    }
    let replies = waiting.replies[start..start + ready]
        .iter_mut()
        .filter_map(Option::take);
    let measured = waiting.measured;
    let mut lengths = Vec::new();
    let mut measure = |reply: &Bytes| {
        if measured {
            lengths.push(reply.len() as u32);
        }
    };
    let bytes = if ready == 1 {
        let reply = replies.into_iter().next().expect("one ready");
        measure(&reply);
        reply
    } else {
        let mut joined = BytesMut::new();
        for reply in replies {
            measure(&reply);
            joined.extend_from_slice(&reply);
        }
        joined.freeze()
    };
    waiting.delivered += ready;
    waiting.reply_to.send(Reply::Frames {
        bytes,
        count: ready as u32,
        lengths,
    });
}
