//! Pub/sub through keyward: subscribers get a connection of their own; RESP2 subscribe-mode
//! rules and RESP3 pushes are Redis's own.

mod support;

use std::time::Duration;

use redis::Commands;
use support::redis_and_keyward;

#[test]
fn subscribe_and_publish_between_two_clients() {
    let (_redis, keyward) = redis_and_keyward();
    let mut subscriber = keyward.client();
    let mut publisher = keyward.client();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe("news").unwrap();
    pubsub.psubscribe("alerts.*").unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let receivers: i64 = publisher.publish("news", "hello").unwrap();
    assert_eq!(receivers, 1);
    let _: i64 = publisher.publish("alerts.disk", "full").unwrap();
    let message = pubsub.get_message().unwrap();
    assert_eq!(message.get_channel_name(), "news");
    assert_eq!(message.get_payload::<String>().unwrap(), "hello");
    let message = pubsub.get_message().unwrap();
    assert_eq!(message.get_channel_name(), "alerts.disk");
    assert_eq!(message.get_pattern::<String>().unwrap(), "alerts.*");
    assert_eq!(message.get_payload::<String>().unwrap(), "full");
}

#[test]
fn resp2_subscribe_mode_replies_byte_for_byte() {
    let (_redis, keyward) = redis_and_keyward();
    let mut raw = keyward.raw();
    raw.send(b"SUBSCRIBE a b\r\n");
    let expected =
        "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n";
    assert_eq!(
        String::from_utf8(raw.read_exact(expected.len())).unwrap(),
        expected
    );
    raw.send(b"GET k\r\n");
    assert!(raw.read_line().starts_with("-ERR Can't execute 'get'"));
    raw.send(b"PING\r\n");
    let pong = "*2\r\n$4\r\npong\r\n$0\r\n\r\n";
    assert_eq!(String::from_utf8(raw.read_exact(pong.len())).unwrap(), pong);
    let _: i64 = keyward.client().publish("b", "m").unwrap();
    let message = "*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$1\r\nm\r\n";
    assert_eq!(
        String::from_utf8(raw.read_exact(message.len())).unwrap(),
        message
    );
}

#[test]
fn resp3_pushes_arrive_between_replies() {
    let (_redis, keyward) = redis_and_keyward();
    let mut raw = keyward.raw();
    raw.send(b"HELLO 3\r\n");
    while raw.read_line() != "modules\r\n" {}
    assert_eq!(raw.read_line(), "*0\r\n");
    raw.send(b"SUBSCRIBE chat\r\n");
    let confirmation = ">3\r\n$9\r\nsubscribe\r\n$4\r\nchat\r\n:1\r\n";
    assert_eq!(
        String::from_utf8(raw.read_exact(confirmation.len())).unwrap(),
        confirmation
    );
    let _: i64 = keyward.client().publish("chat", "hi").unwrap();
    let push = ">3\r\n$7\r\nmessage\r\n$4\r\nchat\r\n$2\r\nhi\r\n";
    assert_eq!(String::from_utf8(raw.read_exact(push.len())).unwrap(), push);
    raw.send(b"SET k v\r\nGET k\r\n");
    assert_eq!(
        raw.read_line(),
        "+OK\r\n",
        "RESP3 allows commands while subscribed"
    );
    assert_eq!(raw.read_line(), "$1\r\n");
    assert_eq!(raw.read_line(), "v\r\n");
}

#[test]
fn a_subscriber_that_leaves_frees_its_connection() {
    let (redis, keyward) = redis_and_keyward();
    for _ in 0..10 {
        let mut raw = keyward.raw();
        raw.send(b"SUBSCRIBE temp\r\n");
        raw.read_line();
    }
    support::wait_until_unsubscribed(&redis, "temp", "subscriptions outlived their clients");
}

/// `UNSUBSCRIBE` and `PUNSUBSCRIBE` without arguments end every subscription in Redis too, in
/// both protocols, whether or not the client waited for its subscriptions' replies.
#[test]
fn unsubscribing_from_everything_leaves_nothing_subscribed_upstream() {
    let (_redis, keyward) = redis_and_keyward();
    let mut publisher = keyward.client();
    let cases: [(&[u8], &[u8], &str); 4] = [
        (b"", b"SUBSCRIBE chan1 chan2\r\n", "UNSUBSCRIBE\r\n"),
        (
            b"HELLO 3\r\n",
            b"SUBSCRIBE chan1 chan2\r\n",
            "UNSUBSCRIBE\r\n",
        ),
        (b"", b"PSUBSCRIBE chan*\r\n", "PUNSUBSCRIBE\r\n"),
        (b"SELECT 9\r\n", b"SUBSCRIBE chan1\r\n", "UNSUBSCRIBE\r\n"),
    ];
    for (prelude, subscribe, unsubscribe) in cases {
        for pipelined in [false, true] {
            let mut subscriber = keyward.raw();
            subscriber.send(prelude);
            if !prelude.is_empty() {
                // HELLO's map or SELECT's +OK: read up to the last line of either.
                let mut line = subscriber.read_line();
                while prelude.starts_with(b"HELLO") && !line.starts_with("*0") {
                    line = subscriber.read_line();
                }
            }
            subscriber.send(subscribe);
            if !pipelined {
                let _ = subscriber.read_line();
            }
            subscriber.send(unsubscribe.as_bytes());
            // The last unsubscribe reply counts the subscriptions left: none.
            let mut line = String::new();
            while line != ":0\r\n" {
                line = subscriber.read_line();
                assert!(!line.is_empty(), "the subscriber was closed");
            }
            let receivers: i64 = publisher.publish("chan1", "hello").unwrap();
            assert_eq!(
                receivers, 0,
                "{unsubscribe:?} after {subscribe:?} left a subscription"
            );
        }
    }
}
