//! The harness's Redis Sentinel set, checked against the real thing before tests of keyward
//! lean on it: its shape as the sentinels report it, replication, a failover asked for, a
//! primary killed, a sentinel killed.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Connection;
use support::node::replicas_acknowledging;
use support::sentinel::SentinelSet;

const KEY: &str = "sentinel-harness";

fn set(client: &mut Connection, value: &str) {
    let () = redis::cmd("SET").arg(KEY).arg(value).query(client).unwrap();
}

fn get(client: &mut Connection) -> Option<String> {
    redis::cmd("GET").arg(KEY).query(client).unwrap()
}

/// Writes `value` on the primary, and checks that both replicas hold it.
fn write_and_check_replicas(sentinels: &SentinelSet, value: &str) {
    let mut primary = sentinels.client(sentinels.primary());
    set(&mut primary, value);
    assert_eq!(
        replicas_acknowledging(&mut primary, 2, Duration::from_secs(1)),
        2
    );
    for replica in sentinels.replicas() {
        assert_eq!(
            get(&mut sentinels.client(replica)).as_deref(),
            Some(value),
            "replica {replica}"
        );
    }
}

/// The ports of the servers a sentinel lists in a `SENTINEL REPLICAS` or `SENTINEL
/// SENTINELS` answer, sorted.
fn listed_ports(sentinels: &SentinelSet, sentinel: u16, subcommand: &str) -> Vec<u16> {
    let listed: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
        .arg(subcommand)
        .arg(sentinels.master_name())
        .query(&mut sentinels.client(sentinel))
        .unwrap();
    let mut ports: Vec<u16> = listed
        .iter()
        .map(|server| server["port"].parse().unwrap())
        .collect();
    ports.sort_unstable();
    ports
}

#[test]
fn one_primary_two_replicas_and_three_sentinels_that_agree() {
    let sentinels = SentinelSet::shared();
    let primary = sentinels.primary();
    let mut replicas = sentinels.replicas();
    replicas.sort_unstable();
    assert_eq!(replicas.len(), 2);
    assert!(!replicas.contains(&primary));
    let mut sentinel_ports = sentinels.sentinel_ports();
    sentinel_ports.sort_unstable();
    assert_eq!(sentinel_ports.len(), 3);
    for &sentinel in &sentinel_ports {
        let address: (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(sentinels.master_name())
            .query(&mut sentinels.client(sentinel))
            .unwrap();
        assert_eq!(address, ("127.0.0.1".to_string(), primary));
        assert_eq!(listed_ports(sentinels, sentinel, "REPLICAS"), replicas);
        let others: Vec<u16> = sentinel_ports
            .iter()
            .copied()
            .filter(|&port| port != sentinel)
            .collect();
        assert_eq!(listed_ports(sentinels, sentinel, "SENTINELS"), others);
    }
}

#[test]
fn a_write_on_the_primary_reaches_both_replicas() {
    write_and_check_replicas(SentinelSet::shared(), "replicated");
}

#[test]
fn a_failover_moves_the_primary_and_the_new_one_takes_writes() {
    let started = Instant::now();
    let sentinels = SentinelSet::start("asked-to-fail-over");
    eprintln!("the set took {:?} to start", started.elapsed());
    let old = sentinels.primary();
    let replicas = sentinels.replicas();

    let asked = Instant::now();
    let new = sentinels.failover();
    eprintln!("failover took {:?}", asked.elapsed());

    assert!(replicas.contains(&new));
    assert_eq!(sentinels.primary(), new);
    assert!(sentinels.replicas().contains(&old));
    write_and_check_replicas(&sentinels, "after the failover");
}

#[test]
fn a_killed_primary_is_replaced_within_seconds() {
    let mut sentinels = SentinelSet::start("killed-primary");
    write_and_check_replicas(&sentinels, "kept");
    let replicas = sentinels.replicas();

    let killed = Instant::now();
    let old = sentinels.kill_primary();
    let new = sentinels.wait_for_new_primary(old);
    let took = killed.elapsed();
    eprintln!("promotion took {took:?} after the kill");

    assert!(
        took < Duration::from_secs(10),
        "a replica took {took:?} to replace the killed primary"
    );
    assert!(replicas.contains(&new));
    assert_eq!(sentinels.primary(), new);
    assert_eq!(get(&mut sentinels.client(new)).as_deref(), Some("kept"));
}

#[test]
fn the_sentinels_left_still_name_the_primary() {
    let mut sentinels = SentinelSet::start("killed-sentinel");
    let primary = sentinels.primary();
    let first = sentinels.sentinel_ports()[0];

    sentinels.kill_sentinel(first);

    assert_eq!(sentinels.sentinel_ports().len(), 2);
    assert!(!sentinels.sentinel_ports().contains(&first));
    assert_eq!(sentinels.primary(), primary);
}
