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

/// A reply to a client that owes nothing else is written to its socket by the upstream
/// connection. One too large for the socket to take at once continues from where the socket
/// stopped, and what the client asked after it comes after it: a local reply, a forwarded one.
#[test]
fn a_reply_larger_than_the_socket_takes_at_once_arrives_whole_before_the_next() {
    for worker_threads in [1, 2] {
        let redis = support::RedisServer::start();
        let config = format!("[runtime]\nworker_threads = {worker_threads}\n");
        let keyward = support::Keyward::start(redis.port, &config);
        let value: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let mut client = keyward.client();
        redis::cmd("SET")
            .arg("big")
            .arg(&value)
            .query::<()>(&mut client)
            .unwrap();
        let mut raw = keyward.raw();
        raw.send(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
        // Nothing read yet: the reply fills the socket, and these wait behind it.
        std::thread::sleep(std::time::Duration::from_millis(200));
        raw.send(b"PING\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n");
        assert_eq!(raw.read_line(), format!("${}\r\n", value.len()));
        assert!(
            raw.read_exact(value.len()) == value,
            "{worker_threads} thread(s)"
        );
        assert_eq!(raw.read_exact(2), b"\r\n");
        assert_eq!(raw.read_line(), "+PONG\r\n");
        assert_eq!(raw.read_line(), ":1\r\n");
    }
}

/// Unpipelined requests one after another, each answered before the next is sent (the
/// connection writes each reply itself), mixed with local commands, which the session
/// answers: every reply is the one asked for.
#[test]
fn unpipelined_requests_get_their_own_replies_from_either_writer() {
    let (_redis, keyward) = redis_and_keyward();
    let mut raw = keyward.raw();
    for n in 1..=2_000 {
        raw.send(b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n");
        assert_eq!(raw.read_line(), format!(":{n}\r\n"));
        if n % 3 == 0 {
            raw.send(format!("ECHO e{n}\r\n").as_bytes());
            let echoed = format!("e{n}");
            assert_eq!(raw.read_line(), format!("${}\r\n", echoed.len()));
            assert_eq!(raw.read_line(), format!("{echoed}\r\n"));
        }
    }
}

/// Writes `commands` inline `SET`/`GET` pairs (after `prelude`) without reading, while another
/// thread reads the replies; returns the replies' first lines (after the prelude's).
fn pipeline_inline_without_reading(port: u16, prelude: &[u8], pairs: usize) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let prelude = prelude.to_vec();
    let writing = std::thread::spawn(move || {
        writer.write_all(&prelude).unwrap();
        let mut requests = Vec::new();
        for i in 0..pairs {
            requests.extend_from_slice(format!("SET k{i} v\r\nGET k{i}\r\n").as_bytes());
        }
        writer.write_all(&requests).unwrap();
    });
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::with_capacity(pairs * 2);
    let mut line = String::new();
    while lines.len() < pairs * 2 {
        line.clear();
        reader
            .read_line(&mut line)
            .expect("a reply for every command");
        if line.starts_with('$') {
            // The GET's value follows on its own line.
            let mut value = String::new();
            reader.read_line(&mut value).unwrap();
            line.push_str(&value);
        }
        lines.push(line.clone());
    }
    writing.join().unwrap();
    lines
}

#[test]
fn inline_pipelines_larger_than_the_upstream_queue_are_all_answered() {
    let redis = support::RedisServer::start();
    let keyward = support::Keyward::start_with_upstream(redis.port, "pool_size = 1", "");
    // Four clients at once on one shared connection, two of them after a SELECT.
    let clients: Vec<_> = (0..4)
        .map(|n| {
            let port = keyward.port;
            std::thread::spawn(move || {
                let prelude: &[u8] = if n % 2 == 0 { b"" } else { b"SELECT 9\r\n" };
                let mut lines = pipeline_inline_without_reading(port, prelude, 50_000);
                if !prelude.is_empty() {
                    assert_eq!(lines.remove(0), "+OK\r\n");
                    lines.pop();
                }
                lines
            })
        })
        .collect();
    for client in clients {
        assert_every_pair_answered(&client.join().unwrap(), "");
    }
}

/// Every `SET`/`GET` pair of [`pipeline_inline_without_reading`] got `+OK` and `v`: no error.
fn assert_every_pair_answered(lines: &[String], setup: &str) {
    let errors: Vec<_> = lines.iter().filter(|line| line.starts_with('-')).collect();
    assert!(
        errors.is_empty(),
        "{setup}: {} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    for pair in lines.chunks(2) {
        assert_eq!(pair, ["+OK\r\n", "$1\r\nv\r\n"], "{setup}");
    }
}

/// A read that a cache rule takes goes to Redis as a fill of its own (the read and the key's
/// time to live): with the upstream queue full, it waits for room as any request does, and so
/// does what the client sent after it, in force and in shadow mode alike. One worker thread:
/// the session's turn fills the queue before the connection's task can empty it.
#[test]
fn cache_fills_wait_for_room_in_a_full_upstream_queue() {
    let redis = support::RedisServer::start();
    for mode in ["enforce", "shadow"] {
        let rule = format!(
            "[runtime]\nworker_threads = 1\n[[cache]]\nname = \"all\"\nkeys = [\"k*\"]\nttl = \"1m\"\n\
             max_memory = \"64MB\"\nmode = \"{mode}\"\n"
        );
        let keyward = support::Keyward::start_with_upstream(redis.port, "pool_size = 1", &rule);
        let lines = pipeline_inline_without_reading(keyward.port, b"", 100_000);
        assert_every_pair_answered(&lines, mode);
    }
}

/// A client that waits for room in a full queue is not overtaken by the one filling it. One
/// client pipelines reads that a cache rule takes, each a fill and a batch of its own, and
/// keeps the shared connection's queue full; another asks one `INCR` at a time, each a
/// question to Redis for a global rate-limit rule first. Its questions wait for room as
/// requests do (not an error for `on_error = "deny"` to refuse), and each waits its turn: before,
/// the pipelining client took every place the connection freed and the other waited for its
/// whole pipeline (about 10 s in a debug build, past the client's 5 s).
#[test]
fn a_client_waiting_for_room_in_a_full_queue_gets_its_turn() {
    let redis = support::RedisServer::start();
    let rule = "[runtime]\nworker_threads = 1\n[[rate_limit]]\nname = \"global\"\n\
                keys = [\"g*\"]\nlimit = 1000000\nperiod = \"1h\"\nscope = \"global\"\n\
                on_error = \"deny\"\n[[cache]]\nname = \"all\"\nkeys = [\"k*\"]\nttl = \"1m\"\n\
                max_memory = \"64MB\"\nmode = \"shadow\"\n";
    let keyward = support::Keyward::start_with_upstream(redis.port, "pool_size = 1", rule);
    let port = keyward.port;
    let pipelining =
        std::thread::spawn(move || pipeline_inline_without_reading(port, b"", 100_000));
    let mut client = keyward.impatient_client();
    let mut asked = 0;
    while !pipelining.is_finished() {
        let count: Result<i64, _> = redis::cmd("INCR").arg("g").query(&mut client);
        asked += 1;
        assert_eq!(count, Ok(asked), "request {asked} beside the pipeline");
    }
    assert!(asked > 0, "the pipeline ended before the first INCR");
    assert_every_pair_answered(&pipelining.join().unwrap(), "beside global rate limit");
}

#[test]
fn a_huge_mset_and_resp_pipelines_from_many_clients_are_all_answered() {
    let redis = support::RedisServer::start();
    let keyward = support::Keyward::start_with_upstream(redis.port, "pool_size = 1", "");
    let mut client = keyward.client();
    let mut mset = redis::cmd("MSET");
    for i in 0..200_000 {
        mset.arg(format!("key:{i}")).arg(i);
    }
    let _: () = mset.query(&mut client).unwrap();
    let clients: Vec<_> = (0..8)
        .map(|n| {
            let mut client = keyward.client();
            std::thread::spawn(move || {
                let mut pipe = redis::pipe();
                for i in 0..20_000 {
                    pipe.cmd("GET")
                        .arg(format!("key:{}", (i * 8 + n) % 200_000));
                }
                let values: Vec<i64> = pipe.query(&mut client).unwrap();
                (n, values)
            })
        })
        .collect();
    for client in clients {
        let (n, values) = client.join().unwrap();
        let expected: Vec<i64> = (0..20_000).map(|i| (i * 8 + n) % 200_000).collect();
        assert_eq!(values, expected);
    }
}

/// A client killed while its next cache fill waits for room in a full queue: readers of other
/// clients joined to its fills still get their values. Redis is stalled behind a large write
/// while the first client's reads fill the shared connection's queue (each fill is a batch of
/// its own) and a second client reads the same keys.
#[test]
fn readers_joined_to_a_killed_clients_fill_get_their_values() {
    const KEYS: usize = 6_000;
    let redis = support::RedisServer::start();
    let mut direct = redis.client();
    let mut preload = redis::pipe();
    for i in 0..KEYS {
        preload
            .cmd("SET")
            .arg(format!("k{i}"))
            .arg(format!("v{i}"))
            .ignore();
    }
    let () = preload.query(&mut direct).unwrap();
    let rule = "[[cache]]\nname = \"all\"\nkeys = [\"k*\"]\nttl = \"1m\"\nmax_memory = \"64MB\"\n";
    let keyward = support::Keyward::start_with_upstream(redis.port, "pool_size = 1", rule);
    let mut first = keyward.raw();
    first.send(b"CLIENT ID\r\n");
    let first_id = first.read_line().trim().trim_start_matches(':').to_string();
    let mut second = keyward.raw();
    second.send(b"PING\r\n");
    assert_eq!(second.read_line(), "+PONG\r\n");

    let reads: Vec<u8> = (0..KEYS)
        .flat_map(|i| format!("GET k{i}\r\n").into_bytes())
        .collect();
    redis.stall_behind_large_write(&mut first);
    first.send(&reads);
    std::thread::sleep(std::time::Duration::from_millis(500));
    second.send(&reads);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut killer = keyward.raw();
    killer.send(format!("CLIENT KILL ID {first_id}\r\n").as_bytes());
    assert_eq!(killer.read_line(), ":1\r\n");
    redis.signal("CONT");

    for i in 0..KEYS {
        let header = second.read_line();
        assert!(header.starts_with('$'), "GET k{i}: {header}");
        assert_eq!(second.read_line(), format!("v{i}\r\n"), "GET k{i}");
    }
}

/// A primary with a replica that has `report:1` (`ready`), and keyward in front of them with a
/// route that sends reads of `report:*` to the replica, on one shared connection to the
/// primary.
struct Routed {
    primary: support::RedisServer,
    replica: support::RedisServer,
    keyward: support::Keyward,
}

impl Routed {
    fn start(max_lag: &str) -> Routed {
        let primary = support::RedisServer::start();
        let replica_of = ["--replicaof", "127.0.0.1", &primary.port.to_string()];
        let replica = support::RedisServer::start_with_args(&replica_of);
        let () = redis::cmd("SET")
            .arg(&["report:1", "ready"])
            .query(&mut primary.client())
            .unwrap();
        // The replica serves the key once it has loaded the primary's data, but the primary
        // lists it as online (and keyward routes to it) only once it has acknowledged that.
        let limit = std::time::Duration::from_secs(10);
        let mut on_primary = primary.client();
        let acknowledged = support::node::replicas_acknowledging(&mut on_primary, 1, limit);
        assert_eq!(acknowledged, 1, "the replica has the key");
        support::wait_for(limit, "the primary lists the replica online", || {
            let replication: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut on_primary)
                .unwrap();
            replication.contains("state=online")
        });
        let upstream = "pool_size = 1\nrequest_timeout = \"1m\"";
        let route = format!(
            "[[route]]\nname = \"reports\"\nkeys = [\"report:*\"]\nread_from = \"replica\"\n\
             max_lag = \"{max_lag}\"\n"
        );
        let keyward = support::Keyward::start_with_upstream(primary.port, upstream, &route);
        Routed {
            primary,
            replica,
            keyward,
        }
    }

    /// Reads with `reader` until one is served by the replica: the first routed reads go to
    /// the primary, until keyward has asked it about its replicas.
    fn wait_for_replica_reads(&self, reader: &mut redis::Connection) {
        let limit = std::time::Duration::from_secs(10);
        support::wait_for(limit, "the replica serves routed reads", || {
            let before = support::node::gets_served(self.replica.port);
            let value: Option<String> = redis::cmd("GET").arg("report:1").query(reader).unwrap();
            assert_eq!(value.as_deref(), Some("ready"));
            support::node::gets_served(self.replica.port) > before
        });
    }
}

/// A client that pipelines a read after its write reads what it wrote, however long Redis
/// takes to answer the write: the read goes to the primary behind it, even once the route's
/// `max_lag` has passed since the client sent it. The primary is stopped meanwhile.
#[test]
fn a_routed_read_never_overtakes_its_clients_unanswered_write() {
    let routed = Routed::start("1s");
    routed.wait_for_replica_reads(&mut routed.keyward.client());
    let mut client = routed.keyward.raw();
    routed.primary.signal("STOP");
    client.send(b"SET report:1 written\r\n");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    client.send(b"GET report:1\r\n");
    std::thread::sleep(std::time::Duration::from_millis(200));
    routed.primary.signal("CONT");
    assert_eq!(client.read_line(), "+OK\r\n");
    assert_eq!(client.read_line(), "$7\r\n");
    assert_eq!(client.read_line(), "written\r\n");
}

/// A read a route sends to a replica goes there at once, even when the shared connection to
/// the primary has no room left: it takes no place in that connection's queue. The primary is
/// stalled behind a large write while another client's writes fill the queue.
#[test]
fn reads_routed_to_a_replica_wait_for_no_room_on_the_primary() {
    const WRITES: usize = 6_000;
    let routed = Routed::start("1m");
    let (primary, replica, keyward) = (&routed.primary, &routed.replica, &routed.keyward);
    // The stalled connection is not reset while the test runs: a read waiting for it would
    // wait until the primary resumes, which it does only once the read is answered (the
    // reader gives up after 5 s).
    let mut reader = keyward.impatient_client();
    routed.wait_for_replica_reads(&mut reader);

    let mut writer = keyward.raw();
    primary.stall_behind_large_write(&mut writer);
    for i in 0..WRITES {
        writer.send(format!("SET k{i} v\r\n").as_bytes());
        std::thread::sleep(std::time::Duration::from_micros(300));
    }
    let served_before = support::node::gets_served(replica.port);
    let answer: redis::RedisResult<Option<String>> =
        redis::cmd("GET").arg("report:1").query(&mut reader);
    match answer {
        Ok(value) => assert_eq!(value.as_deref(), Some("ready")),
        Err(error) => panic!("no answer while the primary is stalled: {error}"),
    }
    assert_eq!(support::node::gets_served(replica.port), served_before + 1);
    primary.signal("CONT");
    for i in 0..=WRITES {
        assert_eq!(writer.read_line(), "+OK\r\n", "write {i}");
    }
}
