//! Commands keyward sends on its own behalf (cache fills, lock tries, reads sent to replicas)
//! on a connection sessions share, with their replies coming back to keyward.

use bytes::Bytes;

use tokio::sync::oneshot;

use super::connection::Batch;
use super::handle::{ConnHandle, Room, SendError};
use super::reply_to::{connection_closed, Gathered, ReplyTo};

/// Replies to commands keyward sent on its own behalf (lock tries, reads sent to replicas),
/// awaited by the task that sent them.
pub struct OwnReplies {
    replies: oneshot::Receiver<Gathered>,
}

/// Sends `count` commands on `conn` for keyward itself. The send happens now, so the commands
/// take their place in the connection's order; their replies are awaited with
/// [`OwnReplies::all`].
pub fn send_own(
    conn: &ConnHandle,
    bytes: Bytes,
    count: u32,
    tracked: bool,
) -> Result<OwnReplies, SendError> {
    let room = conn.reserve()?;
    Ok(send_own_in(room, bytes, count, tracked))
}

/// [`send_own`] once the connection's queue has room: keyward's own commands wait for room
/// as a client's requests do, rather than fail while Redis is slow. Only a connection that is
/// gone refuses them.
pub async fn send_own_when_room(
    conn: &ConnHandle,
    bytes: Bytes,
    count: u32,
    tracked: bool,
) -> Result<OwnReplies, SendError> {
    Ok(send_own_in(conn.room().await?, bytes, count, tracked))
}

/// [`send_own`] in room reserved beforehand, which cannot be refused.
fn send_own_in(room: Room<'_>, bytes: Bytes, count: u32, tracked: bool) -> OwnReplies {
    let (gathered, replies) = oneshot::channel();
    send_own_then(room, bytes, count, tracked, move |all| {
        let _ = gathered.send(all);
    });
    OwnReplies { replies }
}

/// Sends `count` commands in `room` for keyward itself, and hands their replies to `then`
/// where they are read once all have come (see [`ReplyTo::gather`]): for a caller that
/// would otherwise run a task only to wait for them (a cache fill).
pub fn send_own_then(
    room: Room<'_>,
    bytes: Bytes,
    count: u32,
    tracked: bool,
    then: impl FnOnce(Gathered) + Send + 'static,
) {
    room.send(Batch {
        bytes,
        count,
        reply_to: ReplyTo::gather(count, then),
        tracked,
        measured: None,
        hold: None,
        lane: None,
    });
}

impl OwnReplies {
    /// Every reply frame, in order; or the error reply owed when the connection failed first.
    pub async fn all(self) -> Gathered {
        self.replies
            .await
            .unwrap_or_else(|_| Err(connection_closed()))
    }
}
