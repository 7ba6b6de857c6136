//! Read caching through a running keyward, checked against Redis's own `INFO commandstats`:
//! hits never reach Redis, and no write, expiry or flush leaves a stale value behind.

mod support;

use std::time::{Duration, Instant};

use redis::Value;
use support::{
    http_get, keyward_with_invalidations, metric_value, redis_calls, wait_for, Keyward, RedisServer,
};

const PROFILES: &str = "[[cache]]\nname = \"profiles\"\nkeys = [\"user:*\", \"counter:*\"]\nttl = \"30s\"\nmax_memory = \"1MB\"\n";

fn stats(keyward: &Keyward) -> String {
    redis::cmd("KEYWARD")
        .arg(&["CACHE", "STATS"])
        .query(&mut keyward.client())
        .expect("KEYWARD CACHE STATS")
}

/// A figure of the first rule in `KEYWARD CACHE STATS` (e.g. `hits`).
fn stat(keyward: &Keyward, name: &str) -> u64 {
    let text = stats(keyward);
    let line = text
        .lines()
        .find(|line| line.starts_with("rule:"))
        .expect("a rule line");
    line.split(' ')
        .find_map(|field| field.strip_prefix(&format!("{name}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

fn get(connection: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(connection).unwrap()
}

/// Reads `key` until it reads `expected`, failing the test with `what` after `within`.
fn read_until(
    client: &mut redis::Connection,
    key: &str,
    expected: Option<&str>,
    within: Duration,
    what: &str,
) {
    wait_for(within, what, || get(client, key).as_deref() == expected);
}

fn set(connection: &mut redis::Connection, key: &str, value: &str) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(connection)
        .unwrap();
}

#[test]
fn hits_are_answered_without_redis() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    set(&mut redis.client(), "user:1", "alice");
    let mut client = keyward.client();
    for _ in 0..5 {
        assert_eq!(get(&mut client, "user:1").as_deref(), Some("alice"));
    }
    assert_eq!(redis_calls(&redis, "get"), 1);
    assert_eq!((stat(&keyward, "hits"), stat(&keyward, "misses")), (4, 1));

    // Keys no rule names are never cached.
    for _ in 0..3 {
        assert_eq!(get(&mut client, "session:1"), None);
    }
    assert_eq!(redis_calls(&redis, "get"), 4);
}

#[test]
fn writes_through_keyward_invalidate_at_once() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    let (mut reader, mut writer) = (keyward.client(), keyward.client());
    set(&mut writer, "user:1", "alice");
    assert_eq!(get(&mut reader, "user:1").as_deref(), Some("alice"));
    assert_eq!(get(&mut reader, "user:1").as_deref(), Some("alice"));
    set(&mut writer, "user:1", "bob");
    assert_eq!(get(&mut reader, "user:1").as_deref(), Some("bob"));

    let () = redis::cmd("HSET")
        .arg(&["user:2", "name", "carol"])
        .query(&mut writer)
        .unwrap();
    let read = |reader: &mut redis::Connection| -> Vec<String> {
        redis::cmd("HGETALL").arg("user:2").query(reader).unwrap()
    };
    assert_eq!(read(&mut reader), ["name", "carol"]);
    assert_eq!(read(&mut reader), ["name", "carol"]);
    let () = redis::cmd("HSET")
        .arg(&["user:2", "name", "dave"])
        .query(&mut writer)
        .unwrap();
    assert_eq!(read(&mut reader), ["name", "dave"]);

    let () = redis::cmd("DEL").arg("user:1").query(&mut writer).unwrap();
    assert_eq!(get(&mut reader, "user:1"), None);

    // A script's declared keys count as written.
    set(&mut writer, "counter:1", "1");
    assert_eq!(get(&mut reader, "counter:1").as_deref(), Some("1"));
    let _: i64 = redis::cmd("EVAL")
        .arg(&["return redis.call('INCR', KEYS[1])", "1", "counter:1"])
        .query(&mut writer)
        .unwrap();
    assert_eq!(get(&mut reader, "counter:1").as_deref(), Some("2"));
}

#[test]
fn a_pipelined_write_is_never_overtaken_by_a_cached_read() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    let mut writer = keyward.client();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let mut reader = keyward.client();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    let _ = get(&mut reader, "user:9");
                }
            })
        })
        .collect();
    // Other clients keep reading (and filling) the key while this one writes and reads it
    // back in one pipeline: it must always see its own write.
    for round in 0..500 {
        let value = round.to_string();
        let ((), read): ((), String) = redis::pipe()
            .cmd("SET")
            .arg(&["user:9", &value])
            .cmd("GET")
            .arg("user:9")
            .query(&mut writer)
            .unwrap();
        assert_eq!(read, value, "round {round}");
        assert_eq!(get(&mut writer, "user:9").as_deref(), Some(value.as_str()));
    }
    for reader in readers {
        reader.join().unwrap();
    }
}

#[test]
fn writes_straight_to_redis_are_seen_within_milliseconds() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    let mut direct = redis.client();
    let mut reader = keyward.client();
    let mut slowest = Duration::ZERO;
    let rounds = 2000;
    for round in 0..rounds {
        let previous = get(&mut reader, "user:7");
        if round > 0 {
            assert_eq!(previous, Some((round - 1).to_string()));
        }
        set(&mut direct, "user:7", &round.to_string());
        let acknowledged = Instant::now();
        // The invalidation travels from Redis to keyward while the write's reply travels to
        // this client: a read right after may still see the old value, but not for long.
        loop {
            if get(&mut reader, "user:7") == Some(round.to_string()) {
                break;
            }
            assert!(
                acknowledged.elapsed() < Duration::from_millis(50),
                "round {round}: still the old value 50 ms after the write"
            );
        }
        slowest = slowest.max(acknowledged.elapsed());
    }
    eprintln!("slowest invalidation seen: {slowest:?}");
    assert!(
        stat(&keyward, "hits") >= rounds / 2,
        "the cache was in use: {}",
        stats(&keyward)
    );
}

#[test]
fn expiry_and_flushes_invalidate() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    let mut direct = redis.client();
    let mut reader = keyward.client();

    let () = redis::cmd("SET")
        .arg(&["user:1", "short-lived", "PX", "100"])
        .query(&mut direct)
        .unwrap();
    assert_eq!(get(&mut reader, "user:1").as_deref(), Some("short-lived"));
    assert_eq!(get(&mut reader, "user:1").as_deref(), Some("short-lived"));
    // Redis expires the key by itself (its active expiry cycle) and tells keyward; the
    // rule's ttl is 30 s, so only the invalidation can end the entry this soon.
    read_until(
        &mut reader,
        "user:1",
        None,
        Duration::from_secs(3),
        "the expired key reads as nil",
    );
    // And an entry never outlives the key as it was when read, whenever Redis's own expiry
    // cycle gets to the key.
    let () = redis::cmd("SET")
        .arg(&["user:5", "brief", "PX", "100"])
        .query(&mut direct)
        .unwrap();
    assert_eq!(get(&mut reader, "user:5").as_deref(), Some("brief"));
    assert_eq!(get(&mut reader, "user:5").as_deref(), Some("brief"));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(get(&mut reader, "user:5"), None);
    // The same for each element of an MGET.
    let () = redis::cmd("SET")
        .arg(&["user:6", "brief", "PX", "100"])
        .query(&mut direct)
        .unwrap();
    set(&mut direct, "user:8", "kept");
    let mget = |reader: &mut redis::Connection| -> Vec<Option<String>> {
        redis::cmd("MGET")
            .arg(&["user:6", "user:8"])
            .query(reader)
            .unwrap()
    };
    let both = [Some("brief".to_string()), Some("kept".to_string())];
    assert_eq!(mget(&mut reader), both);
    let mgets = redis_calls(&redis, "mget");
    assert_eq!(mget(&mut reader), both);
    assert_eq!(
        redis_calls(&redis, "mget"),
        mgets,
        "the second MGET is a hit"
    );
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(mget(&mut reader), [None, Some("kept".to_string())]);

    set(&mut direct, "user:2", "kept");
    assert_eq!(get(&mut reader, "user:2").as_deref(), Some("kept"));
    let () = redis::cmd("FLUSHALL").query(&mut direct).unwrap();
    read_until(
        &mut reader,
        "user:2",
        None,
        Duration::from_millis(500),
        "FLUSHALL reaches the cache",
    );

    // A flush through keyward drops everything at once.
    set(&mut direct, "user:3", "kept");
    assert_eq!(get(&mut reader, "user:3").as_deref(), Some("kept"));
    let () = redis::cmd("FLUSHDB").query(&mut keyward.client()).unwrap();
    assert_eq!(get(&mut reader, "user:3"), None);
}

#[test]
fn losing_the_invalidation_connection_flushes_the_cache() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    let mut direct = redis.client();
    let mut reader = keyward.client();
    set(&mut direct, "user:1", "before");
    assert_eq!(get(&mut reader, "user:1").as_deref(), Some("before"));
    assert_eq!(get(&mut reader, "user:1").as_deref(), Some("before"));

    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut direct).unwrap();
    let id = clients
        .lines()
        .find(|line| line.contains("name=keyward-invalidations"))
        .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .expect("keyward's invalidation connection in CLIENT LIST")
        .to_string();
    let () = redis::cmd("CLIENT")
        .arg(&["KILL", "ID", &id])
        .query(&mut direct)
        .map(|_: i64| ())
        .unwrap();
    wait_for(Duration::from_secs(5), "keyward notices the loss", || {
        let (_, metrics) = http_get(keyward.admin_port, "/metrics");
        metric_value(
            &metrics,
            "keyward_cache_invalidation_connection_lost_total",
            &[],
        ) >= 1.0
    });
    // Written while no invalidation could reach keyward: the flush makes it visible.
    set(&mut direct, "user:1", "after");
    assert_eq!(get(&mut reader, "user:1").as_deref(), Some("after"));

    // Back in service once the connection is.
    wait_for(
        Duration::from_secs(5),
        "the invalidation connection is back",
        || stats(&keyward).contains("invalidations:up"),
    );
    let calls = redis_calls(&redis, "get");
    assert_eq!(get(&mut reader, "user:1").as_deref(), Some("after"));
    assert_eq!(get(&mut reader, "user:1").as_deref(), Some("after"));
    assert_eq!(redis_calls(&redis, "get"), calls + 1);
    set(&mut direct, "user:1", "later");
    read_until(
        &mut reader,
        "user:1",
        Some("later"),
        Duration::from_millis(500),
        "the new connection invalidates",
    );
}

#[test]
fn concurrent_misses_share_one_read() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    set(&mut redis.client(), "user:1", "popular");
    let mut readers: Vec<redis::Connection> = (0..100).map(|_| keyward.client()).collect();
    // While Redis is stopped, every reader's miss arrives before the first read is answered.
    redis.signal("STOP");
    let handles: Vec<_> = readers
        .drain(..)
        .map(|mut reader| std::thread::spawn(move || get(&mut reader, "user:1")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    redis.signal("CONT");
    for handle in handles {
        assert_eq!(handle.join().unwrap().as_deref(), Some("popular"));
    }
    assert_eq!(redis_calls(&redis, "get"), 1);
}

#[test]
fn memory_stays_within_max_memory() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(
        &redis,
        "[[cache]]\nname = \"blobs\"\nkeys = [\"blob:*\"]\nttl = \"1m\"\nmax_memory = \"256KB\"\n",
    );
    let value = "x".repeat(20_000);
    let mut direct = redis.client();
    let mut reader = keyward.client();
    for index in 0..100 {
        let key = format!("blob:{index}");
        set(&mut direct, &key, &value);
        assert_eq!(get(&mut reader, &key).map(|v| v.len()), Some(value.len()));
    }
    assert!(stat(&keyward, "bytes") <= 256_000, "{}", stats(&keyward));
    assert!(stat(&keyward, "evictions") > 0, "{}", stats(&keyward));
    assert!(stat(&keyward, "entries") >= 5, "{}", stats(&keyward));
}

/// An entry keeps no more memory than it is weighed at. A reply arrives in the buffer its
/// connection reads into (64 KiB, shared with the replies around it); an entry that kept a
/// slice of it would keep the whole buffer. Here each cached reply follows a large reply the
/// rule does not cache, so each would keep a buffer of its own: 1,000 entries of a few hundred
/// bytes, 64 MiB.
#[test]
fn an_entry_keeps_only_its_own_bytes() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(
        &redis,
        "[[cache]]\nname = \"small\"\nkeys = [\"small:*\"]\nttl = \"1h\"\nmax_memory = \"64MB\"\n",
    );
    let mut direct = redis.client();
    set(&mut direct, "large", &"x".repeat(60_000));
    for index in 0..1_000 {
        set(&mut direct, &format!("small:{index}"), "value");
    }
    let mut reader = keyward.client();
    let mut read_both = |index: usize| {
        assert_eq!(get(&mut reader, "large").map(|v| v.len()), Some(60_000));
        assert_eq!(
            get(&mut reader, &format!("small:{index}")).as_deref(),
            Some("value")
        );
    };
    // The connection's buffers and the allocator's arenas reach their size first.
    for index in 0..50 {
        read_both(index);
    }
    let before = keyward.resident_bytes();
    for index in 50..1_000 {
        read_both(index);
    }
    let grown = keyward.resident_bytes().saturating_sub(before);
    assert_eq!(stat(&keyward, "entries"), 1_000, "{}", stats(&keyward));
    assert!(
        grown < 16 << 20,
        "950 entries of {} bytes in all grew keyward by {} KiB",
        stat(&keyward, "bytes"),
        grown >> 10
    );
}

#[test]
fn each_protocol_gets_its_own_reply_shape() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    let () = redis::cmd("HSET")
        .arg(&["user:1", "name", "alice"])
        .query(&mut redis.client())
        .unwrap();
    let mut resp2 = keyward.raw();
    let mut resp3 = keyward.raw();
    resp3.send(b"HELLO 3\r\n");
    let hello = resp3.read_line();
    assert!(hello.starts_with('%'), "{hello}");
    // Skip the rest of HELLO's map by asking for something with a known reply after it.
    resp3.send(b"PING\r\n");
    while resp3.read_line() != "+PONG\r\n" {}
    let reply = |client: &mut support::RawClient| -> String {
        client.send(b"HGETALL user:1\r\n");
        (0..5).map(|_| client.read_line()).collect()
    };
    for _ in 0..2 {
        assert_eq!(reply(&mut resp2), "*2\r\n$4\r\nname\r\n$5\r\nalice\r\n");
        assert_eq!(reply(&mut resp3), "%1\r\n$4\r\nname\r\n$5\r\nalice\r\n");
    }
    assert_eq!(redis_calls(&redis, "hgetall"), 2);
}

#[test]
fn transactions_neither_read_nor_fill_the_cache() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    let mut client = keyward.client();
    set(&mut client, "user:1", "alice");
    let (hits, misses) = (stat(&keyward, "hits"), stat(&keyward, "misses"));
    let (value,): (String,) = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg("user:1")
        .query(&mut client)
        .unwrap();
    assert_eq!(value, "alice");
    assert_eq!(
        (stat(&keyward, "hits"), stat(&keyward, "misses")),
        (hits, misses)
    );
    // Cached now, and still not served inside MULTI.
    assert_eq!(get(&mut client, "user:1").as_deref(), Some("alice"));
    let calls = redis_calls(&redis, "get");
    let (value,): (String,) = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg("user:1")
        .query(&mut client)
        .unwrap();
    assert_eq!(value, "alice");
    assert_eq!(redis_calls(&redis, "get"), calls + 1);
}

#[test]
fn pipelines_mix_hits_and_misses_in_order() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    let mut client = keyward.client();
    set(&mut client, "user:1", "one");
    set(&mut client, "user:2", "two");
    assert_eq!(get(&mut client, "user:1").as_deref(), Some("one"));
    let (a, (), b, c, all, counter, a_again): (
        String,
        (),
        String,
        Option<String>,
        Vec<Option<String>>,
        i64,
        String,
    ) = redis::pipe()
        .cmd("GET")
        .arg("user:1")
        .cmd("SET")
        .arg(&["user:2", "deux"])
        .cmd("GET")
        .arg("user:2")
        .cmd("GET")
        .arg("user:3")
        .cmd("MGET")
        .arg(&["user:1", "user:2", "user:3"])
        .cmd("INCR")
        .arg("plain")
        .cmd("GET")
        .arg("user:1")
        .query(&mut client)
        .unwrap();
    assert_eq!((a.as_str(), b.as_str(), c), ("one", "deux", None));
    assert_eq!(all, [Some("one".into()), Some("deux".into()), None]);
    assert_eq!((counter, a_again.as_str()), (1, "one"));

    // MGET elements are cached per key. The pipeline's MGET filled nothing: it was read
    // while the SET of user:2 before it was unanswered. The next one fills, the last hits.
    let mgets = redis_calls(&redis, "mget");
    for _ in 0..2 {
        let both: Vec<String> = redis::cmd("MGET")
            .arg(&["user:2", "user:1"])
            .query(&mut client)
            .unwrap();
        assert_eq!(both, ["deux", "one"]);
    }
    assert_eq!(redis_calls(&redis, "mget"), mgets + 1);
}

#[test]
fn nil_is_cached_only_when_asked() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(
        &redis,
        "[[cache]]\nname = \"with-nil\"\nkeys = [\"nil:*\"]\nttl = \"30s\"\nmax_memory = \"1MB\"\ncache_nil = true\n\n\
         [[cache]]\nname = \"without-nil\"\nkeys = [\"plain:*\"]\nttl = \"30s\"\nmax_memory = \"1MB\"\n",
    );
    let mut client = keyward.client();
    for _ in 0..3 {
        assert_eq!(get(&mut client, "nil:1"), None);
    }
    assert_eq!(redis_calls(&redis, "get"), 1);
    for _ in 0..3 {
        assert_eq!(get(&mut client, "plain:1"), None);
    }
    assert_eq!(redis_calls(&redis, "get"), 4);
    // A cached nil goes when the key is written.
    set(&mut redis.client(), "nil:1", "now");
    read_until(
        &mut client,
        "nil:1",
        Some("now"),
        Duration::from_millis(500),
        "the cached nil is invalidated",
    );
}

#[test]
fn shadow_mode_counts_but_never_serves() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, &format!("{PROFILES}mode = \"shadow\"\n"));
    set(&mut redis.client(), "user:1", "alice");
    let mut client = keyward.client();
    for _ in 0..4 {
        assert_eq!(get(&mut client, "user:1").as_deref(), Some("alice"));
    }
    assert_eq!(redis_calls(&redis, "get"), 4);
    assert_eq!((stat(&keyward, "hits"), stat(&keyward, "misses")), (3, 1));

    // A write by another client ends what the rule would have served, as it would in force.
    set(&mut redis.client(), "user:1", "bob");
    let deadline = Instant::now() + Duration::from_secs(2);
    while stat(&keyward, "invalidations") == 0 {
        assert!(
            Instant::now() < deadline,
            "no invalidation: {}",
            stats(&keyward)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(get(&mut client, "user:1").as_deref(), Some("bob"));
    assert_eq!((stat(&keyward, "hits"), stat(&keyward, "misses")), (3, 2));
}

/// Reads sent in one pipeline by [`write_then_read_twice`].
const READS_PER_PIPELINE: usize = 500;

/// Writes `keys` straight to Redis, then reads each of them twice through keyward, in
/// pipelines of [`READS_PER_PIPELINE`]: `per_read` keys a read (`GET` for one, `MGET` for more).
///
/// A shadow rule's sample halves when a fill lands, and reads judged before then are filled
/// at the old rate: one pipeline of every read would fill as many as the machine judges
/// before Redis answers the first fills, which differs from machine to machine. An app's
/// pipelines are shorter, and so is the overshoot they leave.
fn write_then_read_twice(redis: &RedisServer, keyward: &Keyward, keys: &[String], per_read: usize) {
    let mut direct = redis::pipe();
    for key in keys {
        direct.set(key, "x").ignore();
    }
    let () = direct.query(&mut redis.client()).unwrap();
    let mut client = keyward.client();
    let pipelines = keys.chunks(READS_PER_PIPELINE * per_read);
    for pipeline in pipelines.clone().chain(pipelines) {
        let mut reads = redis::pipe();
        for group in pipeline.chunks(per_read) {
            match group {
                [key] => reads.get(key),
                _ => reads.cmd("MGET").arg(group),
            };
        }
        let replies: Vec<Value> = reads.query(&mut client).unwrap();
        for reply in &replies {
            let values: Vec<String> = match per_read {
                1 => vec![redis::from_redis_value(reply).unwrap()],
                _ => redis::from_redis_value(reply).unwrap(),
            };
            assert!(values.iter().all(|value| value == "x"), "{reply:?}");
        }
    }
}

/// A shadow rule with a `sample_rate` follows that fraction of the keys and scales its
/// figures back up: the estimates land near the exact counts, while the keys it does not
/// follow cost no fill (no tracked read, no `PTTL`).
#[test]
fn a_sampled_shadow_rule_estimates_what_the_rule_would_count() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(
        &redis,
        &format!("{PROFILES}mode = \"shadow\"\nsample_rate = 0.25\n"),
    );
    let keys: Vec<String> = (0..2_000).map(|index| format!("user:{index}")).collect();
    write_then_read_twice(&redis, &keyward, &keys, 1);
    assert_eq!(redis_calls(&redis, "get"), 4_000, "never served");
    let (hits, misses) = (stat(&keyward, "hits"), stat(&keyward, "misses"));
    // Exact: 2,000 each. A quarter of 2,000 keys followed: the count is off by ±4% at one
    // standard deviation, so ±20% fails only by a fault.
    assert!((1_600..=2_400).contains(&hits), "{}", stats(&keyward));
    assert!((1_600..=2_400).contains(&misses), "{}", stats(&keyward));
    let fills = redis_calls(&redis, "pttl");
    assert!((300..=700).contains(&fills), "{fills} fills");
}

/// A sampled shadow rule follows an `MGET` by its first key and keeps every key it read, as
/// the rule in force would: the same `MGET` again counts as a hit.
#[test]
fn a_sampled_shadow_rule_follows_an_mget_by_its_first_key() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(
        &redis,
        &format!("{PROFILES}mode = \"shadow\"\nsample_rate = 0.25\n"),
    );
    let keys: Vec<String> = (0..2_000).map(|index| format!("user:{index}")).collect();
    write_then_read_twice(&redis, &keyward, &keys, 4);
    // Exact: 500 of each. About 125 reads followed, each counted for four (±8% at one
    // standard deviation): ±40% fails only by a fault, such as keeping only the keys of a
    // read that are in the sample, which would count about 8 hits.
    for figure in ["hits", "misses"] {
        let estimate = stat(&keyward, figure);
        assert!(
            (300..=700).contains(&estimate),
            "{figure}: {}",
            stats(&keyward)
        );
    }
}

/// A shadow rule without a `sample_rate`, with room for every key the tests below read.
const MANY_KEYS_SHADOW: &str = "[[cache]]\nname = \"many\"\nkeys = [\"user:*\"]\nttl = \"1m\"\nmax_memory = \"64MB\"\nmode = \"shadow\"\n";

/// A shadow rule without a `sample_rate` follows every key until it keeps more than a few
/// thousand entries, then half as many keys, and so on: over many keys its figures become
/// estimates of what the rule would count, and the keys it no longer follows cost no fill.
#[test]
fn a_shadow_rule_over_many_keys_follows_a_sample_of_them_and_estimates_the_rest() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, MANY_KEYS_SHADOW);
    let keys: Vec<String> = (0..20_000).map(|index| format!("user:{index}")).collect();
    write_then_read_twice(&redis, &keyward, &keys, 1);
    assert_eq!(redis_calls(&redis, "get"), 40_000, "never served");
    // Exact: 20,000 of each. The rule ends up following about a quarter of the keys, each
    // counted for four (±1% at one standard deviation): ±15% fails only by a fault.
    for figure in ["hits", "misses", "entries"] {
        let estimate = stat(&keyward, figure);
        assert!(
            (17_000..=23_000).contains(&estimate),
            "{figure}: {}",
            stats(&keyward)
        );
    }
    // Every key's first read is filled until the rule keeps 8,192 entries; then half of the
    // keys', then a quarter's: about 13,000 fills in all, against 20,000 for every key.
    let fills = redis_calls(&redis, "pttl");
    assert!((10_000..=16_000).contains(&fills), "{fills} fills");
}

/// The same with `MGET`s of four keys: each read is followed by its first key, and keeps its
/// other keys, whatever their own hashes, for as long as the sample still follows it.
#[test]
fn a_shadow_rule_over_many_keys_keeps_every_key_of_the_mgets_it_follows() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, MANY_KEYS_SHADOW);
    let keys: Vec<String> = (0..20_000).map(|index| format!("user:{index}")).collect();
    write_then_read_twice(&redis, &keyward, &keys, 4);
    // Exact: 5,000 hits and misses, 20,000 entries. About 1,250 reads end up followed, each
    // counted for four (±2.5% at one standard deviation); keeping only the keys in the sample
    // would count a few hundred hits.
    for (figure, exact) in [("hits", 5_000), ("misses", 5_000), ("entries", 20_000)] {
        let estimate = stat(&keyward, figure);
        let near = exact * 4 / 5..=exact * 6 / 5;
        assert!(near.contains(&estimate), "{figure}: {}", stats(&keyward));
    }
}

/// A shadow rule keeps no replies, yet weighs each entry as the rule in force would, so that
/// it evicts as that rule would and its figures say what enforcing it would give.
#[test]
fn a_shadow_rule_weighs_entries_as_the_rule_in_force_would() {
    let redis = RedisServer::start();
    let rule =
        "[[cache]]\nname = \"blobs\"\nkeys = [\"blob:*\"]\nttl = \"1m\"\nmax_memory = \"256KB\"\n";
    let enforced = keyward_with_invalidations(&redis, rule);
    let shadow = keyward_with_invalidations(&redis, &format!("{rule}mode = \"shadow\"\n"));
    let value = "x".repeat(20_000);
    let mut direct = redis.client();
    for index in 0..100 {
        set(&mut direct, &format!("blob:{index}"), &value);
    }
    for keyward in [&enforced, &shadow] {
        let mut reader = keyward.client();
        // Each key read twice in a row: the second read finds what the first stored, if
        // the rule kept it.
        for index in (0..100).flat_map(|index| [index, index]) {
            let key = format!("blob:{index}");
            assert_eq!(get(&mut reader, &key).map(|v| v.len()), Some(value.len()));
        }
    }
    for keyward in [&enforced, &shadow] {
        assert!(stat(keyward, "bytes") <= 256_000, "{}", stats(keyward));
        assert!(stat(keyward, "evictions") > 0, "{}", stats(keyward));
        assert!(stat(keyward, "entries") >= 5, "{}", stats(keyward));
        assert_eq!(stat(keyward, "hits") + stat(keyward, "misses"), 200);
        assert!(stat(keyward, "hits") > 0, "{}", stats(keyward));
    }
    let per_entry = |keyward: &Keyward| stat(keyward, "bytes") / stat(keyward, "entries");
    assert_eq!(per_entry(&enforced), per_entry(&shadow));
}

/// A shadow rule keeps a stand-in for each read's shape (the shape itself when the read has
/// no arguments, a hash when it has): it tells the reads of a key apart exactly as the rule in
/// force does, so the two count the same hits and misses.
#[test]
fn a_shadow_rule_tells_the_reads_of_a_key_apart_as_the_rule_in_force_would() {
    let redis = RedisServer::start();
    let enforced = keyward_with_invalidations(&redis, PROFILES);
    let shadow = keyward_with_invalidations(&redis, &format!("{PROFILES}mode = \"shadow\"\n"));
    let mut direct = redis.client();
    let () = redis::cmd("HSET")
        .arg(&["user:1", "name", "alice", "email", "a@example.com"])
        .query(&mut direct)
        .unwrap();
    let () = redis::cmd("SELECT").arg(1).query(&mut direct).unwrap();
    let () = redis::cmd("HSET")
        .arg(&["user:1", "name", "bob"])
        .query(&mut direct)
        .unwrap();
    let reads: [(&[&str], u32); 6] = [
        (&["HGET", "user:1", "name"], 0),
        (&["HGET", "user:1", "email"], 0),
        (&["HLEN", "user:1"], 0),
        (&["HGETALL", "user:1"], 0),
        (&["HGET", "user:1", "name"], 1),
        (&["HLEN", "user:1"], 1),
    ];
    for keyward in [&enforced, &shadow] {
        let mut client = keyward.client();
        let mut answers = Vec::new();
        for _ in 0..3 {
            for (read, db) in reads {
                let () = redis::cmd("SELECT").arg(db).query(&mut client).unwrap();
                let answer: redis::Value = redis::cmd(read[0])
                    .arg(&read[1..])
                    .query(&mut client)
                    .unwrap();
                answers.push(answer);
            }
        }
        assert_eq!(answers[..6], answers[6..12]);
        assert_eq!(answers[..6], answers[12..]);
        let counts = (stat(keyward, "hits"), stat(keyward, "misses"));
        assert_eq!(counts, (12, 6), "{}", stats(keyward));
    }
}

#[test]
fn flush_command_and_metrics() {
    let redis = RedisServer::start();
    let keyward = keyward_with_invalidations(&redis, PROFILES);
    let mut client = keyward.client();
    set(&mut client, "user:1", "alice");
    get(&mut client, "user:1");
    get(&mut client, "user:1");
    let flushed: Value = redis::cmd("KEYWARD")
        .arg(&["CACHE", "FLUSH", "profiles"])
        .query(&mut client)
        .unwrap();
    assert_eq!(flushed, Value::Okay);
    let calls = redis_calls(&redis, "get");
    get(&mut client, "user:1");
    assert_eq!(redis_calls(&redis, "get"), calls + 1);
    let unknown = redis::cmd("KEYWARD")
        .arg(&["CACHE", "FLUSH", "nope"])
        .query::<Value>(&mut client)
        .unwrap_err();
    assert!(
        unknown.to_string().contains("no cache rule named 'nope'"),
        "{unknown}"
    );

    let (_, metrics) = http_get(keyward.admin_port, "/metrics");
    let rule = "rule=\"profiles\"";
    assert_eq!(
        metric_value(&metrics, "keyward_cache_hits_total", &[rule]),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, "keyward_cache_misses_total", &[rule]),
        2.0
    );
    assert_eq!(
        metric_value(&metrics, "keyward_cache_entries", &[rule]),
        1.0
    );
    assert!(metric_value(&metrics, "keyward_cache_bytes", &[rule]) > 0.0);
    for series in [
        "keyward_cache_invalidations_total",
        "keyward_cache_evictions_total",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}
