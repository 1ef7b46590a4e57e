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
        [--sat-seconds 5] [--model-dir demo/full] [--kernel auto] [--stages] [--tail]
        [--versus BUILD_DIR] [--sat-rounds K] [--keep-dumps DIR]

(--splits columns applies to QIN alone; a DIN or TIN server runs it as
candidates.)

--count 1000000 gives the 1M-request p99 / p99.9.  --stages prints where
the one-connection requests spent their time, by the server's rank stages
(queue, decode, history, items, score; ctr_rank_stage_duration_seconds),
and the history cache's hit rate with the number of distinct users the
requests cycle over (400 requests, sent in turn: every user recurs, so
after the warm-up pass the cache has them all; real traffic's rate
depends on how often a user comes back within history_cache_ttl_s).
sat_cpu_us_server / sat_cpu_us_redis: CPU time (user + system) the
server and Redis spent per answer during the saturation runs.  --tail
takes the one-connection requests apart one by one (each answer's took_us
and stage_us, bench/blockclient --dump): the mean of each part for the
requests around the median, above p99 and above p99.9, "outside" being the
client's latency less the server's took_us (HTTP, the gate, the sockets,
the client) and "answer" took_us less the stages (ranking, JSON); and, for
the requests above p99, which part exceeded its own median the most.
--versus BUILD_DIR runs that build's ctr-server beside the first one (same
flags, same Redis) and sends each one-connection request to both in turn
(bench/blockclient --port2): a same-run A/B, both servers seeing the same
moments of the machine's other load, which on a shared host moves p99 by
2-3x from one minute to the next.  (A wrapper script named ctr-server in
BUILD_DIR can add flags or an environment to the same binary.)  With
--sat-rounds K the saturation runs K bursts of --sat-seconds per server,
the two taking turns (ABBA...), and reports each one's median.
Prints one line per run
(`LATENCY key=value ...`) and a table; every figure names the host's ISA
(oneDNN's, from /v1/models) and the load average when it was taken.
"""
import argparse
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
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


def cpu_seconds(pid, rport):
    """CPU seconds (user + system) used so far by process pid and by the
    redis-server on rport (INFO cpu)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    server = (int(fields[11]) + int(fields[12])) / tick   # utime, stime
    info = subprocess.run(["redis-cli", "-p", str(rport), "INFO", "cpu"], capture_output=True,
                          text=True).stdout
    redis = sum(float(m.group(1)) for m in
                re.finditer(r"^used_cpu_(?:sys|user):(\S+)", info, re.M))
    return server, redis


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
    # The history cache's lookups (absent when it is off).
    for name in ("hits", "misses", "bypassed"):
        m = re.search(rf'^ctr_history_cache_{name}_total (\S+)', text, re.M)
        if m:
            out.setdefault("_hcache", {})[name] = float(m.group(1))
    return out


def hcache_rate(before, after, reqfile):
    """The history cache's hit rate between two stage_sums, and how many
    distinct users the requests cycle over."""
    a, b = after.get("_hcache"), before.get("_hcache", {})
    with open(reqfile) as f:
        users = len({json.loads(line)["user_id"] for line in f})
    if not a:
        return f"history cache off ({users} distinct users)"
    d = {k: a[k] - b.get(k, 0.0) for k in a}
    n = sum(d.values())
    return (f"history cache hits {d['hits'] / n * 100 if n else 0:.1f}% of {n:.0f} lookups "
            f"(bypassed {d['bypassed']:.0f}); requests cycle over {users} distinct users")


def stage_means(before, after):
    """Mean microseconds a request in each stage between two stage_sums."""
    res = []
    for k, v in after.items():
        if k.startswith("_"):
            continue
        s, n = v
        s0, n0 = before.get(k, [0.0, 0.0])
        if n - n0 > 0:
            res.append(f"{k} {(s - s0) / (n - n0) * 1e6:.0f}")
    return ", ".join(res)


TAIL_PARTS = ["outside", "queue", "decode", "history", "items", "score", "answer"]


def tail_rows(path, server=0):
    """Per request of one server: latency and its parts (microseconds), from
    a --dump file."""
    rows = []
    with open(path) as f:
        for line in f:
            v = [float(x) for x in line.split()]
            if len(v) < 8 or v[2] < 0 or (len(v) > 8 and int(v[8]) != server):
                continue
            start, lat, took, *st = v[:8]
            rows.append((lat, {"outside": lat - took, "queue": st[0], "decode": st[1],
                               "history": st[2], "items": st[3], "score": st[4],
                               "answer": took - sum(st)}, start))
    rows.sort(key=lambda r: r[0])
    return rows


def tail_report(path, label, server=0):
    """Prints where the slowest requests' time went against the median's."""
    rows = tail_rows(path, server)
    n = len(rows)
    if n < 1000:
        return
    med = {k: sorted(r[1][k] for r in rows)[n // 2] for k in TAIL_PARTS}
    groups = [("p45-p55", rows[int(n * 0.45):int(n * 0.55)]), (">p99", rows[int(n * 0.99):]),
              (">p99.9", rows[int(n * 0.999):])]
    print(f"TAIL {label}: mean microseconds per part ({n} requests)")
    print(f"  {'requests':9} {'count':>6} {'e2e':>7} " + " ".join(f"{k:>8}" for k in TAIL_PARTS))
    for name, g in groups:
        if not g:
            continue
        print(f"  {name:9} {len(g):6} {sum(r[0] for r in g) / len(g):7.0f} " +
              " ".join(f"{sum(r[1][k] for r in g) / len(g):8.0f}" for k in TAIL_PARTS))
    blame = {k: 0 for k in TAIL_PARTS}
    for r in groups[1][1]:
        blame[max(TAIL_PARTS, key=lambda k: r[1][k] - med[k])] += 1
    print("  >p99, the part furthest above its median: " +
          ", ".join(f"{k} {v}" for k, v in sorted(blame.items(), key=lambda kv: -kv[1]) if v))
    print(flush=True)


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
    ap.add_argument("--sat-rounds", type=int, default=1,
                    help="saturation bursts of --sat-seconds per build; with --versus "
                         "the builds take turns (ABBA), and each reports the median")
    ap.add_argument("--extra", default="", help="more ctr-server flags, space-separated")
    ap.add_argument("--tail", action="store_true",
                    help="take the slowest one-connection requests apart by stage")
    ap.add_argument("--keep-dumps", default="",
                    help="with --tail: copy each run's per-request dump into this directory")
    ap.add_argument("--versus", default="",
                    help="a second build directory: its ctr-server runs beside the first on the "
                         "same Redis, and each one-connection request goes to both in turn "
                         "(a same-run A/B)")
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
    done = False
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
                builds = [args.build] + ([args.versus] if args.versus else [])
                ports = [e2e.free_port() for _ in builds]
                procs = []
                for b, port in zip(builds, ports):
                    log = open(os.path.join(tmp, f"server-{prec}-{split}-{len(procs)}.log"), "w")
                    procs.append(subprocess.Popen(
                        [f"{b}/ctr-server", "--model", model, "--redis", f"127.0.0.1:{rport}",
                         "--redis-prefix", "full:", "--port", str(port), "--log-level", "warn",
                         "--precision", prec, "--kernel", args.kernel, "--split", split,
                         "--cache-mb", "2048", *args.extra.split()],
                        stdout=log, stderr=subprocess.STDOUT))
                try:
                    infos = []
                    for port in ports:
                        assert e2e.wait_for(lambda: e2e.http_ok(port, "/readyz"), 180), \
                            f"server ({prec} {split}) did not come up"
                        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                        c.request("GET", "/v1/models")
                        infos.append(json.loads(c.getresponse().read())["models"][0])
                        c.close()
                    info = infos[0]
                    described = f"{info.get('arch', '?').upper()} {info.get('name', '?')}"
                    isa = info.get("kernel", {}).get("cpu_isa", "?")
                    kern = info.get("kernel", {}).get("largest_layer", "?")
                    port = ports[0]
                    floors = [blockclient(args.build, pt, ["--get", "--path", "/healthz", "--count",
                                                           str(min(args.count, 20000))])
                              for pt in ports]
                    for n in ns:
                        for pt in ports:
                            e2e.send_all(pt, reqs[n])  # the item cache warm
                        load = os.getloadavg()[0]
                        st0 = stage_sums(port) if args.stages else None
                        dump = os.path.join(tmp, f"dump-{prec}-{split}-{n}.txt")
                        out = subprocess.run(
                            [f"{args.build}/bench/blockclient", "--port", str(ports[0]),
                             *(["--port2", str(ports[1])] if len(ports) > 1 else []),
                             "--requests", reqs[n], "--count", str(args.count), "--warmup", "500",
                             *(["--dump", dump] if args.tail else [])],
                            capture_output=True, text=True, timeout=7200).stdout
                        res = [kv(out, "BLOCKCLIENT "), kv(out, "BLOCKCLIENT2 ")]
                        if args.tail:
                            for k, b in enumerate(builds):
                                tail_report(dump, f"precision={prec} split={split} n={n}" +
                                            (f" build={b}" if args.versus else ""), k)
                            if args.keep_dumps:
                                os.makedirs(args.keep_dumps, exist_ok=True)
                                shutil.copy(dump, args.keep_dumps)
                        if args.stages:
                            st1 = stage_sums(port)
                            print(f"STAGES precision={prec} split={split} n={n} mean_us: "
                                  f"{stage_means(st0, st1)}; {hcache_rate(st0, st1, reqs[n])}",
                                  flush=True)
                        # Saturation: sat_rounds bursts per build, the builds in
                        # turn (ABBA...), so each build's median sees the same
                        # minutes of the host as the other's.
                        sats = [[] for _ in builds]
                        # CPU the server and Redis spent per answer at
                        # saturation (less sensitive to other tenants than
                        # req/s): [server s, Redis s, answers] per build.
                        cpu = [[0.0, 0.0, 0.0] for _ in builds]
                        for rnd in range(args.sat_rounds):
                            order = list(range(len(builds)))
                            if rnd % 2:
                                order.reverse()
                            for k in order:
                                cpu0 = cpu_seconds(procs[k].pid, rport)
                                sat = subprocess.run(
                                    [f"{args.build}/bench/loadgen", "--port", str(ports[k]),
                                     "--conns", str(args.conns), "--seconds",
                                     str(args.sat_seconds), "--requests", reqs[n]],
                                    capture_output=True, text=True)
                                sats[k].append(float(kv(sat.stdout, "LOADGEN").get("ok_rps",
                                                                                   "nan")))
                                cpu1 = cpu_seconds(procs[k].pid, rport)
                                cpu[k][0] += cpu1[0] - cpu0[0]
                                cpu[k][1] += cpu1[1] - cpu0[1]
                                cpu[k][2] += float(kv(sat.stdout, "LOADGEN").get("answered", 0))
                        for k, (b, pt) in enumerate(zip(builds, ports)):
                            r, floor = res[k], floors[k]
                            s = {"ok_rps": statistics.median(sats[k])}
                            if args.sat_rounds > 1:
                                print(f"SATURATION build={b} rounds req/s: "
                                      f"{' '.join(f'{v:.0f}' for v in sats[k])}", flush=True)
                            row = {"precision": prec, "split": split, "n": n, "isa": isa,
                                   "load": f"{load:.2f}", "count": r.get("count", "0"),
                                   "p50_ms": float(r.get("p50_us", "nan")) / 1e3,
                                   "p99_ms": float(r.get("p99_us", "nan")) / 1e3,
                                   "p999_ms": float(r.get("p999_us", "nan")) / 1e3,
                                   "floor_p50_ms": float(floor.get("p50_us", "nan")) / 1e3,
                                   "floor_p99_ms": float(floor.get("p99_us", "nan")) / 1e3,
                                   "sat_rps": float(s.get("ok_rps", "nan")),
                                   "sat_cpu_us_server": round(cpu[k][0] / cpu[k][2] * 1e6, 1)
                                   if cpu[k][2] else float("nan"),
                                   "sat_cpu_us_redis": round(cpu[k][1] / cpu[k][2] * 1e6, 1)
                                   if cpu[k][2] else float("nan"),
                                   "kernel": kern,
                                   "plan": infos[k].get("kernel", {}).get("split", "?")}
                            if args.versus:
                                row["build"] = b
                            rows.append(row)
                            print("LATENCY " + " ".join(
                                f"{k2}={v}" if k2 not in ("kernel", "plan") else f"{k2}=\"{v}\""
                                for k2, v in row.items()), flush=True)
                finally:
                    for proc in procs:
                        proc.send_signal(signal.SIGTERM)
                    for proc in procs:
                        proc.wait(60)
        done = True
    finally:
        redis.send_signal(signal.SIGTERM)
        redis.wait(30)
        if done:
            shutil.rmtree(tmp, ignore_errors=True)  # server logs, requests, dumps
        else:
            print(f"bench-latency: servers' logs kept in {tmp}", file=sys.stderr)
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
              f"{r['sat_rps']:9.0f}  {r['plan']}" + (f"  [{r['build']}]" if 'build' in r else ""))


if __name__ == "__main__":
    main()
