//! Replies come back in request order, however requests are pipelined and whoever answers.

mod support;

use std::io::Write;

use support::redis_and_keyward;

#[test]
fn ten_thousand_pipelined_incrs_arrive_in_order() {
    let (_redis, keyward) = redis_and_keyward();
    let mut client = keyward.client();
    let mut pipe = redis::pipe();
    for _ in 0..10_000 {
        pipe.cmd("INCR").arg("counter");
    }
    let replies: Vec<i64> = pipe.query(&mut client).unwrap();
    assert_eq!(replies, (1..=10_000).collect::<Vec<i64>>());
}

#[test]
fn local_and_forwarded_replies_interleave_in_order() {
    let (_redis, keyward) = redis_and_keyward();
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg("k")
        .arg("v")
        .cmd("CLIENT")
        .arg("SETNAME")
        .arg("worker")
        .cmd("GET")
        .arg("k")
        .cmd("CLIENT")
        .arg("GETNAME")
        .cmd("ECHO")
        .arg("last")
        .cmd("CLIENT")
        .arg("ID");
    let (set, setname, get, name, echo, _id): (String, String, String, String, String, i64) =
        pipe.query(&mut keyward.client()).unwrap();
    assert_eq!((set.as_str(), setname.as_str()), ("OK", "OK"));
    assert_eq!(
        (get.as_str(), name.as_str(), echo.as_str()),
        ("v", "worker", "last")
    );
}

#[test]
fn requests_split_across_reads_byte_by_byte() {
    let (_redis, keyward) = redis_and_keyward();
    let mut raw = keyward.raw();
    let requests = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
    for byte in requests {
        raw.send(&[*byte]);
    }
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert_eq!(raw.read_line(), "$5\r\n");
    assert_eq!(raw.read_line(), "hello\r\n");
}

#[test]
fn many_clients_pipelining_at_once_each_get_their_own_replies() {
    let (_redis, keyward) = redis_and_keyward();
    let threads: Vec<_> = (0..16)
        .map(|client_number| {
            let mut client = keyward.client();
            std::thread::spawn(move || {
                let key = format!("list:{client_number}");
                for round in 0..20 {
                    let mut pipe = redis::pipe();
                    for item in 0..50 {
                        pipe.cmd("RPUSH").arg(&key).arg(round * 50 + item);
                    }
                    let lengths: Vec<i64> = pipe.query(&mut client).unwrap();
                    let expected: Vec<i64> = (1..=50).map(|n| round * 50 + n).collect();
                    assert_eq!(lengths, expected);
                }
                let items: Vec<i64> = redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query(&mut client)
                    .unwrap();
                assert_eq!(items, (0..1000).collect::<Vec<i64>>());
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn a_client_that_leaves_mid_pipeline_disturbs_nobody() {
    let (_redis, keyward) = redis_and_keyward();
    let mut other = keyward.client();
    for _ in 0..20 {
        let mut leaver = std::net::TcpStream::connect(("127.0.0.1", keyward.port)).unwrap();
        let burst = b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n".repeat(2_000);
        leaver.write_all(&burst).unwrap();
        drop(leaver);
        let value: i64 = redis::cmd("INCR").arg("mine").query(&mut other).unwrap();
        assert!(value > 0);
    }
}

#[test]
fn single_threaded_runtime_keeps_every_clients_order() {
    let redis = support::RedisServer::start();
    let keyward = support::Keyward::start(redis.port, "[runtime]\nworker_threads = 1\n");
    let threads: Vec<_> = (0..8)
        .map(|n| {
            let mut client = keyward.client();
            std::thread::spawn(move || {
                let mut pipe = redis::pipe();
                for _ in 0..2_000 {
                    pipe.cmd("INCR").arg(format!("counter:{n}"));
                }
                let replies: Vec<i64> = pipe.query(&mut client).unwrap();
                assert_eq!(replies, (1..=2_000).collect::<Vec<i64>>());
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}
