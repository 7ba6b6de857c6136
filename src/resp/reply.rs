//! Encoding the replies keyward gives itself (local commands, errors, `KEYWARD …`).
//!
//! Replies are shaped for the session's protocol: a null or a map is written the RESP3 way
//! only to RESP3 clients, exactly as Redis would.

use bytes::{BufMut, Bytes, BytesMut};

use super::{put_header, Protocol};

/// Builds one reply (which may be an aggregate) into a buffer.
pub struct ReplyWriter {
    buf: BytesMut,
    protocol: Protocol,
}

impl ReplyWriter {
    pub fn new(protocol: Protocol) -> Self {
        ReplyWriter {
            buf: BytesMut::new(),
            protocol,
        }
    }

    pub fn simple(mut self, text: &str) -> Self {
        self.line(b'+', text.as_bytes());
        self
    }

    /// `message` starts with the error code, e.g. `ERR …` or `NOPROTO …`.
    pub fn error(mut self, message: &str) -> Self {
        self.line(b'-', sanitize_line(message).as_bytes());
        self
    }

    pub fn integer(mut self, value: i64) -> Self {
        put_header(&mut self.buf, b':', value);
        self
    }

    pub fn bulk(mut self, value: &[u8]) -> Self {
        put_header(&mut self.buf, b'$', value.len());
        self.buf.put_slice(value);
        self.buf.put_slice(b"\r\n");
        self
    }

    pub fn null(mut self) -> Self {
        match self.protocol {
            Protocol::Resp2 => self.buf.put_slice(b"$-1\r\n"),
            Protocol::Resp3 => self.buf.put_slice(b"_\r\n"),
        }
        self
    }

    pub fn array(mut self, len: usize) -> Self {
        put_header(&mut self.buf, b'*', len);
        self
    }

    /// A map of `len` pairs; RESP2 clients get the flat array Redis sends them.
    pub fn map(mut self, len: usize) -> Self {
        match self.protocol {
            Protocol::Resp2 => put_header(&mut self.buf, b'*', 2 * len),
            Protocol::Resp3 => put_header(&mut self.buf, b'%', len),
        }
        self
    }

    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }

    fn line(&mut self, kind: u8, body: &[u8]) {
        self.buf.put_u8(kind);
        self.buf.put_slice(body);
        self.buf.put_slice(b"\r\n");
    }
}

/// A standalone error reply, for the many places that answer with nothing else.
pub fn error(message: &str) -> Bytes {
    ReplyWriter::new(Protocol::Resp2).error(message).finish()
}

/// A standalone simple-string reply.
pub fn simple(text: &str) -> Bytes {
    ReplyWriter::new(Protocol::Resp2).simple(text).finish()
}

/// Error and status lines cannot carry CR or LF; Redis replaces them with spaces too.
fn sanitize_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\r', '\n']) {
        text.replace(['\r', '\n'], " ").into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_protocol() {
        let map = |protocol| {
            ReplyWriter::new(protocol)
                .map(1)
                .bulk(b"proto")
                .integer(2)
                .null()
                .finish()
        };
        assert_eq!(
            &map(Protocol::Resp2)[..],
            b"*2\r\n$5\r\nproto\r\n:2\r\n$-1\r\n"
        );
        assert_eq!(
            &map(Protocol::Resp3)[..],
            b"%1\r\n$5\r\nproto\r\n:2\r\n_\r\n"
        );
        assert_eq!(&error("ERR a\r\nb")[..], b"-ERR a  b\r\n");
    }
}
