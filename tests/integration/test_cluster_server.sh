#!/usr/bin/env bash
# test_cluster_server.sh - ctr-load and ctr-server on the run's Redis Cluster
# ($CTR_CLUSTER_SEEDS, 3 masters + 3 replicas, started by tests/run.sh)
# against the run's single Redis ($CTR_REDIS):
#   - ctr-load --redis-cluster writes the same data set through the cluster
#     (keys on every master, the marker included) as --redis does to one
#     node;
#   - rankings from a cluster ctr-server, and from one reading replicas,
#     equal the single-node server's for every request, none degraded, and
#     /metrics counts pipelines to every master (replicas for the second);
#   - a cluster that cannot be reached: /readyz 503 and rank 503
#     "unavailable" (nothing can be scored), never a crash; bad seed lists
#     refused at start (exit 2).
# Data: tests/integration/lib/synth_data.py on the golden "small" model
# (2,000 users, 59 items, 300 requests of 16 candidates).  About 10 s.
set -uo pipefail
B=${CTR_BUILD:-build/release}
G=${CTR_GOLDEN:-build/golden}
PY=${PYTHON:-/usr/bin/python3}
model=$G/small/model.safetensors
: "${CTR_CLUSTER_SEEDS:?tests/run.sh provides the cluster}" "${CTR_REDIS:?}"
. tests/integration/lib/redis_cluster.sh

tmp=$(mktemp -d /tmp/ctr-cluster-server.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
  return 0
}
trap cleanup EXIT
. tests/integration/lib/checks.sh

prefix="tcs:$$:"
"$PY" tests/integration/lib/synth_data.py "$model" "$tmp" --users 2000 --requests 300 \
  --candidates 16 || { echo "synth_data failed" >&2; exit 1; }
load_args=(--prefix "$prefix" --items "$tmp/items.jsonl" --users "$tmp/users.jsonl" --model "$model")

"$B/ctr-load" --redis-cluster "$CTR_CLUSTER_SEEDS" "${load_args[@]}" >"$tmp/load_c.out" 2>&1
rc=$?
check "ctr-load --redis-cluster: exit 0 (got $rc: $(tail -n 1 "$tmp/load_c.out" | cut -c1-80))" [ "$rc" = 0 ]
check "ctr-load --redis-cluster: 59 items, 2000 users" \
  grep -q "items_loaded=59 users_loaded=2000 lines_rejected=0" "$tmp/load_c.out"
"$B/ctr-load" --redis "$CTR_REDIS" "${load_args[@]}" >"$tmp/load_1.out" 2>&1
check "ctr-load --redis: exit 0" [ $? = 0 ]

masters=$(cluster_masters)
total=0 every=1
for p in $masters; do
  n=$(cluster_cli "$p" --scan --pattern "$prefix*" | wc -l)
  [ "$n" -gt 0 ] || every=0
  total=$((total + n))
done
check "keys on every master ($(echo $masters)), $total in all (59 + 2000 + marker)" \
  [ "$every" = 1 ] && [ "$total" = 2060 ]
meta=$(redis-cli -c -h 127.0.0.1 -p "${CTR_CLUSTER_SEEDS##*:}" get "${prefix}meta")
check "the feature-set marker through the cluster" grep -q '"users":2000' <<<"$meta"

# Replicas have everything before a server reads them.
"$PY" - "$masters" <<'PY' || bad "replicas caught up"
import subprocess, sys, time
def info(port):
    out = subprocess.run(["redis-cli", "-p", port, "info", "replication"], capture_output=True,
                         text=True).stdout
    return dict(l.split(":", 1) for l in out.replace("\r", "").splitlines() if ":" in l)
for port in sys.argv[1].split():
    want = int(info(port)["master_repl_offset"])
    end = time.time() + 10
    while time.time() < end:
        i = info(port)
        offs = [int(v.split("offset=")[1].split(",")[0]) for k, v in i.items() if k.startswith("slave")]
        if offs and min(offs) >= want:
            break
        time.sleep(0.05)
    else:
        sys.exit("replica of %s behind" % port)
PY

start_server() {   # NAME ARG... ; sets port_NAME
  local name=$1 port
  shift
  port=$(free_port)
  "$B/ctr-server" --model "$model" --redis-prefix "$prefix" --port "$port" --threads 2 \
    --score-threads 1 --max-candidates 64 --redis-timeout-ms 500 \
    --redis-connect-timeout-ms 500 --deadline-ms 2000 "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  eval "port_$name=$port"
}
wait_status() {   # PORT PATH STATUS
  local i
  for i in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1$2")" = "$3" ] && return 0
    sleep 0.1
  done
  return 1
}

start_server one --redis "$CTR_REDIS"
start_server cl --redis-cluster "$CTR_CLUSTER_SEEDS"
start_server rep --redis-cluster "${CTR_CLUSTER_SEEDS%%,*}" --redis-read-replicas
for s in one cl rep; do
  eval "p=\$port_$s"
  check "server $s ready" wait_status "$p" /readyz 200
done

"$PY" - "$tmp/requests.jsonl" "$port_one" "$port_cl" "$port_rep" <<'PY'
import http.client, json, sys
path, ports = sys.argv[1], sys.argv[2:]
conns = [http.client.HTTPConnection("127.0.0.1", int(p), timeout=30) for p in ports]
def rank(c, body):
    c.request("POST", "/v1/rank", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read())
n = diff = deg = 0
for line in open(path):
    res = [rank(c, line) for c in conns]
    n += 1
    for st, body in res:
        if st != 200 or body.get("degraded"):
            deg += 1
            if deg <= 3:
                print("  not clean:", st, json.dumps(body)[:300], file=sys.stderr)
    ref = res[0][1].get("items")
    for st, body in res[1:]:
        if body.get("items") != ref:
            diff += 1
            if diff < 3:
                print("  differs:", json.dumps(ref)[:200], json.dumps(body.get("items"))[:200],
                      file=sys.stderr)
print(f"  {n} requests: {diff} rankings differ from one node's, {deg} answers not clean")
sys.exit(1 if diff or deg or n != 300 else 0)
PY
check "rankings: cluster and cluster-with-replicas equal one node's, none degraded" [ $? = 0 ]

metric_nodes() {   # PORT: the node labels with pipelines > 0
  curl -s "http://127.0.0.1:$1/metrics" |
    awk -F'"' '/^ctr_redis_node_pipelines_total\{/ { split($0, v, " "); if (v[2] > 0) print $2 }' |
    sed 's/.*://' | sort -n
}
got=$(metric_nodes "$port_cl" | tr '\n' ' ')
want=$(echo $masters | tr ' ' '\n' | sort -n | tr '\n' ' ')
check "cluster server: pipelines to every master ($got)" [ "$got" = "$want" ]
replicas=$(cluster_replicas | tr '\n' ' ')
got=$(metric_nodes "$port_rep" | tr '\n' ' ')
check "replica server: pipelines to every replica ($got = $replicas)" [ "$got" = "$replicas" ]
check "metrics: no per-node series on the one-node server" \
  bash -c "! curl -s http://127.0.0.1:$port_one/metrics | grep -q ctr_redis_node_"

# Nothing reachable.
dead=$(free_port)
start_server dead --redis-cluster "127.0.0.1:$dead"
check "unreachable cluster: up (healthz)" wait_status "$port_dead" /healthz 200
body=$(curl -s "http://127.0.0.1:$port_dead/readyz")
check "unreachable cluster: /readyz 503 ($body)" grep -q "not reachable" <<<"$body"
st=$(curl -s -o "$tmp/dead.json" -w '%{http_code}' -H 'Content-Type: application/json' \
  --data-binary @<(head -n 1 "$tmp/requests.jsonl") "http://127.0.0.1:$port_dead/v1/rank")
is_unavailable() { [ "$st" = 503 ] && grep -q '"unavailable"' "$tmp/dead.json"; }
check "unreachable cluster: rank 503 unavailable ($st $(cat "$tmp/dead.json"))" is_unavailable
check "unreachable cluster: the log says why" grep -q "CLUSTER SLOTS" "$tmp/dead.log"

for seeds in "127.0.0.1" "127.0.0.1:1,,127.0.0.1:2" "/tmp/redis.sock" "::1:7000"; do
  out=$("$B/ctr-server" --model "$model" --redis-cluster "$seeds" 2>&1)
  rc=$?
  refused() { [ "$rc" = 2 ] && grep -q redis_cluster <<<"$out"; }
  check "seeds \"$seeds\" refused: exit $rc, $(head -n 1 <<<"$out" | cut -c1-100)" refused
done
out=$("$B/ctr-load" --redis-cluster "127.0.0.1" --items "$tmp/items.jsonl" 2>&1)
check "ctr-load: bad seeds refused ($(head -n 1 <<<"$out" | cut -c1-80))" grep -q "seed" <<<"$out"
out=$("$B/ctr-load" --redis "$CTR_REDIS" --redis-cluster "$CTR_CLUSTER_SEEDS" --items "$tmp/items.jsonl" 2>&1)
check "ctr-load: --redis with --redis-cluster refused" grep -q "one of --redis, --redis-cluster" <<<"$out"

# This run's keys go (masters delete; replicas follow).
for p in $masters; do
  cluster_cli "$p" --scan --pattern "$prefix*" | xargs -r -n 500 redis-cli -p "$p" del >/dev/null
done
redis-cli -p "${CTR_REDIS##*:}" --scan --pattern "$prefix*" | xargs -r -n 500 redis-cli -p "${CTR_REDIS##*:}" del >/dev/null

echo "test_cluster_server: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
