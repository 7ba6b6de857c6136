//! Protocol edge cases, byte for byte: RESP3, inline commands, malformed input.

mod support;

use redis::Value;
use support::redis_and_keyward;

#[test]
fn resp3_and_resp2_clients_each_get_their_own_reply_shapes() {
    let (_redis, keyward) = redis_and_keyward();
    let mut resp2 = keyward.client();
    let mut resp3 = keyward.resp3_client();
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("field")
        .arg("value")
        .query(&mut resp2)
        .unwrap();
    let map: Value = redis::cmd("HGETALL").arg("h").query(&mut resp3).unwrap();
    assert!(matches!(map, Value::Map(_)), "RESP3 client got {map:?}");
    let flat: Value = redis::cmd("HGETALL").arg("h").query(&mut resp2).unwrap();
    assert!(matches!(flat, Value::Array(_)), "RESP2 client got {flat:?}");
}

#[test]
fn hello_3_answers_a_map_with_the_session_id() {
    let (_redis, keyward) = redis_and_keyward();
    let mut raw = keyward.raw();
    raw.send(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n");
    assert_eq!(raw.read_line(), "%7\r\n");
    let mut text = String::new();
    while !text.ends_with("modules\r\n") {
        text.push_str(&raw.read_line());
    }
    assert!(text.contains("proto\r\n:3\r\n"), "{text}");
    assert!(text.contains("$6\r\nserver\r\n$5\r\nredis\r\n"), "{text}");
    assert_eq!(raw.read_line(), "*0\r\n");
    raw.send(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n");
    assert_eq!(raw.read_line(), "_\r\n", "RESP3 nulls once HELLO 3 ran");
    raw.send(b"*2\r\n$5\r\nHELLO\r\n$1\r\n4\r\n");
    assert_eq!(raw.read_line(), "-NOPROTO unsupported protocol version\r\n");
}

#[test]
fn hello_with_setname_and_bad_options() {
    let (_redis, keyward) = redis_and_keyward();
    let mut client = keyward.client();
    let _: Value = redis::cmd("HELLO")
        .arg(2)
        .arg("SETNAME")
        .arg("named")
        .query(&mut client)
        .unwrap();
    let name: String = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query(&mut client)
        .unwrap();
    assert_eq!(name, "named");
    let error = redis::cmd("HELLO")
        .arg(2)
        .arg("BOGUS")
        .query::<Value>(&mut client)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("Syntax error in HELLO option 'BOGUS'"),
        "{error}"
    );
}

#[test]
fn inline_commands_work_like_telnet() {
    let (_redis, keyward) = redis_and_keyward();
    let mut raw = keyward.raw();
    raw.send(b"PING\r\nSET greeting \"hello world\"\r\nGET greeting\n\r\n");
    assert_eq!(raw.read_line(), "+PONG\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert_eq!(raw.read_line(), "$11\r\n");
    assert_eq!(raw.read_line(), "hello world\r\n");
}

#[test]
fn garbage_closes_only_that_connection_with_a_protocol_error() {
    let (_redis, keyward) = redis_and_keyward();
    let mut bystander = keyward.client();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut bystander)
        .unwrap();

    let cases: [(&[u8], &str); 4] = [
        (
            b"*1\r\n$3\r\nGET\r\n*x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n+PING\r\n",
            "-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*1\r\n$-7\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"SET k \"unterminated\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (garbage, expected) in cases {
        let mut raw = keyward.raw();
        raw.send(b"*1\r\n$4\r\nPING\r\n");
        raw.send(garbage);
        assert_eq!(raw.read_line(), "+PONG\r\n");
        if garbage.starts_with(b"*1\r\n$3\r\nGET") {
            assert!(raw
                .read_line()
                .starts_with("-ERR wrong number of arguments"));
        }
        assert_eq!(raw.read_line(), expected);
        assert!(
            raw.is_closed(),
            "the connection stays open after {expected}"
        );
        let value: String = redis::cmd("GET").arg("k").query(&mut bystander).unwrap();
        assert_eq!(value, "v");
    }
}

#[test]
fn random_bytes_never_take_the_proxy_down() {
    let (_redis, keyward) = redis_and_keyward();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200 {
        let mut raw = keyward.raw();
        let mut junk = Vec::new();
        for _ in 0..256 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(b"*$\r\n0123456789-+:abc "[(seed % 21) as usize]);
        }
        raw.send(&junk);
        raw.shutdown_write();
    }
    let pong: String = redis::cmd("PING").query(&mut keyward.client()).unwrap();
    assert_eq!(pong, "PONG");
}
