#!/usr/bin/python3
"""ctr-server end to end, on its own redis-server (which the test stops and
restarts) and the golden "small" model: rankings equal ctr-score's, every
error status from real malformed requests, the item cache, Redis outages,
SIGHUP reloads (corrupt and good), and SIGTERM draining.

Run by tests/integration/test_server.sh with CTR_BUILD, CTR_GOLDEN, PYTHON.
Only loopback traffic; every wait is bounded."""
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture import (BUILD, PY, SMALL, Checks, Redis, Server, error_code, load,  # noqa: E402
                     promtool_check_metrics, wait_for)

TOL = 1e-6

check = Checks()


def main():
    tmp = tempfile.mkdtemp(prefix="ctr-server-test-")
    redis = Redis(tmp)
    redis.start()
    prefix = f"t{os.getpid()}:"
    load(redis, prefix)
    model = os.path.join(tmp, "model.safetensors")
    shutil.copy(f"{SMALL}/model.safetensors", model)

    # ctr-score's scores on the same data: the reference for the server.
    with open(f"{SMALL}/requests.jsonl") as f:
        req_lines = [l for l in f.read().splitlines() if l.strip()]
    r = subprocess.run([f"{BUILD}/ctr-score", "--model", model, "--items", f"{SMALL}/items.jsonl",
                        "--users", f"{SMALL}/users.jsonl"], input="\n".join(req_lines) + "\n",
                       capture_output=True, text=True, timeout=120)
    check("ctr-score ran", r.returncode == 0, r.stderr[-500:])
    expected = [json.loads(l)["scores"] for l in r.stdout.splitlines()]

    srv = Server(model, redis, prefix)
    cold = Server(model, redis, prefix, ["--cache-mb", "0"])
    try:
        print("rank parity with ctr-score")
        worst = 0.0
        ordered = True
        for k, line in enumerate(req_lines):
            req = json.loads(line)
            req["request_id"] = f"req-{k}"
            st, resp = srv.rank(req)
            if st != 200:
                check(f"request {k}: 200", False, f"{st} {resp}")
                continue
            want = expected[k]
            got = {}
            for it in resp["items"]:
                got.setdefault(it["item_id"], []).append(it["score"])
            for i, c in enumerate(req["candidates"]):
                s = got.get(c["item_id"], [])
                if not s:
                    worst = float("inf")
                    continue
                worst = max(worst, min(abs(x - want[i]) for x in s))
            scores = [it["score"] for it in resp["items"]]
            ordered &= scores == sorted(scores, reverse=True)
            ordered &= len(resp["items"]) == len(req["candidates"])
            if resp.get("request_id") != f"req-{k}" or resp.get("degraded") != []:
                check(f"request {k}: request_id echoed, not degraded", False, str(resp)[:300])
        check(f"scores equal ctr-score's (max diff {worst:.2g})", worst <= TOL)
        check("items sorted by score, best first, none lost", ordered)
        big = json.loads(req_lines[-1]) if len(json.loads(req_lines[-1])["candidates"]) > 3 else \
            max((json.loads(l) for l in req_lines), key=lambda q: len(q["candidates"]))
        big["top_k"] = 2
        st, resp = srv.rank(big)
        check("top_k cuts the answer", st == 200 and len(resp["items"]) == 2, str(resp)[:200])
        check("answer names the model", resp.get("model", {}).get("version") == "golden-1")

        print("precision")
        q8 = Server(model, redis, prefix, ["--precision", "int8", "--kernel", "onednn"])
        try:
            st, _, data = q8.request("GET", "/v1/models")
            m = json.loads(data)["models"][0]
            check("int8: /v1/models says precision int8, not exact",
                  st == 200 and m["precision"] == "int8" and m["exact"] is False, data[:300])
            k = m.get("kernel", {})
            check("--kernel onednn: /v1/models says so (set, not planned)",
                  k.get("setting") == "onednn" and "oneDNN" in k.get("largest_layer", "")
                  and k["largest_layer"].endswith("(set)"), data[:600])
            check("int8: /metrics has ctr_model_kernel with the ISA",
                  q8.metric('ctr_model_kernel{isa="%s"' % k.get("cpu_isa", "?")) == 1)
            st, _, data = srv.request("GET", "/v1/models")
            m = json.loads(data)["models"][0]
            check("default: /v1/models says fp32, exact", m["precision"] == "fp32" and m["exact"] is True)
            k = m.get("kernel", {})
            check("default: kernel auto, planned, oneDNN's ISA named",
                  k.get("setting") == "auto" and k.get("largest_layer", "").endswith("(planned)")
                  and k.get("cpu_isa", "unknown") != "unknown", data[:600])
            check("the startup log names the kernel and the ISA",
                  "oneDNN instruction set " + k.get("cpu_isa", "?") in srv.logtext())
            check("int8: /metrics has ctr_model_precision",
                  q8.metric('ctr_model_precision{precision="int8",exact="false"}') == 1)
            check("int8: the startup log says it is not exact", "NOT EXACT" in q8.logtext(),
                  q8.logtext()[-500:])
            # Scores within int8's bound of fp32's (tests/core/test_golden.c:
            # 8e-3 on this model), and not identical to them.
            worst = 0.0
            for k, line in enumerate(req_lines[:20]):
                st, resp = q8.rank(json.loads(line))
                got = {}
                for it in resp.get("items", []):
                    got.setdefault(it["item_id"], []).append(it["score"])
                for i, c in enumerate(json.loads(line)["candidates"]):
                    s = got.get(c["item_id"], [])
                    worst = max(worst, min(abs(x - expected[k][i]) for x in s) if s else 1.0)
            check(f"int8 scores within 8e-3 of fp32 (max |dp| {worst:.2g})", 0 < worst <= 8e-3)
            q8.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: q8.metric('ctr_model_reloads_total{result="ok"}') >= 1, 20)
            st, _, data = q8.request("GET", "/v1/models")
            check("int8: still int8 after a reload", json.loads(data)["models"][0]["precision"] == "int8")
        finally:
            q8.stop()

        print("error statuses")
        cand = big["candidates"][0]
        cases = [
            ("malformed JSON -> 400 bad_json", "POST", "/v1/rank", '{"user_id": "u1", ', "application/json", 400, "bad_json"),
            ("wrong type -> 400 bad_request", "POST", "/v1/rank", {"user_id": "u1", "candidates": "x"}, "application/json", 400, "bad_request"),
            ("missing candidates -> 400", "POST", "/v1/rank", {"user_id": "u1"}, "application/json", 400, "bad_request"),
            ("string item id -> 400", "POST", "/v1/rank", {"user_id": "u1", "candidates": [{"item_id": "7"}]}, "application/json", 400, "bad_request"),
            ("unknown path -> 404", "GET", "/v2/rank", None, None, 404, "not_found"),
            ("GET /v1/rank -> 405", "GET", "/v1/rank", None, None, 405, "method_not_allowed"),
            ("POST /healthz -> 405", "POST", "/healthz", "{}", "application/json", 405, "method_not_allowed"),
            ("body too large -> 413", "POST", "/v1/rank", '{"user_id": "' + "x" * 70000 + '"}', "application/json", 413, "body_too_large"),
            ("text/plain -> 415", "POST", "/v1/rank", {"user_id": "u1", "candidates": [cand]}, "text/plain", 415, "unsupported_media_type"),
            ("form-encoded -> 415", "POST", "/v1/rank", "a=b", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
            ("65 candidates -> 422", "POST", "/v1/rank", {"user_id": "u1", "candidates": [cand] * 65}, "application/json", 422, "too_many_candidates"),
            ("item id outside the vocabulary -> 422", "POST", "/v1/rank", {"user_id": "u1", "candidates": [{"item_id": 999999}]}, "application/json", 422, "out_of_range"),
            ("context value outside its vocabulary -> 422", "POST", "/v1/rank", {"user_id": "u1", "candidates": [{"item_id": cand["item_id"], "a": 99}]}, "application/json", 422, "out_of_range"),
            ("unknown candidate field -> 400", "POST", "/v1/rank", {"user_id": "u1", "candidates": [{"item_id": cand["item_id"], "likes": 1}]}, "application/json", 400, "bad_request"),
        ]
        for name, method, path, body, ctype, want_st, want_code in cases:
            st, hdr, data = srv.request(method, path, body, ctype)
            try:
                code = error_code(json.loads(data))
                msg = json.loads(data)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                code, msg = None, ""
            check(name, st == want_st and code == want_code and len(msg) > 0,
                  f"got {st} {data[:200]!r}")
        st, hdr, _ = srv.request("GET", "/v1/rank")
        check("405 names the allowed method", hdr.get("Allow") == "POST", str(hdr))
        check("still alive after bad input", srv.proc.poll() is None)

        print("operations endpoints")
        st, _, data = srv.request("GET", "/healthz")
        check("/healthz 200", st == 200)
        st, _, data = srv.request("GET", "/readyz")
        check("/readyz 200 with Redis up", st == 200, data)
        st, _, data = srv.request("GET", "/v1/models")
        m = json.loads(data)["models"][0]
        check("/v1/models names version and config", st == 200 and m["version"] == "golden-1"
              and m["config"]["context_fields"][0]["name"] == "a")
        st, hdr, data = srv.request("GET", "/metrics")
        text = data.decode()
        check("/metrics is Prometheus text", st == 200 and hdr.get("Content-Type", "").startswith("text/plain")
              and 'ctr_http_requests_total{endpoint="/v1/rank",status="422"}' in text
              and "ctr_http_request_duration_seconds_bucket" in text
              and 'ctr_model_info{model="qin",name="qin",version="golden-1",arch="qin"} 1' in text
              and "ctr_inflight_requests" in text and "ctr_item_cache_hits_total" in text, text[:300])

        print("item cache")
        fresh = {"user_id": "cache-probe", "item_seq": [c["item_id"] for c in big["candidates"]][:3],
                 "candidates": big["candidates"]}
        st1, r1 = srv.rank(fresh)
        # GETRANGE counts item reads, and the health check's marker read
        # (one per PING it makes, counted in /metrics): the difference is
        # the item reads, give or take a check in flight.
        pings = srv.metric('ctr_redis_call_duration_seconds_count{op="ping"}')
        calls = redis.calls("getrange")
        check("first request read its items", calls > 0, str(calls))
        misses = srv.metric("ctr_item_cache_misses_total")
        st2, r2 = srv.rank(fresh)
        reads = (redis.calls("getrange") - calls) - \
            (srv.metric('ctr_redis_call_duration_seconds_count{op="ping"}') - pings)
        check("second identical request: no item read", st1 == st2 == 200 and reads < 2 and
              len({c["item_id"] for c in fresh["candidates"]}) >= 2, f"{reads} item reads")
        check("second identical request: no cache miss", srv.metric("ctr_item_cache_misses_total") == misses)
        check("cached answer equals the first", r1["items"] == r2["items"])

        print("redis down")
        stored_user = next(json.loads(l) for l in req_lines if "item_seq" not in json.loads(l)
                           and json.loads(l)["candidates"])
        srv.rank(stored_user)  # warm its items
        redis.stop()
        # The health check runs every health_interval_ms (200): /readyz
        # follows within that plus a Redis timeout (a refused connect:
        # none); 2 s leaves room for a loaded machine.
        t_down = time.time()
        ok = wait_for(lambda: srv.request("GET", "/readyz")[0] == 503, 5)
        took = time.time() - t_down
        st, _, data = srv.request("GET", "/readyz")
        check(f"/readyz 503 when Redis is down (within the health interval: {took:.2f} s)",
              ok and st == 503 and error_code(json.loads(data)) == "not_ready"
              and took < 2.0, data)
        st, resp = srv.rank(stored_user)
        check("rank with cached items: 200, degraded history_unavailable",
              st == 200 and "history_unavailable" in resp.get("degraded", []), str(resp)[:300])
        st, resp = srv.rank(fresh)
        check("rank with its own item_seq and cached items: 200, not degraded",
              st == 200 and resp.get("degraded") == [] and resp["items"] == r1["items"], str(resp)[:300])
        # A second server with the cache off: nothing is ever cached.
        uncached = {"user_id": "u-none", "item_seq": [], "candidates": [big["candidates"][0]]}
        st, resp = cold.rank(uncached)
        check("cache off, Redis down: 503 unavailable", st == 503 and error_code(resp) == "unavailable",
              f"{st} {resp}")
        check("servers alive while Redis is down", srv.proc.poll() is None and cold.proc.poll() is None)
        redis.start()
        t_up = time.time()
        load(redis, prefix)
        check("/readyz recovers", wait_for(lambda: srv.request("GET", "/readyz")[0] == 200, 10))
        # Defined behaviour: every worker's breaker lets a probe through
        # within 1.25 x redis_breaker_max_ms (400 ms) of Redis returning, and
        # the probe succeeds; so past that bound no answer is degraded, on
        # whichever worker it lands.
        time.sleep(max(0.0, t_up + 0.5 + 0.05 - time.time()))
        answers = [srv.rank(stored_user) for _ in range(12)]
        check("rank recovers on every worker within the breaker bound: not degraded",
              all(st == 200 and resp.get("degraded") == [] for st, resp in answers),
              str([r for r in answers if r[1].get("degraded") != []][:2])[:300])
        answers = [cold.rank(uncached) for _ in range(12)]
        check("cache off: items fetched again on every worker",
              all(st == 200 and len(resp.get("items", [])) == 1 for st, resp in answers),
              str(answers[:2])[:300])
        gone = big["candidates"][1]["item_id"]
        missing = {"user_id": "u-none", "item_seq": [], "candidates": [big["candidates"][1], big["candidates"][0]]}
        redis.cli("DEL", f"{prefix}i:{gone}")
        st, resp = cold.rank(missing)
        check("item without features: listed as unscored", st == 200 and resp.get("unscored") == [gone]
              and "item_features_missing" in resp.get("degraded", []) and len(resp["items"]) == 1,
              str(resp)[:300])
        load(redis, prefix)
        check("cache off server stops cleanly", cold.stop() == 0, cold.logtext()[-1000:])

        print("reload")
        with open(model, "r+b") as f:
            f.truncate(1000)
        srv.proc.send_signal(signal.SIGHUP)
        check("corrupt model: reload counted as failed",
              wait_for(lambda: srv.metric('ctr_model_reloads_total{model="qin",result="failed"}') >= 1, 10))
        st, _, data = srv.request("GET", "/v1/models")
        check("corrupt model: still serving the old version", json.loads(data)["models"][0]["version"] == "golden-1")
        st, resp = srv.rank(stored_user)
        check("corrupt model: still ranking", st == 200)
        conv = subprocess.run([PY, "tools/convert.py", "--checkpoint", f"{SMALL}/ckpt.model", "--out", model,
                               "--max-len", "6", "--context-fields", "a,b,c", "--version", "v2"],
                              capture_output=True, text=True, timeout=300)
        check("converted a new version", conv.returncode == 0, conv.stderr[-500:])
        srv.proc.send_signal(signal.SIGHUP)
        check("good model: reload counted as ok",
              wait_for(lambda: srv.metric('ctr_model_reloads_total{model="qin",result="ok"}') >= 1, 20))
        st, _, data = srv.request("GET", "/v1/models")
        check("good model: serving v2", json.loads(data)["models"][0]["version"] == "v2")
        st, resp = srv.rank(stored_user)
        check("v2 answers with its version", st == 200 and resp["model"]["version"] == "v2")
        # After traffic, every error status, Redis down, degraded answers and
        # both reloads: every series present, as a scraper sees them.
        ok, said = promtool_check_metrics(srv)
        check("promtool check metrics: nothing to report", ok, said)

        print("SIGTERM")
        results = []

        def client():
            for _ in range(40):
                try:
                    st, _ = srv.rank(big)
                    results.append(st)
                except (ConnectionError, OSError, http.client.HTTPException):
                    results.append("closed")
                    return

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        # Under way: some answered (however slow the build), more in flight.
        wait_for(lambda: len(results) >= 4, 30, 0.01)
        rc = srv.stop(signal.SIGTERM)
        for t in threads:
            t.join(30)
        check("SIGTERM: exit status 0", rc == 0, f"rc={rc}\n{srv.logtext()[-2000:]}")
        bad = [s for s in results if s not in (200, 503, "closed")]
        check(f"SIGTERM: every answered request 200 or 503 ({len(results)} sent)", not bad and
              results.count(200) > 0, str(bad[:5]))
    finally:
        for s in (srv, cold):
            if s.proc.poll() is None:
                s.stop(signal.SIGKILL, 5)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if check.failed:
        print(srv.logtext()[-3000:])
    print(f"test_server: {check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
