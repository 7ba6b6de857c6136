//! Plain commands through keyward behave as against Redis.

mod support;

use std::time::Duration;

use redis::Commands;
use support::{redis_and_keyward, redis_calls, wait_for};

#[test]
fn forwards_reads_and_writes() {
    let (redis, keyward) = redis_and_keyward();
    let mut client = keyward.client();
    let _: () = client.set("greeting", "hello").unwrap();
    let value: String = client.get("greeting").unwrap();
    assert_eq!(value, "hello");
    let direct: String = redis.client().get("greeting").unwrap();
    assert_eq!(direct, "hello");
    let missing: Option<String> = client.get("missing").unwrap();
    assert_eq!(missing, None);
}

#[test]
fn redis_errors_come_back_unchanged() {
    let (_redis, keyward) = redis_and_keyward();
    let mut client = keyward.client();
    let _: () = client.set("text", "abc").unwrap();
    let error = client.incr::<_, _, i64>("text", 1).unwrap_err();
    assert!(error.to_string().contains("not an integer"), "{error}");
    let error = redis::cmd("NOSUCHCOMMAND")
        .arg("x")
        .query::<String>(&mut client)
        .unwrap_err();
    assert!(error.to_string().contains("unknown command"), "{error}");
}

#[test]
fn unknown_commands_are_forwarded() {
    let (redis, keyward) = redis_and_keyward();
    let _ = redis::cmd("MODULE.DOES.NOT.EXIST").query::<String>(&mut keyward.client());
    assert_eq!(redis_calls(&redis, "module"), 0);
    let mut raw = keyward.raw();
    raw.send(b"*1\r\n$12\r\nFOO.BAR.BAZZ\r\n");
    assert!(raw
        .read_line()
        .starts_with("-ERR unknown command 'FOO.BAR.BAZZ'"));
}

#[test]
fn large_values_pass_through_whole() {
    let (_redis, keyward) = redis_and_keyward();
    let mut client = keyward.client();
    let big: Vec<u8> = (0..32 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let _: () = client.set("big", &big).unwrap();
    let back: Vec<u8> = client.get("big").unwrap();
    assert!(back == big, "the value changed on its way");
    let len: usize = client.strlen("big").unwrap();
    assert_eq!(len, big.len());
}

#[test]
fn keyward_info_is_answered_by_the_proxy() {
    let (redis, keyward) = redis_and_keyward();
    let info = || -> String {
        redis::cmd("KEYWARD")
            .arg("INFO")
            .query(&mut keyward.client())
            .unwrap()
    };
    assert!(info().contains("keyward_version:"), "{}", info());
    // The pool connects in the background: right after start, Redis may still show as down.
    wait_for(Duration::from_secs(10), "the upstream shows as up", || {
        info().contains("upstream_status:up")
    });
    assert!(info().contains("upstream_redis_version:"), "{}", info());
    let help: Vec<String> = redis::cmd("KEYWARD")
        .arg("HELP")
        .query(&mut keyward.client())
        .unwrap();
    assert!(help.iter().any(|line| line == "INFO"));
    assert_eq!(redis_calls(&redis, "keyward"), 0);
}

#[test]
fn quit_replies_then_closes() {
    let (_redis, keyward) = redis_and_keyward();
    let mut raw = keyward.raw();
    raw.send(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n");
    assert_eq!(raw.read_line(), "+PONG\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert!(raw.is_closed());
}

#[test]
fn max_clients_refuses_like_redis() {
    let redis = support::RedisServer::start();
    let keyward = support::Keyward::start_on_free_ports(&[], |port, admin| {
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\nmax_clients = 2\n\
             [upstream]\naddress = \"127.0.0.1:{}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n",
            redis.port
        )
    });
    let connected = |client: &mut support::RawClient| -> usize {
        client.send(b"KEYWARD INFO\r\n");
        let info = String::from_utf8(client.read_bulk().unwrap()).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("connected_clients:"))
            .unwrap()
            .parse()
            .unwrap()
    };
    let wait_until_connected = |client: &mut support::RawClient, count: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while connected(client) != count {
            assert!(
                std::time::Instant::now() < deadline,
                "clients never settled"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    let mut first = keyward.raw();
    wait_until_connected(&mut first, 1);
    let mut second = keyward.raw();
    second.send(b"PING\r\n");
    assert_eq!(second.read_line(), "+PONG\r\n");
    let mut third = keyward.raw();
    assert_eq!(third.read_line(), "-ERR max number of clients reached\r\n");
    assert!(third.is_closed());
    drop(first);
    wait_until_connected(&mut second, 1);
    let mut fourth = keyward.raw();
    fourth.send(b"PING\r\n");
    assert_eq!(fourth.read_line(), "+PONG\r\n");
}
