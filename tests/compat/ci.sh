#!/usr/bin/env bash
# The compatibility suite as CI runs it: every library against a private redis-server, then
# against keyward (built by `cargo build`) in front of it with the example config, then with
# policies, then through keyward in cluster mode in front of a private Redis Cluster, then in
# sentinel mode in front of a primary watched by Sentinel. Each target is restarted once on its
# own port during the run (failed over, in front of Sentinel), to exercise reconnects.
#
#   tests/compat/ci.sh [path/to/keyward]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
keyward=$(realpath "${1:-$root/target/debug/keyward}")
"$here/setup.sh"

work=$(mktemp -d)
# Stops every process the run started (each leaves a pid file in $work) and waits for them to
# exit before removing their directories.
cleanup() {
  local pids
  pids=$(cat "$work"/*.pid 2>/dev/null) || true
  if [ -n "$pids" ]; then
    kill $pids 2>/dev/null || true
    for _ in $(seq 100); do kill -0 $pids 2>/dev/null || break; sleep 0.05; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# COUNT distinct free ports (two calls to free_port may return the same one).
free_ports() {
  python3 -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}
wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; return 1; }

redis_port=$(free_port)
keyward_port=$(free_port)
admin_port=$(free_port)
rest_port=$(free_port)
# keyward's REST API, for the programs using Upstash's SDKs (a token for this run only).
export COMPAT_REST_TOKEN="compat-$RANDOM$RANDOM"
rest_api="http://127.0.0.1:$rest_port"

cat >"$work/start-redis" <<SCRIPT
#!/usr/bin/env bash
[ -f "$work/redis.pid" ] && kill \$(cat "$work/redis.pid") 2>/dev/null && sleep 0.3
redis-server --port $redis_port --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" --daemonize yes --pidfile "$work/redis.pid"
for _ in \$(seq 200); do redis-cli -p $redis_port ping >/dev/null 2>&1 && exit 0; sleep 0.05; done
exit 1
SCRIPT
# keyward with the documented example config, pointed at the private ports.
address_in() { echo "/^\\[$1\\]/,/^\\[/ s/^address = .*/address = \"127.0.0.1:$2\"/"; }
sed -e "$(address_in listen "$keyward_port")" -e "$(address_in upstream "$redis_port")" \
    -e "$(address_in admin "$admin_port")" "$root/config/keyward.toml" >"$work/keyward.toml"
cat >>"$work/keyward.toml" <<TOML

[http_api]
address = "127.0.0.1:$rest_port"
[[http_api.tokens]]
name = "compat"
token_env = "COMPAT_REST_TOKEN"
TOML
cat >"$work/start-keyward" <<SCRIPT
#!/usr/bin/env bash
if [ -f "$work/keyward.pid" ]; then
  kill \$(cat "$work/keyward.pid") 2>/dev/null
  while kill -0 \$(cat "$work/keyward.pid") 2>/dev/null; do sleep 0.05; done
fi
"$keyward" --config "$work/keyward.toml" >>"$work/keyward.log" 2>&1 &
echo \$! >"$work/keyward.pid"
for _ in \$(seq 200); do (echo >/dev/tcp/127.0.0.1/$keyward_port) 2>/dev/null && exit 0; sleep 0.05; done
exit 1
SCRIPT
chmod +x "$work/start-redis" "$work/start-keyward"
# The same, with every policy kind keyward has enabled in shadow mode over every key.
cp "$work/keyward.toml" "$work/keyward-example.toml"
sed '/^\[hotkeys\]/,/^\[/ s/^enabled = false/enabled = true/' "$work/keyward-example.toml" \
  | cat - "$here/policies.toml" >"$work/keyward-policies.toml"

"$work/start-redis"
status=0
echo "--- client libraries against redis-server directly"
COMPAT_RESTART="$work/start-redis" "$here/run.sh" 127.0.0.1 "$redis_port" || status=1
cp "$work/keyward-example.toml" "$work/keyward.toml"
start_keyward() { "$work/start-keyward" || { echo "keyward did not start:"; tail -n 30 "$work/keyward.log"; exit 1; }; }
start_keyward
echo "--- client libraries through keyward (config/keyward.toml, with its REST API on)"
COMPAT_RESTART="$work/start-keyward" COMPAT_REST_URL="$rest_api" \
  "$here/run.sh" 127.0.0.1 "$keyward_port" || status=1
cp "$work/keyward-policies.toml" "$work/keyward.toml"
start_keyward
echo "--- client libraries through keyward with policies (config/keyward.toml + tests/compat/policies.toml)"
COMPAT_RESTART="$work/start-keyward" COMPAT_REST_URL="$rest_api" \
  "$here/run.sh" 127.0.0.1 "$keyward_port" || status=1
echo "--- cache figures of that pass (since keyward's restart during it)"
redis-cli -p "$keyward_port" KEYWARD CACHE STATS | tr -d '\r' | grep -v '^$' || true

# A Redis Cluster of three primaries with a replica each, every node in a directory of its own
# and with its cluster bus on a port of its own (Redis would otherwise take port + 10000,
# which nothing has checked is free).
read -r -a cluster_ports <<<"$(free_ports 12)"
nodes=("${cluster_ports[@]:0:6}")
buses=("${cluster_ports[@]:6:6}")
for i in "${!nodes[@]}"; do
  node_dir="$work/cluster/${nodes[$i]}"
  mkdir -p "$node_dir"
  redis-server --port "${nodes[$i]}" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file "$node_dir/nodes.conf" --cluster-port "${buses[$i]}" \
    --cluster-node-timeout 2000 --save "" --appendonly no --repl-diskless-sync-delay 0 \
    --dir "$node_dir" --logfile "$node_dir/redis.log" --daemonize yes \
    --pidfile "$work/cluster-${nodes[$i]}.pid"
done
cluster_failed() {
  echo "the Redis Cluster did not form: $1"
  tail -n 20 "$2" 2>/dev/null || true
  exit 1
}
# A node logs this once it holds its port: a port that merely answers may be another process's.
for node in "${nodes[@]}"; do
  node_log="$work/cluster/$node/redis.log"
  for _ in $(seq 200); do grep -q "Ready to accept connections" "$node_log" 2>/dev/null && break; sleep 0.05; done
  grep -q "Ready to accept connections" "$node_log" 2>/dev/null \
    || cluster_failed "the node on port $node did not start" "$node_log"
done
timeout 60 redis-cli --cluster create $(printf '127.0.0.1:%s ' "${nodes[@]}") \
  --cluster-replicas 1 --cluster-yes >"$work/cluster-create.log" 2>&1 \
  || cluster_failed "redis-cli --cluster create failed" "$work/cluster-create.log"
cluster_ok() {
  for node in "${nodes[@]}"; do
    [[ $(redis-cli -p "$node" cluster info 2>/dev/null) == *cluster_state:ok* ]] || return 1
  done
}
for _ in $(seq 600); do cluster_ok && break; sleep 0.05; done
cluster_ok || cluster_failed "not every node says cluster_state:ok after 30 s" "$work/cluster-create.log"
# keyward in cluster mode in front of it: the example config (with its REST API on), with one
# node as the address to learn the cluster from.
sed -e "$(address_in upstream "${nodes[0]}")" -e '/^\[upstream\]/a topology = "cluster"' \
  "$work/keyward-example.toml" >"$work/keyward-cluster.toml"
cp "$work/keyward-cluster.toml" "$work/keyward.toml"
# keyward routes commands once it has read the slot map, and /readyz says when: its start, and
# its restart during the pass, wait for that.
cat >"$work/start-keyward-ready" <<SCRIPT
#!/usr/bin/env bash
"$work/start-keyward" || exit 1
python3 - "http://127.0.0.1:$admin_port/readyz" <<'PY'
import sys, time, urllib.error, urllib.request
deadline, why = time.monotonic() + 20, "no answer"
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1)
        sys.exit(0)
    except urllib.error.HTTPError as error:
        why = f"{error.code} {error.read().decode(errors='replace').strip()}"
    except OSError as error:
        why = str(error)
    time.sleep(0.05)
sys.exit(f"keyward is not ready after 20 s: {why}")
PY
SCRIPT
chmod +x "$work/start-keyward-ready"
"$work/start-keyward-ready" || { echo "keyward did not start:"; tail -n 30 "$work/keyward.log"; exit 1; }
echo "--- client libraries through keyward in front of a Redis Cluster (3 primaries, a replica each)"
COMPAT_CLUSTER=1 COMPAT_RESTART="$work/start-keyward-ready" COMPAT_REST_URL="$rest_api" \
  "$here/run.sh" 127.0.0.1 "$keyward_port" || status=1

# A primary with two replicas watched by three sentinels, every server in a directory of its
# own, and keyward in sentinel mode in front of them: the example config, its upstream found
# through the sentinels. The pass's restart is a failover the sentinels are asked for, and
# BullMQ's check fails the primary over while its jobs run.
read -r -a sentinel_set_ports <<<"$(free_ports 6)"
data_nodes=("${sentinel_set_ports[@]:0:3}")
sentinels=("${sentinel_set_ports[@]:3:3}")
for i in 0 1 2; do
  node_dir="$work/sentinel-set/${data_nodes[$i]}"
  mkdir -p "$node_dir"
  replica_of=()
  [ "$i" -gt 0 ] && replica_of=(--replicaof 127.0.0.1 "${data_nodes[0]}")
  redis-server --port "${data_nodes[$i]}" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$node_dir" --repl-diskless-sync yes --repl-diskless-sync-delay 0 "${replica_of[@]}" \
    --logfile "$node_dir/redis.log" --daemonize yes --pidfile "$work/data-${data_nodes[$i]}.pid"
done
for port in "${sentinels[@]}"; do
  sentinel_dir="$work/sentinel-set/$port"
  mkdir -p "$sentinel_dir"
  cat >"$sentinel_dir/sentinel.conf" <<CONF
port $port
bind 127.0.0.1
dir $sentinel_dir
sentinel monitor compat 127.0.0.1 ${data_nodes[0]} 2
sentinel down-after-milliseconds compat 1000
sentinel failover-timeout compat 10000
CONF
  redis-server "$sentinel_dir/sentinel.conf" --sentinel --logfile "$sentinel_dir/sentinel.log" \
    --daemonize yes --pidfile "$work/sentinel-$port.pid"
done
# Every sentinel knows both replicas and the other two sentinels.
sentinels_agree() {
  for port in "${sentinels[@]}"; do
    redis-cli -p "$port" SENTINEL MASTER compat 2>/dev/null | tr -d '\r' | awk '
      previous == "num-slaves" { replicas = $0 }
      previous == "num-other-sentinels" { others = $0 }
      { previous = $0 }
      END { exit !(replicas == 2 && others == 2) }' || return 1
  done
}
for _ in $(seq 600); do sentinels_agree && break; sleep 0.05; done
sentinels_agree || { echo "the sentinels did not see the whole set within 30 s"; tail -n 20 "$work"/sentinel-set/*/sentinel.log; exit 1; }
list=$(printf '"127.0.0.1:%s", ' "${sentinels[@]}")
sed -e '/^\[upstream\]/a topology = "sentinel"' \
  -e "/^\\[upstream\\]/a sentinels = [${list%, }]" -e '/^\[upstream\]/a master_name = "compat"' \
  "$work/keyward-example.toml" >"$work/keyward.toml"
cat >"$work/fail-over" <<SCRIPT
#!/usr/bin/env bash
# Asks a sentinel for a failover (again while the last one settles), then waits until keyward
# forwards to the new primary.
primary() { redis-cli -p ${sentinels[0]} SENTINEL GET-MASTER-ADDR-BY-NAME compat | tail -n 1; }
old=\$(primary)
for _ in \$(seq 300); do
  reply=\$(redis-cli -p ${sentinels[0]} SENTINEL FAILOVER compat)
  [ "\$reply" = OK ] && break
  sleep 0.1
done
[ "\$reply" = OK ] || { echo "SENTINEL FAILOVER: \$reply" >&2; exit 1; }
for _ in \$(seq 300); do
  new=\$(primary)
  if [ "\$new" != "\$old" ] && redis-cli -p $keyward_port KEYWARD INFO | tr -d '\r' \
      | grep -qx "sentinel_primary:127.0.0.1:\$new"; then
    exit 0
  fi
  sleep 0.1
done
echo "keyward did not follow the failover from \$old" >&2
exit 1
SCRIPT
chmod +x "$work/fail-over"
"$work/start-keyward-ready" || { echo "keyward did not start:"; tail -n 30 "$work/keyward.log"; exit 1; }
echo "--- client libraries through keyward in front of Redis Sentinel (a primary, 2 replicas, 3 sentinels; failovers in place of restarts)"
COMPAT_RESTART="$work/fail-over" COMPAT_FAILOVER="$work/fail-over" COMPAT_REST_URL="$rest_api" \
  "$here/run.sh" 127.0.0.1 "$keyward_port" || status=1
if [ "$status" -ne 0 ]; then
  echo "--- keyward log (last 50 lines)"
  tail -n 50 "$work/keyward.log"
fi
exit "$status"
