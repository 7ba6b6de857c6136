//! `KEYWARD <subcommand>`: keyward's own commands, so `redis-cli` users reach everything
//! without HTTP.

use bytes::Bytes;

use crate::context::Context;
use crate::reports;
use crate::resp::reply::{self, ReplyWriter};
use crate::resp::Protocol;

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
            if let Some(node) = &entry.node {
                text.push_str(&format!(" node={node}"));
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
    let mut text = String::from("# Rate limits\r\n");
    for rule in reports::rate_limits(context) {
        text.push_str(&format!(
            "rule:{} allowed={} limited={} buckets={} limit={} period={} burst={} bucket={} action={} mode={}\r\n",
            rule.name,
            rule.allowed,
            rule.limited,
            rule.buckets,
            rule.limit,
            rule.period,
            rule.burst,
            rule.bucket,
            rule.action,
            rule.mode,
        ));
    }
    text
}

/// The invalidation connection's state, then one line per cache rule, in rule order.
fn cache_stats(context: &Context) -> String {
    let state = reports::invalidations(context);
    let mut text = format!("# Cache\r\ninvalidations:{state}\r\n");
    for rule in reports::caches(context) {
        text.push_str(&format!(
            "rule:{} hits={} misses={} invalidations={} evictions={} bytes={} entries={} max_memory={} ttl={} mode={}\r\n",
            rule.name,
            rule.stats.hits,
            rule.stats.misses,
            rule.stats.invalidations,
            rule.stats.evictions,
            rule.stats.bytes,
            rule.stats.entries,
            rule.max_memory,
            rule.ttl,
            rule.mode,
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
    let info = reports::info(context);
    let upstream = &info.upstream;
    let status = if upstream.up { "up" } else { "down" };
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
         upstream_pooled_connections_up:{}\r\n\
         upstream_pooled_connections:{}\r\n",
        info.version,
        info.uptime_seconds,
        info.clients,
        info.connections_received,
        upstream.address,
        upstream.redis_version,
        upstream.pooled_connections_up,
        upstream.pooled_connections,
    );
    if let Some(error) = &upstream.last_error {
        text.push_str(&format!("upstream_last_error:{error}\r\n"));
    }
    text.push_str(&format!("upstream_topology:{}\r\n", upstream.topology));
    if let Some(nodes) = &upstream.cluster_nodes {
        text.push_str("\r\n# Cluster\r\n");
        for (index, node) in nodes.iter().enumerate() {
            text.push_str(&format!(
                "cluster_node{index}:address={},id={},role={},slots={},state={}\r\n",
                node.address, node.id, node.role, node.slots, node.state
            ));
        }
    }
    if let Some(sentinel) = &upstream.sentinel {
        text.push_str(&format!(
            "\r\n# Sentinel\r\nsentinel_master_name:{}\r\nsentinel_primary:{}\r\n\
             sentinels_listening:{}\r\nsentinels:{}\r\n",
            sentinel.master_name,
            sentinel.primary.as_deref().unwrap_or(""),
            sentinel.sentinels_listening,
            sentinel.sentinels
        ));
    }
    text
}
