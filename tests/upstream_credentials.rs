//! The credentials keyward's own connections to Redis use, and a client's own: a password set
//! or rotated while keyward runs never locks keyward or its clients out silently.

mod support;

use std::time::Duration;

use support::{redis_and_keyward, wait_for, Keyward, RedisServer};

fn readiness(keyward: &Keyward) -> (u16, String) {
    keyward.admin_get("/readyz")
}

/// A client straight to Redis, authenticating with `password`.
fn direct(redis: &RedisServer, password: &str) -> redis::Connection {
    redis::Client::open(format!("redis://:{password}@127.0.0.1:{}/", redis.port))
        .and_then(|client| client.get_connection())
        .expect("a connection to redis-server")
}

/// Once Redis refuses keyward's own credentials, keyward is not ready and a client that needs
/// a new connection gets an error that says why. (The first such client may still get the
/// spare connection keyward opened before; opening its replacement is refused.)
fn assert_refused(keyward: &Keyward) {
    let mut first = keyward.raw();
    first.send(b"SUBSCRIBE news\r\n");
    first.read_line();
    wait_for(Duration::from_secs(5), "keyward is not ready", || {
        readiness(keyward).0 == 503
    });
    let mut second = keyward.raw();
    second.send(b"SUBSCRIBE news\r\n");
    let refusal = second.read_line();
    assert!(
        refusal.contains("refused keyward's credentials"),
        "{refusal}"
    );
}

#[test]
fn a_password_set_through_keyward_does_not_lock_its_clients_out() {
    let (redis, keyward) = redis_and_keyward();
    let mut setter = keyward.raw();
    setter.send(b"CONFIG SET requirepass s3cret\r\n");
    assert_eq!(setter.read_line(), "+OK\r\n");
    // The client's own AUTH opens its connection as that client: keyward's (no password) no
    // longer would.
    setter.send(b"AUTH s3cret\r\nMULTI\r\nINCR n\r\nEXEC\r\n");
    assert_eq!(setter.read_line(), "+OK\r\n");
    assert_eq!(setter.read_line(), "+OK\r\n");
    assert_eq!(setter.read_line(), "+QUEUED\r\n");
    assert_eq!(setter.read_line(), "*1\r\n");
    assert_eq!(setter.read_line(), ":1\r\n");

    // Another client authenticates the same way, and subscribes on the connection it got.
    let mut subscriber = keyward.raw();
    subscriber.send(b"AUTH default s3cret\r\nSUBSCRIBE news\r\n");
    assert_eq!(subscriber.read_line(), "+OK\r\n");
    assert_eq!(subscriber.read_line(), "*3\r\n");

    // HELLO … AUTH as well, in the protocol it asks for.
    let mut hello = keyward.raw();
    hello.send(b"HELLO 3 AUTH default s3cret\r\n");
    assert_eq!(hello.read_line(), "%7\r\n");

    // A wrong password gets Redis's own answer, and the client goes on as before.
    let mut wrong = keyward.raw();
    wrong.send(b"AUTH nope\r\nPING\r\n");
    assert_eq!(
        wrong.read_line(),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(wrong.read_line(), "+PONG\r\n");

    // keyward's own credentials no longer work: keyward says so, and a client that did not
    // AUTH and needs a new connection is told why.
    assert_refused(&keyward);
    let (_, body) = readiness(&keyward);
    assert!(body.contains("refuses keyward's credentials"), "{body}");
    assert!(keyward
        .log()
        .contains("Redis refuses keyward's credentials"));

    setter.send(b"CONFIG SET requirepass \"\"\r\n");
    assert_eq!(setter.read_line(), "+OK\r\n");
    drop(redis);
}

#[test]
fn a_rotated_password_file_is_read_again_without_a_restart() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "first"])
        .query(&mut redis.client())
        .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("redis-password");
    std::fs::write(&file, "first\n").unwrap();
    let keyward = Keyward::start_with_upstream(
        redis.port,
        &format!("password_file = \"{}\"", file.display()),
        "",
    );
    wait_for(Duration::from_secs(5), "keyward is ready", || {
        readiness(&keyward).0 == 200
    });
    let _: () = redis::cmd("SET")
        .arg(&["k", "v"])
        .query(&mut keyward.client())
        .unwrap();

    // Redis's password changes first: connections keyward opens now are refused.
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "second"])
        .query(&mut direct(&redis, "first"))
        .unwrap();
    assert_refused(&keyward);

    // Then the secret, as Kubernetes updates a mounted one: a new file renamed over the old.
    let staged = secrets.path().join(".redis-password.new");
    std::fs::write(&staged, "second\n").unwrap();
    std::fs::rename(&staged, &file).unwrap();
    wait_for(
        Duration::from_secs(5),
        "keyward reads the new password",
        || readiness(&keyward).0 == 200,
    );
    assert!(keyward.log().contains("upstream password changed"));
    let mut subscriber = keyward.raw();
    subscriber.send(b"SUBSCRIBE news\r\n");
    assert_eq!(subscriber.read_line(), "*3\r\n");
}

#[test]
fn readiness_comes_back_when_redis_accepts_keyward_again() {
    let (redis, keyward) = redis_and_keyward();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "interim"])
        .query(&mut redis.client())
        .unwrap();
    assert_refused(&keyward);
    // The password is taken back in Redis; keyward's own never changed.
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", ""])
        .query(&mut direct(&redis, "interim"))
        .unwrap();
    wait_for(Duration::from_secs(10), "keyward is ready again", || {
        readiness(&keyward).0 == 200
    });
    assert!(keyward
        .log()
        .contains("Redis accepts keyward's credentials again"));
}
