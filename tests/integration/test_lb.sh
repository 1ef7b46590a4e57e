#!/usr/bin/env bash
# test_lb.sh - three ctr-server replicas behind HAProxy (deploy/haproxy.cfg)
# under wrk load: one drained with SIGTERM must cost no answer, one killed
# with SIGKILL no more than the requests that can be in flight on it
# (deploy/lb-test.sh --check; about 15 s).  Run by `make test` with
# CTR_BUILD and CTR_GOLDEN (the golden "small" model and its requests).
set -euo pipefail
# The replicas' rank deadline (ctr-server reads CTR_DEADLINE_MS): a second,
# not the production 50 ms, so that a sanitizer build on a loaded machine,
# with requests queued behind HAProxy's maxconn, answers 200; what is
# checked is the drain and the kill, not latency (`bash deploy/lb-test.sh`
# measures that).
export CTR_DEADLINE_MS=${CTR_DEADLINE_MS:-1000}
: "${CTR_BUILD:=build/release}"
: "${CTR_GOLDEN:=build/golden}"
exec bash deploy/lb-test.sh --mode failover --check --build "$CTR_BUILD" \
  --data "$CTR_GOLDEN/small" --requests "$CTR_GOLDEN/small/requests.jsonl" \
  --seconds 6 --connections 16
