//! `scope = "global"`: rate-limit buckets that live in Redis, so that every keyward in front of
//! the same Redis shares them.
//!
//! One decision is one `EVAL` of a GCRA script: it reads the theoretical arrival time (TAT) of
//! each bucket the command touches, refuses if any is too far ahead, and otherwise advances all
//! of them, atomically. Time comes from Redis (`TIME`), so keyward processes on different
//! machines agree on it. Buckets are stored as `keyward:ratelimit:{<rule>:<bucket>}` (hash-tagged
//! per bucket) and expire once they are full again, so idle buckets take no memory in Redis.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::resp::parse_int;
use crate::resp::request::encode_command;

/// Prefix of every key keyward keeps in Redis for global rate limits.
pub const KEY_PREFIX: &str = "keyward:ratelimit:";

/// KEYS: the buckets. ARGV[1]: microseconds per cell; ARGV[2]: burst tolerance in
/// microseconds, `(burst - 1) × interval`. Returns `{0, 0}` when allowed, else `{wait in
/// microseconds, 1-based index of the bucket that refused}`.
const SCRIPT: &str = "\
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local wait = 0
local refused = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or 0)
  if tat < now then tat = now end
  tats[i] = tat
  local over = tat - now - tolerance
  if over > wait then
    wait = over
    refused = i
  end
end
if wait > 0 then return {math.ceil(wait), refused} end
for i, key in ipairs(KEYS) do
  local next_tat = tats[i] + interval
  redis.call('SET', key, string.format('%.0f', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 1)
end
return {0, 0}
";

/// Encodes the decision for `buckets` of `rule`.
pub fn encode_check(rule: &str, buckets: &[&[u8]], interval: Duration, burst: u32) -> Bytes {
    let interval_micros = interval.as_micros().max(1);
    let tolerance = interval_micros * u128::from(burst.saturating_sub(1));
    let mut args: Vec<Vec<u8>> = Vec::with_capacity(buckets.len() + 5);
    args.push(b"EVAL".to_vec());
    args.push(SCRIPT.as_bytes().to_vec());
    args.push(buckets.len().to_string().into_bytes());
    for bucket in buckets {
        let mut key = format!("{KEY_PREFIX}{{{rule}:").into_bytes();
        key.extend_from_slice(bucket);
        key.push(b'}');
        args.push(key);
    }
    args.push(interval_micros.to_string().into_bytes());
    args.push(tolerance.to_string().into_bytes());
    let mut out = BytesMut::new();
    encode_command(&args, &mut out);
    out.freeze()
}

/// What Redis answered: `Ok(None)` allowed, `Ok(Some((wait, bucket)))` refused by the bucket
/// at that index (0-based), `Err` when it could not decide (an error reply, or no reply).
pub type Answer = Result<Option<(Duration, usize)>, String>;

/// Reads the script's reply frame: `*2 :wait :index`, or an error.
pub fn read_answer(frame: &[u8]) -> Answer {
    if let Some(message) = frame.strip_prefix(b"-") {
        let message = message.strip_suffix(b"\r\n").unwrap_or(message);
        return Err(String::from_utf8_lossy(message).into_owned());
    }
    let numbers: Vec<i64> = frame
        .split(|&byte| byte == b'\n')
        .filter_map(|line| line.strip_prefix(b":"))
        .filter_map(|digits| parse_int(digits.strip_suffix(b"\r").unwrap_or(digits)))
        .collect();
    match (frame.starts_with(b"*2\r\n"), numbers.as_slice()) {
        (true, [0, _]) => Ok(None),
        (true, &[micros, refused]) if micros > 0 && refused >= 1 => Ok(Some((
            Duration::from_micros(micros as u64),
            (refused - 1) as usize,
        ))),
        _ => Err(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(frame)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_answers() {
        assert_eq!(read_answer(b"*2\r\n:0\r\n:0\r\n"), Ok(None));
        assert_eq!(
            read_answer(b"*2\r\n:1500\r\n:2\r\n"),
            Ok(Some((Duration::from_micros(1500), 1)))
        );
        assert!(read_answer(b"-NOPERM x\r\n").is_err());
        assert!(read_answer(b":0\r\n").is_err());
        assert!(read_answer(b"$1\r\nx\r\n").is_err());
    }

    #[test]
    fn keys_are_prefixed_and_hash_tagged_per_bucket() {
        let encoded = encode_check("login", &[b"user:1"], Duration::from_millis(100), 5);
        let text = String::from_utf8_lossy(&encoded);
        assert!(text.contains("keyward:ratelimit:{login:user:1}"), "{text}");
        assert!(text.ends_with("$6\r\n100000\r\n$6\r\n400000\r\n"), "{text}");
    }
}
