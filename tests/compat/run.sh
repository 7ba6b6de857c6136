#!/usr/bin/env bash
# Runs every compatibility program against HOST:PORT and prints one line per library, then
# "N passed, M failed". COMPAT_RESTART, if set, is a command that restarts the target on the
# same port (used for the reconnect flows). COMPAT_FAILOVER, if set, is a command that fails the
# primary behind the target over to a replica (BullMQ's check runs its jobs across one). COMPAT_REST_URL and COMPAT_REST_TOKEN, if set, are
# keyward's REST API and a token for it: the programs using Upstash's SDKs run only then.
# COMPAT_CLUSTER=1 says the target is keyward in front of a Redis Cluster: the programs then
# keep the keys that must be together in one hash slot, as a Redis Cluster requires of any
# application, and the programs for cluster-aware clients (*_cluster) run too.
# Needs ./setup.sh to have run.
#
#   tests/compat/run.sh 127.0.0.1 6380
set -u
cd "$(dirname "$0")"
host=${1:?usage: run.sh HOST PORT}
port=${2:?usage: run.sh HOST PORT}
passed=0
failed=0
programs=(ioredis node_redis bullmq redlock rate_limit socketio redis_py upstash_redis
  upstash_ratelimit)
if [ "${COMPAT_CLUSTER:-}" = 1 ]; then
  programs+=(ioredis_cluster redis_py_cluster)
fi
for program in "${programs[@]}"; do
  if [[ $program == upstash_* && -z ${COMPAT_REST_URL:-} ]]; then
    printf '%-17s skipped (no REST endpoint)\n' "$program"
    continue
  fi
  if [[ $program == redis_py* ]]; then
    command=(../../target/compat/venv/bin/python "$program.py")
  else
    command=(node "$program.mjs")
  fi
  log=$(mktemp)
  started=$(date +%s.%N)
  if COMPAT_HOST=$host COMPAT_PORT=$port timeout 150 "${command[@]}" >"$log" 2>&1; then
    printf '%-17s ok (%.1fs)\n' "$program" "$(echo "$(date +%s.%N) - $started" | bc)"
    passed=$((passed + 1))
  else
    printf '%-17s FAILED\n' "$program"
    tail -n 25 "$log" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
  rm -f "$log"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
