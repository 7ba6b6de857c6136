//! `[[deny]]`: commands refused with `-NOPERM` before they reach Redis, for everyone or for
//! chosen clients (`FLUSHALL`, `KEYS`, `CONFIG`, `DEBUG`…).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use metrics::{counter, Counter};

use super::matcher::RuleMatcher;
use crate::command::CommandInfo;
use crate::config::rules::Mode;
use crate::config::DenyRule;
use crate::glob::Glob;
use crate::resp::reply;
use crate::resp::request::Args;

/// Who sends a command, as policies see clients.
pub struct Client<'a> {
    /// The `CLIENT SETNAME` name, if any.
    pub name: Option<&'a [u8]>,
    /// The peer's IP address (without the port: one client, many connections).
    pub address: &'a [u8],
    /// What `bucket = "client"` counts by: `name:<name>`, else `addr:<ip>`, so that a client
    /// cannot name itself after another's address.
    pub bucket: &'a [u8],
}

impl Client<'_> {
    pub fn bucket(&self) -> &[u8] {
        self.bucket
    }
}

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
        client: &Client<'_>,
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
