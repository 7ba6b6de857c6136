//! Upstream failures: nothing hangs, every request gets its reply or a Redis-style error, and
//! keyward serves again once Redis is back.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Keyward, RedisServer};

fn wait_for_pong(keyward: &Keyward, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut raw = keyward.raw();
        raw.send(b"PING\r\n");
        if raw.read_line() == "+PONG\r\n" {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "keyward did not serve again");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a new client's write succeeds: each pooled connection reconnects on its own
/// backoff (at most 500 ms apart), so one PONG does not mean every client is served.
fn wait_until_every_client_is_served(keyward: &Keyward) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut client = keyward.client();
    while redis::cmd("SET")
        .arg("served")
        .arg(1)
        .query::<()>(&mut client)
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "keyward did not serve every client again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killing_redis_mid_pipeline_fails_requests_and_keyward_recovers() {
    let mut redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, "");
    let requests = 200_000;
    let stream = TcpStream::connect(("127.0.0.1", keyward.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    // The second half of the pipeline is written only once Redis is gone, so the kill always
    // lands mid-pipeline, however fast the first half was answered.
    let (killed, on_kill) = std::sync::mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let command = b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n";
        for batch in 0..requests / 1000 {
            if batch == requests / 2000 {
                on_kill.recv().unwrap();
            }
            writer.write_all(&command.repeat(1000)).unwrap();
        }
    });
    let mut reader = BufReader::new(stream);
    let (mut ok, mut errors) = (0, 0);
    let mut line = String::new();
    for reply in 0..requests {
        if reply == 1000 {
            redis.kill();
            killed.send(()).unwrap();
        }
        line.clear();
        reader
            .read_line(&mut line)
            .expect("a reply for every request, no hang");
        match line.as_bytes()[0] {
            b':' => ok += 1,
            b'-' => {
                assert!(line.starts_with("-ERR upstream"), "{line}");
                errors += 1;
            }
            _ => panic!("unexpected reply {line:?}"),
        }
    }
    sender.join().unwrap();
    assert!(ok >= 1000 && errors > 0, "{ok} ok, {errors} errors");
    redis.restart();
    wait_for_pong(&keyward, Duration::from_secs(5));
    wait_until_every_client_is_served(&keyward);
}

#[test]
fn keyward_starts_without_redis_and_serves_once_it_appears() {
    let mut redis = RedisServer::start();
    redis.kill();
    let keyward = Keyward::start(redis.port, "");
    let mut raw = keyward.raw();
    let started = Instant::now();
    raw.send(b"GET k\r\n");
    let reply = raw.read_line();
    assert!(reply.starts_with("-ERR upstream 127.0.0.1:"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the error took {:?}",
        started.elapsed()
    );
    let (status, _) = keyward.admin_get("/readyz");
    assert_eq!(status, 503);
    redis.restart();
    let took = wait_for_pong(&keyward, Duration::from_secs(5));
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} to serve again"
    );
    let (status, _) = keyward.admin_get("/readyz");
    assert_eq!(status, 200);
}

/// keyward speaks `HELLO` to Redis, which Redis 6.0 brought: a server without it (an older
/// Redis, or one that renamed the command away) is refused with an error that says so.
#[test]
fn a_redis_without_hello_is_refused_with_the_version_keyward_needs() {
    let redis = RedisServer::start_with_args(&["--rename-command", "HELLO", ""]);
    let keyward = Keyward::start(redis.port, "");
    let mut raw = keyward.raw();
    raw.send(b"PING\r\n");
    let reply = raw.read_line();
    assert!(
        reply.starts_with("-ERR upstream") && reply.contains("Redis 6.0 or later"),
        "{reply}"
    );
    let (status, body) = keyward.admin_get("/readyz");
    assert_eq!(status, 503);
    assert!(body.contains("Redis 6.0 or later"), "{body}");
}

#[test]
fn a_request_past_request_timeout_gets_an_error_and_the_session_goes_on() {
    let redis = RedisServer::start();
    let keyward =
        Keyward::start_with_upstream(redis.port, "pool_size = 1\nrequest_timeout = \"300ms\"", "");
    let mut raw = keyward.raw();
    // A script that keeps Redis busy for one second, as a stalled server would.
    let stall = "local t = redis.call('TIME') \
                 local stop = t[1] * 1000000 + t[2] + 1000000 \
                 repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop \
                 return 1";
    let mut request = format!(
        "*3\r\n$4\r\nEVAL\r\n${}\r\n{stall}\r\n$1\r\n0\r\n",
        stall.len()
    );
    request.push_str("SET after sleep\r\n");
    raw.send(request.as_bytes());
    let started = Instant::now();
    assert!(raw.read_line().contains("no reply within"));
    assert!(raw.read_line().contains("no reply within"));
    assert!(started.elapsed() < Duration::from_millis(900));
    // The stalled connection is reset after request_timeout; the session goes on, and even a
    // connection switch (SELECT) does not wait for replies that will never come.
    raw.send(b"SELECT 1\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        raw.send(b"SET after restart\r\nGET after\r\n");
        let (set, get) = (raw.read_line(), raw.read_line());
        if set == "+OK\r\n" {
            assert_eq!(get, "$7\r\n", "the late replies were mistaken for new ones");
            assert_eq!(raw.read_line(), "restart\r\n");
            break;
        }
        assert!(get.starts_with('-'), "{get}");
        assert!(
            Instant::now() < deadline,
            "keyward did not serve again: {set}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = keyward.admin_get("/metrics").1;
    assert!(
        support::metric_value(
            &metrics,
            "keyward_upstream_errors_total",
            &["kind=\"timeout\""]
        ) >= 1.0
    );
}

#[test]
fn a_dedicated_connection_that_breaks_closes_its_client() {
    let mut redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, "");
    let mut subscriber = keyward.raw();
    subscriber.send(b"SUBSCRIBE news\r\n");
    for _ in 0..6 {
        subscriber.read_line();
    }
    let mut in_multi = keyward.raw();
    in_multi.send(b"MULTI\r\n");
    assert_eq!(in_multi.read_line(), "+OK\r\n");
    redis.kill();
    assert!(
        subscriber.is_closed(),
        "the subscriber must learn its subscriptions are gone"
    );
    assert!(
        in_multi.is_closed(),
        "the transaction is gone with the connection"
    );
}

#[test]
fn a_stalled_redis_gives_timely_errors_and_service_resumes() {
    let redis = RedisServer::start();
    let keyward = Keyward::start_with_upstream(redis.port, "request_timeout = \"400ms\"", "");
    let _: String = redis::cmd("PING").query(&mut keyward.client()).unwrap();
    redis.signal("STOP");
    let clients: Vec<_> = (0..8)
        .map(|n| {
            let mut raw = keyward.raw();
            std::thread::spawn(move || {
                let started = Instant::now();
                raw.send(format!("INCR stalled:{n}\r\nINCR stalled:{n}\r\n").as_bytes());
                let replies = [raw.read_line(), raw.read_line()];
                (started.elapsed(), replies)
            })
        })
        .collect();
    for client in clients {
        let (elapsed, replies) = client.join().unwrap();
        for reply in &replies {
            assert!(reply.starts_with("-ERR upstream"), "{reply}");
        }
        assert!(elapsed < Duration::from_secs(3), "errors took {elapsed:?}");
    }
    redis.signal("CONT");
    wait_until_every_client_is_served(&keyward);
}

#[test]
fn acknowledged_writes_are_never_lost_while_clients_misbehave() {
    let redis = RedisServer::start();
    let keyward = Keyward::start_with_upstream(redis.port, "pool_size = 2", "");
    // Clients that vanish mid-pipeline or half-close, on the same pooled connections.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let vandals: Vec<_> = (0..3)
        .map(|n| {
            let port = keyward.port;
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let burst = format!("*2\r\n$4\r\nINCR\r\n$8\r\nvandal:{n}\r\n").repeat(500);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    let _ = stream.write_all(burst.as_bytes());
                    if n % 2 == 0 {
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                    }
                    drop(stream);
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..4)
        .map(|n| {
            let mut client = keyward.client();
            std::thread::spawn(move || {
                let key = format!("acknowledged:{n}");
                let mut acknowledged = 0;
                for _ in 0..100 {
                    let mut pipe = redis::pipe();
                    for _ in 0..20 {
                        pipe.cmd("INCR").arg(&key);
                    }
                    let replies: Vec<i64> = pipe.query(&mut client).unwrap();
                    acknowledged += replies.len() as i64;
                    assert_eq!(
                        *replies.last().unwrap(),
                        acknowledged,
                        "a reply out of step"
                    );
                }
                (key, acknowledged)
            })
        })
        .collect();
    let results: Vec<(String, i64)> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for vandal in vandals {
        vandal.join().unwrap();
    }
    let mut direct = redis.client();
    for (key, acknowledged) in results {
        let stored: i64 = redis::cmd("GET").arg(&key).query(&mut direct).unwrap();
        assert_eq!(
            stored, acknowledged,
            "{key}: Redis holds {stored}, keyward acknowledged {acknowledged}"
        );
    }
}
