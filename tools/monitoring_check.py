#!/usr/bin/python3
# monitoring_check.py - checks the operator's files offline: the Grafana
# dashboard (deploy/grafana/ctr-scorer.json) and the Prometheus rules
# (deploy/prometheus/ctr-scorer.rules.yml) against each other and against
# the series ctr-server writes (server/metrics.c).
#
#   /usr/bin/python3 tools/monitoring_check.py [--dashboard FILE] [--rules FILE]
#       [--metrics-source server/metrics.c] [--promtool promtool]
#
# 1. The dashboard's structure: the schemaVersion of a current Grafana,
#    unique panel ids, panels inside the 24-column grid, every query on the
#    ${datasource} variable with a unique refId, a `job` variable.
# 2. Every PromQL expression of the dashboard (panel targets, annotations,
#    the job variable's label_values metric), with Grafana's variables
#    replaced ($job by .+, $__rate_interval by 1m, ...), is parsed by
#    promtool: written as recording rules to a temporary file and passed to
#    `promtool check rules` (promtool 2.42 has no "parse expression"
#    command).  A variable the check does not know is an error too.
# 3. Every metric name in those expressions and in the rules is one that
#    server/metrics.c writes (a histogram's _bucket/_sum/_count included),
#    one the rules record, or Prometheus's own (up, ALERTS).  promtool
#    accepts rules about series that do not exist; this catches the typo.
#
# Exit status 0 when all passes, 1 with each problem on stderr, 2 on
# unusable input.  tests/integration/test_promtool.sh runs it (and checks it
# fails on broken copies); tests/integration/test_prometheus.py imports
# dashboard_queries() to evaluate every expression in a live Prometheus.

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The Classic dashboard model of Grafana 12 and later.
SCHEMA_VERSION = 42
GRID_COLUMNS = 24

# Grafana's variables and what stands in for them in a check.
VARIABLES = {"job": ".+", "__rate_interval": "1m", "__interval": "15s", "__range": "1h",
             "__range_s": "3600"}

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "offset", "bool", "inf", "nan", "Inf", "NaN", "atan2",
                # aggregation operators ("sum by (job) (...)" puts a word between)
                "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile"}
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds",
                     "scrape_samples_scraped"}


def substitute(expr):
    """Grafana's $var, ${var} and ${var:format} replaced; unknown ones raise."""
    def one(m):
        name = m.group(1) or m.group(2)
        if name not in VARIABLES:
            raise ValueError(f"unknown dashboard variable ${name}")
        return VARIABLES[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def _walk_panels(panels):
    for p in panels:
        yield p
        yield from _walk_panels(p.get("panels", []))


def dashboard_queries(dash):
    """[(where, expression as written)] of every PromQL expression."""
    out = []
    for p in _walk_panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if "expr" in t:
                out.append((f"panel {p.get('id')} \"{p.get('title')}\" {t.get('refId')}", t["expr"]))
    for a in dash.get("annotations", {}).get("list", []):
        if "expr" in a:
            out.append((f"annotation \"{a.get('name')}\"", a["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and isinstance(q, str):
            m = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", q)
            if not m:
                raise ValueError(f"variable {v.get('name')}: only label_values(METRIC, LABEL) "
                                 f"queries are checked, got {q!r}")
            out.append((f"variable {v.get('name')}", m.group(1)))
    return out


def check_structure(dash):
    problems = []
    if dash.get("schemaVersion") != SCHEMA_VERSION:
        problems.append(f"schemaVersion {dash.get('schemaVersion')}, expected {SCHEMA_VERSION}")
    for key in ("uid", "title"):
        if not dash.get(key):
            problems.append(f"no {key}")
    names = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    if names.get("datasource", {}).get("type") != "datasource":
        problems.append("no datasource variable (type datasource)")
    if "job" not in names:
        problems.append("no job variable")
    ids = set()
    for p in _walk_panels(dash.get("panels", [])):
        where = f"panel {p.get('id')} \"{p.get('title')}\""
        if p.get("id") in ids or not isinstance(p.get("id"), int):
            problems.append(f"{where}: id missing or not unique")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")) or \
                g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > GRID_COLUMNS:
            problems.append(f"{where}: gridPos {g} outside the {GRID_COLUMNS}-column grid")
        if p.get("type") == "row":
            continue
        if not p.get("title"):
            problems.append(f"{where}: no title")
        refs = set()
        for t in p.get("targets", []):
            ds = t.get("datasource", p.get("datasource"))
            if ds != {"type": "prometheus", "uid": "${datasource}"}:
                problems.append(f"{where}: target {t.get('refId')} not on ${{datasource}}: {ds}")
            if not t.get("refId") or t.get("refId") in refs:
                problems.append(f"{where}: refId missing or repeated")
            refs.add(t.get("refId"))
        if not p.get("targets"):
            problems.append(f"{where}: no query")
    return problems


def promtool_parse(exprs, promtool="promtool"):
    """[(where, message)] for the expressions promtool cannot parse."""
    if not exprs:
        return []
    with tempfile.TemporaryDirectory(prefix="monitoring-check-") as tmp:
        path = os.path.join(tmp, "exprs.rules.yml")
        rules = [{"record": f"check:expr_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}, f)
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    if r.returncode == 0:
        return []
    # promtool names the failing rule by its position ("group "check", rule 3").
    found = []
    for m in re.finditer(r'rule (\d+), "check:expr_(\d+)": (.*)', r.stdout + r.stderr):
        i = int(m.group(2))
        found.append((exprs[i][0], f"{m.group(3)}: {exprs[i][1]}"))
    return found or [("promtool", (r.stdout + r.stderr).strip())]


def metric_names(expr):
    """Metric names an expression reads (after variable substitution)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)              # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)             # ranges, subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def known_series(metrics_source, rules):
    """Names server/metrics.c writes (histograms' suffixes added), names the
    rules record, and Prometheus's own."""
    with open(metrics_source) as f:
        src = f.read()
    names = set(re.findall(r'"((?:ctr|process)_[a-z0-9_]+)"', src))
    # Histogram families: rows of metrics.c's table, FAM("name", "histogram", ...).
    for h in re.findall(r'FAM\("([a-z0-9_]+)", "histogram"', src):
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    records = {r["record"] for g in rules.get("groups", []) for r in g.get("rules", [])
               if "record" in r}
    return names | records | PROMETHEUS_SERIES


def rule_queries(rules):
    out = []
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            out.append((f"rule {r.get('record') or r.get('alert')}", r["expr"]))
    return out


def main():
    ap = argparse.ArgumentParser(description="Checks the dashboard and the rules offline.")
    ap.add_argument("--dashboard", default=os.path.join(ROOT, "deploy/grafana/ctr-scorer.json"))
    ap.add_argument("--rules", default=os.path.join(ROOT, "deploy/prometheus/ctr-scorer.rules.yml"))
    ap.add_argument("--metrics-source", default=os.path.join(ROOT, "server/metrics.c"))
    ap.add_argument("--promtool", default="promtool")
    args = ap.parse_args()
    try:
        with open(args.dashboard) as f:
            dash = json.load(f)
        with open(args.rules) as f:
            rules = yaml.safe_load(f)
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"monitoring_check: {e}", file=sys.stderr)
        return 2

    problems = [f"{args.dashboard}: {p}" for p in check_structure(dash)]
    queries = []
    try:
        raw = dashboard_queries(dash)
    except ValueError as e:
        raw = []
        problems.append(f"{args.dashboard}: {e}")
    for where, expr in raw:
        try:
            queries.append((where, substitute(expr)))
        except ValueError as e:
            problems.append(f"{args.dashboard}: {where}: {e}")
    problems += [f"{args.dashboard}: {w}: does not parse: {m}"
                 for w, m in promtool_parse(queries, args.promtool)]

    known = known_series(args.metrics_source, rules)
    for source, qs in ((args.dashboard, queries), (args.rules, rule_queries(rules))):
        for where, expr in qs:
            for name in sorted(metric_names(expr) - known):
                problems.append(f"{source}: {where}: {name} is neither written by "
                                f"{os.path.basename(args.metrics_source)} nor recorded by the rules")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"monitoring_check: {len(queries)} dashboard expressions, {len(rule_queries(rules))} "
          f"rules, {len(known)} known series: "
          + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
