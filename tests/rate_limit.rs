//! `[[rate_limit]]` rules through a running keyward. Real-time tests, with loose bounds where
//! the clock matters.

mod support;

use std::time::{Duration, Instant};

use redis::RedisResult;
use support::{metric_value, Keyward, RedisServer};

fn keyward_with(rules: &str) -> (RedisServer, Keyward) {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, rules);
    (redis, keyward)
}

fn incr(client: &mut redis::Connection, key: &str) -> RedisResult<i64> {
    redis::cmd("INCR").arg(key).query(client)
}

#[test]
fn rejects_past_the_limit_per_key_with_a_documented_error() {
    let (redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"login-attempts\"\nkeys = [\"login:*\"]\ncommands = [\"INCR\"]\nlimit = 3\nperiod = \"1h\"\n",
    );
    let mut client = keyward.client();
    for expected in 1..=3 {
        assert_eq!(incr(&mut client, "login:alice").unwrap(), expected);
    }
    let error = incr(&mut client, "login:alice").unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("RATELIMITED"), "{message}");
    assert!(
        message.contains("login-attempts login:alice retry in"),
        "{message}"
    );
    assert!(message.ends_with(" ms"), "{message}");
    assert_eq!(
        incr(&mut client, "login:bob").unwrap(),
        1,
        "buckets are per key"
    );
    assert_eq!(
        incr(&mut client, "other").unwrap(),
        1,
        "keys outside the rule are not counted"
    );
    let _: String = redis::cmd("GET")
        .arg("login:alice")
        .query(&mut client)
        .unwrap();
    let stored: i64 = redis::cmd("GET")
        .arg("login:alice")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(stored, 3, "the refused INCR never reached Redis");
}

#[test]
fn counts_per_client_name_or_address() {
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"per-client\"\ncommands = [\"INCR\"]\nlimit = 2\nperiod = \"1h\"\nbucket = \"client\"\n",
    );
    let mut named = keyward.client();
    let _: () = redis::cmd("CLIENT")
        .arg(&["SETNAME", "billing"])
        .query(&mut named)
        .unwrap();
    let mut same_name = keyward.client();
    let _: () = redis::cmd("CLIENT")
        .arg(&["SETNAME", "billing"])
        .query(&mut same_name)
        .unwrap();
    assert!(incr(&mut named, "a").is_ok());
    assert!(incr(&mut same_name, "b").is_ok());
    assert!(
        incr(&mut named, "c").is_err(),
        "one bucket for the name billing"
    );
    let mut anonymous = keyward.client();
    assert!(incr(&mut anonymous, "d").is_ok());
    assert!(incr(&mut anonymous, "e").is_ok());
    let error = incr(&mut anonymous, "f").unwrap_err().to_string();
    assert!(error.contains("per-client addr:127.0.0.1 retry"), "{error}");
}

#[test]
fn a_rule_bucket_is_shared_by_everyone() {
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"search\"\nkeys = [\"search:*\"]\nlimit = 3\nperiod = \"1h\"\nbucket = \"rule\"\n",
    );
    let mut a = keyward.client();
    let mut b = keyward.client();
    assert!(incr(&mut a, "search:x").is_ok());
    assert!(incr(&mut b, "search:y").is_ok());
    assert!(incr(&mut a, "search:z").is_ok());
    assert!(incr(&mut b, "search:w").is_err());
}

#[test]
fn delay_holds_the_command_and_what_follows_it_in_order() {
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"slow\"\nkeys = [\"slow:*\"]\nlimit = 4\nperiod = \"1s\"\nburst = 1\naction = \"delay\"\nmax_delay = \"2s\"\n",
    );
    let mut client = keyward.client();
    let started = Instant::now();
    let mut pipe = redis::pipe();
    pipe.cmd("INCR")
        .arg("slow:a")
        .cmd("INCR")
        .arg("slow:a")
        .cmd("INCR")
        .arg("slow:a")
        .cmd("GET")
        .arg("slow:a");
    let replies: (i64, i64, i64, i64) = pipe.query(&mut client).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(replies, (1, 2, 3, 3), "the GET ran after the delayed INCRs");
    assert!(
        elapsed >= Duration::from_millis(400),
        "released after {elapsed:?}, expected ~500 ms"
    );
    assert!(elapsed < Duration::from_secs(3), "held for {elapsed:?}");
    let metrics = keyward.admin_get("/metrics").1;
    assert!(
        metric_value(
            &metrics,
            "keyward_ratelimit_delay_seconds_count",
            &["rule=\"slow\""]
        ) >= 2.0
    );
    // A histogram, whose buckets add up across keyward instances. Each INCR waits for its
    // turn, 250 ms after the one before it: the delays are over 100 ms (a delay of exactly
    // 250 ms may land on either side of that bucket's bound) and within a second.
    let bucket = |le: &str| {
        let le = format!("le=\"{le}\"");
        metric_value(
            &metrics,
            "keyward_ratelimit_delay_seconds_bucket",
            &["rule=\"slow\"", &le],
        )
    };
    assert_eq!(bucket("0.1"), 0.0, "{metrics}");
    assert!(bucket("1") >= 2.0, "{metrics}");
}

#[test]
fn delay_past_max_delay_rejects() {
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"tight\"\nkeys = [\"t:*\"]\nlimit = 1\nperiod = \"10s\"\naction = \"delay\"\nmax_delay = \"200ms\"\n",
    );
    let mut client = keyward.client();
    assert!(incr(&mut client, "t:1").is_ok());
    let started = Instant::now();
    let error = incr(&mut client, "t:1").unwrap_err().to_string();
    assert!(error.contains("tight t:1 retry in"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn shadow_mode_counts_and_lets_everything_through() {
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"watch\"\nkeys = [\"w:*\"]\nlimit = 2\nperiod = \"1h\"\nmode = \"shadow\"\n",
    );
    let mut client = keyward.client();
    for expected in 1..=5 {
        assert_eq!(incr(&mut client, "w:k").unwrap(), expected);
    }
    let metrics = keyward.admin_get("/metrics").1;
    assert_eq!(
        metric_value(
            &metrics,
            "keyward_ratelimit_limited_total",
            &["rule=\"watch\"", "action=\"shadow\""]
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "keyward_ratelimit_allowed_total",
            &["rule=\"watch\""]
        ),
        2.0
    );
    let stats: String = redis::cmd("KEYWARD")
        .arg(&["RATELIMIT", "STATS"])
        .query(&mut client)
        .unwrap();
    assert!(stats.contains("rule:watch allowed=2 limited=3"), "{stats}");
    assert!(stats.contains("mode=shadow"), "{stats}");
}

#[test]
fn every_matching_key_of_a_command_counts() {
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"keys\"\nkeys = [\"k:*\"]\nlimit = 1\nperiod = \"1h\"\n",
    );
    let mut client = keyward.client();
    let _: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["k:a", "other"])
        .query(&mut client)
        .unwrap();
    let error = redis::cmd("MGET")
        .arg(&["other", "k:a"])
        .query::<redis::Value>(&mut client)
        .unwrap_err();
    assert!(error.to_string().contains("keys k:a"), "{error}");
    let deleted: i64 = redis::cmd("DEL")
        .arg(&["k:b", "k:c"])
        .query(&mut client)
        .unwrap();
    assert_eq!(deleted, 0);
    let error = redis::cmd("DEL")
        .arg(&["k:c"])
        .query::<i64>(&mut client)
        .unwrap_err();
    assert!(
        error.to_string().contains("keys k:c"),
        "each key of the DEL was counted"
    );
}

#[test]
fn bursts_and_steady_streams_get_exactly_what_gcra_allows() {
    let (redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"gcra\"\nkeys = [\"g:*\"]\nlimit = 20\nperiod = \"1s\"\nburst = 10\n",
    );
    let mut client = keyward.client();
    let mut pipe = redis::pipe();
    for _ in 0..50 {
        pipe.cmd("INCR").arg("g:burst").ignore();
    }
    pipe.cmd("GET").arg("g:none");
    let _ = pipe.query::<redis::Value>(&mut client);
    let burst: i64 = redis::cmd("GET")
        .arg("g:burst")
        .query(&mut redis.client())
        .unwrap();
    assert!((10..=11).contains(&burst), "a burst of 50 allowed {burst}");

    // A steady stream at 4x the rate for 1.5 s: burst plus one per 50 ms, within one.
    let started = Instant::now();
    let mut allowed = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        if incr(&mut client, "g:steady").is_ok() {
            allowed += 1;
        }
        std::thread::sleep(Duration::from_micros(12_500));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let most = 10.0 + elapsed * 20.0;
    assert!(
        allowed as f64 <= most + 1.0 && allowed as f64 >= most - 3.0,
        "allowed {allowed} in {elapsed:.2}s, GCRA allows {most:.1}"
    );
}

#[test]
fn global_rules_share_one_limit_across_keyward_processes() {
    let redis = RedisServer::start();
    let rule = "[[rate_limit]]\nname = \"shared\"\nkeys = [\"api:*\"]\nlimit = 5\nperiod = \"1h\"\nscope = \"global\"\n";
    let first = Keyward::start(redis.port, rule);
    let second = Keyward::start(redis.port, rule);
    let mut clients = [first.client(), second.client()];
    let allowed = (0..12)
        .filter(|attempt| incr(&mut clients[attempt % 2], "api:orders").is_ok())
        .count();
    assert_eq!(allowed, 5, "two sidecars together allowed {allowed}");
    let error = incr(&mut clients[0], "api:orders").unwrap_err().to_string();
    assert!(error.contains("shared api:orders retry in"), "{error}");
    let mut direct = redis.client();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("keyward:ratelimit:{shared:api:orders}")
        .query(&mut direct)
        .unwrap();
    assert!(ttl > 0, "the bucket expires once full again (pttl {ttl})");
    assert_eq!(
        incr(&mut clients[1], "api:other").unwrap(),
        1,
        "buckets are per key"
    );
}

#[test]
fn global_rules_fall_back_to_on_error_when_redis_cannot_decide() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "noscript", "on", ">pw", "~*", "+@all", "-eval"])
        .query(&mut redis.client())
        .unwrap();
    let upstream = "username = \"noscript\"\npassword_env = \"KEYWARD_TEST_NOSCRIPT_PASSWORD\"";
    let rule = |name: &str, on_error: &str| {
        format!(
            "[[rate_limit]]\nname = \"{name}\"\nkeys = [\"{name}:*\"]\nlimit = 1\nperiod = \"1h\"\n\
             scope = \"global\"\non_error = \"{on_error}\"\n"
        )
    };
    let keyward = Keyward::start_with_env(
        redis.port,
        upstream,
        &(rule("open", "allow") + &rule("closed", "deny")),
        &[("KEYWARD_TEST_NOSCRIPT_PASSWORD", "pw")],
    );
    let mut client = keyward.client();
    assert_eq!(incr(&mut client, "open:a").unwrap(), 1);
    assert_eq!(
        incr(&mut client, "open:a").unwrap(),
        2,
        "on_error = allow lets commands through"
    );
    let error = incr(&mut client, "closed:a").unwrap_err().to_string();
    assert!(error.contains("closed closed:a unavailable"), "{error}");
    assert!(error.contains("NOPERM"), "{error}");
}

#[test]
fn a_key_named_twice_is_charged_once() {
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"once\"\nkeys = [\"q\"]\nlimit = 1\nperiod = \"1h\"\n",
    );
    let mut client = keyward.client();
    let _: () = redis::cmd("RPUSH")
        .arg(&["q", "job"])
        .query(&mut client)
        .unwrap();
    let error = redis::cmd("RPOPLPUSH")
        .arg(&["q", "q"])
        .query::<String>(&mut client);
    assert!(error.is_err(), "the RPUSH used the one cell");
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"once\"\nkeys = [\"q\"]\nlimit = 1\nperiod = \"1h\"\n",
    );
    let mut client = keyward.client();
    let moved: Option<String> = redis::cmd("RPOPLPUSH")
        .arg(&["q", "q"])
        .query(&mut client)
        .unwrap();
    assert_eq!(moved, None, "RPOPLPUSH q q costs one cell, not two");
}

#[test]
fn a_shadow_rule_does_not_hide_the_rules_after_it() {
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"trial\"\nkeys = [\"user:*\"]\nlimit = 1\nperiod = \"1h\"\nmode = \"shadow\"\n\n\
         [[rate_limit]]\nname = \"real\"\nkeys = [\"user:*\"]\nlimit = 2\nperiod = \"1h\"\n",
    );
    let mut client = keyward.client();
    assert!(incr(&mut client, "user:1").is_ok());
    assert!(incr(&mut client, "user:1").is_ok());
    let error = incr(&mut client, "user:1").unwrap_err().to_string();
    assert!(error.contains("real user:1"), "{error}");
}

/// A request a rule delays is judged again when its delay ends, from that rule on: the shadow
/// rule before it counted it once, however often it was held.
#[test]
fn a_delayed_request_is_counted_once_by_the_rules_before_the_one_that_held_it() {
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"watch\"\nkeys = [\"d:*\"]\nlimit = 100\nperiod = \"1h\"\nmode = \"shadow\"\n\n\
         [[rate_limit]]\nname = \"pace\"\nkeys = [\"d:*\"]\nlimit = 10\nperiod = \"1s\"\nburst = 1\naction = \"delay\"\nmax_delay = \"2s\"\n",
    );
    let mut client = keyward.client();
    let mut pipe = redis::pipe();
    for _ in 0..4 {
        pipe.cmd("INCR").arg("d:1");
    }
    let replies: Vec<i64> = pipe.query(&mut client).unwrap();
    assert_eq!(replies, [1, 2, 3, 4]);
    let metrics = keyward.admin_get("/metrics").1;
    let allowed = |rule: &str| {
        let rule = format!("rule=\"{rule}\"");
        metric_value(&metrics, "keyward_ratelimit_allowed_total", &[&rule])
    };
    assert_eq!((allowed("watch"), allowed("pace")), (4.0, 4.0), "{metrics}");
    let delayed = metric_value(
        &metrics,
        "keyward_ratelimit_delay_seconds_count",
        &["rule=\"pace\""],
    );
    assert!(delayed >= 3.0, "{metrics}");
}

#[test]
fn a_refusal_inside_multi_aborts_the_transaction() {
    let (redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"tx\"\nkeys = [\"limited\"]\nlimit = 1\nperiod = \"1h\"\n",
    );
    let mut client = keyward.client();
    assert!(incr(&mut client, "limited").is_ok());
    let mut raw = keyward.raw();
    raw.send(b"MULTI\r\nINCR other\r\nINCR limited\r\nEXEC\r\nGET other\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert_eq!(raw.read_line(), "+QUEUED\r\n");
    assert!(raw
        .read_line()
        .starts_with("-RATELIMITED tx limited retry in"));
    assert!(
        raw.read_line().starts_with("-EXECABORT"),
        "EXEC must not commit the rest"
    );
    assert_eq!(raw.read_line(), "$-1\r\n");
    let other: Option<i64> = redis::cmd("GET")
        .arg("other")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(other, None);
}

#[test]
fn a_held_request_is_answered_even_if_the_client_closes_its_side() {
    let (_redis, keyward) = keyward_with(
        "[[rate_limit]]\nname = \"slow\"\nkeys = [\"d:*\"]\nlimit = 5\nperiod = \"1s\"\nburst = 1\naction = \"delay\"\nmax_delay = \"1s\"\n",
    );
    let mut raw = keyward.raw();
    raw.send(b"INCR d:1\r\nINCR d:1\r\n");
    raw.shutdown_write();
    assert_eq!(raw.read_line(), ":1\r\n");
    assert_eq!(raw.read_line(), ":2\r\n", "the delayed INCR was dropped");
    assert!(raw.is_closed());
}
