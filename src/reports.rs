//! What keyward reports about itself, the same over HTTP (`admin`) and through the
//! `KEYWARD` command (`session`): the config in force, the hottest keys, the biggest ones.

use std::sync::Arc;

use crate::context::Context;
use crate::policy::hotkeys::big_keys::BigKeysReport;
use crate::policy::hotkeys::{By, HotKeys, Report};

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
    hotkeys
        .report(length, by, limit)
        .ok_or_else(|| "no such window".to_string())
}

/// The report behind `GET /bigkeys` and `KEYWARD BIGKEYS`.
pub fn big_keys(context: &Context, limit: usize) -> Result<BigKeysReport, String> {
    Ok(enabled_hotkeys(context)?.big_keys(limit))
}

/// The report behind `GET /config` and `KEYWARD CONFIG`.
pub fn config(context: &Context) -> serde_json::Value {
    let status = context.live.status();
    serde_json::json!({
        "status": status,
        "config": context.live.load().config,
    })
}
