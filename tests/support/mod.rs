//! Test harness: a private `redis-server` per test and keyward started as a real process from
//! an inline TOML config, both on free loopback ports and both stopped on drop.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod busy;
pub mod cluster;
pub mod node;
pub mod sentinel;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// A `redis-server` that keeps nothing on disk, killed when dropped (its log is printed if
/// the test failed).
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// `--tls-*` arguments: the server then takes only TLS, on `port`.
    tls: Vec<String>,
    /// Other configuration, as `redis-server` arguments.
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_tls(Vec::new())
    }

    /// A server that takes only TLS connections, set up by `tls` (`--tls-cert-file` and so
    /// on); none: plain TCP, as [`RedisServer::start`].
    pub fn start_tls(tls: Vec<String>) -> RedisServer {
        RedisServer::start_configured(tls, Vec::new())
    }

    /// A plain TCP server configured by `extra` (`["--rename-command", "HELLO", ""]`…).
    pub fn start_with_args(extra: &[&str]) -> RedisServer {
        RedisServer::start_configured(Vec::new(), extra.iter().map(|s| s.to_string()).collect())
    }

    fn start_configured(tls: Vec<String>, extra: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("a temp dir"),
            tls,
            extra,
        };
        // A free port can be taken by a parallel test before redis-server binds it; it then
        // exits, and the port answers for someone else. Try again on a fresh port.
        for _ in 0..3 {
            if server.launch() {
                return server;
            }
            server.port = free_port();
        }
        panic!("redis-server exited at start three times");
    }

    /// Starts redis-server on `self.port`; `false` if it exited before listening.
    fn launch(&mut self) -> bool {
        let port = self.port.to_string();
        let ports = if self.tls.is_empty() {
            ["--port", &port, "--tls-port", "0"]
        } else {
            ["--port", "0", "--tls-port", &port]
        };
        // A restart appends to the same log: wait for one more "ready" line than it holds.
        let ready_before = self.times_ready();
        let mut child = Command::new("redis-server")
            .args(ports)
            .args(&self.tls)
            .args(&self.extra)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            // Redis logs this line only once it holds its port; a port that merely answers
            // may belong to another test's process.
            if self.times_ready() > ready_before {
                self.child = Some(child);
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// How many times this server's log says it was ready to accept connections.
    fn times_ready(&self) -> usize {
        self.log().matches("Ready to accept connections").count()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Waits until Redis counts `count` blocked clients (a blocking command, or a command a
    /// `CLIENT PAUSE` postponed).
    pub fn wait_for_blocked_clients(&self, count: u32) {
        wait_for(
            Duration::from_secs(5),
            "Redis counts the blocked clients",
            || {
                let info: String = redis::cmd("INFO")
                    .arg("clients")
                    .query(&mut self.client())
                    .expect("INFO clients");
                info.contains(&format!("blocked_clients:{count}\r"))
            },
        );
    }

    /// A client straight to this Redis, bypassing keyward.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection())
            .expect("a connection to redis-server")
    }

    /// `kill -9`: the server disappears without a word, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal to the server (`STOP` and `CONT` stall and resume it).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Stops the server, then sends `client` a `SET` of a value larger than the sockets'
    /// buffers and an upstream connection's own hold: the connection that carries it takes
    /// no more batches until the server is sent `CONT`, and its queue fills.
    pub fn stall_behind_large_write(&self, client: &mut RawClient) {
        self.signal("STOP");
        let value = vec![b'v'; 32 << 20];
        let mut set =
            format!("*3\r\n$3\r\nSET\r\n$5\r\nlarge\r\n${}\r\n", value.len()).into_bytes();
        set.extend_from_slice(&value);
        set.extend_from_slice(b"\r\n");
        client.send(&set);
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.launch(),
            "redis-server could not start again on {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- redis-server log ---\n{}", self.log());
        }
    }
}

/// What keyward logs once it listens on both of its ports.
const STARTED: &str = concat!("keyward ", env!("CARGO_PKG_VERSION"), " started");

/// A keyward process with a config written from a test's TOML.
pub struct Keyward {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
    log_path: PathBuf,
}

impl Keyward {
    /// Starts keyward in front of Redis at `upstream_port`; `extra` is appended to a config
    /// that sets the listen, admin and upstream addresses (so it must not repeat those tables).
    pub fn start(upstream_port: u16, extra: &str) -> Keyward {
        Keyward::start_with_upstream(upstream_port, "", extra)
    }

    /// Like [`Keyward::start`], with `upstream` lines added to the `[upstream]` table.
    pub fn start_with_upstream(upstream_port: u16, upstream: &str, extra: &str) -> Keyward {
        Keyward::start_with_env(upstream_port, upstream, extra, &[])
    }

    /// Like [`Keyward::start_with_upstream`], returning once `/readyz` says keyward serves
    /// (in cluster and sentinel mode, once it has learned where to send commands).
    pub fn start_ready(upstream_port: u16, upstream: &str, extra: &str) -> Keyward {
        let keyward = Keyward::start_with_upstream(upstream_port, upstream, extra);
        wait_for(Duration::from_secs(10), "keyward ready", || {
            keyward.admin_get("/readyz").0 == 200
        });
        keyward
    }

    /// Like [`Keyward::start_with_upstream`], with environment variables for the process (set
    /// on the child, never on the test process, whose other threads spawn processes too).
    pub fn start_with_env(
        upstream_port: u16,
        upstream: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Keyward {
        Keyward::start_with_ports_of_its_own(upstream_port, upstream, env, || extra.to_string())
    }

    /// Like [`Keyward::start_with_env`], for a config that names ports of its own (a REST
    /// API's, say): `extra_for` picks them and writes the config's end anew for each try.
    pub fn start_with_ports_of_its_own(
        upstream_port: u16,
        upstream: &str,
        env: &[(&str, &str)],
        mut extra_for: impl FnMut() -> String,
    ) -> Keyward {
        Keyward::start_on_free_ports(env, |port, admin_port| {
            let extra = extra_for();
            format!(
                "[listen]\naddress = \"127.0.0.1:{port}\"\n\n\
                 [upstream]\naddress = \"127.0.0.1:{upstream_port}\"\n\
                 connect_timeout = \"500ms\"\n{upstream}\n\
                 [admin]\naddress = \"127.0.0.1:{admin_port}\"\n\n{extra}"
            )
        })
    }

    /// Starts keyward with the config `config_for` writes for its listen and admin ports, on
    /// free ports. A free port can be taken by a parallel test before keyward binds it: when
    /// keyward exits at start, it is tried again on fresh ones.
    pub fn start_on_free_ports(
        env: &[(&str, &str)],
        mut config_for: impl FnMut(u16, u16) -> String,
    ) -> Keyward {
        for _ in 0..3 {
            let (port, admin_port) = (free_port(), free_port());
            let config = config_for(port, admin_port);
            if let Some(keyward) = Keyward::try_start(port, admin_port, env, &config) {
                return keyward;
            }
        }
        panic!("keyward exited at start three times");
    }

    /// Starts keyward; `None` if it exits before it listens (its ports were taken).
    fn try_start(
        port: u16,
        admin_port: u16,
        env: &[(&str, &str)],
        config: &str,
    ) -> Option<Keyward> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config_path = dir.path().join("keyward.toml");
        std::fs::write(&config_path, config).expect("config written");
        let log_path = dir.path().join("keyward.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "keyward=debug")
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("the keyward binary runs");
        let mut keyward = Keyward {
            child,
            port,
            admin_port,
            config_path,
            _dir: dir,
            log_path,
        };
        // keyward logs that it started once it holds both of its ports. Waiting for that line,
        // rather than for the port to answer, tells our keyward from another test's process
        // that took the port first (this one then exits).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !keyward.log().contains(STARTED) {
            if keyward.child.try_wait().ok().flatten().is_some() {
                eprintln!("keyward exited at start:\n{}", keyward.log());
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "keyward did not start on {port}:\n{}",
                keyward.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(keyward)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Connection {
        self.client_at(&self.url())
    }

    /// A client that gives up on a reply after five seconds: a hang is a failure, not a
    /// stall, in tests that break things.
    pub fn impatient_client(&self) -> redis::Connection {
        let client = self.client();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout set");
        client
    }

    /// A client speaking RESP3 (`HELLO 3`).
    pub fn resp3_client(&self) -> redis::Connection {
        self.client_at(&format!("{}?protocol=resp3", self.url()))
    }

    fn client_at(&self, url: &str) -> redis::Connection {
        let client = redis::Client::open(url).expect("a valid url");
        let connection = client.get_connection().expect("a connection to keyward");
        connection
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout set");
        connection
    }

    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.port)
    }

    /// The memory keyward's process holds (its resident set), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("keyward's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line");
        kib * 1024
    }

    /// The body of an admin endpoint, e.g. `/metrics`.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_port, path)
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("process status") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
}

impl Drop for Keyward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- keyward log ---\n{}", self.log());
        }
    }
}

/// A plain TCP client for protocol edge cases: it writes exact bytes and reads exact bytes.
pub struct RawClient {
    stream: BufReader<TcpStream>,
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout set");
        RawClient {
            stream: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).expect("write");
    }

    /// Reads one CRLF-terminated line, CRLF included.
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("read line");
        line
    }

    /// Reads a bulk string reply's bytes; the reply's first line when it is something else.
    pub fn read_bulk(&mut self) -> Result<Vec<u8>, String> {
        let header = self.read_line();
        let length: usize = header
            .strip_prefix('$')
            .and_then(|length| length.trim().parse().ok())
            .ok_or_else(|| header.clone())?;
        let mut bytes = self.read_exact(length + 2);
        bytes.truncate(length);
        Ok(bytes)
    }

    pub fn read_exact(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.stream.read_exact(&mut buf).expect("read exact");
        buf
    }

    /// True once the server has closed the connection (reads hit EOF or reset).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }

    pub fn shutdown_write(&mut self) {
        let _ = self.stream.get_mut().shutdown(std::net::Shutdown::Write);
    }
}

pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path)
}

pub fn http_request(port: u16, method: &str, path: &str) -> (u16, String) {
    http_request_to(SocketAddr::from(([127, 0, 0, 1], port)), method, path, "")
}

/// A `GET` of `path` on the admin port: status, response headers and body.
pub fn http_get_full(port: u16, path: &str) -> (u16, String, String) {
    http_exchange(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "GET",
        path,
        "",
        b"",
    )
}

/// An HTTP request to `address`, with `headers` (each line ending in CRLF) added.
pub fn http_request_to(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String) {
    let (status, _, body) = http_exchange(address, method, path, headers, b"");
    (status, body)
}

/// An HTTP request with a body; returns the status, the response's head and its body.
pub fn http_exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).expect("the HTTP endpoint connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout set");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .expect("request written");
    stream.write_all(body).expect("body written");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

/// The body of a `Transfer-Encoding: chunked` response (servers such as Prometheus send large
/// answers so): each chunk is its length in hex, CRLF, the bytes, CRLF; a zero length ends it.
fn dechunk(mut chunks: &str) -> String {
    let mut body = String::new();
    while let Some((size, rest)) = chunks.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        body.push_str(&rest[..size]);
        chunks = rest[size..].strip_prefix("\r\n").unwrap_or_default();
    }
    body
}

/// This machine's address on the network (not loopback), as other hosts would reach it:
/// the source address of a route out (nothing is sent).
pub fn network_address() -> std::net::IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
    socket
        .connect("203.0.113.1:9")
        .expect("a route off this machine");
    socket.local_addr().expect("a local address").ip()
}

/// Reads a metric's value from Prometheus text, summing every series whose labels contain
/// all of `labels` (e.g. `command="get"`).
pub fn metric_value(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|label| rest.contains(label)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A private Redis with keyward in front of it, default settings.
pub fn redis_and_keyward() -> (RedisServer, Keyward) {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, "");
    (redis, keyward)
}

/// Polls `done` until it holds; fails the test with `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts keyward with cache or lock `rules` and waits until its invalidation connection is
/// up (until then the cache is bypassed and lock queues hear no releases).
pub fn keyward_with_invalidations(redis: &RedisServer, rules: &str) -> Keyward {
    let keyward = Keyward::start(redis.port, rules);
    wait_for_invalidations(&keyward, Duration::from_secs(5));
    keyward
}

/// Waits until keyward says Redis tells it of changed keys (`invalidations:up`: in cluster
/// mode, every primary does).
pub fn wait_for_invalidations(keyward: &Keyward, within: Duration) {
    wait_for(within, "the invalidation connection is up", || {
        redis::cmd("KEYWARD")
            .arg(&["CACHE", "STATS"])
            .query::<String>(&mut keyward.client())
            .is_ok_and(|stats| stats.contains("invalidations:up"))
    });
}

/// Waits until no connection is subscribed to `channel` in Redis (a client left, and keyward
/// dropped its dedicated connection).
pub fn wait_until_unsubscribed(redis: &RedisServer, channel: &str, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let subscribers: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut redis.client())
            .expect("PUBSUB NUMSUB");
        if subscribers[0].1 == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many times Redis ran a command, from `INFO commandstats`.
pub fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.client())
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Starts a script that loops until it is killed, through keyward, with Redis's busy threshold
/// lowered to 50 ms, and waits until Redis reports it busy; the returned client is owed the
/// script's reply (an error once it is killed).
pub fn start_busy_script(redis: &RedisServer, keyward: &Keyward) -> RawClient {
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "busy-reply-threshold", "50"])
        .query(&mut redis.client())
        .unwrap();
    let mut runner = keyward.raw();
    runner.send(b"EVAL \"while true do end\" 0\r\n");
    std::thread::sleep(Duration::from_millis(300));
    runner
}

/// The crate's source files under `src/`, each with its path relative to `src/` and its
/// text, for tests that check the code's own shape.
pub fn source_files() -> Vec<(PathBuf, String)> {
    fn walk(directory: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(directory).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a source file");
            let relative = path.strip_prefix(&root).expect("under src/").to_path_buf();
            (relative, text)
        })
        .collect()
}

/// `program`, after checking it runs (`--version`); fails the test with `why` it is needed
/// when it does not, rather than passing without it (`.ci/run` installs what tests need).
pub fn installed<'a>(program: &'a str, why: &str) -> &'a str {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "{program} is not installed: {why} (.ci/run installs it)"
    );
    program
}
