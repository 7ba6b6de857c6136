//! Hostile or unusual requests from one client never reach the connection others share.

mod support;

use std::time::{Duration, Instant};

use support::{metric_value, Keyward, RedisServer};

fn shared_upstream() -> (RedisServer, Keyward) {
    let redis = RedisServer::start();
    let keyward = Keyward::start_with_upstream(redis.port, "pool_size = 1", "");
    (redis, keyward)
}

/// `keyward_upstream_errors_total` of this `kind` (`io`, `timeout`…).
fn upstream_errors(keyward: &Keyward, kind: &str) -> f64 {
    metric_value(
        &keyward.admin_get("/metrics").1,
        "keyward_upstream_errors_total",
        &[&format!("kind=\"{kind}\"")],
    )
}

#[test]
fn lengths_redis_would_reject_never_reach_the_shared_connection() {
    let (_redis, keyward) = shared_upstream();
    let mut bystander = keyward.client();
    for request in [
        &b"*1\r\n$04\r\nPING\r\n"[..],
        b"*01\r\n$4\r\nPING\r\n",
        b"*-0\r\n",
        b"*00\r\n",
    ] {
        let mut raw = keyward.raw();
        raw.send(request);
        assert!(
            raw.read_line().starts_with("-ERR Protocol error"),
            "{request:?}"
        );
        assert!(raw.is_closed());
        let pong: String = redis::cmd("PING").query(&mut bystander).unwrap();
        assert_eq!(pong, "PONG");
    }
    assert_eq!(
        upstream_errors(&keyward, "io"),
        0.0,
        "the shared connection was reset"
    );
}

#[test]
fn script_debug_gets_a_connection_of_its_own() {
    let (_redis, keyward) = shared_upstream();
    let mut debugger = keyward.raw();
    debugger.send(b"SCRIPT DEBUG YES\r\n");
    assert_eq!(debugger.read_line(), "+OK\r\n");
    let one: i64 = redis::cmd("EVAL")
        .arg("return 1")
        .arg(0)
        .query(&mut keyward.client())
        .unwrap();
    assert_eq!(one, 1, "another client's script ran under the debugger");
    assert_eq!(upstream_errors(&keyward, "io"), 0.0);
}

#[test]
fn a_transaction_that_cannot_get_its_connection_is_refused_whole() {
    let (redis, keyward) = shared_upstream();
    let _: String = redis::cmd("PING").query(&mut keyward.client()).unwrap();
    let mut admin = redis.client();
    let mut clients = String::new();
    // This client, the pooled connection, the shared one keyward keeps beside it for detours,
    // and the spare it opens ahead of need. The spare's handshake runs in a task of its own
    // and may finish last: counting three let the limit below shut it out on a busy machine.
    support::wait_for(Duration::from_secs(5), "keyward's spare connection", || {
        clients = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
        clients.lines().count() >= 4
    });
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(clients.lines().count())
        .query(&mut admin)
        .unwrap();
    // keyward keeps a connection open ahead of need: another transaction takes it, and none
    // can be opened in its place.
    let mut first = keyward.raw();
    first.send(b"MULTI\r\n");
    assert_eq!(first.read_line(), "+OK\r\n");
    let mut raw = keyward.raw();
    raw.send(b"MULTI\r\nINCR x\r\nINCR x\r\nEXEC\r\n");
    let reply = raw.read_line();
    assert!(reply.starts_with("-ERR upstream"), "{reply}");
    assert!(
        raw.is_closed(),
        "the commands after a refused MULTI must not run alone"
    );
    let x: Option<i64> = redis::cmd("GET").arg("x").query(&mut admin).unwrap();
    assert_eq!(x, None);
}

#[test]
fn xreadgroup_block_is_found_whatever_the_group_is_called() {
    let (_redis, keyward) = shared_upstream();
    let mut setup = keyward.client();
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "s", "streams", "$", "MKSTREAM"])
        .query(&mut setup)
        .unwrap();
    let mut reader = keyward.client();
    let waiter = std::thread::spawn(move || {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg(&[
                "GROUP", "streams", "block", "BLOCK", "1500", "STREAMS", "s", ">",
            ])
            .query(&mut reader)
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let _: String = redis::cmd("PING").query(&mut setup).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "PING waited behind XREADGROUP"
    );
    waiter.join().unwrap();
}

#[test]
fn a_half_closed_transaction_still_gets_its_replies() {
    let (_redis, keyward) = shared_upstream();
    let mut raw = keyward.raw();
    raw.send(b"MULTI\r\nINCR x\r\nEXEC\r\n");
    raw.shutdown_write();
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert_eq!(raw.read_line(), "+QUEUED\r\n");
    assert_eq!(raw.read_line(), "*1\r\n");
    assert_eq!(raw.read_line(), ":1\r\n");
    assert!(raw.is_closed());
}

#[test]
fn a_subscriber_that_stops_reading_is_disconnected_not_buffered_forever() {
    let (_redis, keyward) = shared_upstream();
    let mut subscriber = keyward.raw();
    subscriber.send(b"SUBSCRIBE busy\r\n");
    for _ in 0..6 {
        subscriber.read_line();
    }
    let mut publisher = keyward.client();
    let payload = vec![b'x'; 1024 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_value(
        &keyward.admin_get("/metrics").1,
        "keyward_output_limit_disconnects_total",
        &[],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the slow subscriber was never cut off"
        );
        for _ in 0..8 {
            let _: i64 = redis::cmd("PUBLISH")
                .arg("busy")
                .arg(&payload)
                .query(&mut publisher)
                .unwrap();
        }
    }
    let pong: String = redis::cmd("PING").query(&mut publisher).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn idle_clients_are_closed_but_active_subscribed_and_blocked_ones_are_not() {
    let redis = RedisServer::start();
    let keyward = Keyward::start_on_free_ports(&[], |port, admin| {
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\nidle_timeout = \"300ms\"\n\
             [upstream]\naddress = \"127.0.0.1:{}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n",
            redis.port
        )
    });
    let mut idle = keyward.raw();
    let mut active = keyward.raw();
    let mut subscriber = keyward.raw();
    subscriber.send(b"SUBSCRIBE news\r\n");
    for _ in 0..6 {
        subscriber.read_line();
    }
    let mut blocked = keyward.raw();
    blocked.send(b"BLPOP nothing 2\r\n");
    for _ in 0..8 {
        active.send(b"PING\r\n");
        assert_eq!(active.read_line(), "+PONG\r\n");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(idle.is_closed(), "the idle client is still connected");
    let _: i64 = redis::cmd("PUBLISH")
        .arg("news")
        .arg("still here")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(
        subscriber.read_line(),
        "*3\r\n",
        "the subscriber was closed"
    );
    assert_eq!(
        blocked.read_line(),
        "*-1\r\n",
        "the blocked client was closed before its reply"
    );
}

#[test]
fn slow_clients_hold_nothing_but_their_own_connection() {
    let (_redis, keyward) = shared_upstream();
    let request = b"*2\r\n$3\r\nGET\r\n$4\r\nslow\r\n";
    let slow: Vec<_> = (0..30)
        .map(|_| {
            let mut raw = keyward.raw();
            std::thread::spawn(move || {
                for byte in request {
                    raw.send(&[*byte]);
                    std::thread::sleep(Duration::from_millis(40));
                }
                raw.read_line()
            })
        })
        .collect();
    let mut fast = keyward.client();
    let started = Instant::now();
    for _ in 0..100 {
        let _: Option<String> = redis::cmd("GET").arg("fast").query(&mut fast).unwrap();
    }
    let elapsed = started.elapsed();
    assert!(
        slow.iter().all(|thread| !thread.is_finished()),
        "the slow clients finished first"
    );
    assert!(
        elapsed < Duration::from_millis(800),
        "100 GETs took {elapsed:?} beside slow clients"
    );
    for thread in slow {
        assert_eq!(thread.join().unwrap(), "$-1\r\n");
    }
}

/// `SCRIPT KILL` from another client must not queue behind the script it kills, even when
/// both clients share keyward's one connection to Redis.
#[test]
fn script_kill_reaches_redis_while_a_script_holds_the_shared_connection() {
    let (redis, keyward) = shared_upstream();
    let mut runner = support::start_busy_script(&redis, &keyward);
    let mut killer = keyward.client();
    let started = Instant::now();
    let killed: String = redis::cmd("SCRIPT").arg("KILL").query(&mut killer).unwrap();
    assert_eq!(killed, "OK");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "SCRIPT KILL waited"
    );
    let reply = runner.read_line();
    assert!(reply.contains("killed"), "{reply}");
    let pong: String = redis::cmd("PING").query(&mut killer).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn replication_commands_get_an_error_instead_of_silence() {
    let (_redis, keyward) = shared_upstream();
    let mut raw = keyward.raw();
    for request in [
        "SYNC\r\n",
        "PSYNC ? -1\r\n",
        "REPLCONF listening-port 1\r\n",
    ] {
        raw.send(request.as_bytes());
        let reply = raw.read_line();
        assert!(
            reply.starts_with("-ERR keyward does not proxy replication"),
            "{reply}"
        );
    }
    raw.send(b"PING\r\n");
    assert_eq!(raw.read_line(), "+PONG\r\n");
}

/// While a script runs past Redis's busy threshold, other clients get Redis's own `-BUSY`
/// at once, even those whose shared connection the script holds.
#[test]
fn clients_behind_a_busy_script_get_busy_instead_of_waiting() {
    let (redis, keyward) = shared_upstream();
    let mut runner = support::start_busy_script(&redis, &keyward);
    let mut other = keyward.raw();
    let started = Instant::now();
    other.send(b"GET k\r\n");
    let reply = other.read_line();
    assert!(reply.starts_with("-BUSY"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(2), "the GET waited");
    other.send(b"SCRIPT KILL\r\n");
    assert_eq!(other.read_line(), "+OK\r\n");
    assert!(runner.read_line().contains("killed"));
}

/// `CLIENT PAUSE … WRITE` holds writes, not reads: a client's paused `SET` must not hold the
/// reads of clients that share its connection to Redis.
#[test]
fn a_paused_write_does_not_hold_other_clients_reads() {
    let (redis, keyward) = shared_upstream();
    let mut writer = keyward.raw();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "5000", "WRITE"])
        .query(&mut redis.client())
        .unwrap();
    writer.send(b"SET k v\r\n");
    std::thread::sleep(Duration::from_millis(300));
    let mut reader = keyward.client();
    let started = Instant::now();
    let value: Option<String> = redis::cmd("GET").arg("k").query(&mut reader).unwrap();
    assert_eq!(value, None);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the read waited for the pause"
    );
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut reader)
        .unwrap();
    assert_eq!(writer.read_line(), "+OK\r\n");
    let value: String = redis::cmd("GET").arg("k").query(&mut reader).unwrap();
    assert_eq!(value, "v");
}

fn short_request_timeout() -> (RedisServer, Keyward) {
    let redis = RedisServer::start();
    let keyward =
        Keyward::start_with_upstream(redis.port, "pool_size = 1\nrequest_timeout = \"300ms\"", "");
    (redis, keyward)
}

/// `request_timeout` is for a Redis that stopped answering: a script Redis runs past it (Redis
/// answers everyone else `-BUSY`) keeps its connection, and its client gets the script's own
/// end, as directly.
#[test]
fn a_script_that_runs_past_request_timeout_keeps_its_connection() {
    let (redis, keyward) = short_request_timeout();
    let mut runner = support::start_busy_script(&redis, &keyward);
    std::thread::sleep(Duration::from_millis(1200));
    let killed: String = redis::cmd("SCRIPT")
        .arg("KILL")
        .query(&mut keyward.client())
        .unwrap();
    assert_eq!(killed, "OK");
    let reply = runner.read_line();
    assert!(reply.contains("Script killed by user"), "{reply}");
    runner.send(b"PING\r\n");
    assert_eq!(runner.read_line(), "+PONG\r\n");
    assert_eq!(
        upstream_errors(&keyward, "timeout"),
        0.0,
        "no connection was reset"
    );
}

/// A write Redis postpones for `CLIENT PAUSE` waits for the pause to end, however long past
/// `request_timeout`, as it would on Redis directly.
#[test]
fn a_write_paused_past_request_timeout_runs_when_the_pause_ends() {
    let (redis, keyward) = short_request_timeout();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "1200", "WRITE"])
        .query(&mut redis.client())
        .unwrap();
    let mut writer = keyward.raw();
    writer.send(b"SET paused v\r\n");
    assert_eq!(writer.read_line(), "+OK\r\n");
    let value: String = redis::cmd("GET")
        .arg("paused")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(value, "v");
}

/// A script marks its shared connection held from the moment it is sent: a client that sends
/// right after it, before Redis could have been seen holding anything, still goes around it
/// and gets Redis's `-BUSY`, instead of waiting behind the script for as long as it runs.
#[test]
fn a_command_sent_just_after_a_long_script_does_not_queue_behind_it() {
    let (redis, keyward) = shared_upstream();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "busy-reply-threshold", "50"])
        .query(&mut redis.client())
        .unwrap();
    let mut runner = keyward.raw();
    let mut other = keyward.raw();
    runner.send(b"EVAL \"while true do end\" 0\r\n");
    // Redis answers -BUSY from its busy threshold (50 ms) on, well before keyward would see
    // the connection held (100 ms): the script is running, and only its hold marks it.
    let mut direct = redis.client();
    support::wait_for(Duration::from_secs(5), "the script runs", || {
        redis::cmd("PING")
            .query::<String>(&mut direct)
            .is_err_and(|error| error.to_string().contains("BUSY"))
    });
    other.send(b"PING\r\n");
    let reply = other.read_line();
    assert!(reply.starts_with("-BUSY"), "{reply}");
    other.send(b"SCRIPT KILL\r\n");
    assert_eq!(other.read_line(), "+OK\r\n");
    assert!(runner.read_line().contains("killed"));
}

/// A `CLIENT PAUSE … WRITE` sent through keyward marks every write sent after it: a read sent
/// right after another client's paused write goes around it.
#[test]
fn a_read_sent_just_after_a_paused_write_is_answered_at_once() {
    let (redis, keyward) = shared_upstream();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "5000", "WRITE"])
        .query(&mut keyward.client())
        .unwrap();
    let mut writer = keyward.raw();
    let mut reader = keyward.raw();
    writer.send(b"SET k v\r\n");
    redis.wait_for_blocked_clients(1);
    reader.send(b"GET k\r\n");
    assert_eq!(reader.read_line(), "$-1\r\n");
    reader.send(b"CLIENT UNPAUSE\r\n");
    assert_eq!(reader.read_line(), "+OK\r\n");
    assert_eq!(writer.read_line(), "+OK\r\n");
    reader.send(b"GET k\r\n");
    assert_eq!(reader.read_line(), "$1\r\n");
}

/// During a `CLIENT PAUSE … ALL` that keyward passed on, Redis answers nobody, not even
/// keyward's question about a held request: a request held past `request_timeout` waits for
/// the pause to end instead of having its connection reset.
#[test]
fn a_full_pause_longer_than_request_timeout_resets_nothing() {
    let (_redis, keyward) = short_request_timeout();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "1200", "ALL"])
        .query(&mut keyward.client())
        .unwrap();
    let mut reader = keyward.raw();
    reader.send(b"GET k\r\n");
    assert_eq!(reader.read_line(), "$-1\r\n");
    assert_eq!(
        upstream_errors(&keyward, "timeout"),
        0.0,
        "no connection was reset"
    );
}
