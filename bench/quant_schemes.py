#!/usr/bin/python3
"""How int8 schemes compare on a trained model, in a numpy model of the
folded QNN (the same algebra as core/qin.c, in double precision; the first
layer exact, as the engine's split keeps it).

Scores the first `requests` validation requests of a model made by
tools/make_demo.py and prints, for each scheme against exact arithmetic:
max and mean |dp|, AUC difference, share of requests whose top 10 change.
What a scheme calibrates on is the ranking requests of training users
(requests.jsonl without the validation users), never the scored rows.
Schemes:

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
  R:A        weights rounded by R with activations A (wonly, asym, x2):
             rtn to nearest; G column by column with the calibration
             inputs' H = X^T X (GPTQ, tools/int8_rounding.py, what
             convert.py --calibrate writes); GS the same, each layer's
             calibration inputs through the layers already rounded; GG one H
             per output channel weighted by x_o^2 (the QNN's gate)

    /usr/bin/python3 bench/quant_schemes.py [DEMO_DIR] [REQUESTS] [MODE,...]   # demo 1000
    (bench/results/quant-2026-12-08.md: demo 2000 wonly,asym,x2,G:wonly,G:x2,...)
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import int8_rounding as i8r  # noqa: E402
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
# Calibration: the ranking requests of training users (requests.jsonl,
# drawn like the impressions; the validation users left out), never the
# validation rows scored below.
held = {json.loads(l)["user_id"] for l in open(f"{d}/validation.jsonl")}
creqs = [r for r in (json.loads(l) for l in open(f"{d}/requests.jsonl")) if r["user_id"] not in held]
def inputs(rs):
    out = []
    with torch.no_grad():
        for r in rs:
            cands = [(c["item_id"], [c["likes_level"], c["views_level"]]) for c in r["candidates"]]
            b = ref.make_batch(cfg, items, [i for i in users[r["user_id"]] if i in items or i == 0], cands)
            out.append(m.input_vector(b))
    return torch.cat(out).double()
X0 = inputs(reqs)
XC = inputs(creqs)
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
BUILT = {}
def colf(W):  # int8x2's balance: f_k = sqrt(max_o |W[o, k]|)
    return i8r.balance(W).double()
def gptq_rows(W, Hs, damp=0.01):
    """GPTQ with a Hessian per output row, Hs (out x in x in)."""
    W = W.clone(); out, n = W.shape
    s = i8r.scales(W).double().clamp_min(1e-300)
    Hs = Hs.clone()
    dg = torch.diagonal(Hs, dim1=1, dim2=2)
    dg += damp * dg.mean(1, keepdim=True) + 1e-12
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hs)), upper=True)
    Q = torch.zeros_like(W)
    for k in range(n):
        q = torch.clamp(torch.round(W[:, k] / s), -127, 127) * s
        Q[:, k] = q
        e = (W[:, k] - q) / U[:, k, k]
        W[:, k + 1:] -= e[:, None] * U[:, k, k + 1:]
    return Q
def layer_step(x, l, yv):
    z = x * (yv + bs[l]) + cs[l]
    z = torch.where(z > 0, z, a[l] * z)
    return x + z
def product(x, l, act, Wq):
    """y = x W^T of layer l with weight Wq (dequantised int8; for x2 in the
    balanced space) and activations per act."""
    W = Ws[l]
    if act == "wonly": return x @ Wq.T
    if act == "asym": return qasym(x, 1) @ Wq.T
    if act == "x2":
        xs = x * colf(W)
        q1 = qasym(xs, 1); q2 = qasym(xs - q1, 1)
        return (q1 + q2) @ Wq.T
    raise ValueError(act)
def build(rounding, act, XC):
    """Per layer (1..L-1) the dequantised int8 weight by `rounding`:
    rtn (round to nearest), G (GPTQ, H of the calibration inputs), GG (GPTQ
    with a Hessian per output channel weighted by x_o^2: QIN's gate x * y),
    GS / GGS (the same, each layer's calibration inputs through the layers
    already rounded, with act's activations)."""
    out = [None]
    x = layer_step(XC, 0, XC @ Ws[0].T)
    for l in range(1, L):
        W = Ws[l]
        f = colf(W) if act == "x2" else torch.ones(W.shape[1], dtype=W.dtype)
        Wb = W / f
        xs = x * f
        if rounding == "rtn":
            Wq = qsym(Wb, 1)
        elif rounding.startswith("GG"):
            Hs = torch.stack([(xs * (x[:, o:o + 1] ** 2)).T @ xs for o in range(W.shape[0])])
            Wq = gptq_rows(Wb, Hs)
        else:
            q, sc = i8r.gptq(Wb, xs.T @ xs)
            Wq = q.double() * sc.double()[:, None]
        out.append(Wq)
        seq = rounding.endswith("S")
        x = layer_step(x, l, product(x, l, act, Wq) if seq else x @ W.T)
    return out
def run(X, mode, calib=None):
    if ":" in mode:  # rounding:act with weights from build()
        rounding, act = mode.split(":")
        key = (rounding, act)
        if key not in BUILT: BUILT[key] = build(rounding, act, XC)
        x = X.clone()
        for l in range(L):
            yv = x @ Ws[l].T if l == 0 else product(x, l, act, BUILT[key][l])
            x = layer_step(x, l, yv)
        return torch.sigmoid(x @ fcw + fcb).numpy()
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
# calibration: per-layer input absmax of the calibration requests
calib = []
x = XC.clone()
for l in range(L):
    calib.append(x.abs().amax(0))
    yv = x @ Ws[l].T; z = x * (yv + bs[l]) + cs[l]; z = torch.where(z > 0, z, a[l] * z); x = x + z
ev = X0; yev = y
p32 = run(ev, "fp32")
print(f"{d}: {ev.shape[0]} scores, {XC.shape[0]} calibration rows; fp32 AUC {auc(yev, p32):.5f}")
MODES = ("row", "asym", "wonly", "aonly", "smooth0.5", "smooth0.3", "smooth0.7", "bf16", "x2",
         "x2smooth0.5", "x2smooth0.7", "L1bf16+asym", "L1bf16+x2", "L1bf16+x2smooth0.5")
for mode in (sys.argv[3].split(",") if len(sys.argv) > 3 else MODES):
    p = run(ev, mode, calib)
    dp = np.abs(p - p32)
    n = 32
    top = lambda s: [tuple(np.argsort(-s[i:i+n], kind="stable")[:10]) for i in range(0, len(s), n)]
    ch = np.mean([a_ != b_ for a_, b_ in zip(top(p32), top(p))])
    print(f"  {mode:10} max|dp| {dp.max():.2e} mean {dp.mean():.2e} dAUC {auc(yev, p) - auc(yev, p32):+.2e} top10 changed {ch:.1%}")
