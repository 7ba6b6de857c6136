//! Commands that name another client by its id: `CLIENT KILL … ID`, `CLIENT UNBLOCK` and
//! `CLIENT TRACKING … REDIRECT`.
//!
//! Clients learn keyward's ids (`CLIENT ID`, `HELLO`), which Redis does not know. A session
//! with a connection of its own is named to Redis by that connection's id. A session on shared
//! connections has nothing in Redis to name: keyward kills it itself, knows it is not blocked
//! in Redis, and refuses to redirect invalidations to it with a clear error. An id of a session
//! gone is answered as Redis answers an id of no client; ids keyward did not give out (see
//! [`crate::directory`]) go to Redis as they are. Replies that name the client a session's
//! invalidations go to (`CLIENT GETREDIR`, `CLIENT TRACKINGINFO`) name it by keyward's id again.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use std::sync::Arc;

use crate::directory::{Directory, Listing, Named};
use crate::resp::reply;
use crate::resp::request::encode_command;
use crate::resp::request::Args;
use crate::upstream::{send_own, ConnHandle, Reply, ReplySender};

/// What becomes of a request that names a client.
pub enum Translation {
    /// Redis gets this request in its place.
    Rewritten(Bytes),
    /// keyward answers it with this.
    Answered(Bytes),
    /// keyward closes this session, as `CLIENT KILL` closes a Redis client, once the policies
    /// let the command through, and answers `:1`.
    Kill(Arc<Listing>),
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

/// The session asking, as far as translation cares.
pub struct Asker<'a> {
    pub id: u64,
    /// Inside `MULTI`: Redis must queue the command, so nothing is answered at once except a
    /// refusal that aborts the transaction.
    pub in_transaction: bool,
    /// Authenticated as a user of its own, whose ACL only Redis applies: nothing is acted on
    /// by keyward itself, and Redis judges a rewritten command (a client on shared
    /// connections is then named by an id of no client).
    pub as_own_user: bool,
    /// Kept up to date here.
    pub redirect: &'a mut Option<Redirect>,
}

/// `None`: the request goes to Redis unchanged.
pub fn translate(
    name: &str,
    args: &Args<'_>,
    sessions: &Directory,
    asker: Asker<'_>,
) -> Option<Translation> {
    match name {
        "client|getredir" | "client|trackinginfo" => asker.redirect.map(Translation::Relabelled),
        "client|unblock" => {
            // A client without a connection of its own is not blocked in Redis, nor is one
            // gone: Redis says 0 for an id of no client.
            let redis_id = match find(args, 2, sessions)? {
                (_, Named::Redis) => return None,
                (_, Named::Session(listing)) => listing.redis_id().unwrap_or(NO_CLIENT),
                (_, Named::Gone) => NO_CLIENT,
            };
            Some(rewrite(args, 2, redis_id))
        }
        "client|tracking" => {
            let position = redirect_position(args)?;
            Some(match find(args, position, sessions)? {
                (id, Named::Session(listing)) => match listing.redis_id() {
                    Some(redis_id) => {
                        *asker.redirect = Some(Redirect {
                            redis: redis_id,
                            keyward: id,
                        });
                        rewrite(args, position, redis_id)
                    }
                    None => Translation::Answered(reply::error(&format!(
                        "ERR client {id} has no connection of its own in Redis for \
                         invalidations to be redirected to (through keyward, a client gets one \
                         when it subscribes to __redis__:invalidate)"
                    ))),
                },
                (_, Named::Redis) => return None,
                (_, Named::Gone) => Translation::Answered(reply::error(
                    "ERR The client ID you want redirect to does not exist",
                )),
            })
        }
        "client|kill" => kill(args, sessions, asker),
        _ => None,
    }
}

/// `CLIENT KILL` with filters (`ID id`, `SKIPME yes|no`, …); the older `CLIENT KILL addr:port`
/// goes to Redis as it is.
fn kill(args: &Args<'_>, sessions: &Directory, asker: Asker<'_>) -> Option<Translation> {
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
    let (id, named) = find(args, position, sessions)?;
    let redis_judges = asker.in_transaction || asker.as_own_user;
    let listing = match named {
        Named::Redis => return None,
        Named::Gone if redis_judges || other_filters => {
            return Some(rewrite(args, position, NO_CLIENT))
        }
        Named::Gone => return Some(Translation::Answered(Bytes::from_static(b":0\r\n"))),
        Named::Session(listing) => listing,
    };
    if redis_judges || other_filters {
        // Redis applies the filters (and the asker's ACL) to the session's own connection.
        return Some(match listing.redis_id() {
            Some(redis_id) => rewrite(args, position, redis_id),
            None if redis_judges => rewrite(args, position, NO_CLIENT),
            None => Translation::Answered(reply::error(&format!(
                "ERR client {id} uses keyward's shared connections: CLIENT KILL ID {id} takes \
                 no filter but SKIPME through keyward"
            ))),
        });
    }
    if id == asker.id && skip_me {
        return Some(Translation::Answered(Bytes::from_static(b":0\r\n")));
    }
    Some(Translation::Kill(listing))
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

/// The id at `position` and whom it names; `None` if it is not a number (Redis says so).
fn find(args: &Args<'_>, position: usize, sessions: &Directory) -> Option<(u64, Named)> {
    let id = std::str::from_utf8(args.get(position)?)
        .ok()?
        .parse()
        .ok()?;
    Some((id, sessions.find(id)))
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
    /// order, and answers the session's request `ticket` with the reply relabelled. `Err` gives
    /// the request back when the connection has no room for it now: it is then forwarded as
    /// it is, behind whatever waits for room.
    pub fn fetch_relabelled(
        self,
        conn: &ConnHandle,
        request: Bytes,
        ticket: u64,
        reply_to: ReplySender,
    ) -> Result<(), Bytes> {
        let replies = send_own(conn, request.clone(), 1, false).map_err(|_| request)?;
        tokio::spawn(async move {
            let reply = replies.all().await.unwrap_or_else(|error| error);
            let _ = reply_to.send(Reply::Fetched {
                ticket,
                bytes: self.relabel(reply),
            });
        });
        Ok(())
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
