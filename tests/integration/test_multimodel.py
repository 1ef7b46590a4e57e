#!/usr/bin/python3
"""One ctr-server serving QIN, DIN (default and softmax + Dice, small and
MicroLens shapes) and TIN models at once, each routed by "model", against
the PyTorch references' golden data (build/golden, tools/make_golden.py):

  - every model's scores through the server within 1e-5 of the reference
    (expected.jsonl), with and without explanations;
  - explanations equal the reference's top attention weights (golden.txt),
    positions counted in the window the model used, item ids resolved;
  - routing: the default model, an unknown name (404), each model's own
    Redis prefix and schema (TIN's item 0), two models sharing a prefix;
  - per-model settings from a config file, the environment and flags
    (models, prefixes, cache budgets), /v1/models, per-model metrics;
  - SIGHUP reloads every model, and a model whose new file is bad keeps
    its old version while the others move on;
  - each model's feature-set marker: /readyz names the model that lacks it;
  - every answer (200s, errors, /v1/models, /healthz, /readyz) validated
    against proto/openapi.yaml's schemas with python3-jsonschema, every
    documented object closed so an undocumented field fails.

Run by tests/integration/test_multimodel.sh with CTR_BUILD, CTR_GOLDEN,
PYTHON.  Only loopback traffic; every wait is bounded."""
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import jsonschema
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture import (BUILD, GOLDEN, Checks, Redis, Server, error_code, free_port, load,  # noqa: E402
                     wait_for)

TOL = 1e-5
EXPLAIN = 3
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Served name -> (golden configuration, Redis prefix).  qin2 reads DIN's
# prefix: QIN and DIN items have the same layout (tags and embedding).
MODELS = {
    "qin": ("small", "q:"),
    "din": ("din-small", "d:"),
    "dsm": ("din-dice-softmax", "ds:"),
    "dml": ("din-microlens", "dml:"),
    "tin": ("tin-small", "t:"),
    "tam": ("tin-amazon", "tam:"),
    # MicroLens-size QIN: with the server's 2 score threads and --split
    # columns its layers are split by columns across them
    "qml": ("microlens", "qml:"),
}

check = Checks()


# --- the OpenAPI schemas, closed ---------------------------------------------

def closed_spec():
    """proto/openapi.yaml with every object schema that lists properties
    and says nothing of others closed (additionalProperties: false): an
    answer field the file does not document fails validation."""
    with open(os.path.join(ROOT, "proto", "openapi.yaml")) as f:
        spec = yaml.safe_load(f)
    spec = copy.deepcopy(spec)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node \
                    and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(spec["components"])
    return spec


SPEC = closed_spec()


def schema_errors(name, doc):
    """Validation errors of doc against components/schemas/<name>."""
    resolver = jsonschema.RefResolver.from_schema(SPEC)
    v = jsonschema.Draft4Validator({"$ref": f"#/components/schemas/{name}"}, resolver=resolver)
    return [f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in v.iter_errors(doc)]


validated = {}


def conforms(name, doc, what):
    errs = schema_errors(name, doc)
    validated[name] = validated.get(name, 0) + 1
    if errs:
        check(f"{what}: matches the OpenAPI schema {name}", False, "; ".join(errs[:3]))
    return not errs


# --- golden data --------------------------------------------------------------

def read_golden(d):
    """golden.txt: per case, the history given and, per candidate, the
    reference's top attention weights [(position in that history, w)]."""
    with open(os.path.join(d, "golden.txt")) as f:
        lines = f.read().split("\n")
    k = 0
    assert lines[k].startswith("ctr-golden"), lines[k]
    k += 1
    n_items = int(lines[k].split()[1])
    k += 1 + n_items
    n_cases = int(lines[k].split()[1])
    k += 1
    cases = []
    for _ in range(n_cases):
        _, nh, nc, nctx, kx = lines[k].split()
        nh, nc, nctx, kx = int(nh), int(nc), int(nctx), int(kx)
        hist = [int(t) for t in lines[k + 1].split()]
        assert len(hist) == nh
        cands = []
        for c in range(nc):
            t = lines[k + 2 + c].split()
            top = [(int(t[2 + nctx + 2 * j]), float(t[3 + nctx + 2 * j])) for j in range(kx)]
            cands.append((int(t[0]), [p for p in top if p[0] >= 0]))
        cases.append((hist, cands))
        k += 2 + nc
    return cases


def golden(cfg):
    d = os.path.join(GOLDEN, cfg)
    reqs = [json.loads(l) for l in open(os.path.join(d, "requests.jsonl")) if l.strip()]
    exp = [json.loads(l)["scores"] for l in open(os.path.join(d, "expected.jsonl")) if l.strip()]
    return d, reqs, exp, read_golden(d)


def features(cfg):
    """The ids with features, and the stored histories, of a configuration."""
    d = os.path.join(GOLDEN, cfg)
    items = {json.loads(l)["item_id"] for l in open(os.path.join(d, "items.jsonl")) if l.strip()}
    users = {}
    for l in open(os.path.join(d, "users.jsonl")):
        if l.strip():
            u = json.loads(l)
            users[json.dumps(u["user_id"])] = u["item_seq"]
    return items, users


def explain_problems(req, ans_items, case, info, items, users):
    """How the answer's explanations differ from the reference's top
    weights.  The reference indexes the history it was given (QIN, DIN:
    padding and ids without features included; TIN: the kept ids only);
    the server's positions index the window it used: the last max_len
    entries of the request's item_seq, or of the stored history, left-out
    and padding entries included.  Both name the same behaviour when they
    are the same count of usable behaviours from the most recent end.
    Weights within TOL (relative above 1); a rank that ties the one before
    or after it (the same item twice in a history: equal weights, whose
    order is rounding's) is not held to a position."""
    cfg = info["config"]
    hist, cands = case

    def usable(i):
        return i in items and cfg["item_id_min"] <= i < cfg["item_vocab"]
    seq = req["item_seq"] if "item_seq" in req else users.get(json.dumps(req["user_id"]), [])
    window = seq[max(0, len(seq) - cfg["max_len"]):]
    kept = [j for j, i in enumerate(window) if usable(i)]
    ref = {}
    for cid, top in cands:
        ref.setdefault(cid, top)
    probs = []
    for it in ans_items:
        got = it.get("explain")
        want = ref[it["item_id"]]
        n = min(EXPLAIN, len(want))
        if got is None or len(got) != n:
            probs.append(f"item {it['item_id']}: {got} vs {want[:n]}")
            continue
        for j in range(n):
            pos, w = want[j]
            tie = any(0 <= k < len(want) and abs(abs(want[k][1]) - abs(w)) <= 1e-6 * max(1, abs(w))
                      for k in (j - 1, j + 1))
            g = got[j]
            if abs(g["weight"] - w) > TOL * max(1.0, abs(w)):
                probs.append(f"item {it['item_id']} rank {j}: weight {g['weight']} vs {w}")
            r = sum(1 for q in range(pos + 1, len(hist)) if usable(hist[q]))
            p = kept[len(kept) - 1 - r] if r < len(kept) else None
            if not tie and (g["position"] != p or g["item_id"] != window[p] or
                            g["item_id"] != hist[pos]):
                probs.append(f"item {it['item_id']} rank {j}: position {g['position']} "
                             f"(item {g['item_id']}) vs {p} (item {hist[pos]})")
    return probs


def score_diff(req, resp, want):
    got = {}
    for it in resp["items"]:
        got.setdefault(it["item_id"], []).append(it["score"])
    worst = 0.0
    for i, c in enumerate(req["candidates"]):
        s = got.get(c["item_id"], [])
        worst = max(worst, min((abs(x - want[i]) for x in s), default=float("inf")))
    return worst


def main():
    tmp = tempfile.mkdtemp(prefix="ctr-multimodel-test-")
    redis = Redis(tmp)
    redis.start()
    srv = None
    try:
        for name, (cfg, prefix) in MODELS.items():
            load(redis, prefix, os.path.join(GOLDEN, cfg))
        # The model files are copies, so one can be broken for the reload.
        paths = {}
        for name, (cfg, _) in MODELS.items():
            paths[name] = os.path.join(tmp, f"{name}.safetensors")
            shutil.copy(os.path.join(GOLDEN, cfg, "model.safetensors"), paths[name])
        qin2 = os.path.join(tmp, "qin2.safetensors")
        shutil.copy(os.path.join(GOLDEN, "small", "model.safetensors"), qin2)
        # Models and prefixes from a config file (lines add up), one prefix
        # from the environment, cache budgets from flags.
        conf = os.path.join(tmp, "ctr-server.conf")
        with open(conf, "w") as f:
            for name in MODELS:
                f.write(f"model = {name}={paths[name]}\n")
            f.write(f"model = qin2={qin2}\n")
            f.write("redis_prefix = q:\n")
            for name, (_, prefix) in MODELS.items():
                if name not in ("qin", "tin"):
                    f.write(f"redis_prefix = {name}={prefix}\n")
            f.write("redis_prefix = qin2=d:   # QIN reads DIN's items\n")
        srv = Server([], redis, None,
                     ["--config", conf, "--cache-mb", "60", "--cache-mb", "tin=8", "--max-seq", "600",
                      "--split", "columns",
                      # Sanitizer builds run DIN at MicroLens shapes ~10x
                      # slower: no answer here may be cut by a deadline.
                      "--deadline-ms", "20000", "--max-deadline-ms", "20000"],
                     threads=3, env={"CTR_REDIS_PREFIX": "tin=t:"})

        print("models and readiness")
        st, _, data = srv.request("GET", "/v1/models")
        models = json.loads(data)
        conforms("Models", models, "/v1/models")
        by = {m["name"]: m for m in models["models"]}
        check("/v1/models lists every model, the first the default",
              [m["name"] for m in models["models"]] == list(MODELS) + ["qin2"]
              and [m["default"] for m in models["models"]] == [True] + [False] * len(MODELS),
              str([(m["name"], m["default"]) for m in models["models"]]))
        check("each model's architecture and prefix",
              [by[n]["arch"] for n in MODELS] == ["qin", "din", "din", "din", "tin", "tin", "qin"]
              and all(by[n]["redis_prefix"] == MODELS[n][1] for n in MODELS)
              and by["qin2"]["redis_prefix"] == "d:",
              str([(n, by[n]["arch"], by[n]["redis_prefix"]) for n in by]))
        check("cache budgets: tin's own 8 MiB, the others share 60 MiB",
              by["tin"]["cache"]["max_bytes"] == 8 << 20
              and all(by[n]["cache"]["max_bytes"] == (60 // (len(by) - 1)) << 20
                      for n in by if n != "tin"),
              str([(n, by[n]["cache"]) for n in by]))
        check("/v1/models: each model's split as set (--split columns)",
              all(by[n]["kernel"].get("split") == "columns" for n in by),
              str([(n, by[n]["kernel"].get("split")) for n in by]))
        check("every model fp32 (exact) by default",
              all((m["precision"], m["exact"]) == ("fp32", True) for m in models["models"]))
        check("TIN's schema: ids from 0, a category, no context",
              by["tin"]["config"]["item_id_min"] == 0 and by["tin"]["config"]["cate_vocab"] > 0
              and by["tin"]["config"]["context_fields"] == [])
        ready = wait_for(lambda: srv.request("GET", "/readyz")[0] == 200, 10)
        st, _, data = srv.request("GET", "/readyz")
        conforms("Status", json.loads(data), "/readyz")
        check("/readyz 200: every model's feature set present (qin2 shares din's)", ready, data)
        st, _, data = srv.request("GET", "/healthz")
        conforms("Status", json.loads(data), "/healthz")

        print("parity with the references, per model, through the server")
        sent = {}
        for name, (cfg, _) in MODELS.items():
            d, reqs, exp, cases = golden(cfg)
            items, users = features(cfg)
            worst = worst_x = 0.0
            xprobs, bad = [], []
            for k, req in enumerate(reqs):
                plain = dict(req, model=name)
                st, resp = srv.rank(plain)
                st2, resp2 = srv.rank(dict(plain, explain=EXPLAIN))
                if st != 200 or st2 != 200 or resp.get("degraded") or resp2.get("degraded"):
                    bad.append((k, st, st2, str(resp)[:200], str(resp2)[:200]))
                    continue
                conforms("RankAnswer", resp, f"{name} answer")
                conforms("RankAnswer", resp2, f"{name} answer with explain")
                worst = max(worst, score_diff(req, resp, exp[k]))
                worst_x = max(worst_x, score_diff(req, resp2, exp[k]))
                xprobs += explain_problems(req, resp2["items"], cases[k], by[name], items, users)
                sent[name] = sent.get(name, 0) + 2 * len(req["candidates"])
                if resp["model"] != {"name": name, "version": by[name]["version"]}:
                    bad.append((k, "model", resp["model"]))
            check(f"{name} ({cfg}): every request answered, none degraded", not bad, str(bad[:2]))
            check(f"{name} ({cfg}): scores within {TOL} of the reference (max {worst:.2g})",
                  worst <= TOL)
            check(f"{name} ({cfg}): with explain, the same scores (max {worst_x:.2g})",
                  worst_x <= TOL)
            check(f"{name} ({cfg}): explanations equal the reference's top weights",
                  not xprobs, "; ".join(xprobs[:3]))

        print("routing")
        d, reqs, exp, _ = golden("small")
        st, resp = srv.rank(reqs[0])
        check("no model named: the default (qin)", st == 200 and resp["model"]["name"] == "qin"
              and score_diff(reqs[0], resp, exp[0]) <= TOL, str(resp)[:200])
        st, hdr, data = srv.request("POST", "/v1/rank", dict(reqs[0], model="gbdt"))
        err = json.loads(data)
        conforms("Error", err, "unknown model")
        check("unknown model: 404 not_found naming the models", st == 404
              and error_code(err) == "not_found" and "gbdt" in err["error"]["message"]
              and "qin, din, dsm, dml, tin, tam, qml, qin2" in err["error"]["message"], data)
        _, dreqs, _, _ = golden("din-small")
        st, resp = srv.rank(dict(dreqs[0], model="qin2"))
        check("qin2 (a QIN on DIN's prefix) answers from DIN's items", st == 200
              and resp["model"]["name"] == "qin2" and not resp["degraded"]
              and len(resp["items"]) == len(dreqs[0]["candidates"]), str(resp)[:200])
        _, treqs, _, _ = golden("tin-small")
        tin0 = {"model": "tin", "user_id": "z", "item_seq": [0, 1], "candidates": [{"item_id": 0}],
                "explain": 2}
        st, resp = srv.rank(tin0)
        ids = sorted(e["item_id"] for e in resp["items"][0]["explain"]) if st == 200 else None
        check("TIN: item 0 as candidate and in the history", st == 200 and ids == [0, 1]
              and abs(sum(e["weight"] for e in resp["items"][0]["explain"]) - 1) < 1e-5,
              str(resp)[:300])
        cases = [
            ("explain above 16: 422", dict(reqs[0], explain=17), 422, "out_of_range"),
            ("explain negative: 400", dict(reqs[0], explain=-1), 400, "bad_request"),
            ("explain a string: 400", dict(reqs[0], explain="3"), 400, "bad_request"),
            ("model not a string: 400", dict(reqs[0], model=7), 400, "bad_request"),
            ("QIN item 0: 422", {"user_id": "z", "candidates": [{"item_id": 0}]}, 422,
             "out_of_range"),
            ("QIN's context field sent to TIN: 400", dict(tin0, candidates=[{"item_id": 1, "a": 1}]),
             400, "bad_request"),
        ]
        for what, body, want_st, want_code in cases:
            st, _, data = srv.request("POST", "/v1/rank", body)
            err = json.loads(data)
            conforms("Error", err, what)
            check(what, st == want_st and error_code(err) == want_code, data[:200])

        print("metrics per model")
        for name in MODELS:
            got = srv.metric(f'ctr_scored_candidates_total{{model="{name}"}}')
            want = sent.get(name, 0) + (len(reqs[0]["candidates"]) if name == "qin" else 0) \
                + (1 if name == "tin" else 0)
            check(f"ctr_scored_candidates_total{{model=\"{name}\"}} counts its own ({want})",
                  got == want, f"{got}")
        text = srv.request("GET", "/metrics")[2].decode()
        check("ctr_model_info per model, with its architecture",
              'ctr_model_info{model="tam",name="tin",version="golden-1",arch="tin"} 1' in text
              or 'model="tam"' in text and 'arch="tin"' in text, text[:200])
        check("ctr_feature_set_ready per model",
              all(srv.metric(f'ctr_feature_set_ready{{model="{n}"}}') == 1 for n in by))

        print("feature-set marker per prefix")
        redis.cli("DEL", "t:meta")
        gone = wait_for(lambda: srv.request("GET", "/readyz")[0] == 503, 5)
        st, _, data = srv.request("GET", "/readyz")
        err = json.loads(data)
        conforms("Error", err, "/readyz 503")
        check("tin's marker deleted: /readyz 503 naming model tin", gone and
              "model tin" in err["error"]["message"], data)
        st, resp = srv.rank(tin0)
        st2, resp2 = srv.rank(reqs[0])
        check("tin's answers say feature_set_missing, qin's do not", st == 200 and st2 == 200
              and "feature_set_missing" in resp["degraded"]
              and "feature_set_missing" not in resp2["degraded"], f"{resp} {resp2}"[:300])
        load(redis, "t:", os.path.join(GOLDEN, "tin-small"))
        check("tin's marker back: /readyz 200",
              wait_for(lambda: srv.request("GET", "/readyz")[0] == 200, 5))

        print("reload")
        with open(paths["tin"], "r+b") as f:
            f.truncate(1000)
        srv.proc.send_signal(signal.SIGHUP)
        done = wait_for(lambda: srv.metric('ctr_model_reloads_total{result="ok"}')
                        + srv.metric('ctr_model_reloads_total{result="failed"}') >= len(by), 60)
        check("SIGHUP reloads every model", done)
        check("tin's reload failed, the others' succeeded",
              srv.metric('ctr_model_reloads_total{model="tin",result="failed"}') == 1
              and srv.metric('ctr_model_reloads_total{model="tin",result="ok"}') == 0
              and all(srv.metric(f'ctr_model_reloads_total{{model="{n}",result="ok"}}') == 1
                      for n in by if n != "tin"))
        models = json.loads(srv.request("GET", "/v1/models")[2])
        gens = {m["name"]: m["generation"] for m in models["models"]}
        check("tin keeps its old version (generation 1), the others are at 2",
              gens["tin"] == 1 and all(g == 2 for n, g in gens.items() if n != "tin"), str(gens))
        _, treqs, texp, _ = golden("tin-small")
        st, resp = srv.rank(dict(treqs[0], model="tin"))
        st2, resp2 = srv.rank(dict(reqs[0], model="qin"))
        check("both still answer, exactly", st == 200 and st2 == 200
              and score_diff(treqs[0], resp, texp[0]) <= TOL
              and score_diff(reqs[0], resp2, exp[0]) <= TOL)

        print("refused at startup (exit 1, naming the problem)")
        small = os.path.join(GOLDEN, "small", "model.safetensors")
        tin = os.path.join(GOLDEN, "tin-small", "model.safetensors")
        bad_starts = [
            ("two models of one name", ["--model", f"a={small}", "--model", f"a={tin}"],
             'two models named "a"'),
            ("two bare paths of one metadata name", ["--model", small, "--model", small],
             'two models named "qin"'),
            ("a per-model value for no model", ["--model", f"a={small}", "--redis-prefix",
                                                "b=x:"], 'no model named "b" (serving a)'),
            ("a bad file, named", ["--model", f"a={small}", "--model",
                                   f"b={os.path.join(tmp, 'none.safetensors')}"],
             "cannot load the model: model b:"),
        ]
        for what, args, frag in bad_starts:
            r = subprocess.run([f"{BUILD}/ctr-server", *args, "--redis",
                                f"127.0.0.1:{redis.port}", "--port", str(free_port()), "--warmup",
                                "false"],
                               capture_output=True, text=True, timeout=120)
            check(f"{what}: exit 1 saying so", r.returncode == 1 and frag in r.stderr + r.stdout,
                  f"{r.returncode} {(r.stderr + r.stdout)[-300:]}")

        # A bare path is named from its metadata ("tin-small"), and a
        # NAME=VALUE of that name applies to it: the shares count it out.
        bare = Server(["qin=" + small, tin], redis, "q:",
                      ["--redis-prefix", "tin-small=t:", "--cache-mb", "10", "--cache-mb",
                       "tin-small=4", "--warmup", "false",
                       "--precision", "int8", "--precision", "tin-small=fp32"], threads=1)
        try:
            info = {m["name"]: m for m in json.loads(bare.request("GET", "/v1/models")[2])["models"]}
            check("a bare path named from its file, its own budget; the other gets all the rest",
                  sorted(info) == ["qin", "tin-small"]
                  and info["tin-small"]["cache"]["max_bytes"] == 4 << 20
                  and info["qin"]["cache"]["max_bytes"] == 10 << 20
                  and info["tin-small"]["redis_prefix"] == "t:",
                  str([(n, m["cache"], m["redis_prefix"]) for n, m in info.items()]))
            # Precision per model: the plain setting for qin, the bare
            # path's own entry (by its file's name) for tin-small.
            check("precision per model: qin int8 (not exact), tin-small fp32 (exact)",
                  (info["qin"]["precision"], info["qin"]["exact"]) == ("int8", False)
                  and (info["tin-small"]["precision"], info["tin-small"]["exact"]) == ("fp32", True),
                  str([(n, m["precision"], m["exact"]) for n, m in info.items()]))
            check("precision per model in /metrics",
                  bare.metric('ctr_model_precision{model="qin",precision="int8",exact="false"}') == 1
                  and bare.metric('ctr_model_precision{model="tin-small",precision="fp32",'
                                  'exact="true"}') == 1
                  and bare.metric("ctr_model_precision") == 2)
            check("the startup log names the inexact model",
                  "model qin: precision int8 is NOT EXACT" in bare.logtext()
                  and bare.logtext().count("NOT EXACT") == 1,
                  bare.logtext()[-800:])
        finally:
            bare.stop()

        check("answers validated against every schema they use",
              all(validated.get(n, 0) > 0 for n in ("RankAnswer", "Error", "Models", "Status")),
              str(validated))
        check("server stops cleanly", srv.stop() == 0, srv.logtext()[-1000:])
    finally:
        if srv and srv.proc.poll() is None:
            srv.stop(signal.SIGKILL, 5)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if check.failed and srv:
        print(srv.logtext()[-3000:])
    print(f"test_multimodel: {check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
