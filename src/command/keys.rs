//! Finding a command's keys from Redis's key specs (`COMMAND INFO … key_specs`).
//!
//! This follows `getKeysUsingKeySpecs` in Redis: a spec says where to start (a fixed index or
//! after a keyword) and how far to go (a range, or a count read from an argument). Arguments
//! that contradict the spec yield no keys at all, as in Redis, which then rejects the command.

use crate::resp::parse_int;
use crate::resp::request::Args;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Redis's spec flags (`RW`, `RO`, `OW`, `RM`, `access`, `update`, `insert`, `delete`, …).
    pub flags: Box<[Box<str>]>,
    pub begin: BeginSearch,
    pub find: FindKeys,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginSearch {
    /// The first key is at this argument index.
    Index(usize),
    /// The first key follows this keyword; a negative `start_from` searches from the end.
    Keyword {
        keyword: Box<[u8]>,
        start_from: i64,
    },
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindKeys {
    /// Keys run to `last_key` (relative to the first key; negative counts from the end, and
    /// with `limit` > 1 only the first 1/`limit` of the remaining arguments are keys).
    Range {
        last_key: i64,
        step: usize,
        limit: usize,
    },
    /// The number of keys is an argument (`EVAL script numkeys …`).
    KeyNum {
        key_num_index: usize,
        first_key: usize,
        step: usize,
    },
    Unknown,
}

/// Whether a command's one key is the argument right after its name (`GET`, `SET`, `INCR`,
/// …): most commands sent, whose key is then found without reading the specs.
pub(super) fn key_is_first_argument(command: &str, specs: &[KeySpec]) -> bool {
    command != "sort"
        && matches!(
            specs,
            [KeySpec {
                begin: BeginSearch::Index(1),
                find: FindKeys::Range { last_key: 0, .. },
                ..
            }]
        )
}

pub(super) fn key_positions(
    command: &str,
    specs: &[KeySpec],
    args: &Args<'_>,
    out: &mut Vec<usize>,
) {
    let start = out.len();
    if command == "sort" {
        sort_keys(args, out);
        return;
    }
    for spec in specs {
        if !push_spec_keys(spec, args, out) {
            out.truncate(start);
            return;
        }
    }
}

/// Pushes the keys of one spec; `false` if the arguments contradict it.
fn push_spec_keys(spec: &KeySpec, args: &Args<'_>, out: &mut Vec<usize>) -> bool {
    let argc = args.len() as i64;
    let first = match &spec.begin {
        BeginSearch::Index(pos) => *pos as i64,
        BeginSearch::Keyword {
            keyword,
            start_from,
        } => match find_keyword(keyword, *start_from, args) {
            Some(index) => index + 1,
            None => return true,
        },
        // Redis leaves such specs to a command-specific function; they add no keys here.
        BeginSearch::Unknown => return true,
    };
    let (first, last, step) = match &spec.find {
        FindKeys::Range {
            last_key,
            step,
            limit,
        } => {
            let last = if *last_key >= 0 {
                first + last_key
            } else if *limit <= 1 {
                argc + last_key
            } else {
                first + ((argc - first) / *limit as i64 + last_key)
            };
            (first, last, *step)
        }
        FindKeys::KeyNum {
            key_num_index,
            first_key,
            step,
        } => {
            let count_at = first + *key_num_index as i64;
            let Some(count) = args
                .get(count_at as usize)
                .and_then(parse_int)
                .filter(|count| *count >= 0)
            else {
                return false;
            };
            let first = first + *first_key as i64;
            let Some(last) = first.checked_add(count - 1) else {
                return false;
            };
            (first, last, *step)
        }
        FindKeys::Unknown => return true,
    };
    if first >= argc || last >= argc || last < first {
        // A key count of zero is a valid `EVAL script 0`; anything else is a syntax error.
        return last == first - 1;
    }
    let mut index = first;
    while index <= last {
        out.push(index as usize);
        index += step.max(1) as i64;
    }
    true
}

/// `SORT key [BY p] [LIMIT o c] [GET p …] [ASC|DESC] [ALPHA] [STORE dst]`: the destination has
/// no key spec, so it is found the way Redis's `sortGetKeys` does, skipping option arguments
/// that could themselves read "STORE".
fn sort_keys(args: &Args<'_>, out: &mut Vec<usize>) {
    if args.len() < 2 {
        return;
    }
    out.push(1);
    let mut store = None;
    let mut index = 2;
    while index < args.len() {
        let arg = args.get(index).unwrap_or_default();
        let skip = if arg.eq_ignore_ascii_case(b"limit") {
            2
        } else if arg.eq_ignore_ascii_case(b"get") || arg.eq_ignore_ascii_case(b"by") {
            1
        } else if arg.eq_ignore_ascii_case(b"store") {
            store = Some(index + 1);
            1
        } else {
            0
        };
        index += skip + 1;
    }
    if let Some(dst) = store.filter(|&dst| dst < args.len()) {
        out.push(dst);
    }
}

fn find_keyword(keyword: &[u8], start_from: i64, args: &Args<'_>) -> Option<i64> {
    let argc = args.len() as i64;
    let (start, end) = if start_from > 0 {
        (start_from, argc - 1)
    } else {
        (argc + start_from, 1)
    };
    let step = if start <= end { 1 } else { -1 };
    let mut index = start;
    while index != end {
        if index < 1 || index >= argc {
            return None;
        }
        if args
            .get(index as usize)
            .is_some_and(|arg| arg.eq_ignore_ascii_case(keyword))
        {
            return Some(index);
        }
        index += step;
    }
    None
}
