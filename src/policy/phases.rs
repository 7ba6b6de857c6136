//! The phase list: every policy that decides on requests, in the order a request meets them.
//!
//! A request meets deny rules first (a refused command costs nothing more), then rate limits
//! (a command refused or delayed takes no lock and fills no cache), then lock queues (a lock
//! attempt on a contended key waits its turn), then the cache (a read answered from memory or
//! filled), then routes (a read sent to a replica). The first phase that does not pass
//! decides; a held request comes back to the phase that held it. Once its fate is decided,
//! the phases that follow requests to their answers (hot keys) start following it, whether
//! it was let through, taken or answered: they hear the answer the client got, and hand what
//! they gathered to their shared part once per turn of the session.
//!
//! Adding a policy kind is one line in [`phase_list!`]'s invocation below, and a folder that
//! implements [`Phase`].

use std::sync::Arc;

use smallvec::SmallVec;

use super::cache::Coherence;
use super::deny::Denying;
use super::hotkeys::phase::Counting;
use super::lock::LockTable;
use super::phase::{Decision, FollowedRequest, Handover, Phase, Subject, Way};
use super::rate_limit::RateLimiting;
use super::route::Routing;
use super::Policies;
use crate::command::{flags, CommandInfo, Role};
use crate::resp::request::Args;
use crate::upstream::{Reply, ReplySender, Upstream};

/// A write through keyward that phases watch, remembered until Redis answers it.
#[derive(Debug)]
pub struct Written {
    /// The key written; `None` for a command that changes every key. Most keys fit inline:
    /// a write to a key a rule covers costs no allocation of its own.
    key: Option<SmallVec<[u8; 32]>>,
    /// The phases that want to hear of its end, one bit each, in list order.
    phases: u8,
}

/// What one command writes that phases watch: most write one key, kept without an allocation.
pub type WrittenKeys = SmallVec<[Written; 1]>;

/// What the phases have to do with one request, one bit per phase in list order.
#[derive(Debug, Default, Clone, Copy)]
pub struct Roles {
    /// The phases that decide on it.
    pub deciding: u8,
    /// The phases that follow it to its answer.
    pub following: u8,
}

/// Declares the phases: their shared parts ([`Phases`]), what a session keeps of each
/// ([`PhaseStates`]), and the calls that run them in order.
macro_rules! phase_list {
    ($($variant:ident($field:ident): $phase:ty),+ $(,)?) => {
        /// The shared part of every phase, made once when keyward starts and kept across
        /// reloads.
        pub struct Phases {
            $(pub $field: Arc<$phase>,)+
        }

        /// What a session keeps of every phase: where each stands on the request at the
        /// front of its input.
        #[derive(Default)]
        pub struct PhaseStates {
            $($field: <$phase as Phase>::Session,)+
            /// The phase a held request meets first when it is decided on again.
            resume: usize,
            /// The phases the request at the front was to meet, one bit each in list order:
            /// only they have anything to forget when it is done with.
            touched: u8,
            /// The generation of the policies `resume` was set under: under others it means
            /// nothing, and the request starts over.
            generation: u64,
        }

        /// A request a phase took, by phase.
        pub enum Taken {
            $($variant(<$phase as Phase>::Taken),)+
        }

        /// A taken request the session's later requests wait for, by phase.
        pub enum Held {
            $($variant(<$phase as Phase>::Held),)+
        }

        /// What the phases follow of one request until its answer, by phase.
        #[derive(Default)]
        pub struct Follows {
            $(pub $field: Option<<$phase as Phase>::Follow>,)+
        }

        /// What a session keeps of the requests the phases follow, by phase.
        #[derive(Default)]
        pub struct Followers {
            $(pub $field: <$phase as Phase>::Follower,)+
        }

        impl Follows {
            /// Whether no phase follows the request.
            #[inline(always)]
            pub fn is_empty(&self) -> bool {
                true $(&& self.$field.is_none())+
            }
        }

        impl Followers {
            /// The answer the client got for a request: each phase that follows it hears it.
            #[inline(always)]
            pub fn answered(&mut self, follows: Follows, answer: &[u8]) {
                $(
                    if let Some(follow) = follows.$field {
                        <$phase as Phase>::answered_follow(&mut self.$field, follow, answer);
                    }
                )+
            }

            /// Whether some phase's follower gathered what its shared part should have.
            #[inline(always)]
            pub fn has_gathered(&self) -> bool {
                false $(|| <$phase as Phase>::has_gathered(&self.$field))+
            }
        }

        impl Phases {
            pub fn new(upstream: &Arc<Upstream>) -> Phases {
                Phases {
                    $($field: Arc::new(<$phase as Phase>::new(upstream)),)+
                }
            }

            /// What the phases have to do with a request going this way: which decide on it
            /// ([`Phase::active`]) and which would follow it to its answer ([`Phase::follows`]).
            #[inline(always)]
            pub fn roles(&self, policies: &Policies, way: Way) -> Roles {
                let mut roles = Roles::default();
                let mut index = 0;
                $(
                    if self.$field.active(policies, way) {
                        roles.deciding |= 1 << index;
                    }
                    if self.$field.follows(policies, way) {
                        roles.following |= 1 << index;
                    }
                    index += 1;
                )+
                let _ = index;
                roles
            }

            /// The phases decided the request's fate: those of `following` start following
            /// it to its answer.
            #[inline(always)]
            pub fn follow(
                &self,
                policies: &Policies,
                followers: &mut Followers,
                request: FollowedRequest<'_, '_>,
                request_len: usize,
                following: u8,
            ) -> Follows {
                let mut index = 0;
                $(
                    let $field = match following & (1 << index) {
                        0 => None,
                        _ => self.$field.follow(
                            policies,
                            &mut followers.$field,
                            request,
                            request_len,
                        ),
                    };
                    index += 1;
                )+
                let _ = index;
                Follows { $($field,)+ }
            }

            /// The session's turn is over: what its followers gathered goes to the phases.
            pub fn gathered(&self, policies: &Policies, followers: &mut Followers) {
                $(self.$field.gathered(policies, &mut followers.$field);)+
            }

            /// Takes the request through the phases of `deciding` ([`Roles::deciding`]), in
            /// order, from the one that held it.
            #[inline(always)]
            pub fn decide(
                &self,
                policies: &Policies,
                states: &mut PhaseStates,
                subject: &Subject<'_, '_>,
                deciding: u8,
            ) -> Decision<Taken> {
                if states.follow(policies) {
                    self.settle(states);
                }
                // The phases still to meet, from the one that held the request. They count as
                // touched from here: forgetting a request a phase has not met is harmless.
                let pending = deciding & (u8::MAX << states.resume);
                states.touched |= pending;
                let mut index = 0;
                $(
                    if pending & (1 << index) != 0 {
                        let decision = self.$field.decide(policies, &mut states.$field, subject);
                        match decision {
                            Decision::Pass => {}
                            Decision::HoldUntil(_) | Decision::Ask(_) => {
                                states.resume = index;
                                return decision.map(Taken::$variant);
                            }
                            Decision::Answer(_) | Decision::Take(_) => {
                                self.settle(states);
                                return decision.map(Taken::$variant);
                            }
                        }
                    }
                    index += 1;
                )+
                let _ = index;
                self.settle(states);
                Decision::Pass
            }

            /// The request at the front is done with: every phase forgets it.
            #[inline(always)]
            fn settle(&self, states: &mut PhaseStates) {
                states.resume = 0;
                let touched = std::mem::take(&mut states.touched);
                let mut index = 0;
                $(
                    if touched & (1 << index) != 0 {
                        self.$field.done(&mut states.$field);
                    }
                    index += 1;
                )+
                let _ = index;
            }

            /// Redis's answer to the question of the phase that asked (`None`: not asked).
            pub fn answered(&self, states: &mut PhaseStates, answer: Option<Reply>) {
                let mut index = 0;
                $(
                    if index == states.resume {
                        return self.$field.answered(&mut states.$field, answer);
                    }
                    index += 1;
                )+
                let _ = (index, answer);
            }

            /// Sends a taken request through the phase that took it.
            pub fn hand_over(&self, taken: Taken, handover: Handover<'_>) -> Option<Held> {
                match taken {
                    $(Taken::$variant(taken) => {
                        self.$field.hand_over(taken, handover).map(Held::$variant)
                    })+
                }
            }

            /// Whether a taken request's reply is read by another session.
            pub fn answered_elsewhere(taken: &Taken) -> bool {
                match taken {
                    $(Taken::$variant(taken) => <$phase as Phase>::answered_elsewhere(taken),)+
                }
            }

            /// Whether a taken request needs a place in the session's connection's queue.
            pub fn uses_session_connection(taken: &Taken) -> bool {
                match taken {
                    $(Taken::$variant(taken) => {
                        <$phase as Phase>::uses_session_connection(taken)
                    })+
                }
            }

            /// The client of a held request left.
            pub fn give_up(&self, held: &Held, reply_to: &ReplySender, ticket: u64) {
                match held {
                    $(Held::$variant(held) => self.$field.give_up(held, reply_to, ticket),)+
                }
            }

            /// Notes what a forwarded command writes, for the phases that watch it; the phase
            /// that took the command, if one did, sees to its writes itself. `None` when no
            /// phase wants to hear of its end (most commands): nothing is carried with it.
            #[inline(always)]
            pub fn note_writes(
                &self,
                policies: &Policies,
                states: &mut PhaseStates,
                write: Write<'_, '_>,
            ) -> Option<WrittenKeys> {
                if write.info.has_flag(flags::READONLY) {
                    return None;
                }
                // The phases that watch writes, less the one that took the command.
                let mut watching: u8 = 0;
                let mut index = 0;
                $(
                    if !matches!(write.taken_by, Some(Taken::$variant(_)))
                        && self.$field.watches_writes(policies)
                    {
                        watching |= 1 << index;
                    }
                    index += 1;
                )+
                let _ = index;
                if watching == 0 {
                    return None;
                }
                let mut written = WrittenKeys::new();
                if write.info.role == Role::ChangesEveryKey {
                    let mut phases = 0;
                    let mut index = 0;
                    $(
                        if watching & (1 << index) != 0
                            && self.$field.flushing(policies, &mut states.$field)
                        {
                            phases |= 1 << index;
                        }
                        index += 1;
                    )+
                    let _ = index;
                    if phases != 0 {
                        written.push(Written { key: None, phases });
                    }
                    return (!written.is_empty()).then_some(written);
                }
                for key in write
                    .key_positions
                    .iter()
                    .filter_map(|&position| write.args.get(position))
                {
                    let mut phases = 0;
                    let mut index = 0;
                    $(
                        if watching & (1 << index) != 0
                            && self.$field.writing(policies, &mut states.$field, key)
                        {
                            phases |= 1 << index;
                        }
                        index += 1;
                    )+
                    let _ = index;
                    if phases != 0 {
                        written.push(Written {
                            key: Some(SmallVec::from_slice(key)),
                            phases,
                        });
                    }
                }
                (!written.is_empty()).then_some(written)
            }

            /// Redis answered these writes (or their session ended): the phases that watch
            /// them hear of it.
            pub fn end_writes(
                &self,
                states: &mut PhaseStates,
                written: impl IntoIterator<Item = Written>,
            ) {
                for write in written {
                    let mut index = 0;
                    $(
                        if write.phases & (1 << index) != 0 {
                            match &write.key {
                                Some(key) => self.$field.written(&mut states.$field, key),
                                None => self.$field.flushed(&mut states.$field),
                            }
                        }
                        index += 1;
                    )+
                    let _ = index;
                }
            }

            /// Whether some phase wants Redis's news of changed keys.
            pub fn watch_changes(&self, policies: &Policies) -> bool {
                false $(|| self.$field.watches_changes(policies))+
            }

            /// Redis says these keys changed.
            pub fn changed(&self, policies: &Policies, keys: &[Vec<u8>]) {
                for key in keys {
                    $(self.$field.changed(policies, key);)+
                }
            }

            /// Redis's news may have been lost.
            pub fn all_changed(&self, policies: &Policies) {
                $(self.$field.all_changed(policies);)+
            }

            /// One cluster node's news may have been lost.
            pub fn some_changed(&self, policies: &Policies) {
                $(self.$field.some_changed(policies);)+
            }
        }
    };
}

phase_list! {
    Deny(deny): Denying,
    RateLimit(rate_limit): RateLimiting,
    Lock(lock): LockTable,
    Cache(cache): Coherence,
    Route(route): Routing,
    HotKeys(hotkeys): Counting,
}

// A request's follows travel with it through calls, and into the reply queue: in a register,
// they are never written field by field and read back as a block (which waits for the writes
// to reach the cache).
const _: () = assert!(std::mem::size_of::<Follows>() <= 8);

/// A forwarded command, as the phases that watch writes see it.
pub struct Write<'r, 'a> {
    pub info: &'r CommandInfo,
    pub args: &'r Args<'a>,
    pub key_positions: &'r [usize],
    /// The phase that took it, if one did.
    pub taken_by: Option<&'r Taken>,
}

impl PhaseStates {
    /// Follows the policies in force; `true` when they are others than those what is kept
    /// was made under (a reload), which the request at the front then meets from the start.
    #[inline(always)]
    fn follow(&mut self, policies: &Policies) -> bool {
        let new = self.generation != policies.generation();
        self.generation = policies.generation();
        new
    }
}

#[cfg(test)]
mod tests {
    use super::PhaseStates;
    use crate::config::Config;
    use crate::policy::Policies;

    fn compiled(text: &str) -> Policies {
        let config: Config = toml::from_str(text).expect("a valid config");
        Policies::compile(&config, None)
    }

    /// A reload frees the old policies; the new ones may be built at the same address, and
    /// what a held request kept under the old ones (the phase it resumes at, the rule it
    /// resumes from) must not carry over to them.
    #[test]
    fn progress_starts_over_under_policies_built_where_the_old_ones_were() {
        let rule = |name: &str| {
            format!(
                "[[rate_limit]]\nname = \"{name}\"\nkeys = [\"*\"]\nlimit = 5\nperiod = \"1s\"\n"
            )
        };
        let mut in_force = compiled(&rule("first"));
        let mut states = PhaseStates::default();
        assert!(
            states.follow(&in_force),
            "a new session starts from nothing"
        );
        assert!(
            !states.follow(&in_force),
            "the same policies keep the progress"
        );

        // Built in the very place the old value lived.
        in_force = compiled(&rule("second"));
        assert!(
            states.follow(&in_force),
            "progress made under other policies"
        );
    }
}
