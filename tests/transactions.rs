//! MULTI/EXEC and WATCH run on a connection of the client's own, so they mean what they mean
//! on Redis.

mod support;

use redis::Commands;
use support::{Keyward, RedisServer};

fn shared_upstream() -> (RedisServer, Keyward) {
    let redis = RedisServer::start();
    let keyward = Keyward::start_with_upstream(redis.port, "pool_size = 1", "");
    (redis, keyward)
}

#[test]
fn multi_exec_runs_atomically() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.client();
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("a")
        .cmd("INCRBY")
        .arg("b")
        .arg(5)
        .query(&mut client)
        .unwrap();
    assert_eq!((a, b), (1, 5));
}

#[test]
fn a_watch_conflict_returns_nil() {
    let (_redis, keyward) = shared_upstream();
    let mut watcher = keyward.client();
    let mut writer = keyward.client();
    let _: () = watcher.set("balance", 10).unwrap();
    let _: () = redis::cmd("WATCH")
        .arg("balance")
        .query(&mut watcher)
        .unwrap();
    let _: () = writer.set("balance", 20).unwrap();
    let _: () = redis::cmd("MULTI").query(&mut watcher).unwrap();
    let queued: String = redis::cmd("SET")
        .arg("balance")
        .arg(0)
        .query(&mut watcher)
        .unwrap();
    assert_eq!(queued, "QUEUED");
    let result: Option<Vec<String>> = redis::cmd("EXEC").query(&mut watcher).unwrap();
    assert_eq!(result, None, "EXEC after a conflicting write must abort");
    let balance: i64 = writer.get("balance").unwrap();
    assert_eq!(balance, 20);
}

#[test]
fn another_client_does_not_land_inside_a_transaction() {
    let (_redis, keyward) = shared_upstream();
    let mut in_multi = keyward.client();
    let mut other = keyward.client();
    let _: () = redis::cmd("MULTI").query(&mut in_multi).unwrap();
    let _: String = redis::cmd("INCR").arg("n").query(&mut in_multi).unwrap();
    let value: i64 = other.incr("n", 1).unwrap();
    assert_eq!(
        value, 1,
        "the other client's INCR was queued in someone's MULTI"
    );
    let results: Vec<i64> = redis::cmd("EXEC").query(&mut in_multi).unwrap();
    assert_eq!(results, [2]);
}

#[test]
fn discard_and_errors_inside_multi() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.client();
    let _: () = redis::cmd("MULTI").query(&mut client).unwrap();
    let _: String = redis::cmd("SET")
        .arg("x")
        .arg(1)
        .query(&mut client)
        .unwrap();
    let _: () = redis::cmd("DISCARD").query(&mut client).unwrap();
    let value: Option<i64> = client.get("x").unwrap();
    assert_eq!(value, None);
    let error = redis::cmd("EXEC").query::<()>(&mut client).unwrap_err();
    assert!(error.to_string().contains("EXEC without MULTI"), "{error}");
    let info: String = redis::cmd("KEYWARD")
        .arg("INFO")
        .query(&mut client)
        .unwrap();
    assert!(
        info.contains("keyward_version"),
        "KEYWARD works on a dedicated connection"
    );
}

#[test]
fn a_pipelined_transaction_after_writes_sees_them() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.client();
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg("seen")
        .arg("before")
        .cmd("MULTI")
        .cmd("GET")
        .arg("seen")
        .cmd("EXEC");
    let (_, _, _, exec): (String, String, String, Vec<String>) = pipe.query(&mut client).unwrap();
    assert_eq!(exec, ["before"]);
}

/// A transaction opened while a script is busy: Redis accepts `MULTI`, refuses the command
/// with `-BUSY` and so aborts `EXEC`, also for a client on a database other than 0 (whose
/// connection of its own could not `SELECT` while the script runs).
#[test]
fn a_command_refused_as_busy_aborts_the_transaction() {
    let (redis, keyward) = shared_upstream();
    // keyward knows how many databases Redis has (its first connection asked), so SELECT is
    // answered by keyward and the database gets a pool: its shared connection, one beside
    // it and a spare, all open before the script starts.
    support::wait_for(
        std::time::Duration::from_secs(5),
        "keyward is ready",
        || keyward.admin_get("/readyz").0 == 200,
    );
    let mut client = keyward.raw();
    client.send(b"SELECT 9\r\n");
    assert_eq!(client.read_line(), "+OK\r\n");
    support::wait_for(
        std::time::Duration::from_secs(5),
        "keyward's connections to database 9 are open",
        || {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query(&mut redis.client())
                .unwrap();
            clients.matches(" db=9 ").count() == 3
        },
    );
    let mut runner = support::start_busy_script(&redis, &keyward);
    client.send(b"MULTI\r\nSET k v\r\nEXEC\r\n");
    assert_eq!(client.read_line(), "+OK\r\n");
    assert!(client.read_line().starts_with("-BUSY"));
    assert!(client.read_line().starts_with("-EXECABORT"));
    client.send(b"SCRIPT KILL\r\n");
    assert_eq!(client.read_line(), "+OK\r\n");
    assert!(runner.read_line().contains("killed"));
}

/// A blocked `BRPOPLPUSH` that another client's push wakes writes its destination as Redis
/// runs the push: a transaction watching the destination is aborted, as with Redis directly.
/// While it is still blocked it has written nothing, and the transaction commits.
#[test]
fn a_blocked_brpoplpush_touches_a_watched_key_only_when_it_moves_an_element() {
    let (redis, keyward) = shared_upstream();
    let mut blocked = keyward.raw();
    blocked.send(b"BRPOPLPUSH src dst 0\r\n");
    redis.wait_for_blocked_clients(1);

    let mut watching = keyward.raw();
    watching.send(b"WATCH dst\r\nMULTI\r\nGET somekey\r\nEXEC\r\n");
    for expected in ["+OK\r\n", "+OK\r\n", "+QUEUED\r\n", "*1\r\n", "$-1\r\n"] {
        assert_eq!(
            watching.read_line(),
            expected,
            "still blocked: nothing moved"
        );
    }

    watching.send(b"WATCH dst\r\nMULTI\r\nGET somekey\r\n");
    for expected in ["+OK\r\n", "+OK\r\n", "+QUEUED\r\n"] {
        assert_eq!(watching.read_line(), expected);
    }
    let pushed: i64 = keyward.client().lpush("src", "element").unwrap();
    assert_eq!(pushed, 1);
    assert_eq!(blocked.read_line(), "$7\r\n");
    assert_eq!(blocked.read_line(), "element\r\n");
    watching.send(b"EXEC\r\n");
    assert_eq!(
        watching.read_line(),
        "*-1\r\n",
        "the move touched the watched key"
    );
}

/// Commands refused inside `MULTI` when the transaction's connection has no room: Redis is
/// stalled behind a large write, and the client's commands, sent a few at a time, fill the
/// connection's queue (each refusal queues a command of its own that aborts the transaction).
/// What aborts the transaction waits for room after the commands before it, as they do,
/// instead of closing the client or overtaking them, and the commands after it wait for it.
#[test]
fn commands_refused_in_a_transaction_wait_for_room_in_a_full_queue() {
    // Each write is two batches (the command before the refusal, and the refusal's own), and a
    // command after the refusal that joins the next.
    const WRITES: usize = 3_000;
    let redis = RedisServer::start();
    let deny = "[[deny]]\nname = \"no-refused\"\nkeys = [\"refused:*\"]\n";
    let keyward = Keyward::start_with_upstream(redis.port, "pool_size = 1", deny);
    let mut client = keyward.raw();
    client.send(b"MULTI\r\n");
    assert_eq!(client.read_line(), "+OK\r\n");

    redis.stall_behind_large_write(&mut client);
    for i in 0..WRITES {
        client.send(format!("SET k{i} v\r\nSET refused:{i} v\r\nSET after{i} v\r\n").as_bytes());
        std::thread::sleep(std::time::Duration::from_micros(300));
    }
    client.send(b"EXEC\r\n");
    redis.signal("CONT");

    assert_eq!(client.read_line(), "+QUEUED\r\n", "the large SET");
    for i in 0..WRITES {
        assert_eq!(client.read_line(), "+QUEUED\r\n", "SET k{i}");
        let refusal = client.read_line();
        assert!(refusal.starts_with("-NOPERM"), "refused:{i}: {refusal}");
        assert_eq!(client.read_line(), "+QUEUED\r\n", "SET after{i}");
    }
    let exec = client.read_line();
    assert!(exec.starts_with("-EXECABORT"), "{exec}");
    client.send(b"PING\r\n");
    assert_eq!(
        client.read_line(),
        "+PONG\r\n",
        "the client stays connected"
    );
    let large: Option<String> = keyward.client().get("large").unwrap();
    assert_eq!(large, None, "the aborted transaction wrote nothing");
}

/// keyward answers its own commands itself and cannot queue them in the transaction Redis
/// keeps: inside `MULTI` it refuses them as Redis refuses a command not allowed there, and
/// `EXEC` aborts, so the client never sees a reply out of its transaction's place.
#[test]
fn keywards_own_commands_are_refused_inside_a_transaction_and_abort_it() {
    let (redis, keyward) = shared_upstream();
    let mut client = keyward.raw();
    client.send(b"MULTI\r\nSET k v\r\nKEYWARD INFO\r\nEXEC\r\n");
    assert_eq!(client.read_line(), "+OK\r\n");
    assert_eq!(client.read_line(), "+QUEUED\r\n");
    assert_eq!(
        client.read_line(),
        "-ERR Command not allowed inside a transaction\r\n"
    );
    assert!(client.read_line().starts_with("-EXECABORT"));
    let stored: Option<String> = redis.client().get("k").unwrap();
    assert_eq!(stored, None, "the aborted transaction wrote nothing");
    client.send(b"KEYWARD INFO\r\n");
    assert!(client.read_line().starts_with('$'), "answered outside one");
}

/// A transaction that subscribes leaves the connection streaming once `EXEC` runs it, no
/// longer in a transaction: what the client sends then reaches Redis, as it would directly,
/// and is not refused as if inside one.
#[test]
fn a_transaction_that_subscribes_ends_with_its_exec() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.raw();
    client.send(b"MULTI\r\nSUBSCRIBE news\r\nEXEC\r\n");
    assert_eq!(client.read_line(), "+OK\r\n");
    assert_eq!(client.read_line(), "+QUEUED\r\n");
    assert_eq!(client.read_line(), "*1\r\n", "EXEC's one reply");
    for line in ["*3", "$9", "subscribe", "$4", "news", ":1"] {
        assert_eq!(client.read_line(), format!("{line}\r\n"));
    }
    client.send(b"KEYWARD INFO\r\n");
    let reply = client.read_line();
    assert!(
        reply.starts_with("-ERR") && !reply.contains("inside a transaction"),
        "{reply}"
    );
    client.send(b"PING\r\n");
    for line in ["*2", "$4", "pong", "$0", ""] {
        assert_eq!(client.read_line(), format!("{line}\r\n"));
    }
}

/// Redis refuses `MULTI`, `EXEC` and `DISCARD` with the wrong number of arguments: the
/// refused `MULTI` starts no transaction and the refused `DISCARD` ends none, but the refused
/// `EXEC` discards the transaction. keyward's own commands are answered or refused after each
/// as the transaction Redis keeps says.
#[test]
fn a_multi_exec_or_discard_redis_refuses_leaves_the_transaction_as_redis_does() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.raw();
    let wrong_arguments = |client: &mut support::RawClient| {
        let refusal = client.read_line();
        assert!(
            refusal.starts_with("-ERR wrong number of arguments"),
            "{refusal}"
        );
    };
    let answered = |client: &mut support::RawClient| {
        if let Err(reply) = client.read_bulk() {
            panic!("answered outside a transaction: {reply}");
        }
    };
    const REFUSAL: &str = "-ERR Command not allowed inside a transaction\r\n";

    client.send(b"WATCH k\r\nMULTI extra\r\nKEYWARD INFO\r\n");
    assert_eq!(client.read_line(), "+OK\r\n");
    wrong_arguments(&mut client);
    answered(&mut client);

    client.send(b"MULTI\r\nEXEC extra\r\nKEYWARD INFO\r\nEXEC\r\n");
    assert_eq!(client.read_line(), "+OK\r\n");
    let discarded = client.read_line();
    assert!(discarded.starts_with("-EXECABORT"), "{discarded}");
    answered(&mut client);
    assert_eq!(client.read_line(), "-ERR EXEC without MULTI\r\n");

    client.send(b"MULTI\r\nDISCARD extra\r\nKEYWARD INFO\r\nEXEC\r\n");
    assert_eq!(client.read_line(), "+OK\r\n");
    wrong_arguments(&mut client);
    assert_eq!(client.read_line(), REFUSAL);
    let aborted = client.read_line();
    assert!(aborted.starts_with("-EXECABORT"), "{aborted}");
}
