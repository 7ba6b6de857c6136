//! Commands that name another client by the id keyward gave it (`CLIENT ID`) reach that client:
//! `CLIENT UNBLOCK`, `CLIENT KILL ID` and `CLIENT TRACKING … REDIRECT`.

mod support;

use std::time::Duration;

use support::{redis_and_keyward, wait_for, Keyward, RawClient, RedisServer};

fn client_id(client: &mut RawClient) -> i64 {
    client.send(b"CLIENT ID\r\n");
    let line = client.read_line();
    line.trim()
        .strip_prefix(':')
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("CLIENT ID answered {line:?}"))
}

fn block_on_empty_list(redis: &RedisServer, client: &mut RawClient) {
    client.send(b"BLPOP empty-list 0\r\n");
    redis.wait_for_blocked_clients(1);
}

fn query<T: redis::FromRedisValue>(keyward: &Keyward, args: &[&str]) -> redis::RedisResult<T> {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query(&mut keyward.client())
}

#[test]
fn client_unblock_reaches_a_blocked_client_by_its_keyward_id() {
    let (redis, keyward) = redis_and_keyward();
    let mut blocked = keyward.raw();
    let id = client_id(&mut blocked).to_string();

    block_on_empty_list(&redis, &mut blocked);
    let unblocked: i64 = query(&keyward, &["CLIENT", "UNBLOCK", &id]).unwrap();
    assert_eq!(unblocked, 1);
    assert_eq!(blocked.read_line(), "*-1\r\n", "a timeout's nil reply");

    block_on_empty_list(&redis, &mut blocked);
    let unblocked: i64 = query(&keyward, &["CLIENT", "UNBLOCK", &id, "ERROR"]).unwrap();
    assert_eq!(unblocked, 1);
    assert_eq!(
        blocked.read_line(),
        "-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
    );

    // Not blocked now, nor is a client that never left the shared connections.
    let unblocked: i64 = query(&keyward, &["CLIENT", "UNBLOCK", &id]).unwrap();
    assert_eq!(unblocked, 0);
    let mut idle = keyward.raw();
    let idle_id = client_id(&mut idle).to_string();
    let unblocked: i64 = query(&keyward, &["CLIENT", "UNBLOCK", &idle_id]).unwrap();
    assert_eq!(unblocked, 0);
    // Redis still judges what is not an id keyward gave out.
    let error = query::<i64>(&keyward, &["CLIENT", "UNBLOCK", "asd"]).unwrap_err();
    assert!(error.to_string().contains("not an integer"), "got {error}");
}

#[test]
fn tracking_redirects_invalidations_to_a_subscribed_client_by_its_keyward_id() {
    let (_redis, keyward) = redis_and_keyward();
    let mut redirection = keyward.raw();
    let id = client_id(&mut redirection).to_string();
    redirection.send(b"SUBSCRIBE __redis__:invalidate\r\n");
    for _ in 0..6 {
        redirection.read_line();
    }

    let mut tracked = keyward.client();
    let _: () = redis::cmd("CLIENT")
        .arg(&["TRACKING", "on", "REDIRECT", &id])
        .query(&mut tracked)
        .unwrap();
    // Replies name the redirect as the client knows it.
    let redirect: String = redis::cmd("CLIENT")
        .arg("GETREDIR")
        .query::<i64>(&mut tracked)
        .unwrap()
        .to_string();
    assert_eq!(redirect, id);
    let info: redis::Value = redis::cmd("CLIENT")
        .arg("TRACKINGINFO")
        .query(&mut tracked)
        .unwrap();
    assert!(
        format!("{info:?}").contains(&format!("int({id})")),
        "TRACKINGINFO names the redirect by keyward's id: {info:?}"
    );
    let _: () = redis::cmd("SET")
        .arg(&["k", "1"])
        .query(&mut tracked)
        .unwrap();
    let _: String = redis::cmd("GET").arg("k").query(&mut tracked).unwrap();
    let _: () = query(&keyward, &["SET", "k", "2"]).unwrap();

    let message: Vec<String> = (0..8).map(|_| redirection.read_line()).collect();
    assert_eq!(
        message.concat(),
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nk\r\n",
    );
}

#[test]
fn tracking_cannot_redirect_to_a_client_on_shared_connections_and_says_so_at_once() {
    let (_redis, keyward) = redis_and_keyward();
    let mut shared = keyward.raw();
    let id = client_id(&mut shared).to_string();
    let error = query::<()>(&keyward, &["CLIENT", "TRACKING", "on", "REDIRECT", &id]).unwrap_err();
    assert!(
        error.to_string().contains("no connection of its own"),
        "got {error}"
    );
}

#[test]
fn client_kill_id_closes_the_named_client_wherever_it_is_connected() {
    let (redis, keyward) = redis_and_keyward();
    let mut shared = keyward.raw();
    let shared_id = client_id(&mut shared).to_string();
    let mut subscribed = keyward.raw();
    let subscribed_id = client_id(&mut subscribed).to_string();
    subscribed.send(b"SUBSCRIBE news\r\n");
    for _ in 0..6 {
        subscribed.read_line();
    }

    let killed: i64 = query(&keyward, &["CLIENT", "KILL", "ID", &shared_id]).unwrap();
    assert_eq!(killed, 1);
    assert!(
        shared.is_closed(),
        "the killed client's connection is closed"
    );

    let killed: i64 = query(
        &keyward,
        &["CLIENT", "KILL", "ID", &subscribed_id, "SKIPME", "yes"],
    )
    .unwrap();
    assert_eq!(killed, 1);
    assert!(subscribed.is_closed());
    support::wait_until_unsubscribed(
        &redis,
        "news",
        "the killed subscriber's own connection to Redis is closed",
    );

    // As in Redis, a client does not kill itself unless it says SKIPME no.
    let mut own = keyward.raw();
    let own_id = client_id(&mut own);
    own.send(format!("CLIENT KILL ID {own_id}\r\n").as_bytes());
    assert_eq!(own.read_line(), ":0\r\n");
    own.send(format!("CLIENT KILL ID {own_id} SKIPME no\r\n").as_bytes());
    assert_eq!(own.read_line(), ":1\r\n");
    assert!(own.is_closed());
}

#[test]
fn an_id_of_a_client_gone_names_no_one_and_ids_of_redis_go_to_redis() {
    let (redis, keyward) = redis_and_keyward();
    let mut gone = keyward.raw();
    let gone_id = client_id(&mut gone).to_string();
    drop(gone);
    let mut other = keyward.raw();
    other.send(b"PING\r\n");
    assert_eq!(other.read_line(), "+PONG\r\n");
    wait_for(Duration::from_secs(5), "the session is gone", || {
        query::<i64>(&keyward, &["CLIENT", "KILL", "ID", &gone_id]).ok() == Some(0)
    });
    let unblocked: i64 = query(&keyward, &["CLIENT", "UNBLOCK", &gone_id]).unwrap();
    assert_eq!(unblocked, 0);
    let error = query::<()>(
        &keyward,
        &["CLIENT", "TRACKING", "on", "REDIRECT", &gone_id],
    )
    .unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    // No connection of keyward's was touched.
    other.send(b"PING\r\n");
    assert_eq!(other.read_line(), "+PONG\r\n");

    // An id read from Redis's CLIENT LIST names a client of Redis's.
    let direct_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query(&mut redis.client())
        .unwrap();
    assert!(
        direct_id < 1_000_000_000_000,
        "Redis's ids are not keyward's"
    );
    let mut blocked = redis.client();
    let blocked_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut blocked).unwrap();
    let waiter = std::thread::spawn(move || {
        redis::cmd("BLPOP")
            .arg(&["direct-list", "0"])
            .query::<Option<(String, String)>>(&mut blocked)
            .unwrap()
    });
    redis.wait_for_blocked_clients(1);
    let unblocked: i64 = query(&keyward, &["CLIENT", "UNBLOCK", &blocked_id.to_string()]).unwrap();
    assert_eq!(unblocked, 1);
    assert_eq!(waiter.join().unwrap(), None);
}

#[test]
fn commands_that_name_clients_wait_for_authentication_and_deny_rules() {
    let redis = RedisServer::start();
    let keyward = Keyward::start_with_env(
        redis.port,
        "",
        "[[deny]]\nname = \"no-kill\"\ncommands = [\"client|kill\"]\n",
        &[],
    );
    let mut target = keyward.raw();
    let target_id = client_id(&mut target).to_string();
    let error = query::<i64>(&keyward, &["CLIENT", "KILL", "ID", &target_id]).unwrap_err();
    assert!(error.to_string().contains("no-kill"), "{error}");
    target.send(b"PING\r\n");
    assert_eq!(
        target.read_line(),
        "+PONG\r\n",
        "a denied kill kills no one"
    );
}
