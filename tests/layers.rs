//! The layers written down in `src/lib.rs` hold in the code: every `crate::` path in a module
//! names a module of a lower layer, so dependencies run one way and a newcomer can read the
//! crate from the bottom up. The list in `lib.rs` is the one checked, so it stays true.

mod support;

use std::collections::BTreeMap;

use support::source_files;

/// The layer of each top-level module, read from the numbered list in `lib.rs`'s docs.
fn layers(lib: &str) -> BTreeMap<String, usize> {
    let mut layers = BTreeMap::new();
    for line in lib.lines() {
        let Some(item) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((number, modules)) = item.split_once(". ") else {
            continue;
        };
        let Ok(layer) = number.parse::<usize>() else {
            continue;
        };
        for module in modules.split(',') {
            let name = module.trim().trim_matches('`');
            assert!(
                layers.insert(name.to_string(), layer).is_none(),
                "`{name}` is listed in two layers"
            );
        }
    }
    layers
}

/// The modules `lib.rs` declares.
fn declared(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod "))
        .chain(
            lib.lines()
                .filter_map(|line| line.trim().strip_prefix("mod ")),
        )
        .map(|name| name.trim_end_matches(';').to_string())
        .collect()
}

/// The top-level modules a file names through `crate::`, outside comments: `crate::x::y`,
/// and each name in `crate::{x, y::z}`.
fn named_modules(source: &str) -> Vec<String> {
    let mut named = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or_default();
                named.extend(group.split(',').map(|item| {
                    let item = item.trim();
                    item.split("::").next().unwrap_or(item).to_string()
                }));
            } else {
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                named.push(rest[..end].to_string());
            }
        }
    }
    named.retain(|name| !name.is_empty());
    named
}

#[test]
fn every_module_uses_only_lower_layers() {
    let files = source_files();
    let lib = files
        .iter()
        .find_map(|(path, text)| (path.to_str() == Some("lib.rs")).then_some(text))
        .expect("src/lib.rs");
    let layers = layers(lib);
    let mut declared = declared(lib);
    declared.sort();
    assert_eq!(
        declared,
        layers.keys().cloned().collect::<Vec<_>>(),
        "lib.rs's layer list and its modules differ"
    );

    let mut wrong = Vec::new();
    for (relative, source) in &files {
        let first = relative.iter().next().unwrap().to_string_lossy();
        let module = first.trim_end_matches(".rs");
        // The crate root and the binary stand above every layer.
        let Some(&own) = layers.get(module) else {
            continue;
        };
        for named in named_modules(source) {
            if named == module {
                continue;
            }
            match layers.get(&named) {
                Some(&layer) if layer < own => {}
                Some(&layer) => wrong.push(format!(
                    "{}: `{module}` (layer {own}) uses `{named}` (layer {layer})",
                    relative.display()
                )),
                None => wrong.push(format!(
                    "{}: `{named}` is not in lib.rs's layers",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_reads_paths_and_groups() {
    let source = "use crate::resp::reply;\nuse crate::{admin, metrics::Tally};\n// crate::ignored\nlet x = crate::glob::Glob::new(p);";
    assert_eq!(
        named_modules(source),
        ["resp", "admin", "metrics", "glob"].map(String::from)
    );
    let lib = "//! 1. `resp`, `glob`\n//! 2. `command`\npub mod command;";
    assert_eq!(layers(lib).get("glob"), Some(&1));
    assert_eq!(layers(lib).get("command"), Some(&2));
    assert_eq!(declared(lib), ["command"]);
}
