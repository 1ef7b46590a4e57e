#!/usr/bin/python3
"""Score quality of each precision against fp32 (`make bench` prints it).

Scores the same requests with `ctr-score --precision P` for P in fp32, bf16,
int8 and compares each with fp32:

  max |dp|, mean |dp|   absolute difference of the click probabilities
  AUC, dAUC            ROC AUC against the clicks, and its difference from
                       fp32's (data sets with clicks only)
  top-10 changed       share of requests whose ten best candidates, in
                       order, are not the same as fp32's (min(10, N) for
                       smaller requests)

on these data sets, each one skipped with a note when it is not there:

  golden-*             the C tests' golden cases of every architecture (QIN
                       small and microlens, DIN small, dice-softmax and
                       microlens, TIN small and amazon; build/golden, random
                       weights, no clicks), through ctr-score's files;
  demo                 the demo model's validation impressions (demo/,
                       tools/make_demo.py: one request per held-out user);
  demo-calibrated      the same requests on the demo checkpoint converted
                       with int8 weights rounded on training rows
                       (demo/model-calibrated.safetensors: convert.py
                       --calibrate demo/calibration.jsonl, made here when
                       missing; fp32 ignores those weights);
  full                 the same for the MicroLens-size model (demo/full,
                       tools/make_demo.py --full).

The data sets with clicks (demo, full) are QIN models: there is no trained
DIN or TIN model with a validation set in the project, so DIN's and TIN's
rows are the golden cases only (random weights: no AUC).

    /usr/bin/python3 bench/quality.py [--build build/release] [--demo demo]
        [--full demo/full] [--golden build/golden] [--make-demo]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = ("fp32", "bf16", "int8", "int8x2")
CALIBRATED = "model-calibrated.safetensors"
TOPK = 10
# The golden configurations of every architecture (tools/make_golden.py).
GOLDEN = ("small", "microlens", "din-small", "din-dice-softmax", "din-microlens", "tin-small",
          "tin-amazon")


def auc(labels, scores):
    """Rank-based ROC AUC; ties get their average rank."""
    pairs = sorted(zip(scores, labels))
    ranks = [0.0] * len(pairs)
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2.0 + 1.0
        i = j + 1
    npos = sum(1 for _, y in pairs if y)
    nneg = len(pairs) - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    rsum = sum(r for r, (_, y) in zip(ranks, pairs) if y)
    return (rsum - npos * (npos + 1) / 2.0) / (npos * nneg)


def top(scores, k=TOPK):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[:min(k, len(scores))]


def golden_set(golden_dir, name):
    """build/golden/<name>: the golden cases as ctr-score files (items,
    users with their histories, requests), as tools/make_golden.py writes
    them for every architecture."""
    d = os.path.join(golden_dir, name)
    need = ["model.safetensors", "items.jsonl", "users.jsonl", "requests.jsonl"]
    if not all(os.path.exists(os.path.join(d, n)) for n in need):
        return None
    return {"name": f"golden-{name}", "model": os.path.join(d, "model.safetensors"),
            "items": os.path.join(d, "items.jsonl"), "users": os.path.join(d, "users.jsonl"),
            "requests": os.path.join(d, "requests.jsonl"), "labels": None}


def demo_set(name, d, model="model.safetensors"):
    need = [model, "items.jsonl", "users.jsonl", "validation.jsonl",
            "validation_labels.jsonl"]
    if not all(os.path.exists(os.path.join(d, n)) for n in need):
        return None
    with open(os.path.join(d, "validation_labels.jsonl")) as f:
        labels = [json.loads(line) for line in f if line.strip()]
    return {"name": name, "model": os.path.join(d, model),
            "items": os.path.join(d, "items.jsonl"), "users": os.path.join(d, "users.jsonl"),
            "requests": os.path.join(d, "validation.jsonl"), "labels": labels}


def calibrated_model(d):
    """d/model-calibrated.safetensors: the demo checkpoint converted with its
    int8 weights rounded on calibration.jsonl (training rows; convert.py
    --calibrate), made when missing; None without the checkpoint or rows."""
    out = os.path.join(d, CALIBRATED)
    rows, ckpt = os.path.join(d, "calibration.jsonl"), os.path.join(d, "ckpt.model")
    if os.path.exists(out):
        return out
    if not (os.path.exists(rows) and os.path.exists(ckpt)):
        return None
    with open(os.path.join(d, "metrics.json")) as f:
        m = json.load(f)
    subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tools/convert.py"), "--checkpoint",
                    ckpt, "--out", out, "--name", m["model_name"], "--version",
                    m["model_version"], "--calibrate", rows, "--items",
                    os.path.join(d, "items.jsonl")], check=True)
    return out


def score(build, ds, precision):
    cmd = [os.path.join(build, "ctr-score"), "--model", ds["model"], "--items", ds["items"],
           "--precision", precision]
    if ds["users"]:
        cmd += ["--users", ds["users"]]
    with open(ds["requests"]) as f:
        r = subprocess.run(cmd, stdin=f, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"ctr-score --precision {precision} on {ds['name']} failed:\n"
                           + r.stderr[-2000:])
    return [json.loads(line)["scores"] for line in r.stdout.splitlines() if line.strip()]


def compare(ds, base, other):
    flat_b = [p for req in base for p in req]
    flat_o = [p for req in other for p in req]
    diffs = [abs(a - b) for a, b in zip(flat_o, flat_b)]
    changed = sum(1 for b, o in zip(base, other) if top(b) != top(o))
    row = {"max_dp": max(diffs), "mean_dp": sum(diffs) / len(diffs),
           "top10_changed": changed / len(base), "requests": len(base),
           "scores": len(flat_b)}
    if ds["labels"]:
        y = [v for req in ds["labels"] for v in req]
        row["auc"] = auc(y, flat_o)
        row["dauc"] = row["auc"] - auc(y, flat_b)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build/release"))
    ap.add_argument("--demo", default=os.path.join(ROOT, "demo"))
    ap.add_argument("--full", default=os.path.join(ROOT, "demo/full"))
    ap.add_argument("--golden", default=os.path.join(ROOT, "build/golden"))
    ap.add_argument("--make-demo", action="store_true",
                    help="make demo/ with tools/make_demo.py when it is missing")
    ap.add_argument("--json", default=os.path.join(ROOT, "build/quality.json"))
    args = ap.parse_args()

    if args.make_demo and not os.path.exists(os.path.join(args.demo, "validation.jsonl")):
        print("quality: no demo validation set; making demo/ (tools/make_demo.py)", flush=True)
        subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tools/make_demo.py"), "--out",
                        args.demo], check=True)

    sets, missing = [], []
    for name in GOLDEN:
        ds = golden_set(args.golden, name)
        (sets.append(ds) if ds else missing.append(f"golden-{name} ({args.golden}: make golden)"))
    for name, d, how in (("demo", args.demo, "tools/make_demo.py"),
                         ("full", args.full, "tools/make_demo.py --full")):
        ds = demo_set(name, d)
        (sets.append(ds) if ds else missing.append(f"{name} ({d}: {how})"))
        if name == "demo" and ds and calibrated_model(d):
            sets.append(demo_set("demo-calibrated", d, CALIBRATED))
        elif name == "demo":
            missing.append(f"demo-calibrated ({d}: calibration.jsonl, tools/make_demo.py "
                           "--calibration-only)")

    results = {}
    print("score quality by precision, against fp32 on the same requests (ctr-score)")
    print(f"{'data set':24} {'prec':6} {'requests':>8} {'scores':>7} {'max |dp|':>9} "
          f"{'mean |dp|':>9} {'AUC':>7} {'dAUC':>9} {'top-10 changed':>14}")
    for ds in sets:
        base = score(args.build, ds, "fp32")
        results[ds["name"]] = {}
        for p in PRECISIONS:
            sc = base if p == "fp32" else score(args.build, ds, p)
            row = compare(ds, base, sc)
            results[ds["name"]][p] = row
            a = f"{row['auc']:.4f}" if "auc" in row else "-"
            da = f"{row['dauc']:+.5f}" if "dauc" in row else "-"
            print(f"{ds['name']:24} {p:6} {row['requests']:>8} {row['scores']:>7} "
                  f"{row['max_dp']:>9.2e} {row['mean_dp']:>9.2e} {a:>7} {da:>9} "
                  f"{100 * row['top10_changed']:>13.1f}%", flush=True)
    for m in missing:
        print(f"(skipped {m})")

    print()
    targets = [("demo", "bf16", "dauc", 0.0005), ("demo", "bf16", "max_dp", 2e-3)]
    # int8 you can rank with: on the demo validation set the top 10 changes
    # in at most 5% of requests, max |dp| <= 1e-2, |dAUC| <= 0.001; on a
    # MicroLens-size model with random weights max |dp| <= 3e-2.
    for p in ("int8", "int8x2"):
        for name in ("demo", "demo-calibrated"):
            targets += [(name, p, "dauc", 0.001), (name, p, "max_dp", 1e-2),
                        (name, p, "top10_changed", 0.05)]
        targets += [("golden-microlens", p, "max_dp", 3e-2)]
    for name, p, key, lim in targets:
        row = results.get(name, {}).get(p)
        if not row:
            print(f"target {name} {p} |{key}| <= {lim:g}: not measured ({name} missing)")
            continue
        v = abs(row[key])
        print(f"target {name} {p} |{key}| <= {lim:g}: {v:.2e} {'met' if v <= lim else 'MISSED'}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
