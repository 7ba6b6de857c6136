//! Recognising a lock attempt: `SET key token NX [GET] [PX ms | EX s | KEEPTTL]`.

use std::sync::Arc;

use bytes::Bytes;

use super::RuleLocks;
use crate::command::{CommandInfo, Role};

use crate::resp::request::Args;
use crate::upstream::{ConnHandle, ReplySender};

/// The parts of a `SET … NX` that matter to a lock queue.
#[derive(Debug, PartialEq, Eq)]
pub struct SetNx<'a> {
    pub key: &'a [u8],
    pub token: &'a [u8],
    /// With `GET`, Redis answers the old value when the lock is taken and nil when it wins.
    pub with_get: bool,
}

/// A `SET` with `NX` (and without `XX`), or nothing. Options are read as Redis reads them,
/// so a malformed `SET` is left for Redis to refuse.
pub fn set_nx<'a>(args: &Args<'a>) -> Option<SetNx<'a>> {
    let (key, token) = (args.get(1)?, args.get(2)?);
    let (mut nx, mut with_get) = (false, false);
    let mut index = 3;
    while let Some(option) = args.get(index) {
        let takes_value = [&b"ex"[..], b"px"]
            .iter()
            .any(|name| option.eq_ignore_ascii_case(name));
        if option.eq_ignore_ascii_case(b"nx") {
            nx = true;
        } else if option.eq_ignore_ascii_case(b"get") {
            with_get = true;
        } else if option.eq_ignore_ascii_case(b"xx")
            || option.eq_ignore_ascii_case(b"exat")
            || option.eq_ignore_ascii_case(b"pxat")
        {
            // An absolute expiry may pass while the attempt waits: granting it then would
            // answer OK for a lock that has already expired.
            return None;
        } else if takes_value {
            args.get(index + 1)?;
            index += 1;
        } else if !option.eq_ignore_ascii_case(b"keepttl") {
            return None;
        }
        index += 1;
    }
    nx.then_some(SetNx {
        key,
        token,
        with_get,
    })
}

/// A `SET … NX` that a lock rule takes.
pub struct Claim {
    pub rule: Arc<RuleLocks>,
    pub key: Bytes,
    pub token: Bytes,
    pub with_get: bool,
}

/// The lock rule in `rules` that takes this request, if it is a lock attempt on a key one
/// names. Inlined: it runs for every forwarded command, and nearly always returns at once.
#[inline]
pub fn claim(rules: &[Arc<RuleLocks>], info: &CommandInfo, args: &Args<'_>) -> Option<Claim> {
    if rules.is_empty() || info.role != Role::Set {
        return None;
    }
    let set = set_nx(args)?;
    let rule = rules.iter().find(|rule| rule.matches_key(set.key))?;
    Some(Claim {
        rule: Arc::clone(rule),
        key: Bytes::copy_from_slice(set.key),
        token: Bytes::copy_from_slice(set.token),
        with_get: set.with_get,
    })
}

/// A lock attempt handed to the lock table by a session, which holds everything the client
/// sent after it until the answer comes (as `Reply::Fetched` with `ticket`).
pub struct LockAttempt {
    pub claim: Claim,
    pub db: u32,
    /// The client's `SET` as it sent it.
    pub request: Bytes,
    /// The session's pooled connection.
    pub conn: ConnHandle,
    pub reply_to: ReplySender,
    pub ticket: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::request::{Decoded, RequestDecoder};

    fn parse(command: &str) -> Option<(String, String, bool)> {
        let mut decoder = RequestDecoder::default();
        let input = format!("{command}\r\n");
        let Ok(Decoded::Request { rewritten, .. }) = decoder.decode(input.as_bytes()) else {
            panic!("{command} decodes");
        };
        let source = rewritten.expect("an inline command is re-encoded");
        let args = decoder.args(&source);
        set_nx(&args).map(|set| {
            (
                String::from_utf8_lossy(set.key).into_owned(),
                String::from_utf8_lossy(set.token).into_owned(),
                set.with_get,
            )
        })
    }

    #[test]
    fn recognises_lock_attempts_only() {
        let lock = Some(("lock:a".into(), "t1".into(), false));
        assert_eq!(parse("SET lock:a t1 NX PX 3000"), lock);
        assert_eq!(parse("set lock:a t1 px 3000 nx"), lock);
        assert_eq!(parse("SET lock:a t1 NX"), lock);
        assert_eq!(parse("SET lock:a t1 EX 5 NX KEEPTTL"), lock);
        assert_eq!(
            parse("SET lock:a t1 NX GET PX 10"),
            Some(("lock:a".into(), "t1".into(), true))
        );
        assert_eq!(parse("SET lock:a t1 PX 3000"), None);
        assert_eq!(parse("SET lock:a t1 NX XX"), None);
        assert_eq!(parse("SET lock:a t1 NX PX"), None);
        assert_eq!(parse("SET lock:a t1 NX BOGUS"), None);
        assert_eq!(parse("SET lock:a t1 NX PXAT 1700000000000"), None);
        assert_eq!(parse("SET lock:a"), None);
    }
}
