//! Connection state stays with its own client, even when clients share one upstream connection.

mod support;

use redis::Commands;
use support::{Keyward, RedisServer};

/// One pooled connection, so every client shares it.
fn shared_upstream() -> (RedisServer, Keyward) {
    let redis = RedisServer::start();
    let keyward = Keyward::start_with_upstream(redis.port, "pool_size = 1", "");
    (redis, keyward)
}

#[test]
fn select_in_one_client_does_not_move_another() {
    let (redis, keyward) = shared_upstream();
    let mut in_db1 = keyward.client();
    let mut in_db0 = keyward.client();
    let _: () = redis::cmd("SELECT").arg(1).query(&mut in_db1).unwrap();
    let _: () = in_db1.set("where", "db1").unwrap();
    let _: () = in_db0.set("where", "db0").unwrap();
    let seen: String = in_db1.get("where").unwrap();
    assert_eq!(seen, "db1");
    let seen: String = in_db0.get("where").unwrap();
    assert_eq!(seen, "db0");
    let mut direct = redis.client();
    let _: () = redis::cmd("SELECT").arg(1).query(&mut direct).unwrap();
    let stored: String = direct.get("where").unwrap();
    assert_eq!(stored, "db1");
}

#[test]
fn select_rejects_what_redis_rejects() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.client();
    let error = redis::cmd("SELECT")
        .arg(16)
        .query::<()>(&mut client)
        .unwrap_err();
    assert!(
        error.to_string().contains("DB index is out of range"),
        "{error}"
    );
    let error = redis::cmd("SELECT")
        .arg("x")
        .query::<()>(&mut client)
        .unwrap_err();
    assert!(error.to_string().contains("not an integer"), "{error}");
    let error = redis::cmd("SELECT").query::<()>(&mut client).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("wrong number of arguments for 'select'"),
        "{error}"
    );
}

#[test]
fn a_pipeline_across_select_runs_in_order() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.client();
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg("k")
        .arg("zero")
        .cmd("SELECT")
        .arg(2)
        .cmd("SET")
        .arg("k")
        .arg("two")
        .cmd("SELECT")
        .arg(0)
        .cmd("GET")
        .arg("k")
        .cmd("SELECT")
        .arg(2)
        .cmd("GET")
        .arg("k");
    let replies: Vec<String> = pipe.query(&mut client).unwrap();
    assert_eq!(replies, ["OK", "OK", "OK", "OK", "zero", "OK", "two"]);
}

#[test]
fn client_names_are_per_session() {
    let (_redis, keyward) = shared_upstream();
    let mut named = keyward.client();
    let mut other = keyward.client();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("billing")
        .query(&mut named)
        .unwrap();
    let name: Option<String> = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query(&mut named)
        .unwrap();
    assert_eq!(name.as_deref(), Some("billing"));
    let name: Option<String> = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query(&mut other)
        .unwrap();
    assert_eq!(name, None);
    let error = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("has space")
        .query::<()>(&mut named)
        .unwrap_err();
    assert!(
        error.to_string().contains("cannot contain spaces"),
        "{error}"
    );
    let a: i64 = redis::cmd("CLIENT").arg("ID").query(&mut named).unwrap();
    let b: i64 = redis::cmd("CLIENT").arg("ID").query(&mut other).unwrap();
    assert_ne!(a, b);
}

#[test]
fn reset_returns_the_session_to_defaults() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.client();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut client).unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("temp")
        .query(&mut client)
        .unwrap();
    let _: () = client.set("in3", "x").unwrap();
    let reset: String = redis::cmd("RESET").query(&mut client).unwrap();
    assert_eq!(reset, "RESET");
    let name: Option<String> = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query(&mut client)
        .unwrap();
    assert_eq!(name, None);
    let value: Option<String> = client.get("in3").unwrap();
    assert_eq!(value, None, "RESET goes back to db 0");
}

#[test]
fn auth_as_another_user_is_checked_by_redis_on_its_own_connection() {
    let redis = RedisServer::start();
    let mut admin = redis.client();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "reader",
            "on",
            ">secret",
            "~*",
            "+@read",
            "+@connection",
        ])
        .query(&mut admin)
        .unwrap();
    let _: () = admin.set("k", "v").unwrap();
    let keyward = Keyward::start_with_upstream(redis.port, "pool_size = 1", "");
    let mut reader = keyward.client();
    let mut other = keyward.client();
    let error = redis::cmd("AUTH")
        .arg("reader")
        .arg("wrong")
        .query::<()>(&mut reader)
        .unwrap_err();
    assert!(error.to_string().contains("WRONGPASS"), "{error}");
    let _: () = redis::cmd("AUTH")
        .arg("reader")
        .arg("secret")
        .query(&mut reader)
        .unwrap();
    let value: String = reader.get("k").unwrap();
    assert_eq!(value, "v");
    let error = reader.set::<_, _, ()>("k", "w").unwrap_err();
    assert!(error.to_string().contains("NOPERM"), "{error}");
    let _: () = other.set("k", "w").unwrap();
    let whoami: String = redis::cmd("ACL").arg("WHOAMI").query(&mut other).unwrap();
    assert_eq!(whoami, "default", "another client's AUTH leaked");
}

#[test]
fn keyward_own_credentials_are_answered_locally() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "s3cret"])
        .query(&mut redis.client())
        .unwrap();
    let keyward = Keyward::start_with_env(
        redis.port,
        "password_env = \"KEYWARD_TEST_PASSWORD\"",
        "",
        &[("KEYWARD_TEST_PASSWORD", "s3cret")],
    );
    let client =
        redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}", keyward.port)).unwrap();
    let mut client = client.get_connection().unwrap();
    let _: () = client.set("k", "v").unwrap();
    let mut raw = keyward.raw();
    raw.send(b"AUTH wrong\r\n");
    assert!(raw.read_line().starts_with("-WRONGPASS"));
    let mut raw = keyward.raw();
    raw.send(b"GET k\r\n");
    assert_eq!(
        raw.read_line(),
        "$1\r\n",
        "keyward's own connections are authenticated"
    );
}

#[test]
fn select_without_config_permission_lets_redis_judge_the_index() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "app",
            "on",
            ">app-secret",
            "~*",
            "+@all",
            "-config",
        ])
        .query(&mut redis.client())
        .unwrap();
    let keyward = Keyward::start_with_env(
        redis.port,
        "username = \"app\"\npassword_env = \"KEYWARD_TEST_APP_PASSWORD\"",
        "",
        &[("KEYWARD_TEST_APP_PASSWORD", "app-secret")],
    );
    let mut client = keyward.client();
    let error = redis::cmd("SELECT")
        .arg(16)
        .query::<()>(&mut client)
        .unwrap_err();
    assert!(
        error.to_string().contains("DB index is out of range"),
        "{error}"
    );
    let _: () = redis::cmd("SELECT").arg(3).query(&mut client).unwrap();
    let _: () = client.set("in3", "yes").unwrap();
    let mut direct = redis.client();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut direct).unwrap();
    let stored: String = direct.get("in3").unwrap();
    assert_eq!(stored, "yes");
}

#[test]
fn client_setinfo_is_kept_by_the_session() {
    let (_redis, keyward) = shared_upstream();
    let mut client = keyward.client();
    let _: () = redis::cmd("CLIENT")
        .arg(&["SETINFO", "LIB-NAME", "my-lib"])
        .query(&mut client)
        .unwrap();
    let error = redis::cmd("CLIENT")
        .arg(&["SETINFO", "COLOR", "red"])
        .query::<()>(&mut client)
        .unwrap_err();
    assert!(
        error.to_string().contains("Unrecognized option 'COLOR'"),
        "{error}"
    );
    let error = redis::cmd("CLIENT")
        .arg(&["SETINFO", "LIB-VER", "1 2"])
        .query::<()>(&mut client)
        .unwrap_err();
    assert!(
        error.to_string().contains("cannot contain spaces"),
        "{error}"
    );
}

#[test]
fn reset_brings_a_dedicated_session_back_to_the_pool() {
    let (redis, keyward) = shared_upstream();
    let mut raw = keyward.raw();
    raw.send(b"SUBSCRIBE news\r\n");
    for _ in 0..6 {
        raw.read_line();
    }
    raw.send(b"RESET\r\nSET after reset\r\nGET after\r\n");
    assert_eq!(raw.read_line(), "+RESET\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n", "back to normal commands");
    assert_eq!(raw.read_line(), "$5\r\n");
    support::wait_until_unsubscribed(&redis, "news", "the dedicated connection outlived RESET");
}

/// `AUTH` as a user that may not `SELECT` keeps the database the client chose before, as on
/// Redis directly: the connection it moves to selects it before the client's `AUTH` runs.
#[test]
fn auth_as_a_user_who_may_not_select_keeps_the_database_chosen_before() {
    let (redis, keyward) = shared_upstream();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "bob", "on", ">123", "~*", "+get", "+set"])
        .query(&mut redis.client())
        .unwrap();
    let mut raw = keyward.raw();
    raw.send(b"SELECT 9\r\nSET k nine\r\nAUTH bob 123\r\nGET k\r\n");
    for expected in ["+OK\r\n", "+OK\r\n", "+OK\r\n", "$4\r\n", "nine\r\n"] {
        assert_eq!(raw.read_line(), expected);
    }
}

/// A `MONITOR` through keyward shows clients' commands, not keyward's housekeeping: the
/// connection a transaction takes is not replaced (handshake and all) while it runs.
#[test]
fn monitor_shows_a_transaction_without_keyward_handshakes() {
    let (_redis, keyward) = shared_upstream();
    let mut monitor = keyward.raw();
    monitor.send(b"MONITOR\r\n");
    assert_eq!(monitor.read_line(), "+OK\r\n");
    let mut client = keyward.raw();
    client.send(b"MULTI\r\n");
    assert_eq!(client.read_line(), "+OK\r\n");
    // Time for a spare connection to be opened in place of the one MULTI took.
    std::thread::sleep(std::time::Duration::from_millis(100));
    client.send(b"SET foo bar\r\nEXEC\r\n");
    for expected in ["+QUEUED\r\n", "*1\r\n", "+OK\r\n"] {
        assert_eq!(client.read_line(), expected);
    }
    for command in ["\"MULTI\"", "\"SET\" \"foo\" \"bar\"", "\"EXEC\""] {
        let line = monitor.read_line();
        assert!(
            line.contains(command),
            "expected {command}, MONITOR showed {line}"
        );
    }
}
