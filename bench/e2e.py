#!/usr/bin/python3
"""End-to-end benchmark (`make bench-e2e`): ctr-server on a real redis-server
over loopback, loaded with wrk (deploy/wrk/rank.lua), on the demo model.

For N candidates per request (history 64 stored in Redis), in three modes:
  warm   item cache on (the production setting), warmed before measuring;
  cold   item cache off (--cache-mb 0): every request MGETs its items and
         computes their vectors;
  floor  item cache on and --skip-scoring: the same requests answered with
         the model not run, i.e. what HTTP + JSON + Redis cost on their own.
it first finds the saturation rate (closed loop, several connections), then
offers fractions of it with paced connections, and prints p50, p99, p99.9
latency and the achieved throughput.  Beside it, the forward pass alone on
the same model (bench_forward --model), so the table shows the overhead.

wrk runs on the same 2 cores as the server and Redis; its share of the CPU is
part of every figure (as it would be for any client on the box).

    /usr/bin/python3 bench/e2e.py [--seconds 5] [--ns 16,64,256] [--quick]
"""
import argparse
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
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(fn, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if fn():
                return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


def http_ok(port, path):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    c.request("GET", path)
    return c.getresponse().status == 200


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


def run_wrk(port, reqfile, conns, seconds, rate_per_conn=0.0, threads=1):
    env = dict(os.environ, CTR_WRK_REQUESTS=reqfile, CTR_WRK_RATE=str(rate_per_conn))
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--timeout", "5s",
           "-s", os.path.join(ROOT, "deploy/wrk/rank.lua"), f"http://127.0.0.1:{port}/v1/rank"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"WRK_RESULT (.*)", out)
    if not m:
        raise RuntimeError("wrk printed no WRK_RESULT line:\n" + out)
    res = {}
    for kv in m.group(1).split():
        k, v = kv.split("=", 1)
        res[k] = float(v)
    return res


def forward_alone(build, model, ns):
    out = subprocess.run([f"{build}/bench/bench_forward", "--model", model, "--seconds", "1"]
                         + sum((["--n", str(n)] for n in ns), []),
                         capture_output=True, text=True, timeout=300).stdout
    med = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0].isdigit():
            med[int(f[0])] = float(f[1]) / 1000.0  # ms
    return med, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build/release"))
    ap.add_argument("--demo", default=os.path.join(ROOT, "demo"))
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--ns", default="16,64,256")
    ap.add_argument("--fractions", default="0.25,0.5,0.75")
    ap.add_argument("--conns", type=int, default=8, help="connections for the saturation run")
    ap.add_argument("--modes", default="warm,cold,floor")
    ap.add_argument("--quick", action="store_true", help="2 s runs, N=16 and 64 only")
    ap.add_argument("--out", default=os.path.join(ROOT, "build/bench-e2e"),
                    help="results.json and e2e.png (bench/plots.py)")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.ns = 2, "16,64"
    ns = [int(x) for x in args.ns.split(",")]
    fractions = [float(x) for x in args.fractions.split(",")]
    modes = args.modes.split(",")
    secs = args.seconds

    model = os.path.join(args.demo, "model.safetensors")
    if not os.path.exists(model):
        print("bench-e2e: no demo model; making it (tools/make_demo.py)", flush=True)
        subprocess.run([PY, os.path.join(ROOT, "tools/make_demo.py"), "--out", args.demo], check=True)

    tmp = tempfile.mkdtemp(prefix="ctr-e2e-")
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        assert wait_for(lambda: subprocess.run(["redis-cli", "-p", str(rport), "ping"], capture_output=True,
                                               text=True).stdout.strip() == "PONG")
        subprocess.run([f"{args.build}/ctr-load", "--redis", f"127.0.0.1:{rport}", "--model", model,
                        "--items", os.path.join(args.demo, "items.jsonl"),
                        "--users", os.path.join(args.demo, "users.jsonl")], check=True)
        reqfiles = {}
        for n in ns:
            reqfiles[n] = os.path.join(tmp, f"requests_{n}.jsonl")
            make_requests(args.demo, n, 400, reqfiles[n])

        fwd, fwd_text = forward_alone(args.build, model, ns)
        cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True,
                             text=True).stdout.strip()
        print(f"machine: {cpu}, {os.cpu_count()} cores; wrk -t1 on the same cores; history 64 from Redis")
        print("forward pass alone (bench_forward --model, 1 thread), median ms: " +
              ", ".join(f"N={n}: {fwd.get(n, float('nan')):.3f}" for n in ns))

        rows = []
        for mode in modes:
            extra = {"warm": [], "cold": ["--cache-mb", "0"], "floor": ["--skip-scoring"]}[mode]
            port = free_port()
            log = open(os.path.join(tmp, f"server-{mode}.log"), "w")
            server = subprocess.Popen([f"{args.build}/ctr-server", "--model", model, "--redis",
                                       f"127.0.0.1:{rport}", "--port", str(port), "--log-level", "warn",
                                       *extra], stdout=log, stderr=subprocess.STDOUT)
            assert wait_for(lambda: http_ok(port, "/readyz")), f"server ({mode}) did not come up"
            for n in ns:
                run_wrk(port, reqfiles[n], 2, 1)  # warm caches, connections, branch predictors
                sat = run_wrk(port, reqfiles[n], args.conns, secs)
                rows.append((mode, n, "saturation", args.conns, sat))
                for frac in fractions:
                    rate = frac * sat["rps"]
                    conns = 4
                    r = run_wrk(port, reqfiles[n], conns, secs, rate_per_conn=rate / conns)
                    rows.append((mode, n, f"{int(frac * 100)}% of sat", conns, r))
                print(f"  {mode} N={n}: saturation {sat['rps']:.0f} req/s", flush=True)
            server.send_signal(signal.SIGTERM)
            rc = server.wait(30)
            server = None
            if rc != 0:
                print(f"warning: server ({mode}) exited {rc}")

        print()
        print(f"{'mode':6} {'N':>4} {'load':>12} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'p99.9 ms':>9} {'non2xx':>6}")
        for mode, n, load, conns, r in rows:
            print(f"{mode:6} {n:>4} {load:>12} {conns:>5} {r['rps']:>8.0f} {r['p50_ms']:>8.3f} "
                  f"{r['p99_ms']:>8.3f} {r['p999_ms']:>9.3f} {int(r['non2xx'] + r.get('errors', 0)):>6}")
        print()
        half = {(m, n): r for m, n, load, c, r in rows if load == "50% of sat"}
        for mode in modes:
            ok = [n for n in ns if (mode, n) in half and half[(mode, n)]["p99_ms"] < 1.0]
            print(f"{mode}: largest N with p99 < 1 ms at half the saturation rate: "
                  f"{max(ok) if ok else 'none of ' + args.ns}")
        if ("warm", 64) in half and 64 in fwd:
            over = half[("warm", 64)]["p50_ms"] - fwd[64]
            print(f"warm N=64 at half saturation: p50 {half[('warm', 64)]['p50_ms']:.3f} ms = forward pass "
                  f"{fwd[64]:.3f} ms + {over:.3f} ms (target: at most +0.15 ms)")
        for n in ns:
            if ("floor", n) in half:
                print(f"floor N={n} at half saturation: p99 {half[('floor', n)]['p99_ms']:.3f} ms "
                      f"(target: under 0.3 ms)")
        import plots  # bench/plots.py
        plots.after_e2e(rows, args.out, f"{cpu}, {os.cpu_count()} cores; {secs:g} s runs")
    finally:
        if server and server.poll() is None:
            server.kill()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
