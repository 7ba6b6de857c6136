//! Which reads may be answered from the cache: commands whose reply depends only on one key's
//! value. Time-dependent reads (`TTL`, `PTTL`) and random ones (`RANDOMKEY`, `SRANDMEMBER`,
//! `SCAN`) are never cached.

use std::sync::OnceLock;

use super::{CommandInfo, CommandTable};
use crate::resp::request::Args;

/// The cacheable reads, as the command table names them.
pub const NAMES: &[&str] = &[
    "get",
    "mget",
    "hget",
    "hmget",
    "hgetall",
    "hlen",
    "exists",
    "strlen",
    "getrange",
    "lrange",
    "llen",
    "smembers",
    "sismember",
    "scard",
    "zscore",
    "zrange",
    "zcard",
    "type",
];

/// How a cacheable read names its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The key is the first argument; the reply is one entry.
    OneKey,
    /// `MGET`: every argument is a key, and each key's element of the reply is an entry.
    PerKey,
}

/// The cacheable kind of each command, by command id.
struct Kinds {
    by_id: Box<[Option<Kind>]>,
    /// `EXISTS`, cacheable with one key only.
    exists: usize,
}

fn kinds() -> &'static Kinds {
    static KINDS: OnceLock<Kinds> = OnceLock::new();
    KINDS.get_or_init(|| {
        let table = CommandTable::global();
        let by_id = (0..table.len())
            .map(|id| {
                let name = &*table.by_id(id).name;
                match name {
                    "mget" => Some(Kind::PerKey),
                    _ if NAMES.contains(&name) => Some(Kind::OneKey),
                    _ => None,
                }
            })
            .collect();
        let exists = table.find_name("exists").map_or(usize::MAX, |info| info.id);
        Kinds { by_id, exists }
    })
}

impl Kinds {
    fn of(&self, info: &CommandInfo) -> Option<Kind> {
        self.by_id.get(info.id).copied().flatten()
    }
}

pub fn kind(info: &CommandInfo) -> Option<Kind> {
    kinds().of(info)
}

/// The kind of this request, if it can be cached: `EXISTS` only with one key (its reply counts
/// keys), and never a request with too few arguments (Redis answers it with an error).
pub fn request_kind(info: &CommandInfo, args: &Args<'_>) -> Option<Kind> {
    let kinds = kinds();
    let kind = kinds.of(info)?;
    if !info.arity_ok(args.len()) || args.len() < 2 {
        return None;
    }
    if info.id == kinds.exists && args.len() != 2 {
        return None;
    }
    Some(kind)
}
