//! The harness's Redis Cluster, checked against the real thing before tests of keyward lean
//! on it: its shape, where a key's slot is served, a slot moved by hand, a failover.

mod support;

use std::time::{Duration, Instant};

use redis::{Connection, ErrorKind, RedisResult};
use support::cluster::RedisCluster;
use support::node::replicas_acknowledging;

/// A key with a hash tag: only `bar` is hashed, to slot 5061.
const KEY: &str = "foo{bar}";
const SLOT: u16 = 5061;

fn get(client: &mut Connection) -> RedisResult<Option<String>> {
    redis::cmd("GET").arg(KEY).query(client)
}

fn set(client: &mut Connection, value: &str) {
    let () = redis::cmd("SET").arg(KEY).arg(value).query(client).unwrap();
}

/// How a `GET` of [`KEY`] on `client` is redirected (`MOVED`, `ASK`), and to which port.
fn redirection(client: &mut Connection) -> (ErrorKind, u16) {
    let err = get(client).expect_err("a redirection");
    let (address, slot) = err.redirect_node().expect("a redirection");
    assert_eq!(slot, SLOT);
    let port = address
        .strip_prefix("127.0.0.1:")
        .expect("a loopback address");
    (err.kind(), port.parse().expect("a port"))
}

#[test]
fn three_primaries_with_a_replica_each() {
    let cluster = RedisCluster::shared();
    let primaries = cluster.primaries();
    let replicas = cluster.replicas();
    assert_eq!((primaries.len(), replicas.len()), (3, 3));
    let mut roles = [primaries.clone(), replicas].concat();
    roles.sort_unstable();
    let mut ports = cluster.ports();
    ports.sort_unstable();
    assert_eq!(roles, ports);
    assert!(primaries.contains(&cluster.seed_port()));
    let mut ids: Vec<String> = ports.iter().map(|&port| cluster.node_id(port)).collect();
    assert!(ids.iter().all(|id| id.len() == 40));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6);
}

#[test]
fn the_owner_of_a_slot_serves_its_keys_and_the_others_redirect() {
    let cluster = RedisCluster::shared();
    assert_eq!(cluster.key_slot(KEY), SLOT);
    let owner = cluster.slot_owner(SLOT);
    set(&mut cluster.client(owner), "served");
    for other in cluster
        .primaries()
        .into_iter()
        .filter(|&port| port != owner)
    {
        assert_eq!(
            redirection(&mut cluster.client(other)),
            (ErrorKind::Moved, owner)
        );
    }
}

#[test]
fn a_slot_moves_with_its_keys() {
    let cluster = RedisCluster::start();
    let first = cluster.slot_owner(SLOT);
    let others: Vec<u16> = cluster
        .primaries()
        .into_iter()
        .filter(|&port| port != first)
        .collect();
    let (second, third) = (others[0], others[1]);
    set(&mut cluster.client(first), "moved");

    cluster.migrate_slot(SLOT, first, second);
    assert_eq!(cluster.slot_owner(SLOT), second);
    assert_eq!(
        get(&mut cluster.client(second)).unwrap().as_deref(),
        Some("moved")
    );
    assert_eq!(
        redirection(&mut cluster.client(first)),
        (ErrorKind::Moved, second)
    );

    // In steps: the source serves the keys it still holds, then sends clients to the target.
    cluster.begin_migration(SLOT, second, third);
    assert_eq!(
        get(&mut cluster.client(second)).unwrap().as_deref(),
        Some("moved")
    );
    cluster.move_keys(SLOT, second, third);
    assert_eq!(
        redirection(&mut cluster.client(second)),
        (ErrorKind::Ask, third)
    );
    cluster.finish_migration(SLOT, third);
    assert_eq!(cluster.slot_owner(SLOT), third);
    assert_eq!(
        get(&mut cluster.client(third)).unwrap().as_deref(),
        Some("moved")
    );
    assert_eq!(
        redirection(&mut cluster.client(first)),
        (ErrorKind::Moved, third)
    );
}

#[test]
fn a_killed_primary_is_replaced_by_its_replica() {
    let mut cluster = RedisCluster::start();
    let owner = cluster.slot_owner(SLOT);
    let mut client = cluster.client(owner);
    set(&mut client, "kept");
    let copies = replicas_acknowledging(&mut client, 1, Duration::from_secs(5));
    assert_eq!(copies, 1, "the replica has the key");
    let replicas = cluster.replicas();

    let killed = Instant::now();
    cluster.kill_node(owner);
    cluster.wait_until_healthy();
    eprintln!("failover took {:?}", killed.elapsed());

    let new_owner = cluster.slot_owner(SLOT);
    assert!(replicas.contains(&new_owner));
    assert!(!cluster.ports().contains(&owner));
    assert_eq!(cluster.primaries().len(), 3);
    assert_eq!(
        get(&mut cluster.client(new_owner)).unwrap().as_deref(),
        Some("kept")
    );
}
