//! `KEYWARD <subcommand>`: keyward's own commands, so `redis-cli` users reach everything
//! without HTTP.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::context::Context;
use crate::reports;
use crate::resp::reply::{self, ReplyWriter};
use crate::resp::Protocol;
use crate::upstream::Invalidations;

const HELP: &[&str] = &[
    "KEYWARD <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "INFO",
    "    Version, uptime, clients and the state of the upstream Redis.",
    "CONFIG",
    "    The config in force (JSON): file hash, load time, last reload error, settings.",
    "HOTKEYS [WINDOW <duration>] [BY requests|bytes] [COUNT <n>]",
    "    The hottest keys and key patterns in a window: requests or bytes (upper bound), error, reads, writes, bytes in and out.",
    "BIGKEYS [COUNT <n>]",
    "    The largest replies and written values seen: key, command, side, bytes, times seen.",
    "RATELIMIT STATS",
    "    Per rate-limit rule: commands allowed and limited, buckets held.",
    "CACHE STATS",
    "    The invalidation connection's state, and per cache rule: hits, misses, invalidations, evictions, bytes, entries.",
    "LOCKS",
    "    Contended locks: key, rule, holder token (if keyward granted it), waiters, oldest wait.",
    "CACHE FLUSH [<rule>]",
    "    Drop every cached entry, or those of one rule.",
    "HELP",
    "    Print this help.",
];

pub fn execute(args: &[Vec<u8>], context: &Context, protocol: Protocol) -> Bytes {
    let subcommand = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
    match (subcommand.as_str(), args.len()) {
        ("INFO", 2) => ReplyWriter::new(protocol)
            .bulk(info(context).as_bytes())
            .finish(),
        ("CONFIG", 2) => ReplyWriter::new(protocol)
            .bulk(format!("{:#}", reports::config(context)).as_bytes())
            .finish(),
        ("RATELIMIT", 3) if args[2].eq_ignore_ascii_case(b"stats") => ReplyWriter::new(protocol)
            .bulk(rate_limit_stats(context).as_bytes())
            .finish(),
        ("CACHE", 3) if args[2].eq_ignore_ascii_case(b"stats") => ReplyWriter::new(protocol)
            .bulk(cache_stats(context).as_bytes())
            .finish(),
        ("CACHE", 3 | 4) if args[2].eq_ignore_ascii_case(b"flush") => {
            match cache_flush(context, args.get(3)) {
                Ok(()) => reply::simple("OK"),
                Err(message) => reply::error(&format!("ERR {message}")),
            }
        }
        ("LOCKS", 2) => ReplyWriter::new(protocol)
            .bulk(locks(context).as_bytes())
            .finish(),
        ("HOTKEYS", _) => match hotkeys(args, context) {
            Ok(text) => ReplyWriter::new(protocol).bulk(text.as_bytes()).finish(),
            Err(message) => reply::error(&format!("ERR {message}")),
        },
        ("BIGKEYS", 2 | 4) => match big_keys(args, context) {
            Ok(text) => ReplyWriter::new(protocol).bulk(text.as_bytes()).finish(),
            Err(message) => reply::error(&format!("ERR {message}")),
        },
        ("HELP", 2) => {
            let mut writer = ReplyWriter::new(protocol).array(HELP.len());
            for line in HELP {
                writer = writer.simple(line);
            }
            writer.finish()
        }
        _ => reply::error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try KEYWARD HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

/// `KEYWARD HOTKEYS [WINDOW w] [BY requests|bytes] [COUNT n]`, one line per key, then per
/// pattern.
fn hotkeys(args: &[Vec<u8>], context: &Context) -> Result<String, String> {
    let (mut window, mut by, mut count) = (None, None, 20);
    let mut options = args[2..].chunks(2);
    for option in options.by_ref() {
        let [name, value] = option else {
            return Err("syntax error".into());
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match String::from_utf8_lossy(name).to_ascii_uppercase().as_str() {
            "WINDOW" => window = Some(value),
            "BY" => by = Some(value),
            "COUNT" => count = count_option(&value)?,
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    let report = reports::hotkeys(context, window.as_deref(), by.as_deref(), count)?;
    let unit = report.by.name();
    let mut text = format!(
        "# Hot keys by {unit}, last {} ({unit}: {}, counts may exceed the truth by at most {})\r\n",
        report.window, report.total, report.error_bound
    );
    for (title, entries) in [("key", &report.keys), ("pattern", &report.patterns)] {
        for entry in entries {
            text.push_str(&format!(
                "{title}:{} {unit}={} error={} reads={} writes={}",
                entry.key, entry.count, entry.error, entry.reads, entry.writes
            ));
            if let (Some(inbound), Some(outbound)) = (entry.bytes_in, entry.bytes_out) {
                text.push_str(&format!(" in={inbound} out={outbound}"));
            }
            text.push_str("\r\n");
        }
    }
    Ok(text)
}

/// `KEYWARD BIGKEYS [COUNT n]`, one line per key, largest first.
fn big_keys(args: &[Vec<u8>], context: &Context) -> Result<String, String> {
    let count = match args.get(2..4) {
        None | Some([]) => 20,
        Some([name, value]) if name.eq_ignore_ascii_case(b"count") => {
            count_option(&String::from_utf8_lossy(value))?
        }
        Some(_) => return Err("syntax error".into()),
    };
    let report = reports::big_keys(context, count)?;
    let mut text = format!(
        "# Big keys: replies or written values over {} bytes, largest first\r\n",
        report.threshold_bytes
    );
    for big in &report.keys {
        text.push_str(&format!(
            "key:{} command={} side={} bytes={} times={}\r\n",
            big.key,
            big.command,
            big.side.name(),
            big.bytes,
            big.times
        ));
    }
    Ok(text)
}

fn count_option(value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| "COUNT must be a number".to_string())
}

/// One line per rule, in rule order.
fn rate_limit_stats(context: &Context) -> String {
    let active = context.live.load();
    let mut text = String::from("# Rate limits\r\n");
    for limiter in &active.policies.rate_limits {
        let (allowed, limited, buckets) = limiter.stats();
        let rule = &limiter.rule;
        text.push_str(&format!(
            "rule:{} allowed={allowed} limited={limited} buckets={buckets} limit={} period={} burst={} bucket={} action={} mode={}\r\n",
            limiter.name(),
            rule.limit.get_ref(),
            humantime::format_duration(rule.period.get()),
            rule.burst(),
            json_name(&rule.bucket),
            json_name(&rule.action),
            json_name(&rule.mode),
        ));
    }
    text
}

/// The invalidation connection's state, then one line per cache rule, in rule order.
fn cache_stats(context: &Context) -> String {
    let state = match context.upstream.tracking.state() {
        Invalidations::Down => "down",
        Invalidations::Unsupported => "unsupported",
        Invalidations::RedirectTo(_) => "up",
    };
    let active = context.live.load();
    let mut text = format!("# Cache\r\ninvalidations:{state}\r\n");
    for cache in &active.policies.caches {
        let stats = cache.stats();
        let rule = &cache.rule;
        text.push_str(&format!(
            "rule:{} hits={} misses={} invalidations={} evictions={} bytes={} entries={} max_memory={} ttl={} mode={}\r\n",
            cache.name(),
            stats.hits,
            stats.misses,
            stats.invalidations,
            stats.evictions,
            stats.bytes,
            stats.entries,
            rule.max_memory.get(),
            humantime::format_duration(rule.ttl.get()),
            json_name(&rule.mode),
        ));
    }
    text
}

/// One line per contended lock, longest wait first.
fn locks(context: &Context) -> String {
    let mut text = String::from("# Locks\r\n");
    for lock in context.phases.lock.report() {
        text.push_str(&format!(
            "key:{} rule={} db={} holder={} waiters={} oldest_wait_ms={}\r\n",
            lock.key,
            lock.rule,
            lock.db,
            lock.holder.as_deref().unwrap_or("-"),
            lock.waiters,
            lock.oldest_wait_ms
        ));
    }
    text
}

/// `KEYWARD CACHE FLUSH [rule]`.
fn cache_flush(context: &Context, rule: Option<&Vec<u8>>) -> Result<(), String> {
    let active = context.live.load();
    let caches = &active.policies.caches;
    match rule {
        None => context.phases.cache.flush_all(caches),
        Some(name) => {
            let cache = caches
                .iter()
                .find(|cache| cache.name().as_bytes() == name.as_slice())
                .ok_or_else(|| {
                    format!("no cache rule named '{}'", String::from_utf8_lossy(name))
                })?;
            context.phases.cache.flush_all(std::slice::from_ref(cache));
        }
    }
    Ok(())
}

/// `KEYWARD INFO`, in the `field:value` lines of Redis's `INFO`.
fn info(context: &Context) -> String {
    let upstream = &context.upstream;
    let (up, total, last_error) = upstream.pool_state();
    let status = if upstream.is_ready() { "up" } else { "down" };
    let mut text = format!(
        "# Keyward\r\n\
         keyward_version:{}\r\n\
         uptime_in_seconds:{}\r\n\
         connected_clients:{}\r\n\
         total_connections_received:{}\r\n\
         \r\n# Upstream\r\n\
         upstream_address:{}\r\n\
         upstream_status:{status}\r\n\
         upstream_redis_version:{}\r\n\
         upstream_pooled_connections_up:{up}\r\n\
         upstream_pooled_connections:{total}\r\n",
        env!("CARGO_PKG_VERSION"),
        context.started.elapsed().as_secs(),
        context.clients.load(Ordering::Relaxed),
        context.connections_received.load(Ordering::Relaxed),
        upstream.settings().address,
        upstream.facts().version,
    );
    if let Some(error) = last_error {
        text.push_str(&format!("upstream_last_error:{error}\r\n"));
    }
    text
}

/// The name a setting has in the config file (`"key"`, `"delay"`, `"shadow"`).
fn json_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default()
}
