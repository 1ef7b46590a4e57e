#!/usr/bin/env bash
# redis_cluster.sh - a throw-away Redis Cluster on loopback for tests: six
# `redis-server --cluster-enabled yes` on free ports, made into 3 masters and
# 3 replicas with `redis-cli --cluster create --cluster-replicas 1`, ready
# (cluster_state:ok on every node, every replica's link to its master up,
# every slot range listing its replica in CLUSTER SLOTS) before anything
# uses it, and removed afterwards.  About 3-5 s to start.
#
# As a command: runs COMMAND with the cluster's variables (below) in its
# environment, then stops the cluster (also on error or signal) and exits
# with COMMAND's status:
#
#     tests/integration/lib/redis_cluster.sh -- COMMAND [ARG...]
#
# Sourced, for a script that runs several things on one cluster, or kills
# and restarts nodes (failover tests):
#
#     . tests/integration/lib/redis_cluster.sh
#     cluster_start || exit 1          # exports the variables below
#     trap cluster_stop EXIT           # (or call it from your own trap)
#     ...
#
# Variables set (exported):
#   CTR_CLUSTER_SEEDS      every node, "127.0.0.1:P1,127.0.0.1:P2,..." (seeds;
#                          not CTR_REDIS_CLUSTER, which ctr-server would read
#                          as its redis_cluster setting)
#   CTR_CLUSTER_PORTS      the six client ports, "P1 P2 ... P6"
#   CTR_CLUSTER_DIR        working directory (logs: DIR/PORT/redis.log)
# Settings read:
#   CTR_CLUSTER_NODE_TIMEOUT_MS   cluster-node-timeout (default 2000: a dead
#                                 master is failed over in ~2-3 s)
#   CTR_CLUSTER_NODES             nodes (default 6; with 1 replica each,
#                                 half are masters; must be even, >= 6)
#   CTR_CLUSTER_PASSWORD          when set, every node requires it (requirepass,
#                                 and masterauth for its replicas); the
#                                 helpers pass it to redis-cli
#
# Helpers (sourced use): cluster_cli PORT ARG...  (redis-cli to one node),
# cluster_redis_cli ARG... (redis-cli with the password, e.g. --cluster reshard),
# cluster_masters / cluster_replicas (client ports, from CLUSTER NODES),
# cluster_pid PORT, cluster_kill PORT (SIGKILL), cluster_restart PORT,
# cluster_wait_ok [--replicas] [SECONDS] (every live node: state ok, all
# slots served; see the function).
#
# Only loopback; every wait is bounded; no file outside CTR_CLUSTER_DIR.

_rc_py=${PYTHON:-/usr/bin/python3}
declare -gA _rc_pids=()

# N distinct free loopback ports, all held open until all are chosen.
_rc_free_ports() {
  "$_rc_py" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# redis-cli, with the cluster's password (from the environment, not the
# command line) when it has one.
cluster_redis_cli() {
  if [ -n "${CTR_CLUSTER_PASSWORD:-}" ]; then
    REDISCLI_AUTH=$CTR_CLUSTER_PASSWORD redis-cli "$@"
  else
    redis-cli "$@"
  fi
}

cluster_cli() {
  local port=$1
  shift
  cluster_redis_cli -h 127.0.0.1 -p "$port" "$@"
}

cluster_pid() { echo "${_rc_pids[$1]:-}"; }

# Starts (or restarts, with its nodes.conf) the node on client port $1, bus
# port $2.
_rc_node_start() {
  local port=$1 bus=$2 d=$CTR_CLUSTER_DIR/$1 auth=()
  mkdir -p "$d"
  if [ -n "${CTR_CLUSTER_PASSWORD:-}" ]; then
    # In a config file rather than on the command line (ps).
    printf 'requirepass "%s"\nmasterauth "%s"\n' "$CTR_CLUSTER_PASSWORD" \
      "$CTR_CLUSTER_PASSWORD" >"$d/auth.conf"
    auth=("$d/auth.conf")
  fi
  redis-server "${auth[@]}" --port "$port" --cluster-port "$bus" --bind 127.0.0.1 \
    --cluster-enabled yes --cluster-config-file "$d/nodes.conf" \
    --cluster-node-timeout "${CTR_CLUSTER_NODE_TIMEOUT_MS:-2000}" \
    --save "" --appendonly no --dir "$d" --logfile "$d/redis.log" \
    --repl-diskless-sync-delay 0 --repl-ping-replica-period 1 \
    --daemonize no >/dev/null 2>&1 &
  _rc_pids[$port]=$!
  echo "$bus" >"$d/bus_port"
}

_rc_wait_ping() {   # up to 30 s: a node may start slowly on a loaded machine
  local port=$1 i
  for i in $(seq 600); do
    [ "$(cluster_cli "$port" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  echo "redis_cluster: node $port does not answer PING" >&2
  return 1
}

# Client ports of the masters / replicas, as the first live node sees them.
_rc_nodes_with() {
  local p out
  for p in $CTR_CLUSTER_PORTS; do
    out=$(cluster_cli "$p" cluster nodes 2>/dev/null) || continue
    [ -n "$out" ] || continue
    echo "$out" | awk -v role="$1" '$3 ~ role && $3 !~ /fail/ {
      split($2, a, "[:@]"); print a[2] }' | sort -n
    return 0
  done
  return 1
}
cluster_masters() { _rc_nodes_with master; }
cluster_replicas() { _rc_nodes_with slave; }

# 0 when every slot range in a CLUSTER SLOTS reply (JSON, on stdin) lists
# a replica.
_rc_slots_replicated() {
  "$_rc_py" -c 'import json, sys
r = json.load(sys.stdin)
sys.exit(0 if r and all(len(e) >= 4 for e in r) else 1)'
}

# Every live node says cluster_state:ok and sees all slots served; every
# live replica's link to its master is up.  With --replicas, also every
# node's CLUSTER SLOTS lists a replica for every slot range (Redis lists a
# replica only once it has replicated some data: a client reading from
# replicas needs that).
cluster_wait_ok() {
  local want_replicas=0
  if [ "${1:-}" = --replicas ]; then want_replicas=1; shift; fi
  local limit=${1:-30} t0=$SECONDS p all
  while [ $((SECONDS - t0)) -lt "$limit" ]; do
    all=1
    for p in $CTR_CLUSTER_PORTS; do
      [ -n "${_rc_pids[$p]:-}" ] || continue
      local info
      info=$(cluster_cli "$p" cluster info 2>/dev/null | tr -d '\r')
      if ! grep -q '^cluster_state:ok' <<<"$info" ||
         ! grep -q '^cluster_slots_ok:16384' <<<"$info"; then all=0; break; fi
      local repl
      repl=$(cluster_cli "$p" info replication 2>/dev/null | tr -d '\r')
      if grep -q '^role:slave' <<<"$repl" && ! grep -q '^master_link_status:up' <<<"$repl"; then
        all=0; break
      fi
      if [ "$want_replicas" = 1 ] &&
         ! cluster_cli "$p" --json cluster slots 2>/dev/null | _rc_slots_replicated; then
        all=0; break
      fi
    done
    [ "$all" = 1 ] && return 0
    sleep 0.1
  done
  echo "redis_cluster: cluster not ok after ${limit} s" >&2
  return 1
}

cluster_kill() {
  local pid=${_rc_pids[$1]:-}
  [ -n "$pid" ] || return 0
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  _rc_pids[$1]=
}

cluster_restart() {
  _rc_node_start "$1" "$(cat "$CTR_CLUSTER_DIR/$1/bus_port")"
  _rc_wait_ping "$1"
}

cluster_start() {
  local n=${CTR_CLUSTER_NODES:-6}
  if [ $((n % 2)) -ne 0 ] || [ "$n" -lt 6 ]; then
    echo "redis_cluster: CTR_CLUSTER_NODES must be even and >= 6" >&2
    return 1
  fi
  CTR_CLUSTER_DIR=$(mktemp -d /tmp/ctr-redis-cluster.XXXXXX)
  # Client and bus ports both free (the bus port is set explicitly, rather
  # than Redis's port + 10000, which may be taken or past 65535).
  local ports bus i
  read -r -a ports <<<"$(_rc_free_ports $((2 * n)))"
  CTR_CLUSTER_PORTS="${ports[*]:0:n}"
  local addrs=() seeds=()
  for ((i = 0; i < n; i++)); do
    _rc_node_start "${ports[i]}" "${ports[n + i]}"
    addrs+=("127.0.0.1:${ports[i]}")
  done
  for ((i = 0; i < n; i++)); do _rc_wait_ping "${ports[i]}" || return 1; done
  if ! cluster_redis_cli --cluster create "${addrs[@]}" \
      --cluster-replicas 1 --cluster-yes >"$CTR_CLUSTER_DIR/create.log" 2>&1; then
    echo "redis_cluster: redis-cli --cluster create failed:" >&2
    tail -n 20 "$CTR_CLUSTER_DIR/create.log" >&2
    return 1
  fi
  cluster_wait_ok --replicas 30 || return 1
  CTR_CLUSTER_SEEDS=$(IFS=,; echo "${addrs[*]}")
  export CTR_CLUSTER_SEEDS CTR_CLUSTER_PORTS CTR_CLUSTER_DIR
}

# Stops every node this shell started and removes the directory; safe to
# call twice, and under set -e.
cluster_stop() {
  local p pid
  for p in "${!_rc_pids[@]}"; do
    pid=${_rc_pids[$p]}
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for p in "${!_rc_pids[@]}"; do
    pid=${_rc_pids[$p]}
    if [ -n "$pid" ]; then wait "$pid" 2>/dev/null || true; fi
    _rc_pids[$p]=
  done
  if [ -n "${CTR_CLUSTER_DIR:-}" ] && [ -d "$CTR_CLUSTER_DIR" ]; then rm -rf "$CTR_CLUSTER_DIR"; fi
  CTR_CLUSTER_DIR=
  return 0
}

# As a command: redis_cluster.sh -- COMMAND [ARG...]
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  [ "${1:-}" = -- ] && shift
  if [ $# -eq 0 ]; then
    echo "usage: $0 -- COMMAND [ARG...]" >&2
    exit 2
  fi
  trap cluster_stop EXIT
  trap 'exit 130' INT TERM
  cluster_start || exit 1
  "$@"
  exit $?
fi
