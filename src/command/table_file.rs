//! The text form of the command table: one line per command or subcommand,
//! `name<TAB>arity<TAB>flags<TAB>categories<TAB>key specs`, lists joined by `,`, key specs by
//! `;`, each spec as `flags/begin/find` (`index:1`, `keyword:STREAMS:1`, `range:-1:1:2`,
//! `keynum:0:1:1`, `unknown`). Lines starting with `#` are comments.

use super::effect::{effect_of, holding_of, notice_of, role_of};
use super::keys::{self, BeginSearch, FindKeys, KeySpec};
use super::{cacheable, flags, CommandInfo};

pub(super) struct Entry {
    name: String,
    arity: i32,
    flags: u32,
    categories: Vec<Box<str>>,
    key_specs: Vec<KeySpec>,
    has_subcommands: bool,
}

impl Entry {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// keyward's own `KEYWARD <subcommand>`.
    pub(super) fn keyward() -> Entry {
        Entry {
            name: "keyward".into(),
            arity: -2,
            flags: flags::FAST,
            categories: Vec::new(),
            key_specs: Vec::new(),
            has_subcommands: false,
        }
    }

    /// Any command the table does not list: forwarded, and assumed to write.
    pub(super) fn unknown() -> Entry {
        Entry {
            name: "unknown".into(),
            arity: -1,
            flags: flags::WRITE,
            categories: Vec::new(),
            key_specs: Vec::new(),
            has_subcommands: false,
        }
    }

    pub(super) fn into_info(self, id: usize) -> CommandInfo {
        CommandInfo {
            id,
            key_is_first_argument: keys::key_is_first_argument(&self.name, &self.key_specs),
            effect: effect_of(&self.name, self.flags),
            notice: notice_of(&self.name),
            holding: holding_of(&self.name, self.flags),
            role: role_of(&self.name),
            cacheable: cacheable::cacheable(&self.name, self.arity),
            uppercase: self.name.to_ascii_uppercase().into_bytes().into(),
            name: self.name.into(),
            arity: self.arity,
            flags: self.flags,
            categories: self.categories.into(),
            key_specs: self.key_specs.into(),
            has_subcommands: self.has_subcommands,
        }
    }
}

pub(super) fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        entries.push(parse_line(line).map_err(|e| format!("line {}: {e}", number + 1))?);
    }
    let containers: Vec<String> = entries
        .iter()
        .filter_map(|e| e.name.split_once('|').map(|(c, _)| c.to_string()))
        .collect();
    for entry in &mut entries {
        entry.has_subcommands = containers.contains(&entry.name);
    }
    Ok(entries)
}

fn parse_line(line: &str) -> Result<Entry, String> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [name, arity, command_flags, categories, specs] = fields[..] else {
        return Err(format!("expected 5 fields, found {}", fields.len()));
    };
    Ok(Entry {
        name: name.to_ascii_lowercase(),
        arity: arity.parse().map_err(|_| format!("bad arity {arity:?}"))?,
        flags: list(command_flags).map(flags::parse).fold(0, |a, b| a | b),
        categories: list(categories).map(Into::into).collect(),
        key_specs: specs
            .split(';')
            .filter(|s| !s.is_empty())
            .map(parse_spec)
            .collect::<Result<_, _>>()?,
        has_subcommands: false,
    })
}

fn list(field: &str) -> impl Iterator<Item = &str> {
    field.split(',').filter(|item| !item.is_empty())
}

fn parse_spec(spec: &str) -> Result<KeySpec, String> {
    let [spec_flags, begin, find] = spec.split('/').collect::<Vec<_>>()[..] else {
        return Err(format!("bad key spec {spec:?}"));
    };
    let number = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("bad number in {spec:?}"))
    };
    let begin_parts: Vec<&str> = begin.split(':').collect();
    let begin = match begin_parts[..] {
        ["index", pos] => BeginSearch::Index(number(pos)?.max(0) as usize),
        ["keyword", keyword, start_from] => BeginSearch::Keyword {
            keyword: keyword.as_bytes().into(),
            start_from: number(start_from)?,
        },
        _ => BeginSearch::Unknown,
    };
    let find_parts: Vec<&str> = find.split(':').collect();
    let find = match find_parts[..] {
        ["range", last_key, step, limit] => FindKeys::Range {
            last_key: number(last_key)?,
            step: number(step)?.max(1) as usize,
            limit: number(limit)?.max(0) as usize,
        },
        ["keynum", index, first, step] => FindKeys::KeyNum {
            key_num_index: number(index)?.max(0) as usize,
            first_key: number(first)?.max(0) as usize,
            step: number(step)?.max(1) as usize,
        },
        _ => FindKeys::Unknown,
    };
    Ok(KeySpec {
        flags: list(spec_flags).map(Into::into).collect(),
        begin,
        find,
    })
}
