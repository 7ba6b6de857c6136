//! One `redis-server` among several (a Redis Cluster's node; a primary, replica or sentinel
//! of a Sentinel set): started under a watchdog, and reached by its port.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use redis::FromRedisValue;

/// Runs `redis-server` with a watchdog beside it that kills the server and removes its
/// directory once the test process is gone: servers held in a `static` (a cluster, a sentinel
/// set shared by a test binary) are never dropped, and would otherwise outlive the tests.
/// (`PR_SET_PDEATHSIG` would not do: it fires when the *thread* that started the server ends,
/// and each test runs on a thread of its own.) The watchdog also ends when the server does, so
/// that it never kills a reused pid. `exec` keeps the shell's pid, so the `Child` is the server
/// itself. Arguments: the test's pid, the directory, then redis-server's own.
const WATCHDOG: &str = r#"test_pid=$1 dir=$2; shift 2
(
  while kill -0 $$; do
    kill -0 "$test_pid" || { kill -9 $$; rm -rf "$dir"; exit; }
    sleep 1
  done 2>/dev/null
) &
exec redis-server "$@""#;

/// A `redis-server` command under [`WATCHDOG`], which removes `dir` once the test process is
/// gone; the caller adds redis-server's arguments.
pub fn watched_redis_server(dir: &Path) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", WATCHDOG, "sh", &std::process::id().to_string()])
        .arg(dir);
    command
}

/// A plain client of the Redis at `port` (a node of a cluster, a sentinel…), with timeouts:
/// a stalled server fails the test instead of hanging it.
pub fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let connection = client.get_connection_with_timeout(Duration::from_secs(5))?;
    connection.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(connection)
}

/// Runs `args` on the Redis at `port`, on a connection of its own.
pub fn query<T: FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query(&mut connect(port)?)
}

/// Like [`query`], failing the test with the port and the command if it fails.
pub fn command<T: FromRedisValue>(port: u16, args: &[&str]) -> T {
    query(port, args).unwrap_or_else(|err| panic!("{} on {port}: {err}", args.join(" ")))
}

/// The `GET`s the Redis at `port` has run, by its own count (`INFO commandstats`).
pub fn gets_served(port: u16) -> u64 {
    let stats: String = command(port, &["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_get:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// `WAIT`: how many replicas acknowledge the writes `client` made, waiting up to `timeout`
/// for `replicas` of them.
pub fn replicas_acknowledging(
    client: &mut redis::Connection,
    replicas: i64,
    timeout: Duration,
) -> i64 {
    redis::cmd("WAIT")
        .arg(replicas)
        .arg(timeout.as_millis() as u64)
        .query(client)
        .unwrap_or_else(|err| panic!("WAIT: {err}"))
}
