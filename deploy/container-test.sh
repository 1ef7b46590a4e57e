#!/usr/bin/env bash
# container-test.sh - builds the Dockerfile's images with podman and runs
# them for real: Redis, the loader and the scorer as containers, a ranking
# asked with curl, and the answer checked against ctr-score's.  Then the
# same with deploy/docker-compose.yml under podman-compose.
#
#   bash deploy/container-test.sh          (or: make container-test)
#
# Not part of `make check`: it downloads Debian packages and takes minutes
# on a first run (the base image, then the demo image: the build stage,
# PyTorch and the demo model's training; deploy/README.md has measured
# times, far longer on a machine busy with other work); later runs reuse
# podman's layer cache, about a minute.  Each image's build time is
# printed, and again in the closing line.  Needs
# root (podman's store, debootstrap) and the packages of
# `bash deploy/install.sh container` (podman, buildah, runc, debootstrap,
# podman-compose, CNI's dnsname plugin).
#
# How podman runs here (these machines have no systemd, and a ulimit podman
# cannot set): every podman call is `podman --runtime runc --cgroup-manager
# cgroupfs`, with CONTAINERS_CONF pointing at a file whose [containers]
# section sets `default_ulimits = []`.  Builds and the containers started
# here use `--network host` (the services listen on 127.0.0.1, on free
# ports chosen here); the compose run uses its own bridge network, whose
# service names resolve through CNI's dnsname plugin.
#
# No image registry is needed: the base image `debian:bookworm-slim` is made
# once with `debootstrap --variant=minbase bookworm DIR MIRROR`, MIRROR being
# the first Debian archive in this machine's apt sources (read at run time),
# and imported with `tar -C DIR -c . | podman import -`.  It stays in
# podman's image store; CTR_BASE_REBUILD=1 makes it again.  Redis comes from
# the Dockerfile's `redis` stage (Debian's redis-server).
#
# Environment: CTR_CT_COMPOSE=0 skips the compose part.  CTR_CT_STORE=DIR
# keeps podman's images and layers under DIR instead of podman's default
# store (an empty DIR measures a first run without touching that store; it
# stays for the next run, remove it when done).  OPENBLAS_CORETYPE, when
# set, reaches the demo's training as docker-compose.yml passes it.
#
# Nothing is left running: the containers, the compose project and its
# network are removed on exit; the images stay (podman's cache).
set -euo pipefail
cd "$(dirname "$0")/.."

py=/usr/bin/python3
tag=ctr-scorer
suffix=ct$$
tmp=$(mktemp -d /tmp/ctr-container-test.XXXXXX)
t_start=$SECONDS
step() { echo; echo "== [$((SECONDS - t_start)) s] $*"; }
die() { echo "container-test: FAIL: $*" >&2; exit 1; }

containers=()
compose_up=
cleanup() {
  local rc=$?
  for c in "${containers[@]}"; do pm rm -f -t 5 "$c" >/dev/null 2>&1 || true; done
  if [ -n "$compose_up" ]; then
    (cd deploy && podman-compose "${compose_args[@]}" down -t 5 >/dev/null 2>&1) || true
    pm network rm "${compose_project}_default" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$tmp/containers.conf" <<'EOF'
[containers]
default_ulimits = []
EOF
export CONTAINERS_CONF=$tmp/containers.conf
podman_global=(--runtime runc --cgroup-manager cgroupfs)
if [ -n "${CTR_CT_STORE:-}" ]; then
  # A store of its own (an empty one measures a first run), not podman's
  # default one; podman-compose gets the same options.
  mkdir -p "$CTR_CT_STORE"
  store=$(cd "$CTR_CT_STORE" && pwd)
  case $store in *[[:space:]]*) die "CTR_CT_STORE must not contain spaces" ;; esac
  podman_global+=(--root "$store/root" --runroot "$store/run")
fi
pm() { podman "${podman_global[@]}" "$@"; }
times=()    # "what N s" for the summary


free_port() {
  "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

for tool in podman runc debootstrap curl; do
  command -v "$tool" >/dev/null || die "$tool is not installed (bash deploy/install.sh container)"
done
[ "$(id -u)" -eq 0 ] || die "run as root (podman's overlay store and debootstrap need it)"

# --- The base image ----------------------------------------------------------

# The first Debian archive for bookworm in the apt sources (one-line .list
# files and deb822 .sources files), skipping the security archive.
apt_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { u = $i; s = $(i + 1); break }
                       if (s == "bookworm" && u !~ /security/) { print u; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
         { u = ""; ok = 0; deb = 0
           for (i = 1; i <= NF; i++) {
             if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) deb = 1
             if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); u = a[2] }
             if ($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) ok = 1 }
           if (deb && ok && u != "" && u !~ /security/) { print u; exit } }' "$f"
  done
}

step "base image debian:bookworm-slim"
if [ "${CTR_BASE_REBUILD:-0}" != 1 ] && pm image exists debian:bookworm-slim; then
  echo "present (CTR_BASE_REBUILD=1 makes it again)"
else
  mirror=$(apt_mirror | head -n 1)
  [ -n "$mirror" ] || die "no Debian bookworm archive found in the apt sources"
  echo "debootstrap --variant=minbase bookworm from the apt sources' mirror"
  rootfs=$tmp/rootfs
  t0=$SECONDS
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -n 30 "$tmp/debootstrap.log"; die "debootstrap failed"; }
  # As the official slim image: no package lists, no apt cache.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  tar -C "$rootfs" -c . | pm import - debian:bookworm-slim >"$tmp/import.log" 2>&1 ||
    { cat "$tmp/import.log"; die "podman import of the base image failed"; }
  rm -rf "$rootfs"
  echo "made in $((SECONDS - t0)) s"
  times+=("base image $((SECONDS - t0)) s")
fi

# --- Images ------------------------------------------------------------------

build() {   # build TARGET [podman build options...]
  local target=$1 t0=$SECONDS
  shift
  pm build --network host "$@" --target "$target" -t "$tag:$target" -f Dockerfile . \
    >"$tmp/build-$target.log" 2>&1 ||
    { tail -n 40 "$tmp/build-$target.log"; die "podman build --target $target failed"; }
  local s=$((SECONDS - t0))
  times+=("$target $s s")
  echo "$tag:$target built in $s s ($(pm image inspect --format '{{.Size}}' "$tag:$target" |
       awk '{printf "%.0f MB", $1 / 1e6}'))"
}
step "podman build: demo, runtime, redis"
# The demo image first, from nothing on a first run: its three stages
# (build, runtime-base, demo-data) in parallel, as BuildKit builds them for
# `docker compose up --build`; its time is what that first run costs.  The
# runtime image then reuses the build stage and runtime-base.
# OPENBLAS_CORETYPE: the demo stage's optional build argument, passed as
# docker-compose.yml passes it (the caller's, empty when unset): the same
# value, the same cached layers, so the compose run below trains nothing.
build demo --jobs 3 --build-arg "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-}"
# What the training printed (nothing when the layer came from the cache).
grep -E '^make_demo: ' "$tmp/build-demo.log" | sed 's/^/  /' || echo "  demo model and data: from the layer cache"
build runtime
build redis
demo_id=$(pm image inspect --format '{{.Id}}' "$tag:demo")

# --- Run: Redis, ctr-load, ctr-server ----------------------------------------

redis_port=$(free_port)
step "redis container on 127.0.0.1:$redis_port"
pm run -d --name "redis-$suffix" --network host --read-only "$tag:redis" \
  /etc/redis/ctr.conf --bind 127.0.0.1 --port "$redis_port" >/dev/null
containers+=("redis-$suffix")
for _ in $(seq 100); do
  pm exec "redis-$suffix" redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
[ "$(pm exec "redis-$suffix" redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] ||
  { pm logs "redis-$suffix" | tail; die "Redis did not answer PING"; }
echo "PONG"

step "ctr-load container (demo image) fills Redis"
pm run --rm --network host --read-only --entrypoint /usr/local/bin/ctr-load "$tag:demo" \
  --redis "127.0.0.1:$redis_port" --model /models/model.safetensors \
  --items /demo/items.jsonl --users /demo/users.jsonl 2>&1 | tail -n 3
keys=$(pm exec "redis-$suffix" redis-cli -p "$redis_port" dbsize)
echo "Redis holds $keys keys"
[ "$keys" -gt 0 ] || die "ctr-load stored nothing"

# The runtime image with the model mounted read-only from a volume (as the
# Kubernetes Deployment does), read-only root file system, its own user.
step "ctr-server container (runtime image, model on a read-only volume)"
mkdir -p "$tmp/models"
pm run --rm --network host --entrypoint /bin/cat "$tag:demo" /models/model.safetensors \
  >"$tmp/models/model.safetensors"
chmod 0755 "$tmp/models" && chmod 0644 "$tmp/models/model.safetensors"
http_port=$(free_port)
pm run -d --name "scorer-$suffix" --network host --read-only \
  -v "$tmp/models:/models:ro" \
  -e CTR_BIND=127.0.0.1 -e CTR_PORT="$http_port" -e CTR_REDIS="127.0.0.1:$redis_port" \
  -e CTR_THREADS=2 "$tag:runtime" >/dev/null
containers+=("scorer-$suffix")
url=http://127.0.0.1:$http_port
for _ in $(seq 150); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$url/readyz" || { pm logs "scorer-$suffix" | tail; die "/readyz did not answer 200"; }
echo
echo "runs as: $(pm exec "scorer-$suffix" id)"

# rank URL OUT: POSTs deploy/example_request.json; fails, showing the
# answer, unless it is 200.  The request asks for a 1 s budget: the first
# request of a fresh server connects to Redis and computes its items'
# vectors, which on a machine busy with other work can outlast the 50 ms
# default (then 503).
rank() {
  local code
  code=$(curl -sS -o "$2" -w '%{http_code}' -H 'Content-Type: application/json' \
    -H 'X-Request-Timeout-Ms: 1000' -d @deploy/example_request.json "$1/v1/rank") || return 1
  [ "$code" = 200 ] || { echo "HTTP $code: $(cat "$2")" >&2; return 1; }
}

step "rank with curl; compare with ctr-score (demo image) on the same request"
rank "$url" "$tmp/answer.json" || die "POST /v1/rank failed"
cat "$tmp/answer.json"; echo
"$py" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' \
  deploy/example_request.json >"$tmp/request.jsonl"
pm run --rm -i --network host --read-only --entrypoint /usr/local/bin/ctr-score "$tag:demo" \
  --model /models/model.safetensors --items /demo/items.jsonl --users /demo/users.jsonl \
  <"$tmp/request.jsonl" >"$tmp/scores.jsonl" 2>"$tmp/score.err" ||
  { cat "$tmp/score.err"; die "ctr-score failed"; }
compare() {   # compare ANSWER.json: ranking and scores equal ctr-score's
  "$py" - "$tmp/request.jsonl" "$tmp/scores.jsonl" "$1" <<'PY'
import json, sys
req = json.loads(open(sys.argv[1]).read())
scores = json.loads(open(sys.argv[2]).read())["scores"]
ans = json.load(open(sys.argv[3]))
ids = [c["item_id"] for c in req["candidates"]]
ref = sorted(zip(ids, scores), key=lambda p: -p[1])[: req.get("top_k", len(ids))]
got = [(it["item_id"], it["score"]) for it in ans["items"]]
diff = max(abs(a[1] - b[1]) for a, b in zip(ref, got)) if got else float("inf")
same_order = [i for i, _ in ref] == [i for i, _ in got]
print(f"ctr-score top {len(ref)}: {[i for i, _ in ref]}")
print(f"server    top {len(got)}: {[i for i, _ in got]}; max |score diff| {diff:.2e}; "
      f"degraded {ans.get('degraded')}")
ok = same_order and len(ref) == len(got) and diff <= 1e-6 and not ans.get("degraded")
print("equal to ctr-score: " + ("yes" if ok else "NO"))
sys.exit(0 if ok else 1)
PY
}
compare "$tmp/answer.json" || die "the container's ranking differs from ctr-score's"

step "SIGTERM drains and exits 0"
pm stop -t 15 "scorer-$suffix" >/dev/null
code=$(pm inspect --format '{{.State.ExitCode}}' "scorer-$suffix")
pm logs "scorer-$suffix" 2>&1 | tail -n 2
[ "$code" = 0 ] || die "ctr-server exited $code after SIGTERM"
echo "exit code 0"

# --- docker-compose.yml with podman-compose -----------------------------------

# The compose file as it is (bridge network, service names): podman's CNI
# network needs the dnsname plugin for names to resolve.
compose_project=ctr$suffix
compose_args=(-p "$compose_project" --podman-args "${podman_global[*]}" -f docker-compose.yml)
if [ "${CTR_CT_COMPOSE:-1}" = 1 ]; then
  step "deploy/docker-compose.yml with podman-compose"
  command -v podman-compose >/dev/null || die "podman-compose is not installed"
  [ -x /usr/lib/cni/dnsname ] ||
    die "podman's CNI dnsname plugin is missing (golang-github-containernetworking-plugin-dnsname)"
  export CTR_HTTP_PORT=$(free_port)
  compose_up=1
  # As the README runs it: `up --build`.  Its builds must come from the
  # layers built above (nothing trained again): the same demo image.
  t0=$SECONDS
  (cd deploy && podman-compose "${compose_args[@]}" up --build -d) >"$tmp/compose.log" 2>&1 ||
    { tail -n 30 "$tmp/compose.log"; die "podman-compose up --build failed"; }
  times+=("compose up --build $((SECONDS - t0)) s")
  echo "podman-compose up --build: $((SECONDS - t0)) s"
  compose_demo_id=$(pm image inspect --format '{{.Id}}' "$tag:demo")
  [ "$compose_demo_id" = "$demo_id" ] ||
    { grep -E '^(STEP|--> )' "$tmp/compose.log" | tail -n 20
      die "compose: the demo image was built again (${compose_demo_id:0:12}, not ${demo_id:0:12}): its layers were not reused"; }
  echo "compose demo image: ${demo_id:0:12}, the one built above (layers reused)"
  # podman-compose 1.0.3 ignores depends_on's conditions: wait for the
  # loader here.
  load_rc=$(pm wait "${compose_project}_load_1" 2>/dev/null || echo missing)
  pm logs "${compose_project}_load_1" 2>&1 | tail -n 1
  [ "$load_rc" = 0 ] || die "the compose loader exited with $load_rc"
  curl_url=http://127.0.0.1:$CTR_HTTP_PORT
  for _ in $(seq 150); do
    curl -fsS "$curl_url/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "$curl_url/readyz" >/dev/null ||
    { pm logs "${compose_project}_scorer_1" 2>&1 | tail -n 20; die "the compose scorer did not become ready"; }
  rank "$curl_url" "$tmp/answer-compose.json" || die "compose: POST /v1/rank failed"
  cat "$tmp/answer-compose.json"; echo
  compare "$tmp/answer-compose.json" || die "the compose ranking differs from ctr-score's"
  # The file's `ulimits: nofile` must reach the scorer (our containers.conf
  # empties podman's own default_ulimits, which must not drop it): the
  # server fits the file's max_connections (5,000) under it without
  # lowering it.
  nofile=$(pm exec "${compose_project}_scorer_1" sh -c 'grep "^Max open files" /proc/1/limits' |
    awk '{ print $4 "/" $5 }')
  echo "compose scorer: open files soft/hard $nofile"
  [ "$nofile" = 16384/16384 ] ||
    die "compose: the scorer's open-file limit is $nofile, not docker-compose.yml's 16384"
  if pm logs "${compose_project}_scorer_1" 2>&1 | grep -q "max_connections lowered"; then
    die "compose: the scorer lowered max_connections (open-file limit too low)"
  fi
fi

step "container-test: PASS ($((SECONDS - t_start)) s; $(IFS=,; echo "${times[*]}" | sed 's/,/, /g'))"
