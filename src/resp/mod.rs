//! The Redis wire protocol, split by direction.
//!
//! Requests from clients are decoded just enough to route them ([`request`]); replies from
//! Redis are only delimited, never rebuilt ([`frame`]); replies that keyward makes itself are
//! encoded by [`reply`].

pub mod frame;
pub mod reply;
pub mod request;

use bytes::{BufMut, BytesMut};

/// The protocol a client session (and the upstream connection serving it) speaks.
///
/// Redis shapes some replies differently per protocol, so sessions of different protocols never
/// share an upstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn version(self) -> u8 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// Writes a RESP line of `kind` and an integer (`*3\r\n`, `$64\r\n`, `:1\r\n`) without the
/// allocation `to_string` costs: keyward writes such headers for every command it sends
/// itself (cache fills, lock queue reads) and every reply it makes.
pub fn put_header(out: &mut BytesMut, kind: u8, value: impl itoa::Integer) {
    out.put_u8(kind);
    out.put_slice(itoa::Buffer::new().format(value).as_bytes());
    out.put_slice(b"\r\n");
}

/// Parses a decimal integer exactly as Redis's `string2ll` does: an optional minus sign and
/// digits, no leading zeros, no `-0`, no overflow. Anything Redis would reject must be rejected
/// here too, or keyward would forward a request that makes Redis drop a shared connection.
pub(crate) fn parse_int(digits: &[u8]) -> Option<i64> {
    if digits == b"0" {
        return Some(0);
    }
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    match digits.first() {
        Some(b'1'..=b'9') if digits.len() <= 19 => {}
        _ => return None,
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(digit - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(digit)?
        } else {
            value.checked_add(digit)?
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::parse_int;

    #[test]
    fn parses_like_redis() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b""), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"1a"), None);
        assert_eq!(parse_int(b"+1"), None);
        assert_eq!(parse_int(b"04"), None, "Redis rejects leading zeros");
        assert_eq!(parse_int(b"-0"), None);
        assert_eq!(parse_int(b"00"), None);
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
    }
}
