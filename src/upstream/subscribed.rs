//! A connection subscribed to a channel (keyward's invalidation connections, its listeners on
//! sentinels), kept honest: a connection that silently died (a dropped NAT entry, a crashed
//! host) would otherwise look alive forever while the news it should bring go nowhere. It
//! sends `PING` every [`PING_EVERY`], and is over when one goes unanswered until the next.

use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Interval;

use super::handshake::read_frame;
use crate::net::Stream;
use crate::resp::request::encode_command;

/// How often a subscribed connection proves it is alive.
const PING_EVERY: Duration = Duration::from_secs(5);

pub(super) struct Subscribed {
    reader: ReadHalf<Stream>,
    writer: WriteHalf<Stream>,
    /// What was read and not yet decoded.
    input: BytesMut,
    ping: Interval,
    unanswered: bool,
}

impl Subscribed {
    /// Follows `stream`, subscribed already; `input` holds what was read past the
    /// subscription's confirmation.
    pub(super) fn new(stream: Stream, input: BytesMut) -> Subscribed {
        let (reader, writer) = tokio::io::split(stream);
        Subscribed {
            reader,
            writer,
            input,
            ping: tokio::time::interval(PING_EVERY),
            unanswered: false,
        }
    }

    /// The next frame other than a `PING`'s answer; `Err`: why the connection is over.
    pub(super) async fn next(&mut self) -> Result<OwnedFrame, String> {
        loop {
            tokio::select! {
                frame = read_frame(&mut self.reader, &mut self.input, decode) => {
                    let frame = frame?;
                    self.unanswered = false;
                    if !is_pong(&frame) {
                        return Ok(frame);
                    }
                }
                _ = self.ping.tick() => {
                    if self.unanswered {
                        return Err(format!("no answer to PING within {PING_EVERY:?}"));
                    }
                    let mut out = BytesMut::new();
                    encode_command(&[&b"PING"[..]], &mut out);
                    self.writer.write_all(&out).await.map_err(|error| error.to_string())?;
                    self.unanswered = true;
                }
            }
        }
    }
}

/// A subscribed connection answers `PING` with `["pong", ""]`.
fn is_pong(frame: &OwnedFrame) -> bool {
    matches!(frame, OwnedFrame::Array(parts)
        if matches!(parts.first(), Some(OwnedFrame::BulkString(kind)) if kind.eq_ignore_ascii_case(b"pong")))
}
