#!/usr/bin/python3
"""Several models in one ctr-server (`make bench-multimodel`): what
explanations cost server-side, and what the load-time warm-up saves.

One ctr-server on a real redis-server (loopback) serves the golden
MicroLens-shape QIN ("microlens": D = 1024, 4 layers, R = 4), DIN
("din-microlens": attention 512,256, network 1024,512,256) and TIN
("tin-amazon") models at once, each under its own prefix, with one
request thread and one scoring thread (--threads 1 --score-threads 1), so
stage_us.score is one thread's forward pass.  Requests carry their
history (item_seq, 64 behaviours) and N candidates drawn from the items
loaded; one connection, one request at a time.

  explain  per model, requests without and with "explain": 3, interleaved
           (pairs of the same request), --pairs pairs: medians of the
           answers' stage_us.score and took_us, and of the per-pair ratio.
  warm-up  a fresh server per round (--rounds), with --warmup false and
           true in turn, item cache off: per model, the first request at
           each N of --first-ns (in that order), its score stage (forward
           pass) and items stage (item vectors), against the median of the
           same request repeated 5 times.

    /usr/bin/python3 bench/multimodel.py [--build build/release] [--n 64]
        [--pairs 100] [--rounds 3] [--first-ns 64,3,17,1]
Needs `make golden` (build/golden).  Prints tables; quote them with the
load average printed at the top.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from e2e import free_port, http_ok, wait_for  # noqa: E402

MODELS = [("qin", "microlens"), ("din", "din-microlens"), ("tin", "tin-amazon")]


def rank(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/rank", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    if r.status != 200 or data.get("degraded"):
        raise SystemExit(f"bench-multimodel: {r.status} {str(data)[:300]}")
    return data


def requests_for(golden, cfg, n, count, seed):
    """count requests of n candidates and a history of 64, of cfg's items
    and context fields (random values in range)."""
    d = os.path.join(golden, cfg)
    items = [json.loads(l)["item_id"] for l in open(os.path.join(d, "items.jsonl")) if l.strip()]
    ctx = []
    for l in open(os.path.join(d, "requests.jsonl")):
        for c in json.loads(l)["candidates"]:
            ctx += [k for k in c if k != "item_id" and k not in ctx]
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        cands = []
        for i in rng.sample(items, min(n, len(items))):
            c = {"item_id": i}
            for k in ctx:
                c[k] = rng.randint(0, 3)
            cands.append(c)
        out.append({"user_id": "bench", "item_seq": [rng.choice(items) for _ in range(64)],
                    "candidates": cands})
    return out


class Server:
    def __init__(self, build, golden, redis_port, warmup, max_cand, log, extra=()):
        self.port = free_port()
        args = [f"{build}/ctr-server", *extra, "--redis", f"127.0.0.1:{redis_port}", "--port",
                str(self.port), "--threads", "1", "--score-threads", "1", "--max-candidates",
                str(max_cand), "--deadline-ms", "10000", "--max-deadline-ms", "10000",
                # A busy machine must not turn a slow Redis reply into a
                # degraded answer: the bench measures the model.
                "--redis-timeout-ms", "2000", "--redis-connect-timeout-ms", "2000",
                "--warmup", "true" if warmup else "false"]
        for name, cfg in MODELS:
            args += ["--model", f"{name}={golden}/{cfg}/model.safetensors",
                     "--redis-prefix", f"{name}=bench-{name}:"]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        if not wait_for(lambda: http_ok(self.port, "/readyz"), 120):
            self.stop()
            raise SystemExit("bench-multimodel: server not ready")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--golden", default="build/golden")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--first-ns", default="64,3,17,1")
    a = ap.parse_args()
    first_ns = [int(x) for x in a.first_ns.split(",")]
    max_cand = max([a.n] + first_ns)
    tmp = tempfile.mkdtemp(prefix="ctr-bench-multimodel-")
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = open(os.path.join(tmp, "server.log"), "w")
    try:
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(rport), "ping"],
                                        capture_output=True, text=True).stdout.strip() == "PONG")
        for name, cfg in MODELS:
            d = os.path.join(a.golden, cfg)
            subprocess.run([f"{a.build}/ctr-load", "--redis", f"127.0.0.1:{rport}", "--prefix",
                            f"bench-{name}:", "--model", f"{d}/model.safetensors", "--items",
                            f"{d}/items.jsonl"], check=True, capture_output=True)
        print(f"bench-multimodel: {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; history 64, fp32, one "
              f"request thread and one scoring thread, one connection")

        # --- explain off vs on -------------------------------------------
        srv = Server(a.build, a.golden, rport, True, max_cand, log)
        try:
            print(f"\nexplain, N = {a.n}: medians of {a.pairs} interleaved pairs (server-side "
                  f"stage_us.score and took_us, microseconds)")
            print(f"{'model':6} {'score off':>10} {'score on':>10} {'on/off':>8} "
                  f"{'took off':>10} {'took on':>10} {'on/off':>8}")
            for name, cfg in MODELS:
                reqs = requests_for(a.golden, cfg, a.n, 8, 11)
                for r in reqs:   # warm the item cache and the kernels
                    rank(srv.port, dict(r, model=name, explain=3))
                s0, s1, t0, t1, rs, rt = [], [], [], [], [], []
                for p in range(a.pairs):
                    r = dict(reqs[p % len(reqs)], model=name)
                    order = (0, 3) if p % 2 == 0 else (3, 0)
                    got = {}
                    for k in order:
                        got[k] = rank(srv.port, dict(r, explain=k) if k else r)
                    s0.append(got[0]["stage_us"]["score"])
                    s1.append(got[3]["stage_us"]["score"])
                    t0.append(got[0]["took_us"])
                    t1.append(got[3]["took_us"])
                    rs.append(s1[-1] / max(1, s0[-1]))
                    rt.append(t1[-1] / max(1, t0[-1]))
                print(f"{name:6} {med(s0):10.0f} {med(s1):10.0f} {med(rs):8.3f} "
                      f"{med(t0):10.0f} {med(t1):10.0f} {med(rt):8.3f}")
        finally:
            srv.stop()

        # --- warm-up off vs on -------------------------------------------
        print(f"\nfirst requests after start, microseconds: the score stage (forward pass) "
              f"and the items stage (Redis read and item vectors; item cache off), first / "
              f"median of 5 repeats; medians over {a.rounds} fresh servers")
        results = {}
        for rnd in range(a.rounds):
            for warm in (False, True):
                t = time.time()
                srv = Server(a.build, a.golden, rport, warm, max_cand, log, ["--cache-mb", "0"])
                results.setdefault(("start", warm), []).append(time.time() - t)
                try:
                    for name, cfg in MODELS:
                        for n in first_ns:
                            r = dict(requests_for(a.golden, cfg, n, 1, 100 + n)[0], model=name)
                            st = [rank(srv.port, r)["stage_us"] for _ in range(6)]
                            results.setdefault((name, warm, n), []).append(
                                (st[0]["score"], med([x["score"] for x in st[1:]]),
                                 st[0]["items"], med([x["items"] for x in st[1:]])))
                finally:
                    srv.stop()
        print(f"{'model':6} {'warm-up':8} {'N':>4} {'score first':>12} {'score again':>12} "
              f"{'items first':>12} {'items again':>12}")
        for name, _ in MODELS:
            for warm in (False, True):
                for n in first_ns:
                    v = results[(name, warm, n)]
                    print(f"{name:6} {'on' if warm else 'off':8} {n:4d} "
                          + " ".join(f"{med([x[j] for x in v]):12.0f}" for j in range(4)))
        for warm in (False, True):
            print(f"start to ready, warm-up {'on' if warm else 'off'}: "
                  f"{med(results[('start', warm)]):.2f} s (the three models)")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        log.close()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
