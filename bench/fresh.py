#!/usr/bin/python3
"""Fresh features benchmark (`make bench-fresh`): the figures the appends,
the item changes and the impression log are held to, on real
redis-servers over loopback and the demo model (made first if missing).

  append   from an append's reply (FCALL ctr_append) to the answer of the
           rank request sent right after it, which must use it (a new user
           each time, one appended item, "explain": 1 shows it): p50/p99
           over --appends trials, and how many answers saw the append.
  events   ctr-load --events throughput: --events events over --users
           users (random items), one Redis, events/s (median of --reps).
  changes  an item rewritten by ctr-load --items into the loaded prefix
           (new embedding), then rank requests every 5 ms until the item's
           score changes: time from ctr-load's exit to the first new score,
           against health_interval_ms + 100 ms, over --changes trials.
  implog   ctr-server with the impression log off, to a file, to a Redis
           Stream, and to a Redis Stream whose Redis is frozen (SIGSTOP):
           closed-loop throughput (--conns connections) and open-loop
           latency at --rate-frac of the log-off throughput, N = --n
           candidates, in interleaved rounds (every round runs every mode,
           in an order rotated round by round), medians of --rounds; answers
           lost (not 200) and records written/dropped.

Every figure names the model (demo: embedding_dim 16, 3 QNN layers, R 2),
fp32, N, threads, connections, the host's ISA (AMX or not) and the load
average at the start and end; the machine is shared, so prefer the
same-run ratios.  --out writes the report (Markdown) too.

    /usr/bin/python3 bench/fresh.py [--build build/release] [--only implog,append,...]
        [--out bench/results/fresh-DATE.md] [--quick]
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
PY = "/usr/bin/python3"
sys.path.insert(0, os.path.join(ROOT, "bench"))
import e2e  # noqa: E402
from e2e import free_port, loadgen, make_requests, send_all, wait_for  # noqa: E402

OUT = []


def say(line=""):
    print(line, flush=True)
    OUT.append(line)


def load_avg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def isa():
    with open("/proc/cpuinfo") as f:
        flags = next((l for l in f if l.startswith("flags")), "")
    have = [x for x in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
            if f" {x}" in flags]
    return ",".join(have) or "no AVX-512"


class Redis:
    def __init__(self, tmp):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        assert wait_for(lambda: self.cli("PING") == "PONG"), "redis did not start"

    def cli(self, *args, stdin=None):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], input=stdin,
                              capture_output=True, text=True, timeout=120).stdout.strip()

    def stop(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        self.proc.wait(10)


def Server(build, model, redis, tmp, extra=()):
    """e2e.Server against redis (a Redis of this file)."""
    return e2e.Server(build, model, redis.port, tmp, extra)


def ctr_load(build, redis, demo, prefix, *extra):
    r = subprocess.run([f"{build}/ctr-load", "--redis", f"127.0.0.1:{redis.port}", "--prefix",
                        prefix, "--model", f"{demo}/model.safetensors", *extra],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"ctr-load failed: {r.stderr[-500:]}")
    return r


# --- the impression log ---------------------------------------------------------

def cpu_ms(pid):
    """(all threads, the ctr-implog thread) CPU ms so far, user + system,
    from /proc (clock ticks)."""
    hz = os.sysconf("SC_CLK_TCK")
    tot = log = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fl = st[st.rindex(")") + 2:].split()
        ms = (int(fl[11]) + int(fl[12])) * 1000 / hz
        tot += ms
        if st[st.index("(") + 1:st.rindex(")")] == "ctr-implog":
            log += ms
    return tot, log


def add_lost(acc, res):
    """A loadgen run's answers that were not 200: 503 (shed), other
    statuses, and requests with no answer (connection errors)."""
    acc[0] += int(res["shed"])
    acc[1] += int(res["other"])
    acc[2] += int(res["errors"])


def bench_implog(a, demo, tmp):
    redis, sink, frozen_sink = Redis(tmp), Redis(tmp), Redis(tmp)
    servers = {}
    try:
        ctr_load(a.build, redis, demo, "ctr:", "--items", f"{demo}/items.jsonl", "--users",
                 f"{demo}/users.jsonl")
        reqfile = os.path.join(tmp, f"requests_{a.n}.jsonl")
        make_requests(demo, a.n, 2000, reqfile)
        model = f"{demo}/model.safetensors"
        common = ["--threads", str(a.threads), "--score-threads", str(a.threads)]
        modes = {
            "off": [],
            "file": ["--impression-log", f"file:{tmp}/imp.jsonl"],
            "redis": ["--impression-log", "redis:imp", "--impression-log-redis",
                      f"127.0.0.1:{sink.port}"],
            "redis, frozen": ["--impression-log", "redis:imp", "--impression-log-redis",
                              f"127.0.0.1:{frozen_sink.port}"],
        }
        for name, extra in modes.items():
            servers[name] = Server(a.build, model, redis, tmp, common + extra)
            send_all(servers[name].port, reqfile)   # a warm item cache
        names = list(modes)
        rps = {m: [] for m in names}
        lat = {m: {"p50": [], "p99": [], "p999": []} for m in names}
        lost = {m: [0, 0, 0] for m in names}   # 503s, other non-200s, no answer
        # closed loops: CPU ms of the server, of its log thread, of the sink
        # Redis; answers
        cpu = {m: [0, 0, 0, 0] for m in names}
        sink_of = {"off": redis, "file": redis, "redis": sink, "redis, frozen": frozen_sink}
        rate = None
        say(f"impression log: demo model fp32, N = {a.n}, {a.threads} worker threads, "
            f"history 64 from Redis, warm item cache; closed loop {a.conns} connections "
            f"{a.seconds} s, then open loop at {a.rate_frac:.0%} of the log-off throughput; "
            f"{a.rounds} rounds; ISA {isa()}; load average {load_avg()}")
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for m in order:
                if m == "redis, frozen":
                    frozen_sink.proc.send_signal(signal.SIGSTOP)
                try:
                    before = cpu_ms(servers[m].proc.pid), cpu_ms(sink_of[m].proc.pid)
                    res = loadgen(a.build, servers[m].port, reqfile, a.conns, a.seconds)
                    after = cpu_ms(servers[m].proc.pid), cpu_ms(sink_of[m].proc.pid)
                    for i in range(2):
                        cpu[m][i] += after[0][i] - before[0][i]
                    if m.startswith("redis"):
                        cpu[m][2] += after[1][0] - before[1][0]
                    cpu[m][3] += res["ok"] + res["shed"] + res["other"]
                    rps[m].append(res["ok_rps"])
                    add_lost(lost[m], res)
                    if rate is None and m == "off":
                        rate = res["ok_rps"] * a.rate_frac
                    if rate:
                        res = loadgen(a.build, servers[m].port, reqfile, a.conns, a.seconds, rate)
                        for q in ("p50", "p99", "p999"):
                            lat[m][q].append(res[f"ok_{q}"])
                        add_lost(lost[m], res)
                finally:
                    if m == "redis, frozen":
                        frozen_sink.proc.send_signal(signal.SIGCONT)
        say("")
        say("| impression log | closed loop req/s | vs off | open loop p50 ms | p99 ms | "
            "p99 vs off | p99.9 ms | answers not 200 (503 / other / none) | records written | "
            "dropped |")
        say("|---|---|---|---|---|---|---|---|---|---|")
        base_rps = statistics.median(rps["off"])
        base_p99 = statistics.median(lat["off"]["p99"]) if lat["off"]["p99"] else float("nan")
        for m in names:
            med = statistics.median(rps[m])
            p = {q: statistics.median(v) if v else float("nan") for q, v in lat[m].items()}
            wr = servers[m].metric("ctr_impressions_written_total") if m != "off" else 0
            dr = servers[m].metric("ctr_impressions_dropped_total") if m != "off" else 0
            say(f"| {m} | {med:.0f} | {med / base_rps:.3f} | {p['p50']:.3f} | {p['p99']:.3f} | "
                f"{p['p99'] / base_p99:.3f} | {p['p999']:.3f} | {' / '.join(map(str, lost[m]))} | "
                f"{wr:.0f} | {dr:.0f} |")
        say("")
        say("CPU time a closed-loop answer (/proc: the server process, of which its log "
            "thread ctr-implog, and the sink Redis; less sensitive to the machine's other "
            "load than the rates above):")
        say("")
        say("| impression log | server us/answer | vs off | of which ctr-implog us | "
            "sink Redis us |")
        say("|---|---|---|---|---|")
        base_cpu = cpu["off"][0] / max(cpu["off"][3], 1) * 1e3
        for m in names:
            n = max(cpu[m][3], 1)
            srv_us = cpu[m][0] / n * 1e3
            say(f"| {m} | {srv_us:.1f} | {srv_us / base_cpu:.3f} | {cpu[m][1] / n * 1e3:.1f} | "
                f"{cpu[m][2] / n * 1e3:.1f} |")
        say(f"(open loop at {rate:.0f} req/s; per-round req/s: "
            + "; ".join(f"{m} " + ",".join(f"{x:.0f}" for x in rps[m]) for m in names)
            + f"; load average at the end {load_avg()})")
    finally:
        for s in servers.values():
            s.stop()
        for r in (redis, sink, frozen_sink):
            r.stop()


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def post(conn, body):
    conn.request("POST", "/v1/rank", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


# --- appends -----------------------------------------------------------------

def bench_append(a, demo, tmp):
    sys.path.insert(0, os.path.join(ROOT, "tests/integration/lib"))
    from resp import Conn
    redis = Redis(tmp)
    srv = None
    try:
        ctr_load(a.build, redis, demo, "ctr:", "--items", f"{demo}/items.jsonl", "--users",
                 f"{demo}/users.jsonl")
        srv = Server(a.build, f"{demo}/model.safetensors", redis, tmp,
                     ["--threads", str(a.threads), "--score-threads", str(a.threads),
                      "--deadline-ms", "1000", "--redis-timeout-ms", "200"])
        items = []
        with open(f"{demo}/items.jsonl") as f:
            for line in f:
                items.append(json.loads(line)["item_id"])
        rng = random.Random(3)
        cands = [{"item_id": i, "likes_level": 3, "views_level": 3} for i in rng.sample(items, 16)]
        send_all_one(srv.port, cands)
        rc = Conn("127.0.0.1", redis.port)
        hc = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        gaps, seen, fcall = [], 0, []
        for k in range(a.appends):
            user = f"bench-append-{os.getpid()}-{k}"
            item = rng.choice(items)
            t0 = time.perf_counter()
            rc.call("FCALL", "ctr_append", 1, f"ctr:u:{user}", item)
            t1 = time.perf_counter()
            st, ans = post(hc, {"user_id": user, "candidates": cands})
            t2 = time.perf_counter()
            fcall.append((t1 - t0) * 1e3)
            gaps.append((t2 - t1) * 1e3)
            # Did it use the append?  The same request with that history given.
            st2, ref = post(hc, {"user_id": user, "candidates": cands, "item_seq": [item]})
            seen += st == st2 == 200 and ans["items"] == ref["items"]
        rc.close()
        hc.close()
        say(f"append -> next rank: demo model fp32, N = 16, {a.threads} worker "
            f"threads, one Redis, loopback, a new user each time; ISA {isa()}; load average "
            f"{load_avg()}")
        say("")
        say("| trials | FCALL ctr_append p50 ms | p99 ms | append reply -> rank answer p50 ms "
            "| p99 ms | max ms | answers that used the append |")
        say("|---|---|---|---|---|---|---|")
        say(f"| {a.appends} | {pct(fcall, .5):.3f} | {pct(fcall, .99):.3f} | {pct(gaps, .5):.3f} "
            f"| {pct(gaps, .99):.3f} | {max(gaps):.3f} | {seen}/{a.appends} |")
    finally:
        if srv:
            srv.stop()
        redis.stop()


def send_all_one(port, cands):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    post(c, {"user_id": "warm", "candidates": cands})
    c.close()


# --- ctr-load --events -------------------------------------------------------------

def bench_events(a, demo, tmp):
    redis = Redis(tmp)
    try:
        items = []
        with open(f"{demo}/items.jsonl") as f:
            for line in f:
                items.append(json.loads(line)["item_id"])
        rng = random.Random(5)
        path = os.path.join(tmp, "events.jsonl")
        with open(path, "w") as f:
            for _ in range(a.events):
                f.write(f'{{"user_id": "u{rng.randrange(a.users)}", "item_id": '
                        f'{rng.choice(items)}}}\n')
        rates = []
        for rep in range(a.reps):
            redis.cli("FLUSHALL")
            t0 = time.perf_counter()
            r = ctr_load(a.build, redis, demo, f"ev{rep}:", "--events", path)
            dt = time.perf_counter() - t0
            if f"events_appended={a.events}" not in r.stdout:
                raise RuntimeError(r.stdout + r.stderr)
            rates.append(a.events / dt)
        info = redis.cli("INFO", "commandstats")
        fc = [l for l in info.splitlines() if l.startswith("cmdstat_fcall:")]
        say(f"ctr-load --events: {a.events} events ({{user_id, item_id}}, one id each) over "
            f"{a.users} users, one Redis (loopback), --batch 512 (one FCALL ctr_append_packed a "
            f"batch), wall time of the whole run including the process start and loading "
            f"the library; {a.reps} runs; load average {load_avg()}")
        say("")
        say("| events | median events/s | runs (events/s) |")
        say("|---|---|---|")
        say(f"| {a.events} | {statistics.median(rates):.0f} | "
            + ", ".join(f"{x:.0f}" for x in rates) + " |")
        if fc:
            usec = float(fc[0].split("usec=")[1].split(",")[0])
            say(f"(Redis, the {a.reps} runs together: {fc[0]}; "
                f"{usec / (a.events * a.reps):.2f} us of FCALL an event)")
    finally:
        redis.stop()


# --- item changes ----------------------------------------------------------------

def bench_changes(a, demo, tmp):
    redis = Redis(tmp)
    srv = None
    try:
        ctr_load(a.build, redis, demo, "ctr:", "--items", f"{demo}/items.jsonl", "--users",
                 f"{demo}/users.jsonl")
        srv = Server(a.build, f"{demo}/model.safetensors", redis, tmp,
                     ["--threads", str(a.threads), "--health-interval-ms", "200",
                      "--deadline-ms", "1000", "--redis-timeout-ms", "200"])
        with open(f"{demo}/items.jsonl") as f:
            lines = [json.loads(l) for l in f]
        rng = random.Random(9)
        hc = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        lat, missed = [], 0
        for t in range(a.changes):
            it = rng.choice(lines)
            req = {"user_id": "u1", "candidates": [{"item_id": it["item_id"], "likes_level": 2,
                                                    "views_level": 2}]}
            st, ans = post(hc, req)     # cached now
            if st != 200 or not ans.get("items"):
                srv.log.flush()
                with open(srv.log.name) as f:
                    raise RuntimeError(f"rank {req}: {st} {ans}\n{f.read()[-1500:]}")
            old = ans["items"][0]["score"]
            new = dict(it, item_emb_d128=[x * -0.5 + 0.01 * t for x in it["item_emb_d128"]])
            path = os.path.join(tmp, "one.jsonl")
            with open(path, "w") as f:
                f.write(json.dumps(new) + "\n")
            ctr_load(a.build, redis, demo, "ctr:", "--items", path)
            t0 = time.perf_counter()
            while True:
                st, ans = post(hc, req)
                if st == 200 and ans["items"] and ans["items"][0]["score"] != old:
                    lat.append((time.perf_counter() - t0) * 1e3)
                    break
                if time.perf_counter() - t0 > 5:
                    missed += 1
                    break
                time.sleep(0.005)
            # the next trial starts at a random phase of the health check
            time.sleep(rng.random() * 0.2)
        hc.close()
        say(f"item change -> scored with its new features: ctr-load --items of one item into "
            f"the loaded prefix, then a rank request every 5 ms until its score changes; time "
            f"from ctr-load's exit; health_interval_ms 200 (target: 300 ms); demo model; "
            f"{a.changes} trials; load average {load_avg()}")
        say("")
        say("| trials | p50 ms | p90 ms | max ms | over 300 ms | never |")
        say("|---|---|---|---|---|---|")
        say(f"| {a.changes} | {pct(lat, .5):.0f} | {pct(lat, .9):.0f} | {max(lat):.0f} | "
            f"{sum(x > 300 for x in lat)} | {missed} |")
    finally:
        if srv:
            srv.stop()
        redis.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build/release"))
    ap.add_argument("--demo", default=os.path.join(ROOT, "demo"))
    ap.add_argument("--only", default="append,events,changes,implog")
    ap.add_argument("--out", help="also write the report here (Markdown)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate-frac", type=float, default=0.5)
    ap.add_argument("--appends", type=int, default=500)
    ap.add_argument("--events", type=int, default=1000000)
    ap.add_argument("--users", type=int, default=100000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.rounds, a.appends, a.events, a.users, a.reps, a.changes = \
            1, 1, 50, 50000, 5000, 1, 3
    if not os.path.exists(os.path.join(a.demo, "model.safetensors")):
        print("bench-fresh: no demo model; making it (tools/make_demo.py)", flush=True)
        subprocess.run([PY, os.path.join(ROOT, "tools/make_demo.py"), "--out", a.demo],
                       check=True)
    tmp = tempfile.mkdtemp(prefix="ctr-bench-fresh-")
    say(f"# bench-fresh {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    say(f"host: {os.cpu_count()} CPUs, ISA {isa()}; load average {load_avg()}")
    try:
        only = a.only.split(",")
        for name, fn in (("append", bench_append), ("events", bench_events),
                         ("changes", bench_changes), ("implog", bench_implog)):
            if name in only:
                say("")
                fn(a, a.demo, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(OUT) + "\n")


if __name__ == "__main__":
    main()
