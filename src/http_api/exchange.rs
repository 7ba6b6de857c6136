//! Running a REST request's commands through a keyward session of their own, so that every
//! policy applies to them as to a RESP client's: deny rules, rate limits, lock queues, the
//! cache, hot keys and per-command metrics.
//!
//! The session runs on one end of a local socket pair, exactly as it runs on a client's TCP
//! connection; the request writes its commands to the other end as one pipeline and reads
//! one reply per command back (or, for a subscriber, the messages as they come). The session is authenticated to keyward (when `[listen]`
//! wants a password) and named after the token first, so rules that match client names
//! (`bucket = "client"`, deny rules' `clients`) see the token's name.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::{Endpoint, Failure};
use crate::context::Context;
use crate::net::Stream;
use crate::resp::frame::FrameScanner;
use crate::resp::reply;
use crate::resp::request::encode_command;
use crate::session::{ClientGuard, Session};

/// Read replies in steps of at least this size.
const READ_CHUNK: usize = 16 * 1024;

/// Who the session is for.
pub struct Caller<'a> {
    /// The token's name: the session's client name.
    pub name: &'a str,
    /// The HTTP client's address, as the session's peer.
    pub peer: SocketAddr,
}

/// Runs `commands` (each a RESP multibulk) in a new session, sent as one pipeline, and
/// returns one reply per command, in order. A command left without a reply (the session
/// ended first: keyward shutting down, Redis gone) gets an error, so every command is
/// answered.
pub async fn run(
    endpoint: &Endpoint,
    caller: &Caller<'_>,
    commands: &[Bytes],
) -> Result<Vec<Bytes>, Failure> {
    if commands.is_empty() {
        return Ok(Vec::new());
    }
    let mut replies = open(endpoint, caller).await?.exchange(commands).await;
    replies.resize_with(commands.len(), unanswered);
    Ok(replies)
}

/// The reply of a command the session ended without answering.
pub fn unanswered() -> Bytes {
    reply::error("ERR keyward: the session ended before this command's reply")
}

/// A session of the caller's own: what is written to it, and its replies.
pub struct Connection {
    writer: OwnedWriteHalf,
    pub replies: Replies,
}

/// Starts a session for `caller`, made the caller's by the preamble (see [`preamble`]). A
/// REST session is a client as a RESP connection is: past `max_clients` there is none.
pub async fn open(endpoint: &Endpoint, caller: &Caller<'_>) -> Result<Connection, Failure> {
    let Some(guard) = ClientGuard::admit(&endpoint.context, endpoint.max_clients) else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "ERR max number of clients reached".into(),
        ));
    };
    let no_session = |error: io::Error| {
        tracing::warn!(%error, "cannot start a session for a REST request");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ERR keyward: no session: {error}"),
        )
    };
    let (ours, theirs) = UnixStream::pair().map_err(no_session)?;
    start_session(endpoint, guard, caller.peer, theirs);
    let (reader, mut writer) = ours.into_split();
    let (preamble, preamble_owed) = preamble(&endpoint.context, caller.name);
    // A few bytes, which the new session reads at once.
    writer.write_all(&preamble).await.map_err(no_session)?;
    Ok(Connection {
        writer,
        replies: Replies {
            reader,
            buffer: BytesMut::new(),
            scanner: FrameScanner::default(),
            preamble_owed,
        },
    })
}

impl Connection {
    /// Writes every command while reading their replies: a session that owes a large output
    /// stops reading until some of it is read. Fewer replies if the session ended first.
    pub async fn exchange(&mut self, commands: &[Bytes]) -> Vec<Bytes> {
        let writer = &mut self.writer;
        let write = async {
            for command in commands {
                writer.write_all(command).await?;
            }
            Ok::<_, io::Error>(())
        };
        let replies = &mut self.replies;
        let read = async {
            let mut read = Vec::with_capacity(commands.len());
            while read.len() < commands.len() {
                let Some(reply) = replies.next().await else {
                    break;
                };
                read.push(reply);
            }
            read
        };
        // A failed write means the session ended: the replies read say how far it got.
        let (_, replies) = tokio::join!(write, read);
        replies
    }
}

/// What the session sends back: replies, and the messages of a subscriber.
pub struct Replies {
    reader: OwnedReadHalf,
    buffer: BytesMut,
    scanner: FrameScanner,
    /// Replies to the preamble not read yet: skipped, as the caller did not send it.
    preamble_owed: usize,
}

impl Replies {
    /// The next reply or message; `None` once the session ended.
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            let frame = self.next_frame().await?;
            if self.preamble_owed == 0 {
                return Some(frame);
            }
            self.preamble_owed -= 1;
        }
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            // keyward's own output: never malformed, but a broken one ends the exchange.
            if let Some(len) = self.scanner.scan(&self.buffer).ok()? {
                return Some(self.buffer.split_to(len).freeze());
            }
            if self.buffer.capacity() - self.buffer.len() < READ_CHUNK / 4 {
                self.buffer.reserve(READ_CHUNK);
            }
            match self.reader.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// The commands that make the session the caller's: `AUTH` with keyward's own password when
/// clients need one (the token already proved who is calling), then `CLIENT SETNAME`. Returns
/// them as RESP, and how many replies they get.
fn preamble(context: &Context, name: &str) -> (Bytes, usize) {
    let mut out = BytesMut::new();
    let mut count = 0;
    if let Some(password) = &context.listen_password {
        encode_command(&["AUTH", password.as_str()], &mut out);
        count += 1;
    }
    encode_command(&["CLIENT", "SETNAME", name], &mut out);
    (out.freeze(), count + 1)
}

/// Runs a session on `end`, as the RESP server runs one on a client's connection. It ends
/// when the other end is dropped (the request is answered, or its client went away).
fn start_session(endpoint: &Endpoint, guard: ClientGuard, peer: SocketAddr, end: UnixStream) {
    let session = Session::new(Arc::clone(&endpoint.context), peer);
    // Nothing relays this socket (unlike a TLS bridge's), so nothing waits for the guard.
    let stream = Stream::Local {
        socket: end,
        _closed: CancellationToken::new().drop_guard(),
    };
    endpoint.tasks.spawn(async move {
        let _guard = guard;
        session.run(stream).await;
    });
}
