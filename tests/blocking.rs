//! A blocking command holds a connection of its own, never one that others share.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::{Keyward, RedisServer};

fn shared_upstream() -> (RedisServer, Keyward) {
    let redis = RedisServer::start();
    let keyward = Keyward::start_with_upstream(redis.port, "pool_size = 1", "");
    (redis, keyward)
}

#[test]
fn blpop_does_not_delay_other_clients() {
    let (_redis, keyward) = shared_upstream();
    let mut blocked = keyward.client();
    let mut pusher = keyward.client();
    let mut reader = keyward.client();
    let _: () = reader.set("k", "v").unwrap();
    let waiter = std::thread::spawn(move || {
        let popped: Option<(String, String)> = blocked.blpop("jobs", 5.0).unwrap();
        popped
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let value: String = reader.get("k").unwrap();
    let elapsed = started.elapsed();
    assert_eq!(value, "v");
    assert!(!waiter.is_finished(), "BLPOP returned early");
    assert!(
        elapsed < Duration::from_millis(100),
        "GET waited {elapsed:?} behind BLPOP"
    );
    let _: () = pusher.rpush("jobs", "job-1").unwrap();
    let popped = waiter.join().unwrap();
    assert_eq!(popped, Some(("jobs".into(), "job-1".into())));
}

#[test]
fn blocking_commands_time_out_as_on_redis() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.client();
    let popped: Option<(String, String)> = client.brpop("empty", 0.2).unwrap();
    assert_eq!(popped, None);
    let value: i64 = client.incr("after", 1).unwrap();
    assert_eq!(value, 1);
}

#[test]
fn xread_block_waits_without_stalling_the_pool() {
    let (_redis, keyward) = shared_upstream();
    let mut reader = keyward.client();
    let mut writer = keyward.client();
    let waiter = std::thread::spawn(move || {
        let reply: redis::Value = redis::cmd("XREAD")
            .arg(&["BLOCK", "5000", "STREAMS", "events", "$"])
            .query(&mut reader)
            .unwrap();
        reply
    });
    std::thread::sleep(Duration::from_millis(100));
    let _: String = redis::cmd("XADD")
        .arg(&["events", "*", "kind", "signup"])
        .query(&mut writer)
        .unwrap();
    let reply = waiter.join().unwrap();
    assert!(format!("{reply:?}").contains("signup"), "{reply:?}");
}

#[test]
fn pipelined_commands_after_a_blocking_one_wait_for_it() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.client();
    let mut pusher = keyward.client();
    let waiter = std::thread::spawn(move || {
        let mut pipe = redis::pipe();
        pipe.cmd("BLPOP")
            .arg("queue")
            .arg(5)
            .cmd("LLEN")
            .arg("queue");
        let (popped, len): (Option<(String, String)>, i64) = pipe.query(&mut client).unwrap();
        (popped, len)
    });
    std::thread::sleep(Duration::from_millis(100));
    let _: () = pusher.rpush("queue", &["a", "b"]).unwrap();
    let (popped, len) = waiter.join().unwrap();
    assert_eq!(popped, Some(("queue".into(), "a".into())));
    assert_eq!(len, 1);
}

#[test]
fn a_client_that_leaves_while_blocked_is_let_go_at_once() {
    let (redis, keyward) = shared_upstream();
    let mut raw = keyward.raw();
    raw.send(b"BLPOP never 30\r\n");
    std::thread::sleep(Duration::from_millis(100));
    raw.shutdown_write();
    let started = Instant::now();
    assert!(raw.is_closed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the close waited for BLPOP's timeout"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut redis.client())
            .unwrap();
        if !clients.contains("cmd=blpop") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the blocked upstream connection outlived its client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_half_closed_client_on_the_pool_still_gets_its_replies() {
    let (_redis, keyward) = shared_upstream();
    let mut raw = keyward.raw();
    raw.send(b"PING\r\nSET k v\r\n");
    raw.shutdown_write();
    assert_eq!(raw.read_line(), "+PONG\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert!(raw.is_closed());
}

/// A client blocks in `XREADGROUP … BLOCK 0` and another deletes the stream right after, as
/// Redis's own suite does: Redis runs them in that order, so the reader is told the stream
/// is gone (`-UNBLOCKED`). The switch to a connection of its own must not let the `DEL`
/// overtake the read: before the session wrote the read from its own task, about one round
/// in four ran late. With one worker thread a round or two can still run late while other
/// tests load the machine, as the README's known limits say; more than five in 100 is the old
/// fault.
#[test]
fn a_command_that_needs_its_own_connection_is_not_overtaken() {
    let redis = RedisServer::start();
    let keyward = Keyward::start_with_upstream(
        redis.port,
        "pool_size = 1",
        "[runtime]\nworker_threads = 1\n",
    );
    let mut writer = keyward.client();
    let mut late = 0;
    for round in 0..100 {
        let stream = format!("stream:{round}");
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("group")
            .arg("$")
            .arg("MKSTREAM")
            .query(&mut writer)
            .unwrap();
        let mut reader = keyward.raw();
        reader.send(b"SELECT 0\r\n");
        assert_eq!(reader.read_line(), "+OK\r\n");
        reader.send(
            format!("XREADGROUP GROUP group consumer BLOCK 0 STREAMS {stream} >\r\n").as_bytes(),
        );
        let _: i64 = writer.del(&stream).unwrap();
        let reply = reader.read_line();
        if !reply.starts_with("-UNBLOCKED") {
            late += 1;
            eprintln!("round {round}: {reply:?}");
        }
    }
    assert!(
        late <= 5,
        "the DEL overtook the blocking read {late} times in 100"
    );
}
