//! `INFO` from every primary, as one: the first primary's text, with `# Keyspace` made of the
//! whole cluster's keys, and the integer fields of `# Clients` and `# Stats` summed over the
//! primaries (connected clients, commands processed, keyspace hits…). Everything else
//! (`# Server`, `# Memory`, `# Replication`…) describes the first primary alone.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use rustc_hash::FxHashMap;

use crate::resp::frame::find_crlf;
use crate::resp::parse_int;

/// Sections whose integer fields are summed.
const SUMMED: [&str; 2] = ["Clients", "Stats"];

pub(super) fn merge(replies: &[Bytes]) -> Option<Bytes> {
    let texts = replies
        .iter()
        .map(|reply| text_of(reply))
        .collect::<Option<Vec<_>>>()?;
    let first = *texts.first()?;
    let fields: Vec<FxHashMap<(&str, &str), &str>> =
        texts.iter().map(|text| fields(text)).collect();
    let mut lines = Vec::new();
    let mut section = "";
    for line in first.split("\r\n") {
        if let Some(name) = line.strip_prefix("# ") {
            section = name;
            lines.push(line.to_string());
            if section == "Keyspace" {
                lines.extend(keyspace(&texts));
            }
            continue;
        }
        if section == "Keyspace" && line.starts_with("db") {
            continue;
        }
        let summed = SUMMED
            .contains(&section)
            .then(|| line.split_once(':'))
            .flatten();
        let total = summed.and_then(|(name, value)| {
            value.parse::<i64>().ok()?;
            fields.iter().try_fold(0i64, |total, fields| {
                let value = fields
                    .get(&(section, name))
                    .map_or(Some(0), |value| value.parse().ok())?;
                total.checked_add(value)
            })
        });
        match (summed, total) {
            (Some((name, _)), Some(total)) => lines.push(format!("{name}:{total}")),
            _ => lines.push(line.to_string()),
        }
    }
    Some(encode(
        &lines.join("\r\n"),
        replies[0].first() == Some(&b'='),
    ))
}

/// The text of an `INFO` reply: a bulk string (RESP2), or a verbatim string (RESP3).
fn text_of(reply: &Bytes) -> Option<&str> {
    // A verbatim string's text follows its format, `txt:`.
    let skipped = match reply.first()? {
        b'$' => 0,
        b'=' => 4,
        _ => return None,
    };
    let header_end = find_crlf(reply, 0)?;
    let len = usize::try_from(parse_int(&reply[1..header_end])?).ok()?;
    let body = reply.get(header_end + 2 + skipped..header_end + 2 + len)?;
    std::str::from_utf8(body).ok()
}

/// Each `field:value` line by section.
fn fields(text: &str) -> FxHashMap<(&str, &str), &str> {
    let mut section = "";
    let mut fields = FxHashMap::default();
    for line in text.split("\r\n") {
        match line.strip_prefix("# ") {
            Some(name) => section = name,
            None => {
                if let Some((name, value)) = line.split_once(':') {
                    fields.insert((section, name), value);
                }
            }
        }
    }
    fields
}

/// The `# Keyspace` lines of the whole cluster: each database's keys and expiring keys summed,
/// its average time to live weighted by each node's expiring keys.
fn keyspace(texts: &[&str]) -> Vec<String> {
    #[derive(Default)]
    struct Database {
        keys: u64,
        expires: u64,
        ttl_weight: u128,
    }
    let mut databases: BTreeMap<u32, Database> = BTreeMap::new();
    for text in texts {
        let lines = text
            .split("\r\n")
            .skip_while(|line| *line != "# Keyspace")
            .skip(1);
        for line in lines.take_while(|line| !line.starts_with('#')) {
            let Some((name, values)) = line.split_once(':') else {
                continue;
            };
            let Some(number) = name.strip_prefix("db").and_then(|n| n.parse().ok()) else {
                continue;
            };
            let database = databases.entry(number).or_default();
            for pair in values.split(',') {
                match pair.split_once('=') {
                    Some(("keys", n)) => database.keys += n.parse::<u64>().unwrap_or(0),
                    Some(("expires", n)) => {
                        let expires = n.parse::<u64>().unwrap_or(0);
                        database.expires += expires;
                        let ttl = values
                            .split(',')
                            .find_map(|pair| pair.strip_prefix("avg_ttl="))
                            .and_then(|ttl| ttl.parse::<u64>().ok())
                            .unwrap_or(0);
                        database.ttl_weight += u128::from(ttl) * u128::from(expires);
                    }
                    _ => {}
                }
            }
        }
    }
    databases
        .into_iter()
        .filter(|(_, database)| database.keys > 0)
        .map(|(number, database)| {
            let ttl = database
                .ttl_weight
                .checked_div(u128::from(database.expires))
                .unwrap_or(0);
            format!(
                "db{number}:keys={},expires={},avg_ttl={ttl}",
                database.keys, database.expires
            )
        })
        .collect()
}

fn encode(text: &str, verbatim: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 16);
    if verbatim {
        out.put_slice(format!("={}\r\ntxt:", text.len() + 4).as_bytes());
    } else {
        out.put_slice(format!("${}\r\n", text.len()).as_bytes());
    }
    out.put_slice(text.as_bytes());
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Bytes {
        encode(text, false)
    }

    #[test]
    fn keyspace_and_counters_add_up() {
        let one = "# Server\r\nredis_version:7.0.15\r\ntcp_port:7000\r\n\r\n# Clients\r\nconnected_clients:2\r\n\r\n# Stats\r\nkeyspace_hits:5\r\ninstantaneous_input_kbps:0.10\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=1000\r\n";
        let two = "# Server\r\nredis_version:7.0.15\r\ntcp_port:7001\r\n\r\n# Clients\r\nconnected_clients:4\r\n\r\n# Stats\r\nkeyspace_hits:7\r\ninstantaneous_input_kbps:0.20\r\n\r\n# Keyspace\r\ndb0:keys=5,expires=3,avg_ttl=3000\r\n";
        let merged = merge(&[reply(one), reply(two)]).unwrap();
        let text = text_of(&merged).unwrap();
        assert!(text.contains("tcp_port:7000\r\n"), "{text}");
        assert!(text.contains("connected_clients:6\r\n"), "{text}");
        assert!(text.contains("keyspace_hits:12\r\n"), "{text}");
        assert!(text.contains("instantaneous_input_kbps:0.10\r\n"), "{text}");
        assert!(
            text.ends_with("# Keyspace\r\ndb0:keys=8,expires=4,avg_ttl=2500\r\n"),
            "{text}"
        );
    }

    #[test]
    fn verbatim_replies_stay_verbatim() {
        let text = "# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n";
        let verbatim = encode(text, true);
        assert_eq!(text_of(&verbatim), Some(text));
        let merged = merge(&[verbatim.clone(), verbatim]).unwrap();
        assert_eq!(
            text_of(&merged),
            Some("# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n")
        );
        assert!(merged.starts_with(b"="));
    }
}
