//! Handing the follows of a batch to its lane's listener, and taking them back, so that the
//! batch's replies are counted where they are read and need not wake the session (see
//! [`LaneCount`](crate::policy::hotkeys::lane::LaneCount)).

use super::ReplyQueue;
use crate::policy::hotkeys::record::{Pending, Places, Recorder};
use crate::policy::phases::Follows;

impl ReplyQueue {
    /// Hands the follows of the latest `count` commands sent, with hot keys' recorder, to
    /// `hand` (which gives an empty recorder back), when hot keys alone follow them and they
    /// are all the recorder holds: a batch of them may have its replies counted where they
    /// are read (see `lane`). `hand` is given each follow's place in the batch. Returns
    /// whether they went.
    pub fn hand_follows(
        &mut self,
        count: u32,
        hand: impl FnOnce(&mut Recorder, Places<&mut dyn Iterator<Item = u32>>),
    ) -> bool {
        let first = self.sent.first_of_latest(count);
        let followed = &mut self.sent.followed;
        let batch_alone = followed.front().is_some_and(|(at, _)| *at >= first)
            && self.followers.hotkeys.follows_only(followed.len())
            && followed.iter_mut().all(|(_, follows)| {
                let pending = follows.hotkeys.take();
                let alone = pending.is_some() && follows.is_empty();
                follows.hotkeys = pending;
                alone
            });
        if batch_alone {
            // Every command of the batch is followed (a pipeline of reads, say): its places
            // are all of them, and the list need not be read.
            let every = followed.len() == count as usize;
            if every {
                followed.clear();
            }
            let mut listed = followed.drain(..).map(|(at, _)| (at - first) as u32);
            let places = match every {
                true => Places::Every(count),
                false => Places::Listed(&mut listed as &mut dyn Iterator<Item = u32>),
            };
            hand(&mut self.followers.hotkeys, places);
        }
        batch_alone
    }

    /// Takes back the follows [handed on](Self::hand_follows) with the latest `count`
    /// commands, which never reached a connection: `take_back` gives hot keys' recorder back
    /// and each follow with its place in the batch.
    pub fn take_follows_back(
        &mut self,
        count: u32,
        take_back: impl FnOnce(&mut Recorder, &mut dyn FnMut(u32, Pending)),
    ) {
        let first = self.sent.first_of_latest(count);
        let followed = &mut self.sent.followed;
        take_back(&mut self.followers.hotkeys, &mut |place, pending| {
            let follows = Follows {
                hotkeys: Some(pending),
                ..Follows::default()
            };
            followed.push_back((first + u64::from(place), follows));
        });
    }
}
