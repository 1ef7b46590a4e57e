#!/usr/bin/env bash
# install.sh - installs what the scorer needs, from Debian's packages.
#
# One script for every place that builds or tests the project, so they
# cannot drift apart: the README's commands, CI (.ci/run) and the Dockerfile.
#
#   deploy/install.sh            build + test + demo tools (default)
#   deploy/install.sh runtime    only the shared libraries ctr-server needs
#   deploy/install.sh container  what deploy/container-test.sh needs to
#                                build and run the images (podman...)
#   deploy/install.sh demo       what tools/make_demo.py needs (Python,
#                                NumPy, PyTorch, OpenBLAS; the Dockerfile's
#                                demo stage)
#
# Idempotent: when every package is already there it changes nothing and
# does not touch the network.
set -euo pipefail

mode=${1:-all}
runtime_pkgs=(libmicrohttpd12 libjansson4 libopenblas0-pthread libhiredis0.14 libdnnl2 libgomp1
              ca-certificates curl)
build_pkgs=(gcc make pkg-config libc6-dev libmicrohttpd-dev libjansson-dev libopenblas-dev
            libhiredis-dev libcmocka-dev libdnnl-dev)
test_pkgs=(redis-server redis-tools python3 python3-numpy python3-torch curl wrk procps
           haproxy python3-kubernetes python3-yaml prometheus python3-matplotlib
           python3-jsonschema)
# OpenBLAS: PyTorch and NumPy depend on "libblas3 | libblas.so.3" and
# PyTorch only recommends OpenBLAS; without it (apt's
# --no-install-recommends) their BLAS is Debian's reference libblas3, and
# the demo's training runs about 14x slower.
demo_pkgs=(python3 python3-numpy python3-torch libopenblas0-pthread)
container_pkgs=(podman buildah runc debootstrap podman-compose
                golang-github-containernetworking-plugin-dnsname curl python3)

case "$mode" in
  runtime) pkgs=("${runtime_pkgs[@]}") ;;
  build)   pkgs=("${runtime_pkgs[@]}" "${build_pkgs[@]}") ;;
  all)     pkgs=("${runtime_pkgs[@]}" "${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  container) pkgs=("${container_pkgs[@]}") ;;
  demo)    pkgs=("${demo_pkgs[@]}") ;;
  *) echo "usage: $0 [all|build|runtime|container|demo]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The OpenAPI validator of the tests (tests/integration/test_openapi.sh)
# runs on Node.js from npm: Debian's nodejs and npm, unless a Node.js with
# npm is there already (whatever its origin).
if [ "$mode" = all ] && ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install.sh: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install.sh: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
