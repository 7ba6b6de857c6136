//! Counting a lone request whose reply the connection writes to the client itself (through
//! the client's lane, see [`ClientLane`](crate::upstream::ClientLane)).
//!
//! A session that had to hear of such a reply to count its key would be woken for every
//! unpipelined request, which is most of what the lane saves. Instead the session hands the
//! request, taken out of its recorder, to its [`LaneCount`]; the connection tells it the reply
//! before writing it, and the count reaches the stage from there. A client that then stays
//! idle is counted all the same.

use std::sync::Arc;

use parking_lot::Mutex;
use quanta::Instant;

use super::record::Detached;
use super::HotKeys;
use crate::upstream::LaneListener;

/// A session's request waiting for its reply in the lane, if one is.
#[derive(Default)]
pub struct LaneCount {
    waiting: Mutex<Option<Waiting>>,
}

struct Waiting {
    /// The hot keys in force when the request was judged.
    hotkeys: Arc<HotKeys>,
    request: Detached,
}

impl Waiting {
    fn count(mut self, answer: &[u8], now: Instant) {
        self.request.finish(answer);
        self.hotkeys.record_detached(&self.request, now);
    }
}

impl LaneCount {
    /// Hands over a request whose batch is about to go with the lane. One handed over before
    /// and never answered there (its connection failed) is counted now without an answer, as
    /// a request that timed out is.
    pub fn hand(&self, hotkeys: Arc<HotKeys>, request: Detached) {
        let unanswered = self.waiting.lock().replace(Waiting { hotkeys, request });
        if let Some(unanswered) = unanswered {
            unanswered.count(&[], Instant::now());
        }
    }

    /// Takes back the request handed over, whose batch never reached the connection.
    pub fn take_back(&self) -> Option<Detached> {
        self.waiting.lock().take().map(|waiting| waiting.request)
    }
}

impl LaneListener for LaneCount {
    fn reply(&self, reply: &[u8], now: Instant) {
        let waiting = self.waiting.lock().take();
        if let Some(waiting) = waiting {
            waiting.count(reply, now);
        }
    }
}

impl Drop for LaneCount {
    /// The session and its lane are gone: a request still waiting has had its last chance.
    fn drop(&mut self) {
        if let Some(waiting) = self.waiting.get_mut().take() {
            waiting.count(&[], Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{ConfigDuration, HotKeysConfig};
    use crate::policy::hotkeys::record::{start_command, Recorder};
    use crate::policy::hotkeys::By;

    fn handed(recorder: &mut Recorder, key: &str) -> Detached {
        let pending = start_command(recorder, &["GET", key]);
        recorder.detach(pending).unwrap()
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
    fn a_request_counts_with_its_reply_or_without_one_when_none_comes() {
        let hotkeys = Arc::new(HotKeys::new(HotKeysConfig {
            enabled: true,
            windows: vec![ConfigDuration::from_millis(3_600_000)],
            ..HotKeysConfig::default()
        }));
        let mut recorder = Recorder::default();
        let lane = LaneCount::default();
        lane.hand(Arc::clone(&hotkeys), handed(&mut recorder, "answered"));
        lane.reply(b"$1\r\nx\r\n", Instant::now());
        // Its connection failed: it counts when the next one is handed over.
        lane.hand(Arc::clone(&hotkeys), handed(&mut recorder, "failed"));
        lane.hand(Arc::clone(&hotkeys), handed(&mut recorder, "taken back"));
        assert!(lane.take_back().is_some());
        // Nothing waits any more: a reply of a batch sent without the listener's request.
        lane.reply(b"+OK\r\n", Instant::now());
        lane.hand(Arc::clone(&hotkeys), handed(&mut recorder, "at the end"));
        drop(lane);
        let expected = [
            ("answered".to_string(), 1, Some(7)),
            ("at the end".to_string(), 1, Some(0)),
            ("failed".to_string(), 1, Some(0)),
        ];
        assert_eq!(counted(&hotkeys), expected);
    }
}
