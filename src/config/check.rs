//! Finding every broken value of a config file, each where it is written: each setting and
//! each rule's values are parsed alone (serde stops at the first error of a table), rules are
//! checked against each other, and settings that only fail together or at run time after.

use serde::Deserialize;
use toml::de::{DeArray, DeString, DeTable, DeValue, Deserializer};
use toml::Spanned;

use super::{find_table_key, rule_checks, secret, values, Config, Diagnostic, Topology};

/// Every value that is broken on its own, and every rule that conflicts with another.
pub(super) fn each_value(root: &Spanned<DeTable<'_>>, text: &str) -> Vec<Diagnostic> {
    // Each table key and each array element is checked alone, so that every broken value
    // is reported, not just the first serde meets.
    let mut diagnostics: Vec<Diagnostic> = Vec::new();
    let mut rate_limits = Vec::new();
    let mut denials = Vec::new();
    let mut caches = Vec::new();
    let mut locks = Vec::new();
    let mut routes = Vec::new();
    let mut values: Vec<(&str, rule_checks::RuleValues)> = Vec::new();
    let parse_alone = |key: &Spanned<DeString<'_>>, piece: Spanned<DeValue<'_>>| {
        let mut section = DeTable::default();
        section.insert(key.clone(), piece);
        Config::deserialize(Deserializer::from(Spanned::new(root.span(), section)))
    };
    for (key, value) in root.get_ref() {
        match value.get_ref() {
            // An empty table is checked whole: an unknown `[lisen]` is an error too.
            DeValue::Table(table) if !table.is_empty() => {
                for (field, field_value) in table {
                    let mut piece = DeTable::default();
                    piece.insert(field.clone(), field_value.clone());
                    let piece = Spanned::new(value.span(), DeValue::Table(piece));
                    if let Err(error) = parse_alone(key, piece) {
                        diagnostics.push(Diagnostic::from_toml(&error).with_found(text));
                    }
                }
            }
            DeValue::Array(elements) => {
                for element in elements {
                    let as_array = |element| one_element(value.span(), element);
                    let mut broken = Vec::new();
                    match parse_alone(key, as_array(element.clone())) {
                        // Rules that parse alone are checked together below, even if
                        // others in the file do not parse.
                        Ok(piece) => {
                            rate_limits.extend(piece.rate_limit);
                            denials.extend(piece.deny);
                            caches.extend(piece.cache);
                            locks.extend(piece.lock);
                            routes.extend(piece.route);
                        }
                        Err(error) => {
                            broken = broken_fields(element, |field| {
                                parse_alone(key, as_array(field)).err()
                            });
                            if broken.is_empty() {
                                // Not a value of its own: a missing field, or no table.
                                diagnostics.push(Diagnostic::from_toml(&error).with_found(text));
                            }
                        }
                    }
                    diagnostics.extend(
                        broken
                            .iter()
                            .map(|(_, error)| Diagnostic::from_toml(error).with_found(text)),
                    );
                    let broken: Vec<&str> = broken.iter().map(|(field, _)| *field).collect();
                    if let Some(rule) = rule_checks::RuleValues::read(element, &broken) {
                        values.push((key.get_ref(), rule));
                    }
                }
            }
            _ => {
                if let Err(error) = parse_alone(key, value.clone()) {
                    diagnostics.push(Diagnostic::from_toml(&error).with_found(text));
                }
            }
        }
    }
    for kind in ["rate_limit", "deny", "cache", "lock", "route"] {
        let kind_values: Vec<&rule_checks::RuleValues> = values
            .iter()
            .filter(|(written, _)| *written == kind)
            .map(|(_, rule)| rule)
            .collect();
        diagnostics.extend(rule_checks::check_values(kind, &kind_values, text));
    }
    diagnostics.extend(rule_checks::check_shadowing(
        "rate_limit",
        &rate_limits,
        text,
    ));
    diagnostics.extend(rule_checks::check_rate_limits(&rate_limits));
    diagnostics.extend(rule_checks::check_shadowing("deny", &denials, text));
    diagnostics.extend(rule_checks::check_shadowing("cache", &caches, text));
    diagnostics.extend(rule_checks::check_caches(&caches));
    diagnostics.extend(rule_checks::check_shadowing("lock", &locks, text));
    diagnostics.extend(rule_checks::check_shadowing("route", &routes, text));
    diagnostics.extend(rule_checks::check_routes(&routes));
    diagnostics.sort_by_key(|diagnostic| diagnostic.span.as_ref().map(|span| span.start));
    diagnostics
}

/// Settings that are valid alone but not together (or not in range once read).
pub(super) fn settings_together(config: &Config, text: &str, diagnostics: &mut Vec<Diagnostic>) {
    let hotkeys = &config.hotkeys;
    if let Some(problem) = values::sample_rate_problem(hotkeys.sample_rate) {
        diagnostics.push(Diagnostic::error(
            find_value(text, "sample_rate").unwrap_or(0..0),
            problem,
        ));
    }
    if hotkeys.windows.is_empty() {
        diagnostics.push(Diagnostic::error(
            find_value(text, "windows").unwrap_or(0..0),
            "windows needs at least one duration".into(),
        ));
    }
    if let (Some(_), Some(_)) = (
        &config.upstream.password_env,
        &config.upstream.password_file,
    ) {
        diagnostics.push(Diagnostic::error(
            find_table_key(text, "upstream", "password_file").unwrap_or(0..0),
            "set one of password_env and password_file, not both".into(),
        ));
    }
    if let Some(http_api) = &config.http_api {
        super::http_api::check(http_api, text, diagnostics);
    }
    topology(config, text, diagnostics);
}

/// Settings that only one topology reads.
fn topology(config: &Config, text: &str, diagnostics: &mut Vec<Diagnostic>) {
    let upstream = &config.upstream;
    let at = |key: &str| find_table_key(text, "upstream", key).unwrap_or(0..0);
    if upstream.topology != Topology::Cluster && !upstream.seeds.is_empty() {
        diagnostics.push(Diagnostic::error(
            at("seeds"),
            "seeds are read only with topology = \"cluster\"".into(),
        ));
    }
    let sentinel_keys = [
        ("sentinels", !upstream.sentinels.is_empty()),
        ("master_name", upstream.master_name.is_some()),
        (
            "sentinel_password_env",
            upstream.sentinel_password_env.is_some(),
        ),
    ];
    if upstream.topology != Topology::Sentinel {
        for (key, _) in sentinel_keys.iter().filter(|(_, set)| *set) {
            diagnostics.push(Diagnostic::error(
                at(key),
                format!("{key} is read only with topology = \"sentinel\""),
            ));
        }
        return;
    }
    for (key, _) in sentinel_keys[..2].iter().filter(|(_, set)| !*set) {
        diagnostics.push(Diagnostic::error(
            at("topology"),
            format!("topology = \"sentinel\" needs {key}"),
        ));
    }
    if upstream.master_name.as_deref() == Some("") {
        diagnostics.push(Diagnostic::error(
            at("master_name"),
            "master_name is empty".into(),
        ));
    }
}

/// The secrets the file names by environment variable: not set here may be set where keyward
/// runs (a warning); set but empty is an error.
pub(super) fn secrets(config: &Config, text: &str, diagnostics: &mut Vec<Diagnostic>) {
    let tokens = config.http_api.iter().flat_map(|api| &api.tokens);
    let token_variables: Vec<_> = tokens.map(|token| Some(token.token_env.clone())).collect();
    let fixed = [
        ("listen.password_env", &config.listen.password_env),
        ("upstream.password_env", &config.upstream.password_env),
        (
            "upstream.sentinel_password_env",
            &config.upstream.sentinel_password_env,
        ),
        ("admin.token_env", &config.admin.token_env),
    ];
    let token_settings = token_variables
        .iter()
        .map(|variable| ("http_api.tokens.token_env", variable));
    for (setting, variable) in fixed.into_iter().chain(token_settings) {
        // Not set here may be set where keyward runs: a warning. Set but empty: an error.
        if let (Some(variable), Err(problem)) = (variable, secret(setting, variable)) {
            let span = find_value(text, variable);
            diagnostics.push(match std::env::var_os(variable) {
                Some(_) => Diagnostic::error(span.unwrap_or(0..0), problem),
                None => Diagnostic::warning(span, problem),
            });
        }
    }
}

/// An array of `element` alone, where the whole array was (`span`).
fn one_element(
    span: std::ops::Range<usize>,
    element: Spanned<DeValue<'_>>,
) -> Spanned<DeValue<'_>> {
    let mut array = DeArray::new();
    array.push(element);
    Spanned::new(span, DeValue::Array(array))
}

/// The fields of a rule (an element of `[[rate_limit]]`, `[[cache]]`…) that are wrong on
/// their own, each with its error, found by parsing each field alone (`parse_field`), so that a
/// rule with several broken values reports each of them. Errors that do not point into the
/// field parsed are about the fields left out (`missing field`), and are not its own.
fn broken_fields<'e, 'i>(
    element: &'e Spanned<DeValue<'i>>,
    parse_field: impl Fn(Spanned<DeValue<'i>>) -> Option<toml::de::Error>,
) -> Vec<(&'e str, toml::de::Error)> {
    let DeValue::Table(table) = element.get_ref() else {
        return Vec::new();
    };
    table
        .iter()
        .filter_map(|(field, field_value)| {
            let mut alone = DeTable::default();
            alone.insert(field.clone(), field_value.clone());
            let error = parse_field(Spanned::new(element.span(), DeValue::Table(alone)))?;
            let place = field.span().start..field_value.span().end;
            let within = error
                .span()
                .is_some_and(|span| place.start <= span.start && span.end <= place.end);
            within.then_some((field.get_ref().as_ref(), error))
        })
        .collect()
}

/// Where a key's value starts, for diagnostics that arise after deserialization.
fn find_value(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let start = text.find(key)?;
    Some(start..start + key.len())
}
