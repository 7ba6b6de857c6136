#!/usr/bin/env bash
# Redis's own test suite (external mode) through keyward, one unit at a time, each against a
# fresh redis-server with keyward in front of it. Prints every failing test, checks the
# failures against tests/redis-suite-expected.txt (the differences a proxy keeps on purpose),
# and ends with "N passed, M failed" where M counts failures outside that list.
#
#   tests/redis-suite.sh [SUITE_DIR] [KEYWARD_BINARY]
#     SUITE_DIR       default ../shared/redis-7.0.15-tests (from the repository root)
#     KEYWARD_BINARY  default target/debug/keyward; the word "direct" runs the suite against
#                     redis-server alone, for comparison
#   UNITS="unit/multi unit/pubsub" limits the run to those units.
#   POLICIES=FILE adds FILE's TOML to keyward's configuration (policies in shadow mode must
#   leave every answer as Redis gives it: tests/redis-suite-policies.toml).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
suite=$(realpath "${1:-$root/../shared/redis-7.0.15-tests}")
target=${2:-$root/target/debug/keyward}
[ "$target" = direct ] || target=$(realpath "$target")
expected="$here/redis-suite-expected.txt"
policies=${POLICIES:+$(realpath "$POLICIES")}
tags="-slow -needs:debug -needs:repl -needs:save -needs:config-maxmemory -needs:config-resetstat -needs:reset -needs:pfdebug"

work=$(mktemp -d)
cleanup() {
  kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# The suite writes into its own folder: run a private copy, with the binaries it calls.
cp -r "$suite" "$work/suite"
chmod -R u+w "$work/suite"
mkdir -p "$work/suite/src"
for binary in redis-server redis-cli redis-benchmark; do
  ln -s "$(command -v "$binary")" "$work/suite/src/$binary"
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
stop() {
  [ -f "$work/$1.pid" ] || return 0
  local pid
  pid=$(cat "$work/$1.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$work/$1.pid"
}

# The suite's own test server takes ports from --baseport on: a range of our own, free when
# chosen, so that two runs (or anything else listening) on one machine do not meet.
range_is_free() {
  python3 -c 'import socket,sys
b=int(sys.argv[1])
for p in range(b, b+64):
    s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try: s.bind(("127.0.0.1", p))
    except OSError: sys.exit(1)
    finally: s.close()' "$1"
}
baseport=$((20000 + (RANDOM % 250) * 100))
until range_is_free "$baseport"; do baseport=$((20000 + (RANDOM % 250) * 100)); done
units=${UNITS:-$(cat "$suite/units-external.txt")}
passed=0
unexpected=0
: >"$work/failures"
# Starts redis-server on a free port (sets redis_port). A free port can be taken by another
# process before the server binds it: it is tried again on another.
start_redis() {
  for _ in 1 2 3; do
    redis_port=$(free_port)
    mkdir -p "$work/redis"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$work/redis" --logfile "$work/redis/redis.log" --daemonize yes \
      --pidfile "$work/redis.pid"
    wait_port "$redis_port" && return 0
    stop redis
  done
  echo "redis-server did not start:" >&2
  tail -20 "$work/redis/redis.log" >&2
  return 1
}

# One worker thread: the suite orders clients by when Redis reads their sockets (a DEL sent right
# after another client's XREADGROUP BLOCK must find it blocked). With more threads, keyward may
# serve two clients that send at the same instant in parallel (README: known limits), which
# makes those tests fail now and then; with one it keeps their order.
write_keyward_config() {
  cat >"$work/keyward.toml" <<CONFIG
[runtime]
worker_threads = 1
[listen]
address = "127.0.0.1:$port"
[upstream]
address = "127.0.0.1:$redis_port"
[admin]
address = "127.0.0.1:$admin_port"
[log]
level = "warn"
[shutdown]
grace_period = "1s"
CONFIG
  if [ -n "${POLICIES:-}" ]; then
    cat "$policies" >>"$work/keyward.toml"
  fi
}

# Starts keyward in front of redis_port on free ports (sets port), tried again likewise.
start_keyward() {
  for _ in 1 2 3; do
    port=$(free_port)
    admin_port=$(free_port)
    [ "$admin_port" != "$port" ] || continue
    write_keyward_config
    "$target" --config "$work/keyward.toml" >>"$work/keyward.log" 2>&1 &
    echo $! >"$work/keyward.pid"
    wait_port "$port" && return 0
    stop keyward
  done
  echo "keyward did not start:" >&2
  tail -20 "$work/keyward.log" >&2
  return 1
}

for unit in $units; do
  start_redis
  port=$redis_port
  if [ "$target" != direct ]; then
    start_keyward
  fi
  started=$(date +%s)
  (cd "$work/suite" && TERM=dumb timeout 900 ./runtest --host 127.0.0.1 --port "$port" --single "$unit" \
    --tags "$tags" --durable --timeout 120 --clients 1 --baseport "$baseport" --portcount 64) >"$work/out" 2>&1 || true
  ok=$(grep -c '^\[ok\]' "$work/out" || true)
  # Each failing test, as "unit: test name"; a hang ([TIMEOUT]) is named by the test that was
  # in progress, and ends the unit.
  {
    grep -E '^\[(err|exception)\]' "$work/out" | sed -E "s|^\[[a-z]+\]:? *|$unit: |; s/ in tests\/.*$//; s/127\.0\.0\.1:[0-9]+/HOST:PORT/g" || true
    grep -E '\(IN PROGRESS\)' "$work/out" | sed -E "s|^.*\(IN PROGRESS\) *|$unit: TIMEOUT |" || true
  } | sort -u >"$work/unit-failures"
  grep -A3 -E '^\[(err|exception)\]' "$work/out" | head -40 | sed 's/^/    /' || true
  # A unit that ran nothing (the suite could not start, the target never answered) fails;
  # one whose tests all carry excluded tags ends with "All tests passed".
  if [ "$ok" -eq 0 ] && [ ! -s "$work/unit-failures" ] && ! grep -q 'All tests passed' "$work/out"; then
    echo "$unit: ran no test" >"$work/unit-failures"
    tail -5 "$work/out" | sed 's/^/    /'
  fi
  failed=$(wc -l <"$work/unit-failures")
  echo "$unit: $ok ok, $failed failed ($(($(date +%s) - started)) s)"
  passed=$((passed + ok))
  cat "$work/unit-failures" >>"$work/failures"
  stop keyward
  stop redis
  rm -rf "$work/redis"
done

# Failures on the list are kept on purpose; everything else counts as failed.
known() { grep -v '^#' "$expected" | grep -v '^$' | sed -E 's/ +# .*$//'; }
while IFS= read -r failure; do
  if [ "$target" != direct ] && known | grep -qxF "$failure"; then
    echo "expected: $failure"
  else
    echo "FAILED: $failure"
    unexpected=$((unexpected + 1))
  fi
done <"$work/failures"
echo "redis-suite: $passed passed, $unexpected failed"
[ "$unexpected" -eq 0 ]
