//! `[[deny]]` rules refuse commands with `-NOPERM` before they reach Redis.

mod support;

use redis::Commands;
use support::{metric_value, redis_calls, Keyward, RedisServer};

fn keyward_with(rules: &str) -> (RedisServer, Keyward) {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, rules);
    (redis, keyward)
}

#[test]
fn refuses_listed_commands_for_everyone() {
    let (redis, keyward) = keyward_with(
        "[[deny]]\nname = \"no-flush\"\ncommands = [\"FLUSHALL\", \"FLUSHDB\", \"@dangerous\"]\n",
    );
    let mut client = keyward.client();
    let _: () = client.set("kept", "yes").unwrap();
    let mut raw = keyward.raw();
    raw.send(b"FLUSHALL\r\nKEYS *\r\nGET kept\r\n");
    assert_eq!(
        raw.read_line(),
        "-NOPERM keyward rule 'no-flush' refuses the 'flushall' command\r\n"
    );
    assert_eq!(
        raw.read_line(),
        "-NOPERM keyward rule 'no-flush' refuses the 'keys' command\r\n"
    );
    assert_eq!(raw.read_line(), "$3\r\n");
    assert_eq!(redis_calls(&redis, "flushall"), 0);
    let kept: String = client.get("kept").unwrap();
    assert_eq!(kept, "yes");
}

#[test]
fn chooses_clients_by_name_or_address() {
    let (_redis, keyward) = keyward_with(
        "[[deny]]\nname = \"batch-no-keys\"\ncommands = [\"KEYS\"]\nclients = [\"batch-*\"]\n",
    );
    let mut batch = keyward.client();
    let _: () = redis::cmd("CLIENT")
        .arg(&["SETNAME", "batch-7"])
        .query(&mut batch)
        .unwrap();
    let error = redis::cmd("KEYS")
        .arg("*")
        .query::<Vec<String>>(&mut batch)
        .unwrap_err();
    assert!(error.to_string().contains("batch-no-keys"), "{error}");
    let mut web = keyward.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut web).unwrap();
    assert!(keys.is_empty());
}

#[test]
fn refuses_by_key_pattern() {
    let (_redis, keyward) = keyward_with("[[deny]]\nname = \"secrets\"\nkeys = [\"secret:*\"]\n");
    let mut client = keyward.client();
    let error = client.get::<_, Option<String>>("secret:token").unwrap_err();
    assert!(error.to_string().contains("NOPERM"), "{error}");
    let error = redis::cmd("MGET")
        .arg(&["public", "secret:x"])
        .query::<redis::Value>(&mut client)
        .unwrap_err();
    assert!(error.to_string().contains("secrets"), "{error}");
    let public: Option<String> = client.get("public").unwrap();
    assert_eq!(public, None);
}

#[test]
fn a_refused_command_that_needs_its_own_connection_opens_none() {
    let (redis, keyward) =
        keyward_with("[[deny]]\nname = \"no-monitor\"\ncommands = [\"MONITOR\"]\n");
    // Count connections only once the pool is complete, or its own connects look like leaks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let info: String = redis::cmd("KEYWARD")
            .arg("INFO")
            .query(&mut keyward.client())
            .unwrap();
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<usize>().ok())
        };
        let up = field("upstream_pooled_connections_up");
        if up.is_some_and(|up| up > 0) && up == field("upstream_pooled_connections") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never came up: {info}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.client())
        .unwrap();
    let mut raw = keyward.raw();
    raw.send(b"MONITOR\r\nPING\r\n");
    assert_eq!(
        raw.read_line(),
        "-NOPERM keyward rule 'no-monitor' refuses the 'monitor' command\r\n"
    );
    assert_eq!(raw.read_line(), "+PONG\r\n");
    let after: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(
        after.lines().count(),
        before.lines().count(),
        "a connection was opened"
    );
}

#[test]
fn shadow_mode_only_counts() {
    let (_redis, keyward) = keyward_with(
        "[[deny]]\nname = \"watch-flush\"\ncommands = [\"FLUSHDB\"]\nmode = \"shadow\"\n",
    );
    let mut client = keyward.client();
    let _: () = redis::cmd("FLUSHDB").query(&mut client).unwrap();
    let metrics = keyward.admin_get("/metrics").1;
    assert_eq!(
        metric_value(
            &metrics,
            "keyward_denied_total",
            &["rule=\"watch-flush\"", "action=\"shadow\""]
        ),
        1.0
    );
}

#[test]
fn shadow_rules_count_commands_keyward_answers_itself() {
    let (_redis, keyward) = keyward_with(
        "[[deny]]\nname = \"watch-names\"\ncommands = [\"SELECT\", \"CLIENT|SETNAME\", \"SCRIPT|KILL\"]\nmode = \"shadow\"\n",
    );
    let mut raw = keyward.raw();
    raw.send(b"SELECT 2\r\nCLIENT SETNAME worker\r\nSCRIPT KILL\r\nPING\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert_eq!(raw.read_line(), "+OK\r\n");
    assert!(
        raw.read_line().starts_with("-NOTBUSY"),
        "SCRIPT KILL reaches Redis"
    );
    assert_eq!(raw.read_line(), "+PONG\r\n");
    let metrics = keyward.admin_get("/metrics").1;
    assert_eq!(
        metric_value(
            &metrics,
            "keyward_denied_total",
            &["rule=\"watch-names\"", "action=\"shadow\""]
        ),
        3.0,
        "each of the three counted once"
    );
}

#[test]
fn commands_keyward_answers_itself_are_refused_too() {
    let (_redis, keyward) = keyward_with("[[deny]]\nname = \"one-db\"\ncommands = [\"SELECT\"]\n");
    let mut raw = keyward.raw();
    raw.send(b"SELECT 5\r\nBLPOP nothing 0.01\r\nSELECT 5\r\n");
    assert_eq!(
        raw.read_line(),
        "-NOPERM keyward rule 'one-db' refuses the 'select' command\r\n"
    );
    assert_eq!(raw.read_line(), "*-1\r\n");
    assert_eq!(
        raw.read_line(),
        "-NOPERM keyward rule 'one-db' refuses the 'select' command\r\n",
        "the same on a dedicated connection"
    );
}
