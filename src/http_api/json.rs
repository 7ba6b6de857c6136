//! Redis's replies as Upstash's REST API shows them in JSON: strings as strings (base64 when
//! the client asks with `Upstash-Encoding: base64`, nested ones included), integers as
//! numbers, arrays as arrays, nil as `null`, and an error reply as its text.
//!
//! REST sessions speak RESP2 (they cannot send `HELLO`), so these are the only types met.
//! Aggregates are walked with a stack of partly built arrays rather than by recursion, and
//! nesting is bounded (JSON values are written and dropped recursively): no reply shape can
//! exhaust the stack. Redis's own replies nest far less (Lua's is the deepest, about 200).

use base64::Engine;
use serde_json::Value;

use crate::resp::frame::{complete_len, find_crlf};
use crate::resp::parse_int;

/// The deepest nesting of arrays turned into JSON.
const MAX_DEPTH: usize = 1000;

/// How strings are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As text (bytes that are not UTF-8 are replaced, as JSON strings must be text).
    Plain,
    /// Base64 of the bytes, which carries any value unchanged.
    Base64,
}

/// One command's reply: its value, or the text of an error reply (Redis's, unchanged).
pub fn reply(frame: &[u8], encoding: Encoding) -> Result<Value, String> {
    // `@upstash/redis` takes a bare `OK` as it is, whatever the encoding.
    if frame == b"+OK\r\n" {
        return Ok(Value::String("OK".into()));
    }
    if let Some(line) = frame.strip_prefix(b"-") {
        return Err(text(strip_crlf(line)));
    }
    value(frame, encoding)
}

/// The elements of an array reply, each as a frame of its own (`EXEC`'s replies, whose
/// errors are answered one by one); `None` if `frame` is not an array.
pub fn elements(frame: &[u8]) -> Option<Vec<&[u8]>> {
    let header_end = find_crlf(frame, 0)?;
    let count = usize::try_from(parse_int(frame.strip_prefix(b"*")?.get(..header_end - 1)?)?);
    let mut rest = frame.get(header_end + 2..)?;
    let mut elements = Vec::new();
    for _ in 0..count.ok()? {
        let len = complete_len(rest)?;
        let (element, after) = rest.split_at(len);
        elements.push(element);
        rest = after;
    }
    Some(elements)
}

/// An array being built: its elements so far, and how many are still to come.
struct Partial {
    items: Vec<Value>,
    owed: usize,
}

fn value(frame: &[u8], encoding: Encoding) -> Result<Value, String> {
    let malformed = || "ERR keyward: malformed reply from Redis".to_string();
    let mut stack: Vec<Partial> = Vec::new();
    let mut pos = 0;
    loop {
        let kind = *frame.get(pos).ok_or_else(malformed)?;
        let line_end = find_crlf(frame, pos + 1).ok_or_else(malformed)?;
        let line = &frame[pos + 1..line_end];
        pos = line_end + 2;
        let mut done = match kind {
            b'+' | b'-' => string(line, encoding),
            b':' => Value::from(parse_int(line).ok_or_else(malformed)?),
            b'$' => match parse_int(line).ok_or_else(malformed)? {
                -1 => Value::Null,
                len => {
                    let len = usize::try_from(len).map_err(|_| malformed())?;
                    let bytes = frame.get(pos..pos + len).ok_or_else(malformed)?;
                    pos += len + 2;
                    string(bytes, encoding)
                }
            },
            b'*' => match parse_int(line).ok_or_else(malformed)? {
                -1 => Value::Null,
                0 => Value::Array(Vec::new()),
                _ if stack.len() == MAX_DEPTH => {
                    return Err("ERR keyward: reply nested too deeply for JSON".into())
                }
                len => {
                    let owed = usize::try_from(len).map_err(|_| malformed())?;
                    // The count is Redis's word: the capacity is not, beyond what the frame
                    // could hold.
                    let items = Vec::with_capacity(owed.min(frame.len() - pos));
                    stack.push(Partial { items, owed });
                    continue;
                }
            },
            _ => return Err(malformed()),
        };
        loop {
            let Some(top) = stack.last_mut() else {
                return Ok(done);
            };
            top.items.push(done);
            top.owed -= 1;
            if top.owed > 0 {
                break;
            }
            let finished = stack.pop().expect("the top exists");
            done = Value::Array(finished.items);
        }
    }
}

fn string(bytes: &[u8], encoding: Encoding) -> Value {
    match encoding {
        Encoding::Plain => Value::String(text(bytes)),
        Encoding::Base64 => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn strip_crlf(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r\n").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plain(frame: &[u8]) -> Result<Value, String> {
        reply(frame, Encoding::Plain)
    }

    #[test]
    fn scalars_become_json_values() {
        assert_eq!(plain(b"$5\r\nhello\r\n"), Ok(json!("hello")));
        assert_eq!(plain(b":-42\r\n"), Ok(json!(-42)));
        assert_eq!(plain(b"$-1\r\n"), Ok(Value::Null));
        assert_eq!(plain(b"*-1\r\n"), Ok(Value::Null));
        assert_eq!(plain(b"+PONG\r\n"), Ok(json!("PONG")));
        assert_eq!(plain(b"$0\r\n\r\n"), Ok(json!("")));
    }

    #[test]
    fn errors_keep_redis_text() {
        assert_eq!(
            plain(b"-WRONGTYPE Operation against a key\r\n"),
            Err("WRONGTYPE Operation against a key".into())
        );
    }

    #[test]
    fn nested_arrays_keep_their_shape() {
        let frame = b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n*0\r\n$-1\r\n";
        assert_eq!(plain(frame), Ok(json!(["a", [1, []], null])));
    }

    #[test]
    fn base64_encodes_every_string_but_not_numbers_or_nulls() {
        let frame = b"*4\r\n$2\r\nhi\r\n*2\r\n$3\r\n\xff\x00a\r\n:7\r\n$-1\r\n+OK\r\n";
        assert_eq!(
            reply(frame, Encoding::Base64),
            Ok(json!(["aGk=", ["/wBh", 7], null, "T0s="]))
        );
        assert_eq!(reply(b"+OK\r\n", Encoding::Base64), Ok(json!("OK")));
        assert_eq!(reply(b"+PONG\r\n", Encoding::Base64), Ok(json!("UE9ORw==")));
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |depth: usize| {
            let mut frame = b"*1\r\n".repeat(depth);
            frame.extend_from_slice(b":1\r\n");
            frame
        };
        assert!(plain(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(
            plain(&nested(1_000_000)),
            Err("ERR keyward: reply nested too deeply for JSON".into())
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for frame in [
            &b""[..],
            b"*2\r\n:1\r\n",
            b"$5\r\nab\r\n",
            b"?x\r\n",
            b":x\r\n",
        ] {
            assert!(plain(frame).is_err(), "{frame:?}");
        }
    }

    #[test]
    fn splits_array_elements() {
        let frame = b"*3\r\n+OK\r\n-ERR no\r\n*1\r\n:1\r\n";
        let parts = elements(frame).unwrap();
        assert_eq!(parts, [&b"+OK\r\n"[..], b"-ERR no\r\n", b"*1\r\n:1\r\n"]);
        assert_eq!(elements(b"-EXECABORT x\r\n"), None);
    }
}
