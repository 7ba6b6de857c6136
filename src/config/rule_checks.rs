//! The checks that look at more than one value of the rules: unknown commands and ACL
//! categories, invalid patterns, zero limits, duplicate names, and rules that an earlier rule
//! of the same kind shadows (within a kind, the first matching rule wins).
//!
//! Values checked one at a time are checked even in a rule that does not parse (another of its
//! values is broken), so that one run of `keyward check` reports them all.

use std::collections::HashMap;

use serde::Deserialize;
use toml::de::{DeTable, DeValue, Deserializer};
use toml::Spanned;

use super::diagnostic::{closest, line_of, Diagnostic};
use super::rules::{Action, CacheRule, Mode, RateLimitRule, RouteRule, Rule, Scope};
use super::values;
use crate::command::cacheable;
use crate::command::{flags, CommandTable};
use crate::glob::Glob;

/// The values of a rule that are checked one by one (and names, checked across rules), read
/// from the file apart from the rest of the rule: a broken `period` must not hide an unknown
/// command beside it. Checks that compare values of one rule (a limit with its period) need
/// the whole rule, and run on the rules that parse.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RuleValues {
    name: Option<Spanned<String>>,
    keys: Vec<Spanned<String>>,
    commands: Vec<Spanned<String>>,
    clients: Vec<Spanned<String>>,
    limit: Option<Spanned<u32>>,
    burst: Option<Spanned<u32>>,
}

impl RuleValues {
    /// The values of one element of a rule array, leaving out the `broken` fields (they have
    /// errors of their own); none when the element is not a table.
    pub(super) fn read(element: &Spanned<DeValue<'_>>, broken: &[&str]) -> Option<RuleValues> {
        let DeValue::Table(table) = element.get_ref() else {
            return None;
        };
        let mut sound = DeTable::default();
        for (field, value) in table {
            if !broken.contains(&field.get_ref().as_ref()) {
                sound.insert(field.clone(), value.clone());
            }
        }
        let values = Spanned::new(element.span(), sound);
        // Every field left parsed as part of its rule, so it parses here too.
        RuleValues::deserialize(Deserializer::from(values)).ok()
    }
}

/// Checks each value of the rules of one kind (`kind` as written in the file, e.g.
/// `rate_limit`) on its own, and that their names are set and unique.
pub fn check_values(kind: &str, rules: &[&RuleValues], text: &str) -> Vec<Diagnostic> {
    let table = CommandTable::global();
    let mut diagnostics = Vec::new();
    let mut names: HashMap<&str, &Spanned<String>> = HashMap::new();
    for rule in rules {
        if let Some(name) = &rule.name {
            if name.get_ref().trim().is_empty() {
                diagnostics.push(Diagnostic::error(
                    name.span(),
                    "a rule name cannot be empty".into(),
                ));
            } else if let Some(first) = names.get(name.get_ref().as_str()) {
                diagnostics.push(Diagnostic::error(
                    name.span(),
                    format!(
                        "duplicate {kind} rule name {:?} (first defined at line {})",
                        name.get_ref(),
                        line_of(text, first.span().start)
                    ),
                ));
            } else {
                names.insert(name.get_ref(), name);
            }
        }
        for key in &rule.keys {
            if let Err(error) = Glob::new(key.get_ref()) {
                diagnostics.push(Diagnostic::error(
                    key.span(),
                    format!("invalid key pattern: {error}"),
                ));
            }
        }
        for client in &rule.clients {
            if let Err(error) = Glob::new(client.get_ref()) {
                diagnostics.push(Diagnostic::error(
                    client.span(),
                    format!("invalid client pattern: {error}"),
                ));
            }
        }
        for command in &rule.commands {
            if let Err(message) = check_command_filter(command.get_ref()) {
                diagnostics.push(Diagnostic::error(command.span(), message));
            }
            // Only reads can be answered from memory.
            let known = table.find_name(command.get_ref());
            if kind == "cache" && known.is_some_and(|info| info.cacheable.is_none()) {
                diagnostics.push(Diagnostic::error(
                    command.span(),
                    format!(
                        "`{}` cannot be cached; cacheable reads are {}",
                        command.get_ref().to_ascii_uppercase(),
                        cacheable::NAMES.join(", ").to_ascii_uppercase()
                    ),
                ));
            }
        }
        if let Some(limit) = rule.limit.as_ref().filter(|limit| *limit.get_ref() == 0) {
            diagnostics.push(Diagnostic::error(
                limit.span(),
                "limit = 0 would refuse every command; use at least 1 (or remove the rule)".into(),
            ));
        }
        if let Some(burst) = rule.burst.as_ref().filter(|burst| *burst.get_ref() == 0) {
            diagnostics.push(Diagnostic::error(
                burst.span(),
                "burst must be at least 1".into(),
            ));
        }
    }
    diagnostics
}

/// Warns of the rules of one kind that an earlier rule shadows. Only rules that parse whole
/// are compared: a broken rule never runs, and what it matches is not known.
pub fn check_shadowing<R: Rule>(kind: &str, rules: &[R], text: &str) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let name = rule.name();
        if let Some(earlier) = rules[..index]
            .iter()
            .find(|earlier| shadows(*earlier, rule))
        {
            diagnostics.push(Diagnostic::warning(
                Some(name.span()),
                format!(
                    "{kind} rule {:?} never applies: rule {:?} (line {}) comes first and matches everything it does",
                    name.get_ref(),
                    earlier.name().get_ref(),
                    line_of(text, earlier.name().span().start)
                ),
            ));
        }
    }
    diagnostics
}

const YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// How far ahead of the clock a bucket may run (`burst × period / limit`): its times are
/// nanoseconds in 64 bits, which end after 584 years.
const MAX_BURST_AHEAD: std::time::Duration = YEAR.saturating_mul(100);

/// Checks the values of whole rate-limit rules that only make sense together (each value
/// alone is checked by [`check_values`]).
pub fn check_rate_limits(rules: &[RateLimitRule]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for rule in rules {
        let limit = *rule.limit.get_ref();
        // Between two cells; a zero limit has an error of its own (`check_values`).
        let apart = rule.period.get() / limit.max(1);
        if limit > 0 && apart == std::time::Duration::ZERO {
            diagnostics.push(Diagnostic::error(
                rule.limit.span(),
                format!(
                    "limit {limit} per {:?} is finer than a nanosecond apart",
                    rule.period.get()
                ),
            ));
        }
        if rule.scope() == Scope::Global
            && limit > 0
            && apart < std::time::Duration::from_micros(100)
        {
            diagnostics.push(Diagnostic::error(
                rule.limit.span(),
                format!(
                    "a global rule allows at most 10000 commands per second per bucket (each decision is a round trip to Redis); limit {limit} per {:?} is more",
                    rule.period.get()
                ),
            ));
        }
        let ahead = rule.interval().saturating_mul(rule.burst());
        if ahead > MAX_BURST_AHEAD {
            let span = rule.burst.as_ref().map_or(rule.limit.span(), Spanned::span);
            diagnostics.push(Diagnostic::error(
                span,
                format!(
                    "burst {} of {limit} per {:?} lets a bucket run {} years ahead; keep burst × period / limit within {} years",
                    rule.burst(),
                    rule.period.get(),
                    ahead.as_secs() / YEAR.as_secs(),
                    MAX_BURST_AHEAD.as_secs() / YEAR.as_secs()
                ),
            ));
        }
        if let (Action::Reject, Some(delay)) = (rule.action, &rule.max_delay) {
            diagnostics.push(Diagnostic::warning(
                Some(delay.span()),
                format!(
                    "max_delay has no effect in rule {:?}: it applies only with action = \"delay\"",
                    rule.name.get_ref()
                ),
            ));
        }
    }
    diagnostics
}

/// Cache rules' `sample_rate`: in range, and only where it means something.
pub fn check_caches(rules: &[CacheRule]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for rule in rules {
        let Some(rate) = &rule.sample_rate else {
            continue;
        };
        let value = *rate.get_ref();
        if let Some(problem) = values::sample_rate_problem(value) {
            diagnostics.push(Diagnostic::error(rate.span(), problem));
        } else if rule.mode == Mode::Enforce && value < 1.0 {
            diagnostics.push(Diagnostic::warning(
                Some(rate.span()),
                format!(
                    "sample_rate has no effect in rule {:?}: a rule in force caches every read it matches; it applies with mode = \"shadow\"",
                    rule.name.get_ref()
                ),
            ));
        }
    }
    diagnostics
}

/// Route rules whose commands would write: keyward never sends those to a replica.
pub fn check_routes(rules: &[RouteRule]) -> Vec<Diagnostic> {
    let table = CommandTable::global();
    let mut diagnostics = Vec::new();
    for rule in rules {
        for filter in &rule.commands {
            let name = filter.get_ref();
            if name.starts_with('@') {
                continue;
            }
            let info = table.find_name(name);
            if info.is_some_and(|info| !info.has_flag(flags::READONLY)) {
                diagnostics.push(Diagnostic::warning(
                    Some(filter.span()),
                    format!(
                        "{name} is not a read: route {:?} never sends it to a replica",
                        rule.name.get_ref()
                    ),
                ));
            }
        }
    }
    diagnostics
}

/// A command name (`GET`, `client|setname`) or an ACL category (`@write`) the table knows.
fn check_command_filter(filter: &str) -> Result<(), String> {
    let table = CommandTable::global();
    if let Some(category) = filter.strip_prefix('@') {
        let categories = table.categories();
        if categories
            .iter()
            .any(|known| known.eq_ignore_ascii_case(category))
        {
            return Ok(());
        }
        let hint = closest(category, categories.iter().map(String::as_str))
            .map(|c| format!("; did you mean `@{c}`?"))
            .unwrap_or_default();
        return Err(format!("unknown ACL category `{filter}`{hint}"));
    }
    if table.find_name(filter).is_some() {
        return Ok(());
    }
    let hint = closest(&filter.to_ascii_lowercase(), table.names())
        .map(|name| format!("; did you mean `{}`?", name.to_ascii_uppercase()))
        .unwrap_or_default();
    Err(format!("unknown command `{filter}`{hint}"))
}

/// Whether `earlier` matches every command `later` matches.
fn shadows<R: Rule>(earlier: &R, later: &R) -> bool {
    let compile = |keys: &[Spanned<String>]| -> Option<Vec<Glob>> {
        keys.iter()
            .map(|key| Glob::new(key.get_ref()).ok())
            .collect()
    };
    let keys_covered = match (compile(earlier.keys()), compile(later.keys())) {
        (Some(earlier_keys), _) if earlier_keys.is_empty() => true,
        (Some(earlier_keys), Some(later_keys)) if !later_keys.is_empty() => later_keys
            .iter()
            .all(|key| earlier_keys.iter().any(|covering| key.covered_by(covering))),
        _ => false,
    };
    let commands_covered = earlier.commands().is_empty()
        || (!later.commands().is_empty()
            && later.commands().iter().all(|command| {
                earlier
                    .commands()
                    .iter()
                    .any(|covering| covering.get_ref().eq_ignore_ascii_case(command.get_ref()))
            }));
    let clients_covered = earlier.clients().is_empty()
        || (!later.clients().is_empty()
            && later.clients().iter().all(|client| {
                earlier.clients().iter().any(|covering| {
                    covering.get_ref() == client.get_ref() || covering.get_ref() == "*"
                })
            }));
    keys_covered && commands_covered && clients_covered
}
