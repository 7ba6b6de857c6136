//! Which reads may be answered from the cache: commands whose reply depends only on one key's
//! value. Time-dependent reads (`TTL`, `PTTL`) and random ones (`RANDOMKEY`, `SRANDMEMBER`,
//! `SCAN`) are never cached.

use super::CommandInfo;
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

/// How a command may be cached, fixed when the command table is built
/// ([`CommandInfo::cacheable`]): a read asks for it on every request under a cache rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cacheable {
    pub kind: Kind,
    /// The arguments (the name counted) a request of it may have to be cached: what Redis
    /// accepts, with a key, and for `EXISTS` one key only (its reply counts keys).
    fewest_args: usize,
    most_args: usize,
}

/// How the command named `name` (as the table names it) with Redis arity `arity` may be
/// cached, if at all.
pub(super) fn cacheable(name: &str, arity: i32) -> Option<Cacheable> {
    let kind = match name {
        "mget" => Kind::PerKey,
        _ if NAMES.contains(&name) => Kind::OneKey,
        _ => return None,
    };
    let (fewest_args, most_args) = match usize::try_from(arity) {
        Ok(exact) => (exact, exact),
        Err(_) => (arity.unsigned_abs() as usize, usize::MAX),
    };
    let most_args = if name == "exists" { 2 } else { most_args };
    Some(Cacheable {
        kind,
        fewest_args: fewest_args.max(2),
        most_args,
    })
}

/// The kind of this request, if it can be cached: never a request Redis answers with an
/// error, one without a key, nor `EXISTS` of several keys.
#[inline]
pub fn request_kind(info: &CommandInfo, args: &Args<'_>) -> Option<Kind> {
    let cacheable = info.cacheable?;
    (cacheable.fewest_args..=cacheable.most_args)
        .contains(&args.len())
        .then_some(cacheable.kind)
}
