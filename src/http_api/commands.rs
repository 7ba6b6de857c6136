//! The commands of a REST request: read from its JSON body (or its path), encoded as RESP for
//! the session that runs them, and looked up once in the command table, where it is decided
//! whether a REST caller may run each.

use bytes::{Bytes, BytesMut};
use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::command::{CommandInfo, CommandTable, Effect, LocalCommand};
use crate::resp::request::{encode_command, Decoded, RequestDecoder};

use super::lua::Scripts;

/// One command, ready for a session.
pub struct Command {
    /// The command as a RESP multibulk.
    pub resp: Bytes,
    pub info: &'static CommandInfo,
    /// The name as sent, lowercase (with its subcommand when the table has one), for errors.
    name: String,
}

impl Command {
    /// `args` is the command as words: its name, then its arguments.
    pub fn new<A: AsRef<[u8]>>(args: &[A]) -> Result<Command, String> {
        if args.is_empty() {
            return Err("ERR empty command".into());
        }
        let mut resp = BytesMut::new();
        encode_command(args, &mut resp);
        let mut decoder = RequestDecoder::default();
        let table = CommandTable::global();
        let info = match decoder.decode(&resp) {
            Ok(Decoded::Request { .. }) => table.lookup(&decoder.args(&resp)),
            _ => table.unknown(),
        };
        let mut name = String::from_utf8_lossy(args[0].as_ref()).to_lowercase();
        if info.name.contains('|') {
            name = info.name.to_string();
        }
        Ok(Command {
            resp: resp.freeze(),
            info,
            name,
        })
    }

    /// Why a REST caller may not run this command, as the error Redis's ACLs would give; `None`
    /// when it may.
    pub fn refusal(&self, read_only: bool) -> Option<String> {
        let unsupported = matches!(
            self.info.effect,
            // Each REST request gets exactly one reply per command: commands that turn the
            // connection into a stream cannot be answered that way.
            Effect::Streaming
                // The session was authenticated and named for the token: a caller must not
                // pass itself off as another user or client, nor change the reply protocol.
                | Effect::Local(
                    LocalCommand::Auth
                        | LocalCommand::Hello
                        | LocalCommand::Reset
                        | LocalCommand::ClientSetName
                )
        );
        if unsupported {
            return Some(format!(
                "ERR '{}' is not supported over the REST API",
                self.name
            ));
        }
        (read_only && !may_read(self.info)).then(|| {
            format!(
                "NOPERM this user has no permissions to run the '{}' command",
                self.name
            )
        })
    }
}

/// Whether a read-only caller may run a command: those Redis flags read-only, except the
/// scans of the whole keyspace (`KEYS`, `SCAN`), plus `PING` and `ECHO`. Scripts run
/// through `EVAL_RO`/`EVALSHA_RO`; unknown commands count as writes.
fn may_read(info: &CommandInfo) -> bool {
    match &*info.name {
        "keys" | "scan" => false,
        "ping" | "echo" => true,
        _ => info.has_flag(crate::command::flags::READONLY),
    }
}

/// The command of a `POST /` body: a JSON array of strings and numbers.
pub fn one(body: &[u8], scripts: &Scripts) -> Result<Command, String> {
    let words: Vec<Value> = serde_json::from_slice(body)
        .map_err(|error| format!("ERR the body is not a JSON array of strings: {error}"))?;
    translated(words_of(&words)?, scripts)
}

/// The commands of a `POST /pipeline` or `POST /multi-exec` body: a JSON array of commands.
pub fn many(body: &[u8], scripts: &Scripts) -> Result<Vec<Command>, String> {
    let commands: Vec<Vec<Value>> = serde_json::from_slice(body).map_err(|error| {
        format!("ERR the body is not a JSON array of arrays of strings: {error}")
    })?;
    if commands.is_empty() {
        return Err("ERR no command in the body".into());
    }
    commands
        .iter()
        .map(|words| translated(words_of(words)?, scripts))
        .collect()
}

/// The command of a path-form request: the path's segments, percent-decoded, then the body
/// as the last argument if there is one (`POST /set/foo` with the value as its body). Query
/// parameters are not arguments (`_token` is one of them).
pub fn from_path(path: &str, body: &[u8], scripts: &Scripts) -> Result<Command, String> {
    let mut words: Vec<Vec<u8>> = path
        .trim_start_matches('/')
        .split('/')
        .map(|segment| percent_decode_str(segment).collect())
        .collect();
    if !body.is_empty() {
        words.push(body.to_vec());
    }
    translated(words, scripts)
}

/// The command, once Upstash's Lua dialect is translated for Redis.
fn translated(mut words: Vec<Vec<u8>>, scripts: &Scripts) -> Result<Command, String> {
    scripts.translate(&mut words);
    Command::new(&words)
}

/// A command's words as Redis takes them: strings as they are, numbers as written in JSON.
fn words_of(words: &[Value]) -> Result<Vec<Vec<u8>>, String> {
    words
        .iter()
        .map(|word| match word {
            Value::String(text) => Ok(text.as_bytes().to_vec()),
            Value::Number(number) => Ok(number.to_string().into_bytes()),
            other => Err(format!(
                "ERR a command's words must be strings or numbers, found {other}"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_(body: &[u8]) -> Result<Command, String> {
        one(body, &Scripts::default())
    }

    fn many_(body: &[u8]) -> Result<Vec<Command>, String> {
        many(body, &Scripts::default())
    }

    fn from_path_(path: &str, body: &[u8]) -> Result<Command, String> {
        from_path(path, body, &Scripts::default())
    }

    fn refusal(words: &[&str], read_only: bool) -> Option<String> {
        Command::new(words).unwrap().refusal(read_only)
    }

    #[test]
    fn reads_commands_with_numbers() {
        let command = one_(br#"["SET","k","v","EX",100]"#).unwrap();
        assert_eq!(&*command.info.name, "set");
        assert_eq!(
            &command.resp[..],
            b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nEX\r\n$3\r\n100\r\n"
        );
        let commands = many_(br#"[["INCRBYFLOAT","n",1.5],["get","n"]]"#).unwrap();
        assert_eq!(commands.len(), 2);
        assert!(commands[0].resp.ends_with(b"$3\r\n1.5\r\n"));
    }

    #[test]
    fn reads_commands_from_paths() {
        let command = from_path_("/set/a%20b/v%2Fw/EX/100", b"").unwrap();
        assert_eq!(&*command.info.name, "set");
        assert_eq!(
            &command.resp[..],
            b"*5\r\n$3\r\nset\r\n$3\r\na b\r\n$3\r\nv/w\r\n$2\r\nEX\r\n$3\r\n100\r\n"
        );
        let command = from_path_("/set/k", b"the value\r\n").unwrap();
        assert!(command.resp.ends_with(b"$11\r\nthe value\r\n\r\n"));
        assert_eq!(
            &*from_path_("/client/getname", b"").unwrap().info.name,
            "client|getname"
        );
    }

    #[test]
    fn refuses_bodies_that_are_not_commands() {
        for body in [
            &b""[..],
            b"{}",
            b"[]",
            b"[[\"GET\"]]",
            b"[\"GET\",null]",
            b"[\"GET\",[1]]",
        ] {
            assert!(one_(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        for body in [&b"[]"[..], b"[\"GET\",\"k\"]", b"[[]]", b"[[\"GET\",true]]"] {
            assert!(many_(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn read_only_callers_run_reads_only() {
        for read in [
            &["GET", "k"][..],
            &["hgetall", "h"],
            &["PING"],
            &["EVAL_RO", "return 1", "0"],
        ] {
            assert_eq!(refusal(read, true), None, "{read:?}");
        }
        for (write, name) in [
            (&["SET", "k", "v"][..], "set"),
            (&["KEYS", "*"], "keys"),
            (&["scan", "0"], "scan"),
            (&["EVAL", "return 1", "0"], "eval"),
            (&["FLUSHALL"], "flushall"),
            (&["NOSUCHCOMMAND"], "nosuchcommand"),
            (&["CONFIG", "SET", "x", "y"], "config|set"),
        ] {
            assert_eq!(
                refusal(write, true),
                Some(format!(
                    "NOPERM this user has no permissions to run the '{name}' command"
                )),
                "{write:?}"
            );
            assert_eq!(refusal(write, false), None, "{write:?}");
        }
    }

    #[test]
    fn commands_that_would_break_one_reply_per_command_are_refused() {
        for (words, name) in [
            (&["SUBSCRIBE", "c"][..], "subscribe"),
            (&["MONITOR"], "monitor"),
            (&["CLIENT", "REPLY", "OFF"], "client|reply"),
            (&["AUTH", "x"], "auth"),
            (&["HELLO", "3"], "hello"),
            (&["CLIENT", "SETNAME", "other"], "client|setname"),
        ] {
            assert_eq!(
                refusal(words, false),
                Some(format!("ERR '{name}' is not supported over the REST API")),
                "{words:?}"
            );
        }
    }
}
