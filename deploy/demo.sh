#!/usr/bin/env bash
# demo.sh - the README's run command: everything from a fresh Debian
# machine to a ranking service answering on http://127.0.0.1:8080.
#
#   1. installs the Debian packages (deploy/install.sh; no-op when present)
#   2. builds the programs (make)
#   3. makes the demo model and data once (tools/make_demo.py -> demo/;
#      a few minutes on 2 cores: synthetic MicroLens-shaped data with a
#      planted signal, a small QIN trained on it, held-out AUC printed)
#   4. starts a local redis-server (127.0.0.1:${CTR_DEMO_REDIS_PORT:-6390},
#      data in demo/redis) unless one already answers there
#   5. loads the demo features (ctr-load)
#   6. runs ctr-server in the foreground with the demo model; Ctrl-C (or
#      SIGTERM) stops it and the Redis this script started.
#
# Extra arguments go to ctr-server (e.g. --port 9090 --threads 4).
set -euo pipefail
cd "$(dirname "$0")/.."

redis_port=${CTR_DEMO_REDIS_PORT:-6390}
py=/usr/bin/python3

bash deploy/install.sh
make -s all

if [ ! -f demo/model.safetensors ] || [ ! -f demo/items.jsonl ]; then
  echo "demo.sh: making the demo model and data (once; a few minutes)"
  "$py" tools/make_demo.py --out demo
fi

started_redis=
if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
  mkdir -p demo/redis
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$PWD/demo/redis" --daemonize yes --pidfile "$PWD/demo/redis/redis.pid" \
    --logfile "$PWD/demo/redis/redis.log"
  started_redis=1
  for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
fi
stop_redis() {
  if [ -n "$started_redis" ]; then redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true; fi
}
trap stop_redis EXIT

build/release/ctr-load --redis "127.0.0.1:$redis_port" --model demo/model.safetensors \
  --items demo/items.jsonl --users demo/users.jsonl

cat <<MSG
demo.sh: try, from another shell:
  curl -s -H 'Content-Type: application/json' -d @deploy/example_request.json \\
       http://127.0.0.1:8080/v1/rank
MSG
# Not exec: the EXIT trap must stop Redis after the server exits.
build/release/ctr-server --model demo/model.safetensors --redis "127.0.0.1:$redis_port" "$@" &
server=$!
trap 'kill -TERM $server 2>/dev/null' INT TERM
wait $server || true
wait $server 2>/dev/null || true
