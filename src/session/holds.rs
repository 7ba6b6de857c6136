//! A request a policy phase holds at the front of the input: delayed until a time, waiting for
//! Redis's answer to the phase's question, or taken by a phase that answers it later (a lock
//! attempt in its queue). Everything the client sent after it waits with it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::inbox;
use crate::policy::phases::Held;
use crate::resp::Protocol;
use crate::upstream::{Batch, Reply, RoomWait, SendError, Upstream};

#[derive(Default)]
pub(super) struct Holds {
    /// The request waits until then, then meets the phase that held it again.
    pub until: Option<Instant>,
    /// Answers to the questions phases ask Redis, apart from the client's replies. Opened on
    /// first use: most sessions never ask.
    answers: Option<(inbox::Sender<Reply>, inbox::Receiver<Reply>)>,
    /// A question is out, or waits for room in its connection's queue (below); the request
    /// waits for its answer.
    pub asking: bool,
    /// A question that found its connection's queue full: it is sent once there is room, as
    /// a request would be, rather than taken for one Redis could not answer.
    unsent: Option<(RoomWait, Batch)>,
    /// A phase took the request and answers it with this ticket.
    pub taken: Option<(u64, Held)>,
}

impl Holds {
    /// Asks Redis `question`, on a shared connection: `false` if that connection is gone. A
    /// full queue is not a refusal: the question waits for room (see [`Holds::next_answer`]).
    pub fn ask(&mut self, upstream: &Arc<Upstream>, client_id: u64, question: Bytes) -> bool {
        let batch = Batch {
            bytes: question,
            count: 1,
            reply_to: self
                .answers
                .get_or_insert_with(inbox::channel)
                .0
                .clone()
                .into(),
            tracked: false,
            measured: None,
            hold: None,
            lane: None,
        };
        let conn = upstream.pooled(Protocol::Resp2, 0, client_id);
        self.asking = match conn.offer(batch) {
            Ok(()) => true,
            Err((SendError::Busy, batch)) => {
                self.unsent = Some((conn.wait_for_room(), batch));
                true
            }
            Err((SendError::Gone, _)) => false,
        };
        self.asking
    }

    /// Redis's answer to the question out (none if its connection was gone before the question
    /// could be sent); waits for ever when none is. Cancel-safe: a question waiting for room
    /// stays here, keeping its place in line, until it is sent.
    pub async fn next_answer(&mut self) -> Option<Reply> {
        if let Some((wait, _)) = &mut self.unsent {
            let room = wait.await;
            let (_, question) = self.unsent.take()?;
            room.ok()?.send(question);
        }
        match &mut self.answers {
            Some((_, answers)) => answers.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Whether a request is held, for whatever reason.
    pub fn any(&self) -> bool {
        self.until.is_some() || self.asking || self.taken.is_some()
    }
}
