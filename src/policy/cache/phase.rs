//! The cache phase: a cacheable read on a shared connection is answered from memory, joins a
//! read of the same thing in flight, or is taken as a fill ([`Coherence::consult`]). Writes
//! through keyward drop what they change at once, and keep their keys from being cached until
//! Redis has answered them.

use std::convert::Infallible;
use std::sync::Arc;

use super::coherence::Fill;
use super::Coherence;
use crate::command::cacheable;
use crate::policy::phase::{Decision, Handover, Phase, Subject, Way};
use crate::policy::Policies;
use crate::upstream::Upstream;

impl Phase for Coherence {
    /// Reused for the shape of cacheable reads.
    type Session = Vec<u8>;
    type Taken = Fill;
    type Held = Infallible;
    type Follow = Infallible;
    type Follower = ();

    fn new(upstream: &Arc<Upstream>) -> Coherence {
        Coherence::new(Arc::clone(upstream))
    }

    /// Reads to answer, and writes that change what is cached.
    #[inline]
    fn active(&self, policies: &Policies, way: Way) -> bool {
        way.forwarded() && !policies.caches.is_empty()
    }

    /// Only on a shared connection: a fill is read in the client's order there, with
    /// tracking on.
    #[inline(always)]
    fn decide(
        &self,
        policies: &Policies,
        shape: &mut Vec<u8>,
        subject: &Subject<'_, '_>,
    ) -> Decision<Fill> {
        if subject.way != Way::Shared || policies.caches.is_empty() {
            return Decision::Pass;
        }
        let Some(kind) = cacheable::request_kind(subject.info, subject.args) else {
            return Decision::Pass;
        };
        self.consult(&policies.caches, subject, kind, shape)
    }

    fn hand_over(self: &Arc<Self>, fill: Fill, handover: Handover<'_>) -> Option<Infallible> {
        if let Fill::Fetch(id) = fill {
            let address = handover.address;
            self.fetch(id, handover.room, handover.request, |error| {
                error.reply(address, 1)
            });
        }
        None
    }

    fn answered_elsewhere(fill: &Fill) -> bool {
        matches!(fill, Fill::Joined)
    }

    fn uses_session_connection(fill: &Fill) -> bool {
        matches!(fill, Fill::Fetch(_))
    }

    #[inline]
    fn watches_writes(&self, policies: &Policies) -> bool {
        !policies.caches.is_empty()
    }

    /// Under a rule in force, reads of the key are not cached until Redis has answered the
    /// write; under a shadow rule, dropping its entries is enough (their counts may be off by
    /// a read that raced the write).
    fn writing(&self, policies: &Policies, _: &mut Vec<u8>, key: &[u8]) -> bool {
        let covering = |shadow: bool| {
            policies
                .caches
                .iter()
                .any(|rule| rule.is_shadow() == shadow && rule.matches_key(key))
        };
        if covering(false) {
            self.begin_write(&policies.caches, key);
            return true;
        }
        if covering(true) {
            self.invalidate(&policies.caches, key);
        }
        false
    }

    fn written(&self, _: &mut Vec<u8>, key: &[u8]) {
        self.end_write(key);
    }

    fn flushing(&self, policies: &Policies, _: &mut Vec<u8>) -> bool {
        if policies.caches.is_empty() {
            return false;
        }
        self.begin_flush(&policies.caches);
        true
    }

    fn flushed(&self, _: &mut Vec<u8>) {
        self.end_flush();
    }

    fn watches_changes(&self, policies: &Policies) -> bool {
        !policies.caches.is_empty()
    }

    fn changed(&self, policies: &Policies, key: &[u8]) {
        self.invalidate(&policies.caches, key);
    }

    fn all_changed(&self, policies: &Policies) {
        self.flush_all(&policies.caches);
    }

    /// Nothing to drop: the node's epoch moved on with its link, so its keys' entries are not
    /// served again (eviction and their ttl take them), and the rest stay served.
    fn some_changed(&self, _: &Policies) {}
}
