//! A request a policy phase holds at the front of the input: delayed until a time, waiting for
//! Redis's answer to the phase's question, or taken by a phase that answers it later (a lock
//! attempt in its queue). Everything the client sent after it waits with it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::inbox;
use crate::policy::phases::Held;
use crate::resp::Protocol;
use crate::upstream::{Batch, Reply, Upstream};

#[derive(Default)]
pub(super) struct Holds {
    /// The request waits until then, then meets the phase that held it again.
    pub until: Option<Instant>,
    /// Answers to the questions phases ask Redis, apart from the client's replies. Opened on
    /// first use: most sessions never ask.
    answers: Option<(inbox::Sender<Reply>, inbox::Receiver<Reply>)>,
    /// A question is out; the request waits for its answer.
    pub asking: bool,
    /// A phase took the request and answers it with this ticket.
    pub taken: Option<(u64, Held)>,
}

impl Holds {
    /// Asks Redis `question`, on a shared connection. `false` if it could not be sent.
    pub fn ask(&mut self, upstream: &Arc<Upstream>, client_id: u64, question: Bytes) -> bool {
        let batch = Batch {
            bytes: question,
            count: 1,
            reply_to: self.answers.get_or_insert_with(inbox::channel).0.clone(),
            tracked: false,
            measured: None,
            hold: None,
            lane: None,
        };
        let conn = upstream.pooled(Protocol::Resp2, 0, client_id);
        self.asking = conn.send(batch).is_ok();
        self.asking
    }

    /// Redis's answer to the question out; waits for ever when none is.
    pub async fn next_answer(&mut self) -> Option<Reply> {
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
