#!/usr/bin/env python3
"""Load benchmark: Redis direct, keyward, twemproxy and (given its binary) Predixy in one
interleaved run.

Starts a private redis-server (pinned to cpu0), keyward and the peers (pinned to cpu1, where
redis-benchmark also runs) on free loopback ports, then runs every scenario against every
target, target after target, for a number of rounds, and prints per-scenario medians, the
ratios of keyward to direct and to each peer, each proxy's CPU seconds per million requests
(from /proc) and keyward's memory. Absolute numbers on a shared machine are noise; the ratios are the result.
With --policies the targets run in a new order each round, and each ratio to keyward alone is
the median of the rounds' own ratios, with their middle half: the machine's speed drifts from
round to round more than it does within one.

A second redis-server pinned to cpu1 is measured too: a server answering every client on the
CPU that the proxies share with redis-benchmark. Unpipelined, where a read and a write per
request are most of the cost, a proxy does at least that much on cpu1, so Redis's fraction of
direct there is about the most any proxy reaches in this layout. Pipelined, a proxy that does
less per command than Redis (it leaves the commands' work to the Redis on cpu0) can pass it.

    python3 benches/load.py [--rounds 5] [--requests 200000] [--quick]
    python3 benches/load.py --policies            # keyward with and without policy rules
    python3 benches/load.py --policies --variants "cache (shadow)" --baseline OLD_BINARY
                                                  # one variant, this build against an older one
                                                  # (or several: --baseline A B, each named by
                                                  # its file name)
    python3 benches/load.py --policies --keyspace 1000   # keys over 1,000 instead of 10,000
    python3 benches/load.py --policies --variants "hot keys" --scenarios "GET, pipeline 16" --rounds 40
                                                  # one scenario only, for more rounds of it
    python3 benches/load.py --ratelimit-memory    # a million distinct keys through a rule
    python3 benches/load.py --cache               # Zipf GETs: direct, keyward, keyward + cache
    python3 benches/load.py --remote              # the same behind a relay adding 0.5 / 2 ms
                                                  # round trips, as a Redis across a network
    python3 benches/load.py --locks               # 50 clients contending for one lock
    python3 benches/load.py --rest                # GETs over keyward's REST API against RESP
    python3 benches/load.py --predixy PATH        # the same with Predixy as a peer too
    python3 benches/load.py --instructions [--predixy PATH]  # keyward's instructions per
                                                  # request, per policy (and Predixy's)
    python3 benches/load.py --instructions --variants "cache (enforce)" --missing 0.05
                                                  # the same where 5% of GETs miss the cache
    python3 benches/load.py --profile [--predixy PATH]  # per proxy and request: user and system
                                                  # CPU, context switches, syscalls by name
    python3 benches/load.py --scaling             # 1 and 2 worker threads, nothing pinned
    python3 benches/load.py --cluster             # keyward before a Redis Cluster, against
                                                  # redis-benchmark --cluster straight to it

Wall-clock figures on a shared machine move by tens of percent from run to run. --instructions
runs keyward under callgrind instead and counts what keyward itself executes per request, with
simulated cache misses (a 32 KiB L1 and a 1 MiB L2, as on the benchmark machine): the same
input gives the same count, so a change of a few percent shows.

Installs redis-tools and nutcracker from Debian if missing, and builds keyward in release mode.
Everything it starts listens on 127.0.0.1 and is stopped on exit.
"""

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYWARD = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "keyward")
CLIENTS = 50
KEYSPACE = 10_000
# The fraction of the keyspace left out of Redis (--missing).
MISSING = 0.0
VALUE_BYTES = 64
RUN_TIMEOUT = 120
IDLE_CONNECTIONS = 10_000

MGET_KEYS = ["key:__rand_int__"] * 10
# One rule matching every key the benchmark touches, with a limit it never reaches.
NEVER_HIT_RULE = """
[[rate_limit]]
name = "everything"
keys = ["key:*"]
limit = 1000000000
period = "1s"
mode = "{mode}"
"""
HOT_KEYS = """
[hotkeys]
enabled = true
"""
# Each policy kind in shadow mode on every key the benchmark touches: it does all its work on
# every command it matches and changes nothing. (A shadow cache rule without a sample_rate
# follows every key until it keeps more than 8,192 entries, then a halving sample of them:
# half of the benchmark's 10,000 keys. "cache (shadow, every key)" follows all of them.)
CACHE_SHADOW = """
[[cache]]
name = "everything"
keys = ["key:*"]
ttl = "1m"
max_memory = "64MB"
mode = "shadow"
"""
LOCK_SHADOW = """
[[lock]]
name = "everything"
keys = ["key:*"]
mode = "shadow"
"""
DENY_SHADOW = """
[[deny]]
name = "everything"
commands = ["GET", "SET", "MGET"]
keys = ["key:*"]
mode = "shadow"
"""
# Every policy kind at once.
ALL_POLICIES_SHADOW = NEVER_HIT_RULE.format(mode="shadow") + HOT_KEYS + CACHE_SHADOW + LOCK_SHADOW + DENY_SHADOW
# keyward without policies, then each policy configuration the benchmark compares with it.
POLICY_VARIANTS = [
    ("keyward", ""),
    ("rate limit (shadow)", NEVER_HIT_RULE.format(mode="shadow")),
    ("rate limit (enforce)", NEVER_HIT_RULE.format(mode="enforce")),
    ("hot keys", HOT_KEYS),
    ("hot keys (sample 0.1)", HOT_KEYS + "sample_rate = 0.1\n"),
    ("cache (shadow)", CACHE_SHADOW),
    ("cache (shadow, every key)", CACHE_SHADOW + "sample_rate = 1.0\n"),
    ("cache (shadow, sample 0.1)", CACHE_SHADOW + "sample_rate = 0.1\n"),
    ("lock (shadow)", LOCK_SHADOW),
    ("deny (shadow)", DENY_SHADOW),
    ("all policies (shadow)", ALL_POLICIES_SHADOW),
]
# Under callgrind keyward runs about 50 times slower, so a 10-second period of the hot keys'
# shortest window sees 50 times fewer commands, and each flush of the stage weighs 50 times
# more per request than it does at full speed. With one window of an hour no flush falls in a
# measured run: this row is the per-command cost alone.
INSTRUCTION_ONLY_VARIANTS = [
    ("hot keys (one 1h window)", HOT_KEYS + 'windows = ["1h"]\n'),
    # Reads answered from memory; with --missing, the cost of a miss, which fills the cache.
    ("cache (enforce)", CACHE_SHADOW.replace('mode = "shadow"', 'mode = "enforce"')),
]
SCENARIOS = [
    # name, redis-benchmark arguments, requests multiplier
    ("GET, no pipelining", ["-t", "get", "-P", "1"], 1),
    ("SET, no pipelining", ["-t", "set", "-P", "1"], 1),
    ("GET, pipeline 16", ["-t", "get", "-P", "16"], 4),
    ("SET, pipeline 16", ["-t", "set", "-P", "16"], 4),
    ("MGET 10 keys, pipeline 16", ["-P", "16", "MGET", *MGET_KEYS], 2),
]


def chosen(items, names, kind, separator=", "):
    """The items (name first) named, all without names; an unknown name ends the run with the
    list of known ones. Scenario names hold commas, so they are listed with semicolons."""
    known = [item[0] for item in items]
    unknown = set(names or []) - set(known)
    if unknown:
        raise SystemExit(f"no {kind} named {separator.join(sorted(unknown))}; the {kind}s: "
                         + separator.join(known))
    return [item for item in items if not names or item[0] in names]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_tools(valgrind=False):
    tools = [("redis-benchmark", "redis-tools"), ("redis-server", "redis-server"),
             ("nutcracker", "nutcracker"), ("taskset", "util-linux")]
    if valgrind:
        tools.append(("callgrind_control", "valgrind"))
    missing = [pkg for tool, pkg in tools
               if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        print(f"installing {' '.join(missing)}", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "keyward"], cwd=ROOT, check=True)


def wait_port(port, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start on port {port}")


def pinned(cpu, argv):
    """`argv` confined to one CPU; `None` leaves it free to run on any."""
    if cpu is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


def cpu_times(pid):
    """A process's user and system CPU seconds so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid):
    return sum(cpu_times(pid))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def benchmark(port, args, requests, cpus=1):
    argv = pinned(cpus, ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(CLIENTS),
                      "-n", str(requests), "-r", str(KEYSPACE), "-d", str(VALUE_BYTES), "--csv", *args])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True).stdout
    rows = [line.split(",") for line in out.strip().splitlines() if line and not line.startswith('"test"')]
    return float(rows[-1][1].strip('"'))


CLUSTER_SCENARIOS = SCENARIOS[:4]


def cluster_benchmark(work, start, start_keyward, rounds, requests):
    """Three cluster primaries pinned to cpu0; keyward in front of them (pinned to cpu1 with
    redis-benchmark) against redis-benchmark --cluster, which routes by slot itself."""
    ports = [free_port() for _ in range(3)]
    for port in ports:
        start(pinned(0, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", work, "--dbfilename", f"dump-{port}.rdb",
                         "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                         "--cluster-config-file", os.path.join(work, f"nodes-{port}.conf")]))
        wait_port(port, "cluster node")
    subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
                    "--cluster-yes"], check=True, capture_output=True, timeout=60)
    deadline = time.time() + 30
    while not all("cluster_state:ok" in subprocess.run(
            ["redis-cli", "-p", str(port), "CLUSTER", "INFO"], capture_output=True, text=True).stdout
                  for port in ports):
        if time.time() > deadline:
            sys.exit("the cluster did not come up")
        time.sleep(0.2)
    keyward_port, admin_port = free_port(), free_port()
    keyward = start_keyward("keyward-cluster", keyward_port, admin_port, upstream_port=ports[0],
                            upstream='topology = "cluster"\n')
    deadline = time.time() + 10
    while not ready(admin_port):
        if time.time() > deadline:
            sys.exit("keyward did not read the cluster's slot map")
        time.sleep(0.05)
    targets = [("direct (--cluster)", ports[0], ["--cluster"]), ("keyward", keyward_port, [])]
    for port, cluster_flag in ((keyward_port, []), (ports[0], ["--cluster"])):
        # Every key exists, so GETs read values wherever they run.
        benchmark(port, [*cluster_flag, "-t", "set"], KEYSPACE * 4)
    results = {(s[0], t[0]): [] for s in CLUSTER_SCENARIOS for t in targets}
    cpu = {s[0]: [] for s in CLUSTER_SCENARIOS}
    for round_number in range(rounds):
        for name, args, multiplier in CLUSTER_SCENARIOS:
            for target, port, extra in targets:
                before = cpu_seconds(keyward.pid)
                results[(name, target)].append(benchmark(port, [*extra, *args], requests * multiplier))
                if target == "keyward":
                    cpu[name].append((cpu_seconds(keyward.pid) - before) / (requests * multiplier) * 1e6)
        print(f"round {round_number + 1}/{rounds} done", flush=True)
    print()
    print(f"Redis Cluster of 3 primaries (cpu0); redis-benchmark on cpu1, {CLIENTS} clients, "
          f"{VALUE_BYTES}-byte values over {KEYSPACE:,} keys, {rounds} rounds, medians in requests/s")
    print("| scenario | direct (--cluster) | keyward | keyward/direct | keyward CPU µs per request |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, _, _ in CLUSTER_SCENARIOS:
        direct, ours = (statistics.median(results[(name, t)]) for t, _, _ in targets)
        print(f"| {name} | {direct:,.0f} | {ours:,.0f} | {ours / direct:.2f} | "
              f"{statistics.median(cpu[name]):.2f} |")


def ready(admin_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def preload(redis_port):
    """Every key the scenarios read, written once, straight into Redis, as redis-benchmark
    names them (`key:` and a 12-digit number below KEYSPACE), but for the last MISSING of them,
    which are deleted (SET scenarios write them). Random SETs would leave some keys out (e^-5
    of them after 5 per key), and a GET of a missing key is not what a cache keeps: each such
    GET would refill."""
    value = b"x" * VALUE_BYTES
    present = round(KEYSPACE * (1 - MISSING))

    def command(n):
        if n < present:
            return b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$%d\r\n%s\r\n" % (n, VALUE_BYTES, value)
        return b"*2\r\n$3\r\nDEL\r\n$16\r\nkey:%012d\r\n" % n

    with socket.create_connection(("127.0.0.1", redis_port)) as s:
        for start in range(0, KEYSPACE, 10_000):
            batch = range(start, min(start + 10_000, KEYSPACE))
            s.sendall(b"".join(command(n) for n in batch))
            replies = b""
            while replies.count(b"\r\n") < len(batch):
                chunk = s.recv(1 << 16)
                if not chunk:
                    sys.exit("Redis closed the connection while keys were preloaded")
                replies += chunk
            if b"-" in replies:
                sys.exit(f"Redis refused a preloaded SET: {replies[:200]!r}")


def open_idle_connections(port, count):
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        sockets.append(s)
    # One round trip on the last connection proves every earlier one was accepted.
    sockets[-1].sendall(b"PING\r\n")
    sockets[-1].recv(16)
    return sockets


ZIPF_KEYS = 100_000
ZIPF_SCENARIOS = [("Zipf GET, no pipelining", 1), ("Zipf GET, pipeline 16", 16)]
CACHE_RULE = """
[[cache]]
name = "zipf"
keys = ["zipf:*"]
ttl = "10m"
max_memory = "64MB"
"""


def bench_tool(name):
    """Builds a load generator in benches/ (a bench target without harness); returns its path."""
    import json
    out = subprocess.run(["cargo", "bench", "--no-run", "--bench", name, "--message-format=json"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable") \
                and message["target"]["name"] == name:
            return message["executable"]
    raise RuntimeError(f"{name} was not built")


def zipf_measure(tool, port, pipeline, seconds, keys=ZIPF_KEYS, exponent=1.0, clients=CLIENTS):
    """One zipf_get run: its requests/s and round-trip latencies (p50_us, p99_us)."""
    out = subprocess.run(pinned(1, [tool, "--port", str(port), "--keys", str(keys), "--exponent",
                                     str(exponent), "--clients", str(clients), "--pipeline", str(pipeline),
                                     "--seconds", str(seconds)]),
                         capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True).stdout
    return {name: float(value) for name, value in (pair.split("=") for pair in out.split())}


def zipf_run(tool, port, pipeline, seconds):
    return zipf_measure(tool, port, pipeline, seconds)["rps"]


def cache_counts(port):
    """keyward's cache hits and misses so far."""
    stats = subprocess.run(["redis-cli", "-p", str(port), "KEYWARD", "CACHE", "STATS"],
                           capture_output=True, text=True, check=True).stdout
    return float(stats.split("hits=")[1].split()[0]), float(stats.split("misses=")[1].split()[0])


def cache_benchmark(redis_port, keyward_port, start_keyward, rounds, seconds):
    """Zipf(1.0) GETs over 100,000 keys: Redis direct, keyward, keyward with a cache rule."""
    tool = bench_tool("zipf_get")
    subprocess.run([tool, "--port", str(redis_port), "--keys", str(ZIPF_KEYS), "--populate"], check=True)
    cached_port = free_port()
    start_keyward("keyward-cache", cached_port, free_port(), CACHE_RULE)
    time.sleep(0.5)
    targets = [("direct", redis_port), ("keyward", keyward_port), ("keyward + cache", cached_port)]
    results = {(s, t): [] for s, _ in ZIPF_SCENARIOS for t, _ in targets}
    for round_number in range(rounds):
        for scenario, pipeline in ZIPF_SCENARIOS:
            for target, port in targets:
                results[(scenario, target)].append(zipf_run(tool, port, pipeline, seconds))
        print(f"round {round_number + 1}/{rounds} done", flush=True)
    hits, misses = cache_counts(cached_port)
    print()
    print(f"Zipf(1.0) GETs over {ZIPF_KEYS:,} keys, {VALUE_BYTES}-byte values, {CLIENTS} clients, "
          f"{seconds} s per run, {rounds} rounds, medians in requests/s; cache hit ratio "
          f"{hits / (hits + misses):.3f} over the whole run")
    print("| scenario | direct | keyward | keyward + cache | cache/direct | cache/keyward |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for scenario, _ in ZIPF_SCENARIOS:
        direct, plain, cached = (statistics.median(results[(scenario, t)]) for t, _ in targets)
        print(f"| {scenario} | {direct:,.0f} | {plain:,.0f} | {cached:,.0f} | {cached / direct:.2f} | "
              f"{cached / plain:.2f} |")


# Predixy with one worker thread in front of the one Redis (its README's standalone pool).
PREDIXY_CONFIG = """Bind 127.0.0.1:{port}
WorkerThreads 1
ClientTimeout 300
Authority {{
    Auth {{
        Mode write
    }}
}}
StandaloneServerPool {{
    RefreshMethod fixed
    Group g {{
        + 127.0.0.1:{redis_port}
    }}
}}
"""

# Round trips that the delay relay adds between the clients or keyward and Redis (--remote).
REMOTE_RTTS_US = [500, 2000]
REMOTE_CLIENTS = [10, 50]
# The keys read: Zipf(1.0) over all of them, or evenly over a hot set (exponent 0).
REMOTE_KEY_SETS = [("Zipf over 100,000 keys", ZIPF_KEYS, 1.0), ("hot set of 1,000 keys", 1_000, 0.0)]


def remote_benchmark(redis_port, start, start_keyward, seconds):
    """Redis behind a relay that delays each direction (pinned beside Redis on cpu0): GETs
    straight through the relay, through keyward in front of it, and through keyward with a
    cache rule, at each round trip, key set and client count. Each target runs the load once
    to warm up (the cache fills), then once measured."""
    zipf = bench_tool("zipf_get")
    relay = bench_tool("delay_relay")
    subprocess.run([zipf, "--port", str(redis_port), "--keys", str(ZIPF_KEYS), "--populate"], check=True)
    rows = []
    for rtt in REMOTE_RTTS_US:
        relay_port = free_port()
        start(pinned(0, [relay, "--listen", str(relay_port), "--to", str(redis_port), "--rtt-us", str(rtt)]))
        wait_port(relay_port, "delay relay")
        plain_port, cached_port = free_port(), free_port()
        start_keyward(f"keyward-remote-{rtt}", plain_port, free_port(), upstream_port=relay_port)
        start_keyward(f"keyward-remote-cache-{rtt}", cached_port, free_port(), CACHE_RULE,
                      upstream_port=relay_port)
        time.sleep(0.5)
        targets = [("direct", relay_port), ("keyward", plain_port), ("keyward + cache", cached_port)]
        for key_set, keys, exponent in REMOTE_KEY_SETS:
            for clients in REMOTE_CLIENTS:
                cell = {}
                for target, port in targets:
                    zipf_measure(zipf, port, 1, 1, keys, exponent, clients)
                    counts = cache_counts(port) if target == "keyward + cache" else None
                    cell[target] = zipf_measure(zipf, port, 1, seconds, keys, exponent, clients)
                    if counts:
                        hits, misses = (after - before for after, before in zip(cache_counts(port), counts))
                        cell[target]["hit_ratio"] = hits / max(hits + misses, 1)
                rows.append((rtt, key_set, clients, cell))
                print(f"{rtt} us, {key_set}, {clients} clients done", flush=True)
    print()
    print(f"GETs of {VALUE_BYTES}-byte values, no pipelining, Redis behind a relay adding the round trip "
          f"(rtt); {seconds} s per measured run; requests/s and round-trip latency p50/p99 in µs")
    print("| rtt | keys | clients | direct rps | keyward rps | cached rps | cached/direct | "
          "direct p50/p99 | keyward p50/p99 | cached p50/p99 | hit ratio |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rtt, key_set, clients, cell in rows:
        direct, plain, cached = cell["direct"], cell["keyward"], cell["keyward + cache"]
        latency = lambda run: f"{run['p50_us']:,.0f} / {run['p99_us']:,.0f}"
        print(f"| {rtt / 1000:g} ms | {key_set} | {clients} | {direct['rps']:,.0f} | {plain['rps']:,.0f} | "
              f"{cached['rps']:,.0f} | {cached['rps'] / direct['rps']:.1f} | {latency(direct)} | "
              f"{latency(plain)} | {latency(cached)} | {cached['hit_ratio']:.3f} |")


LOCK_RULE = """
[[lock]]
name = "bench"
keys = ["lock:*"]
max_wait = "10s"
"""


def lock_benchmark(redis_port, start_keyward, rounds, seconds):
    """50 clients spin-retrying one lock: Redis direct against keyward with a lock rule."""
    tool = bench_tool("lock_contention")
    locked_port = free_port()
    start_keyward("keyward-locks", locked_port, free_port(), LOCK_RULE)
    time.sleep(0.5)
    rows = {"direct": [], "keyward + lock rule": []}
    for round_number in range(rounds):
        for target, port in [("direct", redis_port), ("keyward + lock rule", locked_port)]:
            out = subprocess.run(pinned(1, [tool, "--port", str(port), "--redis-port", str(redis_port),
                                            "--clients", str(CLIENTS), "--seconds", str(seconds)]),
                                 capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True).stdout
            rows[target].append(dict(pair.split("=") for pair in out.split()))
        print(f"round {round_number + 1}/{rounds} done", flush=True)
    print()
    print(f"{CLIENTS} clients, one key: SET NX PX 1000, on nil sleep 1-10 ms and retry, hold 1 ms, release "
          f"by compare-and-delete script; {seconds} s per run, {rounds} rounds, medians")
    print("| target | acquisitions/s | p50 wait | p99 wait | max wait | Jain's fairness | "
          "Redis commands per acquisition |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for target, runs in rows.items():
        median = lambda field: statistics.median(float(run[field]) for run in runs)
        print(f"| {target} | {median('per_second'):,.0f} | {median('p50_ms'):.1f} ms | "
              f"{median('p99_ms'):.1f} ms | {median('max_ms'):.1f} ms | {median('jain'):.3f} | "
              f"{median('commands_per_acquisition'):.2f} |")


REST_API = """
[http_api]
address = "127.0.0.1:{port}"
[[http_api.tokens]]
name = "bench"
token_env = "KEYWARD_BENCH_REST_TOKEN"
"""


def rest_benchmark(start_keyward, rounds, seconds):
    """GETs through keyward over its REST API and over RESP, one request at a time per client."""
    tool = bench_tool("rest_get")
    os.environ["KEYWARD_BENCH_REST_TOKEN"] = "bench-token"
    resp_port, rest_port = free_port(), free_port()
    keyward = start_keyward("keyward-rest", resp_port, free_port(), REST_API.format(port=rest_port))
    wait_port(rest_port, "keyward's REST API")
    subprocess.run([tool, "--port", str(resp_port), "--keys", str(KEYSPACE), "--populate"], check=True)
    targets = [("RESP", ["--port", str(resp_port)]),
               ("REST", ["--rest-port", str(rest_port), "--token", "bench-token"])]
    results = {name: [] for name, _ in targets}
    for round_number in range(rounds):
        for name, args in targets:
            before = cpu_seconds(keyward.pid)
            out = subprocess.run(pinned(1, [tool, *args, "--keys", str(KEYSPACE), "--clients", str(CLIENTS),
                                            "--seconds", str(seconds)]),
                                 capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True).stdout
            fields = dict(field.split("=") for field in out.split())
            cpu_us = (cpu_seconds(keyward.pid) - before) / int(fields["requests"]) * 1e6
            results[name].append((float(fields["rps"]), int(fields["p50_us"]), int(fields["p99_us"]), cpu_us))
        print(f"round {round_number + 1}/{rounds} done", flush=True)
    print()
    print(f"GET through keyward, {CLIENTS} clients one request at a time, {VALUE_BYTES}-byte values over "
          f"{KEYSPACE:,} keys, {seconds} s per run, {rounds} rounds, medians")
    print("| protocol | requests/s | p50 latency | p99 latency | keyward CPU per request |")
    print("| --- | ---: | ---: | ---: | ---: |")
    medians = {}
    for name, _ in targets:
        rps, p50, p99, cpu = (statistics.median(run[i] for run in results[name]) for i in range(4))
        medians[name] = rps
        print(f"| {name} | {rps:,.0f} | {p50 / 1000:.2f} ms | {p99 / 1000:.2f} ms | {cpu:.1f} µs |")
    print(f"\nREST/RESP throughput: {medians['REST'] / medians['RESP']:.2f}")


def report_policies(results, cpu_per_million, targets, scenarios, rounds):
    print()
    print(f"redis-benchmark: {CLIENTS} clients, {VALUE_BYTES}-byte values, random keys over {KEYSPACE}, "
          f"{rounds} rounds, medians in requests/s; one rule of each kind matching every key the "
          f"benchmark touches (a rate limit never hit); hot keys with the default [hotkeys] settings "
          f"(sample_rate 1.0), and with sample_rate 0.1; 'all policies': every kind at once, in shadow mode")
    print("Each ratio is the median over rounds of that round's run against keyward's, with the "
          "middle half of the rounds' ratios in brackets: the machine's speed drifts more between "
          "rounds than within one.")
    names = [name for name, _ in targets]
    compared = names[2:]
    print("| scenario | " + " | ".join(names) + " | " + " | ".join(f"{n}/keyward" for n in compared) + " |")
    print("| --- | " + " | ".join("---:" for _ in names + compared) + " |")
    for scenario, _, _ in scenarios:
        medians = [statistics.median(results[(scenario, name)]) for name in names]
        ratios = [paired_ratio(results[(scenario, name)], results[(scenario, "keyward")]) for name in compared]
        print(f"| {scenario} | " + " | ".join(f"{m:,.0f}" for m in medians)
              + " | " + " | ".join(ratios) + " |")
    print()
    print("keyward's CPU time per request (user and system, from /proc), in µs, and each variant's as a "
          "multiple of keyward alone's, paired by round as above:")
    print("| scenario | " + " | ".join(names[1:]) + " | " + " | ".join(f"{n}/keyward" for n in compared) + " |")
    print("| --- | " + " | ".join("---:" for _ in names[1:] + compared) + " |")
    for scenario, _, _ in scenarios:
        micros = [statistics.median(cpu_per_million[(scenario, name)]) for name in names[1:]]
        ratios = [paired_ratio(cpu_per_million[(scenario, name)], cpu_per_million[(scenario, "keyward")])
                  for name in compared]
        print(f"| {scenario} | " + " | ".join(f"{m:.3f}" for m in micros) + " | " + " | ".join(ratios) + " |")


def paired_ratio(runs, baseline_runs):
    """The median of each round's ratio of `runs` to `baseline_runs`, and the middle half of
    those ratios (their quartiles), as text."""
    ratios = [run / base for run, base in zip(runs, baseline_runs)]
    median = statistics.median(ratios)
    if len(ratios) < 4:
        return f"{median:.3f}"
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{median:.3f} ({low:.2f}–{high:.2f})"


# Requests per scenario under callgrind, which runs keyward about 50 times slower.
INSTRUCTION_REQUESTS = {1: 20_000, 16: 200_000}
CALLGRIND = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--D1=32768,8,64", "--LL=1048576,16,64"]


def callgrind_totals(path):
    """The event totals of a callgrind dump, by event name."""
    with open(path) as f:
        lines = f.read().splitlines()
    events = next(line for line in lines if line.startswith("events:")).split()[1:]
    totals = next(line for line in lines if line.startswith("totals:")).split()[1:]
    return dict(zip(events, map(int, totals)))


def baseline_builds(paths):
    """The builds given with --baseline, each labelled by its file name (" (baseline)" for a
    single one, as before several could be given)."""
    if len(paths) == 1:
        return [(" (baseline)", paths[0])]
    names = [os.path.basename(path) for path in paths]
    if len(set(names)) < len(names):
        raise SystemExit("each --baseline build needs a file name of its own: the tables name them by it")
    return [(f" ({name})", path) for name, path in zip(names, paths)]


def instructions(work, start_keyward, variants, reset, start_predixy=None, baseline=()):
    """Each variant's instructions and simulated cache misses per request, counted by callgrind
    from just before to just after each scenario (startup and warm-up excluded). With
    `start_predixy`, Predixy is counted the same way, for the user-space work of the peer; with
    `baseline` (keyward binaries), each variant is counted on each of them too. `reset` writes the keys
    as they were before the first (the SET scenarios write missing ones)."""
    rows = []

    def count(name, process, port, out):
        reset()
        # Connections, pools and summaries warmed up, and the cache filled with every key.
        benchmark(port, ["-t", "get", "-P", "16"], 100_000)
        # GETs first: a SET scenario drops most cached keys, and refilling is not the steady state.
        for scenario, args, _ in sorted(SCENARIOS[:4], key=lambda s: "set" in s[1]):
            pipeline = int(args[args.index("-P") + 1])
            requests = INSTRUCTION_REQUESTS[pipeline]
            subprocess.run(["callgrind_control", "--zero", str(process.pid)], capture_output=True, check=True)
            benchmark(port, args, requests)
            subprocess.run(["callgrind_control", "--dump", str(process.pid)], capture_output=True, check=True)
            dumps = sorted((f for f in os.listdir(work) if f.startswith(os.path.basename(out) + ".")),
                           key=lambda f: int(f.rsplit(".", 1)[1]))
            totals = callgrind_totals(os.path.join(work, dumps[-1]))
            rows.append((name, scenario, totals, requests))
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)

    builds = [("", KEYWARD)] + baseline_builds(baseline)
    for name, extra in variants:
        for label, binary in builds:
            port = free_port()
            out = os.path.join(work, f"callgrind-{len(rows)}")
            keyward = start_keyward(f"keyward-callgrind-{len(rows)}", port, free_port(), extra,
                                    wrapper=[*CALLGRIND, f"--callgrind-out-file={out}"], timeout=60,
                                    binary=binary)
            count(name + label, keyward, port, out)
    if start_predixy:
        out = os.path.join(work, "callgrind-predixy")
        predixy, port = start_predixy([*CALLGRIND, f"--callgrind-out-file={out}"])
        count("Predixy", predixy, port, out)
    print()
    print("keyward under callgrind, per request (instructions; L1 and L2 data misses, simulated):")
    print("| variant | scenario | instructions | L1 misses | L2 misses | instructions / keyward |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    base = {}
    for name, scenario, totals, requests in rows:
        per = lambda *events: sum(totals[e] for e in events) / requests
        ir = per("Ir")
        base.setdefault(scenario, ir)
        print(f"| {name} | {scenario} | {ir:,.0f} | {per('D1mr', 'D1mw'):.1f} | {per('DLmr', 'DLmw'):.2f} | "
              f"{ir / base[scenario]:.2f} |")


# The syscalls a proxy's request path makes, counted per request by --profile.
PROFILED_SYSCALLS = ["epoll_wait", "epoll_pwait", "epoll_ctl", "read", "recvfrom", "readv", "write",
                     "sendto", "writev", "sendmsg", "futex"]


def counted(pid, run):
    """Runs `run()` while perf counts the process's syscalls (by name) and context switches;
    returns what `run` returned and the counts. Counting, not tracing, but enabling the syscall
    tracepoints still sends every syscall down the kernel's slow path: a counted run is several
    times slower, so its times are not used."""
    events = ["context-switches", "raw_syscalls:sys_enter",
              *(f"syscalls:sys_enter_{name}" for name in PROFILED_SYSCALLS)]
    out = tempfile.mktemp(prefix="keyward-perf-")
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out, "-e", ",".join(events), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        result = run()
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=10)
    counts = {}
    with open(out) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[0].isdigit():
                counts[fields[2].replace("syscalls:sys_enter_", "")] = int(fields[0])
    os.unlink(out)
    return result, counts


def profile(proxies, ports, requests):
    """Per request, for each proxy: user and system CPU (from /proc, in a run of its own),
    then, in a second run, context switches (the proxy's threads going to sleep and being
    woken) and syscalls by name (perf's counters)."""
    rows = []
    for name, args, multiplier in SCENARIOS:
        count = requests * multiplier
        for proxy, process in proxies.items():
            user, system = cpu_times(process.pid)
            rps = benchmark(ports[proxy], args, count)
            after_user, after_system = cpu_times(process.pid)
            _, counts = counted(process.pid, lambda: benchmark(ports[proxy], args, count))
            rows.append((name, proxy, rps, (after_user - user) / count * 1e6,
                         (after_system - system) / count * 1e6,
                         {event: n / count for event, n in counts.items()}))
    print()
    print(f"Where each proxy's time goes, per request (redis-benchmark, {CLIENTS} clients, {requests:,} "
          f"requests per unpipelined run; CPU from /proc, then syscalls and switches counted by perf in a second run):")
    shown = [name for name in PROFILED_SYSCALLS
             if any(row[5].get(name, 0) >= 0.005 for row in rows)]
    print("| scenario | proxy | requests/s | user µs | system µs | context switches | syscalls | "
          + " | ".join(shown) + " |")
    print("| --- | --- |" + " ---: |" * (5 + len(shown)))
    for name, proxy, rps, user, system, per in rows:
        print(f"| {name} | {proxy} | {rps:,.0f} | {user:.2f} | {system:.2f} | "
              f"{per.get('context-switches', 0):.3f} | {per.get('raw_syscalls:sys_enter', 0):.2f} | "
              + " | ".join(f"{per.get(event, 0):.3f}" for event in shown) + " |")


SCALING_CACHE_RULE = """
[[cache]]
name = "every key"
keys = ["key:*"]
ttl = "10m"
max_memory = "64MB"
"""
# name, redis-benchmark arguments, requests multiplier, whether keyward answers from its cache.
SCALING_SCENARIOS = [
    ("GET, no pipelining", ["-t", "get", "-P", "1"], 1, False),
    ("GET, pipeline 16", ["-t", "get", "-P", "16"], 8, False),
    ("cached GET, no pipelining", ["-t", "get", "-P", "1"], 1, True),
    ("cached GET, pipeline 16", ["-t", "get", "-P", "16"], 8, True),
]


def scaling(start_keyward, rounds, requests):
    """keyward with one worker thread and with two, on both CPUs (not pinned), forwarding
    to Redis and answering from its cache (where Redis does no work and the load generator is
    the only other busy process): throughput, and the CPUs keyward and redis-benchmark used."""
    import resource
    variants = []
    for threads in (1, 2):
        for cached in (False, True):
            port = free_port()
            extra = f"[runtime]\nworker_threads = {threads}\n" + (SCALING_CACHE_RULE if cached else "")
            process = start_keyward(f"keyward-{threads}-{cached}", port, free_port(), extra, cpus=None)
            if cached:
                # Every key read once, so that the runs measure hits.
                benchmark(port, ["-t", "get", "-P", "16"], KEYSPACE * 5, cpus=None)
            variants.append((threads, cached, port, process))
    results = {}
    for round_number in range(rounds):
        for name, args, multiplier, cached in SCALING_SCENARIOS:
            count = requests * multiplier
            for threads, for_cache, port, process in variants:
                if for_cache != cached:
                    continue
                before = cpu_seconds(process.pid)
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.time()
                rps = benchmark(port, args, count, cpus=None)
                wall = time.time() - started
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                bench_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
                results.setdefault((name, threads), []).append(
                    (rps, (cpu_seconds(process.pid) - before) / wall, bench_cpu / wall))
        print(f"round {round_number + 1}/{rounds} done", flush=True)
    print()
    print(f"keyward with 1 and 2 worker threads; keyward and redis-benchmark not pinned, Redis on cpu0 "
          f"(2 CPUs in all), {CLIENTS} clients, {rounds} rounds, medians; CPUs used = CPU seconds per "
          f"second of the run; cached: every GET answered from keyward's cache")
    print("| scenario | requests/s, 1 thread | requests/s, 2 threads | 2 threads / 1 | keyward CPUs, 1 thread "
          "| keyward CPUs, 2 threads | redis-benchmark CPUs, 1 thread | redis-benchmark CPUs, 2 threads |")
    print("| --- |" + " ---: |" * 7)
    for name, _, _, _ in SCALING_SCENARIOS:
        one, two = ([statistics.median(run[i] for run in results[(name, threads)]) for i in range(3)]
                    for threads in (1, 2))
        print(f"| {name} | {one[0]:,.0f} | {two[0]:,.0f} | {two[0] / one[0]:.2f} | {one[1]:.2f} | "
              f"{two[1]:.2f} | {one[2]:.2f} | {two[2]:.2f} |")


def ratelimit_memory(redis_port, start_keyward):
    """A million distinct keys through one rate-limit rule: buckets and RSS while they are
    fresh, and after the janitor has dropped the idle ones."""
    port, admin = free_port(), free_port()
    keyward = start_keyward("keyward-memory", port, admin,
                            '[[rate_limit]]\nname = "per-key"\nkeys = ["key:*"]\nlimit = 100\nperiod = "1s"\n')
    def buckets():
        stats = subprocess.run(["redis-cli", "-p", str(port), "KEYWARD", "RATELIMIT", "STATS"],
                               capture_output=True, text=True, check=True).stdout
        return float(stats.split("buckets=")[1].split()[0])

    rows = [("before", 0, rss_kib(keyward.pid))]
    for run in range(1, 4):
        subprocess.run(pinned(1, ["redis-benchmark", "-p", str(port), "-c", str(CLIENTS), "-n", "2000000",
                                  "-r", "1000000", "-P", "16", "-q", "INCR", "key:__rand_int__"]),
                       capture_output=True, timeout=RUN_TIMEOUT * 2, check=True)
        rows.append((f"right after load {run}", buckets(), rss_kib(keyward.pid)))
    time.sleep(11)
    rows.append(("11 s later (idle buckets are swept every 5 s)", buckets(), rss_kib(keyward.pid)))
    print()
    print("3 loads of 2,000,000 INCRs over 1,000,000 distinct keys, through one rate-limit rule "
          "(limit 100/s per key):")
    print("| moment | buckets held | keyward RSS |")
    print("| --- | ---: | ---: |")
    for moment, held, rss in rows:
        print(f"| {moment} | {held:,.0f} | {rss / 1024:.1f} MiB |")


def main():
    global KEYSPACE, MISSING
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200_000, help="requests per unpipelined run")
    parser.add_argument("--quick", action="store_true", help="1 round, 50,000 requests: a smoke run")
    parser.add_argument("--policies", action="store_true",
                        help="compare keyward without policies to keyward with a rate-limit rule "
                             "matching every key, in shadow and in enforce mode")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="with --policies or --instructions, only these policy variants (as the "
                             "tables name them)")
    parser.add_argument("--scenarios", nargs="+", metavar="NAME",
                        help="with --policies, only these scenarios (as the tables name them): more "
                             "rounds of the one in question in the same time")
    parser.add_argument("--baseline", metavar="PATH", nargs="+", default=[],
                        help="with --policies or --instructions, also run each variant on the keyward "
                             "binary at each PATH (older or experimental builds, named by their file "
                             "names), in the same interleaved rounds: a same-sitting comparison "
                             "(their ratios are to this build's keyward without policies)")
    parser.add_argument("--cache", action="store_true",
                        help="Zipf-distributed GETs over 100,000 keys: Redis direct, keyward, and "
                             "keyward with a cache rule")
    parser.add_argument("--remote", action="store_true",
                        help="Redis behind a relay that adds 0.5 ms or 2 ms round trips: GETs direct, "
                             "through keyward, and through keyward with a cache rule")
    parser.add_argument("--locks", action="store_true",
                        help="50 clients contending for one lock: Redis direct and keyward with a "
                             "lock rule")
    parser.add_argument("--rest", action="store_true",
                        help="GETs through keyward's REST API against the same GETs over RESP")
    parser.add_argument("--cluster", action="store_true",
                        help="keyward in front of a Redis Cluster against redis-benchmark --cluster")
    parser.add_argument("--instructions", action="store_true",
                        help="count keyward's instructions per request under callgrind, without "
                             "policies, with each policy variant of --policies, and with hot keys "
                             "over one window of an hour (no stage flush in the run)")
    parser.add_argument("--predixy", metavar="PATH",
                        help="a Predixy binary (../shared/peers/build-predixy.sh builds one): run it "
                             "as a peer beside twemproxy, with one worker thread (with --instructions, "
                             "count its instructions too)")
    parser.add_argument("--profile", action="store_true",
                        help="with each proxy, count per request its user and system CPU, context "
                             "switches and syscalls by name (perf stat), instead of the ratios")
    parser.add_argument("--scaling", action="store_true",
                        help="keyward with 1 and 2 worker threads, unpinned, forwarding and answering "
                             "from its cache: how throughput grows with the second thread")
    parser.add_argument("--ratelimit-memory", action="store_true",
                        help="drive a million distinct keys through a rate-limit rule and report "
                             "buckets and RSS, before and after idle buckets are dropped")
    parser.add_argument("--keyspace", type=int, default=KEYSPACE,
                        help=f"random keys over this many (default {KEYSPACE:,}): what a policy keeps "
                             "per key grows with it, and so do its cache misses")
    parser.add_argument("--missing", type=float, default=MISSING, metavar="FRACTION",
                        help="leave this fraction of the keys out of Redis: under a cache rule "
                             "their GETs miss every time (a nil is not kept), until a SET scenario "
                             "writes them; --instructions runs its GET scenarios first")
    options = parser.parse_args()
    if options.scenarios and not options.policies:
        parser.error("--scenarios chooses among the scenarios of --policies")
    KEYSPACE, MISSING = options.keyspace, options.missing
    if options.quick:
        options.rounds, options.requests = 1, 50_000
    ensure_tools(valgrind=options.instructions)

    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    work = tempfile.mkdtemp(prefix="keyward-load-")
    redis_port, keyward_port, admin_port, twem_port = (free_port() for _ in range(4))
    processes = []

    def start(argv, **kwargs):
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        processes.append(process)
        return process

    try:
        def start_redis(cpu, port):
            start(pinned(cpu, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", work]))
            wait_port(port, "redis-server")

        start_redis(0, redis_port)
        def start_keyward(name, port, admin, extra="", wrapper=(), timeout=10, upstream_port=redis_port,
                          upstream="", cpus=1, binary=KEYWARD):
            config = os.path.join(work, f"{name}.toml")
            with open(config, "w") as f:
                f.write(f'[listen]\naddress = "127.0.0.1:{port}"\nmax_clients = {IDLE_CONNECTIONS + 1000}\n'
                        f'[upstream]\naddress = "127.0.0.1:{upstream_port}"\n{upstream}'
                        f'[admin]\naddress = "127.0.0.1:{admin}"\n[log]\nlevel = "warn"\n{extra}')
            process = start(pinned(cpus, [*wrapper, binary, "--config", config]))
            wait_port(port, name, timeout)
            return process

        if options.cluster:
            return cluster_benchmark(work, start, start_keyward, options.rounds, options.requests)
        def start_predixy(wrapper=()):
            port = free_port()
            config = os.path.join(work, "predixy.conf")
            with open(config, "w") as f:
                f.write(PREDIXY_CONFIG.format(port=port, redis_port=redis_port))
            process = start(pinned(1, [*wrapper, options.predixy, config]))
            wait_port(port, "Predixy", 60 if wrapper else 10)
            return process, port

        if options.instructions:
            # Keyward alone runs anyway.
            variants = chosen((POLICY_VARIANTS + INSTRUCTION_ONLY_VARIANTS)[1:], options.variants, "policy variant")
            return instructions(work, start_keyward, POLICY_VARIANTS[:1] + variants,
                                lambda: preload(redis_port), start_predixy if options.predixy else None, options.baseline)
        keyward = start_keyward("keyward", keyward_port, admin_port)
        if options.ratelimit_memory:
            return ratelimit_memory(redis_port, start_keyward)
        if options.locks:
            return lock_benchmark(redis_port, start_keyward, options.rounds, 2 if options.quick else 5)
        if options.rest:
            return rest_benchmark(start_keyward, options.rounds, 2 if options.quick else 5)
        if options.remote:
            return remote_benchmark(redis_port, start, start_keyward, 2 if options.quick else 5)
        if options.scaling:
            preload(redis_port)
            return scaling(start_keyward, options.rounds, options.requests)
        if options.cache:
            seconds = 2 if options.quick else 5
            return cache_benchmark(redis_port, keyward_port, start_keyward, options.rounds, seconds)
        twem_config = os.path.join(work, "nutcracker.yml")
        with open(twem_config, "w") as f:
            f.write(f"alpha:\n  listen: 127.0.0.1:{twem_port}\n  hash: fnv1a_64\n  distribution: ketama\n"
                    f"  redis: true\n  server_connections: 1\n  servers:\n   - 127.0.0.1:{redis_port}:1\n")
        nutcracker = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
        twemproxy = start(pinned(1, [nutcracker, "-c", twem_config, "-o", os.path.join(work, "nutcracker.log")]))
        wait_port(twem_port, "twemproxy")
        # Each proxy's process, for its CPU time per request.
        proxies = {"keyward": keyward, "twemproxy": twemproxy}
        if options.predixy and not options.policies:
            proxies["Predixy"], predixy_port = start_predixy()

        time.sleep(0.5)
        idle_rss = rss_kib(keyward.pid)
        preload(redis_port)
        if options.profile:
            ports = {"keyward": keyward_port, "twemproxy": twem_port}
            if "Predixy" in proxies:
                ports["Predixy"] = predixy_port
            return profile(proxies, ports, options.requests)

        scenarios = SCENARIOS
        if not options.policies:
            # A server answering every client on the CPU that redis-benchmark and the proxies
            # share (see the module doc for what its figures bound).
            shared_cpu_port = free_port()
            start_redis(1, shared_cpu_port)
            preload(shared_cpu_port)
            targets = [("direct", redis_port), ("keyward", keyward_port), ("twemproxy", twem_port)]
            if "Predixy" in proxies:
                targets.append(("Predixy", predixy_port))
            targets.append(("Redis on cpu1", shared_cpu_port))
        else:
            targets = [("direct", redis_port), ("keyward", keyward_port)]
            variants = chosen(POLICY_VARIANTS[1:], options.variants, "policy variant")
            builds = [("", KEYWARD)] + baseline_builds(options.baseline)
            for number, (name, extra) in enumerate(variants):
                for label, binary in builds:
                    port = free_port()
                    proxies[name + label] = start_keyward(f"keyward-variant-{number}{label.strip(' ()')}", port,
                                                          free_port(), extra, binary=binary)
                    targets.append((name + label, port))
            scenarios = chosen(SCENARIOS[:4], options.scenarios, "scenario", "; ")
        results = {(s[0], t[0]): [] for s in scenarios for t in targets}
        cpu_per_million = {(s[0], proxy): [] for s in scenarios for proxy in proxies}
        started = time.time()
        for round_number in range(options.rounds):
            for name, args, multiplier in scenarios:
                requests = options.requests * multiplier
                # With policies, the variants run in a new order each round, so that none is
                # always measured just after a slow or a fast one.
                order = random.sample(targets, len(targets)) if options.policies else targets
                for target, port in order:
                    process = proxies.get(target)
                    before = process and cpu_seconds(process.pid)
                    rps = benchmark(port, args, requests)
                    results[(name, target)].append(rps)
                    if process:
                        used = cpu_seconds(process.pid) - before
                        cpu_per_million[(name, target)].append(used / requests * 1e6)
            print(f"round {round_number + 1}/{options.rounds} done ({time.time() - started:.0f}s)", flush=True)
        loaded_rss = rss_kib(keyward.pid)
        if options.policies:
            return report_policies(results, cpu_per_million, targets, scenarios, options.rounds)

        before = rss_kib(keyward.pid)
        sockets = open_idle_connections(keyward_port, IDLE_CONNECTIONS)
        time.sleep(0.5)
        per_connection = (rss_kib(keyward.pid) - before) * 1024 / IDLE_CONNECTIONS
        for s in sockets:
            s.close()

        print()
        print(f"redis-benchmark: {CLIENTS} clients, {VALUE_BYTES}-byte values, random keys over {KEYSPACE}, "
              f"{options.rounds} rounds, medians in requests/s")
        names = [target for target, _ in targets]
        peers = [name for name in proxies if name != "keyward"]
        print("| scenario | " + " | ".join(names) + " | keyward/direct | "
              + " | ".join(f"keyward/{peer}" for peer in peers) + " | (Redis on cpu1)/direct | "
              + " | ".join(f"{proxy} CPU s per 1M requests" for proxy in proxies) + " |")
        print("|" + " --- |" + " ---: |" * (len(names) + len(peers) + 2 + len(proxies)))
        for name, _, _ in SCENARIOS:
            rps = {target: statistics.median(results[(name, target)]) for target in names}
            cpu = [statistics.median(cpu_per_million[(name, proxy)]) for proxy in proxies]
            print(f"| {name} | " + " | ".join(f"{rps[target]:,.0f}" for target in names)
                  + f" | {rps['keyward'] / rps['direct']:.2f} | "
                  + " | ".join(f"{rps['keyward'] / rps[peer]:.2f}" for peer in peers)
                  + f" | {rps['Redis on cpu1'] / rps['direct']:.2f} | "
                  + " | ".join(f"{seconds:.2f}" for seconds in cpu) + " |")
        print()
        print(f"keyward RSS: idle {idle_rss / 1024:.1f} MiB, after load {loaded_rss / 1024:.1f} MiB, "
              f"{per_connection / 1024:.1f} KiB per idle client connection ({IDLE_CONNECTIONS:,} measured)")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
