#!/usr/bin/python3
"""A real Prometheus scraping a real ctr-server (`make test-prometheus`).

Starts redis-server (the golden "small" feature set), ctr-server, and
Debian's `prometheus` on free loopback ports, with
deploy/prometheus/prometheus.yml rewritten for the test: the server as its
one target, 1 s scrape and evaluation intervals, the rules file by its
absolute path, a throw-away storage directory.  Then, for a little over
one rule window (the rules' rate windows are 1 minute):

  - bench/loadgen offers RATE requests a second, open loop, from a request
    file whose make-up is known: every fifth request names one candidate
    without features (answered 200, degraded item_features_missing, an item
    cache miss every time); the rest are all cached after a warm-up;
  - a second client sends ERR_RATE requests a second that are answered 503:
    `deadline_ms` 1 and the body sent 20 ms after the request line (the
    deadline counts from the request line; on a busy machine the server may
    read both at once and answer 200, so the 503s are counted);
  - a SIGHUP with a truncated model file makes one reload fail.

Once the window lies wholly inside the traffic, the recording rules read
through Prometheus's HTTP API must match, each within 10%, what the load
generators counted and what the request file implies: request rate, 200
rate, 5xx ratio, degraded ratio and reasons, shed rate, item cache hit
ratio, candidates scored, Redis calls (health-check PINGs: one per 200 ms;
item reads: one per degraded request); the latency quantiles must match
the ones this script computes itself from two direct /metrics scrapes a
window apart; the alerts must be in the states the traffic implies
(pending: 5xx ratio and degraded answers, whose `for` has not passed;
firing: the failed reload; nothing else).  Midway, every expression of
deploy/grafana/ctr-scorer.json is evaluated through /api/v1/query and must
parse and return data.

Run with CTR_BUILD, CTR_GOLDEN (the Makefile sets them).  Only loopback
traffic; every wait is bounded; about 75 s.
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
from fixture import BUILD, SMALL, Redis, Server, free_port, load, wait_for  # noqa: E402
import monitoring_check  # noqa: E402

RATE = 200          # loadgen, requests a second
CONNS = 4
ERR_RATE = 4        # certain 503s a second
WINDOW = 60         # the rules' rate window, seconds
TRAFFIC = WINDOW + 12
TOL = 0.10

passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"  ok   {name}", flush=True)
    else:
        failed += 1
        print(f"  FAIL {name} {detail}", flush=True)


def close(got, want, tol=TOL):
    return got is not None and want is not None and abs(got - want) <= tol * abs(want)


class Prometheus:
    def __init__(self, tmp, target):
        with open(os.path.join(ROOT, "deploy/prometheus/prometheus.yml")) as f:
            cfg = yaml.safe_load(f)
        cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        cfg["rule_files"] = [os.path.join(ROOT, "deploy/prometheus/ctr-scorer.rules.yml")]
        jobs = cfg["scrape_configs"]
        assert len(jobs) == 1 and jobs[0]["job_name"] == "ctr-scorer", jobs
        jobs[0]["static_configs"] = [{"targets": [target]}]
        self.config = os.path.join(tmp, "prometheus.yml")
        with open(self.config, "w") as f:
            yaml.safe_dump(cfg, f)
        self.port = free_port()
        self.log = open(os.path.join(tmp, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.config}",
             f"--storage.tsdb.path={os.path.join(tmp, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path, **params):
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400 bad_data, 422 execution: JSON too
            return json.loads(e.read())

    def query(self, expr):
        """(status, result list, error) of an instant query now."""
        r = self.get("/api/v1/query", query=expr)
        return r.get("status"), r.get("data", {}).get("result", []), r.get("error")

    def value(self, expr):
        """The value of a one-series query, or None."""
        st, res, _ = self.query(expr)
        if st != "success" or len(res) != 1:
            return None
        return float(res[0]["value"][1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def make_requests(path, vocab, n=100, seed=11):
    """n requests, every fifth naming one candidate without features.
    Returns (degraded share, item cache hit ratio, candidates scored per
    request) once every item with features is cached, and the ids with
    features."""
    featured, missing = [], []
    have = set()
    with open(os.path.join(SMALL, "items.jsonl")) as f:
        for line in f:
            have.add(json.loads(line)["item_id"])
    for i in range(1, vocab):
        (featured if i in have else missing).append(i)
    rng = random.Random(seed)
    hits = lookups = scored = degraded = 0
    with open(path, "w") as f:
        for k in range(n):
            cands = rng.sample(featured, 4)
            seq = rng.sample(featured, 3)
            gone = None
            if k % 5 == 4:
                gone = rng.choice(missing)
                cands[rng.randrange(4)] = gone
                degraded += 1
            body = {"user_id": f"p{k}", "item_seq": seq,
                    "candidates": [{"item_id": c, "a": rng.randrange(5), "b": rng.randrange(7),
                                    "c": rng.randrange(4)} for c in cands]}
            f.write(json.dumps(body) + "\n")
            ids = set(cands) | set(seq)
            lookups += len(ids)
            hits += len(ids) - (1 if gone else 0)
            scored += 4 - (1 if gone else 0)
    return degraded / n, hits / lookups, scored / n, featured


class Late503:
    """ERR_RATE requests a second whose 1 ms deadline has passed when their
    body arrives: answered 503 overloaded (shed, reason deadline), unless
    the server first reads them after the body is in."""

    def __init__(self, port, item):
        self.port, self.stop_at = port, None
        self.body = json.dumps({"user_id": "late", "item_seq": [], "deadline_ms": 1,
                                "candidates": [{"item_id": item}]}).encode()
        self.sent = self.got503 = 0
        self.other = {}
        self.t0 = self.t1 = None
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def one(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            head = (b"POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(self.body))
            s.sendall(head + self.body[:5])
            time.sleep(0.02)
            s.sendall(self.body[5:])
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
        finally:
            s.close()

    def run(self):
        self.t0 = time.time()
        nxt = self.t0
        while not self.halt.is_set():
            st = self.one()
            self.sent += 1
            if st == 503:
                self.got503 += 1
            else:
                self.other[st] = self.other.get(st, 0) + 1
            nxt += 1.0 / ERR_RATE
            self.halt.wait(max(0.0, nxt - time.time()))
        self.t1 = time.time()

    def rates(self):
        """(requests, 503 answers) a second."""
        return self.sent / (self.t1 - self.t0), self.got503 / (self.t1 - self.t0)


def scrape_buckets(srv):
    """Cumulative /v1/rank histogram buckets {le: count}, read directly."""
    st, _, data = srv.request("GET", "/metrics")
    out = {}
    for m in re.finditer(r'^ctr_http_request_duration_seconds_bucket\{endpoint="/v1/rank",'
                         r'le="([^"]+)"\} (\d+)$', data.decode(), re.M):
        out[float(m.group(1))] = int(m.group(2))
    return out


def quantile(q, b0, b1):
    """The quantile of the observations between two bucket scrapes, linear
    within a bucket (what a histogram quantile is; written here, not taken
    from Prometheus)."""
    les = sorted(b1)
    cum = [b1[le] - b0.get(le, 0) for le in les]
    total = cum[-1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0
    for le, c in zip(les, cum):
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return None


def main():
    tmp = tempfile.mkdtemp(prefix="ctr-prometheus-test-")
    redis = Redis(tmp)
    redis.start()
    prefix = f"p{os.getpid()}:"
    load(redis, prefix)
    model = os.path.join(tmp, "model.safetensors")
    shutil.copy(os.path.join(SMALL, "model.safetensors"), model)
    srv = Server(model, redis, prefix, threads=3)
    vocab = json.loads(srv.request("GET", "/v1/models")[2])["models"][0]["config"]["item_vocab"]
    reqfile = os.path.join(tmp, "requests.jsonl")
    deg_share, hit_ratio, scored_per_req, featured = make_requests(reqfile, vocab)
    prom = Prometheus(tmp, f"127.0.0.1:{srv.port}")
    loadgen = None
    late = None
    try:
        print(f"test_prometheus: {subprocess.run(['prometheus', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
        r = subprocess.run(["promtool", "check", "config", prom.config], capture_output=True, text=True)
        check("the templated prometheus.yml passes promtool check config", r.returncode == 0,
              r.stdout + r.stderr)
        check("prometheus ready", wait_for(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{prom.port}/-/ready", timeout=2).status == 200, 30))
        check("target scraped: up == 1",
              wait_for(lambda: prom.value('up{job="ctr-scorer"}') == 1, 30))
        check("recording rules evaluated",
              wait_for(lambda: (prom.value('count({__name__=~".+:ctr_.+:.+"})') or 0) > 0, 20))

        # Warm-up: every item with features cached; the 503 series and the
        # degraded series exist before the window opens.
        with open(reqfile) as f:
            for line in f:
                srv.rank(json.loads(line))
        late = Late503(srv.port, featured[0])
        check("a late body is answered 503", late.one() == 503)
        time.sleep(2)

        print(f"traffic: loadgen {RATE} req/s open loop ({CONNS} connections) + {ERR_RATE} req/s "
              f"answered 503, {TRAFFIC} s; request file: {deg_share:.0%} degraded, item cache hit "
              f"ratio {hit_ratio:.4f}, {scored_per_req:.2f} candidates scored per request",
              flush=True)
        t0 = time.time()
        loadgen = subprocess.Popen([f"{BUILD}/bench/loadgen", "--port", str(srv.port), "--conns",
                                    str(CONNS), "--seconds", str(TRAFFIC), "--requests", reqfile,
                                    "--rate", str(RATE)], stdout=subprocess.PIPE, text=True)
        late.thread.start()
        b0 = scrape_buckets(srv)
        t_b0 = time.time()

        # A failed reload, early in the window.
        time.sleep(3)
        with open(model, "r+b") as f:
            f.truncate(1000)
        srv.proc.send_signal(signal.SIGHUP)
        check("failed reload seen in /metrics",
              wait_for(lambda: srv.metric("ctr_model_last_reload_successful") == 0, 10))

        # Midway: every dashboard expression through the query API.
        time.sleep(max(0.0, t0 + 20 - time.time()))
        with open(os.path.join(ROOT, "deploy/grafana/ctr-scorer.json")) as f:
            queries = monitoring_check.dashboard_queries(json.load(f))
        bad, empty = [], []
        for where, expr in queries:
            st, res, err = prom.query(monitoring_check.substitute(expr))
            if st != "success":
                bad.append(f"{where}: {err}")
            elif not res:
                empty.append(where)
        check(f"every dashboard expression parses and evaluates ({len(queries)})", not bad,
              "; ".join(bad))
        check("every dashboard expression returns data", not empty, "; ".join(empty))

        # The window [t - 60 s, t] wholly inside the traffic, then measure.
        time.sleep(max(0.0, t_b0 + WINDOW + 1.5 - time.time()))
        b1 = scrape_buckets(srv)
        time.sleep(1.2)   # one more evaluation
        rec = {}
        for name, expr in [
            ("requests", 'job:ctr_rank_requests:rate1m{job="ctr-scorer"}'),
            ("200s", 'job_status:ctr_rank_requests:rate1m{job="ctr-scorer",status="200"}'),
            ("503", 'job_status:ctr_rank_requests:rate1m{job="ctr-scorer",status="503"}'),
            ("errors", 'job:ctr_rank_errors:ratio_rate1m{job="ctr-scorer"}'),
            ("degraded", 'job:ctr_rank_degraded_responses:ratio_rate1m{job="ctr-scorer"}'),
            ("missing", 'job_reason:ctr_degraded_responses:rate1m{job="ctr-scorer",'
                        'reason="item_features_missing"}'),
            ("shed", 'sum by (job) (job_reason:ctr_requests_shed:rate1m{job="ctr-scorer"})'),
            ("hits", 'job:ctr_item_cache_hits:ratio_rate1m{job="ctr-scorer"}'),
            ("scored", 'job:ctr_scored_candidates:rate1m{job="ctr-scorer"}'),
            ("ping", 'job_op:ctr_redis_calls:rate1m{job="ctr-scorer",op="ping"}'),
            ("get_items", 'job_op:ctr_redis_calls:rate1m{job="ctr-scorer",op="get_items"}'),
            ("p50", 'job_quantile:ctr_rank_request_duration_seconds:histogram_quantile1m'
                    '{job="ctr-scorer",quantile="0.5"}'),
            ("p90", 'job_quantile:ctr_rank_request_duration_seconds:histogram_quantile1m'
                    '{job="ctr-scorer",quantile="0.9"}'),
            ("p99", 'job_quantile:ctr_rank_request_duration_seconds:histogram_quantile1m'
                    '{job="ctr-scorer",quantile="0.99"}'),
            ("occupancy", 'instance:ctr_rank_pending_requests:ratio_avg1m'),
            ("limit", 'ctr_rank_pending_requests_limit'),
        ]:
            rec[name] = prom.value(expr)
        st, alerts, _ = prom.query("ALERTS")
        alert_state = {(a["metric"]["alertname"], a["metric"]["alertstate"]) for a in alerts}
        t_measure = time.time()

        out, _ = loadgen.communicate(timeout=TRAFFIC + 60)
        loadgen = None
        late.halt.set()
        late.thread.join(10)
        m = re.search(r"LOADGEN (.*)", out)
        lg = {k: float(v) for k, v in (kv.split("=", 1) for kv in m.group(1).split())
              if re.fullmatch(r"-?[\d.]+", v)} if m else {}
        check("loadgen ran", bool(lg), out)
        check("the rule window lay inside the traffic",
              t_measure - WINDOW - 1 > t0 and t_measure < t0 + TRAFFIC)
        check(f"late requests answered 503 ({late.got503} of {late.sent}; others {late.other})",
              late.got503 >= 0.9 * late.sent and set(late.other) <= {200})
        late_rps, err_rps = late.rates()
        lg_rps = lg.get("rps", 0)
        lg_shed = lg.get("shed", 0) / lg.get("seconds", 1)   # admission 503s under bursts
        want = {
            "requests": lg_rps + late_rps,
            "200s": lg.get("ok_rps"),
            "503": err_rps + lg_shed,
            "errors": (err_rps + lg_shed) / (lg_rps + late_rps),
            "degraded": deg_share,
            "missing": deg_share * lg.get("ok_rps", 0),
            "shed": err_rps + lg_shed,
            "hits": hit_ratio,
            "scored": scored_per_req * lg.get("ok_rps", 0),
            "ping": 1000.0 / 200,
            "get_items": deg_share * lg.get("ok_rps", 0),
            "p50": quantile(0.5, b0, b1),
            "p90": quantile(0.9, b0, b1),
            "p99": quantile(0.99, b0, b1),
        }
        why = {
            "requests": "loadgen + late-body client req/s",
            "200s": "loadgen 200 answers/s",
            "503": "503 answers/s, both clients",
            "errors": "503 answers / requests",
            "degraded": "share of degraded lines",
            "missing": "degraded share x 200/s",
            "shed": "503 answers/s (all shed)",
            "hits": "from the request file",
            "scored": "featured candidates x 200/s",
            "ping": "1 / health_interval_ms",
            "get_items": "one read per degraded request",
            "p50": "from /metrics scrapes",
            "p90": "from /metrics scrapes",
            "p99": "from /metrics scrapes",
        }
        print(f"loadgen: {lg_rps:.1f} req/s answered ({lg.get('ok', 0):.0f} x 200, "
              f"{lg.get('shed', 0):.0f} x 503, {lg.get('other', 0):.0f} other) in "
              f"{lg.get('seconds', 0):.1f} s, client p50 {lg.get('ok_p50', 0):.3f} ms p99 "
              f"{lg.get('ok_p99', 0):.3f} ms; late-body client: {late_rps:.2f} req/s, "
              f"{err_rps:.2f} answered 503")
        print(f"  {'recorded series':24} {'Prometheus':>12} {'expected':>12}  expected from")
        for k in want:
            got = rec.get(k)
            print(f"  {k:24} {got if got is not None else float('nan'):12.5g} "
                  f"{want[k] if want[k] is not None else float('nan'):12.5g}  {why[k]}")
        for k in want:
            # Latency quantiles: the same minute, but not the same instant
            # of the scrape: 25%, or half a millisecond at sub-ms values.
            if k in ("p50", "p90", "p99"):
                got_k = rec.get(k)
                ok = got_k is not None and want[k] is not None and \
                    abs(got_k - want[k]) <= max(0.25 * want[k], 0.0005)
                check(f"{k} latency within 25% of the one computed from /metrics", ok)
            else:
                check(f"{k} within 10% of {why[k]}", close(rec.get(k), want[k]))
        check("quantiles ordered: p50 <= p90 <= p99",
              None not in (rec["p50"], rec["p90"], rec["p99"]) and
              rec["p50"] <= rec["p90"] <= rec["p99"])
        check("admission bound gauge = max_pending (4 x 3 threads)", rec["limit"] == 12)
        check("admission occupancy in [0, 1)", rec["occupancy"] is not None and
              0 <= rec["occupancy"] < 1)
        print(f"  alerts: {sorted(alert_state)}")
        expect = {("CtrScorerModelReloadFailed", "firing"), ("CtrScorerErrorRatio", "pending"),
                  ("CtrScorerDegradedAnswers", "pending")}
        check("alerts: reload failure firing; 5xx ratio and degraded answers pending; "
              "nothing else", alert_state == expect, str(sorted(alert_state ^ expect)))
        check("prometheus still running", prom.proc.poll() is None)
        check("server still running", srv.proc.poll() is None)
    finally:
        if loadgen and loadgen.poll() is None:
            loadgen.kill()
        if late:
            late.halt.set()
        prom.stop()
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL, 5)
        redis.stop()
        if failed:
            with open(prom.log.name) as f:
                print("prometheus log:\n" + f.read()[-3000:])
            print("server log:\n" + srv.logtext()[-3000:])
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"test_prometheus: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
