#!/usr/bin/python3
"""plots.py - the benchmarks' figures as PNG (matplotlib, Agg backend: no
display needed).  compare.py and e2e.py call it once their tables are
printed; it reads only what they already computed, so a figure and the
table beside it always come from the same run.

  compare_figure(results, path)  forward pass time against N, ours vs ONNX
                                 Runtime vs PyTorch, log-log, one panel per
                                 configuration (compare.py's results.json)
  e2e_figure(rows, path)         latency percentiles against offered load:
                                 a column per N, a row per percentile, a
                                 line per mode (e2e.py's rows)
  after_compare, after_e2e       the one call at the end of each script
                                 (build/bench-compare/compare.png,
                                 build/bench-e2e/e2e.png)

Redraw from a saved run:

    /usr/bin/python3 bench/plots.py compare build/bench-compare/results.json OUT.png
    /usr/bin/python3 bench/plots.py e2e build/bench-e2e/results.json OUT.png

Each figure carries a footer naming the machine, the load average and the
date, since a figure copied into a README outlives its run.
"""
import json
import math
import os
import re
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

RUNTIMES = [("ours", "ours (C engine)", "C0", "o"),
            ("ort", "ONNX Runtime", "C1", "s"),
            ("torch", "PyTorch eager", "C3", "^")]
MODES = {"warm": ("warm: item cache on", "C0"),
         "cold": ("cold: item cache off", "C3"),
         "floor": ("floor: model not run", "C2")}
PERCENTILES = [("p50_ms", "p50", "-", "o"), ("p99_ms", "p99", "--", "s"),
               ("p999_ms", "p99.9", ":", "^")]


def _plain(v, _pos=None):
    """Tick labels as plain numbers (1, 10, 100, 0.1), not 10^k."""
    if v >= 1:
        return f"{v:,.0f}"
    return f"{v:g}"


def _two_five(v, _pos=None):
    """Minor ticks of a log axis: label 2 and 5 of each decade only."""
    if v <= 0:
        return ""
    lead = round(v / 10 ** math.floor(math.log10(v)), 6)
    return _plain(v) if lead in (2, 5) else ""


def _footer(fig, text):
    fig.text(0.01, 0.005, text, fontsize=7, color="0.35", ha="left", va="bottom")


def compare_figure(results, path, footer=""):
    """results: compare.py's results.json (its "results" and "machine")."""
    configs = [c for c in ("microlens", "demo") if c in results.get("results", {})]
    configs += [c for c in results.get("results", {}) if c not in configs]
    fig, axes = plt.subplots(1, len(configs), figsize=(5.6 * len(configs), 4.6), squeeze=False)
    for ax, name in zip(axes[0], configs):
        res = results["results"][name]
        rows = sorted(res["rows"], key=lambda r: r["n"])
        ns = [r["n"] for r in rows]
        for key, label, color, marker in RUNTIMES:
            pts = [(r["n"], r[f"{key}_median_us"], r.get(f"{key}_p99_us")) for r in rows
                   if f"{key}_median_us" in r]
            if not pts:
                ax.plot([], [], color=color, label=f"{label}: not available")
                continue
            x = [p[0] for p in pts]
            ax.plot(x, [p[1] for p in pts], color=color, marker=marker, label=label, lw=1.8)
            if all(p[2] for p in pts):
                ax.fill_between(x, [p[1] for p in pts], [p[2] for p in pts], color=color,
                                alpha=0.15, lw=0)
            if key != "ours":
                ratio = "ort_over_ours" if key == "ort" else "torch_over_ours"
                for r in rows:
                    if r.get(ratio):
                        v = r[ratio]
                        ax.annotate(f"{v:.1f}x" if v < 10 else f"{v:.0f}x",
                                    (r["n"], r[f"{key}_median_us"]),
                                    textcoords="offset points", xytext=(6, -3), fontsize=7,
                                    color=color)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ns)
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        ax.set_xlabel("candidates per request (N)")
        ax.set_ylabel("forward pass per request, µs")
        c = res.get("config", {})
        ax.set_title(f"{name}: D {c.get('D')}, {c.get('num_layers')} layers, R {c.get('num_row')}, "
                     f"history {c.get('max_len')}", fontsize=10)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("QIN forward pass, one thread each: median (line) to p99 (band); "
                 "labels: times slower than ours", fontsize=10)
    _footer(fig, footer or results.get("machine", ""))
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def e2e_figure(rows, path, footer=""):
    """rows: [(mode, n, load, conns, result)] as e2e.py builds them; load is
    "saturation" (closed loop) or "NN% of sat" (paced); result has rps,
    p50_ms, p99_ms, p999_ms.  A grid: a column per N, a row per
    percentile, a line per mode; x is the load offered (a paced run that
    falls behind it shows as latency, not as a point moved left)."""
    ns = sorted({r[1] for r in rows})
    # The percentiles every row has (the precision runs keep p50 and p99);
    # a line per mode: the named modes in their colours, any other label
    # (e2e.py's "MODEL PRECISION MODE") in the next colour of the cycle.
    pcts = [p for p in PERCENTILES if all(p[0] in r[4] for r in rows)]
    modes = {m: v for m, v in MODES.items() if any(r[0] == m for r in rows)}
    for r in rows:
        if r[0] not in modes:
            modes[r[0]] = (r[0], f"C{len(modes) % 10}")
    fig, axes = plt.subplots(len(pcts), len(ns), figsize=(4.4 * len(ns), 2.9 * len(pcts)),
                             squeeze=False, sharey="row", sharex="col")
    for j, n in enumerate(ns):
        for i, (key, pname, _, _) in enumerate(pcts):
            ax = axes[i][j]
            for mode, (label, color) in modes.items():
                allpts = sorted((_offered(r, rows), r[4][key], r[2]) for r in rows
                                if r[0] == mode and r[1] == n)
                if not allpts:
                    continue
                # One connection, closed loop: the unloaded latency, a point
                # of its own (its rate is not a load anyone offered).
                pts = [p for p in allpts if p[2] != "1 conn"]
                for p in allpts:
                    if p[2] == "1 conn":
                        ax.plot([p[0]], [p[1]], marker="x", ms=8, ls="none", color=color,
                                label=None if pts else label)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker="o",
                            ms=4, lw=1.6, label=label)
                # The closed-loop point: what saturation delivers.
                for p in pts:
                    if p[2] == "saturation":
                        ax.plot([p[0]], [p[1]], marker="o", ms=10, mfc="none", color=color)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(_plain))
            ax.yaxis.set_minor_formatter(FuncFormatter(_two_five))
            ax.set_xlim(left=0)
            ax.tick_params(labelsize=8)
            ax.grid(True, which="major", alpha=0.35)
            ax.grid(True, which="minor", alpha=0.12)
            if j == 0:
                ax.set_ylabel(f"{pname} latency, ms", fontsize=9)
            if i == 0:
                ax.set_title(f"N = {n} candidates, history 64", fontsize=10)
            if i == len(pcts) - 1:
                ax.set_xlabel("offered load, req/s", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.3", marker="o", ms=10, mfc="none", ls="none"))
    labels.append("closed loop: the saturation rate (others: a fraction of it offered, paced)")
    if any(r[2] == "1 conn" for r in rows):
        handles.append(Line2D([], [], color="0.3", marker="x", ms=8, ls="none"))
        labels.append("one connection, closed loop")
    fig.legend(handles, labels, loc="upper center", ncol=min(3, len(handles)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.955))
    fig.suptitle("ctr-server end to end (HTTP, JSON, Redis, model), client-side latency "
                 "against load", fontsize=11)
    _footer(fig, footer)
    fig.tight_layout(rect=(0, 0.02, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def after_compare(out_dir, machine):
    """compare.py's last step: compare.png beside its results.json."""
    return _guarded(lambda: compare_figure(_load(os.path.join(out_dir, "results.json")),
                                           os.path.join(out_dir, "compare.png"),
                                           footer_line(machine)))


def after_e2e(rows, out_dir, machine):
    """e2e.py's last step: its rows as results.json (to redraw) and e2e.png."""
    def run():
        os.makedirs(out_dir, exist_ok=True)
        footer = footer_line(machine)
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump({"footer": footer, "rows": [
                {"mode": m, "n": n, "load": load, "conns": c, "result": r}
                for m, n, load, c, r in rows]}, f, indent=1)
        return e2e_figure(rows, os.path.join(out_dir, "e2e.png"), footer)
    return _guarded(run)


def _guarded(fn):
    """A figure that cannot be drawn is reported, never fatal: the tables
    are the run's result."""
    try:
        path = fn()
        print(f"plot: {path}", flush=True)
        return path
    except Exception as e:  # noqa: BLE001 (matplotlib raises many kinds)
        print(f"plot: not drawn ({type(e).__name__}: {e})", flush=True)
        return None


def _load(path):
    with open(path) as f:
        return json.load(f)


def _offered(row, rows):
    """The load offered: NN% of the same mode and N's saturation rate for a
    paced run; for the closed-loop run, the rate it reached."""
    m = re.match(r"(\d+)% of sat", row[2])
    if not m and row[2] != "half sat":
        return row[4]["rps"]
    frac = int(m.group(1)) / 100 if m else 0.5
    sat = [r[4]["rps"] for r in rows if r[0] == row[0] and r[1] == row[1] and r[2] == "saturation"]
    return frac * sat[0] if sat else row[4]["rps"]


def footer_line(machine):
    try:
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        load = "?"
    return f"{machine}; load average {load}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


def main(argv):
    if len(argv) != 4 or argv[1] not in ("compare", "e2e"):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[2]) as f:
        data = json.load(f)
    if argv[1] == "compare":
        compare_figure(data, argv[3])
    else:
        rows = [(r["mode"], r["n"], r["load"], r["conns"], r["result"]) for r in data["rows"]]
        e2e_figure(rows, argv[3], data.get("footer", ""))
    print(f"wrote {argv[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
