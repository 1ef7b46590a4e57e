#!/usr/bin/python3
"""How int8 schemes compare on a trained model, in a numpy model of the
folded QNN (the same algebra as core/qin.c, in double precision; the first
layer exact, as the engine's split keeps it).

Scores the first `requests` validation requests of a model made by
tools/make_demo.py (half of them calibrate, the other half are scored) and
prints, for each scheme against exact arithmetic: max and mean |dp|, AUC
difference, share of requests whose top 10 change.  Schemes:

  row        activations per row, symmetric (max |x| / 127); weights per
             output channel, symmetric
  asym       activations per row over their range with a zero point (what
             core/dense_quant.c does)
  wonly      weights int8, activations exact
  aonly      activations int8 (row), weights exact
  smoothA    SmoothQuant: per input channel f = max|X|^A / max|W|^(1-A) from
             the calibration half, x / f and W f, then row / channel int8
  x2         int8x2 as served: input columns balanced (f = sqrt max|W|),
             weights per channel, rows asymmetric in two levels (the row,
             then its rounding residual)
  x2bE       int8x2 balanced with f = max|W|^E instead (x2 is x2b0.5)
  x2smoothA  int8x2 with SmoothQuant's calibrated f instead of sqrt max|W|
  bf16       weights and rows rounded to bfloat16
  L1bf16+M   the first product layer (layer 1; layer 0 is exact, split) in
             bf16, the others in scheme M (per-layer precision)

    /usr/bin/python3 bench/quant_schemes.py [DEMO_DIR] [REQUESTS] [MODE,...]   # demo 1000
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import qin_reference as ref  # noqa: E402
torch.set_num_threads(1)
d = sys.argv[1] if len(sys.argv) > 1 else "demo"
nreq = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
sd = torch.load(f"{d}/ckpt.model", map_location="cpu")
# config from shapes
P = "embedding_layer.embedding_layer."
emb = sd[P + "embedding_layers.item_id.weight"]
mmw = sd[P + "feature_encoders.item_emb_d128.weight"]
L = max(int(k.split(".")[2]) for k in sd if k.startswith("qnn.layer.")) + 1
D = sd["qnn.layer.0.linear.0.weight"].shape[1]
R = sd["qnn.layer.0.linear.0.weight"].shape[0] // D
cfg = ref.QINConfig(embedding_dim=emb.shape[1], max_len=64, num_layers=L, num_row=R, batch_norm=True,
    item_vocab=emb.shape[0], tag_vocab=sd[P + "embedding_layers.item_tags.weight"].shape[0], num_tags=5,
    mm_in=128, mm_out=mmw.shape[0], context_fields=("likes_level", "views_level"), context_vocab=(11, 11), dropout=0.0)
m = ref.QINReference(cfg); m.load_state_dict(sd); m.eval()
items = {}
for line in open(f"{d}/items.jsonl"):
    o = json.loads(line); items[o["item_id"]] = (o["item_tags"], o["item_emb_d128"])
users = {}
for line in open(f"{d}/users.jsonl"):
    o = json.loads(line); users[o["user_id"]] = o["item_seq"]
reqs = [json.loads(l) for l in open(f"{d}/validation.jsonl")][:nreq]
labels = [json.loads(l) for l in open(f"{d}/validation_labels.jsonl")][:nreq]
X0 = []
with torch.no_grad():
    for r in reqs:
        cands = [(c["item_id"], [c["likes_level"], c["views_level"]]) for c in r["candidates"]]
        b = ref.make_batch(cfg, items, [i for i in users[r["user_id"]] if i in items or i == 0], cands)
        X0.append(m.input_vector(b))
X0 = torch.cat(X0).double()
y = np.array([v for l in labels for v in l])
# folded layers
Ws, bs, cs, a = [], [], [], []
for l in range(L):
    W = sd[f"qnn.layer.{l}.linear.0.weight"].double().view(R, D, D).sum(0)
    b = sd[f"qnn.layer.{l}.linear.0.bias"].double().view(R, D).sum(0)
    g, be, mu, var = [sd[f"qnn.norm.{l}.{k}"].double() for k in ("weight", "bias", "running_mean", "running_var")]
    s = g / torch.sqrt(var + 1e-5)
    Ws.append(s[:, None] * W); bs.append(s * b); cs.append(be - mu * s); a.append(float(sd[f"qnn.activation.{l}.weight"]))
fcw = sd["qnn.fc.weight"].double()[0]; fcb = float(sd["qnn.fc.bias"])
def qsym(x, axis):  # symmetric per-slice int8 round trip
    m_ = x.abs().amax(dim=axis, keepdim=True).clamp_min(1e-30)
    s = m_ / 127
    return torch.clamp(torch.round(x / s), -127, 127) * s
def qasym(x, axis):
    lo = x.amin(dim=axis, keepdim=True); hi = x.amax(dim=axis, keepdim=True)
    s = ((hi - lo) / 255).clamp_min(1e-30)
    z = torch.round(-lo / s)
    return (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s
def bf16(t):
    return t.float().bfloat16().double()
def x2(x, W, f):
    xs, Wb = x * f, W / f
    Wq = qsym(Wb, 1)
    q1 = qasym(xs, 1)
    q2 = qasym(xs - q1, 1)
    return (q1 + q2) @ Wq.T
def run(X, mode, calib=None):
    x = X.clone()
    for l in range(L):
        W = Ws[l]
        lmode = mode
        if mode.startswith("L1bf16+"):
            lmode = "bf16" if l == 1 else mode[len("L1bf16+"):]
        if l == 0 or mode == "fp32":
            yv = x @ W.T
        elif lmode == "bf16":
            yv = bf16(x) @ bf16(W).T
        elif lmode.startswith("x2"):
            if lmode.startswith("x2b"):
                f = W.abs().amax(0).clamp_min(1e-30) ** float(lmode[3:])
            elif lmode.startswith("x2smooth"):
                alpha = float(lmode[8:] or 0.5)
                f = (W.abs().amax(0).clamp_min(1e-6) ** (1 - alpha)) / (calib[l].clamp_min(1e-6) ** alpha)
            else:
                f = W.abs().amax(0).clamp_min(1e-30).sqrt()
            yv = x2(x, W, f)
        else:
            xs, Wq = x, W
            if lmode.startswith("smooth"):
                alpha = float(lmode[6:] or 0.5)
                f = (calib[l].clamp_min(1e-6) ** alpha) / (W.abs().amax(0).clamp_min(1e-6) ** (1 - alpha))
                xs = x / f; Wq = W * f
            xq = {"row": qsym(xs, 1), "asym": qasym(xs, 1), "wonly": xs}.get(lmode, qsym(xs, 1))
            if lmode == "aonly": Wq2 = Wq
            else: Wq2 = qsym(Wq, 1)
            if lmode == "wonly": xq = xs
            yv = xq @ Wq2.T
        z = x * (yv + bs[l]) + cs[l]
        z = torch.where(z > 0, z, a[l] * z)
        x = x + z
    return torch.sigmoid(x @ fcw + fcb).numpy()
def auc(y, s):
    o = np.argsort(s, kind="stable"); r = np.empty(len(s)); r[o] = np.arange(1, len(s) + 1)
    # ties ignored (continuous)
    npos = y.sum(); nneg = len(y) - npos
    return (r[y > 0].sum() - npos * (npos + 1) / 2) / (npos * nneg)
# calibration: per-layer input absmax over the first half
half = X0.shape[0] // 2
calib = []
x = X0[:half].clone()
for l in range(L):
    calib.append(x.abs().amax(0))
    yv = x @ Ws[l].T; z = x * (yv + bs[l]) + cs[l]; z = torch.where(z > 0, z, a[l] * z); x = x + z
ev = X0[half:]; yev = y[half:]
p32 = run(ev, "fp32")
print(f"{d}: {ev.shape[0]} scores; fp32 AUC {auc(yev, p32):.5f}")
MODES = ("row", "asym", "wonly", "aonly", "smooth0.5", "smooth0.3", "smooth0.7", "bf16", "x2",
         "x2smooth0.5", "x2smooth0.7", "L1bf16+asym", "L1bf16+x2", "L1bf16+x2smooth0.5")
for mode in (sys.argv[3].split(",") if len(sys.argv) > 3 else MODES):
    p = run(ev, mode, calib)
    dp = np.abs(p - p32)
    n = 32
    top = lambda s: [tuple(np.argsort(-s[i:i+n], kind="stable")[:10]) for i in range(0, len(s), n)]
    ch = np.mean([a_ != b_ for a_, b_ in zip(top(p32), top(p))])
    print(f"  {mode:10} max|dp| {dp.max():.2e} mean {dp.mean():.2e} dAUC {auc(yev, p) - auc(yev, p32):+.2e} top10 changed {ch:.1%}")
