#!/usr/bin/python3
"""The cost of Redis Cluster mode end to end (`make bench-cluster-e2e`):
two ctr-server processes with the same settings, one on a single
redis-server, one on a 3-master + 3-replica Redis Cluster
(tests/integration/lib/redis_cluster.sh, which runs this script), both
loaded by ctr-load with the demo data, measured in the same run, request by
request from the same file, interleaved round by round:

  warm  item cache on (the production setting, warmed first): a request
        reads its user's history (one key, so one node) and scores;
  cold  item cache off (--cache-mb 0): a request also reads its N items
        (one pipeline per master in cluster mode, one on the single node).

Loads: one connection, closed loop (the unloaded latency), and a moderate
open-loop rate (--rate, 4 connections; latency counted from each request's
scheduled time).  bench/loadgen reports the client's p50/p99 and the
server's own took_us.  Prints the median over --rounds rounds of each
figure and the cluster / single ratio.

    tests/integration/lib/redis_cluster.sh -- /usr/bin/python3 bench/cluster_e2e.py \\
        --build build/release [--requests demo/requests_64.jsonl] [--seconds 4] \\
        [--rounds 3] [--rate 500] [--nice -10]

--nice N runs everything measured (both Redis setups, the servers, the
load generator) at nice value N, so that on a machine shared with other
jobs they do not set the figures (a negative N needs root).
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"


sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from fixture import free_port  # noqa: E402


def wait_status(port, path, status, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == status:
                    return True
        except Exception:
            pass
        time.sleep(0.1)
    return False


NICE = []


def loadgen(build, port, requests, seconds, conns, rate=0):
    cmd = NICE + [f"{build}/bench/loadgen", "--port", str(port), "--conns", str(conns), "--seconds",
           str(seconds), "--requests", requests]
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    kv = dict(re.findall(r"(\w+)=([-\d.]+)", out))
    return {k: float(v) for k, v in kv.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--demo", default="demo")
    ap.add_argument("--requests", default=None, help="default: DEMO/requests_64.jsonl")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=500, help="moderate load, requests/s")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nice", type=int, default=0)
    a = ap.parse_args()
    if a.nice:
        NICE.extend(["nice", "-n", str(a.nice)])
    seeds = os.environ.get("CTR_CLUSTER_SEEDS")
    if not seeds:
        sys.exit("cluster_e2e: run me under tests/integration/lib/redis_cluster.sh -- ...")
    if not os.path.exists(os.path.join(a.demo, "model.safetensors")):
        print("cluster_e2e: no demo model; making it (tools/make_demo.py)", flush=True)
        subprocess.run([PY, os.path.join(ROOT, "tools/make_demo.py"), "--out", a.demo], check=True)
    requests = a.requests or os.path.join(a.demo, "requests_64.jsonl")
    model = os.path.join(a.demo, "model.safetensors")
    tmp = tempfile.mkdtemp(prefix="ctr-cluster-e2e.")
    procs = []

    def start(cmd, log):
        p = subprocess.Popen(NICE + cmd, stdout=open(os.path.join(tmp, log), "w"),
                             stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        if a.nice:   # the cluster's nodes, started by the harness
            for port in os.environ.get("CTR_CLUSTER_PORTS", "").split():
                for pid in subprocess.run(["pgrep", "-f", f"redis-server 127.0.0.1:{port} "],
                                          capture_output=True, text=True).stdout.split():
                    subprocess.run(["renice", "-n", str(a.nice), "-p", pid], capture_output=True)
        rport = free_port()
        start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", tmp], "redis.log")
        time.sleep(0.3)
        load = ["--items", os.path.join(a.demo, "items.jsonl"), "--users",
                os.path.join(a.demo, "users.jsonl"), "--model", model]
        for target in (["--redis", f"127.0.0.1:{rport}"], ["--redis-cluster", seeds]):
            subprocess.run([f"{a.build}/ctr-load", *target, *load], check=True,
                           capture_output=True)
        servers = {}
        for mode, extra in (("warm", []), ("cold", ["--cache-mb", "0"])):
            for backend, target in (("single", ["--redis", f"127.0.0.1:{rport}"]),
                                    ("cluster", ["--redis-cluster", seeds])):
                port = free_port()
                start([f"{a.build}/ctr-server", "--model", model, *target, "--port", str(port),
                       "--threads", str(a.threads), "--score-threads", "1", "--log-level",
                       "warn", *extra], f"{mode}-{backend}.log")
                servers[(mode, backend)] = port
        for port in servers.values():
            if not wait_status(port, "/readyz", 200):
                sys.exit("cluster_e2e: a server did not become ready (logs in %s)" % tmp)
        for port in servers.values():   # warm the cache and the connections
            loadgen(a.build, port, requests, 2, 4)
        with open("/proc/loadavg") as f:
            load0 = f.read().split()[0]
        print(f"cluster_e2e: demo model, {os.path.basename(requests)}, {a.threads} workers, "
              f"score_threads 1; cluster {seeds.count(',') + 1} nodes (3 masters); "
              f"{a.rounds} rounds of {a.seconds} s per figure; nice {a.nice}; load average "
              f"{load0}", flush=True)
        figs = {}
        loads = (("1 conn", 1, 0), (f"{a.rate}/s", 4, a.rate))
        for r in range(a.rounds):
            for mode in ("warm", "cold"):
                for lname, conns, rate in loads:
                    for backend in ("single", "cluster"):
                        res = loadgen(a.build, servers[(mode, backend)], requests, a.seconds,
                                      conns, rate)
                        bad = res.get("other", 0) + res.get("errors", 0)
                        figs.setdefault((mode, lname, backend), []).append(
                            (res["ok_p50"], res["ok_p99"], res["took_p50"], res["took_p99"],
                             res["rps"], res.get("degraded", 0), res.get("shed", 0), bad))
        with open("/proc/loadavg") as f:
            load1 = f.read().split()[0]
        print(f"\n{'mode':5} {'load':8} {'backend':8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'took p50':>8} {'took p99':>8} {'degraded':>8} {'503':>5} {'other':>5}")
        for mode in ("warm", "cold"):
            for lname, _, _ in loads:
                med = {}
                for backend in ("single", "cluster"):
                    rows = figs[(mode, lname, backend)]
                    m = [statistics.median(x[i] for x in rows) for i in range(5)]
                    deg = sum(x[5] for x in rows)
                    shed = sum(x[6] for x in rows)
                    bad = sum(x[7] for x in rows)
                    med[backend] = m
                    print(f"{mode:5} {lname:8} {backend:8} {m[4]:7.0f} {m[0]:7.3f} {m[1]:7.3f} "
                          f"{m[2]:8.3f} {m[3]:8.3f} {deg:8.0f} {shed:5.0f} {bad:5.0f}")
                s, c = med["single"], med["cluster"]
                print(f"{mode:5} {lname:8} {'ratio':8} {'':7} {c[0] / s[0]:6.2f}x {c[1] / s[1]:6.2f}x "
                      f"{c[2] / s[2]:7.2f}x {c[3] / s[3]:7.2f}x   (cluster / single; "
                      f"p50 {1000 * (c[0] - s[0]):+.0f} us)")
        for (mode, backend), port in servers.items():   # why answers were not clean
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            why = [l for l in text.splitlines() if l.startswith(
                ("ctr_degraded_responses_total", "ctr_requests_shed_total",
                 "ctr_redis_errors_total", "ctr_redis_node_errors_total"))
                   and not l.endswith(" 0")]
            if why:
                print(f"{mode} {backend}: " + "; ".join(why))
        print(f"\nload average at the end {load1}; medians of {a.rounds} rounds; p50/p99: the "
              "client's (loadgen, from the scheduled send time under --rate), of the 200 answers; "
              "took: the server's; degraded, 503 (overloaded or deadline), other: summed over "
              "the rounds")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
