#!/usr/bin/env bash
# run.sh - runs every test of one build variant (called by `make test`).
#
# Starts one throw-away redis-server on a free loopback port for the whole
# run (CTR_REDIS=127.0.0.1:PORT) and one throw-away Redis Cluster (six
# nodes, 3 masters + 3 replicas: CTR_CLUSTER_SEEDS=host:port,..., see
# tests/integration/lib/redis_cluster.sh), runs each cmocka binary, then
# each tests/integration/*.sh, and stops them all whatever happens.  Tests
# that kill or reshard cluster nodes start a cluster of their own with the
# same script.  Each test's wall time is printed after it, the ten slowest
# at the end (with the load average: figures from a busy machine are
# noisy).  Scripts marked "# run.sh: release only" run in the optimised
# variant only.  Exit status is non-zero if anything failed; the last line
# counts passes and failures.
#
#   tests/run.sh BUILD_DIR GOLDEN_DIR TEST_BIN...
set -uo pipefail
build=$1 golden=$2
shift 2
export CTR_BUILD=$build CTR_GOLDEN=$golden PYTHON=${PYTHON:-/usr/bin/python3}
# The cluster fault test (two servers under load through a reshard and a
# failover, ~20 s) runs in the optimised and AddressSanitizer variants;
# UBSan and TSan see the same code through the unit and routing tests.
case $(basename "$build") in
  undefined|thread) export CTR_CLUSTER_FAULTS=${CTR_CLUSTER_FAULTS:-0} ;;
esac
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# OpenBLAS on the calling thread, as the engine sets it at model load: unit
# tests that call BLAS before (or without) loading a model would otherwise
# start OpenBLAS's own threads, whose synchronisation TSan cannot see.
export OPENBLAS_NUM_THREADS=1

tmp=$(mktemp -d /tmp/ctr-test.XXXXXX)
redis_pid=
. tests/integration/lib/redis_cluster.sh
cleanup() {
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  cluster_stop
  rm -rf "$tmp"
}
trap cleanup EXIT

# A free port: ask the kernel, via Python's socket module.
free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
export -f free_port 2>/dev/null || true

port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$tmp" --daemonize no >"$tmp/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 600); do   # up to 30 s: a loaded machine may start it slowly
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "run.sh: redis-server did not start:"; cat "$tmp/redis.log"; exit 1
fi
export CTR_REDIS=127.0.0.1:$port CTR_REDIS_PORT=$port
t0=$SECONDS
cluster_start || { echo "run.sh: the Redis Cluster did not start"; exit 1; }
echo "run.sh: Redis Cluster on $CTR_CLUSTER_SEEDS (ready in $((SECONDS - t0)) s)"

# Each test's wall time goes to $tmp/times ("seconds<TAB>name"); the
# slowest ten are listed at the end, so where the run's time goes is seen.
now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
since() {  # seconds since $1 (from now_us), one decimal
  local us=$(( $(now_us) - $1 ))
  echo "$((us / 1000000)).$((us / 100000 % 10))"
}
passed=0 failed=0 failures=()
run() {
  local name=$1 t0 rc=0 secs; shift
  t0=$(now_us)
  echo "== $name"
  "$@" || rc=$?
  secs=$(since "$t0")
  printf '%s\t%s\n' "$secs" "$name" >>"$tmp/times"
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1)); echo "-- $name: ok, $secs s"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "-- $name: FAILED ($rc), $secs s"
  fi
}
run_t0=$(now_us)
for t in "$@"; do
  case "$t" in
    */fuzz/fuzz_*)  # the built-in sweep, then the committed corpus, if any
      run "$t" "$t"
      corpus=tests/fuzz/corpus/$(basename "$t" | sed 's/^fuzz_//')
      if [ -d "$corpus" ] && ls "$corpus"/* >/dev/null 2>&1; then
        run "$t $corpus" "$t" "$corpus"/*
      fi ;;
    */test_dense)  # again with oneDNN held below AMX: both routes on an AMX host
      run "$t" "$t"
      run "$t (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16)" env ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 "$t" plan ;;
    *) run "$t" "$t" ;;
  esac
done
# A script that runs no program of the build (Python tools, linters, Redis
# itself) says so with a line "# run.sh: release only": it gives the same
# answer in every variant, so the sanitizer variants leave it out.
variant=$(basename "$build")
for t in tests/integration/*.sh; do
  [ -e "$t" ] || continue
  if [ "$variant" != release ] && grep -q '^# run.sh: release only' "$t"; then
    echo "== $t: runs no program of the build; left to the release variant"
    continue
  fi
  run "$t" bash "$t"
done

echo
echo "Slowest tests ($(basename "$build"): $(since "$run_t0") s in all, load average" \
  "$(cut -d' ' -f1-3 /proc/loadavg) at the end):"
sort -t$'\t' -k1,1 -rn "$tmp/times" | head -n 10 | awk -F'\t' '{ printf "  %7.1f s  %s\n", $1, $2 }'
echo
[ ${#failures[@]} -eq 0 ] || printf 'FAILED: %s\n' "${failures[@]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
