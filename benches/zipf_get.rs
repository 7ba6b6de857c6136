//! A skewed read load that `redis-benchmark` cannot make: `GET`s whose keys follow a Zipf
//! distribution, as real read traffic does (a few hot profiles, a long tail). `load.py --cache`
//! runs it against Redis directly and keyward with and without a cache rule, on private ports.
//!
//!     cargo bench --bench zipf_get -- --port <redis port> --keys 100000 --populate
//!     cargo bench --bench zipf_get -- --port <keyward port> --keys 100000 --seconds 10
//!
//! Prints one line: `requests=<n> seconds=<s> rps=<n> p50_us=<n> p99_us=<n>`, the latencies
//! being those of each round trip (one request, or one pipeline of them).

#[path = "support/connection.rs"]
#[allow(dead_code)]
mod connection;

use std::time::{Duration, Instant};

use clap::Parser;

use connection::{encoded, Connection};

#[derive(Parser)]
struct Options {
    /// The server to load (no default: never someone else's Redis by accident).
    #[arg(long)]
    port: u16,
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    #[arg(long, default_value_t = 1.0)]
    exponent: f64,
    #[arg(long, default_value_t = 50)]
    clients: usize,
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
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

/// Every key's `GET`, encoded once, so that the load generator spends its time on sockets.
fn encoded_gets(keys: usize) -> Vec<Vec<u8>> {
    (0..keys)
        .map(|key| encoded(&[b"GET", format!("zipf:{key}").as_bytes()]))
        .collect()
}

async fn client(
    options: &Options,
    gets: &[Vec<u8>],
    cumulative: &'static [f64],
    seed: u64,
    until: Instant,
) -> (u64, Vec<u32>) {
    let mut connection = Connection::open(options.port).await;
    let mut zipf = Zipf {
        cumulative,
        state: seed | 1,
    };
    let mut out = Vec::new();
    let mut requests = 0;
    let mut latencies_us = Vec::new();
    loop {
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        out.clear();
        for _ in 0..options.pipeline {
            out.extend_from_slice(&gets[zipf.next()]);
        }
        connection.send(&out).await;
        connection.replies(options.pipeline).await;
        requests += options.pipeline as u64;
        latencies_us.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    (requests, latencies_us)
}

/// The latency below which `share` of the round trips fell.
fn percentile(sorted: &[u32], share: f64) -> u32 {
    let at = ((sorted.len() as f64 * share) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(at).copied().unwrap_or(0)
}

async fn populate(options: &Options) {
    let mut connection = Connection::open(options.port).await;
    let value = vec![b'v'; options.value_bytes];
    for start in (0..options.keys).step_by(1000) {
        let end = (start + 1000).min(options.keys);
        let sets: Vec<u8> = (start..end)
            .flat_map(|key| encoded(&[b"SET", format!("zipf:{key}").as_bytes(), &value]))
            .collect();
        connection.send(&sets).await;
        connection.replies(end - start).await;
    }
}

fn main() {
    connection::run(|options: &'static Options| async move {
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
        let mut latencies_us = Vec::new();
        for client in clients {
            let (made, latencies) = client.await.expect("a client task");
            requests += made;
            latencies_us.extend(latencies);
        }
        let seconds = started.elapsed().as_secs_f64();
        latencies_us.sort_unstable();
        println!(
            "requests={requests} seconds={seconds:.2} rps={:.0} p50_us={} p99_us={}",
            requests as f64 / seconds,
            percentile(&latencies_us, 0.5),
            percentile(&latencies_us, 0.99),
        );
    });
}
