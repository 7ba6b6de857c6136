//! Running the policy phases on one request (step 3 of the [pipeline](super::pipeline)):
//! those that decide on it, then, once its fate is decided, those that follow it to its
//! answer, and the writes it makes noted for the phases that watch them. Inlined into the
//! request loop, as every step is.

use super::Session;
use crate::command::CommandInfo;
use crate::policy::phase::{Decision, FollowedRequest, Sender, Subject, Way};
use crate::policy::phases::{Follows, Roles, Taken, Write, WrittenKeys};
use crate::policy::Policies;
use crate::resp::request::Args;

/// What the phases have to do with one request.
#[derive(Clone, Copy)]
pub(super) struct PhaseRun {
    pub way: Way,
    /// The phases that decide on it and those that follow it to its answer.
    pub roles: Roles,
    pub request_len: usize,
    /// The batch's time (`Subject::now`).
    pub now: quanta::Instant,
}

impl Session {
    /// The policy phases, in their order, on the request as the session knows it; once they
    /// decided its fate, those that follow requests to their answers start following it: what
    /// they follow comes back with the decision, to go with the request.
    #[inline(always)]
    pub(super) fn run_phases(
        &mut self,
        policies: &Policies,
        info: &'static CommandInfo,
        args: &Args<'_>,
        run: PhaseRun,
    ) -> (Decision<Taken>, Follows) {
        // A request no phase decides on passes as it is, without a decision moved about: with
        // only hot keys in force, that is every request.
        if run.roles.deciding == 0 {
            return (
                Decision::Pass,
                self.start_following(policies, info, args, run),
            );
        }
        // Put together only for phases that decide: one that only follows reads what the
        // request itself says.
        let subject = Subject {
            info,
            args,
            key_positions: &self.key_positions,
            way: run.way,
            sender: Sender {
                name: self.client.name.as_deref(),
                address: &self.peer_ip,
            },
            db: self.client.db,
            protocol: self.client.protocol,
            now: run.now,
            reply_to: &self.reply_sender,
            ticket: self.replies.next_ticket(),
        };
        let phases = &self.context.phases;
        let decision = phases.decide(
            policies,
            &mut self.phase_states,
            &subject,
            run.roles.deciding,
        );
        let follows = match decision {
            Decision::HoldUntil(_) | Decision::Ask(_) => Follows::default(),
            _ => self.start_following(policies, info, args, run),
        };
        (decision, follows)
    }

    /// The request's fate is decided: the phases that follow it to its answer start.
    #[inline(always)]
    fn start_following(
        &mut self,
        policies: &Policies,
        info: &'static CommandInfo,
        args: &Args<'_>,
        run: PhaseRun,
    ) -> Follows {
        if run.roles.following == 0 {
            return Follows::default();
        }
        let request = FollowedRequest {
            info,
            args,
            key_positions: &self.key_positions,
        };
        let followers = &mut self.replies.followers;
        let (length, following) = (run.request_len, run.roles.following);
        self.context
            .phases
            .follow(policies, followers, request, length, following)
    }

    /// What a forwarded request writes, noted for the phases that watch writes.
    #[inline(always)]
    pub(super) fn note_writes(
        &mut self,
        policies: &Policies,
        info: &CommandInfo,
        args: &Args<'_>,
        way: Option<Way>,
        taken_by: Option<&Taken>,
    ) -> Option<WrittenKeys> {
        if !way.is_some_and(Way::forwarded) {
            return None;
        }
        let write = Write {
            info,
            args,
            key_positions: &self.key_positions,
            taken_by,
        };
        let states = &mut self.phase_states;
        self.context.phases.note_writes(policies, states, write)
    }
}
