#!/usr/bin/python3
"""The impression log end to end, on the golden "small" model and real
redis-servers: every field of a record against the answer it logs; a
100%-sampled load run (bench/loadgen) logged answer for answer; sampling
per model; SIGHUP reopening a rotated file; a Redis Stream sink read with
XREADGROUP; the sink's Redis frozen (SIGSTOP) and then gone: answers keep
coming, on time, every one 200, and the drops are counted; the log catches
up when the sink is back.

Run by tests/integration/test_impressions.sh with CTR_BUILD, CTR_GOLDEN,
PYTHON.  Only loopback traffic; every wait is bounded."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture import BUILD, PY, SMALL, Checks, Redis, Server, load, wait_for  # noqa: E402

check = Checks()
# An answer that waited for a frozen sink would take the sink's timeout, 1 s;
# answers must come well before that (sanitizer builds are slower).
FROZEN_MAX_MS = 500 if os.path.basename(BUILD.rstrip("/")) == "release" else 900


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def loadgen(port, requests, count, conns=4, seconds=60):
    """bench/loadgen closed loop: its LOADGEN line as a dict."""
    r = subprocess.run([f"{BUILD}/bench/loadgen", "--port", str(port), "--conns", str(conns),
                        "--seconds", str(seconds), "--count", str(count), "--requests", requests],
                       capture_output=True, text=True, timeout=seconds + 30)
    line = [l for l in r.stdout.splitlines() if l.startswith("LOADGEN")]
    if not line:
        print(f"  loadgen exit {r.returncode}: {r.stderr.strip()[-2000:]}")
        return {}
    return dict(kv.split("=", 1) for kv in line[0].split()[1:] if "=" in kv)


def rank_200s(srv):
    return srv.metric('ctr_http_requests_total{endpoint="/v1/rank",status="200"}')


def check_record(rec, req, ans, users, max_len, ctx_names, name):
    """One record against its request and answer."""
    ok = [rec["request_id"] == req.get("request_id"),
          rec["user_id"] == req["user_id"] and type(rec["user_id"]) is type(req["user_id"]),
          rec["model"] == {"name": ans["model"]["name"], "version": ans["model"]["version"],
                           "precision": "fp32"},
          rec["top_k"] == req.get("top_k", 0),
          rec["degraded"] == ans["degraded"],
          isinstance(rec["time"], float) and rec["time"] > 1.5e9]
    if "item_seq" in req:
        hist, src = req["item_seq"], "request"
    else:
        hist, src = users.get(str(req["user_id"]), []), "store"
    ok += [rec["history_source"] == src, rec["history"] == hist[-max_len:] if hist else
           rec["history"] == []]
    cands = rec["candidates"]
    ok.append(len(cands) == len(req["candidates"]))
    ranks = sorted(rc["rank"] for rc in cands if rc["rank"] is not None)
    ok.append(ranks == list(range(1, len(ans["items"]) + 1)))
    for c, rc in zip(req["candidates"], cands):
        ok.append(rc["item_id"] == c["item_id"])
        ok += [rc[f] == c.get(f, 0) for f in ctx_names]
        if rc["rank"] is not None:
            it = ans["items"][rc["rank"] - 1]
            ok += [it["item_id"] == rc["item_id"], it["score"] == rc["score"]]
        elif rc["item_id"] in ans.get("unscored", []):
            ok.append(rc["score"] is None)
        else:   # scored, cut by top_k
            ok += [rc["score"] is not None, req.get("top_k", 0) > 0]
    check(f"{name}: record matches its answer", all(ok), json.dumps(rec)[:600])


def main():
    tmp = tempfile.mkdtemp(prefix="ctr-impressions-test-")
    redis = Redis(tmp)
    redis.start()
    sink = Redis(tmp)
    sink.start()
    prefix = f"t{os.getpid()}:"
    load(redis, prefix)
    model = os.path.join(tmp, "model.safetensors")   # replaced by the retrained one
    shutil.copy(f"{SMALL}/model.safetensors", model)
    users = {}
    with open(f"{SMALL}/users.jsonl") as f:
        for l in f:
            u = json.loads(l)
            users[str(u["user_id"])] = u["item_seq"]
    with open(f"{SMALL}/requests.jsonl") as f:
        reqs = [json.loads(l) for l in f if l.strip()]
    log = os.path.join(tmp, "imp.jsonl")
    servers = []
    try:
        srv = Server([f"qin={model}", f"half={model}", f"none={model}"], redis, prefix,
                     ["--impression-log", f"file:{log}", "--impression-sample",
                      "half=0.5,none=0", "--deadline-ms", "2000"])   # nothing shed when busy
        servers.append(srv)
        st, _, body = srv.request("GET", "/v1/models")
        cfg = json.loads(body)["models"][0]["config"]
        max_len = cfg["max_len"]
        ctx_names = [c["name"] for c in cfg["context_fields"]]

        print("records against answers")
        sent = []
        for k, req in enumerate(reqs + [
                {"user_id": "u3", "candidates": [{"item_id": 6}, {"item_id": 2, "a": 1}]},
                {"user_id": "new\nuser\"x", "candidates": [{"item_id": 2}], "item_seq": [1] * 20},
                dict(reqs[9], top_k=3)]):
            req = dict(req, request_id=f"req-{k}")
            st, ans = srv.rank(req)
            check(f"request {k}: 200", st == 200, str(ans)[:300])
            sent.append((req, ans))
        check("a record for every answer",
              wait_for(lambda: srv.metric("ctr_impressions_written_total") >= len(sent), 10))
        recs = {r["request_id"]: r for r in read_jsonl(log)}
        check(f"{len(sent)} records in the file", len(recs) == len(sent), f"{len(recs)}")
        for req, ans in sent:
            rec = recs.get(req["request_id"])
            if rec is None:
                check(f"{req['request_id']}: logged", False)
                continue
            check_record(rec, req, ans, users, max_len, ctx_names, req["request_id"])
        degraded = [r for r in recs.values() if "item_features_missing" in r["degraded"]]
        check("an unscored candidate's record says why", len(degraded) == 1 and
              degraded[0]["candidates"][0]["score"] is None, str(degraded)[:300])

        print("a load run, every answer logged")
        reqfile = os.path.join(tmp, "reqs.jsonl")
        with open(reqfile, "w") as f:
            for r in reqs:
                f.write(json.dumps(r) + "\n")
        lg = loadgen(srv.port, reqfile, 3000)
        check("loadgen: 3000 answers, all 200", int(lg.get("ok", 0)) >= 3000 and
              lg.get("other") == "0" and lg.get("shed") == "0", str(lg))
        # Every rank answer so far was the default model's, sampled at 1.
        # loadgen stops at 3000 answers with up to 4 requests in flight,
        # which the server still answers (and logs) as the client leaves.
        wait_for(lambda: srv.metric("ctr_impressions_written_total") == len(read_jsonl(log)) and
                 srv.metric("ctr_impressions_written_total") >= rank_200s(srv), 20)
        nrec, n200 = len(read_jsonl(log)), rank_200s(srv)
        check("a record for every 200 answer (and for the <= 4 the client left)",
              n200 <= nrec <= n200 + 4 and srv.metric("ctr_impressions_written_total") == nrec,
              f"{nrec} records, {n200} answers")
        after = read_jsonl(log)
        check("nothing dropped", srv.metric("ctr_impressions_dropped_total") == 0)

        print("sampling per model")
        for name in ("half", "none"):
            for k in range(400):
                srv.rank(dict(reqs[k % len(reqs)], model=name, request_id=f"{name}-{k}"))
        srv.request("GET", "/metrics")
        wait_for(lambda: len(read_jsonl(log)) >= len(after) + 100, 10)
        wait_for(lambda: False, 0.5)
        got = read_jsonl(log)[len(after):]
        half = sum(1 for r in got if r["model"]["name"] == "half")
        none = sum(1 for r in got if r["model"]["name"] == "none")
        check(f"half=0.5: {half} of 400 logged (binomial, 5 sd: 144..256)", 144 <= half <= 256)
        check("none=0: nothing logged", none == 0, str(none))

        print("the loop: log -> join -> train -> convert -> reload")
        recs = read_jsonl(log)[:400]   # a small run keeps the training short
        part = os.path.join(tmp, "part.jsonl")
        with open(part, "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        clicks = os.path.join(tmp, "clicks.jsonl")
        with open(clicks, "w") as f:   # the top item of every other answer is clicked
            for k, r in enumerate(recs):
                top = [c for c in r["candidates"] if c["rank"] == 1]
                if top and k % 2 == 0 and r["model"]["name"] == "qin":
                    f.write(json.dumps({"user_id": r["user_id"], "item_id": top[0]["item_id"],
                                        "time": r["time"] + 5}) + "\n")
        rows = os.path.join(tmp, "rows.jsonl")
        j = subprocess.run([PY, "tools/join_impressions.py", "--log", part, "--clicks", clicks,
                            "--model", "qin", "--out", rows], capture_output=True, text=True,
                           timeout=120)
        check("join_impressions ran", j.returncode == 0, j.stderr)
        nrows = len(read_jsonl(rows))
        npos = sum(r["label"] for r in read_jsonl(rows))
        check(f"rows: {nrows}, positives {npos}", nrows > 400 and 0 < npos < nrows, j.stderr)
        nxt = os.path.join(tmp, "next.safetensors")
        t = subprocess.run([PY, "tools/train_rows.py", "--model", model, "--items",
                            f"{SMALL}/items.jsonl", "--rows", rows, "--out", nxt, "--version",
                            "retrained-1", "--epochs", "2"], capture_output=True, text=True,
                           timeout=300)
        check("train_rows ran", t.returncode == 0, t.stderr[-800:])
        print("  " + t.stdout.strip())
        os.replace(nxt, model)
        srv.proc.send_signal(signal.SIGHUP)
        check("the server reloads the retrained model",
              wait_for(lambda: json.loads(srv.request("GET", "/v1/models")[2])["models"][0]
                       ["version"] == "retrained-1", 20), srv.logtext()[-500:])
        st, ans = srv.rank(dict(reqs[1], request_id="after-retrain"))
        check("and serves it", st == 200 and ans["model"]["version"] == "retrained-1", str(ans))
        r = subprocess.run([f"{BUILD}/ctr-score", "--model", model, "--items",
                            f"{SMALL}/items.jsonl", "--users", f"{SMALL}/users.jsonl"],
                           input=json.dumps(reqs[1]) + "\n", capture_output=True, text=True,
                           timeout=60)
        want = json.loads(r.stdout)["scores"] if r.returncode == 0 else []
        got = {it["item_id"]: it["score"] for it in ans.get("items", [])}
        check("its scores are ctr-score's with the new file",
              len(want) == len(reqs[1]["candidates"]) and
              all(abs(got[c["item_id"]] - w) < 1e-6 for c, w in zip(reqs[1]["candidates"], want)),
              f"{want} {got}")
        wait_for(lambda: "reloaded model none" in srv.logtext(), 10)

        print("SIGHUP reopens the file")
        rotated = log + ".1"
        os.rename(log, rotated)
        reloads = srv.logtext().count("reloaded model")
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: srv.logtext().count("reloaded model") >= reloads + 3, 10)
        for k in range(5):
            srv.rank(dict(reqs[k], request_id=f"after-hup-{k}"))
        check("new records go to a new file at the path",
              wait_for(lambda: len(read_jsonl(log)) == 5, 10), str(len(read_jsonl(log))))
        check("the rotated file keeps the old ones",
              not any(r["request_id"].startswith("after-hup") for r in read_jsonl(rotated)
                      if r["request_id"]))
        srv.stop()

        print("Redis Stream sink; frozen, then gone")
        key = f"imp:{os.getpid()}"
        rs = Server(model, redis, prefix,
                    ["--impression-log", f"redis:{key}", "--impression-log-redis",
                     f"127.0.0.1:{sink.port}", "--impression-queue-mb", "1",
                     "--impression-log-maxlen", "100000", "--deadline-ms", "2000"])
        servers.append(rs)
        for k in range(10):
            rs.rank(dict(reqs[k], request_id=f"s-{k}"))
        check("records on the stream", wait_for(lambda: sink.cli("XLEN", key) == "10", 10),
              sink.cli("XLEN", key))
        sink.cli("XGROUP", "CREATE", key, "trainers", "0")
        out = sink.cli("XREADGROUP", "GROUP", "trainers", "c1", "COUNT", "100", "STREAMS", key, ">")
        lines = [l for l in out.splitlines() if l.startswith("{")]
        check("XREADGROUP reads them as JSON records",
              len(lines) == 10 and json.loads(lines[0])["request_id"] == "s-0", out[:300])

        base = loadgen(rs.port, reqfile, 2000)
        sink.proc.send_signal(signal.SIGSTOP)
        try:
            frozen = loadgen(rs.port, reqfile, 6000)
        finally:
            sink.proc.send_signal(signal.SIGCONT)
        print(f"  sink up:     {base}\n  sink frozen: {frozen}")
        check("frozen sink: every answer 200", int(frozen.get("ok", 0)) >= 6000 and
              frozen.get("other") == "0" and frozen.get("errors") == "0", str(frozen))
        # The sink's timeout is 1 s: an answer waiting for it would take that
        # long (the deadline is 2 s, so that a busy machine sheds nothing).
        check(f"frozen sink: no answer waited for it (max < {FROZEN_MAX_MS} ms)",
              float(frozen.get("ok_max", 1e9)) < FROZEN_MAX_MS, str(frozen))
        check("frozen sink: drops counted (queue full)",
              rs.metric('ctr_impressions_dropped_total{reason="queue_full"}') > 0)
        written = rs.metric("ctr_impressions_written_total")
        for k in range(10):
            rs.rank(dict(reqs[k], request_id=f"back-{k}"))
        check("the log catches up when the sink is back",
              wait_for(lambda: rs.metric("ctr_impressions_written_total") > written + 9, 15))
        sink.stop()
        gone = loadgen(rs.port, reqfile, 2000)
        check("sink gone: every answer 200", int(gone.get("ok", 0)) >= 2000 and
              gone.get("other") == "0" and float(gone.get("ok_max", 1e9)) < FROZEN_MAX_MS,
              str(gone))
        check("sink gone: errors and drops counted",
              wait_for(lambda: rs.metric("ctr_impression_log_sink_errors_total") > 0 and
                       rs.metric("ctr_impression_log_up") == 0, 10))
        rc = rs.stop()
        check("shutdown with the sink gone: exit 0, promptly", rc == 0, str(rc))
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.stop(signal.SIGKILL, 5)
        sink.proc.send_signal(signal.SIGCONT) if sink.proc else None
        sink.stop()
        redis.stop()
        if check.failed:
            for s in servers:
                print(s.logtext()[-2000:])
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"test_impressions: {check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
