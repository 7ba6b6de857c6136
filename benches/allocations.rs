//! Heap allocations per forwarded command, counted by a global allocator wrapper.
//!
//! Runs keyward in-process in front of a private redis-server and drives it from a raw socket
//! with pipelines of `GET`s (and single `GET`s), after a warm-up that lets buffers reach their
//! steady size. Forwarding should allocate nothing per command beyond the buffers themselves,
//! whose growth is amortized over many commands, with or without policies in force; this
//! prints the figure for both.
//!
//!     cargo bench --bench allocations

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyward::config::Config;
use keyward::signals::Stop;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for(port: u16) {
    for _ in 0..500 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on {port}");
}

/// Sends `rounds` pipelines of `depth` GETs and reads every reply, reusing its buffers.
fn drive(stream: &mut TcpStream, depth: usize, rounds: usize, request: &[u8], reply: &mut [u8]) {
    let pipeline = request.repeat(depth);
    let expected = reply.len();
    let mut replies = vec![0u8; expected * depth];
    for _ in 0..rounds {
        stream.write_all(&pipeline).expect("write");
        stream.read_exact(&mut replies).expect("read");
    }
    reply.copy_from_slice(&replies[..expected]);
}

/// Every policy kind, in shadow mode, on the key the benchmark reads: each command pays for
/// a rate-limit decision, a cache lookup, a lock rule's write watch and hot-key counting.
const EVERY_POLICY: &str = r#"
[[rate_limit]]
name = "everything"
keys = ["key*"]
limit = 1000000000
period = "1s"
mode = "shadow"

[[cache]]
name = "everything"
keys = ["key*"]
ttl = "1m"
max_memory = "64MB"
mode = "shadow"

[[lock]]
name = "everything"
keys = ["key*"]
mode = "shadow"

[hotkeys]
enabled = true
"#;

fn main() {
    // keyward installs a process-wide metrics recorder, so it runs once per process: the
    // measurement with policies runs in a second process of this same program, given the
    // first one's Redis.
    if let Some(port) = std::env::var_os(WITH_POLICIES_ON_REDIS_PORT) {
        let redis_port = port.to_str().and_then(|p| p.parse().ok()).expect("a port");
        println!("heap allocations per forwarded GET (64-byte value), whole process, every policy in shadow mode:");
        measure(redis_port, EVERY_POLICY);
        return;
    }
    let redis_port = free_port();
    let dir = std::env::temp_dir();
    let redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    // Stopped however the measurement ends, a failed one included.
    let _redis = KillOnDrop(redis);
    wait_for(redis_port);
    println!("heap allocations per forwarded GET (64-byte value), whole process, no policies:");
    measure(redis_port, "");
    let status = Command::new(std::env::current_exe().expect("this program"))
        .env(WITH_POLICIES_ON_REDIS_PORT, redis_port.to_string())
        .status()
        .expect("runs again");
    assert!(status.success(), "the measurement with policies failed");
}

/// Set for the second run, which measures with every policy: the port of the Redis to use.
const WITH_POLICIES_ON_REDIS_PORT: &str = "KEYWARD_ALLOCATIONS_WITH_POLICIES_ON";

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs keyward in-process with `policies` and counts allocations over pipelines of GETs.
fn measure(redis_port: u16, policies: &str) {
    let port = free_port();
    let admin = free_port();
    let (config, _) = Config::parse(&format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n[upstream]\naddress = \"127.0.0.1:{redis_port}\"\n\
         [admin]\naddress = \"127.0.0.1:{admin}\"\n[runtime]\nworker_threads = 1\n{policies}"
    ))
    .expect("valid config");
    let (stop_sender, stop) = tokio::sync::oneshot::channel::<()>();
    let proxy = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(keyward::app::serve(config, None, async {
                let _ = stop.await;
                Ok(Stop::Interrupt)
            }))
            .expect("keyward runs");
    });
    wait_for(port);

    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .write_all(b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$64\r\n")
        .and_then(|()| stream.write_all(&[b'v'; 64]))
        .and_then(|()| stream.write_all(b"\r\n"))
        .expect("SET written");
    let mut ok = [0u8; 5];
    stream.read_exact(&mut ok).expect("+OK");
    let request = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    let mut reply = vec![0u8; 64 + 7];

    for (depth, rounds) in [(1, 20_000), (16, 5_000)] {
        drive(&mut stream, depth, rounds / 4, request, &mut reply);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        drive(&mut stream, depth, rounds, request, &mut reply);
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        let commands = (depth * rounds) as f64;
        println!(
            "  pipeline {depth:>2}: {:.3} per command ({allocations} allocations for {commands} commands)",
            allocations as f64 / commands
        );
    }
    assert_eq!(&reply[..5], b"$64\r\n", "the GETs were answered");

    drop(stream);
    let _ = stop_sender.send(());
    proxy.join().expect("keyward stopped");
}
