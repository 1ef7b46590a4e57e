#!/usr/bin/env bash
# lb-test.sh - ctr-server replicas behind HAProxy (deploy/haproxy.cfg) under
# wrk load: one replica drained with SIGTERM, another killed with SIGKILL,
# the failed answers counted; and the throughput of one replica against two
# behind the balancer.
#
#   bash deploy/lb-test.sh                 # both parts, demo data (make_demo)
#   bash deploy/lb-test.sh --mode failover --check     # what `make test` runs
#   bash deploy/lb-test.sh --mode bench --seconds 20
#
# Options:
#   --build DIR       programs (default build/release)
#   --data DIR        model.safetensors, items.jsonl, users.jsonl (default demo)
#   --requests FILE   wrk's requests, one JSON request a line
#                     (default DIR/requests_64.jsonl: 64 candidates)
#   --mode M          failover | bench | all (default all)
#   --seconds N       each wrk run (default 9; failover: the signal comes at
#                     a third of it)
#   --connections N   wrk connections (default 16), 2 wrk threads
#   --config FILE     haproxy configuration (default deploy/haproxy.cfg)
#   --check           exit 1 unless the drain costs no answer and the kill
#                     no more than the requests that can be in flight on the
#                     killed replica (one per wrk connection, at most)
#
# What runs, all on 127.0.0.1 and free ports: one redis-server, loaded by
# ctr-load; three ctr-server replicas (2 HTTP threads each, scoring on
# the HTTP thread); haproxy with deploy/haproxy.cfg; wrk with
# deploy/wrk/rank.lua.  Everything started is stopped on exit.
#
# A failed answer is one wrk counts: HTTP status >= 400, or a socket error
# (connect, read, write, timeout).  The drain: SIGTERM to replica 1 a third
# into the run; the replica says 503 on /readyz and to new requests, stops
# accepting, finishes what it has and exits 0, and HAProxy retries what it
# refused on another replica.  The kill: SIGKILL to replica 2 a third into
# the next run; its requests in flight end with the connection, and HAProxy
# retries them elsewhere (retry-on empty-response: POST /v1/rank is
# idempotent, see deploy/haproxy.cfg).
set -euo pipefail
cd "$(dirname "$0")/.."

build=build/release data=demo requests= mode=all seconds=9 conns=16 check=0
lb_cfg=deploy/haproxy.cfg
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --connections) conns=$2; shift 2 ;;
    --config) lb_cfg=$2; shift 2 ;;
    --check) check=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "lb-test: unknown option $1 (--help)" >&2; exit 2 ;;
  esac
done
requests=${requests:-$data/requests_64.jsonl}
case "$mode" in failover|bench|all) ;; *) echo "lb-test: --mode failover|bench|all" >&2; exit 2 ;; esac
py=${PYTHON:-/usr/bin/python3}
for f in "$build/ctr-server" "$build/ctr-load"; do
  [ -x "$f" ] || { echo "lb-test: $f not built (make)" >&2; exit 2; }
done
for f in "$data/model.safetensors" "$data/items.jsonl" "$data/users.jsonl" "$requests"; do
  [ -f "$f" ] || { echo "lb-test: $f missing (demo data: /usr/bin/python3 tools/make_demo.py --out demo)" >&2; exit 2; }
done
for t in haproxy wrk redis-server curl; do
  command -v "$t" >/dev/null || { echo "lb-test: $t not installed (deploy/install.sh)" >&2; exit 2; }
done

tmp=$(mktemp -d /tmp/ctr-lb-test.XXXXXX)
declare -A pid=()
cleanup() {
  local rc=$? k
  set +e
  for k in "${!pid[@]}"; do if [ -n "${pid[$k]}" ]; then kill -KILL "${pid[$k]}" 2>/dev/null; fi; done
  for k in "${!pid[@]}"; do if [ -n "${pid[$k]}" ]; then wait "${pid[$k]}" 2>/dev/null; fi; done
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_for() {   # wait_for SECONDS COMMAND...
  local limit=$1 t0=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    [ $((SECONDS - t0)) -lt "$limit" ] || return 1
    sleep 0.05
  done
}
say() { echo "lb-test: $*"; }

# --- Redis, features, replicas -----------------------------------------------

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$tmp" >"$tmp/redis.log" 2>&1 &
pid[redis]=$!
wait_for 10 redis-cli -p "$redis_port" ping || { say "redis-server did not start"; exit 1; }
"$build/ctr-load" --redis "127.0.0.1:$redis_port" --model "$data/model.safetensors" \
  --items "$data/items.jsonl" --users "$data/users.jsonl" >"$tmp/load.log" 2>&1 ||
  { cat "$tmp/load.log"; exit 1; }

declare -A rport=()
start_replica() {   # start_replica N
  rport[$1]=$(free_port)
  "$build/ctr-server" --model "$data/model.safetensors" --redis "127.0.0.1:$redis_port" \
    --bind 127.0.0.1 --port "${rport[$1]}" --threads 2 --score_threads 1 \
    >"$tmp/replica$1.log" 2>&1 &
  pid[r$1]=$!
}
wait_replica() { wait_for 30 curl -fsS "http://127.0.0.1:${rport[$1]}/readyz"; }

# --- HAProxy -------------------------------------------------------------------

lb_port=$(free_port) stats_port=$(free_port)
lb_url=http://127.0.0.1:$lb_port
stats() { curl -fsS "http://127.0.0.1:$stats_port/stats;csv"; }
# stat SERVER FIELD: a column of the stats CSV (by its header name).
stat() {
  stats | awk -F, -v sv="$1" -v f="$2" '
    NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
    $1 == "scorers" && $2 == sv { print $col[f] }'
}
start_lb() {   # start_lb N...: haproxy in front of those replicas, all UP
  local env=(CTR_LB_BIND="127.0.0.1:$lb_port" CTR_LB_STATS="127.0.0.1:$stats_port") k=1 n
  for n in "$@"; do env+=("CTR_SCORER_$k=127.0.0.1:${rport[$n]}"); k=$((k + 1)); done
  env "${env[@]}" haproxy -db -f "$lb_cfg" >"$tmp/haproxy.log" 2>&1 &
  pid[lb]=$!
  local i
  for ((i = 1; i < k; i++)); do
    wait_for 20 bash -c "[ \"\$(curl -fsS 'http://127.0.0.1:$stats_port/stats;csv' |
      awk -F, '\$1 == \"scorers\" && \$2 == \"s$i\" { print \$18 }')\" = UP ]" ||
      { say "haproxy: s$i not UP"; cat "$tmp/haproxy.log"; exit 1; }
  done
}
stop_lb() { kill -TERM "${pid[lb]}" 2>/dev/null; wait "${pid[lb]}" 2>/dev/null || true; pid[lb]=; }

# run_wrk URL SECONDS OUT: wrk in the background (its pid in wrk_pid).
run_wrk() {
  CTR_WRK_REQUESTS=$requests wrk -t2 -c"$conns" -d"$2s" --timeout 5s -s deploy/wrk/rank.lua \
    "$1/v1/rank" >"$3" 2>&1 &
  wrk_pid=$!
}
# res OUT KEY: a value of the WRK_RESULT line.
res() { sed -n 's/^WRK_RESULT //p' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
failed_answers() { echo $(( $(res "$1" non2xx) + $(res "$1" errors) )); }

t_start=$SECONDS
for n in 1 2 3; do start_replica "$n"; done
for n in 1 2 3; do wait_replica "$n" || { say "replica $n not ready"; cat "$tmp/replica$n.log"; exit 1; }; done
say "redis 127.0.0.1:$redis_port; replicas on ${rport[1]} ${rport[2]} ${rport[3]}; requests $requests; wrk -t2 -c$conns, ${seconds} s a run; load average $(cut -d' ' -f1-3 /proc/loadavg)"

status=0

# --- Throughput: one replica direct, one and two behind HAProxy ---------------

if [ "$mode" != failover ]; then
  bench_run() {   # bench_run LABEL URL
    run_wrk "$2" "$seconds" "$tmp/bench.out"
    wait "$wrk_pid" || true
    printf 'lb-test: bench %-28s %8.1f req/s  p50 %6.3f ms  p99 %7.3f ms  failed %d\n' "$1" \
      "$(res "$tmp/bench.out" rps)" "$(res "$tmp/bench.out" p50_ms)" \
      "$(res "$tmp/bench.out" p99_ms)" "$(failed_answers "$tmp/bench.out")"
    res "$tmp/bench.out" rps >"$tmp/rps.$3"
  }
  bench_run "1 replica, no balancer" "http://127.0.0.1:${rport[1]}" direct
  start_lb 1
  bench_run "1 replica behind haproxy" "$lb_url" lb1
  stop_lb
  start_lb 1 2
  bench_run "2 replicas behind haproxy" "$lb_url" lb2
  stop_lb
  say "$(awk -v a="$(cat "$tmp/rps.lb1")" -v b="$(cat "$tmp/rps.lb2")" -v d="$(cat "$tmp/rps.direct")" \
    'BEGIN { printf "bench ratio: 2 replicas / 1 replica behind haproxy = %.2fx; haproxy with 1 replica / direct = %.2fx", b / a, a / d }')"
  say "bench: all of wrk, haproxy, Redis and the replicas share this machine's $(nproc) cores"
fi

# --- Drain (SIGTERM) and kill (SIGKILL) under load ------------------------------

if [ "$mode" != bench ]; then
  start_lb 1 2 3
  at=$(( seconds / 3 > 0 ? seconds / 3 : 1 ))

  run_wrk "$lb_url" "$seconds" "$tmp/drain.out"
  sleep "$at"
  inflight1=$(stat s1 scur)
  kill -TERM "${pid[r1]}"
  t0=$(date +%s%N)
  drain_rc=0
  wait "${pid[r1]}" || drain_rc=$?
  drain_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  pid[r1]=
  wait "$wrk_pid" || true
  drain_failed=$(failed_answers "$tmp/drain.out")
  say "drain: SIGTERM to replica 1 after ${at} s ($inflight1 request(s) in flight there per haproxy); it exited $drain_rc after $drain_ms ms: \"$(grep -o 'SIGTERM: stopping.*' "$tmp/replica1.log" | head -n 1)\""
  say "drain: $(res "$tmp/drain.out" requests) answers, $drain_failed failed ($(res "$tmp/drain.out" non2xx) HTTP >= 400, $(res "$tmp/drain.out" errors) socket errors); haproxy retries on s1: $(stat s1 wretr), redispatched: $(stat s1 wredis), s1 now $(stat s1 status)"

  run_wrk "$lb_url" "$seconds" "$tmp/kill.out"
  sleep "$at"
  inflight2=$(stat s2 scur)
  kill -KILL "${pid[r2]}"
  wait "${pid[r2]}" 2>/dev/null || true
  pid[r2]=
  wait "$wrk_pid" || true
  kill_failed=$(failed_answers "$tmp/kill.out")
  say "kill: SIGKILL to replica 2 after ${at} s ($inflight2 request(s) in flight there per haproxy; at most $conns, one per wrk connection)"
  say "kill: $(res "$tmp/kill.out" requests) answers, $kill_failed failed ($(res "$tmp/kill.out" non2xx) HTTP >= 400, $(res "$tmp/kill.out" errors) socket errors); haproxy retries on s2: $(stat s2 wretr), redispatched: $(stat s2 wredis), s2 now $(stat s2 status)"
  say "after both: s3 served $(stat s3 stot) sessions, status $(stat s3 status)"
  stop_lb

  if [ "$check" = 1 ]; then
    [ "$drain_rc" = 0 ] || { say "FAIL: the drained replica exited $drain_rc"; status=1; }
    [ "$drain_failed" = 0 ] || { say "FAIL: $drain_failed failed answers during the drain (target 0)"; status=1; }
    [ "$kill_failed" -le "$conns" ] ||
      { say "FAIL: $kill_failed failed answers during the kill (more than the $conns that can be in flight)"; status=1; }
    [ "$(res "$tmp/drain.out" requests)" -gt 0 ] && [ "$(res "$tmp/kill.out" requests)" -gt 0 ] ||
      { say "FAIL: no answers at all"; status=1; }
  fi
fi

say "done in $((SECONDS - t_start)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
