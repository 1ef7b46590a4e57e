#!/usr/bin/env bash
# test_promtool.sh - the operator's files checked by Prometheus's own tool
# (Debian's prometheus package, promtool 2.42) and by tools/monitoring_check.py:
#   promtool check config   deploy/prometheus/prometheus.yml (and its rules)
#   promtool check rules    deploy/prometheus/ctr-scorer.rules.yml
#   promtool test rules     tests/deploy/prometheus/ctr-scorer.rules.test.yml
#                           (every alert: series that fire it, series that
#                           must not; recorded values)
#   monitoring_check.py     the Grafana dashboard's structure, every one of
#                           its expressions parsed by promtool, every metric
#                           name in dashboard and rules one that
#                           server/metrics.c writes or the rules record
# then controls that each check fails when it should: a broken expression,
# an unknown metric, an unknown variable in copies of the dashboard, a rule
# reading a misspelt series, an alert threshold moved so a unit test must
# catch it, and a non-conforming exposition through `promtool check
# metrics` (the live /metrics goes through it in test_server.py).
# Runs in `make test` (tests/run.sh); no server needed.
# run.sh: release only (promtool and Python only: the same in every build variant)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/usr/bin/python3}
command -v promtool >/dev/null || { echo "test_promtool: promtool missing (deploy/install.sh installs prometheus)"; exit 1; }

tmp=$(mktemp -d /tmp/ctr-promtool.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok()   { passed=$((passed + 1)); echo "  ok   $1"; }
fail() { failed=$((failed + 1)); echo "  FAIL $1"; [ -n "${2:-}" ] && sed 's/^/       /' "$2" | head -40; }
# expect 0|1 NAME CMD...: the command's exit status is 0, or non-zero.
expect() {
  local want=$1 name=$2; shift 2
  "$@" >"$tmp/out" 2>&1
  local rc=$?
  if { [ "$want" = 0 ] && [ $rc -eq 0 ]; } || { [ "$want" = 1 ] && [ $rc -ne 0 ]; }; then
    ok "$name"
  else
    fail "$name (exit $rc)" "$tmp/out"
  fi
}

RULES=deploy/prometheus/ctr-scorer.rules.yml
RTEST=tests/deploy/prometheus/ctr-scorer.rules.test.yml
DASH=deploy/grafana/ctr-scorer.json

echo "test_promtool: $(promtool --version 2>&1 | head -1)"
expect 0 "promtool check config deploy/prometheus/prometheus.yml" promtool check config deploy/prometheus/prometheus.yml
expect 0 "promtool check rules $RULES" promtool check rules "$RULES"
grep -h "SUCCESS" "$tmp/out" | sed 's/^/       /'
expect 0 "promtool test rules $RTEST" promtool test rules "$RTEST"
expect 0 "monitoring_check: dashboard and rules" "$PY" tools/monitoring_check.py
tail -1 "$tmp/out" | sed 's/^/       /'

echo "test_promtool: controls (each check must fail here)"
# Copies of the dashboard with one expression broken in one way each.
"$PY" - "$DASH" "$tmp" <<'EOF'
import json, sys
dash = json.load(open(sys.argv[1]))
def panel(d):
    return next(p for p in d["panels"] if p.get("title") == "Rank requests by status")
for name, change in [("syntax", lambda e: e.replace("rate1m{", "rate1m{{")),
                     ("unknown_metric", lambda e: e.replace("job_status:ctr_rank_requests:rate1m",
                                                            "job_status:ctr_rank_request:rate1m")),
                     ("unknown_variable", lambda e: e.replace("$job", "$jobs"))]:
    d = json.loads(json.dumps(dash))
    t = panel(d)["targets"][0]
    t["expr"] = change(t["expr"])
    assert t["expr"] != panel(dash)["targets"][0]["expr"]
    json.dump(d, open(f"{sys.argv[2]}/dash_{name}.json", "w"))
d = json.loads(json.dumps(dash))
d["panels"][1]["gridPos"]["x"] = 22
json.dump(d, open(f"{sys.argv[2]}/dash_grid.json", "w"))
EOF
expect 1 "a dashboard expression that does not parse" "$PY" tools/monitoring_check.py --dashboard "$tmp/dash_syntax.json"
grep -q 'panel .* "Rank requests by status" A: does not parse' "$tmp/out" && ok "  ... named: $(grep -m1 -o 'panel [0-9]* "Rank requests by status" A: does not parse' "$tmp/out")" \
  || fail "the parse error names the panel" "$tmp/out"
expect 1 "a dashboard reading a series nobody writes" "$PY" tools/monitoring_check.py --dashboard "$tmp/dash_unknown_metric.json"
expect 1 "a dashboard variable the check does not know" "$PY" tools/monitoring_check.py --dashboard "$tmp/dash_unknown_variable.json"
expect 1 "a panel outside the grid" "$PY" tools/monitoring_check.py --dashboard "$tmp/dash_grid.json"
sed 's/rate(ctr_rank_degraded_responses_total\[1m\])/rate(ctr_rank_degraded_response_total[1m])/' "$RULES" >"$tmp/typo.rules.yml"
cmp -s "$RULES" "$tmp/typo.rules.yml" && fail "control: the typo was not made"
expect 1 "a rule reading a misspelt series" "$PY" tools/monitoring_check.py --rules "$tmp/typo.rules.yml"
# The unit tests against rules whose error threshold moved from 1% to 3%.
mkdir -p "$tmp/deploy/prometheus" "$tmp/tests/deploy/prometheus"
sed 's/job:ctr_rank_errors:ratio_rate1m > 0.01/job:ctr_rank_errors:ratio_rate1m > 0.03/' "$RULES" \
  >"$tmp/deploy/prometheus/ctr-scorer.rules.yml"
cp "$RTEST" "$tmp/tests/deploy/prometheus/"
expect 1 "promtool test rules catches a moved threshold" promtool test rules "$tmp/$RTEST"
printf '# HELP ctr_things Things.\n# TYPE ctr_things counter\nctr_things 3\n# HELP ctr_latency_ms Latency.\n# TYPE ctr_latency_ms gauge\nctr_latency_ms 4\n' \
  >"$tmp/bad.prom"
expect 1 "promtool check metrics flags a counter without _total and an abbreviated unit" \
  sh -c "promtool check metrics < '$tmp/bad.prom'"
grep -q '"_total" suffix' "$tmp/out" && grep -q "abbreviated units" "$tmp/out" \
  && ok "  ... it said: $(tr '\n' ' ' <"$tmp/out" | cut -c1-150)" || fail "promtool's findings" "$tmp/out"

echo "test_promtool: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
