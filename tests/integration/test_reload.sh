#!/usr/bin/env bash
# test_reload.sh - what stands at the model path, and reloads off the main
# thread:
#   - a directory at the model path: refused as not a regular file, at start
#     (exit 1, no allocation of its "size") and on SIGHUP (still serving);
#   - a FIFO at the model path: refused at once on SIGHUP (no wait for a
#     writer), SIGTERM still drains;
#   - a reload of a large file (the 125 MB microlens model behind a symlink,
#     refused after loading since it reads other features) runs on a thread
#     of its own: the health check goes on during it (/readyz turns 503 when
#     the feature-set marker goes) and SIGTERM is handled at once.
# ~5 s (release).
set -uo pipefail
B=${CTR_BUILD:-build/release}
G=$(cd "${CTR_GOLDEN:-build/golden}" && pwd)   # absolute: symlinks point into it
PY=${PYTHON:-/usr/bin/python3}
: "${CTR_REDIS:?tests/run.sh provides a Redis}"
tmp=$(mktemp -d /tmp/ctr-reload.XXXXXX)
pid=
prefix="reload$$:"
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  redis-cli -u "redis://$CTR_REDIS" --scan --pattern "$prefix*" 2>/dev/null |
    xargs -r redis-cli -u "redis://$CTR_REDIS" DEL >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
. tests/integration/lib/checks.sh
rcli() { redis-cli -u "redis://$CTR_REDIS" "$@"; }

# At start: a directory.
mkdir "$tmp/dir.safetensors"
port=$(free_port)
timeout 20 "$B/ctr-server" --model "$tmp/dir.safetensors" --redis "$CTR_REDIS" --port "$port" \
  >"$tmp/dir.log" 2>&1
rc=$?
check "a directory as the model at start: exit 1 ($rc), 'not a regular file (a directory)'" \
  bash -c "[ $rc = 1 ] && grep -q 'not a regular file (a directory)' '$tmp/dir.log' &&
           ! grep -q 'out of memory' '$tmp/dir.log'"

"$B/ctr-load" --redis "$CTR_REDIS" --prefix "$prefix" --model "$G/small/model.safetensors" \
  --items "$G/small/items.jsonl" --users "$G/small/users.jsonl" >"$tmp/load.log" 2>&1 ||
  { cat "$tmp/load.log"; exit 1; }
ln -s "$G/small/model.safetensors" "$tmp/model.safetensors"
start_server() {
  "$B/ctr-server" --model "$tmp/model.safetensors" --redis "$CTR_REDIS" --redis-prefix "$prefix" \
    --port "$port" --threads 2 --score-threads 1 --health-interval-ms 20 >"$tmp/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}
if start_server; then ok "server ready"; else bad "server ready"; tail -20 "$tmp/server.log"; exit 1; fi
status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port$1"; }
# Points the model path somewhere else by atomic rename, as the README says.
point() { ln -sfn "$1" "$tmp/next" && mv -T "$tmp/next" "$tmp/model.safetensors"; }
reloads() { curl -s --max-time 5 "http://127.0.0.1:$port/metrics" |
  awk -v r="result=\"$1\"" '/^ctr_model_reloads_total/ && index($0, r) { s += $2 } END { print s + 0 }'; }
wait_reloads() {   # wait_reloads RESULT N: up to 30 s
  for _ in $(seq 300); do [ "$(reloads "$1")" -ge "$2" ] && return 0; sleep 0.1; done
  return 1
}

# SIGHUP with a directory at the path.
point "$tmp/dir.safetensors"
kill -HUP "$pid"
check "SIGHUP, directory: the reload fails ('not a regular file')" \
  bash -c "$(declare -f reloads wait_reloads); port=$port; wait_reloads failed 1 &&
           grep -q 'not a regular file (a directory)' '$tmp/server.log'"
check "still serving (/readyz $(status /readyz))" [ "$(status /readyz)" = 200 ]

# SIGHUP with a FIFO nobody writes to: opening it used to wait for a writer
# on the main thread, and SIGTERM with it.
mkfifo "$tmp/fifo"
point "$tmp/fifo"
kill -HUP "$pid"
check "SIGHUP, FIFO: refused at once ('not a regular file (a FIFO)')" \
  bash -c "$(declare -f reloads wait_reloads); port=$port; wait_reloads failed 2 &&
           grep -q 'not a regular file (a FIFO)' '$tmp/server.log'"

# A long reload: the health check and SIGTERM do not wait for it.
point "$G/microlens/model.safetensors"
kill -HUP "$pid"
for _ in $(seq 200); do [ "$(grep -c 'SIGHUP: reloading' "$tmp/server.log")" -ge 3 ] && break
  sleep 0.01; done
rcli DEL "${prefix}meta" >/dev/null
t0=$(date +%s%N)
ready=
for _ in $(seq 250); do
  [ "$(status /readyz)" = 503 ] && { ready=503; break; }
  sleep 0.02
done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
during=$(grep -c "reload of model .* failed" "$tmp/server.log")
check "during the reload the health check runs: /readyz 503 in $ms ms, the marker gone (reload still running: $([ "$during" = 2 ] && echo yes || echo no))" \
  bash -c "[ '$ready' = 503 ] && [ '$during' = 2 ]"
"$B/ctr-load" --redis "$CTR_REDIS" --prefix "$prefix" --model "$G/small/model.safetensors" \
  --items "$G/small/items.jsonl" --users "$G/small/users.jsonl" >"$tmp/load.log" 2>&1
check "the reload of the 125 MB file ends (refused: other item features)" wait_reloads failed 3
for _ in $(seq 100); do [ "$(status /readyz)" = 200 ] && break; sleep 0.05; done

kill -HUP "$pid"
for _ in $(seq 200); do [ "$(grep -c 'SIGHUP: reloading' "$tmp/server.log")" -ge 4 ] && break
  sleep 0.01; done
t0=$(date +%s%N)
kill -TERM "$pid"
for _ in $(seq 200); do grep -q "SIGTERM: stopping" "$tmp/server.log" && break; sleep 0.01; done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
during=$(grep -c "reload of model .* failed" "$tmp/server.log")
check "SIGTERM during a reload handled at once ($ms ms; reload still running: $([ "$during" = 3 ] && echo yes || echo no))" \
  bash -c "grep -q 'SIGTERM: stopping' '$tmp/server.log' && [ '$during' = 3 ]"
for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$pid" 2>/dev/null   # still there after 30 s: a failure
wait "$pid"
rc=$?
pid=
check "drained and exited 0 (exit $rc)" [ "$rc" = 0 ]
[ "$failed" -eq 0 ] || tail -20 "$tmp/server.log"
echo "test_reload: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
