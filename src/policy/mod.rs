//! Policies compiled from the config's rules, and what they decide per command.
//!
//! A [`Policies`] value is immutable: a reload compiles a new one and swaps it in, so a command
//! is judged by one consistent set of rules. Rules whose definition did not change keep their
//! state (rate-limit buckets) across the swap.

pub mod cache;
pub mod deny;
pub mod hotkeys;
pub mod lock;
pub mod matcher;
pub mod phase;
pub mod phases;
pub mod rate_limit;
pub mod route;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::policy::cache::RuleCache;
use crate::policy::hotkeys::HotKeys;
use crate::policy::lock::RuleLocks;
use deny::Denial;
use rate_limit::RateLimiter;
use route::Route;

/// Counts compilations, for [`Policies::generation`]. It starts at 1: 0 is the empty default,
/// which judges nothing.
static COMPILED: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
pub struct Policies {
    /// Which compilation this is: rule indices mean something only under the policies they
    /// were taken from, and an address could be reused by the next compilation once a reload
    /// frees the old one, so what sessions keep follows this number instead.
    generation: u64,
    pub denials: Vec<Arc<Denial>>,
    pub rate_limits: Vec<Arc<RateLimiter>>,
    /// Hot-key counting, when `[hotkeys] enabled`.
    pub hotkeys: Option<Arc<HotKeys>>,
    pub caches: Vec<Arc<RuleCache>>,
    pub locks: Vec<Arc<RuleLocks>>,
    pub routes: Vec<Arc<Route>>,
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
        let routes = config
            .route
            .iter()
            .map(|rule| Arc::new(Route::new(rule.clone())))
            .collect();
        Policies {
            generation: COMPILED.fetch_add(1, Ordering::Relaxed),
            denials,
            rate_limits,
            hotkeys,
            caches,
            locks,
            routes,
        }
    }

    /// Which compilation this is: what a session kept under other policies (rule indices)
    /// means nothing under these.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
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
