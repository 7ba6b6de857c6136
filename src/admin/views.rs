//! The JSON reports the admin endpoint serves: the hottest keys, the biggest ones, contended
//! locks (a page at a time), and the overview the admin page polls. Each is built when asked
//! for, from state keyward keeps anyway: serving them costs nothing while nobody asks.

use serde_json::{json, Value};

use super::query::{parameter, Page};
use crate::context::Context;
use crate::reload;
use crate::reports;

/// Entries per page when a request does not say.
const DEFAULT_LIMIT: usize = 20;

/// Contended locks per page when a request does not say: enough for any one screen, few
/// enough that a pile-up of thousands of contended keys stays a bounded answer.
const DEFAULT_LOCKS_LIMIT: usize = 100;

/// `GET /hotkeys?window=1m&by=requests|bytes&offset=0&limit=20`: the report of
/// `KEYWARD HOTKEYS`, one page of keys and of patterns, with whether more follow.
pub fn hotkeys(query: &str, context: &Context) -> Result<Value, String> {
    let page = Page::parse(query, DEFAULT_LIMIT)?;
    let window = parameter(query, "window");
    let by = parameter(query, "by");
    let mut report = reports::hotkeys(context, window.as_deref(), by.as_deref(), page.wanted())?;
    let (keys, more_keys) = page.cut(std::mem::take(&mut report.keys));
    let (patterns, more_patterns) = page.cut(std::mem::take(&mut report.patterns));
    report.keys = keys;
    report.patterns = patterns;
    let mut view = json!(report);
    view["offset"] = page.offset.into();
    view["more_keys"] = more_keys.into();
    view["more_patterns"] = more_patterns.into();
    Ok(view)
}

/// `GET /bigkeys?offset=0&limit=20`: the largest replies and written values, largest first.
pub fn big_keys(query: &str, context: &Context) -> Result<Value, String> {
    let page = Page::parse(query, DEFAULT_LIMIT)?;
    let mut report = reports::big_keys(context, page.wanted())?;
    let (keys, more) = page.cut(std::mem::take(&mut report.keys));
    report.keys = keys;
    let mut view = json!(report);
    view["offset"] = page.offset.into();
    view["more"] = more.into();
    Ok(view)
}

/// `GET /locks?offset=0&limit=100`: contended locks, longest wait first. A holder's token is
/// the application's secret (whoever knows it can release the lock): unless `show_holders`,
/// it is `null`, with `holder_redacted: true` telling a hidden token from one keyward does not
/// know.
pub fn locks(query: &str, context: &Context, show_holders: bool) -> Result<Value, String> {
    let page = Page::parse(query, DEFAULT_LOCKS_LIMIT)?;
    let (locks, more) = page.cut(context.phases.lock.report());
    let locks: Vec<Value> = locks
        .into_iter()
        .map(|mut lock| {
            let redacted = !show_holders && lock.holder.is_some();
            if redacted {
                lock.holder = None;
            }
            let mut report = json!(lock);
            report["holder_redacted"] = redacted.into();
            report
        })
        .collect();
    Ok(json!({ "locks": locks, "offset": page.offset, "more": more }))
}

/// `GET /overview`: what the admin page shows besides its lists, in one answer. Counters are
/// totals since keyward started; the page turns two answers into rates and latency
/// percentiles, so keyward keeps no history for it.
pub fn overview(context: &Context) -> Value {
    let active = context.live.load();
    // Durations serialize as the config writes them (`10s`, `1m`).
    let windows = active
        .policies
        .hotkeys
        .as_ref()
        .map(|hotkeys| &hotkeys.config.windows);
    json!({
        "now": reload::now_seconds(),
        "info": reports::info(context),
        "config": context.live.status(),
        "commands": context.command_metrics.totals(),
        "caches": reports::caches(context),
        "rate_limits": reports::rate_limits(context),
        "hotkey_windows": windows,
    })
}
