//! Running a REST request's commands through a keyward session of their own, so that every
//! policy applies to them as to a RESP client's: deny rules, rate limits, lock queues, the
//! cache, hot keys and per-command metrics.
//!
//! The session runs on one end of a local socket pair, exactly as it runs on a client's TCP
//! connection; the request writes its commands to the other end as one pipeline and reads
//! one reply per command back. The session is authenticated to keyward (when `[listen]`
//! wants a password) and named after the token first, so rules that match client names
//! (`bucket = "client"`, deny rules' `clients`) see the token's name.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    context: &Arc<Context>,
    tasks: &TaskTracker,
    caller: &Caller<'_>,
    commands: &[Bytes],
) -> Vec<Bytes> {
    let (preamble, preamble_replies) = preamble(context, caller.name);
    let mut replies = match UnixStream::pair() {
        Ok((ours, theirs)) => {
            start_session(context, tasks, caller.peer, theirs);
            exchange(ours, &preamble, commands, preamble_replies + commands.len()).await
        }
        Err(error) => {
            tracing::warn!(%error, "cannot open a socket pair for a REST request");
            Vec::new()
        }
    };
    let owed = commands.len();
    let mut replies: Vec<Bytes> = replies
        .drain(preamble_replies.min(replies.len())..)
        .collect();
    replies.resize_with(owed, || {
        reply::error("ERR keyward: the session ended before this command's reply")
    });
    replies
}

/// The commands that make the session the token's: `AUTH` with keyward's own password when
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

fn start_session(context: &Arc<Context>, tasks: &TaskTracker, peer: SocketAddr, end: UnixStream) {
    let guard = ClientGuard::new(Arc::clone(context));
    let session = Session::new(Arc::clone(context), peer);
    // Nothing relays this socket (unlike a TLS bridge's), so nothing waits for the guard.
    let stream = Stream::Local {
        socket: end,
        _closed: CancellationToken::new().drop_guard(),
    };
    tasks.spawn(async move {
        let _guard = guard;
        session.run(stream).await;
    });
}

/// Writes every command and reads `expected` replies at the same time: a session that owes a
/// large output stops reading until some of it is read.
async fn exchange(
    socket: UnixStream,
    preamble: &Bytes,
    commands: &[Bytes],
    expected: usize,
) -> Vec<Bytes> {
    let (mut reader, mut writer) = socket.into_split();
    let write = async {
        for chunk in std::iter::once(preamble).chain(commands) {
            writer.write_all(chunk).await?;
        }
        Ok::<_, io::Error>(writer)
    };
    let (written, replies) = tokio::join!(write, read_replies(&mut reader, expected));
    // The write half is kept until every reply is read: dropping it would tell the session the
    // client left, and a client that leaves while blocked gets no reply.
    drop(written);
    replies
}

/// Reads up to `expected` complete replies; fewer if the session ends first.
async fn read_replies(reader: &mut tokio::net::unix::OwnedReadHalf, expected: usize) -> Vec<Bytes> {
    let mut buffer = BytesMut::new();
    let mut scanner = FrameScanner::default();
    let mut replies = Vec::with_capacity(expected);
    while replies.len() < expected {
        match scanner.scan(&buffer) {
            Ok(Some(len)) => {
                replies.push(buffer.split_to(len).freeze());
                continue;
            }
            Ok(None) => {}
            // keyward's own replies: never malformed, but a broken one ends the exchange.
            Err(_) => break,
        }
        if buffer.capacity() - buffer.len() < READ_CHUNK / 4 {
            buffer.reserve(READ_CHUNK);
        }
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    replies
}
