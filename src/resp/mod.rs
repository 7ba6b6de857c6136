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

/// Redis's rule for what a client names itself (`CLIENT SETNAME`, `CLIENT SETINFO`):
/// printable ASCII without spaces.
pub fn is_printable_name(name: &[u8]) -> bool {
    name.iter().all(|&byte| (b'!'..=b'~').contains(&byte))
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

/// The number in a header line of plain digits (`$64\r\n`, `*3\r\n`) after `from`, and where
/// the line ends, read in one pass: nearly every header a client or Redis sends. `None` for
/// anything else (a line not complete yet, `-1`, a malformed number), which the caller then
/// reads, or refuses, in full with [`parse_int`]: this accepts only what `parse_int` accepts.
#[inline]
pub(crate) fn plain_length(buf: &[u8], from: usize) -> Option<(usize, i64)> {
    // Runs for every header of every request and reply, hence plain indexing. Nineteen digits
    // never overflow a u64 (at most 10^19 - 1), so the loop needs no checks; `i64::try_from`
    // refuses what is over `i64::MAX`.
    const MOST_DIGITS: usize = 19;
    let digit_at = |at: usize| {
        buf.get(at)
            .map(|byte| byte.wrapping_sub(b'0'))
            .filter(|&d| d <= 9)
    };
    let first = digit_at(from)?;
    let mut value = u64::from(first);
    let mut end = from + 1;
    while end - from < MOST_DIGITS {
        let Some(digit) = digit_at(end) else { break };
        value = value * 10 + u64::from(digit);
        end += 1;
    }
    // No leading zeros, as Redis writes them (and as `parse_int` requires).
    if first == 0 && end - from > 1 {
        return None;
    }
    if buf.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    Some((end, i64::try_from(value).ok()?))
}

#[cfg(test)]
mod tests {
    use super::{parse_int, plain_length};

    #[test]
    fn reads_plain_lengths_in_one_pass_and_leaves_the_rest_to_the_full_check() {
        assert_eq!(plain_length(b"$64\r\n", 1), Some((3, 64)));
        assert_eq!(plain_length(b"$0\r\n", 1), Some((2, 0)));
        assert_eq!(
            plain_length(b"*9223372036854775807\r\n", 1),
            Some((20, i64::MAX))
        );
        for unusual in [
            &b"$-1\r\n"[..],
            b"$01\r\n",
            b"$6",
            b"$6\r",
            b"$\r\n",
            b"$6x\r\n",
            b"*9223372036854775808\r\n",
            b"*99999999999999999999\r\n",
            b"*18446744073709551616\r\n",
        ] {
            assert_eq!(plain_length(unusual, 1), None, "{unusual:?}");
        }
    }

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
