#!/usr/bin/env bash
# test_k8s.sh - deploy/k8s validated offline (no cluster): every manifest
# deserialised strictly into the Kubernetes API models of Debian's
# python3-kubernetes, the project's rules, and the ConfigMap's settings read
# by ctr-server's own parser (tools/k8s_validate.py).  Then the same check
# must refuse broken copies: an unknown field, a wrong type, a missing
# required field, a setting ctr-server does not know, a missing preStop.
#
# Run by `make test` with CTR_BUILD and PYTHON.
set -euo pipefail
: "${CTR_BUILD:=build/release}"
: "${PYTHON:=/usr/bin/python3}"
validate=("$PYTHON" tools/k8s_validate.py --ctr-server "$CTR_BUILD/ctr-server")

. tests/integration/lib/checks.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if "${validate[@]}" deploy/k8s/*.yaml >"$tmp/out" 2>&1; then
  ok "deploy/k8s: $(tail -n 1 "$tmp/out" | sed 's/^k8s_validate: //')"
else
  sed 's/^/    | /' "$tmp/out" >&2
  bad "deploy/k8s validates"
fi

# refused NAME EXPECTED-TEXT SED-EXPRESSION FILE: a copy of deploy/k8s with
# FILE edited must fail, saying EXPECTED-TEXT.
refused() {
  local name=$1 want=$2 expr=$3 file=$4
  rm -rf "$tmp/k8s" && cp -r deploy/k8s "$tmp/k8s"
  sed -i "$expr" "$tmp/k8s/$file"
  if cmp -s "deploy/k8s/$file" "$tmp/k8s/$file"; then
    bad "$name (the edit changed nothing)"
    return
  fi
  if "${validate[@]}" "$tmp"/k8s/*.yaml >"$tmp/out" 2>&1; then
    bad "$name: accepted"
  elif grep -qF -- "$want" "$tmp/out"; then
    ok "$name: refused ($(grep -F -- "$want" "$tmp/out" | head -n 1 | sed "s|$tmp/||; s/^k8s_validate: //"))"
  else
    sed 's/^/    | /' "$tmp/out" >&2
    bad "$name: refused, but without \"$want\""
  fi
}
refused "unknown field" "livenessprobe: unknown field" 's/livenessProbe:/livenessprobe:/' deployment.yaml
refused "wrong type" "expected an integer" 's/^  replicas: 3/  replicas: "3"/' deployment.yaml
refused "missing required field" "must not be \`None\`" '/^        - name: ctr-server$/s/- name: ctr-server/- image: x/; /^          image: ctr-scorer:runtime/d' deployment.yaml
refused "quantity as a bare number (a project rule: quote quantities)" "not a quantity string" 's/cpu: "2"/cpu: 2/' deployment.yaml
refused "unknown ctr-server setting" "unknown setting \"thread\"" 's/^    threads = 2/    thread = 2/' configmap.yaml
refused "bad ctr-server value" "threads" 's/^    threads = 2/    threads = two/' configmap.yaml
refused "no preStop pause" "preStop" 's|command: \["/bin/sleep", "5"\]|command: ["/bin/true"]|' deployment.yaml
refused "Service selects nothing" "selects no pod" 's/^    app.kubernetes.io\/component: scorer$/    app.kubernetes.io\/component: other/' service.yaml
refused "unknown kind field in HPA" "unknown field" 's/averageUtilization: 60/averageUtilisation: 60/' hpa.yaml

echo "test_k8s: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
