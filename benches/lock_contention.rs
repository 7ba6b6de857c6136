//! A contended lock: `--clients` tasks loop "SET lock NX PX, on nil sleep 1–10 ms and retry,
//! hold `--hold-ms`, release with a compare-and-delete script" on one key. `load.py --locks`
//! runs it against Redis directly and through keyward with a lock rule.
//!
//!     cargo bench --bench lock_contention -- --port <keyward port> --redis-port <redis port>
//!
//! Prints one line of `name=value` pairs: acquisitions per second, p50/p99/max wait (from a
//! client's first attempt to its acquisition), Jain's fairness index over the clients'
//! acquisition counts, and the commands Redis ran per acquisition (from `INFO commandstats`
//! on `--redis-port`).

#[path = "support/connection.rs"]
#[allow(dead_code)]
mod connection;

use std::time::{Duration, Instant};

use clap::Parser;

use connection::Connection;

const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

#[derive(Parser)]
struct Options {
    /// Where the clients connect (no default: never someone else's Redis by accident).
    #[arg(long)]
    port: u16,
    /// The Redis whose `INFO commandstats` counts the commands run.
    #[arg(long)]
    redis_port: u16,
    #[arg(long, default_value_t = 50)]
    clients: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1)]
    hold_ms: u64,
    /// `cargo bench` passes it to every bench.
    #[arg(long, hide = true)]
    bench: bool,
}

/// (acquisitions, waits) of one client until `until`.
async fn client(options: &Options, index: usize, until: Instant) -> (u64, Vec<Duration>) {
    let mut connection = Connection::open(options.port).await;
    let token = format!("client-{index}");
    let mut state = index as u64 * 0x9e37_79b9 + 1;
    let mut waits = Vec::new();
    while Instant::now() < until {
        let first_attempt = Instant::now();
        loop {
            let reply = connection
                .call(&[
                    b"SET",
                    b"lock:bench",
                    token.as_bytes(),
                    b"NX",
                    b"PX",
                    b"1000",
                ])
                .await;
            if reply.starts_with(b"+OK") {
                break;
            }
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            tokio::time::sleep(Duration::from_millis(1 + (state >> 33) % 10)).await;
        }
        waits.push(first_attempt.elapsed());
        tokio::time::sleep(Duration::from_millis(options.hold_ms)).await;
        connection
            .call(&[
                b"EVAL",
                RELEASE.as_bytes(),
                b"1",
                b"lock:bench",
                token.as_bytes(),
            ])
            .await;
    }
    (waits.len() as u64, waits)
}

/// Commands Redis has run so far, from `INFO commandstats`.
async fn redis_commands(port: u16) -> u64 {
    let reply = Connection::open(port)
        .await
        .call(&[b"INFO", b"commandstats"])
        .await;
    String::from_utf8_lossy(&reply)
        .lines()
        .filter_map(|line| line.split_once(":calls="))
        .filter(|(name, _)| !name.contains("info"))
        .filter_map(|(_, rest)| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

fn main() {
    connection::run(|options: &'static Options| async move {
        let commands_before = redis_commands(options.redis_port).await;
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(options.seconds);
        let clients: Vec<_> = (0..options.clients)
            .map(|index| tokio::spawn(client(options, index, until)))
            .collect();
        let mut counts = Vec::new();
        let mut waits = Vec::new();
        for client in clients {
            let (count, client_waits) = client.await.expect("a client task");
            counts.push(count as f64);
            waits.extend(client_waits);
        }
        let seconds = started.elapsed().as_secs_f64();
        let commands = redis_commands(options.redis_port).await - commands_before;
        waits.sort();
        let percentile = |p: f64| {
            waits
                .get(((waits.len() as f64 * p) as usize).min(waits.len().saturating_sub(1)))
                .map_or(0.0, |wait| wait.as_secs_f64() * 1000.0)
        };
        let sum: f64 = counts.iter().sum();
        let squares: f64 = counts.iter().map(|count| count * count).sum();
        let jain = sum * sum / (counts.len() as f64 * squares).max(f64::MIN_POSITIVE);
        println!(
            "acquisitions={} per_second={:.1} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} jain={:.3} commands_per_acquisition={:.2}",
            waits.len(),
            waits.len() as f64 / seconds,
            percentile(0.5),
            percentile(0.99),
            percentile(1.0),
            jain,
            commands as f64 / (waits.len() as f64).max(1.0),
        );
    });
}
