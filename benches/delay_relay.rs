//! A TCP relay that holds what passes through it for a set time, each direction on its own and
//! in order: Redis across a network for `load.py --remote`, on a machine whose kernel has no
//! `netem` to delay packets.
//!
//!     cargo bench --bench delay_relay -- --listen <port> --to <redis port> --rtt-us 2000
//!
//! Every chunk read from one side reaches the other half a round trip after it was read: one
//! thread per direction reads, another writes each chunk when it is due. Threads sleep with the
//! kernel's timer slack (about 50 µs), so a round trip through the relay takes `rtt` plus up
//! to a tenth of a millisecond; `load.py` reports what the direct clients measured through it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
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
        carry(client, server_side, one_way);
        carry(server, client_side, one_way);
    }
}

/// Carries what `from` sends to `to`, each chunk `delay` after it was read, until `from`
/// closes; then closes `to`'s sending side, once what was read has been written.
fn carry(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (chunks, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = from.read(&mut buffer) {
            if chunks
                .send((Instant::now() + delay, buffer[..read].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    thread::spawn(move || {
        for (at, chunk) in due {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
