//! `GET`s through keyward's REST API against the same `GET`s over RESP through keyward:
//! what a serverless app's HTTP request costs over a RESP client's command. `load.py --rest`
//! runs it on private ports.
//!
//!     cargo bench --bench rest_get -- --port <RESP port> --populate
//!     cargo bench --bench rest_get -- --port <RESP port> --seconds 5
//!     cargo bench --bench rest_get -- --rest-port <REST port> --token <token> --seconds 5
//!
//! Each client sends one request at a time (a REST request is one HTTP round trip, as
//! `@upstash/redis` sends a lone command) over a connection it keeps. Prints one line:
//! `requests=<n> seconds=<s> rps=<n> p50_us=<n> p99_us=<n>`.

#[path = "support/connection.rs"]
#[allow(dead_code)]
mod connection;

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use connection::{encoded, Connection};

#[derive(Parser)]
struct Options {
    /// keyward's RESP port: loaded, or populated (no default: never someone else's server).
    #[arg(long)]
    port: Option<u16>,
    /// keyward's REST port: loaded over HTTP instead.
    #[arg(long)]
    rest_port: Option<u16>,
    /// The REST token.
    #[arg(long, default_value = "")]
    token: String,
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    #[arg(long, default_value_t = 50)]
    clients: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Write every key once, then exit.
    #[arg(long)]
    populate: bool,
    /// `cargo bench` passes it to every bench.
    #[arg(long, hide = true)]
    bench: bool,
}

fn key(index: usize) -> String {
    format!("rest:{index}")
}

/// Keys drawn uniformly (SplitMix64: fast, and good enough to pick keys).
struct Keys {
    state: u64,
    count: usize,
}

impl Keys {
    fn next(&mut self) -> usize {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % self.count as u64) as usize
    }
}

/// One client's latencies, one per request, in microseconds.
type Latencies = Vec<u32>;

async fn resp_client(options: &Options, port: u16, seed: u64, until: Instant) -> Latencies {
    let gets: Vec<Vec<u8>> = (0..options.keys)
        .map(|index| encoded(&[b"GET", key(index).as_bytes()]))
        .collect();
    let mut keys = Keys {
        state: seed,
        count: options.keys,
    };
    let mut connection = Connection::open(port).await;
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        connection.send(&gets[keys.next()]).await;
        connection.replies(1).await;
        latencies.push(started.elapsed().as_micros() as u32);
    }
    latencies
}

async fn rest_client(options: &Options, port: u16, seed: u64, until: Instant) -> Latencies {
    let bodies: Vec<Bytes> = (0..options.keys)
        .map(|index| Bytes::from(format!(r#"["GET","{}"]"#, key(index))))
        .collect();
    let mut keys = Keys {
        state: seed,
        count: options.keys,
    };
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("a connection");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP connection");
    tokio::spawn(connection);
    let authorization = format!("Bearer {}", options.token);
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let request = Request::post("/")
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::AUTHORIZATION, &authorization)
            .body(Full::new(bodies[keys.next()].clone()))
            .expect("a request");
        let response = sender.send_request(request).await.expect("a response");
        assert_eq!(response.status(), 200, "REST GET failed");
        response.into_body().collect().await.expect("a body");
        latencies.push(started.elapsed().as_micros() as u32);
    }
    latencies
}

async fn populate(options: &Options, port: u16) {
    let mut connection = Connection::open(port).await;
    let value = vec![b'v'; options.value_bytes];
    for start in (0..options.keys).step_by(1000) {
        let end = (start + 1000).min(options.keys);
        let sets: Vec<u8> = (start..end)
            .flat_map(|index| encoded(&[b"SET", key(index).as_bytes(), &value]))
            .collect();
        connection.send(&sets).await;
        connection.replies(end - start).await;
    }
}

fn percentile(sorted: &[u32], fraction: f64) -> u32 {
    sorted[((sorted.len() - 1) as f64 * fraction) as usize]
}

fn main() {
    connection::run(|options: &'static Options| async move {
        if options.populate {
            let port = options.port.expect("--populate needs --port");
            return populate(options, port).await;
        }
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(options.seconds);
        let clients: Vec<_> = (0..options.clients)
            .map(|index| {
                let seed = index as u64 + 1;
                match (options.rest_port, options.port) {
                    (Some(port), _) => tokio::spawn(rest_client(options, port, seed, until)),
                    (None, Some(port)) => tokio::spawn(resp_client(options, port, seed, until)),
                    (None, None) => panic!("give --port or --rest-port"),
                }
            })
            .collect();
        let mut latencies = Vec::new();
        for client in clients {
            latencies.extend(client.await.expect("a client task"));
        }
        let seconds = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        println!(
            "requests={} seconds={seconds:.2} rps={:.0} p50_us={} p99_us={}",
            latencies.len(),
            latencies.len() as f64 / seconds,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
        );
    });
}
