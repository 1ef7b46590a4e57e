#!/usr/bin/env bash
# test_lb.sh - three ctr-server replicas behind HAProxy (deploy/haproxy.cfg)
# under wrk load: one drained with SIGTERM must cost no answer, one killed
# with SIGKILL no more than the requests that can be in flight on it
# (deploy/lb-test.sh --check; about 15 s).  Run by `make test` with
# CTR_BUILD and CTR_GOLDEN (the golden "small" model and its requests).
set -euo pipefail
: "${CTR_BUILD:=build/release}"
: "${CTR_GOLDEN:=build/golden}"
exec bash deploy/lb-test.sh --mode failover --check --build "$CTR_BUILD" \
  --data "$CTR_GOLDEN/small" --requests "$CTR_GOLDEN/small/requests.jsonl" \
  --seconds 6 --connections 16
