#!/usr/bin/python3
"""Soak test (`make soak`, not in CI): an AddressSanitizer build of
ctr-server under load for a fixed number of requests (default 1,000,000),
with faults on a schedule, ending with the leak check.

Schedule (each repeating, offsets staggered): Redis frozen (SIGSTOP) for
2 s every 20 s; Redis restarted empty and reloaded every 45 s; the model
reloaded (SIGHUP, alternating two files) every 15 s, every third time a
corrupt file (the reload must fail and keep serving).  At the end SIGTERM:
the server must exit 0 with no LeakSanitizer report.

Prints: requests, rate, answers by status, null scores, breaker openings,
reloads ok/failed, Redis restarts, the server's RSS at start and end, the
exit status and the leak check.

    /usr/bin/python3 bench/soak.py [--requests 1000000] [--model M --items I --users U]
      (default: the golden "small" model and data, build/golden/small)
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from e2e import free_port, http_ok, wait_for  # noqa: E402
from faults import metric  # noqa: E402


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build/address"))
    ap.add_argument("--loadgen", default=os.path.join(ROOT, "build/release/bench/loadgen"))
    golden = os.path.join(ROOT, "build/golden/small")
    ap.add_argument("--model", default=os.path.join(golden, "model.safetensors"))
    ap.add_argument("--items", default=os.path.join(golden, "items.jsonl"))
    ap.add_argument("--users", default=os.path.join(golden, "users.jsonl"))
    ap.add_argument("--requests-file", default=os.path.join(golden, "requests.jsonl"))
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--conns", type=int, default=8)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="ctr-soak-")
    rport = free_port()
    redis_cmd = ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                 "no", "--dir", tmp]
    state = {"redis": subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             "restarts": 0, "freezes": 0, "hups": 0}

    def ping():
        return subprocess.run(["redis-cli", "-p", str(rport), "ping"], capture_output=True,
                              text=True).stdout.strip() == "PONG"

    def load():
        subprocess.run([f"{ROOT}/build/release/ctr-load", "--redis", f"127.0.0.1:{rport}", "--model",
                        args.model, "--items", args.items, "--users", args.users], check=True,
                       capture_output=True)

    assert wait_for(ping)
    load()
    model = os.path.join(tmp, "model.safetensors")
    shutil.copy(args.model, model)
    good = open(args.model, "rb").read()
    port = free_port()
    log = open(os.path.join(tmp, "server.log"), "w")
    # A small quarantine, so the RSS figures mean what they say.
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=23:quarantine_size_mb=16")
    srv = subprocess.Popen([f"{args.build}/ctr-server", "--model", model, "--redis", f"127.0.0.1:{rport}",
                            "--port", str(port), "--log-level", "warn"], stdout=log,
                           stderr=subprocess.STDOUT, env=env)
    stop = threading.Event()
    try:
        assert wait_for(lambda: http_ok(port, "/readyz"), 60), "server did not come up"
        rss0 = rss_kb(srv.pid)

        def faults():
            t0 = time.time()
            nxt = {"freeze": 20, "restart": 45, "hup": 15}
            while not stop.wait(0.2):
                t = time.time() - t0
                if t >= nxt["freeze"]:
                    state["redis"].send_signal(signal.SIGSTOP)
                    stop.wait(2)
                    state["redis"].send_signal(signal.SIGCONT)
                    state["freezes"] += 1
                    nxt["freeze"] += 20
                if t >= nxt["restart"]:
                    state["redis"].terminate()
                    state["redis"].wait(10)
                    state["redis"] = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.DEVNULL)
                    wait_for(ping)
                    stop.wait(1)          # a second of an empty Redis
                    load()
                    state["restarts"] += 1
                    nxt["restart"] += 45
                if t >= nxt["hup"]:
                    state["hups"] += 1
                    with open(model, "wb") as f:
                        f.write(good[:1000] if state["hups"] % 3 == 0 else good)
                    srv.send_signal(signal.SIGHUP)
                    nxt["hup"] += 15

        ft = threading.Thread(target=faults)
        ft.start()
        t0 = time.time()
        out = subprocess.run([args.loadgen, "--port", str(port), "--conns", str(args.conns), "--seconds",
                              "86400", "--count", str(args.requests), "--requests", args.requests_file],
                             capture_output=True, text=True).stdout
        took = time.time() - t0
        stop.set()
        ft.join()
        with open(model, "wb") as f:
            f.write(good)
        m = re.search(r"LOADGEN (.*)", out)
        r = {k: float(v) for k, v in (kv.split("=", 1) for kv in m.group(1).split())} if m else {}
        rss1 = rss_kb(srv.pid)
        opens = metric(port, "ctr_redis_breaker_opens_total")
        rok = metric(port, 'ctr_model_reloads_total{result="ok"}')
        rbad = metric(port, 'ctr_model_reloads_total{result="failed"}')
        srv.send_signal(signal.SIGTERM)
        rc = srv.wait(120)
        log.close()
        text = open(os.path.join(tmp, "server.log")).read()
        leaks = "LeakSanitizer" in text or "AddressSanitizer" in text
        print(f"soak: {r.get('answered', 0):.0f} answers in {took:.0f} s ({r.get('rps', 0):.0f} req/s, "
              f"{args.conns} connections, ASan build, {os.path.basename(args.model)}); load average "
              f"{os.getloadavg()[0]:.2f}")
        print(f"  200: {r.get('ok', 0):.0f}  503: {r.get('shed', 0):.0f}  other: {r.get('other', 0):.0f}  "
              f"connection errors: {r.get('errors', 0):.0f}  null scores: {r.get('nulls', 0):.0f}")
        print(f"  200 latency p50 {r.get('ok_p50', 0):.2f} ms, p99 {r.get('ok_p99', 0):.2f} ms, "
              f"max {r.get('ok_max', 0):.1f} ms")
        print(f"  faults: {state['freezes']} Redis freezes, {state['restarts']} Redis restarts, "
              f"{state['hups']} reloads ({rok:.0f} ok, {rbad:.0f} failed as planned); breaker "
              f"openings {opens:.0f}")
        print(f"  server RSS {rss0 / 1024:.1f} MiB at start, {rss1 / 1024:.1f} MiB at the end")
        print(f"  exit status {rc}; sanitizer report: {'YES (see below)' if leaks else 'none'}")
        if leaks:
            print(text[-5000:])
        ok = rc == 0 and not leaks and r.get("nulls", 1) == 0 and r.get("other", 1) == 0
        print("soak: " + ("PASS" if ok else "FAIL"))
        return 0 if ok else 1
    finally:
        stop.set()
        if srv.poll() is None:
            srv.kill()
        state["redis"].send_signal(signal.SIGCONT)
        state["redis"].terminate()
        state["redis"].wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
