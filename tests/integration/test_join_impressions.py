#!/usr/bin/python3
"""tools/join_impressions.py on a hand-made log and clicks file, where each
row's label is known: clicks by request id, clicks by user and time (the
latest impression before the click, within the window; one impression per
click), candidates never shown (unscored, cut by top_k) give no row, one
model's records only, CSV output, a Redis Stream as the log (a real
redis-server), and the refusals.

Run by tests/integration/test_join_impressions.sh with PYTHON (and
CTR_REDIS for the stream part)."""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture import PY, Checks  # noqa: E402

check = Checks()
TOOL = "tools/join_impressions.py"


def rec(t, rid, user, items, model="qin", top_k=0, unscored=(), history=(1, 2)):
    """A record: items served in this order (rank 1, 2, ...), then the
    unscored ones."""
    cands = []
    for k, i in enumerate(items):
        served = top_k == 0 or k < top_k
        cands.append({"item_id": i, "a": k, "score": 0.5 - k / 100,
                      "rank": k + 1 if served else None})
    for i in unscored:
        cands.append({"item_id": i, "a": 0, "score": None, "rank": None})
    return {"time": t, "request_id": rid, "user_id": user,
            "model": {"name": model, "version": "v1", "precision": "fp32"},
            "history_source": "store", "history": list(history), "top_k": top_k,
            "candidates": cands, "degraded": []}


def run(tmp, log, clicks, *extra):
    lp, cp = os.path.join(tmp, "log.jsonl"), os.path.join(tmp, "clicks.jsonl")
    with open(lp, "w") as f:
        for r in log:
            f.write(json.dumps(r) + "\n")
    with open(cp, "w") as f:
        for c in clicks:
            f.write((c if isinstance(c, str) else json.dumps(c)) + "\n")
    src = extra[0] if extra and extra[0].startswith("redis://") else lp
    extra = extra[1:] if extra and extra[0].startswith("redis://") else extra
    r = subprocess.run([PY, TOOL, "--log", src, "--clicks", cp, *extra], capture_output=True,
                       text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def rows_of(out):
    return [json.loads(l) for l in out.splitlines() if l.strip()]


def labels(rows):
    return [(r["user_id"], r["item_id"], r["label"]) for r in rows]


def main():
    tmp = tempfile.mkdtemp(prefix="ctr-join-test-")
    log = [rec(100.0, "r1", "u1", [10, 11, 12]),
           rec(200.0, "r2", "u1", [11, 13], top_k=1, unscored=[99]),
           rec(300.0, None, 42, [10, 11]),
           rec(400.0, None, 42, [10]),
           rec(500.0, None, "u2", [14], model="din")]
    clicks = [{"request_id": "r1", "item_id": 12},
              {"user_id": "42", "item_id": 10, "time": 450.0},   # -> the 400 one
              {"user_id": 42, "item_id": 10, "time": 460.0},     # -> the 300 one
              {"user_id": 42, "item_id": 11, "time": 5000.0},    # outside the window
              {"user_id": "u1", "item_id": 13, "time": 250.0},   # cut by top_k: no row
              {"user_id": "u1", "item_id": 11}]                  # no time: the latest
    rc, out, err = run(tmp, log, clicks, "--window", "3600", "--model", "qin")
    rows = rows_of(out)
    check("exit 0", rc == 0, err)
    check("one row per served candidate, in log order", labels(rows) == [
        ("u1", 10, 0), ("u1", 11, 0), ("u1", 12, 1),
        ("u1", 11, 1),
        (42, 10, 1), (42, 11, 0),
        (42, 10, 1)], str(labels(rows)))
    check("rows carry what the model was given",
          rows[0] == {"user_id": "u1", "item_id": 10, "a": 0, "item_seq": [1, 2], "label": 0},
          str(rows[0]))
    check("summary: 4 impressions, 7 rows, 4 matched, 2 unmatched",
          "4 impressions, 7 rows, 4 positive; clicks matched 4, unmatched 2" in err, err)

    rc, out, err = run(tmp, log, clicks, "--window", "100")
    check("window 100 s: the click 460 s after its impression is unmatched; "
          "every model's records without --model",
          [r["label"] for r in rows_of(out) if r["user_id"] == 42] == [0, 0, 1] and
          len(rows_of(out)) == 8, out)

    rc, out, err = run(tmp, log, clicks, "--format", "csv", "--with-served", "--model", "qin")
    lines = out.splitlines()
    check("csv: header and item_seq joined by ^",
          lines[0] == "user_id,item_id,a,item_seq,label,served_score,served_rank,"
                      "model_version,request_id" and lines[1] == "u1,10,0,1^2,0,0.5,1,v1,r1",
          "\n".join(lines[:3]))

    rc, out, err = run(tmp, log, clicks + ['{"item_id": "x"}', "not json"])
    check("malformed clicks: named, exit 1", rc == 1 and "clicks.jsonl:7" in err and
          "clicks.jsonl:8" in err, err)
    rc, out, err = run(tmp, [], clicks)
    check("an empty log: exit 1", rc == 1, err)
    r = subprocess.run([PY, TOOL, "--log", "/nonexistent", "--clicks", "/nonexistent"],
                       capture_output=True, text=True, timeout=60)
    check("unreadable input: exit 2", r.returncode == 2 and "nonexistent" in r.stderr, r.stderr)

    addr = os.environ.get("CTR_REDIS")
    if addr:
        host, port = addr.rsplit(":", 1)
        key = f"join-test:{os.getpid()}"
        # More entries than one XRANGE chunk, through one redis-cli.
        cmds = "".join(f"XADD {key} * impression "
                       f"{json.dumps(json.dumps(rec(float(k), f's{k}', 'u9', [k + 1])))}\n"
                       for k in range(2500))
        subprocess.run(["redis-cli", "-h", host, "-p", port], input=cmds, capture_output=True,
                       text=True, timeout=60)
        rc, out, err = run(tmp, [], [{"request_id": "s2400", "item_id": 2401}],
                           f"redis://{host}:{port}/{key}")
        rows = rows_of(out)
        check("a Redis Stream as the log: every entry, in order, in chunks",
              rc == 0 and len(rows) == 2500 and rows[2400]["label"] == 1 and
              [r["item_id"] for r in rows] == list(range(1, 2501)), err)
        subprocess.run(["redis-cli", "-h", host, "-p", port, "DEL", key], capture_output=True,
                       timeout=10)
    print(f"test_join_impressions: {check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
