//! A plain RESP connection for the load generators in `benches/`, built on keyward's own
//! command encoder and reply delimiter. Each generator uses part of it.

use std::future::Future;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use keyward::resp::frame::frame_len;
use keyward::resp::request::encode_command;

pub struct Connection {
    stream: TcpStream,
    input: BytesMut,
}

impl Connection {
    pub async fn open(port: u16) -> Connection {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("a connection");
        stream.set_nodelay(true).expect("nodelay");
        Connection {
            stream,
            input: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Sends commands already encoded.
    pub async fn send(&mut self, commands: &[u8]) {
        self.stream.write_all(commands).await.expect("a write");
    }

    /// Waits for `count` complete replies and returns them, as Redis sent them.
    pub async fn replies(&mut self, count: usize) -> BytesMut {
        let mut len = 0;
        let mut complete = 0;
        while complete < count {
            match frame_len(&self.input[len..]).expect("a well-formed reply") {
                Some(frame) => {
                    len += frame;
                    complete += 1;
                }
                None => {
                    let read = self
                        .stream
                        .read_buf(&mut self.input)
                        .await
                        .expect("a reply");
                    assert!(read > 0, "the server closed the connection");
                }
            }
        }
        self.input.split_to(len)
    }

    /// Sends one command and returns its reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> BytesMut {
        self.send(&encoded(args)).await;
        self.replies(1).await
    }
}

/// Encodes one command, for sending later (possibly many at once).
pub fn encoded(args: &[&[u8]]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_command(args, &mut out);
    out.to_vec()
}

/// Parses a generator's options and runs `body` on a single-threaded runtime. The options
/// live as long as the process, so that client tasks can borrow them.
pub fn run<O, F>(body: impl FnOnce(&'static O) -> F)
where
    O: clap::Parser + 'static,
    F: Future<Output = ()>,
{
    let options: &'static O = Box::leak(Box::new(O::parse()));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(body(options));
}
