//! What keyward knows about each Redis command: arity, flags, ACL categories, where its keys
//! are, and how it affects the connection it runs on.
//!
//! The data comes from a real `redis-server`'s `COMMAND` reply, stored in `commands.tsv`
//! (regenerate it with `KEYWARD_WRITE_COMMAND_TABLE=1 cargo test --test command_table`).
//! Commands Redis does not list (module commands, newer versions) are still forwarded; they are
//! treated as writes with unknown keys, never as reads.

pub mod cacheable;
mod effect;
mod keys;
mod table_file;

pub use effect::{Effect, Holding, LocalCommand, Notice, Role};
pub use keys::{BeginSearch, FindKeys, KeySpec};

use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use crate::resp::request::Args;

/// Command flags keyward acts on, as Redis names them in `COMMAND`.
pub mod flags {
    pub const WRITE: u32 = 1 << 0;
    pub const READONLY: u32 = 1 << 1;
    pub const BLOCKING: u32 = 1 << 2;
    pub const PUBSUB: u32 = 1 << 3;
    pub const ADMIN: u32 = 1 << 4;
    pub const NOSCRIPT: u32 = 1 << 5;
    pub const MOVABLEKEYS: u32 = 1 << 6;
    pub const FAST: u32 = 1 << 7;

    pub(super) fn parse(name: &str) -> u32 {
        match name {
            "write" => WRITE,
            "readonly" => READONLY,
            "blocking" => BLOCKING,
            "pubsub" => PUBSUB,
            "admin" => ADMIN,
            "noscript" => NOSCRIPT,
            "movablekeys" => MOVABLEKEYS,
            "fast" => FAST,
            _ => 0,
        }
    }
}

/// A command's entry in the table.
#[derive(Debug)]
pub struct CommandInfo {
    /// Index into the table, used to keep per-command metrics without hashing names.
    pub id: usize,
    /// Lowercase, with `|` between a container and its subcommand (`client|setname`), as in
    /// Redis's own error messages.
    pub name: Box<str>,
    /// The name as most clients spell it (`GET`): a pipeline of one command is then recognised
    /// by one comparison of bytes instead of a case-insensitive one.
    pub uppercase: Box<[u8]>,
    /// Redis arity: positive is exact, negative is a minimum (both count the name).
    pub arity: i32,
    pub flags: u32,
    /// ACL categories without the `@`, for policy filters such as `@read`.
    pub categories: Box<[Box<str>]>,
    pub key_specs: Box<[KeySpec]>,
    /// See [`keys::key_is_first_argument`].
    pub key_is_first_argument: bool,
    /// Whether the second argument selects a subcommand with its own entry.
    pub has_subcommands: bool,
    pub effect: Effect,
    pub notice: Notice,
    pub holding: Holding,
    pub role: Role,
    /// How reads of this command may be cached; `None` for a command never cached.
    pub cacheable: Option<cacheable::Cacheable>,
}

impl CommandInfo {
    pub fn has_flag(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    /// Pushes the argument positions of this command's keys to `out`. Inlined: most
    /// commands name one key, first, and the phases that need keys ask for every request.
    #[inline]
    pub fn key_positions(&self, args: &Args<'_>, out: &mut Vec<usize>) {
        if self.key_is_first_argument {
            if args.len() > 1 {
                out.push(1);
            }
            return;
        }
        keys::key_positions(&self.name, &self.key_specs, args, out);
    }
}

/// All known commands, looked up case-insensitively by name (and subcommand).
pub struct CommandTable {
    commands: Vec<CommandInfo>,
    by_name: FxHashMap<Box<[u8]>, usize>,
    /// Stands for every command the table does not know.
    unknown: CommandInfo,
    categories: Vec<String>,
}

/// Commands of Redis versions newer than the bundled table that change connection state or
/// block. They are added when the table lacks them, so that a newer Redis behind keyward never
/// gets them on a shared connection.
const NEWER_THAN_TABLE: &str = "\
client|setinfo\t4\tnoscript,loading,stale\tslow,connection\t
client|no-touch\t3\tnoscript,loading,stale\tslow,connection\t
waitaof\t4\tnoscript,blocking\tslow,connection\t
";

/// Names longer than this are not Redis commands; they are looked up as unknown.
const MAX_NAME_LEN: usize = 64;

impl CommandTable {
    /// The table built from the bundled Redis data plus keyward's own command.
    pub fn global() -> &'static CommandTable {
        static TABLE: OnceLock<CommandTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            CommandTable::from_tsv(include_str!("commands.tsv"))
                .expect("the bundled command table is valid")
        })
    }

    pub fn from_tsv(text: &str) -> Result<CommandTable, String> {
        let mut commands = table_file::parse(text)?;
        for newer in table_file::parse(NEWER_THAN_TABLE)? {
            if !commands.iter().any(|known| known.name() == newer.name()) {
                commands.push(newer);
            }
        }
        commands.push(table_file::Entry::keyward());
        // Ids fit in 16 bits, `unknown`'s included: the cache's shapes are written that way.
        if commands.len() >= usize::from(u16::MAX) {
            return Err(format!(
                "{} commands: more than ids can tell apart",
                commands.len()
            ));
        }
        let commands: Vec<CommandInfo> = commands
            .into_iter()
            .enumerate()
            .map(|(id, entry)| entry.into_info(id))
            .collect();
        let by_name = commands
            .iter()
            .map(|info| (info.name.as_bytes().into(), info.id))
            .collect();
        let unknown = table_file::Entry::unknown().into_info(commands.len());
        let mut categories: Vec<String> = commands
            .iter()
            .flat_map(|info| info.categories.iter().map(|c| c.to_string()))
            .collect();
        categories.sort();
        categories.dedup();
        Ok(CommandTable {
            commands,
            by_name,
            unknown,
            categories,
        })
    }

    /// Every ACL category some command belongs to, sorted.
    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    /// Every command and subcommand name, lowercase.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.commands.iter().map(|info| &*info.name)
    }

    /// A command by name, case-insensitively (`get`, `CLIENT|SETNAME`).
    pub fn find_name(&self, name: &str) -> Option<&CommandInfo> {
        self.find(name.as_bytes(), None)
    }

    /// The number of ids in use, `unknown` included.
    pub fn len(&self) -> usize {
        self.commands.len() + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn by_id(&self, id: usize) -> &CommandInfo {
        self.commands.get(id).unwrap_or(&self.unknown)
    }

    pub fn unknown(&self) -> &CommandInfo {
        &self.unknown
    }

    /// Like [`CommandTable::lookup`], but first checks `previous` (the caller's last result),
    /// which a pipeline of one command (`GET`, `GET`, …) matches without hashing.
    pub fn lookup_after(
        &self,
        previous: Option<&'static CommandInfo>,
        args: &Args<'_>,
    ) -> &CommandInfo {
        if let (Some(info), Some(name)) = (previous, args.get(0)) {
            let same_name =
                || name == &*info.uppercase || name.eq_ignore_ascii_case(info.name.as_bytes());
            if !info.has_subcommands && same_name() {
                return info;
            }
        }
        self.lookup(args)
    }

    /// The entry for a request, descending into a subcommand where the command has them.
    pub fn lookup(&self, args: &Args<'_>) -> &CommandInfo {
        let Some(name) = args.get(0) else {
            return &self.unknown;
        };
        let Some(info) = self.find(name, None) else {
            return &self.unknown;
        };
        if info.has_subcommands {
            if let Some(sub) = args.get(1).and_then(|sub| self.find(name, Some(sub))) {
                return sub;
            }
        }
        info
    }

    fn find(&self, name: &[u8], sub: Option<&[u8]>) -> Option<&CommandInfo> {
        let mut lower = [0u8; MAX_NAME_LEN];
        let mut len = 0;
        let parts = std::iter::once(name)
            .chain(sub.map(|sub| [b"|".as_slice(), sub]).into_iter().flatten());
        for part in parts {
            let slot = lower.get_mut(len..len + part.len())?;
            for (dst, src) in slot.iter_mut().zip(part) {
                *dst = src.to_ascii_lowercase();
            }
            len += part.len();
        }
        self.by_name
            .get(&lower[..len])
            .map(|&id| &self.commands[id])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::request::{Decoded, RequestDecoder};

    fn with_args<T>(words: &[&str], f: impl FnOnce(&Args<'_>) -> T) -> T {
        let mut input = bytes::BytesMut::new();
        crate::resp::request::encode_command(words, &mut input);
        let mut decoder = RequestDecoder::default();
        assert!(matches!(
            decoder.decode(&input),
            Ok(Decoded::Request { .. })
        ));
        f(&decoder.args(&input))
    }

    #[test]
    fn a_read_is_cacheable_with_the_arguments_redis_accepts_and_exists_with_one_key() {
        use cacheable::Kind;
        let kind = |words: &[&str]| {
            with_args(words, |args| {
                cacheable::request_kind(CommandTable::global().lookup(args), args)
            })
        };
        assert_eq!(kind(&["GET", "k"]), Some(Kind::OneKey));
        assert_eq!(kind(&["get", "k", "extra"]), None);
        assert_eq!(kind(&["MGET", "a", "b", "c"]), Some(Kind::PerKey));
        assert_eq!(kind(&["EXISTS", "k"]), Some(Kind::OneKey));
        assert_eq!(kind(&["EXISTS", "a", "b"]), None);
        assert_eq!(kind(&["HMGET", "h"]), None);
        assert_eq!(kind(&["HMGET", "h", "f", "g"]), Some(Kind::OneKey));
        assert_eq!(kind(&["GETRANGE", "k", "0"]), None);
        assert_eq!(kind(&["GETRANGE", "k", "0", "3"]), Some(Kind::OneKey));
        assert_eq!(kind(&["SET", "k", "v"]), None);
        assert_eq!(kind(&["NOSUCHCOMMAND", "k"]), None);
    }

    fn keys(words: &[&str]) -> Vec<String> {
        with_args(words, |args| {
            let info = CommandTable::global().lookup(args);
            let mut positions = Vec::new();
            info.key_positions(args, &mut positions);
            positions
                .into_iter()
                .map(|i| String::from_utf8(args.get(i).unwrap().to_vec()).unwrap())
                .collect()
        })
    }

    #[test]
    fn looks_up_case_insensitively_with_subcommands() {
        with_args(&["get", "k"], |args| {
            assert_eq!(&*CommandTable::global().lookup(args).name, "get")
        });
        with_args(&["Client", "SETNAME", "x"], |args| {
            assert_eq!(&*CommandTable::global().lookup(args).name, "client|setname")
        });
        with_args(&["NOSUCHCOMMAND"], |args| {
            let info = CommandTable::global().lookup(args);
            assert_eq!(&*info.name, "unknown");
            assert!(info.has_flag(flags::WRITE));
        });
    }

    #[test]
    fn knows_connection_commands_newer_than_the_table() {
        for (words, effect) in [
            (
                &["CLIENT", "SETINFO", "LIB-NAME", "x"][..],
                Effect::Local(LocalCommand::ClientSetInfo),
            ),
            (&["CLIENT", "NO-TOUCH", "ON"][..], Effect::Dedicated),
            (&["WAITAOF", "0", "1", "0"][..], Effect::Dedicated),
            (&["SCRIPT", "DEBUG", "YES"][..], Effect::Streaming),
            (&["SCRIPT", "KILL"][..], Effect::Aside),
            (&["FUNCTION", "KILL"][..], Effect::Aside),
            (&["SHUTDOWN", "NOSAVE"][..], Effect::Aside),
            (&["CLIENT", "UNPAUSE"][..], Effect::Aside),
            (
                &["PSYNC", "?", "-1"][..],
                Effect::Local(LocalCommand::Replication),
            ),
        ] {
            with_args(words, |args| {
                assert_eq!(
                    CommandTable::global().lookup(args).effect,
                    effect,
                    "{words:?}"
                )
            });
        }
    }

    #[test]
    fn finds_keys_for_the_special_cases() {
        assert_eq!(keys(&["GET", "a"]), ["a"]);
        assert!(
            keys(&["GET"]).is_empty(),
            "a key the command lacks is not invented"
        );
        assert_eq!(keys(&["sort", "l", "store", "d"]), ["l", "d"]);
        assert_eq!(keys(&["MSET", "a", "1", "b", "2"]), ["a", "b"]);
        assert_eq!(keys(&["MGET", "a", "b", "c"]), ["a", "b", "c"]);
        assert_eq!(keys(&["EVAL", "return 1", "2", "a", "b", "x"]), ["a", "b"]);
        assert_eq!(keys(&["EVALSHA", "abc", "0", "x"]), Vec::<String>::new());
        assert_eq!(
            keys(&["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]),
            ["s1", "s2"]
        );
        assert_eq!(
            keys(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s1", ">"]),
            ["s1"]
        );
        assert_eq!(
            keys(&["ZUNIONSTORE", "dst", "2", "a", "b", "WEIGHTS", "1", "2"]),
            ["dst", "a", "b"]
        );
        assert_eq!(
            keys(&["SORT", "src", "BY", "w_*", "STORE", "dst"]),
            ["src", "dst"]
        );
        assert_eq!(
            keys(&["MIGRATE", "h", "1", "", "0", "5000", "KEYS", "a", "b"]),
            ["", "a", "b"]
        );
        assert_eq!(keys(&["BLPOP", "a", "b", "0"]), ["a", "b"]);
        assert_eq!(keys(&["OBJECT", "ENCODING", "a"]), ["a"]);
        assert_eq!(keys(&["PING"]), Vec::<String>::new());
        assert_eq!(
            keys(&["SORT", "src", "GET", "store", "LIMIT", "0", "1"]),
            ["src"]
        );
    }

    #[test]
    fn garbage_arguments_yield_no_keys_rather_than_a_panic() {
        assert_eq!(keys(&["EVAL", "s", "99", "a"]), Vec::<String>::new());
        assert_eq!(keys(&["EVAL", "s", "-3", "a"]), Vec::<String>::new());
        assert_eq!(keys(&["EVAL", "s", "x"]), Vec::<String>::new());
        assert_eq!(keys(&["XREAD", "STREAMS"]), Vec::<String>::new());
        assert_eq!(
            keys(&["EVAL", "s", "9223372036854775807", "k"]),
            Vec::<String>::new()
        );
        assert_eq!(keys(&["MSET", "a"]), ["a"]);
    }
}
