//! The bundled command table must match what a real redis-server reports, and the installed
//! redis-server must be the version it was generated from.
//!
//! Regenerate it from the installed redis-server with
//! `KEYWARD_WRITE_COMMAND_TABLE=1 cargo test --test command_table`.

mod support;

use redis::Value;
use support::RedisServer;

const TABLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/command/commands.tsv");

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        Value::Okay => "OK".into(),
        Value::Int(number) => number.to_string(),
        other => format!("{other:?}"),
    }
}

fn items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// Reads a RESP2 flat `[name, value, name, value…]` array.
fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    items(value)
        .chunks(2)
        .find(|pair| pair.len() == 2 && text(&pair[0]) == name)
        .map(|pair| &pair[1])
}

fn number(value: Option<&Value>) -> String {
    value.map(text).unwrap_or_else(|| "0".into())
}

fn key_spec(spec: &Value) -> String {
    let flags: Vec<String> = field(spec, "flags")
        .map(items)
        .unwrap_or(&[])
        .iter()
        .map(text)
        .collect();
    let begin = field(spec, "begin_search");
    let begin_spec = begin.and_then(|b| field(b, "spec"));
    let begin = match begin.and_then(|b| field(b, "type")).map(text).as_deref() {
        Some("index") => format!(
            "index:{}",
            number(begin_spec.and_then(|s| field(s, "index")))
        ),
        Some("keyword") => format!(
            "keyword:{}:{}",
            begin_spec
                .and_then(|s| field(s, "keyword"))
                .map(text)
                .unwrap_or_default(),
            number(begin_spec.and_then(|s| field(s, "startfrom")))
        ),
        _ => "unknown".into(),
    };
    let find = field(spec, "find_keys");
    let find_spec = find.and_then(|f| field(f, "spec"));
    let get = |name| number(find_spec.and_then(|s| field(s, name)));
    let find = match find.and_then(|f| field(f, "type")).map(text).as_deref() {
        Some("range") => format!(
            "range:{}:{}:{}",
            get("lastkey"),
            get("keystep"),
            get("limit")
        ),
        Some("keynum") => format!(
            "keynum:{}:{}:{}",
            get("keynumidx"),
            get("firstkey"),
            get("keystep")
        ),
        _ => "unknown".into(),
    };
    format!("{}/{begin}/{find}", flags.join(","))
}

fn push_lines(entry: &Value, lines: &mut Vec<String>) {
    let fields = items(entry);
    let list = |index: usize| -> String {
        fields
            .get(index)
            .map(items)
            .unwrap_or(&[])
            .iter()
            .map(text)
            .collect::<Vec<_>>()
            .join(",")
    };
    let categories = list(6).replace('@', "");
    let specs: Vec<String> = fields
        .get(8)
        .map(items)
        .unwrap_or(&[])
        .iter()
        .map(key_spec)
        .collect();
    lines.push(format!(
        "{}\t{}\t{}\t{}\t{}",
        text(&fields[0]).to_lowercase(),
        text(&fields[1]),
        list(2),
        categories,
        specs.join(";")
    ));
    for sub in fields.get(9).map(items).unwrap_or(&[]) {
        push_lines(sub, lines);
    }
}

fn generate(redis: &mut redis::Connection) -> String {
    let version = redis::cmd("INFO")
        .arg("server")
        .query::<String>(redis)
        .unwrap();
    let version = version
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap()
        .trim()
        .to_string();
    let commands: Value = redis::cmd("COMMAND").query(redis).unwrap();
    let mut lines = Vec::new();
    for entry in items(&commands) {
        push_lines(entry, &mut lines);
    }
    lines.sort();
    format!(
        "# generated from redis-server {version} COMMAND output; see src/command/mod.rs\n{}\n",
        lines.join("\n")
    )
}

/// The redis-server version a table was generated from, as its first line names it.
fn version(table: &str) -> &str {
    table
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("# generated from redis-server "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("(unknown)")
}

/// How to bring the bundled table in line with the installed redis-server.
const REGENERATE: &str = "regenerate it with \
    `KEYWARD_WRITE_COMMAND_TABLE=1 cargo test --test command_table` and review the diff";

/// Why the bundled table differs from the one generated from the installed redis-server. A
/// table from another Redis version is a difference too: comparing nothing would pass without
/// checking anything.
fn compare(bundled: &str, generated: &str) -> Result<(), String> {
    if version(bundled) != version(generated) {
        return Err(format!(
            "src/command/commands.tsv was generated from redis-server {}, but the installed \
             redis-server is {}: {REGENERATE}",
            version(bundled),
            version(generated)
        ));
    }
    if bundled != generated {
        return Err(format!(
            "src/command/commands.tsv differs from redis-server {}'s COMMAND output: {REGENERATE}",
            version(generated)
        ));
    }
    Ok(())
}

#[test]
fn bundled_table_matches_redis_server() {
    let server = RedisServer::start();
    let generated = generate(&mut server.client());
    if std::env::var_os("KEYWARD_WRITE_COMMAND_TABLE").is_some() {
        std::fs::write(TABLE_PATH, &generated).unwrap();
    }
    let bundled = std::fs::read_to_string(TABLE_PATH).unwrap();
    if let Err(why) = compare(&bundled, &generated) {
        panic!("{why}");
    }
}

#[test]
fn a_table_from_another_redis_version_is_a_failure() {
    let bundled = std::fs::read_to_string(TABLE_PATH).unwrap();
    let from_another = bundled.replacen(version(&bundled), "6.2.0", 1);
    let why =
        compare(&from_another, &bundled).expect_err("a table from another Redis must not pass");
    assert!(
        why.contains("6.2.0") && why.contains(version(&bundled)),
        "{why}"
    );
    assert!(
        why.contains("KEYWARD_WRITE_COMMAND_TABLE=1 cargo test --test command_table"),
        "{why}"
    );
}
