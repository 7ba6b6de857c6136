//! Policies compiled from the config's rules, and what they decide per command.
//!
//! A [`Policies`] value is immutable: a reload compiles a new one and swaps it in, so a command
//! is judged by one consistent set of rules. Rules whose definition did not change keep their
//! state (rate-limit buckets) across the swap.

pub mod deny;
pub mod glob;
pub mod global;
pub mod matcher;
pub mod rate_limit;

use std::sync::Arc;

use crate::command::CommandInfo;
use crate::config::Config;
use crate::resp::request::Args;
use deny::{Client, Denial};
use rate_limit::{RateLimiter, Requester, Verdict};

#[derive(Default)]
pub struct Policies {
    pub denials: Vec<Arc<Denial>>,
    pub rate_limits: Vec<Arc<RateLimiter>>,
}

impl Policies {
    /// Compiles the rules of `config`, keeping the state of rules unchanged since `previous`.
    pub fn compile(config: &Config, previous: Option<&Policies>) -> Policies {
        let rate_limits = config
            .rate_limit
            .iter()
            .map(|rule| {
                previous
                    .and_then(|previous| {
                        previous
                            .rate_limits
                            .iter()
                            .find(|kept| kept.rule == *rule)
                            .cloned()
                    })
                    .unwrap_or_else(|| Arc::new(RateLimiter::new(rule.clone())))
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
        Policies {
            denials,
            rate_limits,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rate_limits.is_empty() && self.denials.is_empty()
    }

    /// The first deny rule that matches the command, if any.
    pub fn denial(
        &self,
        info: &CommandInfo,
        args: &Args<'_>,
        key_positions: &[usize],
        client: &Client<'_>,
    ) -> Option<&Denial> {
        self.denials
            .iter()
            .find(|denial| denial.matches(info, args, key_positions, client))
            .map(|denial| &**denial)
    }

    /// Copies every rule's counts to its Prometheus series.
    pub fn publish_metrics(&self) {
        for denial in &self.denials {
            denial.publish_metrics();
        }
        for limiter in &self.rate_limits {
            limiter.publish_metrics();
        }
    }

    /// The first rate limit that applies to the command decides.
    pub fn rate_limit(
        &self,
        info: &CommandInfo,
        args: &Args<'_>,
        key_positions: &[usize],
        requester: &Requester<'_>,
        delayed: std::time::Duration,
        answer: Option<global::Answer>,
    ) -> Verdict {
        for limiter in &self.rate_limits {
            let matcher = limiter.matcher();
            if !matcher.applies_to(info) {
                continue;
            }
            if matcher.has_key_patterns() {
                let mut keys = matcher.matching_keys(args, key_positions).peekable();
                if keys.peek().is_none() {
                    continue;
                }
                return limiter.decide(keys, requester, delayed, answer);
            }
            let keys = key_positions
                .iter()
                .filter_map(|&position| args.get(position));
            return limiter.decide(keys, requester, delayed, answer);
        }
        Verdict::Allow
    }
}
