//! A skewed read load that `redis-benchmark` cannot make: `GET`s whose keys follow a Zipf
//! distribution, as real read traffic does (a few hot profiles, a long tail). `load.py --cache`
//! runs it against Redis directly and keyward with and without a cache rule.
//!
//!     cargo bench --bench zipf_get -- --port 6380 --keys 100000 --seconds 10
//!     cargo bench --bench zipf_get -- --port 6379 --keys 100000 --populate
//!
//! Prints one line: `requests=<n> seconds=<s> rps=<n>`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Options {
    port: u16,
    keys: usize,
    exponent: f64,
    clients: usize,
    pipeline: usize,
    seconds: f64,
    value_bytes: usize,
    populate: bool,
}

fn options() -> Options {
    let mut options = Options {
        port: 6379,
        keys: 100_000,
        exponent: 1.0,
        clients: 50,
        pipeline: 1,
        seconds: 10.0,
        value_bytes: 64,
        populate: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match flag.as_str() {
            "--port" => options.port = value().parse().expect("a port"),
            "--keys" => options.keys = value().parse().expect("a key count"),
            "--exponent" => options.exponent = value().parse().expect("a Zipf exponent"),
            "--clients" => options.clients = value().parse().expect("a client count"),
            "--pipeline" => options.pipeline = value().parse().expect("a pipeline depth"),
            "--seconds" => options.seconds = value().parse().expect("seconds"),
            "--value-bytes" => options.value_bytes = value().parse().expect("a size"),
            "--populate" => options.populate = true,
            // `cargo bench` adds it to every bench's arguments.
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    options
}

/// Key ranks drawn from Zipf(exponent) over `keys` keys, by inverting the cumulative weights.
struct Zipf {
    cumulative: &'static [f64],
    state: u64,
}

/// The cumulative Zipf weights of ranks 1..=keys, normalised to end at 1.
fn cumulative_weights(keys: usize, exponent: f64) -> Vec<f64> {
    let mut total = 0.0;
    let mut cumulative: Vec<f64> = (1..=keys)
        .map(|rank| {
            total += 1.0 / (rank as f64).powf(exponent);
            total
        })
        .collect();
    for weight in &mut cumulative {
        *weight /= total;
    }
    cumulative
}

impl Zipf {
    fn next(&mut self) -> usize {
        // SplitMix64: fast, and good enough to pick keys.
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let uniform = (z ^ (z >> 31)) as f64 / u64::MAX as f64;
        self.cumulative
            .partition_point(|&weight| weight < uniform)
            .min(self.cumulative.len() - 1)
    }
}

fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads until `count` replies (bulk strings, nils, simple replies or errors) are complete.
async fn read_replies(stream: &mut TcpStream, input: &mut Vec<u8>, count: usize) {
    let mut done = 0;
    let mut at = 0;
    loop {
        while done < count {
            let Some(end) = memchr::memchr(b'\n', &input[at..]).map(|lf| lf.saturating_sub(1))
            else {
                break;
            };
            let line = &input[at..at + end];
            let mut next = at + end + 2;
            if line.first() == Some(&b'$') {
                let len: i64 = std::str::from_utf8(&line[1..])
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .expect("a bulk length");
                if len >= 0 {
                    next += len as usize + 2;
                    if next > input.len() {
                        break;
                    }
                }
            }
            at = next;
            done += 1;
        }
        if done == count {
            input.drain(..at);
            return;
        }
        let mut chunk = [0u8; 64 * 1024];
        let read = stream.read(&mut chunk).await.expect("a reply");
        assert!(read > 0, "the server closed the connection");
        input.extend_from_slice(&chunk[..read]);
    }
}

/// Every key's `GET`, encoded once, so that the load generator spends its time on sockets.
fn encoded_gets(keys: usize) -> Vec<Vec<u8>> {
    (0..keys)
        .map(|key| {
            let mut out = Vec::new();
            command(&mut out, &[b"GET", format!("zipf:{key}").as_bytes()]);
            out
        })
        .collect()
}

async fn client(
    options: &Options,
    gets: &[Vec<u8>],
    cumulative: &'static [f64],
    seed: u64,
    until: Instant,
) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", options.port))
        .await
        .expect("a connection");
    stream.set_nodelay(true).expect("nodelay");
    let mut zipf = Zipf {
        cumulative,
        state: seed | 1,
    };
    let (mut out, mut input) = (Vec::new(), Vec::new());
    let mut requests = 0;
    while Instant::now() < until {
        out.clear();
        for _ in 0..options.pipeline {
            out.extend_from_slice(&gets[zipf.next()]);
        }
        stream.write_all(&out).await.expect("a write");
        read_replies(&mut stream, &mut input, options.pipeline).await;
        requests += options.pipeline as u64;
    }
    requests
}

async fn populate(options: &Options) {
    let mut stream = TcpStream::connect(("127.0.0.1", options.port))
        .await
        .expect("a connection");
    let value = vec![b'v'; options.value_bytes];
    let mut input = Vec::new();
    for start in (0..options.keys).step_by(1000) {
        let mut out = Vec::new();
        let end = (start + 1000).min(options.keys);
        for key in start..end {
            command(
                &mut out,
                &[b"SET", format!("zipf:{key}").as_bytes(), &value],
            );
        }
        stream.write_all(&out).await.expect("a write");
        read_replies(&mut stream, &mut input, end - start).await;
    }
}

fn main() {
    // Lives as long as the process; the client tasks borrow it.
    let options: &'static Options = Box::leak(Box::new(options()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        if options.populate {
            return populate(options).await;
        }
        let gets: &'static [Vec<u8>] = Box::leak(encoded_gets(options.keys).into_boxed_slice());
        let cumulative: &'static [f64] =
            Box::leak(cumulative_weights(options.keys, options.exponent).into_boxed_slice());
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(options.seconds);
        let clients: Vec<_> = (0..options.clients)
            .map(|index| tokio::spawn(client(options, gets, cumulative, index as u64 + 1, until)))
            .collect();
        let mut requests = 0;
        for client in clients {
            requests += client.await.expect("a client task");
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "requests={requests} seconds={seconds:.2} rps={:.0}",
            requests as f64 / seconds
        );
    });
}
