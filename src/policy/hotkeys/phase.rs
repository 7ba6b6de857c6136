//! Hot keys as a phase of the request pipeline: it decides nothing, and follows each sampled
//! request that goes to Redis to the answer its client gets, so that its keys are counted with
//! the bytes that went each way.
//!
//! A session's [`Recorder`] is the phase's follower: it keeps the keys of the requests in
//! flight and, once per turn of the session, hands the finished ones to the [`HotKeys`] in
//! force (its stage takes one lock for a whole pipeline). A batch whose replies the connection
//! writes to the client itself leaves with the recorder for the session's
//! [`LaneCount`](super::lane::LaneCount), and is counted there.

use std::convert::Infallible;
use std::sync::Arc;

use quanta::Instant;

use super::record::{Pending, Recorder};
use crate::policy::phase::{Decision, FollowedRequest, Handover, Phase, Subject, Way};
use crate::policy::Policies;
use crate::upstream::Upstream;

/// The hot-keys phase. Its shared part is the [`HotKeys`](super::HotKeys) of the policies in
/// force, swapped with them on a reload; the phase itself holds nothing.
pub struct Counting;

impl Phase for Counting {
    type Session = ();
    type Taken = Infallible;
    type Held = Infallible;
    type Follow = Pending;
    type Follower = Recorder;

    fn new(_: &Arc<Upstream>) -> Counting {
        Counting
    }

    #[inline]
    fn active(&self, _: &Policies, _: Way) -> bool {
        false
    }

    fn decide(&self, _: &Policies, _: &mut (), _: &Subject<'_, '_>) -> Decision<Infallible> {
        Decision::Pass
    }

    fn hand_over(self: &Arc<Self>, taken: Infallible, _: Handover<'_>) -> Option<Infallible> {
        match taken {}
    }

    /// Sampled requests that reach Redis on the session's connection; those keyward answers
    /// itself or sends aside name no key a client reads or writes there.
    #[inline]
    fn follows(&self, policies: &Policies, way: Way) -> bool {
        way.forwarded()
            && policies
                .hotkeys
                .as_ref()
                .is_some_and(|hotkeys| hotkeys.sampled())
    }

    #[inline]
    fn follow(
        &self,
        _: &Policies,
        recorder: &mut Recorder,
        request: FollowedRequest<'_, '_>,
        request_len: usize,
    ) -> Option<Pending> {
        recorder.start(
            request.info,
            request.args,
            request.key_positions,
            request_len,
        )
    }

    #[inline]
    fn answered_follow(recorder: &mut Recorder, pending: Pending, answer: &[u8]) {
        recorder.finish(pending, answer);
    }

    #[inline]
    fn has_gathered(recorder: &Recorder) -> bool {
        recorder.has_finished()
    }

    /// Policies reloaded without hot keys discard what was gathered under the old ones.
    fn gathered(&self, policies: &Policies, recorder: &mut Recorder) {
        if !recorder.has_finished() {
            return;
        }
        match &policies.hotkeys {
            Some(hotkeys) => hotkeys.record(recorder, Instant::now()),
            None => recorder.discard(),
        }
    }
}
