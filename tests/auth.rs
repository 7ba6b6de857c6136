//! Clients authenticate to keyward when `[listen] password_env` is set, as they would to Redis
//! with `requirepass`.

mod support;

use support::{Keyward, RedisServer};

fn protected() -> (RedisServer, Keyward) {
    let redis = RedisServer::start();
    let keyward = Keyward::start_on_free_ports(
        &[("KEYWARD_TEST_LISTEN_PASSWORD", "let-me-in")],
        |port, admin| {
            format!(
                "[listen]\naddress = \"127.0.0.1:{port}\"\npassword_env = \"KEYWARD_TEST_LISTEN_PASSWORD\"\n\
                 [upstream]\naddress = \"127.0.0.1:{}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n",
                redis.port
            )
        },
    );
    (redis, keyward)
}

#[test]
fn nothing_runs_before_auth_and_errors_match_redis() {
    let (redis, keyward) = protected();
    let mut raw = keyward.raw();
    raw.send(b"SET k v\r\nHELLO 3\r\nAUTH wrong\r\nAUTH default wrong\r\n");
    assert_eq!(raw.read_line(), "-NOAUTH Authentication required.\r\n");
    assert!(raw
        .read_line()
        .starts_with("-NOAUTH HELLO must be called with the client already authenticated"));
    assert_eq!(
        raw.read_line(),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        raw.read_line(),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    raw.send(b"AUTH let-me-in\r\nSET k v\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    let stored: String = redis::cmd("GET")
        .arg("k")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(stored, "v");
    raw.send(b"RESET\r\nGET k\r\n");
    assert_eq!(raw.read_line(), "+RESET\r\n");
    assert_eq!(
        raw.read_line(),
        "-NOAUTH Authentication required.\r\n",
        "RESET forgets the login"
    );
}

#[test]
fn client_libraries_authenticate_with_a_password_url_and_hello() {
    let (_redis, keyward) = protected();
    let url = format!("redis://:let-me-in@127.0.0.1:{}", keyward.port);
    let mut client = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let pong: String = redis::cmd("PING").query(&mut client).unwrap();
    assert_eq!(pong, "PONG");
    let resp3 = redis::Client::open(format!("{url}?protocol=resp3")).unwrap();
    let mut resp3 = resp3.get_connection().unwrap();
    let hash: redis::Value = redis::cmd("HGETALL").arg("none").query(&mut resp3).unwrap();
    assert!(matches!(hash, redis::Value::Map(_)), "{hash:?}");
    let wrong = redis::Client::open(format!("redis://:nope@127.0.0.1:{}", keyward.port)).unwrap();
    assert!(wrong.get_connection().is_err());
}

#[test]
fn reset_on_a_dedicated_connection_logs_out_of_keyward_not_keyward_out_of_redis() {
    let (_redis, keyward) = protected();
    let mut raw = keyward.raw();
    raw.send(
        b"AUTH let-me-in\r\nBLPOP nothing 0.01\r\nRESET\r\nGET k\r\nAUTH let-me-in\r\nGET k\r\n",
    );
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert_eq!(raw.read_line(), "*-1\r\n");
    assert_eq!(raw.read_line(), "+RESET\r\n");
    assert_eq!(raw.read_line(), "-NOAUTH Authentication required.\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert_eq!(raw.read_line(), "$-1\r\n");
}

#[test]
fn a_client_that_has_not_authenticated_kills_no_one() {
    let (_redis, keyward) = protected();
    let mut target = keyward.raw();
    target.send(b"AUTH let-me-in\r\nCLIENT ID\r\n");
    assert_eq!(target.read_line(), "+OK\r\n");
    let id = target
        .read_line()
        .trim()
        .trim_start_matches(':')
        .to_string();
    let mut stranger = keyward.raw();
    stranger.send(format!("CLIENT KILL ID {id}\r\n").as_bytes());
    assert_eq!(stranger.read_line(), "-NOAUTH Authentication required.\r\n");
    target.send(b"PING\r\n");
    assert_eq!(target.read_line(), "+PONG\r\n");
}

/// `AUTH` with keyward's password is answered by keyward, which cannot queue it in the
/// transaction Redis keeps: inside `MULTI` it is refused, and the transaction aborts.
#[test]
fn auth_inside_a_transaction_is_refused_and_aborts_it() {
    let (redis, keyward) = protected();
    let mut raw = keyward.raw();
    raw.send(b"AUTH let-me-in\r\nMULTI\r\nSET k v\r\nAUTH let-me-in\r\nEXEC\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert_eq!(raw.read_line(), "+QUEUED\r\n");
    assert_eq!(
        raw.read_line(),
        "-ERR Command not allowed inside a transaction\r\n"
    );
    assert!(raw.read_line().starts_with("-EXECABORT"));
    let stored: Option<String> = redis::cmd("GET")
        .arg("k")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(stored, None);
}
