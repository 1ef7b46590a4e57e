#!/usr/bin/python3
"""ctr-server under faults and attacks, each test asserting the defined
behaviour (docs/BEHAVIOUR.md), not timings (budgets are generous and
windows are chosen by when a request was sent, so that a sanitizer build
on a loaded machine passes too): Redis frozen (SIGSTOP)
under load, Redis restarted empty, corrupt and huge values, poisoned items,
overload beyond the admission bound, idle and trickling connections, the
per-address limit, and the protocol defects (framing, 411/413/422, deadline
header).  The figures (throughput under faults, latencies) are in
`make bench-faults` (bench/faults.py).

Run by tests/integration/test_faults.sh with CTR_BUILD, CTR_GOLDEN, PYTHON.
Only loopback traffic; every wait is bounded."""
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture import (SMALL, Checks, Redis, Server, error_code, load,  # noqa: E402
                     promtool_check_metrics, wait_for)

check = Checks()

# The main server's deadline (ms): five times its Redis timeout.
DEADLINE = 1000


def raw(port, data, wait=10.0):
    """Sends data on a new connection, returns (bytes read, closed_by_server).
    Reads until the server closes, or until one whole answer has come that
    keeps the connection open (its Content-Length read, no Connection:
    close), or for `wait` seconds: a bound on a hang, not a latency check."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    s.sendall(data)
    end = time.time() + wait
    out, closed = b"", False
    try:
        while not answer_complete(out):
            s.settimeout(max(0.01, end - time.time()))
            d = s.recv(65536)
            if not d:
                closed = True
                break
            out += d
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed = True
    s.close()
    return out, closed


def answer_complete(resp):
    """resp holds one whole answer after which the connection stays open."""
    head, sep, body = resp.partition(b"\r\n\r\n")
    if not sep or b"\r\nconnection: close" in head.lower():
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(resp):
    try:
        return int(resp.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def body_of(resp):
    try:
        return json.loads(resp.split(b"\r\n\r\n", 1)[1])
    except (IndexError, ValueError):
        return {}


def post(body, extra=b""):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    return (b"POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + extra +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def redis_sent(redis):
    """Bytes Redis has sent to its clients (INFO stats)."""
    for line in redis.cli("INFO", "stats").splitlines():
        if line.startswith("total_net_output_bytes:"):
            return int(line.split(":")[1])
    raise AssertionError("no total_net_output_bytes in INFO stats")


def no_null(resp):
    return all(it.get("score") is not None for it in resp.get("items", []))


def item_value(tags, mm):
    return struct.pack("<2sBBHH", b"CI", 1, len(tags), len(mm), 0) + \
        struct.pack("<%di" % len(tags), *tags) + struct.pack("<%df" % len(mm), *mm)


def user_value(ids):
    return struct.pack("<2sBBI", b"CU", 1, 0, len(ids)) + struct.pack("<%di" % len(ids), *ids)


def redis_set(redis, key, value):
    subprocess.run(["redis-cli", "-p", str(redis.port), "-x", "SET", key], input=value,
                   capture_output=True, timeout=30, check=True)


class Load:
    """Clients on keep-alive connections sending rank requests until stopped;
    records (time answered, status, answer, time sent)."""

    def __init__(self, srv, reqs, clients=3):
        self.srv, self.reqs, self.stop, self.out = srv, reqs, False, []
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]

    def run(self, k):
        c = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=10)
        i = k
        while not self.stop:
            body = json.dumps(self.reqs[i % len(self.reqs)])
            i += 1
            sent = time.time()
            try:
                c.request("POST", "/v1/rank", body=body, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                self.out.append((time.time(), r.status, json.loads(data), sent))
            except (OSError, http.client.HTTPException, ValueError) as e:
                self.out.append((time.time(), None, {"exception": str(e)}, sent))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=10)
            time.sleep(0.002)
        c.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *a):
        self.stop = True
        for t in self.threads:
            t.join(30)


def main():
    tmp = tempfile.mkdtemp(prefix="ctr-faults-")
    redis = Redis(tmp)
    redis.start()
    prefix = f"f{os.getpid()}:"
    load(redis, prefix)
    model = os.path.join(SMALL, "model.safetensors")
    with open(f"{SMALL}/requests.jsonl") as f:
        reqs = [json.loads(l) for l in f if l.strip()]
    stored = [r for r in reqs if "item_seq" not in r and r["candidates"]]
    cand_ids = sorted({c["item_id"] for r in reqs for c in r["candidates"]})
    servers = []
    try:
        # The fixture's Redis timeouts (200 ms: generous for a loopback
        # Redis, so only the freeze trips them) well inside a deadline of
        # DEADLINE (1 s): a sanitizer build on a loaded machine, where a
        # thread may wait hundreds of ms for a core, still answers a read
        # that timed out in full, rather than 503 deadline_exceeded.
        # The history cache off: this part is about the breaker, and a
        # frozen Redis (nothing written meanwhile) would be answered from
        # the cache until its link's keep-alive gave up.
        srv = Server(model, redis, prefix, ["--deadline-ms", str(DEADLINE),
                                            "--receive-timeout-ms", "1000",
                                            "--history-cache-mb", "0"])
        servers.append(srv)
        for r in stored:  # warm the item cache: a frozen Redis then costs only the history
            srv.rank(r)

        print("redis frozen (SIGSTOP) under load")
        # Frozen longer than twice the deadline, so that a read the
        # deadline failed to cut would show in took_us.
        with Load(srv, stored) as ld:
            time.sleep(0.4)
            t_stop = time.time()
            redis.proc.send_signal(signal.SIGSTOP)
            time.sleep(2 * DEADLINE / 1000 + 0.5)
            t_cont = time.time()
            redis.proc.send_signal(signal.SIGCONT)
            time.sleep(1.2)
        # Windows by the time a request was sent (o[3]), not answered: an
        # answer that a loaded machine delays is still judged by what
        # Redis was doing when the request came.  Frozen: sent after the
        # SIGSTOP, answered before the SIGCONT.  After: sent past the
        # breaker bound (1.25 x 400 ms) after the SIGCONT.
        frozen = [o for o in ld.out if o[3] > t_stop + 0.05 and o[0] < t_cont]
        after = [o for o in ld.out if o[3] > t_cont + 0.5 + 0.1]
        check(f"every answer 200 while frozen ({len(frozen)} answers)",
              frozen and all(o[1] == 200 for o in frozen), str([o for o in frozen if o[1] != 200][:2]))
        check("answers while frozen say why (history_unavailable or history_deadline)",
              all(set(o[2].get("degraded", [])) & {"history_unavailable", "history_deadline"}
                  for o in frozen), str(frozen[:1]))
        check("no null score, ever", all(no_null(o[2]) for o in ld.out))
        check("answers within twice their deadline (took_us)",
              all(o[2].get("took_us", 0) < 2 * DEADLINE * 1000 for o in ld.out if o[1] == 200),
              str(max((o[2].get("took_us", 0) for o in ld.out if o[1] == 200), default=0)))
        check("breaker opened and short-circuited calls",
              srv.metric("ctr_redis_breaker_opens_total") >= 1 and
              srv.metric("ctr_redis_breaker_short_circuits_total") >= 1)
        check(f"past the breaker bound after SIGCONT: not degraded ({len(after)} answers)",
              after and all(o[1] == 200 and o[2].get("degraded") == [] for o in after),
              str([(o[1], o[2].get("degraded"), o[2].get("stage_us")) for o in after
                   if o[1] != 200 or o[2].get("degraded")][:3]))
        check("every breaker closed again", srv.metric("ctr_redis_breaker_open") == 0)

        print("redis restarted empty")
        redis.stop()
        redis.start()
        check("/readyz 503 naming the missing feature set",
              wait_for(lambda: b"feature-set marker" in srv.request("GET", "/readyz")[2], 10))
        check("ctr_feature_set_ready 0", wait_for(lambda: srv.metric("ctr_feature_set_ready") == 0, 10))
        time.sleep(0.6)  # breakers from the restart: past their bound
        st, resp = srv.rank(stored[0])
        check("answers marked feature_set_missing", st == 200 and
              "feature_set_missing" in resp.get("degraded", []), str(resp)[:300])
        load(redis, prefix)
        check("/readyz ready after ctr-load", wait_for(lambda: srv.request("GET", "/readyz")[0] == 200, 10))
        check("/metrics shows the load time",
              wait_for(lambda: srv.metric("ctr_feature_set_loaded_timestamp_seconds") > time.time() - 60, 10))
        st, resp = srv.rank(stored[0])
        check("answers not degraded again", st == 200 and resp.get("degraded") == [], str(resp)[:300])

        print("corrupt and huge values")
        cold = Server(model, redis, prefix, ["--cache-mb", "0"])
        servers.append(cold)
        hist = [1, 5, 8, 9, 11]
        redis_set(redis, f"{prefix}u:huge", user_value([i % 50 + 1 for i in range(2_500_000)]))
        # What Redis sent shows the bounded read, whatever the machine's
        # speed: a few hundred bytes (and the health check's PINGs), never
        # the 10 MB value.
        sent0 = redis_sent(redis)
        st, resp = cold.rank({"user_id": "huge", "candidates": [{"item_id": 8}]})
        sent = redis_sent(redis) - sent0
        check(f"10 MB history: answered from its last max_len ids, not degraded ({sent} bytes read)",
              st == 200 and resp.get("degraded") == [] and sent < 64 << 10, str(resp)[:300])
        st, resp = cold.rank({"user_id": "huge", "candidates": [{"item_id": 8}]})
        check("and the next request on that worker too", st == 200 and resp.get("degraded") == [])
        # The user id (and request id) carry a newline, a CR, ESC and a C1
        # control: the log line that names them must stay one line.
        evil = "bad\n2030-01-01T00:00:00.000Z error FORGED\x1b[2J\u009b"
        redis_set(redis, f"{prefix}u:{evil}".encode(), b"CU\x01\x00\x05\x00\x00\x00abc")
        st, resp = cold.rank({"user_id": evil, "request_id": "r-7\r\nFORGED",
                              "candidates": [{"item_id": 8}]})
        check("malformed history: history_unavailable", st == 200 and
              "history_unavailable" in resp.get("degraded", []), str(resp)[:300])
        log = cold.logtext()
        check("log: control characters in user_id and request_id escaped, no forged line",
              "request r-7\\r\\nFORGED: history of user bad\\n2030-01-01T00:00:00.000Z "
              "error FORGED\\x1b[2J\\u009b: " in log and
              not any(l.startswith(("2030", "FORGED")) for l in log.splitlines()) and
              "\x1b" not in log and "\r" not in log, log[-600:])
        redis_set(redis, f"{prefix}i:13", b"CI" + b"\x00" * (1 << 20))
        st, resp = cold.rank({"user_id": "x", "item_seq": hist,
                              "candidates": [{"item_id": 13}, {"item_id": 8}]})
        check("1 MB item value: unscored, item_features_invalid, others ranked",
              st == 200 and resp.get("unscored") == [13] and len(resp["items"]) == 1 and
              "item_features_invalid" in resp.get("degraded", []), str(resp)[:300])

        print("poisoned items")
        redis_set(redis, f"{prefix}i:14", item_value([1, 2], [3e38] * 12))
        st, resp = cold.rank({"user_id": "x", "item_seq": hist,
                              "candidates": [{"item_id": 14}, {"item_id": 8}]})
        check("overflowing item (3e38) as a candidate: unscored, never null",
              st == 200 and resp.get("unscored") == [14] and no_null(resp) and
              "item_features_invalid" in resp.get("degraded", []), str(resp)[:300])
        st, resp = cold.rank({"user_id": "x", "item_seq": hist + [14],
                              "candidates": [{"item_id": 8}, {"item_id": 9}]})
        check("overflowing item in the history: dropped (history_item_invalid), all scored",
              st == 200 and len(resp["items"]) == 2 and no_null(resp) and
              "history_item_invalid" in resp.get("degraded", []), str(resp)[:300])
        redis_set(redis, f"{prefix}i:15", item_value([1, 2], [1e15] * 12))
        st, resp = cold.rank({"user_id": "x", "item_seq": hist + [15],
                              "candidates": [{"item_id": 8}, {"item_id": 9}]})
        check("finite vector that poisons the attention: dropped from the history, all scored",
              st == 200 and len(resp["items"]) == 2 and no_null(resp) and
              "history_item_invalid" in resp.get("degraded", []), str(resp)[:300])
        st, resp = cold.rank({"user_id": "x", "item_seq": hist,
                              "candidates": [{"item_id": 15}, {"item_id": 8}]})
        check("candidate whose score overflows: unscored non_finite, never null",
              st == 200 and no_null(resp) and (resp.get("unscored") == [15] and
                                               "non_finite" in resp.get("degraded", [])
                                               or len(resp["items"]) == 2), str(resp)[:300])
        bad_items = os.path.join(tmp, "bad_items.jsonl")
        with open(bad_items, "w") as f:
            f.write(json.dumps({"item_id": 16, "item_tags": [1], "item_emb_d128": [3e38] * 12}) + "\n")
        r = subprocess.run([os.environ.get("CTR_BUILD", "build/release") + "/ctr-load", "--redis",
                            f"127.0.0.1:{redis.port}", "--prefix", prefix, "--items", bad_items,
                            "--model", model], capture_output=True, text=True, timeout=60)
        check("ctr-load refuses an item whose vector overflows", r.returncode == 1 and
              "overflows" in r.stderr, r.stderr[-300:])
        load(redis, prefix)
        cold.stop()
        servers.remove(cold)

        print("protocol")
        ok_body = {"user_id": "u3", "candidates": [{"item_id": 8}]}
        body = json.dumps(ok_body).encode()
        out, closed = raw(srv.port, b"POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
                          b"Content-Length: 3\r\n\r\n" % len(body) + body)
        check("two Content-Length headers: 400, connection closed",
              status_of(out) == 400 and closed, out[:200])
        out, closed = raw(srv.port, b"POST /v1/rank HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, "
                          b"chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        check("Transfer-Encoding gzip, chunked: 400 at once, closed", status_of(out) == 400 and closed)
        t0 = time.time()
        out, closed = raw(srv.port, b"POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                          b"\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc")
        check("chunk of 2^64-1 bytes: 411 at once, closed", status_of(out) == 411 and closed and
              body_of(out).get("error", {}).get("code") == "length_required" and time.time() - t0 < 0.9,
              out[:200])
        out, _ = raw(srv.port, post({"user_id": "u", "candidates": [], "item_seq": [1] * 1001}))
        check("item_seq over max_seq: 422 out_of_range", status_of(out) == 422 and
              body_of(out)["error"]["code"] == "out_of_range", out[:200])
        big = b'{"user_id": "' + b"x" * 70000 + b'"}'
        out, _ = raw(srv.port, post(big))  # the whole body is sent before reading
        check("too-large body sent whole before reading: the 413 arrives",
              status_of(out) == 413, out[:120])
        out, closed = raw(srv.port, b"POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n"
                          b"Expect: 100-continue\r\n\r\n")
        check("too-large body with Expect: 100-continue: 413 at once", status_of(out) == 413 and closed)
        out, _ = raw(srv.port, post(ok_body, b"X-Request-Timeout-Ms: soon\r\n"))
        check("bad X-Request-Timeout-Ms: 400", status_of(out) == 400)
        out, _ = raw(srv.port, post(dict(ok_body, deadline_ms=0)))
        check("deadline_ms 0: 400", status_of(out) == 400)
        # A header deadline that a slow build meets too (what a short one
        # does is the deadline_ms 1 check's).
        out, _ = raw(srv.port, post(ok_body, b"X-Request-Timeout-Ms: 900\r\n"))
        check("X-Request-Timeout-Ms 900: answered 200", status_of(out) == 200 and no_null(body_of(out)),
              out[:300])
        st, resp = srv.rank(dict(ok_body, deadline_ms=1, item_seq=[]))
        check("deadline_ms 1: on time with what is there (200 degraded, or 503 deadline_exceeded)",
              (st == 200 and no_null(resp)) or
              (st == 503 and error_code(resp) in ("deadline_exceeded", "overloaded")), f"{st} {resp}")
        check("still alive", srv.proc.poll() is None)

        print("overload beyond the admission bound")
        ov = Server(model, redis, prefix, ["--max-pending", "2", "--cache-mb", "0",
                                           "--max-candidates", "64"], threads=1)
        servers.append(ov)
        heavy = post({"user_id": "u3", "candidates": [{"item_id": i} for i in cand_ids] * 2,
                      "item_seq": cand_ids})
        socks = [socket.create_connection(("127.0.0.1", ov.port), timeout=10) for _ in range(40)]
        for s in socks:
            s.sendall(heavy)
        outs = []
        for s in socks:
            data = b""
            try:
                while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < \
                        int(data.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0]):
                    d = s.recv(65536)
                    if not d:
                        break
                    data += d
            except (OSError, IndexError, ValueError):
                pass
            outs.append(data)
            s.close()
        sts = [status_of(o) for o in outs]
        shed = [o for o in outs if status_of(o) == 503]
        check(f"some admitted (200: {sts.count(200)}), the rest 503 ({len(shed)})",
              sts.count(200) >= 2 and len(shed) >= 1 and sts.count(200) + len(shed) == 40, str(sts))
        check("503s say overloaded, with Retry-After",
              all(body_of(o).get("error", {}).get("code") == "overloaded" and b"Retry-After: 1" in o
                  for o in shed), str(shed[:1])[:300])
        check("shed requests counted", ov.metric('ctr_requests_shed_total{reason="admission"}') >= 1)
        ov.stop()
        servers.remove(ov)

        print("2,000 idle + 200 trickling connections")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4096 and hard >= 4096:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(2000)]
        trick = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(200)]
        for s in trick:
            s.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: t\r\n")
        t0 = time.time()
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        c.request("GET", "/healthz")
        check("a new client is answered", c.getresponse().status == 200)
        c.close()
        st, resp = srv.rank(ok_body)
        check("and ranked", st == 200 and no_null(resp))
        # Keep trickling a header line every 300 ms: the receive deadline
        # (1 s) must still cut them.
        cut = 0
        end = time.time() + 3.0
        alive = list(trick)
        while alive and time.time() < end:
            time.sleep(0.3)
            for s in list(alive):
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    alive.remove(s)
                    cut += 1
        for s in alive:  # a cut shows as EOF on read too
            s.settimeout(0.5)
            try:
                if s.recv(100) == b"":
                    cut += 1
            except OSError:
                cut += 1
        check(f"trickling connections cut by the receive deadline ({cut} of 200)", cut == 200)
        check("cuts counted", srv.metric("ctr_connections_cut_total") >= 200)
        # After breakers, sheds, cuts and a feature set gone and back.
        ok, said = promtool_check_metrics(srv)
        check("promtool check metrics: nothing to report", ok, said)
        for s in idle + trick:
            s.close()

        print("per-address limit")
        lim = Server(model, redis, prefix, ["--max-connections-per-ip", "3", "--request-timeout-s", "1",
                                            "--receive-timeout-ms", "500"])
        servers.append(lim)
        # Three connections, each proven accepted by an answer (kept alive);
        # the server may still be closing the ones its start-up probes used,
        # so hold on until three are in.
        held = []
        end = time.time() + 5
        while len(held) < 3 and time.time() < end:
            h = socket.create_connection(("127.0.0.1", lim.port), timeout=5)
            try:
                h.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                if status_of(h.recv(4096)) == 200:
                    held.append(h)
                    continue
            except OSError:
                pass
            h.close()
            time.sleep(0.05)
        out, closed = raw(lim.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        check("a 4th connection from one address is closed unanswered", closed and not out)
        for s in held:
            s.close()
        check("below the limit again: answered",
              wait_for(lambda: status_of(raw(lim.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
                                                       b"Connection: close\r\n\r\n")[0]) == 200, 10))
        # A keep-alive connection that trickles its next request line, a
        # byte at a time (each byte resets the idle timer): cut within the
        # idle timeout (1 s) plus the receive deadline (0.5 s).
        ka = socket.create_connection(("127.0.0.1", lim.port), timeout=5)
        ka.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        first = ka.recv(4096)
        t0, closed = time.time(), False
        for ch in b"GET /healthz HTTP/1.1\r\nHost: t\r\n":
            time.sleep(0.3)
            try:
                ka.sendall(bytes([ch]))
            except OSError:
                closed = True
                break
            if time.time() - t0 > 5:
                break
        if not closed:
            ka.settimeout(1)
            try:
                closed = ka.recv(100) == b""
            except OSError:
                closed = True
        check("keep-alive connection trickling its next request: cut",
              status_of(first) == 200 and closed and time.time() - t0 < 4, f"{time.time() - t0:.1f} s")
        ka.close()
        lim.stop()
        servers.remove(lim)
        check("server stops cleanly", srv.stop() == 0, srv.logtext()[-1500:])
        servers.remove(srv)
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.stop(signal.SIGKILL, 5)
        if redis.proc:
            redis.proc.send_signal(signal.SIGCONT)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if check.failed and servers:
        print(servers[0].logtext()[-3000:])
    print(f"test_faults: {check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
