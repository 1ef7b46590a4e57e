#!/usr/bin/python3
"""ctr-server behind a proxy that sends Redis one reply no command asked for.

A proxy (in this process) forwards ctr-server's connection to a real
redis-server and, when told, sends one extra reply (a copy of the last one,
so a plausible item value) after the replies of the next pipeline that reads
items: in the same write, or 50 ms later.  Without the feature store's
checks every later read on that connection takes the reply of the read
before: wrong item vectors, silently, and cached.  Here, for 37
single-candidate requests (one per stored item, history in the request, so
every read is an item read), compared with a server on the real Redis:

  - no answer carries a score that differs from the reference: the request
    whose pipeline had the extra reply is degraded (item_features_unavailable)
    or 503 unavailable (its only item could not be read), every other one is
    the reference (waiting out the breaker that failure opened);
  - ctr_redis_desync_total counts the dropped connection, and the log says
    "out of step";
  - once the breaker has let go, every answer equals the reference, not
    degraded: nothing read out of step went into the item cache;
  - the extra reply 50 ms later (found on the idle connection before the
    next read) costs a new connection and no answer.

Run by tests/integration/test_redis_desync.sh with CTR_BUILD, CTR_GOLDEN,
PYTHON.  Loopback only; every wait is bounded.  About 5 s."""
import json
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture import SMALL, Checks, Redis, Server, load, wait_for  # noqa: E402

check = Checks()


def resp_end(buf, i=0):
    """End offset of the complete RESP value starting at buf[i], or None."""
    nl = buf.find(b"\r\n", i)
    if nl < 0:
        return None
    kind = buf[i:i + 1]
    if kind in (b"+", b"-", b":"):
        return nl + 2
    n = int(buf[i + 1:nl])
    if kind == b"$":
        end = nl + 2 + (n + 2 if n >= 0 else 0)
        return end if end <= len(buf) else None
    j = nl + 2
    for _ in range(max(n, 0)):
        j = resp_end(buf, j)
        if j is None:
            return None
    return j


def command_args(cmd):
    """The arguments of one complete RESP command (an array of bulk strings)."""
    args, j = [], cmd.find(b"\r\n") + 2
    while j < len(cmd):
        nl = cmd.find(b"\r\n", j)
        n = int(cmd[j + 1:nl])
        args.append(cmd[nl + 2:nl + 2 + n])
        j = nl + 2 + n + 2
    return args


class Link:
    """One client connection and its upstream, with the pipeline counts."""

    def __init__(self, client, upstream):
        self.client, self.upstream = client, upstream
        self.cmd_buf, self.rep_buf = b"", b""
        self.commands = self.replies = 0
        self.item_read = False   # the pipeline in flight reads an item


class Proxy:
    """Forwards to Redis; inject(delay) makes it send one extra reply after
    the next item-reading pipeline's replies."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.armed = None        # delay in seconds, when armed
        self.injected = 0
        self.stopped = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def inject(self, delay=0.0):
        with self.lock:
            self.armed = delay

    def injections(self):
        with self.lock:
            return self.injected

    def stop(self):
        self.stopped = True
        self.thread.join(5)
        self.lsock.close()

    def run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.lsock, selectors.EVENT_READ)
        links, later = {}, []
        while not self.stopped:
            for key, _ in sel.select(0.005):
                s = key.fileobj
                if s is self.lsock:
                    c, _ = s.accept()
                    u = socket.create_connection(("127.0.0.1", self.upstream_port))
                    link = Link(c, u)
                    links[c] = links[u] = link
                    sel.register(c, selectors.EVENT_READ)
                    sel.register(u, selectors.EVENT_READ)
                    continue
                link = links[s]
                try:
                    data = s.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    for x in (link.client, link.upstream):
                        sel.unregister(x)
                        links.pop(x, None)
                        x.close()
                    continue
                if s is link.client:
                    link.upstream.sendall(data)
                    self.count_commands(link, data)
                else:
                    self.forward_replies(link, data, later)
            now = time.time()
            for item in [x for x in later if x[0] <= now]:
                later.remove(item)
                try:
                    item[1].sendall(item[2])
                except OSError:
                    pass
        for s in set(links):
            s.close()

    @staticmethod
    def count_commands(link, data):
        link.cmd_buf += data
        while True:
            end = resp_end(link.cmd_buf)
            if end is None:
                return
            args = command_args(link.cmd_buf[:end])
            link.cmd_buf = link.cmd_buf[end:]
            link.commands += 1
            if len(args) > 1 and args[0].upper() == b"GETRANGE" and b"i:" in args[1]:
                link.item_read = True

    def forward_replies(self, link, data, later):
        link.rep_buf += data
        out, last = b"", b""
        while True:
            end = resp_end(link.rep_buf)
            if end is None:
                break
            last = link.rep_buf[:end]
            out += last
            link.rep_buf = link.rep_buf[end:]
            link.replies += 1
        if out and link.replies == link.commands and link.item_read:
            link.item_read = False
            with self.lock:
                delay, self.armed = self.armed, None
                if delay is not None:
                    self.injected += 1
            if delay == 0:
                out += last
            elif delay is not None:
                later.append((time.time() + delay, link.client, last))
        if out:
            link.client.sendall(out)


class Upstream:
    """What Server needs of a Redis: its port (here the proxy's)."""

    def __init__(self, port):
        self.port = port


def scores(resp):
    return {it["item_id"]: it["score"] for it in resp.get("items", [])}


def same(a, b):
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(b[k])) for k in a)


def rank_all(srv, reqs, want, label, pause=0.0):
    """Every request once: (wrong answers, clean ones, degraded or 503
    unavailable ones).  Wrong: a score that is not the reference's, or an
    answer that is neither clean nor degraded for an unreadable item.
    pause: seconds to wait after an answer that is not clean (the breaker
    the failure opened lets go), so that the next request reads again."""
    wrong, clean, down = [], 0, 0
    for r, w in zip(reqs, want):
        st, resp = srv.rank(r)
        if st == 200 and not resp.get("degraded"):
            clean += 1
            if not same(scores(resp), w):
                wrong.append((r["candidates"][0]["item_id"], scores(resp), w))
        elif st == 200 and set(resp["degraded"]) <= {"item_features_unavailable"} or \
                st == 503 and resp.get("error", {}).get("code") == "unavailable":
            down += 1
            time.sleep(pause)
        else:
            wrong.append((r["candidates"][0]["item_id"], st, resp))
    print(f"  {label}: {clean} clean, {down} degraded or 503 unavailable, {len(wrong)} wrong")
    return wrong, clean, down


def main():
    tmp = tempfile.mkdtemp(prefix="ctr-desync-")
    redis = Redis(tmp)
    redis.start()
    prefix = f"d{os.getpid()}:"
    load(redis, prefix)
    with open(f"{SMALL}/items.jsonl") as f:
        items = [json.loads(line)["item_id"] for line in f if line.strip()]
    reqs = [{"user_id": "d", "item_seq": [],
             "candidates": [{"item_id": i, "a": 1, "b": 1, "c": 1}]} for i in items]
    model = os.path.join(SMALL, "model.safetensors")
    # Deadlines far from what is tested: sanitizer builds on a busy machine.
    slack = ["--deadline-ms", "2000", "--redis-timeout-ms", "1000"]
    proxy = Proxy(redis.port)
    servers = []
    try:
        ref = Server(model, redis, prefix, slack, threads=1)
        servers.append(ref)
        srv = Server(model, Upstream(proxy.port), prefix,
                     slack + ["--redis-breaker-max-ms", "200"], threads=1)
        servers.append(srv)
        want = []
        for r in reqs:
            st, resp = ref.rank(r)
            want.append(scores(resp) if st == 200 and not resp.get("degraded") else None)
        check(f"reference: {len(reqs)} single-candidate answers, none degraded",
              len(reqs) >= 30 and all(w is not None for w in want))

        print("one extra reply, with a pipeline's replies")
        proxy.inject(0.0)
        wrong, clean, down = rank_all(srv, reqs, want, "cold cache", pause=0.3)
        check("the proxy sent one extra reply", proxy.injections() == 1)
        check("no answer differs from the reference", not wrong, str(wrong[:3])[:600])
        check("the request whose pipeline had it answered without it (degraded or 503), "
              "the others the reference", down == 1 and clean == len(reqs) - 1,
              f"{down} degraded, {clean} clean")
        check("ctr_redis_desync_total 1", srv.metric("ctr_redis_desync_total") == 1,
              str(srv.metric("ctr_redis_desync_total")))
        check("the log says the connection was out of step",
              "out of step" in srv.logtext(), srv.logtext()[-800:])
        time.sleep(0.4)  # past the breaker (200 ms x 1.25)
        wrong, clean, down = rank_all(srv, reqs, want, "warm cache")
        check("then every answer the reference, not degraded (nothing wrong was cached)",
              not wrong and clean == len(reqs), str(wrong[:3])[:600])

        print("one extra reply, 50 ms after a pipeline's replies")
        cold = Server(model, Upstream(proxy.port), prefix, slack + ["--cache-mb", "0"], threads=1)
        servers.append(cold)
        proxy.inject(0.05)
        st, resp = cold.rank(reqs[0])
        check("the read it followed: answered", st == 200 and not resp.get("degraded"),
              f"{st} {resp}")
        check("the extra reply was sent", wait_for(lambda: proxy.injections() == 2, 3))
        time.sleep(0.1)
        wrong, clean, down = rank_all(cold, reqs, want, "no cache")
        check("found before the next read: every answer the reference",
              not wrong and clean == len(reqs), str(wrong[:3])[:600])
        check("ctr_redis_desync_total 1", cold.metric("ctr_redis_desync_total") == 1,
              str(cold.metric("ctr_redis_desync_total")))
        for s in servers:
            check(f"server on port {s.port} stops cleanly", s.stop() == 0, s.logtext()[-1500:])
        servers.clear()
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.stop(signal.SIGKILL, 5)
        proxy.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"test_redis_desync: {check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
