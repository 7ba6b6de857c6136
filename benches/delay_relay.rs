//! A TCP relay that holds what passes through it for a set time, each direction on its own and
//! in order: Redis across a network for `load.py --remote`, on a machine whose kernel has no
//! `netem` to delay packets.
//!
//!     cargo bench --bench delay_relay -- --listen <port> --to <redis port> --rtt-us 2000
//!
//! Every chunk read from one side reaches the other half a round trip after it was read. One
//! thread per connection and direction reads; one thread writes every chunk of every
//! connection when it is due. The delay is the same for all, so chunks fall due in the order
//! they were read, and one queue in that order serves them all: the writer sleeps only until
//! the oldest chunk is due, and writes a burst of due chunks without sleeping in between.
//! Sleeps have the kernel's timer slack (about 50 µs), so a round trip through the relay takes
//! `rtt` plus up to a tenth of a millisecond; `load.py` reports what the direct clients
//! measured through it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Options {
    /// Where clients connect.
    #[arg(long)]
    listen: u16,
    /// The server the relay forwards to, on 127.0.0.1.
    #[arg(long)]
    to: u16,
    /// The round trip the relay adds, in microseconds: half of it each way.
    #[arg(long)]
    rtt_us: u64,
    /// `cargo bench` passes it to every bench.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let options = Options::parse();
    let one_way = Duration::from_micros(options.rtt_us / 2);
    let listener = TcpListener::bind(("127.0.0.1", options.listen)).expect("the listening port");
    let (chunks, due) = mpsc::channel::<Chunk>();
    thread::spawn(move || write_when_due(due));
    for client in listener.incoming() {
        let Ok(client) = client else {
            continue;
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", options.to)) else {
            continue;
        };
        let (Ok(client_side), Ok(server_side)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        for stream in [&client, &server] {
            let _ = stream.set_nodelay(true);
        }
        carry(client, Arc::new(server_side), one_way, chunks.clone());
        carry(server, Arc::new(client_side), one_way, chunks.clone());
    }
}

/// Bytes on their way to `to`, due at `at`; no bytes: `from` closed, and `to`'s sending side
/// closes once what came before is written.
struct Chunk {
    at: Instant,
    bytes: Vec<u8>,
    to: Arc<TcpStream>,
}

/// Reads what `from` sends, for the writer to pass to `to` `delay` later, until `from` closes.
fn carry(mut from: TcpStream, to: Arc<TcpStream>, delay: Duration, chunks: mpsc::Sender<Chunk>) {
    thread::spawn(move || {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            // An error ends the direction as a close does.
            let read = from.read(&mut buffer).unwrap_or_default();
            let chunk = Chunk {
                at: Instant::now() + delay,
                bytes: buffer[..read].to_vec(),
                to: Arc::clone(&to),
            };
            if chunks.send(chunk).is_err() || read == 0 {
                return;
            }
        }
    });
}

/// Writes every chunk when it is due, in the order read.
fn write_when_due(due: mpsc::Receiver<Chunk>) {
    for chunk in due {
        if let Some(wait) = chunk.at.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let written = if chunk.bytes.is_empty() {
            chunk.to.shutdown(Shutdown::Write)
        } else {
            (&*chunk.to).write_all(&chunk.bytes)
        };
        if written.is_err() {
            // The other side is gone; its reader ends the connection's other direction.
            let _ = chunk.to.shutdown(Shutdown::Both);
        }
    }
}
