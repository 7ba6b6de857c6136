//! Policies compiled from the config's rules, and what they decide per command.
//!
//! A [`Policies`] value is immutable: a reload compiles a new one and swaps it in, so a command
//! is judged by one consistent set of rules. Rules whose definition did not change keep their
//! state (rate-limit buckets) across the swap.

pub mod cache;
pub mod deny;
pub mod hotkeys;
pub mod judging;
pub mod lock;
pub mod matcher;
pub mod rate_limit;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::command::CommandInfo;
use crate::config::Config;
use crate::policy::cache::RuleCache;
use crate::policy::hotkeys::HotKeys;
use crate::policy::lock::RuleLocks;
use crate::resp::request::Args;
use deny::{Client, Denial};
use rate_limit::{RateLimiter, Requester, Verdict};

/// Counts compilations, for [`Policies::generation`]. It starts at 1: 0 is the empty default,
/// which judges nothing.
static COMPILED: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
pub struct Policies {
    /// Which compilation this is: rule indices mean something only under the policies they
    /// were taken from, and an address could be reused by the next compilation once a reload
    /// frees the old one, so progress follows this number instead.
    generation: u64,
    pub denials: Vec<Arc<Denial>>,
    pub rate_limits: Vec<Arc<RateLimiter>>,
    /// Hot-key counting, when `[hotkeys] enabled`.
    pub hotkeys: Option<Arc<HotKeys>>,
    pub caches: Vec<Arc<RuleCache>>,
    pub locks: Vec<Arc<RuleLocks>>,
}

impl Policies {
    /// Compiles the rules of `config`, keeping the state of rules unchanged since `previous`.
    pub fn compile(config: &Config, previous: Option<&Policies>) -> Policies {
        let rate_limits = config
            .rate_limit
            .iter()
            .map(|rule| {
                let same_name = previous.and_then(|previous| {
                    previous
                        .rate_limits
                        .iter()
                        .find(|kept| kept.rule.name.get_ref() == rule.name.get_ref())
                });
                match same_name {
                    Some(kept) if kept.rule == *rule => Arc::clone(kept),
                    kept => Arc::new(RateLimiter::new(rule.clone(), kept.map(|kept| &**kept))),
                }
            })
            .collect();
        let denials = config
            .deny
            .iter()
            .map(|rule| {
                previous
                    .and_then(|previous| {
                        previous
                            .denials
                            .iter()
                            .find(|kept| kept.rule == *rule)
                            .cloned()
                    })
                    .unwrap_or_else(|| Arc::new(Denial::new(rule.clone())))
            })
            .collect();
        let hotkeys = config.hotkeys.enabled.then(|| {
            previous
                .and_then(|previous| previous.hotkeys.as_ref())
                .filter(|kept| kept.config == config.hotkeys)
                .cloned()
                .unwrap_or_else(|| Arc::new(HotKeys::new(config.hotkeys.clone())))
        });
        let caches = config
            .cache
            .iter()
            .map(|rule| {
                previous
                    .and_then(|previous| {
                        previous
                            .caches
                            .iter()
                            .find(|kept| kept.rule == *rule)
                            .cloned()
                    })
                    .unwrap_or_else(|| Arc::new(RuleCache::new(rule.clone())))
            })
            .collect();
        let locks = config
            .lock
            .iter()
            .map(|rule| Arc::new(RuleLocks::new(rule.clone())))
            .collect();
        Policies {
            generation: COMPILED.fetch_add(1, Ordering::Relaxed),
            denials,
            rate_limits,
            hotkeys,
            caches,
            locks,
        }
    }

    /// Whether commands are judged (deny rules, rate limits) before they are sent. Cache and
    /// lock rules act later, only on the commands they cover; hot keys only count.
    pub fn judges(&self) -> bool {
        !(self.rate_limits.is_empty() && self.denials.is_empty())
    }

    /// Whether writes are watched: cache rules drop what they change, and lock rules wake the
    /// waiters of what they may release.
    pub fn watches_writes(&self) -> bool {
        !(self.caches.is_empty() && self.locks.is_empty())
    }

    /// Judges a command about to be sent to Redis: deny rules first, then rate limits. Within
    /// each kind the first matching rule in force decides; a shadow rule only counts, and the
    /// search goes on past it, so adding one never changes what happens.
    pub fn judge(
        &self,
        info: &CommandInfo,
        args: &Args<'_>,
        key_positions: &[usize],
        client: &Client<'_>,
        delayed: std::time::Duration,
        progress: &mut Progress,
    ) -> Verdict {
        if !progress.denials_judged {
            progress.denials_judged = true;
            if let Some(refusal) = self.denies(info, args, key_positions, client, true) {
                return Verdict::Reject(refusal);
            }
        }
        let requester = Requester {
            client: client.bucket(),
        };
        for (index, limiter) in self.rate_limits.iter().enumerate() {
            let matcher = limiter.matcher();
            if !matcher.applies_to(info) || progress.passed.contains(&index) {
                continue;
            }
            let mut matching = matcher.matching_keys(args, key_positions).peekable();
            if matcher.has_key_patterns() && matching.peek().is_none() {
                continue;
            }
            let answer = progress.take_answer(index);
            let verdict = limiter.decide(
                index,
                matching,
                &requester,
                delayed,
                answer,
                &mut progress.charged,
            );
            match verdict {
                Verdict::Allow => {
                    progress.passed.push(index);
                    progress.charged.clear();
                    if !limiter.is_shadow() {
                        return Verdict::Allow;
                    }
                }
                other => return other,
            }
        }
        Verdict::Allow
    }

    /// Judges a command by the deny rules alone: the first rule in force that matches refuses
    /// it. With `counting_shadow`, shadow rules that match count it, as they count every
    /// command they see; without, they are left out, for a command judged in full later (one
    /// checked before a dedicated connection is opened for it, so that a refused `MONITOR` or
    /// `SUBSCRIBE` costs no connection), so that they count it once.
    pub fn denies(
        &self,
        info: &CommandInfo,
        args: &Args<'_>,
        key_positions: &[usize],
        client: &Client<'_>,
        counting_shadow: bool,
    ) -> Option<Bytes> {
        self.denials
            .iter()
            .filter(|denial| counting_shadow || denial.enforced())
            .filter(|denial| denial.matches(info, args, key_positions, client))
            .find_map(|denial| denial.apply(info))
    }

    /// Copies every rule's counts to its Prometheus series.
    pub fn publish_metrics(&self) {
        for denial in &self.denials {
            denial.publish_metrics();
        }
        for limiter in &self.rate_limits {
            limiter.publish_metrics();
        }
        for cache in &self.caches {
            cache.publish_metrics();
        }
    }
}

/// Where the policies stand on the request at the front of a session's input. It is kept while
/// the request is held (delayed, or waiting for Redis's answer to a global rule) and judged
/// again, so that judging it again never charges a bucket twice.
#[derive(Debug, Default)]
pub struct Progress {
    /// Rate limits (by index) that already let this request through, or counted it in shadow.
    passed: Vec<usize>,
    /// Buckets the rate limit judging now has already charged for this request (which also
    /// keeps a key named twice in one command from being charged twice).
    charged: Vec<u64>,
    /// Redis's answers for global rules, by rule index.
    answers: Vec<(usize, rate_limit::global::Answer)>,
    denials_judged: bool,
    /// The generation of the policies this progress was made under: rule indices mean nothing
    /// under others, so a reload starts the judgement over.
    generation: u64,
}

impl Progress {
    /// Starts over if the policies in force are not the ones this progress was made under.
    pub fn follow(&mut self, policies: &Policies) {
        if self.generation != policies.generation {
            self.start_over();
            self.generation = policies.generation;
        }
    }

    /// Forgets the request judged, for the next one. The lists keep their memory, so judging
    /// a command costs no allocation once a session has judged a few.
    pub fn start_over(&mut self) {
        // A command naming a million keys leaves no million-entry list behind it.
        const KEPT: usize = 64;
        self.passed.clear();
        self.passed.shrink_to(KEPT);
        self.charged.clear();
        self.charged.shrink_to(KEPT);
        self.answers.clear();
        self.denials_judged = false;
    }

    pub fn record_answer(&mut self, rule: usize, answer: rate_limit::global::Answer) {
        self.answers.push((rule, answer));
    }

    fn take_answer(&mut self, rule: usize) -> Option<rate_limit::global::Answer> {
        let position = self.answers.iter().position(|(index, _)| *index == rule)?;
        Some(self.answers.swap_remove(position).1)
    }
}

#[cfg(test)]
mod tests {
    use super::{Policies, Progress};
    use crate::config::Config;

    fn compiled(text: &str) -> Policies {
        let config: Config = toml::from_str(text).expect("a valid config");
        Policies::compile(&config, None)
    }

    /// A reload frees the old policies; the new ones may be built at the same address, and
    /// the rule indices a held request already passed must not carry over to them.
    #[test]
    fn progress_starts_over_under_policies_built_where_the_old_ones_were() {
        let rule = |name: &str| {
            format!(
                "[[rate_limit]]\nname = \"{name}\"\nkeys = [\"*\"]\nlimit = 5\nperiod = \"1s\"\n"
            )
        };
        let mut in_force = compiled(&rule("first"));
        let mut progress = Progress::default();
        progress.follow(&in_force);
        progress.passed.push(0);
        progress.denials_judged = true;
        progress.follow(&in_force);
        assert_eq!(progress.passed, [0], "the same policies keep the progress");

        // Built in the very place the old value lived.
        in_force = compiled(&rule("second"));
        progress.follow(&in_force);
        assert!(
            progress.passed.is_empty(),
            "progress made under other policies"
        );
        assert!(!progress.denials_judged);
    }
}
