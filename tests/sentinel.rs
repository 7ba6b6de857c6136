//! keyward in front of a primary that Redis Sentinel watches: it finds the primary through
//! the sentinels and follows it through failovers, asked for or forced by a crash.

mod support;

use std::time::{Duration, Instant};

use redis::Connection;
use support::node::{gets_served, replicas_acknowledging};
use support::sentinel::SentinelSet;
use support::{wait_for, Keyward};

/// keyward in sentinel mode in front of `sentinels`, with `extra` config after.
fn keyward_for(sentinels: &SentinelSet, extra: &str) -> Keyward {
    let ports = sentinels.sentinel_ports();
    let list: Vec<String> = ports
        .iter()
        .map(|port| format!("\"127.0.0.1:{port}\""))
        .collect();
    let upstream = format!(
        "topology = \"sentinel\"\nsentinels = [{}]\nmaster_name = \"{}\"\n",
        list.join(", "),
        sentinels.master_name()
    );
    // `address` is not read in sentinel mode: a sentinel's port, where no data is.
    Keyward::start_ready(ports[0], &upstream, extra)
}

fn client(keyward: &Keyward) -> Connection {
    keyward.impatient_client()
}

fn set(client: &mut Connection, key: &str, value: &str) -> redis::RedisResult<()> {
    redis::cmd("SET").arg(key).arg(value).query(client)
}

fn get(client: &mut Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(client).unwrap()
}

fn keyward_info(client: &mut Connection) -> String {
    redis::cmd("KEYWARD").arg("INFO").query(client).unwrap()
}

#[test]
fn the_primary_is_found_through_the_sentinels() {
    let sentinels = SentinelSet::shared();
    let keyward = keyward_for(sentinels, "");
    let mut client = client(&keyward);
    set(&mut client, "found", "yes").unwrap();
    let primary = sentinels.primary();
    assert_eq!(
        get(&mut sentinels.client(primary), "found").as_deref(),
        Some("yes")
    );
    let info = keyward_info(&mut client);
    assert!(info.contains("upstream_topology:sentinel\r\n"), "{info}");
    assert!(
        info.contains(&format!("sentinel_primary:127.0.0.1:{primary}\r\n")),
        "{info}"
    );
    assert!(info.contains("sentinel_master_name:shared\r\n"), "{info}");
    wait_for(
        Duration::from_secs(5),
        "keyward listens to every sentinel",
        || keyward_info(&mut client).contains("sentinels_listening:3\r\n"),
    );
    let metrics = keyward.admin_get("/metrics").1;
    let role = format!("keyward_upstream_role{{node=\"127.0.0.1:{primary}\",role=\"primary\"}} 1");
    assert!(metrics.contains(&role), "{metrics}");
}

/// Writes through keyward until one is acknowledged by `new_primary`, each with its own key,
/// every request answered (an error while keyward moves, never a hang). Returns when that
/// happened.
fn write_until_on(keyward: &Keyward, sentinels: &SentinelSet, new_primary: u16) -> Instant {
    let mut client = client(keyward);
    let mut on_node = sentinels.client(new_primary);
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let key = format!("after-failover:{attempt}");
        let asked = Instant::now();
        match set(&mut client, &key, "written") {
            Ok(()) => {
                if get(&mut on_node, &key).as_deref() == Some("written") {
                    return Instant::now();
                }
            }
            Err(error) => {
                assert!(!error.is_timeout(), "a request hung: {error}");
                assert!(asked.elapsed() < Duration::from_secs(3), "slow: {error}");
                if error.is_connection_dropped() || error.is_io_error() {
                    client = self::client(keyward);
                }
            }
        }
        assert!(Instant::now() < deadline, "never written on {new_primary}");
        std::thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

/// A failover asked of the sentinels: keyward's connections move to the new primary, without
/// a restart, and a client holding a connection of its own (a subscriber) is disconnected,
/// as Redis disconnects clients when it is demoted.
#[test]
fn a_failover_moves_keyward_to_the_new_primary() {
    let sentinels = SentinelSet::start("moving");
    let keyward = keyward_for(&sentinels, "");
    let mut client = client(&keyward);
    set(&mut client, "before", "failover").unwrap();
    let mut subscriber = keyward.raw();
    subscriber.send(b"SUBSCRIBE news\r\n");
    for line in ["*3", "$9", "subscribe", "$4", "news", ":1"] {
        assert_eq!(subscriber.read_line(), format!("{line}\r\n"));
    }
    let old = sentinels.primary();
    let new = sentinels.failover();
    assert_ne!(old, new);
    write_until_on(&keyward, &sentinels, new);
    assert!(subscriber.is_closed(), "the subscriber was disconnected");
    // A new client: the one before may have had a request failed by the move.
    let mut client = self::client(&keyward);
    assert_eq!(get(&mut client, "before").as_deref(), Some("failover"));
    let metrics = keyward.admin_get("/metrics").1;
    assert_eq!(
        support::metric_value(&metrics, "keyward_upstream_failovers_total", &[]),
        1.0
    );
    let info = keyward_info(&mut client);
    assert!(
        info.contains(&format!("sentinel_primary:127.0.0.1:{new}\r\n")),
        "{info}"
    );
}

/// A primary killed: requests fail fast (never hang) until the sentinels promote a replica,
/// and keyward serves from it soon after they announce it.
#[test]
fn a_killed_primary_is_replaced_without_a_restart() {
    let mut sentinels = SentinelSet::start("crashing");
    let keyward = keyward_for(&sentinels, "");
    let killed = sentinels.kill_primary();
    let new = sentinels.wait_for_new_primary(killed);
    let announced = Instant::now();
    let served = write_until_on(&keyward, &sentinels, new);
    // The figure the README's promise rests on; timing is for benchmarks to judge.
    eprintln!(
        "primary killed: keyward wrote on the new primary {:?} after the test saw the sentinels agree",
        served - announced
    );
}

/// With every sentinel gone, keyward keeps serving the last primary they named, and says so.
#[test]
fn without_sentinels_the_last_primary_is_kept() {
    let mut sentinels = SentinelSet::start("orphaned");
    let keyward = keyward_for(&sentinels, "");
    let mut client = client(&keyward);
    for port in sentinels.sentinel_ports() {
        sentinels.kill_sentinel(port);
    }
    wait_for(Duration::from_secs(10), "keyward notices", || {
        keyward_info(&mut client).contains("sentinels_listening:0\r\n")
    });
    let (status, body) = keyward.admin_get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("no sentinel reachable"), "{body}");
    set(&mut client, "orphaned", "still served").unwrap();
    assert_eq!(
        get(&mut client, "orphaned").as_deref(),
        Some("still served")
    );
}

/// An operator switches the primary by hand and has the sentinels monitor the new one anew
/// (`SENTINEL REMOVE`, then `MONITOR`), which starts its epoch again from 0 and announces no
/// switch. The old primary's `-READONLY` makes keyward ask the sentinels, and it moves, since
/// the primary it used says it is one no more.
#[test]
fn a_primary_monitored_anew_is_followed_once_the_old_one_steps_down() {
    let sentinels = SentinelSet::start("anew");
    let keyward = keyward_for(&sentinels, "");
    set(&mut client(&keyward), "before", "switch").unwrap();
    let old = sentinels.primary();
    let replicas = sentinels.replicas();
    let new = replicas[0];
    let run = |port: u16, args: &[&str]| {
        redis::cmd(args[0])
            .arg(&args[1..])
            .query::<redis::Value>(&mut sentinels.client(port))
            .unwrap_or_else(|err| panic!("{args:?} on {port}: {err}"));
    };
    run(new, &["REPLICAOF", "NO", "ONE"]);
    let new_port = new.to_string();
    for port in [old, replicas[1]] {
        run(port, &["REPLICAOF", "127.0.0.1", &new_port]);
    }
    for sentinel in sentinels.sentinel_ports() {
        run(sentinel, &["SENTINEL", "REMOVE", "anew"]);
        run(
            sentinel,
            &["SENTINEL", "MONITOR", "anew", "127.0.0.1", &new_port, "2"],
        );
    }
    assert_eq!(sentinels.primary(), new);
    write_until_on(&keyward, &sentinels, new);
    let info = keyward_info(&mut client(&keyward));
    assert!(
        info.contains(&format!("sentinel_primary:127.0.0.1:{new}\r\n")),
        "{info}"
    );
}

const ROUTES: &str = "[[route]]\nname = \"reports\"\nkeys = [\"report:*\"]\n\
                      read_from = \"replica\"\nmax_lag = \"2s\"\n";

/// Reads a route covers go to the replicas, taking turns; other reads, and writes, go to the
/// primary; a session that just wrote reads from the primary.
#[test]
fn routed_reads_go_to_replicas_and_the_rest_to_the_primary() {
    let sentinels = SentinelSet::start("routing");
    let keyward = keyward_for(&sentinels, ROUTES);
    let primary = sentinels.primary();
    let mut on_primary = sentinels.client(primary);
    for key in ["report:1", "other:1"] {
        let () = redis::cmd("SET")
            .arg(key)
            .arg("value")
            .query(&mut on_primary)
            .unwrap();
    }
    let acknowledged = replicas_acknowledging(&mut on_primary, 2, Duration::from_secs(5));
    assert_eq!(acknowledged, 2);
    let mut reader = client(&keyward);
    let replicas = sentinels.replicas();
    let on_replicas = || -> Vec<u64> { replicas.iter().map(|&port| gets_served(port)).collect() };
    // The first routed read makes keyward ask the primary about its replicas; the primary
    // serves routed reads until it answers.
    wait_for(
        Duration::from_secs(10),
        "a replica serves routed reads",
        || {
            let before: u64 = on_replicas().iter().sum();
            assert_eq!(get(&mut reader, "report:1").as_deref(), Some("value"));
            on_replicas().iter().sum::<u64>() > before
        },
    );
    let (primary_before, replicas_before) = (gets_served(primary), on_replicas());
    for _ in 0..20 {
        assert_eq!(get(&mut reader, "report:1").as_deref(), Some("value"));
        assert_eq!(get(&mut reader, "other:1").as_deref(), Some("value"));
    }
    let replicas_after = on_replicas();
    let served: Vec<u64> = replicas_after
        .iter()
        .zip(&replicas_before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(
        served.iter().sum::<u64>(),
        20,
        "routed reads on the replicas: {served:?}"
    );
    assert!(
        served.iter().all(|&count| count > 0),
        "both replicas take turns: {served:?}"
    );
    assert_eq!(gets_served(primary) - primary_before, 20, "the other reads");
    let metrics = keyward.admin_get("/metrics").1;
    assert!(
        support::metric_value(
            &metrics,
            "keyward_replica_reads_total",
            &["route=\"reports\""]
        ) >= 20.0
    );
    assert!(
        metrics.contains("keyward_replica_lag_seconds{node=\"127.0.0.1:"),
        "{metrics}"
    );

    // The session writes: its reads of the next max_lag go to the primary.
    let primary_before = gets_served(primary);
    set(&mut reader, "report:2", "fresh").unwrap();
    assert_eq!(get(&mut reader, "report:2").as_deref(), Some("fresh"));
    assert_eq!(
        gets_served(primary) - primary_before,
        1,
        "read from the primary"
    );
}

/// A named client's transaction while a script is busy on the primary: without spare
/// connections (the primary may change while one waits), its connection of its own opens
/// then, and Redis refuses to name it. Redis would accept `MULTI` from the client, refuse
/// the command with `-BUSY` and so abort `EXEC`; so does keyward.
#[test]
fn a_named_clients_transaction_during_a_busy_script_is_aborted_as_redis_aborts_it() {
    let sentinels = SentinelSet::start("busy");
    let keyward = keyward_for(&sentinels, "");
    let primary = sentinels.primary();
    let mut named = keyward.raw();
    named.send(b"CLIENT SETNAME app\r\n");
    assert_eq!(named.read_line(), "+OK\r\n");
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "busy-reply-threshold", "50"])
        .query(&mut sentinels.client(primary))
        .unwrap();
    let mut runner = support::RawClient::connect(primary);
    runner.send(b"EVAL \"while true do end\" 0\r\n");
    wait_for(Duration::from_secs(5), "the script is busy", || {
        let mut probe = support::RawClient::connect(primary);
        probe.send(b"PING\r\n");
        probe.read_line().starts_with("-BUSY")
    });
    named.send(b"MULTI\r\nSET busy:k v\r\nEXEC\r\n");
    assert_eq!(named.read_line(), "+OK\r\n");
    assert!(named.read_line().starts_with("-BUSY"));
    assert!(named.read_line().starts_with("-EXECABORT"));
    // The sentinels may have killed the script by now: they do once the primary seems down.
    let mut killer = support::RawClient::connect(primary);
    killer.send(b"SCRIPT KILL\r\n");
    let killed = killer.read_line();
    assert!(
        killed == "+OK\r\n" || killed.starts_with("-NOTBUSY"),
        "{killed}"
    );
    assert!(runner.read_line().contains("killed"));
    let mut after = client(&keyward);
    assert_eq!(
        get(&mut after, "busy:k"),
        None,
        "nothing of the transaction ran"
    );
}
