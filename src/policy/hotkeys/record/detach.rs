//! Taking a command out of its recorder's line, to be finished and counted elsewhere: by the
//! connection that writes its reply to the client itself (see [`lane`](crate::policy::hotkeys::lane)).

use super::{Followed, KeptKey, Observation, Pending, Recorder};
#[cfg(doc)]
use crate::policy::hotkeys::space_saving::INLINE_KEY;

/// A command that names one key, out of its recorder's line (see [`Recorder::detach`]).
#[derive(Debug)]
pub struct Detached {
    seen: Observation,
    /// The kept key, when longer than [`INLINE_KEY`].
    long: Vec<u8>,
}

impl Detached {
    pub fn key(&self) -> &[u8] {
        match &self.seen.key {
            KeptKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeptKey::Long(_) => &self.long,
        }
    }

    pub fn observation(&self) -> &Observation {
        &self.seen
    }

    /// The command's answer is known (see [`Recorder::finish`]).
    pub fn finish(&mut self, answer: &[u8]) {
        self.seen.counts.outbound = answer.len() as u64;
    }
}

impl Recorder {
    /// Takes the latest command out of line when it names one key and is not finished, to be
    /// finished and counted elsewhere (by the connection that writes its reply: see
    /// [`lane`](crate::policy::hotkeys::lane)); otherwise hands `pending` back.
    pub fn detach(&mut self, pending: Pending) -> Result<Detached, Pending> {
        let nth = pending.0.wrapping_sub(self.first) as usize;
        let latest = self.commands.len().checked_sub(1);
        let lone = latest == Some(nth)
            && self
                .commands
                .back()
                .is_some_and(|command| command.named == 1 && !command.finished)
            && self.keys_from(nth) + 1 == self.keys.len();
        if !lone {
            return Err(pending);
        }
        let Some(seen) = self.keys.pop_back() else {
            return Err(pending);
        };
        self.commands.pop_back();
        let mut long = Vec::new();
        if let KeptKey::Long(range) = &seen.key {
            let start = (range.start - self.first_long_byte) as usize;
            long.extend(self.long_keys.drain(start..));
        }
        Ok(Detached { seen, long })
    }

    /// Puts a detached command back in line, as the latest (its batch never reached the
    /// connection).
    pub fn restore(&mut self, detached: Detached) -> Pending {
        let first_key = self.first_key + self.keys.len() as u64;
        let long_bytes = self.long_keys_end();
        let mut seen = detached.seen;
        if let KeptKey::Long(range) = &mut seen.key {
            self.long_keys.extend_from_slice(&detached.long);
            *range = long_bytes..self.long_keys_end();
        }
        self.keys.push_back(seen);
        self.commands.push_back(Followed {
            first_key,
            long_bytes,
            named: 1,
            finished: false,
        });
        Pending(self.first + self.commands.len() as u64 - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{follow_command, start_command as start};
    use super::*;

    fn counted(recorder: &Recorder) -> Vec<(Vec<u8>, u64)> {
        recorder
            .finished()
            .map(|(key, seen)| (key.to_vec(), seen.counts.outbound))
            .collect()
    }

    #[test]
    fn a_lone_key_leaves_the_line_and_comes_back_whole() {
        let long = "k".repeat(100);
        for key in ["short", long.as_str()] {
            let mut recorder = Recorder::default();
            follow_command(&mut recorder, &["GET", "before"], b"$-1\r\n");
            let pending = start(&mut recorder, &["GET", key]);
            let mut detached = recorder.detach(pending).unwrap();
            assert_eq!(detached.key(), key.as_bytes());
            assert_eq!(counted(&recorder), [(b"before".to_vec(), 5)]);
            detached.finish(b"+OK\r\n");
            assert_eq!(detached.observation().counts.outbound, 5);

            let pending = start(&mut recorder, &["GET", "other"]);
            let other = recorder.detach(pending).unwrap();
            let pending = recorder.restore(other);
            recorder.finish(pending, b"$1\r\nx\r\n");
            assert_eq!(counted(&recorder)[1], (b"other".to_vec(), 7));
        }
    }

    #[test]
    fn a_command_with_several_keys_or_not_the_latest_stays_in_line() {
        let mut recorder = Recorder::default();
        let mget = start(&mut recorder, &["MGET", "a", "b"]);
        let mget = recorder.detach(mget).unwrap_err();
        let get = start(&mut recorder, &["GET", "c"]);
        let mget = recorder.detach(mget).unwrap_err();
        recorder.finish(mget, b"*2\r\n$-1\r\n$-1\r\n");
        recorder.finish(get, b"$-1\r\n");
        let keys: Vec<Vec<u8>> = counted(&recorder).into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }
}
