#!/usr/bin/env bash
# cluster.sh - runs bench_rcluster (make bench-cluster) with what it needs:
# a throw-away Redis Cluster (3 masters + 3 replicas) and a single
# redis-server, both on free loopback ports, stopped afterwards.
#
#   bash bench/cluster.sh build/release/bench/bench_rcluster [--n 64 --rounds 20000]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1
shift
py=${PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d /tmp/ctr-bench-cluster.XXXXXX)
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
  >"$tmp/redis.log" 2>&1 &
single=$!
trap 'kill $single 2>/dev/null; wait $single 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
bash tests/integration/lib/redis_cluster.sh -- \
  bash -c "\"$bin\" --single 127.0.0.1:$port --cluster \"\${CTR_REDIS_CLUSTER%%,*}\" $*"
