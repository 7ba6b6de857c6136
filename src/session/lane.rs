//! The session's side of its client lane (see [`ClientLane`]): which batches may have their
//! replies written by the connection, settling the replies it wrote, and asking to hear of
//! them when the session has something to do after them.

use std::sync::Arc;

use super::link::Link;
use super::Session;
#[cfg(doc)]
use crate::policy::hotkeys::lane::LaneCount;
use crate::policy::hotkeys::HotKeys;
use crate::upstream::{ClientLane, InLane};

impl Session {
    /// The lane for a batch about to be forwarded, when its replies may go straight to the
    /// client: nothing is owed before them nor waits to be written, and nothing about them
    /// needs the session when they come (no keys written that phases watch, no transaction,
    /// a shared connection that hands replies back as Redis sent them, none that Redis may
    /// hold: `holds`), and a connection that writes through lanes (a cluster's router, which
    /// shares a batch out among nodes, writes through none). Not for a blocking command: the
    /// lane keeps the client's socket open until its reply, and a client that leaves or is
    /// killed meanwhile must be let go at once.
    fn lane_for_replies(&self, holds: bool) -> Option<Arc<ClientLane>> {
        let free = !holds
            && self.replies.is_empty()
            && self.output.is_empty()
            && self.written_keys.is_empty()
            && self.parked.is_none()
            && !self.blocked
            && !self.in_transaction
            && self.pin.is_none()
            && self.counts_replies()
            && matches!(self.link, Link::Pooled(_))
            && !self.in_cluster();
        free.then(|| self.lane.clone()).flatten()
    }

    /// The lane for a batch of `count` requests about to be forwarded, if it may take one
    /// (see [`lane_for_replies`](Self::lane_for_replies)). A phase following requests does not
    /// keep the batch out of the lane: the requests' follows go to the lane's listener, which
    /// the connection tells the replies (see [`LaneCount`]). Returns whether they went, to be
    /// [taken back](Self::take_follows_back) if the batch is not sent.
    pub(super) fn lane_for_batch(
        &mut self,
        holds: bool,
        count: u32,
        hotkeys: Option<&Arc<HotKeys>>,
    ) -> (Option<InLane>, bool) {
        let Some(lane) = self.lane_for_replies(holds) else {
            return (None, false);
        };
        if !self.replies.follows_commands() {
            return (Some(InLane::new(lane, false)), false);
        }
        let handed = hotkeys.is_some_and(|hotkeys| {
            self.replies.hand_follows(count, |recorder, places| {
                self.lane_count.hand(Arc::clone(hotkeys), recorder, places);
            })
        });
        (handed.then(|| InLane::new(lane, true)), handed)
    }

    /// The batch whose follows went to the lane's listener was not sent: they come back.
    pub(super) fn take_follows_back(&mut self, count: u32, handed: bool) {
        if handed {
            self.replies.take_follows_back(count, |recorder, restore| {
                self.lane_count.take_back(recorder, restore);
            });
        }
    }

    /// Settles the replies the connection wrote through the lane since the last look. Done
    /// before anything else the session hears or does, so that what follows them finds them
    /// answered.
    pub(super) fn settle_lane(&mut self) {
        if !self.replies.lane_in_use() {
            return;
        }
        let Some(lane) = &self.lane else {
            return;
        };
        let (written, at) = lane.written();
        let count = written - self.lane_settled;
        if count == 0 {
            return;
        }
        self.lane_settled = written;
        let metrics = &self.context.command_metrics;
        // At most one batch is in the lane at a time, and a batch's count is a `u32`.
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        self.replies
            .lane_written(count, &mut self.output, metrics, at);
        self.last_active = self.last_active.max(at);
        if self.replies.is_empty() {
            self.blocked = false;
        }
    }

    /// Before the session waits: with replies still in the lane and something to do after
    /// them (more to write, a request to run once they are in, leaving), asks the lane for
    /// word when they are written. Returns whether they were written meanwhile, so that the
    /// session looks again instead of waiting.
    pub(super) fn lane_written_meanwhile(&self, wants_input: bool) -> bool {
        if !self.replies.lane_in_use() {
            return false;
        }
        // Only the client's next request can come after them: it wakes the session anyway.
        if wants_input && self.output.is_empty() && self.replies.owes_only_lane() {
            return false;
        }
        self.lane
            .as_ref()
            .is_some_and(|lane| lane.ask_wake() != self.lane_settled)
    }
}
