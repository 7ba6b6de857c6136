//! What keyward reports about itself, the same over HTTP (`admin`, and its page) and through
//! the `KEYWARD` command (`session`): itself and its upstream, the config in force, the cache
//! and rate-limit rules, the hottest keys, the biggest ones.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use crate::context::Context;
use crate::policy::cache::RuleStats;
use crate::policy::hotkeys::big_keys::BigKeysReport;
use crate::policy::hotkeys::{By, HotKeys, Report};
use crate::upstream::cluster::NodeReport;
use crate::upstream::Invalidations;

/// The report behind `KEYWARD INFO`: keyward, its clients and the Redis it forwards to.
#[derive(Debug, Serialize)]
pub struct Info {
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub clients: usize,
    /// `listen.max_clients`: beyond it, clients are refused.
    pub max_clients: usize,
    pub connections_received: u64,
    pub upstream: UpstreamInfo,
}

#[derive(Debug, Serialize)]
pub struct UpstreamInfo {
    pub address: String,
    /// Whether keyward is ready (`/readyz`): Redis answers and accepts its credentials.
    pub up: bool,
    /// Why not, when it is not.
    pub down_because: Option<String>,
    pub redis_version: String,
    pub pooled_connections_up: usize,
    pub pooled_connections: usize,
    /// The last error a pooled connection that is down ran into.
    pub last_error: Option<String>,
    /// The invalidation connection that caching and lock releases rely on: `up`, `down`, or
    /// `unsupported` (keyward's user may not run `CLIENT TRACKING`).
    pub invalidations: &'static str,
    /// `standalone`, `cluster` or `sentinel`.
    pub topology: &'static str,
    /// In cluster mode, the slot map's nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_nodes: Option<Vec<NodeReport>>,
    /// In sentinel mode, what the sentinels say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelReport>,
}

/// Sentinel mode, for `KEYWARD INFO`.
#[derive(Debug, Serialize)]
pub struct SentinelReport {
    pub master_name: String,
    /// The primary keyward forwards to, once the sentinels named one.
    pub primary: Option<String>,
    /// Sentinels keyward listens to for failovers, of those configured.
    pub sentinels_listening: usize,
    pub sentinels: usize,
}

pub fn info(context: &Context) -> Info {
    let upstream = &context.upstream;
    let (up, total, last_error) = upstream.pool_state();
    let down_because = upstream.not_ready_because();
    Info {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: context.started.elapsed().as_secs(),
        clients: context.clients.load(Ordering::Relaxed),
        max_clients: context.live.load().config.listen.max_clients.get(),
        connections_received: context.connections_received.load(Ordering::Relaxed),
        upstream: UpstreamInfo {
            address: upstream.address().to_string(),
            up: down_because.is_none(),
            down_because,
            redis_version: upstream.facts().version.to_string(),
            pooled_connections_up: up,
            pooled_connections: total,
            last_error,
            invalidations: invalidations(context),
            topology: match (&upstream.cluster, &upstream.sentinel) {
                (Some(_), _) => "cluster",
                (None, Some(_)) => "sentinel",
                (None, None) => "standalone",
            },
            cluster_nodes: upstream.cluster.as_ref().map(|cluster| cluster.nodes()),
            sentinel: upstream.sentinel.as_ref().map(|sentinel| SentinelReport {
                master_name: sentinel.master_name().to_string(),
                primary: sentinel.primary().map(|primary| primary.to_string()),
                sentinels_listening: sentinel.sentinels_listening(),
                sentinels: sentinel.sentinel_count(),
            }),
        },
    }
}

/// One cache rule, for `KEYWARD CACHE STATS` and the admin page.
#[derive(Debug, Serialize)]
pub struct CacheRuleReport {
    pub name: String,
    pub mode: String,
    #[serde(flatten)]
    pub stats: RuleStats,
    pub max_memory: u64,
    pub ttl: String,
}

/// The state of the connection Redis tells which keys changed: `up`, `down` or
/// `unsupported`.
pub fn invalidations(context: &Context) -> &'static str {
    match context.upstream.invalidations() {
        Invalidations::Down => "down",
        Invalidations::Unsupported => "unsupported",
        Invalidations::RedirectTo(_) => "up",
    }
}

/// Every cache rule in force, in rule order.
pub fn caches(context: &Context) -> Vec<CacheRuleReport> {
    let active = context.live.load();
    active
        .policies
        .caches
        .iter()
        .map(|cache| {
            let rule = &cache.rule;
            CacheRuleReport {
                name: cache.name().to_string(),
                mode: config_name(&rule.mode),
                stats: cache.stats(),
                max_memory: rule.max_memory.get(),
                ttl: humantime::format_duration(rule.ttl.get()).to_string(),
            }
        })
        .collect()
}

/// One rate-limit rule, for `KEYWARD RATELIMIT STATS` and the admin page. In shadow mode,
/// `limited` counts what the rule would have limited.
#[derive(Debug, Serialize)]
pub struct RateLimitReport {
    pub name: String,
    pub allowed: u64,
    pub limited: u64,
    pub buckets: usize,
    pub limit: u32,
    pub period: String,
    pub burst: u32,
    pub bucket: String,
    pub action: String,
    pub mode: String,
}

/// Every rate-limit rule in force, in rule order.
pub fn rate_limits(context: &Context) -> Vec<RateLimitReport> {
    let active = context.live.load();
    active
        .policies
        .rate_limits
        .iter()
        .map(|limiter| {
            let (allowed, limited, buckets) = limiter.stats();
            let rule = &limiter.rule;
            RateLimitReport {
                name: limiter.name().to_string(),
                allowed,
                limited,
                buckets,
                limit: *rule.limit.get_ref(),
                period: humantime::format_duration(rule.period.get()).to_string(),
                burst: rule.burst(),
                bucket: config_name(&rule.bucket),
                action: config_name(&rule.action),
                mode: config_name(&rule.mode),
            }
        })
        .collect()
}

/// The name a setting has in the config file (`"key"`, `"delay"`, `"shadow"`).
fn config_name(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn enabled_hotkeys(context: &Context) -> Result<Arc<HotKeys>, String> {
    context
        .live
        .load()
        .policies
        .hotkeys
        .clone()
        .ok_or_else(|| "hot keys are disabled ([hotkeys] enabled = false)".to_string())
}

/// The report behind `GET /hotkeys` and `KEYWARD HOTKEYS`.
pub fn hotkeys(
    context: &Context,
    window: Option<&str>,
    by: Option<&str>,
    limit: usize,
) -> Result<Report, String> {
    let hotkeys = enabled_hotkeys(context)?;
    let by = match by {
        None => By::Requests,
        Some(text) => {
            By::parse(text).ok_or_else(|| format!("by must be requests or bytes, not {text:?}"))?
        }
    };
    let wanted = window
        .map(|text| humantime::parse_duration(text).map_err(|_| format!("bad window {text:?}")))
        .transpose()?;
    let length = hotkeys
        .window(wanted)
        .ok_or_else(|| format!("window {window:?} is not one of [hotkeys] windows"))?;
    let mut report = hotkeys
        .report(length, by, limit)
        .ok_or_else(|| "no such window".to_string())?;
    if let Some(cluster) = &context.upstream.cluster {
        for entry in &mut report.keys {
            entry.node = cluster.node_of_key(entry.key.as_bytes());
        }
    }
    Ok(report)
}

/// The report behind `GET /bigkeys` and `KEYWARD BIGKEYS`.
pub fn big_keys(context: &Context, limit: usize) -> Result<BigKeysReport, String> {
    Ok(enabled_hotkeys(context)?.big_keys(limit))
}

/// The report behind `GET /config` and `KEYWARD CONFIG`.
pub fn config(context: &Context) -> serde_json::Value {
    let status = context.live.status();
    let cluster = context.upstream.cluster.as_ref();
    serde_json::json!({
        "status": status,
        "config": context.live.load().config,
        "cluster_nodes": cluster.map(|cluster| cluster.nodes()),
    })
}
