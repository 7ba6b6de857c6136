//! A keyward with every kind of rule, under traffic that touches each: a cache rule with hits
//! and misses, an enforced and a shadow rate limit, a lock contended (one waiter served after
//! a wait, another still waiting), hot keys and a big key. Tests of what an SRE looks at (the
//! admin page, the dashboard and alert rules against Prometheus) read it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{keyward_with_invalidations, wait_for, Keyward, RedisServer};

pub const POLICIES: &str = r#"
[hotkeys]
enabled = true
windows = ["10s", "1m"]
big_key_bytes = "1KB"
export_top = 10

[[deny]]
name = "no-flush"
commands = ["FLUSHALL", "FLUSHDB"]

[[cache]]
name = "pages"
keys = ["page:*"]
ttl = "1m"
max_memory = "8MB"

[[cache]]
name = "feeds"
keys = ["feed:*"]
ttl = "1m"
max_memory = "8MB"

[[rate_limit]]
name = "logins"
keys = ["login:*"]
limit = 5
period = "1h"

[[rate_limit]]
name = "api-preview"
keys = ["api:*"]
limit = 1
period = "1h"
mode = "shadow"

[[lock]]
name = "jobs"
keys = ["lock:*"]
max_wait = "60s"
"#;

/// The key the traffic asks for most.
pub const HOT_KEY: &str = "hot:page:7";
/// A key whose name is markup: a page must show it as text.
pub const MARKUP_KEY: &str = "<img src=x onerror=alert(1)>";
/// The lock held, with one client waiting for it, for as long as the traffic runs.
pub const CONTENDED_LOCK: &str = "lock:report";
/// Reads of `page:home` before the traffic starts: one miss, then hits. The traffic reads
/// keys of the `feeds` rule, so the `pages` rule's hit ratio stays 90%.
pub const PAGE_READS: u32 = 10;

/// Keys of the `feeds` rule the traffic reads.
const FEEDS: u64 = 20;

/// The longest the background traffic runs, whatever the test does.
const TRAFFIC_LIMIT: Duration = Duration::from_secs(120);

pub struct Busy {
    pub redis: RedisServer,
    pub keyward: Keyward,
    stop: Arc<AtomicBool>,
    traffic: Option<JoinHandle<()>>,
    waiter: Option<JoinHandle<Option<String>>>,
}

impl Busy {
    pub fn start() -> Busy {
        let redis = RedisServer::start();
        let keyward = keyward_with_invalidations(&redis, POLICIES);
        let mut client = keyward.client();
        run_on(&mut client, &["SET", "page:home", "welcome"]);
        for feed in 0..FEEDS {
            run_on(&mut client, &["SET", &format!("feed:{feed}"), "news"]);
        }
        for _ in 0..PAGE_READS {
            run_on(&mut client, &["GET", "page:home"]);
        }
        for _ in 0..8 {
            refused_or_not(&mut client, &["INCR", "login:bob"]);
            refused_or_not(&mut client, &["SET", "api:quota", "1"]);
        }
        for _ in 0..200 {
            run_on(&mut client, &["GET", MARKUP_KEY]);
        }
        run_on(&mut client, &["SET", "blob:large", &"x".repeat(4096)]);
        lock_waited_for(&keyward);

        let mut holder = keyward.client();
        run_on(
            &mut holder,
            &["SET", CONTENDED_LOCK, "holder", "NX", "PX", "120000"],
        );
        let url = keyward.url();
        let waiter = std::thread::spawn(move || {
            let mut client = redis::Client::open(url).unwrap().get_connection().unwrap();
            redis::cmd("SET")
                .arg(&[CONTENDED_LOCK, "waiter", "NX", "PX", "120000"])
                .query::<Option<String>>(&mut client)
                .expect("the waiter's SET")
        });
        wait_for(Duration::from_secs(5), "the lock is contended", || {
            keyward.admin_get("/locks").1.contains("\"waiters\": 1")
        });
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = std::thread::spawn({
            let (url, stop) = (keyward.url(), Arc::clone(&stop));
            move || traffic(&url, &stop)
        });
        Busy {
            redis,
            keyward,
            stop,
            traffic: Some(traffic),
            waiter: Some(waiter),
        }
    }

    /// Stops the traffic and releases the lock; the waiter gets it.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(traffic) = self.traffic.take() {
            traffic.join().expect("the traffic ran");
        }
        run_on(&mut self.keyward.client(), &["DEL", CONTENDED_LOCK]);
        let granted = self.waiter.take().unwrap().join().expect("the waiter ran");
        assert_eq!(granted.as_deref(), Some("OK"), "the waiter got the lock");
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A command a rate limit may refuse: either answer will do.
fn refused_or_not(client: &mut redis::Connection, args: &[&str]) {
    let _ = redis::cmd(args[0])
        .arg(&args[1..])
        .query::<redis::Value>(client);
}

fn run_on(client: &mut redis::Connection, args: &[&str]) {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query::<redis::Value>(client)
        .expect("a command through keyward");
}

/// One client holds `lock:warmup` 100 ms while another waits for it and then gets it, so the
/// lock rule has a wait measured and a grant after a wait.
fn lock_waited_for(keyward: &Keyward) {
    let mut holder = keyward.client();
    run_on(
        &mut holder,
        &["SET", "lock:warmup", "a", "NX", "PX", "10000"],
    );
    let url = keyward.url();
    let waiter = std::thread::spawn(move || {
        let mut client = redis::Client::open(url).unwrap().get_connection().unwrap();
        redis::cmd("SET")
            .arg(&["lock:warmup", "b", "NX", "PX", "10000"])
            .query::<Option<String>>(&mut client)
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(100));
    run_on(&mut holder, &["DEL", "lock:warmup"]);
    assert_eq!(waiter.join().unwrap().as_deref(), Some("OK"));
}

/// A steady, light load until `stop` (or [`TRAFFIC_LIMIT`]): the hot key most, cached reads
/// (a miss, then hits, per feed), writes, and refused logins.
fn traffic(url: &str, stop: &AtomicBool) {
    let mut client = redis::Client::open(url).unwrap().get_connection().unwrap();
    let started = Instant::now();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < TRAFFIC_LIMIT {
        round += 1;
        let mut pipe = redis::pipe();
        for _ in 0..5 {
            pipe.cmd("GET").arg(HOT_KEY);
        }
        pipe.cmd("GET").arg(format!("feed:{}", round % FEEDS));
        pipe.cmd("SET")
            .arg(format!("user:{}:name", round % 50))
            .arg("x");
        pipe.query::<redis::Value>(&mut client)
            .expect("traffic through keyward");
        if round % 10 == 0 {
            refused_or_not(&mut client, &["INCR", "login:bob"]);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
