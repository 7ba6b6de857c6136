//! Lock fairness through a running keyward: spin-retry lock loops become a FIFO queue, with
//! the release noticed however it happens, and Redis still deciding who holds the lock.

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{
    http_get, http_request_to, keyward_with_invalidations, metric_value, redis_calls, wait_for,
    Keyward, RedisServer,
};

const LOCKS: &str =
    "[[lock]]\nname = \"bookings\"\nkeys = [\"lock:*\"]\nmax_wait = \"5s\"\nmax_waiters = 1000\n";

/// Deletes the lock only if it still holds `token`, as redlock and redis-py release.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

fn try_lock(connection: &mut redis::Connection, key: &str, token: &str, px: u64) -> bool {
    let reply: Option<String> = redis::cmd("SET")
        .arg(&[key, token, "NX", "PX", &px.to_string()])
        .query(connection)
        .unwrap();
    reply.is_some()
}

fn release(connection: &mut redis::Connection, key: &str, token: &str) {
    let _: i64 = redis::cmd("EVAL")
        .arg(&[RELEASE, "1", key, token])
        .query(connection)
        .unwrap();
}

/// `clients` threads each take the lock once with a spin-retry loop (sleep 1–10 ms on nil),
/// hold it 5 ms, and release it with a compare-and-delete script. The first holds it 300 ms,
/// so that the others arrive while it is taken, 10 ms apart. Returns the order of first
/// attempts and the order of acquisitions (client indices).
fn contend(port: u16, clients: usize) -> (Vec<usize>, Vec<usize>) {
    let (attempts, attempted) = mpsc::channel();
    let (wins, won) = mpsc::channel();
    let url = format!("redis://127.0.0.1:{port}");
    let handles: Vec<_> = (0..clients)
        .map(|index| {
            let (attempts, wins, url) = (attempts.clone(), wins.clone(), url.clone());
            std::thread::spawn(move || {
                let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
                let token = format!("token-{index}");
                // Stagger first attempts so that their order is well defined.
                std::thread::sleep(Duration::from_millis(10 * index as u64));
                attempts.send(index).unwrap();
                let mut seed = index as u64 + 1;
                while !try_lock(&mut connection, "lock:booking", &token, 2000) {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    std::thread::sleep(Duration::from_millis(1 + (seed >> 33) % 10));
                }
                wins.send(index).unwrap();
                std::thread::sleep(Duration::from_millis(if index == 0 { 300 } else { 5 }));
                release(&mut connection, "lock:booking", &token);
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    drop((attempts, wins));
    (attempted.iter().collect(), won.iter().collect())
}

#[test]
fn spin_retry_locks_become_a_fifo_queue() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, LOCKS);
    let clients = 20;

    let before = redis_calls(&redis, "set");
    let (_, direct_order) = contend(redis.port, clients);
    let direct_sets = redis_calls(&redis, "set") - before;

    let before = redis_calls(&redis, "set");
    let (attempted, acquired) = contend(keyward.port, clients);
    let keyward_sets = redis_calls(&redis, "set") - before;

    assert_eq!(
        acquired, attempted,
        "through keyward, first come first served"
    );
    eprintln!(
        "SET commands reaching Redis: {direct_sets} direct, {keyward_sets} through keyward \
         (direct acquisition order: {direct_order:?})"
    );
    assert!(
        keyward_sets * 3 < direct_sets,
        "keyward should spare Redis most retries: {keyward_sets} vs {direct_sets}"
    );

    let (_, metrics) = http_get(keyward.admin_port, "/metrics");
    let rule = "rule=\"bookings\"";
    let granted = metric_value(&metrics, "keyward_lock_grants_total", &[rule, "after_wait"])
        + metric_value(&metrics, "keyward_lock_grants_total", &[rule, "immediate"]);
    assert_eq!(granted, clients as f64, "{metrics}");
    assert!(metric_value(&metrics, "keyward_lock_retries_saved_total", &[rule]) > 0.0);
    assert!(metric_value(&metrics, "keyward_lock_wait_seconds_count", &[rule]) >= clients as f64);
    assert_eq!(metric_value(&metrics, "keyward_lock_waiters", &[rule]), 0.0);
}

#[test]
fn an_abandoned_lock_passes_on_when_it_expires() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, LOCKS);
    assert!(try_lock(&mut keyward.client(), "lock:a", "crashed", 300));
    let started = Instant::now();
    assert!(try_lock(&mut keyward.client(), "lock:a", "next", 1000));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(600),
        "handed over {waited:?} after a 300 ms lock was taken"
    );
}

#[test]
fn a_release_straight_to_redis_is_noticed() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, LOCKS);
    assert!(try_lock(&mut redis.client(), "lock:a", "holder", 60_000));
    let waiter = {
        let mut connection = keyward.client();
        std::thread::spawn(move || {
            let started = Instant::now();
            let won = try_lock(&mut connection, "lock:a", "waiter", 1000);
            (won, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    release(&mut redis.client(), "lock:a", "holder");
    let (won, waited) = waiter.join().unwrap();
    assert!(won);
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    let holder: String = redis::cmd("GET")
        .arg("lock:a")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(holder, "waiter");
}

#[test]
fn max_wait_answers_the_nil_redis_gave() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(
        &redis,
        "[[lock]]\nname = \"short\"\nkeys = [\"lock:*\"]\nmax_wait = \"200ms\"\n",
    );
    assert!(try_lock(&mut redis.client(), "lock:a", "holder", 60_000));
    let started = Instant::now();
    assert!(!try_lock(&mut keyward.client(), "lock:a", "waiter", 1000));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(700),
        "{waited:?}"
    );
    let (_, metrics) = http_get(keyward.admin_port, "/metrics");
    assert_eq!(
        metric_value(
            &metrics,
            "keyward_lock_grants_total",
            &["rule=\"short\"", "timeout"]
        ),
        1.0
    );
}

#[test]
fn max_wait_answers_what_redis_said_to_the_last_try() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(
        &redis,
        "[[lock]]\nname = \"short\"\nkeys = [\"lock:*\"]\nmax_wait = \"600ms\"\n",
    );
    assert!(try_lock(
        &mut redis.client(),
        "lock:a",
        "first-holder",
        60_000
    ));
    let waiter = {
        let mut connection = keyward.client();
        std::thread::spawn(move || {
            let previous: Option<String> = redis::cmd("SET")
                .arg(&["lock:a", "waiter", "NX", "GET", "PX", "1000"])
                .query(&mut connection)
                .unwrap();
            previous
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Another holder takes over without a release in between: the waiter tries again, loses
    // again, and Redis names the new holder.
    let _: () = redis::cmd("SET")
        .arg(&["lock:a", "second-holder", "PX", "60000"])
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(waiter.join().unwrap().as_deref(), Some("second-holder"));
}

#[test]
fn pipelined_commands_wait_with_the_lock_attempt() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, LOCKS);
    let mut direct = redis.client();
    assert!(try_lock(&mut direct, "lock:a", "holder", 60_000));
    let waiter = {
        let mut connection = keyward.client();
        std::thread::spawn(move || {
            let replies: (Option<String>, i64, i64) = redis::pipe()
                .cmd("SET")
                .arg(&["lock:a", "waiter", "NX", "PX", "5000"])
                .cmd("INCR")
                .arg("after-lock")
                .cmd("INCR")
                .arg("after-lock")
                .query(&mut connection)
                .unwrap();
            replies
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let counter: Option<i64> = redis::cmd("GET")
        .arg("after-lock")
        .query(&mut direct)
        .unwrap();
    assert_eq!(
        counter, None,
        "commands after a waiting SET NX must wait with it"
    );
    release(&mut direct, "lock:a", "holder");
    assert_eq!(waiter.join().unwrap(), (Some("OK".into()), 1, 2));
}

#[test]
fn a_waiter_that_leaves_is_skipped() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, LOCKS);
    let mut direct = redis.client();
    assert!(try_lock(&mut direct, "lock:a", "holder", 60_000));
    let mut leaver = keyward.raw();
    leaver.send(b"SET lock:a leaver NX PX 60000\r\n");
    std::thread::sleep(Duration::from_millis(100));
    let stayer = {
        let mut connection = keyward.client();
        std::thread::spawn(move || try_lock(&mut connection, "lock:a", "stayer", 60_000))
    };
    std::thread::sleep(Duration::from_millis(100));
    drop(leaver);
    std::thread::sleep(Duration::from_millis(100));
    release(&mut direct, "lock:a", "holder");
    assert!(stayer.join().unwrap());
    let holder: String = redis::cmd("GET").arg("lock:a").query(&mut direct).unwrap();
    assert_eq!(holder, "stayer");
}

#[test]
fn two_keywards_never_grant_one_lock_twice() {
    let redis = RedisServer::start();
    let first = keyward_with_invalidations(&redis, LOCKS);
    let second = keyward_with_invalidations(&redis, LOCKS);
    let handles: Vec<_> = (0..8)
        .map(|index| {
            let port = if index % 2 == 0 {
                first.port
            } else {
                second.port
            };
            let redis_url = redis.url();
            std::thread::spawn(move || {
                let url = format!("redis://127.0.0.1:{port}");
                let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
                let mut direct = redis::Client::open(redis_url)
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let token = format!("t{index}");
                for _ in 0..5 {
                    while !try_lock(&mut connection, "lock:shared", &token, 5000) {}
                    // Inside the critical section nobody else may be.
                    let inside: i64 = redis::cmd("INCR").arg("inside").query(&mut direct).unwrap();
                    assert_eq!(inside, 1, "two holders at once");
                    std::thread::sleep(Duration::from_millis(2));
                    let _: i64 = redis::cmd("DECR").arg("inside").query(&mut direct).unwrap();
                    release(&mut connection, "lock:shared", &token);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn contended_locks_are_reported() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, LOCKS);
    let mut holder = keyward.client();
    assert!(try_lock(&mut holder, "lock:report", "first", 60_000));
    let waiters: Vec<_> = (0..2)
        .map(|index| {
            let mut connection = keyward.client();
            std::thread::spawn(move || {
                try_lock(&mut connection, "lock:report", &format!("w{index}"), 100)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = http_get(keyward.admin_port, "/locks");
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let lock = &report["locks"][0];
    assert_eq!(lock["key"], "lock:report", "{body}");
    assert_eq!(lock["rule"], "bookings");
    assert_eq!(lock["waiters"], 2);
    assert!(lock["oldest_wait_ms"].as_u64().unwrap() >= 100, "{body}");
    let text: String = redis::cmd("KEYWARD")
        .arg("LOCKS")
        .query(&mut holder)
        .unwrap();
    assert!(
        text.contains("key:lock:report rule=bookings db=0"),
        "{text}"
    );
    assert!(text.contains("waiters=2"), "{text}");
    assert_eq!(lock["holder"], "first");
    release(&mut holder, "lock:report", "first");
    // Each waiter's lock expires after 100 ms, so both get their turn.
    for waiter in waiters {
        assert!(waiter.join().unwrap());
    }
}

/// Holder tokens are the apps' secrets: with an admin token configured, `/locks` shows them
/// only to a request that carries it.
#[test]
fn lock_holders_are_shown_only_with_the_admin_token() {
    let redis = RedisServer::start();
    // The first lines of `extra` belong to keyward's `[admin]` table.
    let admin_token = format!("token_env = \"KEYWARD_ADMIN_TOKEN\"\n\n{LOCKS}");
    let keyward = Keyward::start_with_env(
        redis.port,
        "",
        &admin_token,
        &[("KEYWARD_ADMIN_TOKEN", "t0ken")],
    );
    let mut holder = keyward.client();
    assert!(try_lock(&mut holder, "lock:secret", "holder-token", 60_000));
    let mut connection = keyward.client();
    let waiter =
        std::thread::spawn(move || try_lock(&mut connection, "lock:secret", "waiter-token", 100));
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], keyward.admin_port));
    let locks = |headers: &str| {
        let (status, body) = http_request_to(admin, "GET", "/locks", headers);
        assert_eq!(status, 200, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        report["locks"][0].clone()
    };
    let with_token = "Authorization: Bearer t0ken\r\n";
    // keyward learns the holder's token when the waiter's try loses.
    wait_for(Duration::from_secs(5), "the holder is known", || {
        locks(with_token)["holder"] == "holder-token"
    });
    for headers in [
        "",
        "Authorization: Bearer t0ke\r\n",
        "Authorization: t0ken\r\n",
    ] {
        let lock = locks(headers);
        assert_eq!(lock["key"], "lock:secret", "{lock}");
        assert_eq!(
            lock["holder"],
            serde_json::Value::Null,
            "{headers:?}: {lock}"
        );
        assert_eq!(lock["holder_redacted"], true, "{headers:?}: {lock}");
    }
    let lock = locks(with_token);
    assert_eq!(lock["holder"], "holder-token", "{lock}");
    assert_eq!(lock["holder_redacted"], false, "{lock}");
    release(&mut holder, "lock:secret", "holder-token");
    assert!(waiter.join().unwrap());
}

/// Its later lock attempts, decided on after it closed, wait in no line either (`max_wait` is
/// 5 s here).
#[test]
fn a_waiter_that_half_closes_gets_its_answers_at_once() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, LOCKS);
    assert!(try_lock(&mut redis.client(), "lock:a", "holder", 60_000));
    let mut client = keyward.raw();
    client.send(b"SET lock:a waiter NX PX 1000\r\nSET lock:a again NX PX 1000\r\nPING\r\n");
    std::thread::sleep(Duration::from_millis(100));
    // As `printf ... | nc` does: the client is done sending and waits for its replies.
    let started = Instant::now();
    client.shutdown_write();
    assert_eq!(client.read_line(), "$-1\r\n");
    assert_eq!(client.read_line(), "$-1\r\n");
    assert_eq!(client.read_line(), "+PONG\r\n");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
