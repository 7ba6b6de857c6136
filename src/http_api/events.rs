//! Pub/sub over server-sent events: `GET` (or, as `@upstash/redis` sends it, `POST`)
//! `/subscribe/<channel>…` and `/psubscribe/<pattern>…`.
//!
//! The subscription runs in a session of the caller's own, as a RESP subscriber's does (deny
//! rules and metrics apply). Each frame the session sends becomes one event whose data is the
//! frame's elements joined by commas, as Upstash writes them: `subscribe,<channel>,<count>`,
//! `message,<channel>,<payload>`, `pmessage,<pattern>,<channel>,<payload>`. Payloads are text
//! (never base64). A comment line is sent when nothing else was for a while, so proxies keep
//! the stream open.
//!
//! When the client goes away, hyper drops the response body: the relay stops, which ends the
//! session, and Redis drops the subscription with its connection. A client that does not read
//! its events is disconnected once the session's output passes Redis's pub/sub limit.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame};
use serde_json::Value;
use tokio::sync::mpsc;

use super::exchange::Connection;
use super::json::{self, Encoding};

/// Events made but not yet taken by the HTTP connection.
const BUFFERED_EVENTS: usize = 64;

/// How long the stream may stay silent before a comment line is sent.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The body of an event stream: events as the relay makes them.
pub struct Events {
    receiver: mpsc::Receiver<Bytes>,
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver
            .poll_recv(cx)
            .map(|event| event.map(|event| Ok(Frame::data(event))))
    }
}

/// Streams what the session sends, starting with `first` (its first reply, already read),
/// until the client goes away or the session ends. Run as a task of its own.
pub fn stream(
    connection: Connection,
    first: &[u8],
) -> (Events, impl std::future::Future<Output = ()>) {
    let (sender, receiver) = mpsc::channel(BUFFERED_EVENTS);
    let first = event(first);
    (Events { receiver }, relay(connection, first, sender))
}

async fn relay(mut connection: Connection, first: Bytes, sender: mpsc::Sender<Bytes>) {
    if sender.send(first).await.is_err() {
        return;
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    loop {
        let event = tokio::select! {
            () = sender.closed() => return,
            _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
            frame = connection.replies.next() => match frame {
                Some(frame) => event(&frame),
                None => return,
            },
        };
        if sender.send(event).await.is_err() {
            return;
        }
        keepalive.reset();
    }
}

/// One frame from the session as an event: its elements joined by commas, each line of them a
/// `data:` line (a line break inside a payload would otherwise end the event).
fn event(frame: &[u8]) -> Bytes {
    let elements = json::elements(frame).unwrap_or_else(|| vec![frame]);
    let words: Vec<String> = elements
        .into_iter()
        .map(|element| match json::reply(element, Encoding::Plain) {
            Ok(Value::String(text)) | Err(text) => text,
            Ok(Value::Null) => String::new(),
            Ok(other) => other.to_string(),
        })
        .collect();
    let data = words.join(",");
    let mut out = BytesMut::with_capacity(data.len() + 16);
    for line in data.split(['\n', '\r']) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::event;

    #[test]
    fn frames_become_events_as_upstash_writes_them() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
                "data: subscribe,news,1\n\n",
            ),
            (
                b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$8\r\nhi, all!\r\n",
                "data: message,news,hi, all!\n\n",
            ),
            (
                b"*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\n{}\r\n",
                "data: pmessage,n*,news,{}\n\n",
            ),
            (
                b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$3\r\na\nb\r\n",
                "data: message,c,a\ndata: b\n\n",
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(String::from_utf8(event(frame).to_vec()).unwrap(), expected);
        }
    }
}
