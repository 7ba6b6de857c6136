#!/usr/bin/env bash
# The compatibility suite as CI runs it: every library against a private redis-server, then
# against keyward (built by `cargo build`) in front of it with the example config. Each
# target is restarted once on its own port during the run, to exercise reconnects.
#
#   tests/compat/ci.sh [path/to/keyward]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
keyward=$(realpath "${1:-$root/target/debug/keyward}")
"$here/setup.sh"

work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
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
if [ "$status" -ne 0 ]; then
  echo "--- keyward log (last 50 lines)"
  tail -n 50 "$work/keyward.log"
fi
exit "$status"
