#!/usr/bin/python3
"""Fresh features through ctr-server on the golden "small" QIN, against
real redis-servers and the real Redis Cluster ($CTR_CLUSTER_SEEDS):

  appends   a behaviour appended (FCALL ctr_append) changes the very next
            ranking exactly as ctr-score scores it with that history;
            ctr-load --events appends in file order; histories written
            before the change (version 1, as older ctr-loads wrote them)
            and after (version 2, and appended to past max_seq) are read
            alike, on one Redis and on the cluster;
  history cache  a user ranked again is answered from the server's
            history cache (no Redis read: its hit counter moves), a SET by
            another client is scored at the very next request, and with the
            invalidation link killed (CLIENT KILL) answers stay right while
            the cache is bypassed, then it caches again;
  changes   an item rewritten by ctr-load --items is scored with its new
            features within the health interval (plus the check's time);
            a stream trimmed past what the server read, or deleted while the
            marker names more, drops the model's whole cache; a Redis
            restarted empty and loaded anew drops it too.

Run by tests/integration/test_fresh_server.sh with CTR_BUILD, CTR_GOLDEN,
CTR_CLUSTER_SEEDS, PYTHON.  Only loopback traffic; every wait is bounded."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fixture import BUILD, SMALL, Checks, Redis, Server, wait_for  # noqa: E402
from resp import Cluster, Conn  # noqa: E402

check = Checks()
MODEL = f"{SMALL}/model.safetensors"
HEALTH_MS = 200
TOL = 1e-6
# The change must show within a health interval and 100 ms (the figure
# bench/fresh.py measures); sanitizer builds run the server several times
# slower, so they get 500 ms of slack instead.
SLACK_MS = 100 if os.path.basename(BUILD.rstrip("/")) == "release" else 500


def ctr_load(target, prefix, *args):
    """ctr-load; target: ["--redis", addr] or ["--redis-cluster", seeds]."""
    r = subprocess.run([f"{BUILD}/ctr-load", *target, "--prefix", prefix, *args],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def ctr_score(users, requests):
    """Scores of requests (dicts) with histories `users` {user_id: seq}."""
    tmp = tempfile.mkdtemp(prefix="ctr-fresh-score-")
    try:
        uf = os.path.join(tmp, "users.jsonl")
        with open(uf, "w") as f:
            for u, seq in users.items():
                f.write(json.dumps({"user_id": u, "item_seq": seq}) + "\n")
        r = subprocess.run([f"{BUILD}/ctr-score", "--model", MODEL, "--items",
                            f"{SMALL}/items.jsonl", "--users", uf],
                           input="".join(json.dumps(q) + "\n" for q in requests),
                           capture_output=True, text=True, timeout=60)
        return [json.loads(l)["scores"] for l in r.stdout.splitlines()] if r.returncode == 0 else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def scores_of(ans, req):
    got = {it["item_id"]: it["score"] for it in ans.get("items", [])}
    return [got.get(c["item_id"]) for c in req["candidates"]]


def same(a, b):
    return len(a) == len(b) and all(x is not None and abs(x - y) < TOL for x, y in zip(a, b))


def v1(ids):
    return struct.pack("<2sBBI", b"CU", 1, 0, len(ids)) + struct.pack(f"<{len(ids)}i", *ids)


def appends(name, target, call, srv, prefix, items):
    """call(*args): a command on the Redis (routing by key on a cluster)."""
    cand = [{"item_id": i, "a": k % 5, "b": k % 7} for k, i in enumerate(items[:6])]
    # The very next request after an append uses it: a new user, one
    # behaviour at a time, checked against ctr-score with that history.
    hist, ok, detail = [], True, ""
    user = f"fresh-{os.getpid()}"
    steps, answers = [], []
    for step, item in enumerate(items[6:14]):
        held = call("FCALL", "ctr_append", 1, f"{prefix}u:{user}", item)
        hist.append(item)
        req = {"user_id": user, "candidates": cand}
        st, ans = srv.rank(req)
        if held != len(hist) or st != 200 or ans.get("degraded"):
            ok, detail = False, f"step {step}: held {held}, {st} {ans}"
            break
        steps.append(list(hist))
        answers.append(scores_of(ans, req))
    # ctr-score once, each step's history under a user of its own.
    want = ctr_score({f"step{k}": h for k, h in enumerate(steps)},
                     [{"user_id": f"step{k}", "candidates": cand} for k in range(len(steps))])
    for k, got in enumerate(answers):
        if ok and (len(want) <= k or not same(got, want[k])):
            ok, detail = False, f"step {k}: {got} vs ctr-score {want[k] if k < len(want) else None}"
    check(f"{name}: each append changes the next ranking as ctr-score scores that history",
          ok and len(answers) == 8, detail)
    check(f"{name}: ... and it did change (the rankings differ)",
          len(set(json.dumps(a) for a in answers)) > 1)

    # ctr-load --events, in file order (a user's events across batches).
    ev = os.path.join(tempfile.gettempdir(), f"ctr-fresh-events-{os.getpid()}.jsonl")
    evuser = f"ev-{os.getpid()}"
    seq = [items[(7 * k) % len(items)] for k in range(40)]
    with open(ev, "w") as f:
        for k, i in enumerate(seq):
            if k % 5 == 4:
                f.write(json.dumps({"user_id": evuser, "item_seq": [i, seq[(k + 1) % 40]]}) + "\n")
            elif k % 5 != 0:
                f.write(json.dumps({"user_id": evuser, "item_id": i}) + "\n")
            else:
                f.write(json.dumps({"user_id": f"other-{k}", "item_id": i}) + "\n")
    want_seq = []
    for k, i in enumerate(seq):
        if k % 5 == 4:
            want_seq += [i, seq[(k + 1) % 40]]
        elif k % 5 != 0:
            want_seq.append(i)
    rc, out = ctr_load(target, prefix, "--events", ev, "--batch", "7", "--max-seq", "20")
    os.unlink(ev)
    check(f"{name}: ctr-load --events ran", rc == 0 and f"events_appended={len(want_seq) + 8}"
          in out, out)
    val = call("GET", f"{prefix}u:{evuser}")
    got = list(struct.unpack_from(f"<{(len(val) - 8) // 4}i", val, 8)) if val else []
    check(f"{name}: --events appended in file order, cut to --max-seq 20 (+ a quarter)",
          val[:3] == b"CU\x02" and struct.unpack_from("<I", val, 4)[0] == 20 and
          got == want_seq[-len(got):] and 20 <= len(got) <= 25, f"{got} vs {want_seq}")
    req = {"user_id": evuser, "candidates": cand}
    st, ans = srv.rank(req)
    want = ctr_score({evuser: want_seq}, [req])
    check(f"{name}: ... and ranks as ctr-score with the whole sequence (the model's last "
          f"max_len of it)", st == 200 and want and same(scores_of(ans, req), want[0]),
          f"{ans} vs {want}")

    # Written before the change (version 1) and after (version 2): alike.
    old_user, new_user = f"v1-{os.getpid()}", f"v2-{os.getpid()}"
    h = [items[k] for k in (3, 9, 1, 12)]
    call("SET", f"{prefix}u:{old_user}", v1(h))
    call("DEL", f"{prefix}u:{new_user}")
    call("FCALL", "ctr_append", 1, f"{prefix}u:{new_user}", *h)
    r_old = {"user_id": old_user, "candidates": cand}
    r_new = {"user_id": new_user, "candidates": cand}
    s_old, a_old = srv.rank(r_old)
    s_new, a_new = srv.rank(r_new)
    want = ctr_score({old_user: h, new_user: h}, [r_old, r_new])
    check(f"{name}: a version 1 and a version 2 history of the same ids rank alike, as "
          f"ctr-score", s_old == s_new == 200 and len(want) == 2 and
          same(scores_of(a_old, r_old), want[0]) and same(scores_of(a_new, r_new), want[1]),
          f"{a_old} {a_new} {want}")
    call("FCALL", "ctr_append", 1, f"{prefix}u:{old_user}", items[5])
    s_old, a_old = srv.rank(r_old)
    want = ctr_score({old_user: h + [items[5]]}, [r_old])
    check(f"{name}: a version 1 history appended to reads on", s_old == 200 and want and
          same(scores_of(a_old, r_old), want[0]), f"{a_old} {want}")


def item_lines():
    with open(f"{SMALL}/items.jsonl") as f:
        return [json.loads(l) for l in f if l.strip()]


def changes(redis, srv, prefix, tmp):
    """Item changes: within the health interval; drops when behind."""
    target = ["--redis", f"127.0.0.1:{redis.port}"]
    its = item_lines()
    it = its[2]
    req = {"user_id": "u3", "candidates": [{"item_id": it["item_id"], "a": 1},
                                           {"item_id": its[3]["item_id"]}]}
    st, before = srv.rank(req)
    check("changes: the item is scored (and cached)", st == 200 and
          srv.metric("ctr_item_cache_entries") > 0, str(before))
    # New features for it, by ctr-load into the loaded prefix.
    changed = dict(it, item_emb_d128=[x * 0.25 - 0.3 for x in it["item_emb_d128"]])
    path = os.path.join(tmp, "changed.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps(changed) + "\n")
    applied0 = srv.metric("ctr_item_changes_applied_total")
    rc, out = ctr_load(target, prefix, "--items", path, "--model", MODEL)
    t_loaded = time.time()
    check("changes: ctr-load recorded the change", rc == 0 and "item_changes=" in out and
          "item_changes=0" not in out, out)
    items_all = [changed if x["item_id"] == it["item_id"] else x for x in its]
    ipath = os.path.join(tmp, "items_changed.jsonl")
    with open(ipath, "w") as f:
        for x in items_all:
            f.write(json.dumps(x) + "\n")
    users = {}
    with open(f"{SMALL}/users.jsonl") as f:
        for l in f:
            u = json.loads(l)
            users[str(u["user_id"])] = u["item_seq"]
    r = subprocess.run([f"{BUILD}/ctr-score", "--model", MODEL, "--items", ipath, "--users",
                        f"{SMALL}/users.jsonl"], input=json.dumps(req) + "\n",
                       capture_output=True, text=True, timeout=60)
    want = json.loads(r.stdout)["scores"] if r.returncode == 0 else None
    seen_at = None
    while time.time() - t_loaded < 5:
        st, ans = srv.rank(req)
        if st == 200 and want and same(scores_of(ans, req), want):
            seen_at = time.time()
            break
        time.sleep(0.005)
    lag = (seen_at - t_loaded) * 1000 if seen_at else None
    check(f"changes: scored with the new features {lag and round(lag)} ms after ctr-load "
          f"(within health_interval_ms {HEALTH_MS} + {SLACK_MS})", lag is not None and
          lag <= HEALTH_MS + SLACK_MS, f"{before} -> want {want}")
    check("changes: exactly that vector dropped",
          srv.metric("ctr_item_changes_applied_total") == applied0 + 1 and
          srv.metric("ctr_item_cache_drops_total") == 0)

    # The stream trimmed past what the server read: the whole cache.
    srv.rank(req)
    key = f"{prefix}item-changes"
    drops0 = srv.metric("ctr_item_cache_drops_total")
    # Freeze the server's view: record many changes in one go and trim them
    # before a health check can read them (its reads are every 200 ms; the
    # records and the trim are one MULTI).
    tail = " ".join(str(its[5]["item_id"]) for _ in range(3))
    cmds = "MULTI\n" + "".join(
        f"FCALL ctr_item_changes 1 {key} 1000 0 {tail}\n" for _ in range(20)) + \
        f"XTRIM {key} MAXLEN 2\nEXEC\n"
    subprocess.run(["redis-cli", "-p", str(redis.port)], input=cmds, capture_output=True,
                   text=True, timeout=10)
    check("changes: a trimmed stream drops the whole cache",
          wait_for(lambda: srv.metric("ctr_item_cache_drops_total") == drops0 + 1, 5) and
          "item-change records were trimmed" in srv.logtext(), srv.logtext()[-600:])
    st, ans = srv.rank(req)
    check("changes: ... and ranks on, from Redis", st == 200 and not ans.get("degraded"),
          str(ans))

    # The stream deleted while the marker names more: the cache again.
    srv.rank(req)
    drops0 = srv.metric("ctr_item_cache_drops_total")
    meta = json.loads(redis.cli("GET", f"{prefix}meta"))
    last = redis.cli("XREVRANGE", key, "+", "-", "COUNT", "1").split("\n")
    meta["item_changes"] = int(last[last.index("gen") + 1]) + 5   # later than the stream's
    redis.cli("DEL", key)
    redis.cli("SET", f"{prefix}meta", json.dumps(meta))
    check("changes: a marker ahead of the stream drops the whole cache",
          wait_for(lambda: srv.metric("ctr_item_cache_drops_total") == drops0 + 1, 5) and
          "no longer holds" in srv.logtext(), srv.logtext()[-600:])

    # Redis restarted empty and loaded anew: the cache too.
    srv.rank(req)
    drops0 = srv.metric("ctr_item_cache_drops_total")
    redis.cli("FLUSHALL")
    check("changes: marker gone, the server says so",
          wait_for(lambda: srv.metric("ctr_feature_set_ready") == 0, 5))
    rc, out = ctr_load(target, prefix, "--items", f"{SMALL}/items.jsonl", "--users",
                       f"{SMALL}/users.jsonl", "--model", MODEL)
    check("changes: a feature set loaded anew drops the whole cache",
          rc == 0 and wait_for(lambda: srv.metric("ctr_item_cache_drops_total") == drops0 + 1,
                               5) and "loaded anew" in srv.logtext(), out)


def history_cache(srv, call, prefix, items):
    """The history cache of a server on one Redis (call: a command on it)."""
    cand = [{"item_id": i, "a": k % 5, "b": k % 7} for k, i in enumerate(items[:6])]
    user = f"cached-{os.getpid()}"
    key = f"{prefix}u:{user}"

    def answer(hist):
        """The server's scores for user, and with hist given in the request."""
        req = {"user_id": user, "candidates": cand}
        st, ans = srv.rank(req)
        st2, ref = srv.rank({**req, "item_seq": hist})
        ok = st == 200 and st2 == 200 and not ans.get("degraded")
        return ok and same(scores_of(ans, req), scores_of(ref, req)), ans

    def cached(hist):
        """Ranks until one answer comes from the cache (at most 50)."""
        for _ in range(50):
            hits = srv.metric("ctr_history_cache_hits_total")
            ok, _ = answer(hist)
            if not ok:
                return False
            if srv.metric("ctr_history_cache_hits_total") > hits:
                return True
            time.sleep(0.01)
        return False

    check("history cache: its link is up",
          wait_for(lambda: srv.metric("ctr_history_cache_up") == 1, 10))
    hist = items[6:10]
    call("SET", key, v1(hist))
    check("history cache: a user ranked again is answered from it", cached(hist))
    ok = True
    for step in range(10):   # another client's SET, seen at the very next request
        hist = items[6 + step % 5:12 + step % 3]
        call("SET", key, v1(hist))
        ok = ok and answer(hist)[0] and cached(hist)
    check("history cache: each SET by another client is scored at the very next request", ok)
    flushes = srv.metric("ctr_history_cache_flushes_total")
    check("history cache: CLIENT KILL of its link", call("CLIENT", "KILL", "TYPE", "pubsub") >= 1)
    hist = items[8:14]
    call("SET", key, v1(hist))
    check("history cache: answers right while its link is down",
          all(answer(hist)[0] for _ in range(5)))
    check("history cache: emptied, and up again",
          wait_for(lambda: srv.metric("ctr_history_cache_flushes_total") > flushes and
                   srv.metric("ctr_history_cache_up") == 1, 10))
    check("history cache: caching again", cached(hist))


def main():
    tmp = tempfile.mkdtemp(prefix="ctr-fresh-server-")
    redis = Redis(tmp)
    redis.start()
    servers = []
    conns = []
    try:
        prefix = f"fs{os.getpid()}:"
        rc, out = ctr_load(["--redis", f"127.0.0.1:{redis.port}"], prefix, "--items",
                           f"{SMALL}/items.jsonl", "--users", f"{SMALL}/users.jsonl", "--model",
                           MODEL)
        check("ctr-load (loads the library too)", rc == 0, out)
        check("the library is loaded", redis.cli("FCALL_RO", "ctr_version", "0") == "1")
        items = [x["item_id"] for x in item_lines()]
        srv = Server(MODEL, redis, prefix, ["--health-interval-ms", str(HEALTH_MS),
                                            "--deadline-ms", "1000"])
        servers.append(srv)
        c = Conn("127.0.0.1", redis.port)
        conns.append(c)
        print("appends, one Redis")
        appends("one Redis", ["--redis", f"127.0.0.1:{redis.port}"], c.call, srv, prefix, items)
        print("history cache, one Redis")
        history_cache(srv, c.call, prefix, items)
        print("item changes")
        changes(redis, srv, prefix, tmp)
        srv.stop()

        seeds = os.environ.get("CTR_CLUSTER_SEEDS")
        if seeds:
            print("appends, Redis Cluster")
            cp = f"fc{os.getpid()}:"
            rc, out = ctr_load(["--redis-cluster", seeds], cp, "--items",
                               f"{SMALL}/items.jsonl", "--users", f"{SMALL}/users.jsonl",
                               "--model", MODEL)
            check("cluster: ctr-load (the library on every master)", rc == 0, out)
            cl = Cluster(seeds)
            conns.append(cl)
            check("cluster: every master has the library",
                  all(cl.conn(m).call("FCALL_RO", "ctr_version", 0) == 1 for m in cl.masters()))
            csrv = Server(MODEL, redis, cp, ["--redis-cluster", seeds, "--health-interval-ms",
                                             str(HEALTH_MS), "--deadline-ms", "1000"])
            servers.append(csrv)
            appends("Redis Cluster", ["--redis-cluster", seeds], cl.call, csrv, cp, items)
            csrv.stop()
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.stop()
        for c in conns:
            c.close()
        redis.stop()
        if check.failed:
            for s in servers:
                print(s.logtext()[-2500:])
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"test_fresh_server: {check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
