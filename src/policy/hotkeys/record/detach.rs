//! Taking a batch's followed commands out of their session, to be finished and counted
//! elsewhere: by the connection that writes the batch's replies to the client itself (see
//! [`lane`](crate::policy::hotkeys::lane)).

use super::queue::Queue;
use super::{Pending, Recorder};
use crate::resp::frame;

/// Where in its batch the replies of the followed commands come.
pub enum Places<I> {
    /// Every command of the batch is followed (a pipeline of reads, say): the first `count`
    /// places, known without reading them off one by one.
    Every(u32),
    /// Those listed, in order.
    Listed(I),
}

/// A batch's followed commands, out of their session: the recorder that followed them, which
/// holds nothing else, and the place in the batch of each one's reply. Reused from batch to
/// batch, so that handing a batch over allocates nothing.
#[derive(Default)]
pub struct Detached {
    recorder: Recorder,
    /// The places of the followed commands not answered yet, in order, when some command of
    /// the batch is not followed.
    places: Queue<u32>,
    /// The commands not answered yet of a batch whose every command is followed: a command's
    /// place is then its number, and no list is kept.
    unlisted: u32,
    /// Replies of the batch heard so far.
    heard: u32,
}

impl Detached {
    /// Takes the commands `recorder` follows, whose replies come at `places` in their batch,
    /// and leaves it this one's recorder, which is empty.
    pub fn take(&mut self, recorder: &mut Recorder, places: Places<impl Iterator<Item = u32>>) {
        debug_assert!(self.recorder.commands.is_empty());
        std::mem::swap(&mut self.recorder, recorder);
        self.places.clear();
        self.unlisted = 0;
        match places {
            Places::Every(count) => self.unlisted = count,
            Places::Listed(listed) => self.places.extend(listed),
        }
        self.heard = 0;
    }

    /// Gives the commands back to `recorder` (empty, as [`take`](Self::take) left it), as
    /// their batch never reached the connection: `restore` is given each one's place and
    /// the command to follow it by.
    pub fn give_back(&mut self, recorder: &mut Recorder, mut restore: impl FnMut(u32, Pending)) {
        std::mem::swap(&mut self.recorder, recorder);
        // Nothing was heard: the unlisted places are the first ones.
        let places = (0..self.unlisted).chain(self.places.as_slice().iter().copied());
        for (place, pending) in places.zip(recorder.pendings()) {
            restore(place, pending);
        }
        self.places.clear();
        self.unlisted = 0;
    }

    /// Whether some followed command still waits for its reply.
    pub fn is_waiting(&self) -> bool {
        self.unlisted > 0 || !self.places.is_empty()
    }

    /// Hears the batch's next `count` replies, one frame each in `replies` (with their
    /// `lengths`, if measured): the followed commands among them are finished.
    pub fn hear(&mut self, replies: &[u8], lengths: &[u32], count: u32) {
        let replies = frame::replies(replies, lengths, count as usize);
        if self.unlisted > 0 {
            // The replies are the commands', in order.
            let answered = count.min(self.unlisted);
            let recorder = &mut self.recorder;
            replies
                .take(answered as usize)
                .for_each(|reply| recorder.finish_next(reply));
            self.unlisted -= answered;
        } else {
            self.hear_listed(replies, count);
        }
        self.heard += count;
    }

    /// Finishes the listed commands among the next `count` replies.
    fn hear_listed<'a>(&mut self, mut replies: impl Iterator<Item = &'a [u8]>, count: u32) {
        let end = self.heard + count;
        let mut next = self.heard;
        let mut answered = 0;
        for &place in self
            .places
            .as_slice()
            .iter()
            .take_while(|&&place| place < end)
        {
            let reply = replies.nth((place - next) as usize).unwrap_or_default();
            next = place + 1;
            answered += 1;
            self.recorder.finish_next(reply);
        }
        self.places.drop_front(answered);
    }

    /// Finishes the commands still waiting without an answer (their connection failed, or
    /// the session is gone), as a request that timed out is.
    pub fn give_up(&mut self) {
        for _ in 0..self.unlisted as usize + self.places.len() {
            self.recorder.finish_next(&[]);
        }
        self.places.clear();
        self.unlisted = 0;
    }

    /// The recorder, with the commands finished so far.
    pub fn recorder(&mut self) -> &mut Recorder {
        &mut self.recorder
    }
}

impl Recorder {
    /// Whether the recorder follows `count` commands and the first is not finished: when the
    /// session follows `count` commands of a batch, they are then all the recorder holds, none
    /// finished, and may leave with it (see [`Detached::take`]).
    pub fn follows_only(&self, count: usize) -> bool {
        self.commands.len() == count && self.finished == 0
    }

    /// Finishes the first command not finished yet.
    #[inline]
    fn finish_next(&mut self, answer: &[u8]) {
        self.finish_nth(self.finished, answer);
    }

    /// The commands followed, in order.
    fn pendings(&self) -> impl Iterator<Item = Pending> {
        (self.first..self.first + self.commands.len() as u64).map(Pending::new)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{follow_command, start_command as start};
    use super::*;

    fn counted(recorder: &mut Recorder) -> Vec<(Vec<u8>, u64)> {
        let seen = recorder
            .finished()
            .map(|(key, seen)| (key.to_vec(), seen.counts.outbound))
            .collect();
        recorder.discard();
        seen
    }

    #[test]
    fn a_batch_leaves_with_its_recorder_and_hears_its_replies_in_runs() {
        let long = "k".repeat(100);
        let mut recorder = Recorder::default();
        follow_command(&mut recorder, &["GET", "before"], b"$-1\r\n");
        counted(&mut recorder);
        start(&mut recorder, &["GET", "a"]);
        start(&mut recorder, &["GET", &long]);
        start(&mut recorder, &["MGET", "c", "d"]);
        assert!(recorder.follows_only(3));
        let mut detached = Detached::default();
        // The batch's second command names no key: nothing follows its reply.
        detached.take(&mut recorder, Places::Listed([0, 2, 3].into_iter()));
        assert!(recorder.follows_only(0) && detached.is_waiting());
        detached.hear(b"$1\r\nx\r\n+PONG\r\n", &[], 2);
        detached.hear(b"$-1\r\n*2\r\n$1\r\ny\r\n$-1\r\n", &[5, 17], 2);
        assert!(!detached.is_waiting());
        assert_eq!(
            counted(detached.recorder()),
            [
                (b"a".to_vec(), 7),
                (long.into_bytes(), 5),
                (b"c".to_vec(), 7),
                (b"d".to_vec(), 5)
            ]
        );
    }

    #[test]
    fn a_batch_whose_every_command_is_followed_hears_its_replies_in_runs() {
        let mut recorder = Recorder::default();
        for key in ["a", "b", "c"] {
            start(&mut recorder, &["GET", key]);
        }
        let mut detached = Detached::default();
        detached.take(&mut recorder, Places::<std::ops::Range<u32>>::Every(3));
        detached.hear(b"$1\r\nx\r\n", &[], 1);
        assert!(detached.is_waiting());
        detached.hear(b"$-1\r\n$2\r\nxy\r\n", &[5, 8], 2);
        assert!(!detached.is_waiting());
        // A reply past the batch's last follows nothing.
        detached.hear(b"+OK\r\n", &[], 1);
        assert_eq!(
            counted(detached.recorder()),
            [(b"a".to_vec(), 7), (b"b".to_vec(), 5), (b"c".to_vec(), 8)]
        );
    }

    #[test]
    fn a_batch_not_sent_comes_back_whole_and_one_not_answered_counts_empty() {
        let mut recorder = Recorder::default();
        start(&mut recorder, &["GET", "a"]);
        start(&mut recorder, &["GET", "b"]);
        let mut detached = Detached::default();
        detached.take(&mut recorder, Places::<std::ops::Range<u32>>::Every(2));
        let mut restored = Vec::new();
        detached.give_back(&mut recorder, |place, pending| {
            restored.push((place, pending))
        });
        assert_eq!(
            restored.iter().map(|(place, _)| *place).collect::<Vec<_>>(),
            [0, 1]
        );
        for (_, pending) in restored.into_iter().rev() {
            recorder.finish(pending, b"+OK\r\n");
        }
        assert_eq!(
            counted(&mut recorder),
            [(b"a".to_vec(), 5), (b"b".to_vec(), 5)]
        );

        start(&mut recorder, &["GET", "c"]);
        start(&mut recorder, &["GET", "d"]);
        detached.take(&mut recorder, Places::Listed(0..2));
        detached.hear(b"$1\r\nx\r\n", &[], 1);
        detached.give_up();
        assert_eq!(
            counted(detached.recorder()),
            [(b"c".to_vec(), 7), (b"d".to_vec(), 0)]
        );
    }
}
