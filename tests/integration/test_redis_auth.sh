#!/usr/bin/env bash
# test_redis_auth.sh - Redis AUTH for ctr-load and ctr-server on one node:
# a redis-server of its own with `requirepass` and two ACL users (one that
# may write the test's keys, one that may only read them):
#   - the password from a flag, an environment variable or a file, with and
#     without an ACL user, for both programs; a server reading as the
#     read-only user answers clean rankings;
#   - refusals are clear (NOAUTH, WRONGPASS, NOPERM; a user without a
#     password, two passwords: exit 2) and never print the password;
#   - the password appears in no log, no answer, /metrics, --help, or the
#     process's command line (the flag's value is blanked).
# Cluster mode with AUTH and an ACL user: test_cluster_faults.sh.  ~5 s.
set -uo pipefail
B=${CTR_BUILD:-build/release}
G=${CTR_GOLDEN:-build/golden}
PY=${PYTHON:-/usr/bin/python3}
small=$G/small
tmp=$(mktemp -d /tmp/ctr-redis-auth.XXXXXX)
pids=()
redis_pid=
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  rm -rf "$tmp"
  return 0
}
trap cleanup EXIT
. tests/integration/lib/checks.sh
secret() { "$PY" -c 'import secrets; print("pw-" + secrets.token_hex(10))'; }

pw=$(secret) loader_pw=$(secret) reader_pw=$(secret) wrong=$(secret)
secrets_re="$pw|$loader_pw|$reader_pw|$wrong"
port=$(free_port)
cat >"$tmp/redis.conf" <<EOF
port $port
bind 127.0.0.1
save ""
appendonly no
dir $tmp
requirepass "$pw"
user loader on >$loader_pw ~auth:* +@all
user reader on >$reader_pw ~auth:* +@read +@connection +subscribe &__redis__:invalidate
user reader2 on >$reader_pw ~auth:* +@read +@connection
EOF
redis-server "$tmp/redis.conf" >"$tmp/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do
  REDISCLI_AUTH=$pw redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
  sleep 0.05
done
addr=127.0.0.1:$port
check "redis-server with requirepass and ACL users on $addr" \
  bash -c "[ \"\$(redis-cli -p $port ping 2>&1)\" != PONG ]"

load() {   # OUT ARG... : ctr-load the golden small set; sets rc
  local out=$1
  shift
  "$B/ctr-load" "$@" --prefix auth: --items "$small/items.jsonl" --users "$small/users.jsonl" \
    --model "$small/model.safetensors" >"$tmp/$out" 2>&1
  rc=$?
}
no_secret() { ! grep -q -E "$secrets_re" "$@"; }

load l1 --redis "$addr"
check "ctr-load without a password: exit 1, NOAUTH ($(head -c 90 "$tmp/l1"))" \
  bash -c "[ $rc = 1 ] && grep -q NOAUTH '$tmp/l1'"
CTR_REDIS_PASSWORD=$wrong load l2 --redis "$addr"
check "ctr-load, wrong password (env): exit 1, WRONGPASS, the password not shown" \
  bash -c "[ $rc = 1 ] && grep -q 'authentication refused: WRONGPASS' '$tmp/l2'"
printf '%s\n' "$pw" >"$tmp/pw"
printf '%s\r\n' "$loader_pw" >"$tmp/loader_pw"
load l3 --redis "$addr" --redis-password-file "$tmp/pw"
check "ctr-load --redis-password-file (default user): exit $rc" [ "$rc" = 0 ]
load l4 --redis "$addr" --redis-user loader --redis-password "$loader_pw"
check "ctr-load --redis-user loader --redis-password: exit $rc" [ "$rc" = 0 ]
CTR_REDIS_USER=loader CTR_REDIS_PASSWORD_FILE=$tmp/loader_pw load l5 --redis "$addr"
check "ctr-load CTR_REDIS_USER + CTR_REDIS_PASSWORD_FILE (CRLF file): exit $rc" [ "$rc" = 0 ]
load l6 --redis "$addr" --redis-user reader --redis-password "$reader_pw"
check "ctr-load as the read-only user: exit 1, NOPERM ($(grep -o 'NOPERM.\{0,40\}' "$tmp/l6" | head -n 1))" \
  bash -c "[ $rc = 1 ] && grep -q NOPERM '$tmp/l6'"
load l7 --redis "$addr" --redis-user loader
check "ctr-load --redis-user without a password: exit 2" \
  bash -c "[ $rc = 2 ] && grep -q 'needs a password' '$tmp/l7'"
load l8 --redis "$addr" --redis-password "$pw" --redis-password-file "$tmp/pw"
check "ctr-load with two passwords: exit 2" [ "$rc" = 2 ]
load l9 --redis "$addr" --redis-password-file "$tmp/missing"
check "ctr-load, unreadable password file: exit 2, names the file" \
  bash -c "[ $rc = 2 ] && grep -q 'password file.*missing' '$tmp/l9'"
check "ctr-load: no output names a password" no_secret "$tmp"/l[1-9]

start_server() {   # NAME ARG... (env from the caller); sets port_NAME, pid_NAME
  local name=$1 p
  shift
  p=$(free_port)
  "$B/ctr-server" --model "$small/model.safetensors" --redis "$addr" --redis-prefix auth: \
    --port "$p" --threads 2 --score-threads 1 --redis-timeout-ms 500 \
    --redis-connect-timeout-ms 500 --deadline-ms 2000 "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  eval "port_$name=$p pid_$name=$!"
}
ready() {   # PORT STATUS
  local i
  for i in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
clean_ranks() {   # PORT: every golden request 200 and not degraded
  "$PY" - "$1" "$small/requests.jsonl" "$tmp/answers.$1" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
out = open(sys.argv[3], "w")
bad = 0
for line in open(sys.argv[2]):
    c.request("POST", "/v1/rank", body=line, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    body = r.read().decode()
    out.write(body + "\n")
    if r.status != 200 or json.loads(body).get("degraded"):
        bad += 1
        print("  ", r.status, body[:200], file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

CTR_REDIS_PASSWORD=$pw start_server env
check "ctr-server, CTR_REDIS_PASSWORD: ready" ready "$port_env" 200
check "ctr-server, CTR_REDIS_PASSWORD: rankings clean" clean_ranks "$port_env"
start_server flag --redis-user reader --redis-password "$reader_pw"
check "ctr-server --redis-user reader --redis-password: ready" ready "$port_flag" 200
check "ctr-server as the read-only user: rankings clean" clean_ranks "$port_flag"
cache_up() {   # PORT VALUE: ctr_history_cache_up reads VALUE within 30 s
  local i
  for i in $(seq 300); do
    curl -s "http://127.0.0.1:$1/metrics" | grep -qx "ctr_history_cache_up $2" && return 0
    sleep 0.1
  done
  return 1
}
check "ctr-server as the read-only user (+subscribe &__redis__:invalidate): history cache up" \
  cache_up "$port_flag" 1
start_server nosub --redis-user reader2 --redis-password "$reader_pw"
check "ctr-server as a read-only user without SUBSCRIBE: ready" ready "$port_nosub" 200
check "... its history cache off (NOPERM logged), rankings clean" \
  bash -c "$(declare -f cache_up clean_ranks); PY=$PY small=$small tmp=$tmp; cache_up $port_nosub 0 && clean_ranks $port_nosub && grep -q 'history cache off.*NOPERM' '$tmp/nosub.log'"
check "ctr-server: the flag's value is blanked in /proc/PID/cmdline" \
  bash -c "! tr '\\0' ' ' </proc/$pid_flag/cmdline | grep -q -e '$reader_pw'"
start_server file --redis-password-file "$tmp/pw"
check "ctr-server --redis-password-file: ready" ready "$port_file" 200
CTR_REDIS_PASSWORD=$wrong start_server wrong
check "ctr-server, wrong password: /readyz 503" ready "$port_wrong" 503
logged() {   # FILE TEXT: the line appears within 30 s
  local i
  for i in $(seq 300); do grep -q "$2" "$1" && return 0; sleep 0.1; done
  return 1
}
check "ctr-server, wrong password: the log says WRONGPASS" \
  logged "$tmp/wrong.log" "authentication refused: WRONGPASS"
for s in env flag file wrong; do
  eval "p=\$port_$s"
  curl -s "http://127.0.0.1:$p/metrics" >"$tmp/metrics.$s"
  curl -s "http://127.0.0.1:$p/readyz" >"$tmp/readyz.$s"
done
CTR_REDIS_PASSWORD=$pw CTR_REDIS_USER=reader "$B/ctr-server" --help >"$tmp/help" 2>&1
out=$("$B/ctr-server" --model "$small/model.safetensors" --redis-user reader 2>&1)
check "ctr-server --redis-user without a password: exit 2" grep -q "needs a password" <<<"$out"
out=$("$B/ctr-server" --model "$small/model.safetensors" --redis-password "$pw" \
  --redis-password-file "$tmp/pw" 2>&1)
check "ctr-server with two passwords: exit 2" grep -q "both set" <<<"$out"
printf 'redis_password = "%s"\n' "$pw" >"$tmp/cfg"
out=$("$B/ctr-server" --config "$tmp/cfg" --model /nonexistent 2>&1)
echo "$out" >"$tmp/cfg.out"
for p in "${pids[@]}"; do kill -TERM "$p"; wait "$p"; done
pids=()
check "no log, answer, /metrics, /readyz, --help or error names a password" \
  no_secret "$tmp"/*.log "$tmp"/answers.* "$tmp"/metrics.* "$tmp"/readyz.* "$tmp/help" \
  "$tmp/cfg.out"
check "the startup log says AUTH is on, as which user" \
  grep -q "with AUTH as reader" "$tmp/flag.log"

echo "test_redis_auth: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
