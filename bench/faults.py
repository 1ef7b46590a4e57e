#!/usr/bin/python3
"""Fault and overload benchmark (`make bench-faults`): ctr-server on a real
redis-server over loopback with the demo model (N candidates, history 64 in
Redis), driven by bench/loadgen (latency kept per status class, null scores
counted).  Prints the figures of issue 7's targets:

  1. Redis frozen (SIGSTOP) for --freeze seconds under half the saturation
     rate: throughput against the healthy rate at the same offered load, the
     p99 of answers against their deadline, and the time from SIGCONT until
     every breaker has closed (ctr_redis_breaker_open back to 0, polled
     every 10 ms while the load goes on).
  2. Overload: unloaded p99 (1 connection), then --overload-conns
     connections closed loop: admitted (200) p99 against 3x the unloaded
     p99, and the 503 `overloaded` answers' latency.
  3. Connections: --idle idle and --trickle trickling connections (a header
     line every 2 s) held open, then a new client's time to an answer
     (connect + GET /healthz, and connect + POST /v1/rank), 20 times.
     This process needs idle + trickle + a few file descriptors: it raises
     its own soft limit (RLIMIT_NOFILE) up to the hard limit and says so;
     the server raises its own at start (max_connections).
  4. Null scores across every answer above.

Both loadgen and the server run on the same cores; note the load average
printed at the start and prefer the ratios.

    /usr/bin/python3 bench/faults.py [--build build/release] [--n 64] [--quick]
"""
import argparse
import http.client
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
NICE = []   # ["nice", "-n", N] with --nice: server, Redis and loadgen
SERVER_ARGS = []  # --server-args: extra ctr-server settings for every run
SERVER_PIN = []   # ["taskset", "-c", CPUS] with --server-cpus: server and Redis
CLIENT_PIN = []   # ["taskset", "-c", CPUS] with --client-cpus: loadgen
sys.path.insert(0, os.path.join(ROOT, "bench"))
import e2e  # noqa: E402
from e2e import free_port, make_requests, metric, wait_for  # noqa: E402


def loadgen(build, port, reqfile, conns, seconds, rate=0.0):
    return e2e.loadgen(build, port, reqfile, conns, seconds, rate, CLIENT_PIN + NICE)


def Server(build, model, rport, tmp, extra=()):
    """e2e.Server with --server-args, pinned and niced as the options say."""
    return e2e.Server(build, model, rport, tmp, list(extra) + SERVER_ARGS, SERVER_PIN + NICE)


def rank_buckets(port):
    """Cumulative server-side /v1/rank duration buckets {le_seconds: count}."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in text.splitlines():
        m = re.match(r'ctr_http_request_duration_seconds_bucket\{endpoint="/v1/rank",le="([^"]+)"\} (\d+)', line)
        if m:
            out[float("inf") if m.group(1) == "+Inf" else float(m.group(1))] = int(m.group(2))
    return out


def late_answers(b0, b1, bound):
    """Answers between two bucket snapshots that took longer than bound s."""
    total = b1[float("inf")] - b0.get(float("inf"), 0)
    within = b1.get(bound, 0) - b0.get(bound, 0)
    return total - within, total


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return f"open-file limit {soft} (enough)"
    new = want if hard == resource.RLIM_INFINITY or hard >= want else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return f"open-file limit raised from {soft} to {new} (hard {hard})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build/release"))
    ap.add_argument("--demo", default=os.path.join(ROOT, "demo"))
    ap.add_argument("--n", type=int, default=64, help="candidates per request")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--freeze", type=float, default=5)
    ap.add_argument("--overload-conns", type=int, default=256)
    ap.add_argument("--idle", type=int, default=4000)
    ap.add_argument("--trickle", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="shorter runs (2 s), same scenarios")
    ap.add_argument("--nice", type=int, default=None,
                    help="run server, Redis and loadgen under `nice -n N` (a negative N needs root: "
                         "on a machine shared with other jobs, it keeps them from setting the figures)")
    ap.add_argument("--server-cpus", default="",
                    help="run ctr-server and Redis on these CPUs only (taskset -c LIST)")
    ap.add_argument("--client-cpus", default="",
                    help="run the load generator on these CPUs only (taskset -c LIST): with "
                    "--server-cpus, the client no longer takes the server's time slices")
    ap.add_argument("--server-args", default="", help="extra ctr-server flags for every run, "
                    "e.g. \"--threads 1 --worker-nice 5\"")
    args = ap.parse_args()
    SERVER_ARGS.extend(args.server_args.split())
    if args.server_cpus:
        SERVER_PIN.extend(["taskset", "-c", args.server_cpus])
    if args.client_cpus:
        CLIENT_PIN.extend(["taskset", "-c", args.client_cpus])
    if args.nice is not None:
        NICE.extend(["nice", "-n", str(args.nice)])
    if args.quick:
        args.seconds = 2
    secs = args.seconds
    model = os.path.join(args.demo, "model.safetensors")
    if not os.path.exists(model):
        print("bench-faults: no demo model; making it (tools/make_demo.py)", flush=True)
        subprocess.run([PY, os.path.join(ROOT, "tools/make_demo.py"), "--out", args.demo], check=True)

    tmp = tempfile.mkdtemp(prefix="ctr-faults-")
    rport = free_port()
    redis = subprocess.Popen(SERVER_PIN + NICE + ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = []
    nulls = 0
    results = {}
    try:
        assert wait_for(lambda: subprocess.run(["redis-cli", "-p", str(rport), "ping"], capture_output=True,
                                               text=True).stdout.strip() == "PONG")
        subprocess.run([f"{args.build}/ctr-load", "--redis", f"127.0.0.1:{rport}", "--model", model,
                        "--items", os.path.join(args.demo, "items.jsonl"),
                        "--users", os.path.join(args.demo, "users.jsonl")], check=True,
                       capture_output=True)
        reqfile = os.path.join(tmp, f"requests_{args.n}.jsonl")
        make_requests(args.demo, args.n, 400, reqfile)
        cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True,
                             text=True).stdout.strip()
        print(f"machine: {cpu}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}"
              f"{'; everything under nice -n ' + str(args.nice) if args.nice is not None else ''}"
              f"{'; server and Redis on CPUs ' + args.server_cpus if args.server_cpus else ''}"
              f"{'; load generator on CPUs ' + args.client_cpus if args.client_cpus else ''}; "
              f"demo model ({os.path.basename(args.demo)}/model.safetensors), "
              f"fp32, N={args.n}, history 64 from Redis; server defaults (threads = cores, "
              f"deadline 50 ms, redis timeout 20 ms, max_pending 4 x threads)"
              f"{'; plus ' + args.server_args if args.server_args else ''}", flush=True)

        # --- 1. Redis frozen under half-saturation load -----------------
        srv = Server(args.build, model, rport, tmp)
        servers.append(srv)
        loadgen(args.build, srv.port, reqfile, 2, 1)  # warm the item cache
        sat = loadgen(args.build, srv.port, reqfile, 8, secs)
        half = sat["ok_rps"] / 2
        healthy = loadgen(args.build, srv.port, reqfile, 8, args.freeze, rate=half)
        nulls += healthy["nulls"] + sat["nulls"]
        # Freeze for exactly the load's duration.
        stop_at = {}

        def freeze():
            time.sleep(0.05)
            redis.send_signal(signal.SIGSTOP)
            stop_at["t"] = time.time()
            time.sleep(args.freeze)
            redis.send_signal(signal.SIGCONT)
            stop_at["cont"] = time.time()

        th = threading.Thread(target=freeze)
        b0 = rank_buckets(srv.port)
        th.start()
        frozen = loadgen(args.build, srv.port, reqfile, 8, args.freeze, rate=half)
        th.join()
        late, total = late_answers(b0, rank_buckets(srv.port), 0.05)
        nulls += frozen["nulls"]
        # Recovery: load on, poll the open-breaker gauge every 10 ms.
        rec = {}

        def recovery_load():
            rec["r"] = loadgen(args.build, srv.port, reqfile, 8, 3, rate=half)

        lt = threading.Thread(target=recovery_load)
        lt.start()
        closed_at = None
        while time.time() < stop_at["cont"] + 3:
            if metric(srv.port, "ctr_redis_breaker_open") == 0:
                closed_at = time.time()
                break
            time.sleep(0.01)
        lt.join()
        nulls += rec["r"]["nulls"]
        opened = metric(srv.port, "ctr_redis_breaker_opens_total")
        shorted = metric(srv.port, "ctr_redis_breaker_short_circuits_total")
        close_s = closed_at - stop_at["cont"] if closed_at else float("inf")
        ratio = frozen["ok_rps"] / healthy["ok_rps"] if healthy["ok_rps"] else 0
        deadline_ms = 50
        results["frozen"] = (ratio, frozen["took_p99"], close_s, frozen["ok_p99"])
        print()
        print(f"1. Redis frozen {args.freeze:.0f} s at half saturation ({half:.0f} req/s offered, 8 "
              f"connections; saturation {sat['ok_rps']:.0f} req/s)")
        print(f"   {'':22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9':>8} {'max ms':>8} {'non-200':>8}"
              f" | took_us: {'p50':>7} {'p99':>7} {'max':>7} ms")
        for name, r in (("healthy", healthy), ("Redis frozen", frozen), ("after SIGCONT (3 s)", rec["r"])):
            print(f"   {name:22} {r['ok_rps']:>8.0f} {r['ok_p50']:>8.3f} {r['ok_p99']:>8.3f} "
                  f"{r['ok_p999']:>8.3f} {r['ok_max']:>8.3f} {int(r['shed'] + r['other'] + r['errors']):>8}"
                  f" |          {r['took_p50']:>7.3f} {r['took_p99']:>7.3f} {r['took_max']:>7.3f}")
        print("   (latency: client side, from each request's scheduled send time, so a stalled "
              "connection's later requests count their wait; took_us: the server's own time per "
              "answer, arrival to answer)")
        print(f"   throughput frozen / healthy: {ratio:.2f} (target >= 0.50); answers while frozen: "
              f"took_us p99 {frozen['took_p99']:.2f} ms, client-side p99 {frozen['ok_p99']:.2f} ms, vs "
              f"deadline {deadline_ms} + 2 ms; breakers opened {opened:.0f}, "
              f"calls short-circuited {shorted:.0f}; all breakers closed {close_s * 1000:.0f} ms after "
              f"SIGCONT (target < 1000 ms)")
        print(f"   server side (arrival to answer queued, /metrics histogram): {late} of {total} "
              f"answers while frozen took over the 50 ms deadline", flush=True)
        srv.stop()
        servers.remove(srv)

        # --- 2. Overload -------------------------------------------------
        srv = Server(args.build, model, rport, tmp)
        servers.append(srv)
        loadgen(args.build, srv.port, reqfile, 2, 1)
        unloaded = loadgen(args.build, srv.port, reqfile, 1, secs)
        over = loadgen(args.build, srv.port, reqfile, args.overload_conns, secs)
        # The same connections offering 3x the saturation rate (open loop):
        # arrivals that do not speed up when answers are refused, as when
        # the clients are other machines.
        over3 = loadgen(args.build, srv.port, reqfile, args.overload_conns, secs,
                        rate=3 * sat["ok_rps"])
        nulls += unloaded["nulls"] + over["nulls"] + over3["nulls"]
        shed_ok = over["shed"] > 0 and over3["shed"] > 0
        results["overload"] = (over["ok_p99"] / unloaded["ok_p99"] if unloaded["ok_p99"] else 0,
                               over["shed_p99"])
        results["overload3"] = (over3["ok_p99"] / unloaded["ok_p99"] if unloaded["ok_p99"] else 0,
                                over3["shed_p99"])
        print()
        print(f"2. Overload: {args.overload_conns} connections, closed loop (each sends again as "
              f"soon as answered, 503s included), then open loop at 3x saturation; {secs:.0f} s each")
        print(f"   {'':26} {'answers':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9':>8} {'max ms':>8}")
        print(f"   {'unloaded (1 conn), 200':26} {unloaded['ok']:>8.0f} {unloaded['ok_rps']:>8.0f} "
              f"{unloaded['ok_p50']:>8.3f} {unloaded['ok_p99']:>8.3f} {unloaded['ok_p999']:>8.3f} "
              f"{unloaded['ok_max']:>8.3f}")
        print(f"   {'overload, admitted (200)':26} {over['ok']:>8.0f} {over['ok_rps']:>8.0f} "
              f"{over['ok_p50']:>8.3f} {over['ok_p99']:>8.3f} {over['ok_p999']:>8.3f} {over['ok_max']:>8.3f}")
        print(f"   {'overload, refused (503)':26} {over['shed']:>8.0f} {over['shed'] / over['seconds']:>8.0f} "
              f"{over['shed_p50']:>8.3f} {over['shed_p99']:>8.3f} {over['shed_p999']:>8.3f} "
              f"{over['shed_max']:>8.3f}")
        print(f"   {'3x saturation, admitted':26} {over3['ok']:>8.0f} {over3['ok_rps']:>8.0f} "
              f"{over3['ok_p50']:>8.3f} {over3['ok_p99']:>8.3f} {over3['ok_p999']:>8.3f} {over3['ok_max']:>8.3f}")
        print(f"   {'3x saturation, refused':26} {over3['shed']:>8.0f} {over3['shed'] / over3['seconds']:>8.0f} "
              f"{over3['shed_p50']:>8.3f} {over3['shed_p99']:>8.3f} {over3['shed_p999']:>8.3f} "
              f"{over3['shed_max']:>8.3f}")
        print(f"   closed loop: admitted p99 / unloaded p99 {results['overload'][0]:.2f} (target <= 3), "
              f"503 p99 {over['shed_p99']:.3f} ms (target < 1 ms); open loop at 3x saturation "
              f"({3 * sat['ok_rps']:.0f} req/s offered): {results['overload3'][0]:.2f}, 503 p99 "
              f"{over3['shed_p99']:.3f} ms; other statuses {over['other'] + over3['other']:.0f}, "
              f"connection errors {over['errors'] + over3['errors']:.0f}"
              f"{'' if shed_ok else '; NO 503: not overloaded?'}", flush=True)
        srv.stop()
        servers.remove(srv)

        # --- 3. Idle and trickling connections ---------------------------
        note = raise_nofile(args.idle + args.trickle + 256)
        srv = Server(args.build, model, rport, tmp)
        servers.append(srv)
        body = open(reqfile).readline().strip().encode()
        rank_req = (b"POST /v1/rank HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        t_open = time.time()
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(args.idle)]
        trick = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(args.trickle)]
        for s in trick:
            s.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: b\r\n")
        opened_s = time.time() - t_open
        stop = threading.Event()

        def trickle():
            while not stop.wait(2.0):
                for s in trick:
                    try:
                        s.sendall(b"X-Slow: 1\r\n")
                    except OSError:
                        pass

        tt = threading.Thread(target=trickle)
        tt.start()
        times_h, times_r = [], []
        for k in range(20):
            for req, acc in ((b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n", times_h),
                             (rank_req, times_r)):
                t0 = time.perf_counter()
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                s.sendall(req)
                data = b""
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    data += d
                s.close()
                acc.append((time.perf_counter() - t0) * 1000)
                if b"200 OK" not in data[:20]:
                    acc[-1] = float("inf")
                if b'"score":null' in data:
                    nulls += 1
            time.sleep(0.1)
        held = time.time() - t_open
        stop.set()
        tt.join()
        for s in idle + trick:
            s.close()
        times_h.sort()
        times_r.sort()
        results["conns"] = max(times_h[-1], times_r[-1])
        print()
        print(f"3. Connections: {args.idle} idle + {args.trickle} trickling (a header line every 2 s) "
              f"held open ({opened_s:.1f} s to open, measured over the next {held - opened_s:.1f} s; "
              f"{note})")
        print(f"   new client, connect + GET /healthz:  median {times_h[len(times_h) // 2]:.2f} ms, "
              f"max {times_h[-1]:.2f} ms")
        print(f"   new client, connect + POST /v1/rank: median {times_r[len(times_r) // 2]:.2f} ms, "
              f"max {times_r[-1]:.2f} ms   (target: answered within 100 ms)")
        time.sleep(0.2)
        print(f"   connections cut by the receive deadline so far: "
              f"{metric(srv.port, 'ctr_connections_cut_total'):.0f}", flush=True)
        srv.stop()
        servers.remove(srv)

        print()
        print(f"4. Answers with a null score, all runs above: {nulls:.0f} (target 0)")
        print()
        ok = (results["frozen"][0] >= 0.5, results["frozen"][1] <= deadline_ms + 2,
              results["frozen"][2] < 1.0, results["overload"][0] <= 3.0, results["overload"][1] < 1.0,
              results["overload3"][0] <= 3.0, results["overload3"][1] < 1.0,
              results["conns"] <= 100, nulls == 0)
        names = ("frozen throughput >= 50%", "frozen took_us p99 <= deadline + 2 ms", "breaker closed < 1 s",
                 "closed loop: admitted p99 <= 3x unloaded", "closed loop: 503 p99 < 1 ms",
                 "3x saturation: admitted p99 <= 3x unloaded", "3x saturation: 503 p99 < 1 ms",
                 "new client < 100 ms", "no null score")
        print("targets: " + "; ".join(f"{n}: {'met' if o else 'MISSED'}" for n, o in zip(names, ok)))
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.proc.kill()
        redis.send_signal(signal.SIGCONT)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
