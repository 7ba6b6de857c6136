//! Micro-benchmarks of the per-command hot path: decoding pipelined requests, finding the
//! command and its keys, and delimiting replies. Each reports throughput in commands (or
//! replies) per iteration, so results read as commands per second.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keyward::command::CommandTable;
use keyward::resp::frame::frame_len;
use keyward::resp::request::{Decoded, RequestDecoder};

const PIPELINE: usize = 16;

fn request(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        out.extend_from_slice(format!("${}\r\n{word}\r\n", word.len()).as_bytes());
    }
    out
}

/// Decodes a buffer of `PIPELINE` requests and looks each one up, as a session does per read.
fn decode_and_classify(c: &mut Criterion) {
    let table = CommandTable::global();
    let mut group = c.benchmark_group("decode_and_classify");
    group.throughput(Throughput::Elements(PIPELINE as u64));
    for (name, words) in [
        ("get", vec!["GET", "user:1234:profile"]),
        ("set_64b", vec!["SET", "user:1234:profile", &"x".repeat(64)]),
        ("mget_10", {
            let mut words = vec!["MGET"];
            words.extend(std::iter::repeat_n("user:1234:profile", 10));
            words
        }),
    ] {
        let buffer = request(&words).repeat(PIPELINE);
        let mut decoder = RequestDecoder::default();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut pos = 0;
                let mut commands = 0;
                while let Ok(Decoded::Request { consumed, .. }) = decoder.decode(&buffer[pos..]) {
                    let args = decoder.args(&buffer[pos..]);
                    commands += black_box(table.lookup(&args)).id;
                    pos += consumed;
                }
                black_box(commands)
            })
        });
    }
    group.finish();
}

/// Finds the keys of one command through its key specs.
fn key_extraction(c: &mut Criterion) {
    let table = CommandTable::global();
    let mut group = c.benchmark_group("key_extraction");
    group.throughput(Throughput::Elements(1));
    for (name, words) in [
        ("get", vec!["GET", "user:1234:profile"]),
        (
            "mset_4",
            vec!["MSET", "a", "1", "b", "2", "c", "3", "d", "4"],
        ),
        (
            "eval_2",
            vec!["EVAL", "return 1", "2", "lock:a", "lock:b", "token"],
        ),
        (
            "xread_2",
            vec!["XREAD", "COUNT", "10", "STREAMS", "s1", "s2", "0", "0"],
        ),
    ] {
        let buffer = request(&words);
        let mut decoder = RequestDecoder::default();
        decoder.decode(&buffer).expect("valid request");
        let args = decoder.args(&buffer);
        let info = table.lookup(&args);
        let mut keys = Vec::with_capacity(8);
        group.bench_function(name, |b| {
            b.iter(|| {
                keys.clear();
                info.key_positions(black_box(&args), &mut keys);
                black_box(keys.len())
            })
        });
    }
    group.finish();
}

/// Delimits `PIPELINE` replies, as an upstream connection does to route them.
fn reply_delimiting(c: &mut Criterion) {
    let mut group = c.benchmark_group("reply_delimiting");
    group.throughput(Throughput::Elements(PIPELINE as u64));
    for (name, reply) in [
        (
            "bulk_64b",
            format!("$64\r\n{}\r\n", "x".repeat(64)).into_bytes(),
        ),
        ("ok", b"+OK\r\n".to_vec()),
        ("array_10", {
            let mut reply = b"*10\r\n".to_vec();
            for _ in 0..10 {
                reply.extend_from_slice(format!("$64\r\n{}\r\n", "x".repeat(64)).as_bytes());
            }
            reply
        }),
    ] {
        let buffer = reply.repeat(PIPELINE);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut pos = 0;
                while let Ok(Some(len)) = frame_len(&buffer[pos..]) {
                    pos += len;
                }
                black_box(pos)
            })
        });
    }
    group.finish();
}

/// Follows `PIPELINE` `GET`s from request to reply and counts them in the hot keys (keys and
/// patterns, by requests and by bytes), as a session does per pipelined read: steady state,
/// with summaries full of other keys, for a key already counted and for keys new each time
/// (a uniform spread over more keys than `capacity`, the costliest case).
fn hotkey_update(c: &mut Criterion) {
    let (config, _) = keyward::config::Config::parse(
        "[hotkeys]\nenabled = true\ncapacity = 1024\nwindows = [\"10s\", \"1m\", \"5m\"]\n",
    )
    .expect("valid config");
    let hotkeys = keyward::policy::hotkeys::HotKeys::new(config.hotkeys);
    let mut recorder = keyward::policy::hotkeys::record::Recorder::default();
    let table = CommandTable::global();
    let reply = format!("$64\r\n{}\r\n", "x".repeat(64)).into_bytes();
    let mut decoder = RequestDecoder::default();
    let mut positions = Vec::new();
    let mut count = |recorder: &mut keyward::policy::hotkeys::record::Recorder, buffer: &[u8]| {
        let mut pos = 0;
        while let Ok(Decoded::Request { consumed, .. }) = decoder.decode(&buffer[pos..]) {
            let args = decoder.args(&buffer[pos..]);
            let info = table.lookup(&args);
            positions.clear();
            info.key_positions(&args, &mut positions);
            if let Some(pending) = recorder.start(info, &args, &positions, consumed) {
                recorder.finish(pending, &reply);
            }
            pos += consumed;
        }
        hotkeys.record(recorder, quanta::Instant::now());
    };
    let gets = |first: u64| -> Vec<u8> {
        (first..first + PIPELINE as u64)
            .flat_map(|n| request(&["GET", &format!("user:{n}:profile")]))
            .collect()
    };
    for first in (0..5000).step_by(PIPELINE) {
        count(&mut recorder, &gets(first));
    }
    let mut group = c.benchmark_group("hotkey_update");
    group.throughput(Throughput::Elements(PIPELINE as u64));
    let known = request(&["GET", "user:4999:profile"]).repeat(PIPELINE);
    group.bench_function("known_key", |b| {
        b.iter(|| count(&mut recorder, black_box(&known)))
    });
    // Buffers of keys never seen, made ahead so that making them is not measured.
    let fresh: Vec<Vec<u8>> = (0..4096u64)
        .map(|n| gets(1_000_000 + n * PIPELINE as u64))
        .collect();
    let mut next = 0;
    group.bench_function("new_keys", |b| {
        b.iter(|| {
            next = (next + 1) % fresh.len();
            count(&mut recorder, black_box(&fresh[next]))
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    decode_and_classify,
    key_extraction,
    reply_delimiting,
    hotkey_update
);
criterion_main!(benches);
