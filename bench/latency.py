#!/usr/bin/python3
"""Latency of ctr-server at one connection, measured with a blocking client
(`make bench-latency`): p50 / p99 / p99.9 of N-candidate requests on the
MicroLens-size QIN (demo/full, tools/make_demo.py --full) or another model
directory (`make bench-latency-din`: the challenge-size DIN of the golden
files, build/golden/din-microlens), the floor of the client and server (GET
/healthz through the same client), and the saturation rate at 8
connections (bench/loadgen, closed loop).

A model directory holds model.safetensors, items.jsonl and users.jsonl
(ctr-load's inputs); requests go to its users with a history of 64 or more,
with N candidates drawn from its items.

For each precision and split mode (ctr-server --split: auto, the default,
candidates or columns; auto's choice per request size is printed as plan), one ctr-server on a real redis-server over loopback, the item
cache warm (every request sent once before measuring).  The client is
bench/blockclient: one connection, send, read the whole answer, send the
next; so the figures are the server's, not a load generator's (an
event-loop generator such as wrk adds ~0.5 ms at p99 on these VMs).  The
server, Redis and the client share the machine's 2 cores.

    /usr/bin/python3 bench/latency.py [--precisions int8,bf16,fp32]
        [--splits auto,columns,candidates] [--ns 64,256] [--count 20000]
        [--sat-seconds 5] [--model-dir demo/full] [--kernel auto] [--stages]

(--splits columns applies to QIN alone; a DIN or TIN server runs it as
candidates.)

--count 1000000 gives the 1M-request p99 / p99.9.  --stages prints where
the one-connection requests spent their time, by the server's rank stages
(queue, decode, history, items, score; ctr_rank_stage_duration_seconds).  Prints one line per run
(`LATENCY key=value ...`) and a table; every figure names the host's ISA
(oneDNN's, from /v1/models) and the load average when it was taken.
"""
import argparse
import http.client
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("e2e", os.path.join(ROOT, "bench/e2e.py"))
e2e = importlib.util.module_from_spec(spec)
spec.loader.exec_module(e2e)


def kv(line, tag):
    for l in line.splitlines():
        if l.startswith(tag):
            return {k: v for k, v in re.findall(r"(\w+)=(\S+)", l)}
    return {}


def blockclient(build, port, args, timeout=7200):
    out = subprocess.run([f"{build}/bench/blockclient", "--port", str(port), *args],
                         capture_output=True, text=True, timeout=timeout)
    return kv(out.stdout, "BLOCKCLIENT")


def stage_sums(port):
    """ctr_rank_stage_duration_seconds' sum and count per stage, and
    ctr_http_request_duration_seconds' for the rank endpoint, from /metrics."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for m in re.finditer(r'^ctr_rank_stage_duration_seconds_(sum|count)\{[^}]*stage="(\w+)"[^}]*\} (\S+)',
                         text, re.M):
        d = out.setdefault(m.group(2), [0.0, 0.0])
        d[0 if m.group(1) == "sum" else 1] += float(m.group(3))
    return out


def stage_means(before, after):
    """Mean microseconds a request in each stage between two stage_sums."""
    res = []
    for k, (s, n) in after.items():
        s0, n0 = before.get(k, [0.0, 0.0])
        if n - n0 > 0:
            res.append(f"{k} {(s - s0) / (n - n0) * 1e6:.0f}")
    return ", ".join(res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build/release"))
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "demo/full"))
    ap.add_argument("--precisions", default="int8,bf16,fp32")
    ap.add_argument("--splits", default="auto")
    ap.add_argument("--kernel", default="auto")
    ap.add_argument("--ns", default="64,256")
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--sat-seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--extra", default="", help="more ctr-server flags, space-separated")
    ap.add_argument("--stages", action="store_true",
                    help="print the mean time a request spent in each rank stage (/metrics)")
    args = ap.parse_args()
    model = os.path.join(args.model_dir, "model.safetensors")
    if not os.path.exists(model):
        sys.exit(f"bench-latency: no {model} (make demo-full)")
    ns = [int(n) for n in args.ns.split(",")]
    tmp = tempfile.mkdtemp(prefix="ctr-latency-")
    rport = e2e.free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save",
                              "", "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    described = "?"
    try:
        assert e2e.wait_for(lambda: subprocess.run(["redis-cli", "-p", str(rport), "ping"],
                                                   capture_output=True, text=True).stdout.strip()
                            == "PONG")
        subprocess.run([f"{args.build}/ctr-load", "--redis", f"127.0.0.1:{rport}", "--model", model,
                        "--prefix", "full:", "--items", os.path.join(args.model_dir, "items.jsonl"),
                        "--users", os.path.join(args.model_dir, "users.jsonl")], check=True,
                       stdout=subprocess.DEVNULL)
        reqs = {}
        for n in ns:
            reqs[n] = os.path.join(tmp, f"requests_{n}.jsonl")
            e2e.make_requests(args.model_dir, n, 400, reqs[n])
        for prec in args.precisions.split(","):
            for split in args.splits.split(","):
                port = e2e.free_port()
                log = open(os.path.join(tmp, f"server-{prec}-{split}.log"), "w")
                proc = subprocess.Popen(
                    [f"{args.build}/ctr-server", "--model", model, "--redis", f"127.0.0.1:{rport}",
                     "--redis-prefix", "full:", "--port", str(port), "--log-level", "warn",
                     "--precision", prec, "--kernel", args.kernel, "--split", split,
                     "--cache-mb", "2048", *args.extra.split()],
                    stdout=log, stderr=subprocess.STDOUT)
                try:
                    assert e2e.wait_for(lambda: e2e.http_ok(port, "/readyz"), 180), \
                        f"server ({prec} {split}) did not come up"
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    c.request("GET", "/v1/models")
                    info = json.loads(c.getresponse().read())["models"][0]
                    c.close()
                    described = f"{info.get('arch', '?').upper()} {info.get('name', '?')}"
                    isa = info.get("kernel", {}).get("cpu_isa", "?")
                    kern = info.get("kernel", {}).get("largest_layer", "?")
                    plan = info.get("kernel", {}).get("split", "?")
                    floor = blockclient(args.build, port, ["--get", "--path", "/healthz",
                                                           "--count", str(min(args.count, 20000))])
                    for n in ns:
                        e2e.send_all(port, reqs[n])  # the item cache warm
                        load = os.getloadavg()[0]
                        st0 = stage_sums(port) if args.stages else None
                        r = blockclient(args.build, port, ["--requests", reqs[n], "--count",
                                                           str(args.count), "--warmup", "500"])
                        if args.stages:
                            print(f"STAGES precision={prec} split={split} n={n} mean_us: "
                                  f"{stage_means(st0, stage_sums(port))}", flush=True)
                        sat = subprocess.run([f"{args.build}/bench/loadgen", "--port", str(port),
                                              "--conns", str(args.conns), "--seconds",
                                              str(args.sat_seconds), "--requests", reqs[n]],
                                             capture_output=True, text=True)
                        s = kv(sat.stdout, "LOADGEN")
                        row = {"precision": prec, "split": split, "n": n, "isa": isa,
                               "load": f"{load:.2f}", "count": r.get("count", "0"),
                               "p50_ms": float(r.get("p50_us", "nan")) / 1e3,
                               "p99_ms": float(r.get("p99_us", "nan")) / 1e3,
                               "p999_ms": float(r.get("p999_us", "nan")) / 1e3,
                               "floor_p50_ms": float(floor.get("p50_us", "nan")) / 1e3,
                               "floor_p99_ms": float(floor.get("p99_us", "nan")) / 1e3,
                               "sat_rps": float(s.get("ok_rps", "nan")), "kernel": kern,
                               "plan": plan}
                        rows.append(row)
                        print("LATENCY " + " ".join(f"{k}={v}" if k not in ("kernel", "plan") else
                                                   f"{k}=\"{v}\"" for k, v in row.items()),
                              flush=True)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
    finally:
        redis.send_signal(signal.SIGTERM)
        redis.wait(30)
    print(f"\nctr-server at one connection (bench/blockclient), {described} "
          f"({args.model_dir}), history 64 from Redis, item cache warm; saturation: "
          f"bench/loadgen, {args.conns} connections; server, Redis and clients on the same "
          f"{os.cpu_count()} cores")
    print(f"{'prec':5} {'split':10} {'N':>4} {'isa':16} {'load':>5} {'count':>8} {'p50_ms':>7} "
          f"{'p99_ms':>7} {'p999_ms':>8} {'p99/p50':>7} {'floor p50/p99':>14} {'sat req/s':>9}  split plan")
    for r in rows:
        print(f"{r['precision']:5} {r['split']:10} {r['n']:4} {r['isa']:16} {r['load']:>5} "
              f"{r['count']:>8} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {r['p999_ms']:8.3f} "
              f"{r['p99_ms'] / r['p50_ms']:7.2f} {r['floor_p50_ms']:6.3f}/{r['floor_p99_ms']:.3f} "
              f"{r['sat_rps']:9.0f}  {r['plan']}")


if __name__ == "__main__":
    main()
