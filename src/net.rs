//! The connections keyward reads and writes by readiness, and the socket reads shared by
//! client sessions and upstream connections.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::DropGuard;

/// A client's or Redis's connection: TCP itself, or the local end of a TLS bridge (see
/// [`crate::tls`]), which sessions and upstream connections drive the same way.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Local {
        socket: UnixStream,
        /// Tells the bridge when this end is dropped, so it lets go of the peer in bounded
        /// time even if the peer reads nothing.
        _closed: DropGuard,
    },
}

/// Runs the same expression on whichever socket a [`Stream`] holds.
macro_rules! on_socket {
    ($stream:expr, $socket:ident => $body:expr) => {
        match $stream {
            Stream::Tcp($socket) => $body,
            Stream::Local {
                socket: $socket, ..
            } => $body,
        }
    };
}

impl Stream {
    /// Waits until the socket may be read.
    ///
    /// Built on `poll_read_ready` rather than tokio's `readable()`: the latter joins and leaves
    /// a locked list of waiters each time it is made and dropped, which a session's `select!`
    /// does on every wake-up. Only the last task to poll is woken, and each socket has one
    /// task that waits on it (its session or its upstream connection).
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| on_socket!(self, socket => socket.poll_read_ready(cx))).await
    }

    /// Waits until the socket may be written (see [`Stream::readable`] for why it polls).
    pub async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| on_socket!(self, socket => socket.poll_write_ready(cx))).await
    }

    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        on_socket!(self, socket => socket.try_write(buf))
    }

    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        on_socket!(self, socket => socket.try_write_vectored(bufs))
    }

    /// Reads what the socket holds into the spare capacity of `buf`: `Ok(0)` at end of
    /// stream, `Err(WouldBlock)` when nothing is there.
    ///
    /// A read that does not fill the spare capacity drained the socket, so readiness is
    /// cleared right away. Otherwise tokio would report the socket ready once more, and the
    /// next read would only learn `WouldBlock` from the kernel: one wasted system call per
    /// wake-up, which is a large share of a proxied request. Data that arrives later raises a
    /// new readiness event, which a clear based on the older event does not hide.
    pub fn read_available(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let spare = buf.capacity() - buf.len();
        let mut read = 0;
        let result = on_socket!(self, socket => socket.try_io(Interest::READABLE, || {
            read = socket.try_read_buf(buf)?;
            if read > 0 && read < spare {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        }));
        match result {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock && read > 0 => Ok(read),
            Err(error) => Err(error),
            Ok(()) => Ok(read),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_socket!(self.get_mut(), socket => Pin::new(socket).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_socket!(self.get_mut(), socket => Pin::new(socket).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_socket!(self.get_mut(), socket => Pin::new(socket).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_socket!(self.get_mut(), socket => Pin::new(socket).poll_shutdown(cx))
    }
}
