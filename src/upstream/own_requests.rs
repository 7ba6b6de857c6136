//! Commands keyward sends on its own behalf (cache fills, lock tries, questions for global
//! rate limits) on a connection sessions share, with their replies coming back to keyward.

use bytes::{Bytes, BytesMut};

use super::connection::{Batch, Reply};
use super::handle::{ConnHandle, Room, SendError};
use crate::inbox;
use crate::resp::reply;

/// Replies to commands keyward sent on its own behalf (cache fills, lock tries), which come
/// back to it rather than to a session.
pub struct OwnReplies {
    replies: inbox::Receiver<Reply>,
    count: u32,
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
pub fn send_own_in(room: Room<'_>, bytes: Bytes, count: u32, tracked: bool) -> OwnReplies {
    let (reply_to, replies) = inbox::channel();
    room.send(Batch {
        bytes,
        count,
        reply_to,
        tracked,
        measured: None,
        hold: None,
        lane: None,
    });
    OwnReplies { replies, count }
}

impl OwnReplies {
    /// Every reply frame, in order; or the error reply owed when the connection failed first.
    pub async fn all(mut self) -> Result<Bytes, Bytes> {
        let mut frames = BytesMut::new();
        let mut received = 0;
        while received < self.count {
            match self.replies.recv().await {
                Some(Reply::Frames { bytes, count, .. }) => {
                    if received == 0 && count == self.count {
                        return Ok(bytes);
                    }
                    frames.extend_from_slice(&bytes);
                    received += count;
                }
                Some(Reply::Failed { error, .. } | Reply::Closed { error }) => return Err(error),
                _ => return Err(reply::error("ERR upstream connection closed")),
            }
        }
        Ok(frames.freeze())
    }
}
