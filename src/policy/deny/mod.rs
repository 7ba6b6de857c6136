//! `[[deny]]`: commands refused with `-NOPERM` before they reach Redis, for everyone or for
//! chosen clients (`FLUSHALL`, `KEYS`, `CONFIG`, `DEBUG`…).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use metrics::{counter, Counter};

use super::matcher::RuleMatcher;
use super::phase::{Decision, Handover, Phase, Sender, Subject, Way};
use super::Policies;
use crate::command::CommandInfo;
use crate::config::rules::Mode;
use crate::config::DenyRule;
use crate::glob::Glob;
use crate::resp::reply;
use crate::resp::request::Args;
use crate::upstream::Upstream;

pub struct Denial {
    pub rule: DenyRule,
    matcher: RuleMatcher,
    clients: Vec<Glob>,
    denied: AtomicU64,
    denied_metric: Counter,
}

impl Denial {
    pub fn new(rule: DenyRule) -> Denial {
        let action = match rule.mode {
            Mode::Enforce => "deny",
            Mode::Shadow => "shadow",
        };
        Denial {
            matcher: RuleMatcher::compile(&rule),
            clients: rule
                .clients
                .iter()
                .filter_map(|client| Glob::new(client.get_ref()).ok())
                .collect(),
            denied: AtomicU64::new(0),
            denied_metric: counter!("keyward_denied_total", "rule" => rule.name.get_ref().clone(), "action" => action),
            rule,
        }
    }

    /// Whether the rule applies to this command from this client.
    pub fn matches(
        &self,
        info: &CommandInfo,
        args: &Args<'_>,
        key_positions: &[usize],
        client: &Sender<'_>,
    ) -> bool {
        self.matcher.applies_to(info)
            && (!self.matcher.has_key_patterns()
                || self
                    .matcher
                    .matching_keys(args, key_positions)
                    .next()
                    .is_some())
            && (self.clients.is_empty()
                || self.clients.iter().any(|glob| {
                    client.name.is_some_and(|name| glob.matches(name))
                        || glob.matches(client.address)
                }))
    }

    pub fn enforced(&self) -> bool {
        self.rule.mode == Mode::Enforce
    }

    /// Counts a match; returns the refusal in enforce mode.
    pub fn apply(&self, info: &CommandInfo) -> Option<Bytes> {
        self.denied.fetch_add(1, Ordering::Relaxed);
        match self.rule.mode {
            Mode::Shadow => None,
            Mode::Enforce => Some(refusal(self.rule.name.get_ref(), info)),
        }
    }

    pub fn publish_metrics(&self) {
        self.denied_metric
            .absolute(self.denied.load(Ordering::Relaxed));
    }
}

/// `NOPERM keyward rule '<rule>' refuses the '<command>' command`.
pub fn refusal(rule: &str, info: &CommandInfo) -> Bytes {
    reply::error(&format!(
        "NOPERM keyward rule '{rule}' refuses the '{}' command",
        info.name
    ))
}

/// The deny phase: the first rule in force that matches refuses the command. Shadow rules that
/// match count it, as they count every command they see, and the search goes on past them, so
/// adding one never changes what happens.
pub struct Denying;

impl Phase for Denying {
    type Session = ();
    type Taken = Infallible;
    type Held = Infallible;
    type Follow = Infallible;
    type Follower = ();

    fn new(_: &Arc<Upstream>) -> Denying {
        Denying
    }

    #[inline]
    fn active(&self, policies: &Policies, _: Way) -> bool {
        !policies.denials.is_empty()
    }

    #[inline(always)]
    fn decide(
        &self,
        policies: &Policies,
        _: &mut (),
        subject: &Subject<'_, '_>,
    ) -> Decision<Infallible> {
        if policies.denials.is_empty() {
            return Decision::Pass;
        }
        // Checked before a connection of the session's own is opened, the request meets the
        // phases again once sent there: shadow rules count it then, once.
        let counting_shadow = subject.way != Way::BeforeOwn;
        policies
            .denials
            .iter()
            .filter(|denial| counting_shadow || denial.enforced())
            .filter(|denial| {
                denial.matches(
                    subject.info,
                    subject.args,
                    subject.key_positions,
                    &subject.sender,
                )
            })
            .find_map(|denial| denial.apply(subject.info))
            .map_or(Decision::Pass, Decision::Answer)
    }

    fn hand_over(self: &Arc<Self>, taken: Infallible, _: Handover<'_>) -> Option<Infallible> {
        match taken {}
    }
}
