#!/usr/bin/python3
"""End-to-end benchmark (`make bench-e2e`): ctr-server on a real redis-server
over loopback, loaded with wrk (deploy/wrk/rank.lua), on the demo model and
on the MicroLens-size model, in each precision.

For each model (demo/: the small trained demo; demo/full: the MicroLens
configuration, tools/make_demo.py --full), each precision (fp32, bf16, int8)
and N candidates per request (16, 64, 256; history 64 stored in Redis), with
the item cache warm (every request sent once before measuring, cache large
enough to hold every item the requests use):
  1 conn     one connection, closed loop: the latency of a lone client;
  half sat   the saturation rate found first (closed loop, 8 connections),
             then half of it offered by 4 paced connections.
One server per precision, all running at once: after the saturation runs,
the 1-connection and paced runs go in --rounds interleaved rounds (each
precision in turn, the order rotated each round), so other load on a shared
machine falls on every precision alike; the table gives the medians over the
rounds and the range of p99.  Beside it, the forward pass alone on the same model and precision
(bench_forward --model --precision, one thread), so the table shows what the
service adds.  With --modes cold,floor (fp32 only) also the earlier modes:
cold (--cache-mb 0: every request MGETs its items and computes their
vectors) and floor (--skip-scoring: HTTP + JSON + Redis alone), at 25, 50,
75% of their saturation rate.

wrk runs on the same 2 cores as the server and Redis; its share of the CPU is
part of every figure (as it would be for any client on the box).

    /usr/bin/python3 bench/e2e.py [--seconds 5] [--ns 16,64,256]
        [--models demo,full] [--precisions fp32,bf16,int8] [--modes warm]
        [--rounds 3] [--quick] [--make-full]
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
# Quality targets (bench/quality.py, demo validation set): a precision that
# misses them is measured but not counted as "best".
QUALITY = {"bf16": (("dauc", 0.0005), ("max_dp", 2e-3)), "int8": (("dauc", 0.001),)}


sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import fixture  # noqa: E402  (free_port, wait_for: the integration tests' own)

free_port = fixture.free_port


def wait_for(fn, timeout=30.0):
    """fixture.wait_for with the benchmarks' longer default (bigger models load slower)."""
    return fixture.wait_for(fn, timeout)


def http_ok(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    c.request("GET", path)
    return c.getresponse().status == 200


def metric(port, name):
    """fixture.metric_sum of name in the /metrics of the server on port."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return fixture.metric_sum(text, name)


def loadgen(build, port, reqfile, conns, seconds, rate=0.0, prefix=()):
    """bench/loadgen (run under prefix: nice, taskset) on the requests of
    reqfile: its LOADGEN line as {key: number}."""
    cmd = list(prefix) + [f"{build}/bench/loadgen", "--port", str(port), "--conns", str(conns),
                          "--seconds", str(seconds), "--requests", reqfile]
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"LOADGEN (.*)", out)
    if not m:
        raise RuntimeError("loadgen printed nothing:\n" + out)
    return {k: float(v) for k, v in (kv.split("=", 1) for kv in m.group(1).split())}


class Server:
    """ctr-server on a free port against the Redis on rport (run under
    prefix: nice, taskset), its log in tmp; ready when constructed."""

    def __init__(self, build, model, rport, tmp, extra=(), prefix=()):
        self.port = free_port()
        self.log = open(os.path.join(tmp, f"server-{self.port}.log"), "w")
        self.proc = subprocess.Popen(list(prefix) + [f"{build}/ctr-server", "--model", model,
                                                     "--redis", f"127.0.0.1:{rport}", "--port",
                                                     str(self.port), "--log-level", "warn", *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_for(lambda: http_ok(self.port, "/readyz")), "server did not come up"

    def metric(self, name):
        return metric(self.port, name)

    def stop(self):
        """SIGTERM, then its exit status (None: killed after 30 s)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


def make_requests(demo, n, count, out, seed=7):
    """count requests of n candidates for stored users (history from Redis)."""
    users = []
    with open(os.path.join(demo, "users.jsonl")) as f:
        for line in f:
            u = json.loads(line)
            if len(u.get("item_seq", [])) >= 64:
                users.append(u["user_id"])
    items = []
    with open(os.path.join(demo, "items.jsonl")) as f:
        for line in f:
            items.append(json.loads(line)["item_id"])
    rng = random.Random(seed + n)
    with open(out, "w") as f:
        for _ in range(count):
            cands = [{"item_id": i, "likes_level": rng.randint(1, 10),
                      "views_level": rng.randint(1, 10)} for i in rng.sample(items, n)]
            f.write(json.dumps({"user_id": rng.choice(users), "candidates": cands}) + "\n")
    return len(users)


def send_all(port, reqfile):
    """Every request once (fills the item cache), each with a deadline of a
    second (X-Request-Timeout-Ms): with the cache cold, a MicroLens-size
    request computes up to a few hundred item vectors (about 0.25 ms each),
    past the server's default deadline of 50 ms."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    bad = 0
    with open(reqfile) as f:
        for line in f:
            c.request("POST", "/v1/rank", body=line.encode(),
                      headers={"Content-Type": "application/json",
                               "X-Request-Timeout-Ms": "1000"})
            r = c.getresponse()
            r.read()
            bad += r.status != 200
    c.close()
    return bad


def proc_cpu_s(pid):
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(port, reqfile, conns, seconds, rate_per_conn=0.0, threads=1, pid=None):
    env = dict(os.environ, CTR_WRK_REQUESTS=reqfile, CTR_WRK_RATE=str(rate_per_conn))
    cpu0 = proc_cpu_s(pid) if pid else None
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds:g}s", "--timeout", "5s",
           "-s", os.path.join(ROOT, "deploy/wrk/rank.lua"), f"http://127.0.0.1:{port}/v1/rank"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"WRK_RESULT (.*)", out)
    if not m:
        raise RuntimeError("wrk printed no WRK_RESULT line:\n" + out)
    res = {}
    for kv in m.group(1).split():
        k, v = kv.split("=", 1)
        res[k] = float(v)
    if pid and res.get("requests"):
        # the server's own CPU per request: what a request costs it, which
        # other load on a shared machine changes far less than latency
        res["cpu_ms"] = (proc_cpu_s(pid) - cpu0) * 1000.0 / res["requests"]
    return res


def forward_alone(build, model, ns, precision):
    out = subprocess.run([f"{build}/bench/bench_forward", "--model", model, "--seconds", "1",
                          "--precision", precision] + sum((["--n", str(n)] for n in ns), []),
                         capture_output=True, text=True, timeout=600).stdout
    med = {}
    for m in re.finditer(r"^forward n=(\d+) precision=\S+ median_ms=([\d.]+)", out, re.M):
        med[int(m.group(1))] = float(m.group(2))
    return med


def quality_ok(path):
    """Precisions meeting their quality targets on the demo validation set,
    from bench/quality.py's output (fp32 always)."""
    ok = {"fp32": True}
    try:
        with open(path) as f:
            q = json.load(f)["demo"]
    except (OSError, KeyError, ValueError):
        return ok, "no build/quality.json with the demo set (make bench writes it)"
    for p, lims in QUALITY.items():
        row = q.get(p)
        ok[p] = bool(row) and all(abs(row[k]) <= lim for k, lim in lims)
    return ok, "from build/quality.json (demo validation set)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build/release"))
    ap.add_argument("--demo", default=os.path.join(ROOT, "demo"))
    ap.add_argument("--full", default=os.path.join(ROOT, "demo/full"))
    ap.add_argument("--models", default="demo,full")
    ap.add_argument("--precisions", default="fp32,bf16,int8")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--ns", default="16,64,256")
    ap.add_argument("--fractions", default="0.25,0.5,0.75", help="for the cold and floor modes")
    ap.add_argument("--conns", type=int, default=8, help="connections for the saturation run")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds of the 1-connection and paced runs (3)")
    ap.add_argument("--modes", default="warm", help="warm, and cold / floor (fp32 only)")
    ap.add_argument("--cache-mb", type=int, default=2048,
                    help="item cache of the warm runs (2048: holds every item the "
                         "MicroLens-size requests use)")
    ap.add_argument("--make-full", action="store_true",
                    help="make demo/full (tools/make_demo.py --full) when missing")
    ap.add_argument("--quick", action="store_true", help="2 s runs, 2 rounds, N=16 and 64 only")
    ap.add_argument("--out", default=os.path.join(ROOT, "build/bench-e2e"),
                    help="results.json and e2e.png (bench/plots.py)")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.ns, args.rounds = 2, "16,64", 2
    ns = [int(x) for x in args.ns.split(",")]
    fractions = [float(x) for x in args.fractions.split(",")]
    modes = args.modes.split(",")
    precisions = args.precisions.split(",")
    secs = args.seconds

    models = []
    for name in args.models.split(","):
        d = {"demo": args.demo, "full": args.full}[name]
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            if name == "demo":
                print("bench-e2e: no demo model; making it (tools/make_demo.py)", flush=True)
                subprocess.run([PY, os.path.join(ROOT, "tools/make_demo.py"), "--out", d], check=True)
            elif args.make_full:
                print("bench-e2e: no MicroLens-size model; making it (tools/make_demo.py --full)",
                      flush=True)
                subprocess.run([PY, os.path.join(ROOT, "tools/make_demo.py"), "--full", "--out", d],
                               check=True)
            else:
                print(f"bench-e2e: skipping {name}: {d} has no model "
                      "(tools/make_demo.py --full, or --make-full)")
                continue
        models.append((name, d))

    tmp = tempfile.mkdtemp(prefix="ctr-e2e-")
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    fwd = {}
    try:
        assert wait_for(lambda: subprocess.run(["redis-cli", "-p", str(rport), "ping"], capture_output=True,
                                               text=True).stdout.strip() == "PONG")
        cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True,
                             text=True).stdout.strip()
        print(f"machine: {cpu}, {os.cpu_count()} cores; wrk -t1 on the same cores; history 64 from "
              f"Redis; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
        for name, d in models:
            model = os.path.join(d, "model.safetensors")
            prefix = f"{name}:"
            t0 = time.time()
            subprocess.run([f"{args.build}/ctr-load", "--redis", f"127.0.0.1:{rport}", "--model", model,
                            "--prefix", prefix, "--items", os.path.join(d, "items.jsonl"),
                            "--users", os.path.join(d, "users.jsonl")], check=True,
                           stdout=subprocess.DEVNULL)
            reqfiles = {}
            for n in ns:
                reqfiles[n] = os.path.join(tmp, f"{name}_requests_{n}.jsonl")
                make_requests(d, n, 400, reqfiles[n])
            print(f"{name}: {model} loaded into Redis in {time.time() - t0:.0f} s", flush=True)
            for p in precisions:
                fwd[(name, p)] = forward_alone(args.build, model, ns, p)
                print(f"  {name} {p}: forward pass alone (1 thread), median ms: " +
                      ", ".join(f"N={n}: {fwd[(name, p)].get(n, float('nan')):.3f}" for n in ns),
                      flush=True)
            # Every variant's server runs at once, so that the runs of one N
            # can be interleaved (round by round, each variant in turn) and
            # other load on the machine falls on all of them alike.
            variants = [(p, mode) for p in precisions for mode in modes if mode == "warm" or p == "fp32"]
            servers = {}
            for p, mode in variants:
                extra = {"warm": ["--cache-mb", str(args.cache_mb)], "cold": ["--cache-mb", "0"],
                         "floor": ["--skip-scoring"]}[mode]
                port = free_port()
                log = open(os.path.join(tmp, f"server-{name}-{p}-{mode}.log"), "w")
                servers[(p, mode)] = (port, subprocess.Popen(
                    [f"{args.build}/ctr-server", "--model", model, "--redis", f"127.0.0.1:{rport}",
                     "--redis-prefix", prefix, "--port", str(port), "--log-level", "warn",
                     "--precision", p, *extra], stdout=log, stderr=subprocess.STDOUT))
            for (p, mode), (port, proc) in servers.items():
                assert wait_for(lambda: http_ok(port, "/readyz"), 120), \
                    f"server ({name} {p} {mode}) did not come up"
            try:
                for n in ns:
                    sat = {}
                    for v in variants:
                        port = servers[v][0]
                        bad = send_all(port, reqfiles[n])  # warm the item cache
                        run_wrk(port, reqfiles[n], 2, 1)  # connections, branch predictors
                        sat[v] = run_wrk(port, reqfiles[n], args.conns, secs, pid=servers[v][1].pid)
                        rows.append((name, v[0], v[1], n, "saturation", args.conns, [sat[v]]))
                        print(f"    {name} {v[0]} {v[1]} N={n}: saturation {sat[v]['rps']:.0f} req/s"
                              + (f" ({bad} warm-up requests failed)" if bad else ""), flush=True)
                    runs = {}
                    for r in range(args.rounds):
                        for k in range(len(variants)):
                            v = variants[(k + r) % len(variants)]
                            port = servers[v][0]
                            loads = [("1 conn", 1, 0.0)] if v[1] == "warm" else []
                            for frac in ([0.5] if v[1] == "warm" else fractions):
                                label = "half sat" if frac == 0.5 else f"{int(frac * 100)}% of sat"
                                loads.append((label, 4, frac * sat[v]["rps"] / 4))
                            for label, conns, rate in loads:
                                res = run_wrk(port, reqfiles[n], conns, secs, rate_per_conn=rate,
                                              pid=servers[v][1].pid)
                                runs.setdefault((v, label, conns), []).append(res)
                    for (v, label, conns), rs in runs.items():
                        rows.append((name, v[0], v[1], n, label, conns, rs))
            finally:
                for port, proc in servers.values():
                    proc.send_signal(signal.SIGTERM)
                for (p, mode), (port, proc) in servers.items():
                    if proc.wait(60) != 0:
                        print(f"warning: server ({name} {p} {mode}) exited {proc.returncode}")

        print()
        print(f"load average now {os.getloadavg()[0]:.2f}")
        print(f"{args.rounds} interleaved rounds of {secs:g} s per row (saturation: one run); "
              "p50 and p99 are medians over the rounds, [p99 range]")
        print("cpu ms/req: the server process's CPU time per request (all its threads); fwd ms: "
              "the forward pass alone, one thread (CPU-time median)")
        print(f"{'model':5} {'prec':5} {'mode':5} {'N':>4} {'load':>11} {'conns':>5} {'req/s':>7} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'p99 range':>15} {'cpu ms/req':>10} {'fwd ms':>7} "
              f"{'non2xx':>6}")
        order = {p: i for i, p in enumerate(precisions)}
        rows.sort(key=lambda r: (r[0], order.get(r[1], 9), r[2], r[3],
                                 {"1 conn": 0, "saturation": 1}.get(r[4], 2)))
        table = []
        for name, p, mode, n, load, conns, rs in rows:
            med = lambda k: sorted(x[k] for x in rs)[len(rs) // 2]
            r = {"rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
                 "cpu_ms": sorted(x.get("cpu_ms", float("nan")) for x in rs)[len(rs) // 2],
                 "p99_lo": min(x["p99_ms"] for x in rs), "p99_hi": max(x["p99_ms"] for x in rs),
                 "bad": sum(int(x["non2xx"] + x.get("errors", 0)) for x in rs)}
            table.append((name, p, mode, n, load, conns, r))
            f = fwd.get((name, p), {}).get(n)
            fs = f"{f:7.3f}" if f is not None and mode == "warm" else f"{'-':>7}"
            rng = f"[{r['p99_lo']:.2f}-{r['p99_hi']:.2f}]" if len(rs) > 1 else ""
            print(f"{name:5} {p:5} {mode:5} {n:>4} {load:>11} {conns:>5} {r['rps']:>7.0f} "
                  f"{r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f} {rng:>15} {r['cpu_ms']:>10.3f} {fs} "
                  f"{r['bad']:>6}")
        print()
        ok, why = quality_ok(os.path.join(ROOT, "build/quality.json"))
        print("precisions meeting their quality targets: " +
              ", ".join(p for p in precisions if ok.get(p)) + f" ({why})")
        for name, _ in models:
            one = {(p, n): r for nm, p, mode, n, load, c, r in table
                   if nm == name and mode == "warm" and load == "1 conn"}
            for n in ns:
                cands = [(one[(p, n)]["p99_ms"], p) for p in precisions if (p, n) in one and ok.get(p)]
                if cands:
                    best = min(cands)
                    print(f"{name} N={n}, warm, 1 connection: best precision meeting its quality "
                          f"target: {best[1]}, p99 {best[0]:.3f} ms"
                          + (" (target < 1 ms: " + ("met" if best[0] < 1.0 else "MISSED") + ")"
                             if name == "full" and n == 64 else ""))
        import plots  # bench/plots.py
        plots.after_e2e([(f"{nm} {p} {mode}", n, load, c, r) for nm, p, mode, n, load, c, r in table],
                        args.out, f"{cpu}, {os.cpu_count()} cores; {secs:g} s runs")
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
