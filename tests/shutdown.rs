//! SIGTERM and SIGINT: stop accepting, finish what is in flight, exit 0.

mod support;

use std::time::Duration;

use support::{Keyward, RedisServer};

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_zero() {
    let redis = RedisServer::start();
    let mut keyward = Keyward::start(redis.port, "[shutdown]\ngrace_period = \"5s\"\n");
    let mut client = keyward.client();
    let in_flight = std::thread::spawn(move || {
        let popped: Option<(String, String)> = redis::cmd("BRPOP")
            .arg("nothing")
            .arg(1)
            .query(&mut client)
            .unwrap();
        popped
    });
    std::thread::sleep(Duration::from_millis(200));
    keyward.signal("TERM");
    assert_eq!(
        in_flight.join().unwrap(),
        None,
        "the in-flight BRPOP got its own reply"
    );
    assert_eq!(keyward.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(std::net::TcpStream::connect(("127.0.0.1", keyward.port)).is_err());
}

#[test]
fn the_grace_period_bounds_the_drain() {
    let redis = RedisServer::start();
    let mut keyward = Keyward::start(redis.port, "[shutdown]\ngrace_period = \"300ms\"\n");
    let mut raw = keyward.raw();
    raw.send(b"BLPOP never 30\r\n");
    std::thread::sleep(Duration::from_millis(200));
    keyward.signal("TERM");
    assert_eq!(keyward.wait_exit(Duration::from_secs(3)), Some(0));
    assert!(
        keyward.log().contains("grace period over"),
        "{}",
        keyward.log()
    );
}

#[test]
fn sigint_exits_zero_too() {
    let redis = RedisServer::start();
    let mut keyward = Keyward::start(redis.port, "");
    let _: String = redis::cmd("PING").query(&mut keyward.client()).unwrap();
    keyward.signal("INT");
    assert_eq!(keyward.wait_exit(Duration::from_secs(3)), Some(0));
}
