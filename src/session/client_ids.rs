//! Commands that name another client by its id: `CLIENT KILL … ID`, `CLIENT UNBLOCK` and
//! `CLIENT TRACKING … REDIRECT`.
//!
//! Clients learn keyward's ids (`CLIENT ID`, `HELLO`), which Redis does not know. A session
//! with a connection of its own is named to Redis by that connection's id. A session on shared
//! connections has nothing in Redis to name: keyward kills it itself, knows it is not blocked
//! in Redis, and refuses to redirect invalidations to it with a clear error. Ids keyward did
//! not give out go to Redis as they are. Replies that name the client a session's
//! invalidations go to (`CLIENT GETREDIR`, `CLIENT TRACKINGINFO`) name it by keyward's id again.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use std::sync::Arc;

use crate::directory::{Directory, Listing};
use crate::resp::reply;
use crate::resp::request::Args;
use crate::upstream::{encode_command, send_own, ConnHandle, Reply, ReplySender};

/// What becomes of a request that names a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Translation {
    /// Redis gets this request in its place.
    Rewritten(Bytes),
    /// keyward answers it with this.
    Answered(Bytes),
    /// Redis's reply names the client by Redis's id: see [`Redirect::relabel`].
    Relabelled(Redirect),
}

/// Where a session's invalidations go since its last `CLIENT TRACKING … REDIRECT`: the client's
/// id in Redis and in keyward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    redis: u64,
    keyward: u64,
}

/// Redis numbers its clients from 1: this id names none of them.
const NO_CLIENT: u64 = 0;

/// `None`: the request goes to Redis unchanged. Inside a transaction nothing is answered at
/// once (Redis must queue the command), except a refusal that aborts the transaction.
/// `redirect` is the session's, kept up to date here.
pub fn translate(
    name: &str,
    args: &Args<'_>,
    own_id: u64,
    sessions: &Directory,
    in_transaction: bool,
    redirect: &mut Option<Redirect>,
) -> Option<Translation> {
    match name {
        "client|getredir" | "client|trackinginfo" => redirect.map(Translation::Relabelled),
        "client|unblock" => {
            let (_, listing) = find(args, 2, sessions)?;
            // Not blocked in Redis without a connection of its own: Redis says 0 for that.
            let redis_id = listing.redis_id().unwrap_or(NO_CLIENT);
            Some(rewrite(args, 2, redis_id))
        }
        "client|tracking" => {
            let position = redirect_position(args)?;
            let (id, listing) = find(args, position, sessions)?;
            Some(match listing.redis_id() {
                Some(redis_id) => {
                    *redirect = Some(Redirect {
                        redis: redis_id,
                        keyward: id,
                    });
                    rewrite(args, position, redis_id)
                }
                None => Translation::Answered(reply::error(&format!(
                    "ERR client {id} has no connection of its own in Redis for invalidations to \
                     be redirected to (through keyward, a client gets one when it subscribes to \
                     __redis__:invalidate)"
                ))),
            })
        }
        "client|kill" => kill(args, own_id, sessions, in_transaction),
        _ => None,
    }
}

/// `CLIENT KILL` with filters (`ID id`, `SKIPME yes|no`, …); the older `CLIENT KILL addr:port`
/// goes to Redis as it is.
fn kill(
    args: &Args<'_>,
    own_id: u64,
    sessions: &Directory,
    in_transaction: bool,
) -> Option<Translation> {
    if args.len() < 4 || args.len() % 2 != 0 {
        return None;
    }
    let mut position = None;
    let mut skip_me = true;
    let mut other_filters = false;
    for pair in (2..args.len()).step_by(2) {
        let filter = args.get(pair).unwrap_or_default();
        if filter.eq_ignore_ascii_case(b"id") {
            position = Some(pair + 1);
        } else if filter.eq_ignore_ascii_case(b"skipme") {
            skip_me = !args
                .get(pair + 1)
                .unwrap_or_default()
                .eq_ignore_ascii_case(b"no");
        } else {
            other_filters = true;
        }
    }
    let position = position?;
    let (id, listing) = find(args, position, sessions)?;
    if in_transaction || other_filters {
        // Redis applies the filters, to the session's own connection if it has one.
        return Some(match listing.redis_id() {
            Some(redis_id) => rewrite(args, position, redis_id),
            None if in_transaction => rewrite(args, position, NO_CLIENT),
            None => Translation::Answered(reply::error(&format!(
                "ERR client {id} uses keyward's shared connections: CLIENT KILL ID {id} takes \
                 no filter but SKIPME through keyward"
            ))),
        });
    }
    if id == own_id && skip_me {
        return Some(Translation::Answered(Bytes::from_static(b":0\r\n")));
    }
    // Closing the session also closes its own connection in Redis, if it has one.
    listing.kill();
    Some(Translation::Answered(Bytes::from_static(b":1\r\n")))
}

/// The position of the client id in `CLIENT TRACKING on|off [REDIRECT id] [PREFIX p]… […]`.
fn redirect_position(args: &Args<'_>) -> Option<usize> {
    let mut index = 3;
    while let Some(option) = args.get(index) {
        if option.eq_ignore_ascii_case(b"redirect") {
            return Some(index + 1);
        }
        // A prefix is a value, whatever it spells.
        index += if option.eq_ignore_ascii_case(b"prefix") {
            2
        } else {
            1
        };
    }
    None
}

/// The session whose keyward id is the argument at `position`, if it is one.
fn find(args: &Args<'_>, position: usize, sessions: &Directory) -> Option<(u64, Arc<Listing>)> {
    let id = std::str::from_utf8(args.get(position)?)
        .ok()?
        .parse()
        .ok()?;
    Some((id, sessions.find(id)?))
}

/// The request again, with the argument at `position` replaced by `id`.
fn rewrite(args: &Args<'_>, position: usize, id: u64) -> Translation {
    let id = id.to_string();
    let replaced: Vec<&[u8]> = args
        .iter()
        .enumerate()
        .map(|(index, arg)| {
            if index == position {
                id.as_bytes()
            } else {
                arg
            }
        })
        .collect();
    let mut out = BytesMut::new();
    encode_command(&replaced, &mut out);
    Translation::Rewritten(out.freeze())
}

impl Redirect {
    /// A reply to `CLIENT GETREDIR` (`:id`) or `CLIENT TRACKINGINFO` (`redirect` → id) with the
    /// redirect's Redis id replaced by keyward's; any other reply as it is.
    pub fn relabel(self, reply: Bytes) -> Bytes {
        let redis = format!(":{}\r\n", self.redis);
        let keyward = format!(":{}\r\n", self.keyward);
        if reply == redis.as_bytes() {
            return Bytes::from(keyward);
        }
        let field = format!("$8\r\nredirect\r\n{redis}");
        match memmem::find(&reply, field.as_bytes()) {
            Some(at) => {
                let value = at + field.len() - redis.len();
                let mut relabelled = BytesMut::with_capacity(reply.len() + keyward.len());
                relabelled.extend_from_slice(&reply[..value]);
                relabelled.extend_from_slice(keyward.as_bytes());
                relabelled.extend_from_slice(&reply[value + redis.len()..]);
                relabelled.freeze()
            }
            None => reply,
        }
    }

    /// Sends `request` on the session's connection `conn`, in its place in the connection's
    /// order, and answers the session's request `ticket` with the reply relabelled.
    pub fn fetch_relabelled(
        self,
        conn: &ConnHandle,
        request: Bytes,
        ticket: u64,
        reply_to: ReplySender,
    ) {
        let sent = send_own(conn, request, 1, false);
        tokio::spawn(async move {
            let reply = match sent {
                Ok(replies) => replies.all().await.unwrap_or_else(|error| error),
                Err(_) => reply::error("ERR upstream busy or unavailable"),
            };
            let _ = reply_to.send(Reply::Fetched {
                ticket,
                bytes: self.relabel(reply),
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIRECT: Redirect = Redirect {
        redis: 12,
        keyward: 3,
    };

    #[test]
    fn replies_name_the_redirect_by_keyward_id() {
        let relabel = |reply: &'static [u8]| REDIRECT.relabel(Bytes::from_static(reply));
        assert_eq!(relabel(b":12\r\n"), &b":3\r\n"[..]);
        assert_eq!(relabel(b":-1\r\n"), &b":-1\r\n"[..]);
        assert_eq!(relabel(b":120\r\n"), &b":120\r\n"[..]);
        assert_eq!(
            relabel(b"*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:12\r\n$8\r\nprefixes\r\n*0\r\n"),
            &b"*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:3\r\n$8\r\nprefixes\r\n*0\r\n"[..]
        );
    }
}
