#!/usr/bin/env bash
# test_redis_cluster.sh - the cluster harness itself
# (tests/integration/lib/redis_cluster.sh), which routing, resharding and
# failover tests build on: on a cluster of its own, 3 masters each with one
# replica and every slot served; a key written through one master is read
# on its replica (READONLY); a master killed is replaced by its replica
# (cluster_wait_ok says when, and the time is printed); the old master,
# restarted, rejoins as a replica.  About 10 s.
# run.sh: release only (Redis and redis-cli only: the same in every build variant)
set -uo pipefail
. tests/integration/lib/redis_cluster.sh
. tests/integration/lib/checks.sh
trap cluster_stop EXIT

t0=$(date +%s%N)
cluster_start || { echo "test_redis_cluster: cluster_start failed" >&2; exit 1; }
ok "cluster up in $(( ($(date +%s%N) - t0) / 1000000 )) ms: $CTR_CLUSTER_SEEDS"
read -r -a ports <<<"$CTR_CLUSTER_PORTS"
p0=${ports[0]}
masters=$(cluster_masters | wc -l) replicas=$(cluster_replicas | wc -l)
check "3 masters, 3 replicas (got $masters, $replicas)" [ "$masters" = 3 ] && [ "$replicas" = 3 ]
check "all 16384 slots served" bash -c "cluster_cli() { redis-cli -h 127.0.0.1 -p \"\$1\" \"\${@:2}\"; };
  cluster_cli $p0 cluster info | tr -d '\r' | grep -q '^cluster_slots_ok:16384'"

# A key through the cluster (redis-cli -c follows MOVED), then on the
# replica of its master.
key="harness:{h}"
cluster_cli "$p0" -c set "$key" 42 >/dev/null
slot=$(cluster_cli "$p0" cluster keyslot "$key")
owner=$(cluster_cli "$p0" cluster nodes | awk -v s="$slot" '$3 ~ /master/ {
  for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1];
    if (s >= r[1] && s <= r[2]) { split($2, a, "[:@]"); print a[2] } } }')
owner_id=$(cluster_cli "$owner" cluster myid)
replica=$(cluster_cli "$p0" cluster nodes | awk -v id="$owner_id" '$4 == id { split($2, a, "[:@]"); print a[2] }')
check "slot $slot: master $owner, replica $replica" [ -n "$owner" ] && [ -n "$replica" ]
got=
for _ in $(seq 50); do
  got=$(printf 'READONLY\nGET %s\n' "$key" | redis-cli -h 127.0.0.1 -p "$replica" | tail -n 1)
  [ "$got" = 42 ] && break
  sleep 0.05
done
check "the replica serves the key after READONLY" [ "$got" = 42 ]

# Failover: kill the master; its replica takes over.
t0=$(date +%s%N)
cluster_kill "$owner"
if cluster_wait_ok 30; then
  ok "master $owner killed: cluster ok again after $(( ($(date +%s%N) - t0) / 1000000 )) ms (cluster-node-timeout ${CTR_CLUSTER_NODE_TIMEOUT_MS:-2000} ms)"
else
  bad "no failover within 30 s"
fi
check "the replica $replica is a master now" bash -c "redis-cli -h 127.0.0.1 -p $replica role | head -n 1 | grep -q master"
check "the key survived" [ "$(cluster_cli "$replica" get "$key")" = 42 ]
check "cluster_masters no longer lists the dead node" bash -c "! (. tests/integration/lib/redis_cluster.sh; CTR_CLUSTER_PORTS='$CTR_CLUSTER_PORTS'; cluster_masters) | grep -qx $owner"

# The old master comes back as a replica of the new one.
cluster_restart "$owner"
role=
for _ in $(seq 100); do
  role=$(cluster_cli "$owner" role | head -n 1)
  [ "$role" = slave ] && break
  sleep 0.1
done
check "restarted $owner rejoins as a replica" [ "$role" = slave ]
check "cluster ok with all six nodes" cluster_wait_ok --replicas 30

echo "test_redis_cluster: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
