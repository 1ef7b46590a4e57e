#!/usr/bin/python3
# compare_scores.py - compares ctr-score output with the expected scores from
# make_golden.py, line by line: same user_id (and JSON type), same number of
# scores, every score within --tol.  Prints the largest difference; exit 0
# when everything matches, 1 on any mismatch, 2 on unreadable input.
#
#   /usr/bin/python3 tools/compare_scores.py EXPECTED.jsonl GOT.jsonl [--tol 1e-5]

import argparse
import json
import math
import sys


def read_lines(path):
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}") from None
            if not isinstance(rec, dict) or "user_id" not in rec \
                    or not isinstance(rec.get("scores"), list):
                raise ValueError(f"{path}:{n}: expected an object with "
                                 "user_id and a scores list")
            out.append((n, rec))
    return out


def compare(expected, got, tol):
    """Returns (list of problems, max abs diff, lines compared)."""
    problems = []
    max_diff = 0.0
    if len(expected) != len(got):
        problems.append(f"{len(expected)} expected lines, {len(got)} got")
    for (ne, e), (ng, g) in zip(expected, got):
        where = f"line {ng} (user {e['user_id']!r})"
        if e["user_id"] != g["user_id"] or type(e["user_id"]) != type(g["user_id"]):
            problems.append(f"{where}: user_id {g['user_id']!r}, expected "
                            f"{e['user_id']!r}")
            continue
        es, gs = e["scores"], g["scores"]
        if len(es) != len(gs):
            problems.append(f"{where}: {len(gs)} scores, expected {len(es)}")
            continue
        for k, (a, b) in enumerate(zip(es, gs)):
            if not isinstance(b, (int, float)) or isinstance(b, bool) \
                    or not math.isfinite(b):
                problems.append(f"{where}: score {k} is {b!r}")
                continue
            d = abs(float(a) - float(b))
            max_diff = max(max_diff, d)
            if d > tol:
                problems.append(f"{where}: score {k} is {b!r}, expected {a!r} "
                                f"(diff {d:.3g} > {tol:g})")
    return problems, max_diff, min(len(expected), len(got))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Compare score files.")
    ap.add_argument("expected")
    ap.add_argument("got")
    ap.add_argument("--tol", type=float, default=1e-5,
                    help="largest allowed absolute difference (default 1e-5)")
    args = ap.parse_args(argv)
    try:
        expected, got = read_lines(args.expected), read_lines(args.got)
    except (OSError, ValueError) as e:
        print(f"compare_scores: {e}", file=sys.stderr)
        return 2
    problems, max_diff, n = compare(expected, got, args.tol)
    for p in problems[:20]:
        print(f"compare_scores: {p}", file=sys.stderr)
    if len(problems) > 20:
        print(f"compare_scores: ... and {len(problems) - 20} more",
              file=sys.stderr)
    print(f"compare_scores: {n} lines, max abs diff {max_diff:.3g}, "
          f"tol {args.tol:g}: {'FAIL' if problems else 'ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
