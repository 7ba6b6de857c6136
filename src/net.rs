//! Socket reads shared by client sessions and upstream connections.

use std::io;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads what the socket holds into the spare capacity of `buf`: `Ok(0)` at end of stream,
/// `Err(WouldBlock)` when nothing is there.
///
/// A read that does not fill the spare capacity drained the socket, so readiness is cleared
/// right away. Otherwise tokio would report the socket ready once more, and the next read
/// would only learn `WouldBlock` from the kernel: one wasted system call per wake-up, which
/// is a large share of a proxied request. Data that arrives later raises a new readiness
/// event, which a clear based on the older event does not hide.
pub fn read_available(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    let mut read = 0;
    let result = stream.try_io(Interest::READABLE, || {
        read = stream.try_read_buf(buf)?;
        if read > 0 && read < spare {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match result {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock && read > 0 => Ok(read),
        Err(error) => Err(error),
        Ok(()) => Ok(read),
    }
}
