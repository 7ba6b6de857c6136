//! Whether Redis holds a shared connection's request on purpose: a script past Redis's busy
//! threshold (Redis answers everyone else `-BUSY`), or a command Redis postponed (a write
//! during `CLIENT PAUSE … WRITE`, which `CLIENT LIST` flags `b`). Such a request may wait as
//! long as Redis decides; a connection that stopped answering must not.

use bytes::BytesMut;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;

use super::handshake::{connect, read_frame};
use super::{UpstreamError, UpstreamSettings};
use crate::resp::request::encode_command;
use crate::resp::Protocol;

/// Asks Redis, on a connection of its own, about the connection with client id `redis_id`. No
/// answer within `request_timeout` (or `connect_timeout`, if shorter) counts as no: Redis
/// itself has stopped answering.
pub async fn on_purpose(settings: UpstreamSettings, redis_id: Option<u64>) -> bool {
    let Some(redis_id) = redis_id else {
        return false;
    };
    let limit = settings.request_timeout.min(settings.connect_timeout);
    tokio::time::timeout(limit, ask(&settings, redis_id))
        .await
        .unwrap_or(false)
}

async fn ask(settings: &UpstreamSettings, redis_id: u64) -> bool {
    let mut stream = match connect(settings, Protocol::Resp2, 0, &[], false).await {
        Ok(connected) => connected.stream,
        Err(UpstreamError::Busy(_)) => return true,
        Err(_) => return false,
    };
    let mut out = BytesMut::new();
    encode_command(
        &[
            &b"CLIENT"[..],
            b"LIST",
            b"ID",
            redis_id.to_string().as_bytes(),
        ],
        &mut out,
    );
    if stream.write_all(&out).await.is_err() {
        return false;
    }
    match read_frame(&mut stream, &mut BytesMut::new(), decode).await {
        Ok(OwnedFrame::Error(message)) => message.starts_with("BUSY"),
        Ok(OwnedFrame::BulkString(line)) => postponed(&line),
        _ => false,
    }
}

/// Whether a `CLIENT LIST` line shows a client Redis blocked (`flags=…b…`).
fn postponed(line: &[u8]) -> bool {
    String::from_utf8_lossy(line)
        .split_ascii_whitespace()
        .find_map(|field| field.strip_prefix("flags="))
        .is_some_and(|flags| flags.contains('b'))
}

#[cfg(test)]
mod tests {
    use super::postponed;

    #[test]
    fn a_blocked_client_is_told_by_its_flags() {
        assert!(postponed(
            b"id=12 addr=127.0.0.1:47528 fd=8 name= age=0 idle=0 flags=b db=0 cmd=set\n"
        ));
        assert!(!postponed(
            b"id=4 addr=127.0.0.1:33502 fd=9 name=b age=396 flags=N db=0 cmd=set\n"
        ));
        assert!(!postponed(b""));
    }
}
