#!/usr/bin/python3
"""Joins ctr-server's impression log with a clicks file into training rows.

    /usr/bin/python3 tools/join_impressions.py --log LOG --clicks CLICKS
        [--out ROWS] [--format jsonl|csv] [--window 3600] [--model NAME]
        [--with-served]

LOG is the impression log (ctr-server --impression-log): a JSON Lines file
(file:PATH), or a Redis Stream given as redis://HOST:PORT/KEY (read with
XRANGE in chunks; redis://:PASSWORD@HOST:PORT/KEY with AUTH).  One record
per answer served: the user, the model, the history the model used, each
candidate with its context fields, score and rank (proto/impression.h).

CLICKS is JSON Lines, one click a line, either
    {"request_id": "abc", "item_id": 17}                   exact: the answer
or  {"user_id": "u1", "item_id": 17, "time": 1714557600.5}  the latest
                                                           impression of the
                                                           item to the user
                                                           at or before time,
                                                           within --window s
("time" left out: the latest impression of the pair).

Each candidate the answer served (a rank, i.e. returned to the caller) is
one row, label 1 when a click matches it, else 0; candidates left out of
the answer (unscored, or cut by top_k) were never shown and give no row.
The row holds what the model was given, so training sees exactly what
serving saw (no training-serving skew from re-reading features later):

    {"user_id": "u1", "item_id": 17, "likes_level": 3, "views_level": 2,
     "item_seq": [5, 9, 17], "label": 1}

the columns of the MicroLens training data the converter's models are
trained on (FuxiCTR's user_id, item_id, context fields, item_seq, label;
item_tags and item_emb_d128 come from the item table by item_id, as in
training).  --format csv writes the same columns with a header, item_seq
joined by "^" (FuxiCTR's sequence splitter).  --with-served adds
"served_score", "served_rank", "model_version" and "request_id", to compare
the served scores with a new model's or to audit.

Records of answers whose history came from the request ("item_seq" in the
request) are joined like the others.  Only one model's records are kept
with --model NAME (a server with several models logs them all).

Prints a summary on stderr: impressions, rows, clicks matched and
unmatched.  Exit status 0; 1 when a click line is malformed or no record
was read; 2 for bad arguments or an unreadable input.
"""
import argparse
import bisect
import csv
import json
import socket
import sys
import urllib.parse


class JoinError(Exception):
    pass


# --- reading the log -----------------------------------------------------

def _resp_read(f):
    """One RESP2 reply from a buffered socket file."""
    line = f.readline()
    if not line:
        raise JoinError("Redis closed the connection")
    t, rest = line[:1], line[1:].rstrip(b"\r\n")
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise JoinError("Redis: " + rest.decode(errors="replace"))
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise JoinError(f"Redis: unexpected reply {line[:40]!r}")


def _resp_cmd(sock, f, *args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    sock.sendall(b"".join(out))
    return _resp_read(f)


def stream_records(url, chunk=1000):
    """The records of a Redis Stream redis://[:PASSWORD@]HOST:PORT/KEY."""
    u = urllib.parse.urlsplit(url)
    key = urllib.parse.unquote(u.path.lstrip("/"))
    if not key or not u.hostname or not u.port:
        raise JoinError(f"{url}: expected redis://HOST:PORT/KEY")
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    f = sock.makefile("rb")
    try:
        if u.password:
            args = [u.username, u.password] if u.username else [u.password]
            _resp_cmd(sock, f, "AUTH", *[urllib.parse.unquote(a) for a in args])
        start = "-"
        while True:
            entries = _resp_cmd(sock, f, "XRANGE", key, start, "+", "COUNT", chunk)
            for eid, fields in entries:
                for i in range(0, len(fields) - 1, 2):
                    if fields[i] == b"impression":
                        yield json.loads(fields[i + 1])
            if len(entries) < chunk:
                return
            start = "(" + entries[-1][0].decode()
    finally:
        f.close()
        sock.close()


def file_records(path):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as e:
                # A log cut short (a crash mid-write): the last line only.
                print(f"join_impressions: {path}:{n}: not JSON ({e}); skipped",
                      file=sys.stderr)


def read_log(src):
    if src.startswith("redis://"):
        return stream_records(src)
    return file_records(src)


# --- the join --------------------------------------------------------------

def uid_key(u):
    """A user id as the service keys it: 42 and "42" are the same user."""
    return str(u)


def read_clicks(path):
    """(by request: {(request_id, item_id)}, by user: {(user, item): [times]})."""
    by_req, by_user, bad = set(), {}, 0
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                c = json.loads(line)
                item = c["item_id"]
                if not isinstance(item, int) or isinstance(item, bool):
                    raise ValueError("item_id must be an integer")
                if "request_id" in c:
                    by_req.add((str(c["request_id"]), item))
                else:
                    t = c.get("time")
                    if t is not None and not isinstance(t, (int, float)):
                        raise ValueError("time must be unix seconds")
                    by_user.setdefault((uid_key(c["user_id"]), item), []).append(
                        float("inf") if t is None else float(t))
            except (ValueError, KeyError, TypeError) as e:
                print(f"join_impressions: {path}:{n}: {e}", file=sys.stderr)
                bad += 1
    for v in by_user.values():
        v.sort()
    return by_req, by_user, bad


def join(records, by_req, by_user, window, model=None, with_served=False):
    """Training rows, in log order.  Clicks by user and item label the
    latest impression of the pair at or before the click (within window
    seconds); each click labels one impression."""
    rows, pending = [], {}   # pending: (user, item) -> [(time, row index)]
    stats = {"records": 0, "rows": 0, "clicks_matched": 0}
    matched_req = set()
    for rec in records:
        if model and rec.get("model", {}).get("name") != model:
            continue
        stats["records"] += 1
        rid = rec.get("request_id")
        uk = uid_key(rec["user_id"])
        for c in rec["candidates"]:
            if c.get("rank") is None:
                continue
            row = {"user_id": rec["user_id"], "item_id": c["item_id"]}
            for k, v in c.items():
                if k not in ("item_id", "score", "rank"):
                    row[k] = v
            row["item_seq"] = rec["history"]
            label = 1 if rid is not None and (rid, c["item_id"]) in by_req else 0
            if label:
                matched_req.add((rid, c["item_id"]))
            row["label"] = label
            if with_served:
                row.update(served_score=c["score"], served_rank=c["rank"],
                           model_version=rec["model"]["version"], request_id=rid)
            pending.setdefault((uk, c["item_id"]), []).append((rec["time"], len(rows)))
            rows.append(row)
    stats["clicks_matched"] = len(matched_req)
    # Clicks without a request id: the latest impression before each.
    unmatched = len(by_req) - len(matched_req)
    for key, times in by_user.items():
        imps = sorted(pending.get(key, []))
        used = set()
        for t in times:
            j = bisect.bisect_right(imps, (t, float("inf"))) - 1
            while j >= 0 and imps[j][1] in used:
                j -= 1
            if j >= 0 and (t == float("inf") or t - imps[j][0] <= window):
                rows[imps[j][1]]["label"] = 1
                used.add(imps[j][1])
                stats["clicks_matched"] += 1
            else:
                unmatched += 1
    stats["rows"] = len(rows)
    stats["clicks_unmatched"] = unmatched
    stats["positives"] = sum(r["label"] for r in rows)
    return rows, stats


def write_rows(rows, out, fmt):
    if fmt == "jsonl":
        for r in rows:
            out.write(json.dumps(r, separators=(",", ":")) + "\n")
        return
    cols = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["^".join(str(i) for i in r[k]) if k == "item_seq" else
                    ("" if r.get(k) is None else r.get(k)) for k in cols])


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Join ctr-server's impression log with clicks into training rows.")
    ap.add_argument("--log", required=True,
                    help="impression log: a JSON Lines file, or redis://HOST:PORT/KEY")
    ap.add_argument("--clicks", required=True, help="clicks, JSON Lines")
    ap.add_argument("--out", default="-", help="rows file (default: stdout)")
    ap.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    ap.add_argument("--window", type=float, default=3600.0,
                    help="seconds a click may follow its impression (clicks by user "
                         "and item; default 3600)")
    ap.add_argument("--model", help="only this model's records")
    ap.add_argument("--with-served", action="store_true",
                    help="add served_score, served_rank, model_version, request_id")
    a = ap.parse_args(argv)
    if a.window < 0:
        ap.error("--window must be >= 0")
    try:
        by_req, by_user, bad = read_clicks(a.clicks)
        rows, st = join(read_log(a.log), by_req, by_user, a.window, a.model, a.with_served)
        out = sys.stdout if a.out == "-" else open(a.out, "w")
        try:
            write_rows(rows, out, a.format)
        finally:
            if out is not sys.stdout:
                out.close()
    except (OSError, JoinError) as e:
        print(f"join_impressions: {e}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, ValueError) as e:
        print(f"join_impressions: a log record lacks a field or has a wrong type: {e}",
              file=sys.stderr)
        return 2
    print(f"join_impressions: {st['records']} impressions, {st['rows']} rows, "
          f"{st['positives']} positive; clicks matched {st['clicks_matched']}, "
          f"unmatched {st['clicks_unmatched']}, malformed {bad}", file=sys.stderr)
    return 1 if bad or not st["records"] else 0


if __name__ == "__main__":
    sys.exit(main())
