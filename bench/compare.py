#!/usr/bin/python3
# compare.py - `make bench-compare`: the forward pass of our engine vs
# ONNX Runtime (CPU, onnxruntime-node) vs PyTorch eager, each on one thread,
# same weights, same inputs, interleaved in one run, for QIN (MicroLens
# shapes and the demo model), DIN (the challenge baseline's shapes) and TIN
# (the authors' Amazon shapes, a history of 64).  See bench/README.md.
#
#   OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 /usr/bin/python3 bench/compare.py \
#       --engine build/release/bench/bench_engine [--out build/bench-compare] \
#       [--budget 300] [--ns 1,16,64,256] [--configs microlens,demo]
#
# Workload: one request = one user's history of max_len (64) behaviours and
# N candidates.  The reference (tools/qin_reference.py, the training code's
# computation, unfolded) takes a batch of N rows, each with its own copy of
# the history, and that is what PyTorch runs and what is exported to ONNX
# (inputs with a dynamic leading axis N); the repeated history tensors are
# built once per N and are not part of any timing.  Our engine gets the
# same history once, as item vectors computed beforehand (the service's
# item cache), and is timed on qin_forward alone.
#
# Flow, per configuration: build the model (random weights, or the demo
# checkpoint), write our model file (tools/convert.py) and the ONNX export,
# write the input sets as raw tensors, start the two workers (bench_engine
# for ours, bench/ort_worker.js for ORT; a line protocol on stdin/stdout,
# each worker timing its own calls), keep PyTorch in this process; check
# that all three agree within 1e-5 for every N; then time in rounds that
# rotate N and the runtime order, so machine noise hits all alike.

import os

# Before torch (and its OpenMP/OpenBLAS) is loaded: one thread everywhere
# (the workers inherit this too).  OPENBLAS_CORETYPE is left as it is.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import convert  # noqa: E402
import din_reference as dref  # noqa: E402
import qin_reference as ref  # noqa: E402
import tin_reference as tref  # noqa: E402

TOL = 1e-5
OPSET = 17
INPUTS = ("ctx", "item_id", "item_tags", "item_mm", "seq_id", "seq_tags",
          "seq_mm")
TIN_INPUTS = ("item_id", "cate", "seq_id", "seq_cate", "sl")
ARCH_OF = {"microlens": "qin", "demo": "qin", "din": "din", "tin": "tin"}
# History length of the DIN and TIN runs (the targets' "history 64").
HIST = 64


def inputs_of(name):
    return TIN_INPUTS if ARCH_OF[name] == "tin" else INPUTS
RUNTIMES = ("ours", "ort", "torch")
LABEL = {"ours": "ours", "ort": "ORT", "torch": "PyTorch"}
# The shapes make_demo.py trains by default (5000 items, 499 tags, mm
# 128 -> 32), used with random weights when demo/ has no checkpoint.
DEMO_FALLBACK = dict(embedding_dim=16, num_layers=3, num_row=2,
                     item_vocab=5001, tag_vocab=500, mm_out=32)


def log(*a):
    print(*a, flush=True)


# --- models -----------------------------------------------------------------

class OnnxWrapper(nn.Module):
    """The reference's forward with the batch dict's tensors as positional
    inputs (what torch.onnx.export traces)."""

    def __init__(self, model, names):
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *args):
        return self.model(dict(zip(self.names, args)))


class AddOne(nn.Module):
    def forward(self, x):
        return x + 1.0


def build_model(name, args, outdir):
    """(model, cfg, model file for our engine, description, demo items or
    None)."""
    if name == "din":
        # The challenge baseline: embedding_dim 64, attention 512 -> 256,
        # DNN 1024 -> 512 -> 256 with batch norm, ReLU, no softmax, dropout
        # 0.1 (module indices as the challenge's checkpoints have them).
        cfg = dref.microlens_config(max_len=HIST, attention_dropout=0.1, net_dropout=0.1)
        model = dref.DINReference(cfg)
        dref.random_init(model, args.seed)
        ckpt = os.path.join(outdir, "ckpt.model")
        torch.save(model.state_dict(), ckpt)
        path = os.path.join(outdir, "model.safetensors")
        convert.convert_any(ckpt, path, max_len=HIST, version=f"bench-{args.seed}",
                            name="din-bench")
        return (model.eval(), cfg, path,
                f"MicroLens DIN (challenge baseline shapes), random weights "
                f"(random_init seed {args.seed})", None)
    if name == "tin":
        cfg = tref.amazon_config()
        model = tref.TINReference(cfg)
        tref.random_init(model, args.seed)
        ckpt = os.path.join(outdir, "ckpt.npz")
        np.savez(ckpt, **model.tf_variables())
        path = os.path.join(outdir, "model.safetensors")
        convert.convert_any(ckpt, path, version=f"bench-{args.seed}", name="tin-bench")
        return (model.eval(), cfg, path,
                f"Amazon TIN (item 63001 x 64, category 801 x 64, 431 positions), "
                f"random weights (random_init seed {args.seed}), history {HIST}", None)
    if name == "microlens":
        cfg = ref.microlens_config(4)
        model = ref.QINReference(cfg)
        ref.random_init(model, args.seed)
        path = os.path.join(outdir, "model.safetensors")
        convert.convert_state_dict(model.state_dict(), path,
                                   version=f"bench-{args.seed}",
                                   name="qin-bench")
        return (model.eval(), cfg, path,
                f"MicroLens QIN, random weights (random_init seed {args.seed})",
                None)
    ckpt = os.path.join(args.demo, "ckpt.model")
    mfile = os.path.join(args.demo, "model.safetensors")
    if os.path.exists(ckpt) and os.path.exists(mfile):
        # The configuration the model file declares (max_len, tag slots and
        # context fields are not in the checkpoint's shapes); the checkpoint
        # must then load into it exactly.
        cfg = convert.config_from_metadata(model_file_metadata(mfile))
        sd = {k: v for k, v in convert.load_checkpoint(ckpt).items()
              if not k.endswith(".num_batches_tracked")}
        model = ref.QINReference(cfg)
        missing, extra = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith(".num_batches_tracked")]
        if missing or extra:
            raise SystemExit(f"{ckpt} does not fit {mfile}: missing {missing}, "
                             f"unexpected {extra}")
        items = load_demo_items(os.path.join(args.demo, "items.jsonl"), cfg)
        return (model.eval(), cfg, mfile,
                f"demo checkpoint {ckpt} (trained by tools/make_demo.py), "
                f"our engine on {mfile}"
                + ("; item tags and multimodal vectors from items.jsonl"
                   if items else ""), items)
    cfg = ref.QINConfig(**DEMO_FALLBACK)
    model = ref.QINReference(cfg)
    ref.random_init(model, args.seed)
    path = os.path.join(outdir, "model.safetensors")
    convert.convert_state_dict(model.state_dict(), path,
                               version=f"bench-{args.seed}", name="qin-small")
    return (model.eval(), cfg, path,
            f"small config with random weights (random_init seed {args.seed}): "
            f"{args.demo}/ckpt.model and model.safetensors not found", None)


def model_file_metadata(path):
    """The __metadata__ of a safetensors file (its header only)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))["__metadata__"]


def load_demo_items(path, cfg):
    """{id: (tags, mm)} from make_demo.py's items.jsonl, or None."""
    if not os.path.exists(path):
        return None
    items = {}
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            tags = [int(t) for t in o.get("item_tags", [])][:cfg.num_tags]
            tags += [0] * (cfg.num_tags - len(tags))
            mm = [float(v) for v in o["item_emb_d128"]]
            if len(mm) == cfg.mm_in and 0 < int(o["item_id"]) < cfg.item_vocab:
                items[int(o["item_id"])] = (tags, mm)
    return items or None


def export_onnx(model, cfg, path, example, names):
    """Exports the reference, unfolded, with a dynamic leading axis n
    (example: a batch to trace with); returns a census of the graph's
    operators."""
    batch = example
    wrapper = OnnxWrapper(model, names).eval()
    kw = dict(input_names=list(names), output_names=["prob"],
              dynamic_axes={**{k: {0: "n"} for k in names}, "prob": {0: "n"}},
              opset_version=OPSET, do_constant_folding=True)
    args = tuple(batch[k] for k in names)
    with torch.no_grad():
        torch.onnx.export(wrapper, args, path, **kw)
        text = torch.onnx.export_to_pretty_string(wrapper, args, **kw)
    ops = collections.Counter(re.findall(r'Node \{type: "(\w+)"', text))
    ops.pop("Constant", None)
    return ops


def example_items(cfg):
    """A tiny request for tracing (the values do not matter)."""
    T, M = cfg.num_tags, cfg.mm_in
    items = {1: ([1] + [0] * (T - 1), [0.5] * M)}
    return items, [1, 0, 1], [(1, [1] * cfg.num_ctx), (1, [0] * cfg.num_ctx)]


# --- inputs -----------------------------------------------------------------

def draw_item(rng, cfg, k, demo_items, item_id):
    """Tags and multimodal vector of one item: from the demo's items when
    there, else random (about 30% padding slots, every 16th item without
    tags)."""
    if demo_items and item_id in demo_items:
        return demo_items[item_id]
    T = cfg.num_tags
    tags = [int(t) if rng.random() < 0.7 else 0
            for t in rng.integers(1, cfg.tag_vocab, T)]
    if k % 16 == 5:
        tags = [0] * T
    return tags, [float(v) for v in rng.standard_normal(cfg.mm_in)]


def make_sets(cfg, nmax, seed, demo_items):
    """Two requests' worth of inputs, as make_batch gives them to the
    reference: `bench` (a full history of max_len distinct behaviours, nmax
    candidates) and `edge` (left padding and padding inside the history, a
    repeated behaviour, repeated and absent tags, a zero multimodal vector,
    padding context values, a candidate that is also in the history)."""
    rng = np.random.default_rng(seed)
    L, T = cfg.max_len, cfg.num_tags
    pool = sorted(demo_items) if demo_items else range(1, cfg.item_vocab)
    ids = [int(i) for i in rng.choice(pool, size=L + nmax,
                                      replace=len(pool) < L + nmax)]
    items = {}
    for k, i in enumerate(ids):
        items.setdefault(i, draw_item(rng, cfg, k, demo_items, i))

    def ctx_row(zero=False):
        return [0 if zero else int(rng.integers(0, v)) for v in cfg.context_vocab]

    bench = ref.make_batch(cfg, items, ids[:L],
                           [(i, ctx_row()) for i in ids[L:L + nmax]])

    hist = list(ids[:L - 24])
    for j in range(0, len(hist), 7):
        hist[j] = 0                      # padding inside the history
    hist[-1] = hist[-3]                  # the same behaviour twice
    edge_items = dict(items)
    cands = []
    for k, i in enumerate(ids[L:L + nmax]):
        tags, mm = edge_items[i]
        if k % 5 == 1:                   # a tag repeated, one absent
            live = [t for t in tags if t] or [1]
            edge_items[i] = ([live[0]] * (T - 1) + [0], mm)
        elif k % 5 == 2:
            edge_items[i] = ([0] * T, mm)
        elif k % 5 == 3:
            edge_items[i] = (tags, [0.0] * cfg.mm_in)
        cands.append((hist[-2] if k == 7 else i, ctx_row(zero=k % 4 == 0)))
    edge = ref.make_batch(cfg, edge_items, hist, cands)
    return {"bench": bench, "edge": edge}


def make_tin_sets(cfg, nmax, seed):
    """TIN's two sets, as tin_reference.make_batch gives them: `bench` (a
    history of HIST behaviours, nmax candidates) and `edge` (a shorter
    history holding item 0, category 0 and a repeat; item 0 and a candidate
    from the history among the candidates)."""
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in rng.integers(0, cfg.item_vocab, HIST + nmax)]
    cate = {i: int(rng.integers(0, cfg.cate_vocab)) for i in ids}
    cate[0] = 0
    bench = tref.make_batch(cfg, cate, ids[:HIST], ids[HIST:HIST + nmax], HIST)
    hist = ids[:HIST - 24]
    hist[3] = 0
    hist[-1] = hist[-3]
    cands = list(ids[HIST:HIST + nmax])
    cands[0], cands[7] = 0, hist[-2]
    edge = tref.make_batch(cfg, cate, hist, cands, HIST)
    return {"bench": bench, "edge": edge}


def write_set(batch, d, names=INPUTS):
    os.makedirs(d, exist_ok=True)
    shapes = {}
    for k in names:
        a = batch[k].numpy()
        a = a.astype("<i8" if a.dtype.kind in "iu" else "<f4", copy=False)
        ext = "i64" if a.dtype.kind == "i" else "f32"
        np.ascontiguousarray(a).tofile(os.path.join(d, f"{k}.{ext}"))
        shapes[k] = list(a.shape)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump({"shapes": shapes, "inputs": [
            [k, "float32", "f32"] if batch[k].dtype == torch.float32 else [k, "int64", "i64"]
            for k in names]}, f)


# --- workers ----------------------------------------------------------------

class Worker:
    """A process answering one line per command line (bench_engine.c,
    ort_worker.js)."""

    def __init__(self, name, argv, errpath):
        self.name = name
        self.err = open(errpath, "w")
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.err,
                                  text=True, bufsize=1, cwd=ROOT)
        self.banner = self.p.stdout.readline().strip()
        self.errpath = errpath

    @property
    def ready(self):
        return self.banner.startswith("ready")

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline()
        if not out.startswith("ok"):
            raise RuntimeError(f"{self.name}: {line!r} -> {out.strip() or 'EOF'} "
                               f"(stderr in {self.errpath})")
        return out.split()[1:]

    def probs(self, s, n):
        return np.array([float(v) for v in self.ask(f"probs {s} {n}")])

    def timed(self, line):
        w = self.ask(line)
        return int(w[0]), [int(v) for v in w[1:]]

    def close(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write("quit\n")
                self.p.stdin.flush()
                self.p.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
        self.err.close()


class TorchRunner:
    def __init__(self, model, batches, ns, names=INPUTS):
        self.model = model
        self.feeds = {(s, n): {k: b[k][:n] for k in names}
                      for s, b in enumerate(batches) for n in ns}

    def probs(self, s, n):
        with torch.inference_mode():
            return self.model(self.feeds[(s, n)]).double().numpy()

    def timed(self, s, n, k):
        f = self.feeds[(s, n)]
        t = []
        cpu0 = time.process_time_ns()
        with torch.inference_mode():
            for _ in range(k):
                t0 = time.perf_counter_ns()
                self.model(f)
                t.append(time.perf_counter_ns() - t0)
        return time.process_time_ns() - cpu0, t


# --- statistics and tables ----------------------------------------------------

def quantile(v, q):
    """Nearest-rank quantile."""
    s = sorted(v)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def fmt_us(ns):
    us = ns / 1e3
    return f"{us:.0f}" if us >= 1000 else f"{us:.1f}"


def folded_flops(cfg, n):
    """The arithmetic the folded model needs per request (bench_forward.c):
    num_layers x 2 N D^2 + attention 4 N L E + head 2 N D."""
    D, E, L = cfg.input_dim, cfg.item_dim, cfg.max_len
    return (cfg.num_layers * 2.0 * n * D * D + 4.0 * n * L * E + 2.0 * n * D,
            cfg.num_layers * 2.0 * n * D * D)


def reference_flops(cfg, n):
    """What the unfolded reference computes per request (multiply-adds x 2):
    item vectors of the target and the N copies of the history (W_mm), the
    projections q, k, v and W_o, the scores and the pooling, the R-row QNN
    layers and the head."""
    d, E, D, L, R = (cfg.embedding_dim, cfg.item_dim, cfg.input_dim,
                     cfg.max_len, cfg.num_row)
    per = (cfg.mm_in * cfg.mm_out * (L + 1) + E * 2 * E * (1 + 2 * L)
           + 2 * L * 2 * E + 2 * E * E + cfg.num_layers * R * D * D + D)
    return 2.0 * n * per


# --- the benchmark of one configuration ---------------------------------------

def run_config(name, args, ns, budget, out_lines, results):
    t_setup = time.time()
    outdir = os.path.join(args.out, name)
    os.makedirs(outdir, exist_ok=True)
    arch, names = ARCH_OF[name], inputs_of(name)
    is_qin = arch == "qin"
    model, cfg, mfile, desc, demo_items = build_model(name, args, outdir)
    nmax = max(ns)
    onnx_path = os.path.join(outdir, f"{arch}.onnx")
    if arch == "tin":
        batches = make_tin_sets(cfg, nmax, args.seed + 1)
        # Traced with the sets' history length (fixed in the graph; n is
        # the dynamic axis).
        example = {k: v[:2] for k, v in batches["bench"].items()}
    else:
        example = ref.make_batch(cfg, *example_items(cfg))
        batches = make_sets(cfg, nmax, args.seed + 1, demo_items)
    ops = export_onnx(model, cfg, onnx_path, example, names)
    set_names = list(batches)
    set_dirs = [os.path.join(outdir, "inputs", s) for s in set_names]
    for s, d in zip(set_names, set_dirs):
        write_set(batches[s], d, names)
    tiny = os.path.join(args.out, "tiny.onnx")
    if not os.path.exists(tiny):
        torch.onnx.export(AddOne(), (torch.zeros(16),), tiny,
                          input_names=["x"], output_names=["y"],
                          opset_version=OPSET)

    ours = Worker("ours", [args.engine, mfile, str(nmax)] + set_dirs,
                  os.path.join(outdir, "engine.stderr"))
    if not ours.ready:
        raise SystemExit(f"bench_engine did not start: {ours.banner} "
                         f"(see {ours.errpath})")
    ort = Worker("ort", [args.node, os.path.join(ROOT, "bench", "ort_worker.js"),
                         onnx_path, str(nmax)] + set_dirs + ["--overhead", tiny],
                 os.path.join(outdir, "ort.stderr"))
    ort_ok = ort.ready
    pt = TorchRunner(model, [batches[s] for s in set_names], ns, names)
    setup_s = time.time() - t_setup

    def say(line=""):
        log(line)
        out_lines.append(line)

    say(f"== {name}: {desc}")
    if is_qin:
        D, E, L = cfg.input_dim, cfg.item_dim, cfg.max_len
        say(f"   embedding_dim {cfg.embedding_dim}, item width E {E}, D {D}, "
            f"history {L}, {cfg.num_layers} QNN layers, R {cfg.num_row}, "
            f"item_vocab {cfg.item_vocab}, tag_vocab {cfg.tag_vocab}, "
            f"{ref.count_parameters(cfg):,} parameters")
    elif arch == "din":
        say(f"   embedding_dim {cfg.embedding_dim}, item width E {cfg.item_dim}, history "
            f"{cfg.max_len}, attention {cfg.attention_units}, DNN {cfg.dnn_units} with batch "
            f"norm, ReLU, no softmax; "
            f"{sum(p.numel() for p in model.parameters()):,} parameters")
    else:
        say(f"   H {cfg.hidden}, positions {cfg.max_len + 1}, f1 {cfg.f1_units}, f2 "
            f"{cfg.f2_units}, history {HIST}; "
            f"{sum(p.numel() for p in model.parameters()):,} weights (moving statistics "
            "included)")
    mad = dict(kv.split("=", 1) for kv in ours.banner.split() if "=" in kv)
    if "madds_per_cand_folded" in mad:
        f, u = float(mad["madds_per_cand_folded"]), float(mad["madds_per_cand_unfolded"])
        say(f"   multiply-adds per candidate at history {mad.get('hist')}: {f / 1e6:.3f}M "
            f"folded (ours), {u / 1e6:.3f}M as trained (ORT, PyTorch): {u / f:.2f}x")
    say(f"   ours: {ours.banner[6:]}")
    say(f"   ORT:  {ort.banner[6:] if ort_ok else 'UNAVAILABLE: ' + ort.banner}")
    say(f"   PyTorch {torch.__version__}: {torch.get_num_threads()} thread, "
        f"eval(), inference_mode")
    say(f"   ONNX opset {OPSET}, {os.path.getsize(onnx_path) / 1e6:.0f} MB, "
        "ops: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    say(f"   setup (weights, model file, ONNX export, inputs, workers) "
        f"{setup_s:.1f} s")

    # 1. Parity.
    say()
    say("   parity: max |p_a - p_b| over the N candidates (tolerance 1e-5)")
    say(f"   {'set':5} {'N':>4} {'ours-ORT':>10} {'ours-PyTorch':>13} "
        f"{'ORT-PyTorch':>12} {'p range':>15}  ok")
    parity_ok = True
    parity = []
    for si, s in enumerate(set_names):
        for n in ns:
            p_ours = ours.probs(si, n)
            p_pt = pt.probs(si, n)
            p_ort = ort.probs(si, n) if ort_ok else None
            d_op = float(np.abs(p_ours - p_pt).max())
            d_oo = float(np.abs(p_ours - p_ort).max()) if ort_ok else None
            d_rp = float(np.abs(p_ort - p_pt).max()) if ort_ok else None
            ok = all(d is None or d <= TOL for d in (d_op, d_oo, d_rp))
            parity_ok &= ok
            parity.append(dict(set=s, n=n, ours_ort=d_oo, ours_torch=d_op,
                               ort_torch=d_rp))
            na = "n/a"
            say(f"   {s:5} {n:4d} {na if d_oo is None else f'{d_oo:.2e}':>10} "
                f"{d_op:13.2e} {na if d_rp is None else f'{d_rp:.2e}':>12} "
                f"{p_pt.min():7.4f}..{p_pt.max():6.4f}  "
                f"{'yes' if ok else 'NO'}")

    # 2. Timing: warm up, calibrate, then rounds.
    rts = [r for r in RUNTIMES if r != "ort" or ort_ok]

    def call(rt, n, k):
        """(cpu ns, [(runtime, wall ns)...]) of k timed calls.  Ours
        alternates call by call with the sgemm yardstick."""
        if rt == "ours" and is_qin:
            c, t = ours.timed(f"both 0 {n} {k}")
            return c, [("ours", v) for v in t[0::2]] + [("sgemm", v) for v in t[1::2]]
        if rt == "ours":
            c, t = ours.timed(f"time 0 {n} {k}")
            return c, [("ours", v) for v in t]
        c, t = ort.timed(f"time 0 {n} {k}") if rt == "ort" else pt.timed(0, n, k)
        return c, [(rt, v) for v in t]

    def cost(res):
        return sum(v for _, v in res)

    est = {}
    for n in ns:
        for rt in rts:
            call(rt, n, 2)                           # warm-up
            est[(rt, n)] = cost(call(rt, n, 3)[1]) / 3
    # Budget per cell (runtime x N); ours is cheap, so it gets up to kmax
    # samples within its share.
    cell = budget / (len(ns) * len(rts))
    rounds = args.rounds
    iters = {key: int(min(args.kmax, max(args.kmin, cell * 1e9 / max(t, 1))))
             for key, t in est.items()}
    for key in iters:
        iters[key] = max(rounds, int(math.ceil(iters[key] / rounds)) * rounds)
    samples = {(rt, n): [] for n in ns for rt in rts + ["sgemm"]}
    cpu = {key: 0 for key in iters}
    t_time = time.time()
    # On a busy machine the calls run slower than calibrated; whole rounds
    # are dropped rather than letting the run grow without bound.
    deadline = t_time + 1.5 * budget
    done = rounds
    order = [(n, rt) for n in ns for rt in rts]
    for r in range(rounds):
        if r and time.time() > deadline:
            done = r
            break
        # Rotate which N and which runtime goes first in each round.
        shift = (r * (len(rts) + 1)) % len(order)
        for n, rt in order[shift:] + order[:shift]:
            c, res = call(rt, n, iters[(rt, n)] // rounds)
            for which, v in res:
                samples[(which, n)].append(v)
            cpu[(rt, n)] += c
    time_s = time.time() - t_time
    overhead = None
    if ort_ok:
        ort.timed("overhead 50")
        overhead = quantile(ort.timed("overhead 500")[1], 0.5)

    say()
    say(f"   forward pass per request, microseconds (median / p99); "
        f"{done} interleaved rounds, {time_s:.0f} s"
        + (f" (stopped after {done} of {rounds} rounds: over 1.5x the time "
           "budget: calls slower than calibrated, e.g. a busy machine)"
           if done < rounds else ""))
    hdr = (f"   {'N':>4} {'ours med':>9} {'p99':>7} {'ORT med':>9} {'p99':>7} "
           f"{'PyTorch med':>11} {'p99':>7} {'ORT/ours':>9} {'PyTorch/ours':>12}"
           f"  iters ours/ORT/PyTorch")
    say(hdr)
    rows = []
    for n in ns:
        st = {}
        for rt in RUNTIMES:
            if (rt, n) in samples:
                v = samples[(rt, n)]
                st[rt] = (quantile(v, 0.5), quantile(v, 0.99), len(v))
        o = st["ours"]
        cells = []
        for rt in ("ours", "ort", "torch"):
            w = 9 if rt != "torch" else 11
            if rt in st:
                cells.append(f"{fmt_us(st[rt][0]):>{w}} {fmt_us(st[rt][1]):>7}")
            else:
                cells.append(f"{'n/a':>{w}} {'n/a':>7}")
        r_ort = st["ort"][0] / o[0] if "ort" in st else None
        r_pt = st["torch"][0] / o[0]
        say(f"   {n:4d} " + " ".join(cells)
            + f" {(f'{r_ort:.1f}x' if r_ort else 'n/a'):>9} {r_pt:11.1f}x  "
            + "/".join(str(st[rt][2]) if rt in st else "-" for rt in RUNTIMES))
        rows.append(dict(n=n, **{f"{rt}_median_us": st[rt][0] / 1e3 for rt in st},
                         **{f"{rt}_p99_us": st[rt][1] / 1e3 for rt in st},
                         **{f"{rt}_iters": st[rt][2] for rt in st},
                         ort_over_ours=r_ort, torch_over_ours=r_pt))
    # Threads actually used: CPU time over wall time of the timed calls.
    util = {}
    for rt in rts:
        wall = sum(sum(samples[(rt, n)]) + (sum(samples[("sgemm", n)])
                                            if rt == "ours" and is_qin else 0) for n in ns)
        util[rt] = sum(cpu[(rt, n)] for n in ns) / wall
    say("   CPU time / wall time of the timed calls (1.00 = one thread, never "
        "descheduled; > 1: more threads; < 1: the machine was shared): "
        + ", ".join(f"{LABEL.get(rt, rt)} {util[rt]:.2f}" for rt in rts))
    if overhead is not None:
        say(f"   ORT call overhead (await session.run of a one-Add graph): "
            f"{overhead / 1e3:.1f} us median, included in the ORT times above")

    if is_qin:
        # 3. The limit: folded arithmetic at this run's sgemm rate.
        say()
        say("   the limit: folded arithmetic / sgemm rate of this run "
            "(sgemm: num_layers x (N x D) x (D x D)^T, distinct matrices, "
            "timed alternately with ours)")
        say(f"   {'N':>4} {'MFLOP':>9} {'ref MFLOP':>10} {'sgemm us':>9} "
            f"{'sgemm GF/s':>10} {'bound us':>9} {'ours us':>9} {'ours GF/s':>9}"
            f" {'ours/bound':>10}")
        for row in rows:
            n = row["n"]
            flops, qnn = folded_flops(cfg, n)
            g = quantile(samples[("sgemm", n)], 0.5)
            rate = qnn / g                                       # flop per ns
            bound = flops / rate
            o = row["ours_median_us"] * 1e3
            say(f"   {n:4d} {flops / 1e6:9.1f} {reference_flops(cfg, n) / 1e6:10.0f} "
                f"{g / 1e3:9.1f} {rate:10.1f} {bound / 1e3:9.1f} {o / 1e3:9.1f} "
                f"{flops / o:9.1f} {o / bound:9.2f}x")
            row.update(mflop=flops / 1e6, sgemm_gflops=rate, bound_us=bound / 1e3,
                       ours_over_bound=o / bound)
        say("   MFLOP: folded model (num_layers x 2 N D^2 + attention 4 N L E + "
            "head 2 N D); ref MFLOP: what the unfolded reference computes")

    ours.close()
    ort.close()
    results[name] = dict(description=desc, arch=arch, config=dataclasses.asdict(cfg),
        madds_per_candidate={k: float(v) for k, v in mad.items() if k.startswith("madds")},
        ort_available=ort_ok, ort_banner=ort.banner, ours_banner=ours.banner,
        parity_ok=parity_ok, parity=parity, rows=rows, cpu_over_wall=util,
        ort_overhead_us=None if overhead is None else overhead / 1e3,
        setup_s=setup_s, timing_s=time_s)
    return parity_ok


def loadavg():
    """The 1, 5 and 15 minute load averages (other work on the machine)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine():
    model = cores = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "Model name":
                model = v.strip()
            if k.strip() == "CPU(s)":
                cores = v.strip()
    except OSError:
        pass
    return (f"{model}, {cores} CPUs, {platform.system()} {platform.release()}; "
            f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")


def main():
    ap = argparse.ArgumentParser(
        description="QIN forward pass: our engine vs ONNX Runtime vs PyTorch "
                    "(bench/README.md)")
    ap.add_argument("--engine", default=os.path.join(
        ROOT, "build/release/bench/bench_engine"))
    ap.add_argument("--node", default="node")
    ap.add_argument("--out", default=os.path.join(ROOT, "build/bench-compare"))
    ap.add_argument("--demo", default=os.path.join(ROOT, "demo"))
    ap.add_argument("--configs", default="microlens,demo,din,tin")
    ap.add_argument("--ns", default="1,16,64,256")
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds of timed calls in all (default 420: "
                         "microlens 35%%, demo 10%%, din 35%%, tin 20%%)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--kmin", type=int, default=20)
    ap.add_argument("--kmax", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    ns = [int(v) for v in args.ns.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    os.makedirs(args.out, exist_ok=True)
    lines = []
    log(f"bench-compare: {machine()}; load average {loadavg()}")
    log(f"N in {ns}; timing budget {args.budget:.0f} s; one thread per runtime")
    results, ok = {}, True
    shares = {"microlens": 0.35, "demo": 0.10, "din": 0.35, "tin": 0.20}
    total_share = sum(shares.get(c, 0.25) for c in configs)
    for c in configs:
        if c not in ARCH_OF:
            raise SystemExit(f"unknown configuration {c}")
        log("")
        ok &= run_config(c, args, ns, args.budget * shares.get(c, 0.25) / total_share,
                         lines, results)
    total = time.time() - t0

    log("")
    log("targets:")
    verdicts = []
    for cname, target in (("din", 3.0), ("tin", 10.0)):
        if cname not in results:
            continue
        r = {r["n"]: r for r in results[cname]["rows"]}.get(64)
        if r is None:
            continue
        v = r.get("ort_over_ours")
        verdicts.append(f"  {cname.upper()} N=64 history {HIST}: ORT/ours = "
                        + (f"{v:.1f}x (target >= {target:g}x): "
                           f"{'met' if v >= target else 'MISSED'}" if v else
                           "n/a (ORT unavailable)"))
    if "microlens" in results:
        rows = {r["n"]: r for r in results["microlens"]["rows"]}
        for n in (16, 64):
            if n not in rows:
                continue
            r = rows[n]
            for rt, key in (("ORT", "ort_over_ours"), ("PyTorch", "torch_over_ours")):
                v = r.get(key)
                verdicts.append(
                    f"  QIN MicroLens N={n}: {rt}/ours = " + (f"{v:.1f}x (target >= 10x): "
                                                f"{'met' if v >= 10 else 'MISSED'}"
                                                if v else "n/a (ORT unavailable)"))
        for n, r in sorted(rows.items()):
            if n >= 64:
                v = r["ours_over_bound"]
                verdicts.append(f"  QIN MicroLens N={n}: ours = {v:.2f}x the sgemm bound "
                                f"(target <= 1.3x): {'met' if v <= 1.3 else 'MISSED'}")
    for v in verdicts:
        log(v)
    log(f"parity within {TOL:g}: {'yes' if ok else 'NO'}; "
        f"bench-compare took {total:.0f} s; load average now {loadavg()}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(machine=machine(), ns=ns, results=results,
                       verdicts=verdicts, total_s=total, parity_ok=ok), f,
                  indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
