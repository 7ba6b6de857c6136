//! Counting a batch whose replies the connection writes to the client itself (through the
//! client's lane, see [`ClientLane`](crate::upstream::ClientLane)).
//!
//! A session that had to hear of such replies to count their keys would be woken for every
//! batch, which is most of what the lane saves. Instead the session hands the batch's
//! followed commands, with its recorder, to its [`LaneCount`]; the connection tells it the
//! replies before writing them, and the counts reach the stage from there. A client that then
//! stays idle is counted all the same.

use std::sync::Arc;

use parking_lot::Mutex;
use quanta::Instant;

use super::record::{Detached, Pending, Places, Recorder};
use super::HotKeys;
use crate::upstream::LaneListener;

/// A session's batch waiting for its replies in the lane, if one is.
#[derive(Default)]
pub struct LaneCount {
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// The hot keys in force when the batch was judged; none while no batch waits.
    hotkeys: Option<Arc<HotKeys>>,
    /// The batch's followed commands; empty, and kept for the next batch, while none waits.
    batch: Detached,
}

impl Waiting {
    /// Counts what the batch's commands heard so far, and ends the wait once all are answered.
    fn count(&mut self, now: Instant) {
        let Some(hotkeys) = &self.hotkeys else {
            return;
        };
        if self.batch.recorder().has_finished() {
            hotkeys.record(self.batch.recorder(), now);
        }
        if !self.batch.is_waiting() {
            self.hotkeys = None;
        }
    }

    /// Counts the commands still waiting without an answer, as requests that timed out are.
    fn give_up(&mut self) {
        if self.hotkeys.is_some() {
            self.batch.give_up();
            self.count(Instant::now());
        }
    }
}

impl LaneCount {
    /// Hands over the commands `recorder` follows (all of them a batch's, about to go with
    /// the lane, at `places` in it), leaving it an empty recorder. A batch handed over
    /// before and not answered there in full (its connection failed) is counted now without
    /// the answers it lacks.
    pub fn hand(
        &self,
        hotkeys: Arc<HotKeys>,
        recorder: &mut Recorder,
        places: Places<impl Iterator<Item = u32>>,
    ) {
        let mut waiting = self.waiting.lock();
        waiting.give_up();
        waiting.batch.take(recorder, places);
        waiting.hotkeys = Some(hotkeys);
    }

    /// The connection failed what it owed of the batch: the commands still waiting count now,
    /// without their replies, rather than at the next batch or when the client leaves.
    pub fn give_up(&self) {
        self.waiting.lock().give_up();
    }

    /// Gives back to `recorder` the commands handed over, whose batch never reached the
    /// connection: `restore` is given each one's place in the batch and its follow.
    pub fn take_back(&self, recorder: &mut Recorder, restore: impl FnMut(u32, Pending)) {
        let mut waiting = self.waiting.lock();
        waiting.hotkeys = None;
        waiting.batch.give_back(recorder, restore);
    }
}

impl LaneListener for LaneCount {
    fn reply(&self, replies: &[u8], lengths: &[u32], count: u32, now: Instant) {
        let mut waiting = self.waiting.lock();
        if waiting.hotkeys.is_some() {
            waiting.batch.hear(replies, lengths, count);
            waiting.count(now);
        }
    }
}

impl Drop for LaneCount {
    /// The session and its lane are gone: a batch still waiting has had its last chance (its
    /// connection failed, or the session ended before it heard).
    fn drop(&mut self) {
        self.waiting.get_mut().give_up();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{ConfigDuration, HotKeysConfig};
    use crate::policy::hotkeys::record::start_command;
    use crate::policy::hotkeys::By;

    /// Hands over a batch of `GET`s of `keys`.
    fn hand(lane: &LaneCount, hotkeys: &Arc<HotKeys>, keys: &[&str]) {
        let mut recorder = Recorder::default();
        for key in keys {
            start_command(&mut recorder, &["GET", key]);
        }
        let places = Places::Listed(0..keys.len() as u32);
        lane.hand(Arc::clone(hotkeys), &mut recorder, places);
    }

    /// Keys counted so far, with the bytes their replies took.
    fn counted(hotkeys: &HotKeys) -> Vec<(String, u64, Option<u64>)> {
        let window = Duration::from_secs(3600);
        let requests = hotkeys.report(window, By::Requests, 10).unwrap();
        let bytes = hotkeys.report(window, By::Bytes, 10).unwrap();
        let mut counted: Vec<_> = requests
            .keys
            .iter()
            .map(|entry| {
                let out = bytes.keys.iter().find(|other| other.key == entry.key);
                (
                    entry.key.clone(),
                    entry.count,
                    out.and_then(|o| o.bytes_out),
                )
            })
            .collect();
        counted.sort();
        counted
    }

    #[test]
    fn a_batch_counts_with_its_replies_or_without_those_that_never_come() {
        let hotkeys = Arc::new(HotKeys::new(HotKeysConfig {
            enabled: true,
            windows: vec![ConfigDuration::from_millis(3_600_000)],
            ..HotKeysConfig::default()
        }));
        let lane = LaneCount::default();
        hand(&lane, &hotkeys, &["answered", "in two runs"]);
        lane.reply(b"$1\r\nx\r\n", &[], 1, Instant::now());
        lane.reply(b"$2\r\nxy\r\n", &[], 1, Instant::now());
        // Its connection failed after one reply: the other counts when the next batch is
        // handed over.
        hand(&lane, &hotkeys, &["half", "failed"]);
        lane.reply(b"+OK\r\n", &[], 1, Instant::now());
        hand(&lane, &hotkeys, &["taken back"]);
        let mut recorder = Recorder::default();
        let mut restored = 0;
        lane.take_back(&mut recorder, |_, _| restored += 1);
        assert_eq!(restored, 1);
        // Nothing waits any more: a reply of a batch sent without the listener's commands.
        lane.reply(b"+OK\r\n", &[], 1, Instant::now());
        hand(&lane, &hotkeys, &["at the end"]);
        drop(lane);
        let expected = [
            ("answered".to_string(), 1, Some(7)),
            ("at the end".to_string(), 1, Some(0)),
            ("failed".to_string(), 1, Some(0)),
            ("half".to_string(), 1, Some(5)),
            ("in two runs".to_string(), 1, Some(8)),
        ];
        assert_eq!(counted(&hotkeys), expected);
    }
}
