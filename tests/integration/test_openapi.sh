#!/usr/bin/env bash
# test_openapi.sh - proto/openapi.yaml checked by a real OpenAPI 3 validator:
# @apidevtools/swagger-cli (npm, pinned in tests/openapi/package.json and
# its lock file, installed with `npm ci --ignore-scripts` into
# tests/openapi/node_modules the first time).  A deliberately broken copy
# must be refused too, so the check is known to bite.  The answers of a
# real server are checked against the same file's schemas by
# test_multimodel.py (python3-jsonschema).
# run.sh: release only (a Node validator only: the same in every build variant)
set -euo pipefail
dir=tests/openapi
cli=$dir/node_modules/.bin/swagger-cli
. tests/integration/lib/checks.sh

if ! command -v npm >/dev/null; then
  echo "test_openapi: npm not found (deploy/install.sh installs it)" >&2
  exit 1
fi
# Install when missing or when the lock file changed since.
if [ ! -x "$cli" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) ||
    { echo "test_openapi: npm ci failed" >&2; exit 1; }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if out=$("$cli" validate proto/openapi.yaml 2>&1); then
  ok "proto/openapi.yaml is valid OpenAPI 3 ($out)"
else
  bad "proto/openapi.yaml: $out"
fi
# Broken on purpose: a schema reference to nothing, a keyword of the wrong
# type.  Each must be refused.
sed 's|#/components/schemas/Explanation"|#/components/schemas/NoSuchSchema"|' proto/openapi.yaml \
  >"$tmp/ref.yaml"
sed 's|maxItems: 16|maxItems: sixteen|' proto/openapi.yaml >"$tmp/type.yaml"
for f in ref type; do
  if cmp -s proto/openapi.yaml "$tmp/$f.yaml"; then
    bad "broken copy ($f) is not broken: the test no longer edits the file"
  elif "$cli" validate "$tmp/$f.yaml" >"$tmp/$f.out" 2>&1; then
    bad "a broken copy ($f) passed the validator"
  else
    ok "a broken copy ($f) is refused: $(head -n 1 "$tmp/$f.out")"
  fi
done
echo "test_openapi: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
