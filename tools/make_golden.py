#!/usr/bin/python3
# make_golden.py - golden data for the C engine's parity tests and the
# ctr-score end-to-end test, produced by the PyTorch references
# (qin_reference.py, din_reference.py, tin_reference.py) with random but
# non-trivial weights.
#
# For each configuration (QIN: "small", "microlens"; DIN: "din-small",
# "din-dice-softmax", "din-microlens"; TIN: "tin-small", "tin-amazon") it
# writes DIR/<config>/:
#   ckpt.model | ckpt.npz  the checkpoint as training saves it: a FuxiCTR
#                     state_dict (DIN: under the configuration's dropout and
#                     Dice settings, so module indices move; din-dice-softmax
#                     as saved from a GPU run), or TIN's TF variables with
#                     Adam slots and step counters
#   model.safetensors that checkpoint converted by convert.py's code path
#   golden.txt        items, cases, expected probabilities and the
#                     reference's top attention weights (for fscanf)
#   items.jsonl users.jsonl requests.jsonl expected.jsonl   (for ctr-score)
#   cases.txt         the case names, in order (for humans)
# Deterministic for a given --seed.  Before writing it checks that the
# probabilities are not saturated and that the edge cases really change
# the scores (QIN also: a float32 folded computation, the C engine's
# algebra, agrees with the reference).
#
#   /usr/bin/python3 tools/make_golden.py --out build/golden [--seed 1]

import argparse
import dataclasses
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import convert  # noqa: E402
import din_reference as dref  # noqa: E402
import qin_reference as ref  # noqa: E402
import safetensors_io  # noqa: E402
import tin_reference as tref  # noqa: E402

CONFIGS = {
    "small": ref.QINConfig(
        embedding_dim=8, max_len=6, num_layers=2, num_row=3, batch_norm=True,
        item_vocab=60, tag_vocab=25, num_tags=5, mm_in=12, mm_out=10,
        context_fields=("a", "b", "c"), context_vocab=(5, 7, 4)),
    "microlens": ref.microlens_config(num_row=4),
}
# Per configuration: items given features, candidates of the large case,
# extra behaviours beyond max_len in the long-history case.
DIN_SMALL = dict(embedding_dim=8, max_len=6, item_vocab=60, tag_vocab=25,
                 num_tags=5, mm_in=12, mm_out=10, context_fields=("a", "b", "c"),
                 context_vocab=(5, 7, 4), attention_units=(16, 8),
                 dnn_units=(32, 16))
# DIN: the challenge's dropout of 0.1 (module indices {0,3,6} / {0,4,8,12}),
# then Dice in both networks with softmax and no dropout, saved as from a
# GPU run; and the MicroLens shapes.
DIN_CONFIGS = {
    "din-small": (dref.DINConfig(**DIN_SMALL, attention_dropout=0.1,
                                 net_dropout=0.1), False),
    "din-dice-softmax": (dref.DINConfig(**DIN_SMALL, attention_dice=True,
                                        dnn_dice=True, softmax=True), True),
    "din-microlens": (dref.microlens_config(attention_dropout=0.1,
                                            net_dropout=0.1), False),
}
TIN_CONFIGS = {
    "tin-small": tref.TINConfig(item_vocab=50, cate_vocab=7, item_dim=8,
                                cate_dim=8, max_len=12, f1_units=10,
                                f2_units=6),
    "tin-amazon": tref.amazon_config(),
}
SIZES = {"small": dict(items=45, many=12, extra=4),
         "din-small": dict(items=45, many=12, extra=4),
         "din-dice-softmax": dict(items=45, many=12, extra=4),
         "din-microlens": dict(items=300, many=50, extra=16),
         "tin-small": dict(items=40, many=12, extra=5),
         "tin-amazon": dict(items=700, many=50, extra=20),
         "microlens": dict(items=300, many=50, extra=16)}
FOLD_TOL = 2e-6  # float32 folded vs unfolded, on the probability


# --- items and cases --------------------------------------------------------

def make_items(cfg, rng, n):
    """n items with features: {id: (tags, mm)}.  Includes ids 1 and
    item_vocab-1, the tag id tag_vocab-1, and the tag edge cases."""
    T, M = cfg.num_tags, cfg.mm_in
    ids = {1, cfg.item_vocab - 1}
    while len(ids) < n:
        ids.add(int(rng.randint(1, cfg.item_vocab)))
    ids = sorted(ids)
    items = {}
    kinds = {}
    for k, i in enumerate(ids):
        tags = [int(t) for t in rng.randint(1, cfg.tag_vocab, size=T)]
        kind = "full"
        if k % 7 == 1:
            tags, kind = [0] * T, "no-tags"
        elif k % 7 == 2:
            r = int(rng.randint(1, T))       # 1..T-1 real tags, then padding
            tags, kind = tags[:r] + [0] * (T - r), "fewer-tags"
        elif k % 7 == 3:
            tags = [t if j % 2 else 0 for j, t in enumerate(tags)]
            kind = "gappy-tags"                # padding between real tags
        elif k % 7 == 4 and T >= 2:
            tags = [tags[0], tags[0]] + [0] * (T - 2)
            kind = "repeated-tag"              # the repeat counts twice
        if k == 5:
            tags[0] = cfg.tag_vocab - 1
        # Multiples of 1/1024: exact in float32, float64 and decimal text.
        mm = np.round(rng.standard_normal(M) * 1024.0) / 1024.0
        if k == 6:
            mm[:] = 0.0                        # an all-zero multimodal vector
        items[i] = ([int(t) for t in tags], [float(v) for v in mm])
        kinds[i] = kind
    return items, kinds


def make_cases(cfg, rng, items, kinds, sizes):
    """The cases, as a list of (name, draw); draw() returns a dict with hist
    (the history the model is given, before truncation), cands
    [(id, [ctx...])], and how the ctr-score files express them: stored (the
    history in users.jsonl, None for no line) and override (the request
    carries hist as its item_seq)."""
    L = cfg.max_len
    ids = sorted(items)
    edge = [i for i in ids if kinds[i] in ("no-tags", "fewer-tags",
                                           "gappy-tags", "repeated-tag")]

    def pick(n, pool=None):
        pool = ids if pool is None else pool
        return [int(x) for x in rng.choice(pool, size=n, replace=True)]

    def ctx(mode="random"):
        if mode == "zero":
            return [0] * cfg.num_ctx
        if mode == "max":
            return [v - 1 for v in cfg.context_vocab]
        if mode == "nonzero":
            return [int(rng.randint(1, v)) for v in cfg.context_vocab]
        return [int(rng.randint(0, v)) for v in cfg.context_vocab]

    def cands(n, pool=None, modes=None):
        out = []
        for k, i in enumerate(pick(n, pool)):
            mode = modes[k % len(modes)] if modes else "random"
            out.append((i, ctx(mode)))
        return out

    short = max(1, L // 3)
    # Each case is drawn by a function so that generate() can draw it again
    # (deterministically: the rng moves on) when the draw fails to exercise
    # what the case is for (e.g. every attention score of a short history
    # happened to be negative, so the ReLU zeroed them all).
    builders = [
        ("empty-history-one-candidate",
         lambda: dict(hist=[], cands=cands(1, modes=["nonzero"]))),
        ("empty-history-context-padding",
         lambda: dict(hist=[], cands=cands(4, modes=["zero", "nonzero",
                                                     "random", "max"]))),
        ("short-left-padded-history",
         lambda: dict(hist=[0] * max(1, L // 4) + pick(short),
                      cands=cands(3, modes=["nonzero", "zero", "random"]))),
        ("history-exactly-max-len",
         lambda: dict(hist=pick(L), cands=cands(3))),
        ("history-longer-than-max-len",
         lambda: dict(hist=pick(sizes["extra"] // 2) + [0]
                      + pick(sizes["extra"] // 2) + pick(L - 2) + [0] + pick(1),
                      cands=cands(4, modes=["random", "max"]))),
        ("zeros-in-the-middle",
         lambda: dict(hist=pick(2) + [0] + pick(max(1, L // 3)) + [0, 0]
                      + pick(2), cands=cands(3))),
        ("all-padding-history",
         lambda: dict(hist=[0] * min(3, L),
                      cands=cands(2, modes=["nonzero", "zero"]))),
        ("tag-edge-items",
         lambda: dict(hist=pick(min(L, len(edge)), edge),
                      cands=[(i, ctx()) for i in edge[:6]])),
        ("repeated-behaviours-and-candidates",
         lambda: dict(hist=[ids[3], ids[4], ids[3], ids[3], ids[7]],
                      cands=[(ids[3], ctx("nonzero")), (ids[3], ctx("zero")),
                             (ids[7], ctx("nonzero")),
                             (ids[9], ctx("nonzero"))])),
        ("many-candidates",
         lambda: dict(hist=[0] * 2 + pick(L - 2), cands=cands(sizes["many"]))),
        ("request-item-seq-overrides-stored",
         lambda: dict(hist=[0] + pick(max(2, L // 2)), stored=pick(L),
                      override=True, cands=cands(3))),
        ("request-empty-item-seq-overrides-stored",
         lambda: dict(hist=[], stored=pick(max(2, L // 2)), override=True,
                      cands=cands(2))),
        ("unknown-user-with-request-item-seq",
         lambda: dict(hist=pick(3), stored=None, override=True,
                      cands=cands(2))),
    ]

    def finish(k, name, c):
        c["name"] = name
        # ctr-score user ids: mostly "u<k>", every third an integer.
        c["user_id"] = 1000 + k if k % 3 == 2 else f"u{k}"
        c.setdefault("override", False)
        c.setdefault("stored", c["hist"])
        return c

    return [(name, (lambda k=k, name=name, b=b: finish(k, name, b())))
            for k, (name, b) in enumerate(builders)]


# --- reference, folded check and sensitivity --------------------------------

@torch.no_grad()
def reference_probs(model, cfg, items, hist, cands):
    batch = ref.make_batch(cfg, items, hist, cands)
    return model(batch).numpy().astype(np.float32)


@torch.no_grad()
def reference_logits(model, cfg, items, hist, cands):
    return model.logits(ref.make_batch(cfg, items, hist, cands)).numpy()


class Folded:
    """The C engine's algebra in float32 numpy (the folds of docs/MODEL_SPEC.md
    section 3): summed row blocks, batch norm folded into the QNN, A = W_q^T W_k,
    B = W_o W_v.  Used to check that the golden data is within reach of a
    folded float32 engine, and (with `variant`) that each edge case matters."""

    def __init__(self, cfg, sd):
        f = lambda k: sd[k].detach().numpy().astype(np.float32)  # noqa: E731
        P = ref.PREFIX
        self.cfg = cfg
        self.ctx = [f(f"{P}embedding_layers.{n}.weight")
                    for n in cfg.context_fields]
        self.item = f(P + "embedding_layers.item_id.weight")
        self.tag = f(P + "embedding_layers.item_tags.weight")
        self.mm = f(P + f"feature_encoders.{ref.MM_FIELD}.weight")
        self.tag_live = np.any(self.tag != 0, axis=1)
        wq, wk = f("attention_layers.W_q.weight"), f("attention_layers.W_k.weight")
        wv, wo = f("attention_layers.W_v.weight"), f("attention_layers.W_o.weight")
        self.A = wq.T @ wk                 # (E, E)
        self.B = wo @ wv                   # (E, E)
        self.scale = np.float32(1.0 / math.sqrt(cfg.attn_dim))
        D, R = cfg.input_dim, cfg.num_row
        self.layers = []
        for i in range(cfg.num_layers):
            W = f(f"qnn.layer.{i}.linear.0.weight").reshape(R, D, D).sum(0)
            b = f(f"qnn.layer.{i}.linear.0.bias").reshape(R, D).sum(0)
            c = np.zeros(D, np.float32)
            if cfg.batch_norm:
                s = f(f"qnn.norm.{i}.weight") / np.sqrt(
                    f(f"qnn.norm.{i}.running_var") + np.float32(1e-5))
                W, b = s[:, None] * W, s * b
                c = f(f"qnn.norm.{i}.bias") - f(f"qnn.norm.{i}.running_mean") * s
            self.layers.append((W, b, c, f(f"qnn.activation.{i}.weight")[0]))
        self.fc_w, self.fc_b = f("qnn.fc.weight")[0], f("qnn.fc.bias")[0]

    def item_vec(self, items, i, variant=None):
        tags, mm = items[i]
        rows = self.tag[tags]
        if variant == "tag-mean-over-all-slots":
            n = np.float32(len(tags))
        else:
            n = np.float32(self.tag_live[tags].sum())
        e_tag = rows.sum(0) / (n + np.float32(1e-12))
        e_mm = self.mm @ np.asarray(mm, np.float32)
        return np.concatenate([self.item[i], e_tag, e_mm]).astype(np.float32)

    def probs(self, items, hist, cands, variant=None):
        cfg = self.cfg
        if variant == "no-truncation":
            seq = list(hist)
        elif variant == "no-attention":
            seq = []
        else:
            seq = list(hist)[-cfg.max_len:]
        H = [self.item_vec(items, i, variant) for i in seq if i != 0]
        AH = [self.A @ h for h in H]
        BH = [self.B @ h for h in H]
        out = []
        for i, cv in cands:
            t = self.item_vec(items, i, variant)
            pool = t.copy()
            for ah, bh in zip(AH, BH):
                a = max(np.float32(0), np.float32(ah @ t) * self.scale)
                pool += a * bh
            x = np.concatenate([tab[v] for tab, v in zip(self.ctx, cv)]
                               + [t, pool]).astype(np.float32)
            for W, b, c, slope in self.layers:
                z = x * (W @ x + b) + c
                z = np.where(z >= 0, z, slope * z)
                x = x + z
            logit = np.float32(self.fc_w @ x + self.fc_b)
            out.append(1.0 / (1.0 + np.exp(-np.float64(logit))))
        return np.asarray(out, np.float64)


def case_problem(folded, items, c, base):
    """Why case c would not test what it is for (None when it does)."""
    def diff(variant):
        return float(np.max(np.abs(
            base - folded.probs(items, c["hist"], c["cands"], variant))))
    nm = c["name"]
    if any(c["hist"]) and nm != "tag-edge-items" and diff("no-attention") < 1e-4:
        return "the attention hardly changes the scores"
    if nm == "history-longer-than-max-len" and diff("no-truncation") < 1e-4:
        return "truncation to max_len hardly changes the scores"
    if nm == "tag-edge-items" and diff("tag-mean-over-all-slots") < 1e-4:
        return "the tag mask hardly changes the scores"
    return None


# --- output -----------------------------------------------------------------

def fnum(x):
    """Exact short text of a float (items' values are multiples of 1/1024)."""
    return repr(float(x))


def pnum(p):
    return "%.9g" % float(p)


# Top weights written per candidate: the engine's tests ask for one fewer
# and use the last to tell a tie at their last rank.
EXPLAIN_K = 4


def top_weights(w, hist_pos, k=EXPLAIN_K):
    """The k largest |w| (ties: the later position first) as [(position in
    the given history, weight)], what engine.h's explanation returns."""
    order = sorted(range(len(w)), key=lambda j: (-abs(float(w[j])), -hist_pos[j]))
    return [(hist_pos[j], float(w[j])) for j in order[:k]]


def write_outputs(d, arch, sch, items, cases):
    """Writes golden.txt and the ctr-score files.  sch: dict(num_tags, mm_in,
    cate, context_fields, item_min); items: {id: dict(tags, mm, cate)}."""
    T, M, C = sch["num_tags"], sch["mm_in"], int(sch["cate"])
    fields = sch["context_fields"]
    used = sorted({i for c in cases for i in c["hist"] if i or arch == "tin"}
                  | {i for c in cases for i, _ in c["cands"]}
                  | {i for c in cases if c["stored"] for i in c["stored"]
                     if (i or arch == "tin") and i in items})
    with open(os.path.join(d, "golden.txt"), "w") as f:
        f.write(f"ctr-golden 2 {arch}\n")
        f.write(f"items {len(used)} {T} {M} {C}\n")
        for i in used:
            it = items[i]
            f.write(" ".join([str(i)] + [str(t) for t in it["tags"]]
                             + [fnum(v) for v in it["mm"]]
                             + ([str(it["cate"])] if C else [])) + "\n")
        f.write(f"cases {len(cases)}\n")
        for c in cases:
            f.write(f"case {len(c['hist'])} {len(c['cands'])} {len(fields)} {EXPLAIN_K}\n")
            f.write(" ".join(str(i) for i in c["hist"]) + "\n")
            for (i, cv), p, ex in zip(c["cands"], c["probs"], c["explain"]):
                ex = list(ex) + [(-1, 0.0)] * (EXPLAIN_K - len(ex))
                f.write(" ".join([str(i)] + [str(v) for v in cv] + [pnum(p)]
                                 + [f"{q} {w:.9g}" for q, w in ex]) + "\n")
    with open(os.path.join(d, "items.jsonl"), "w") as f:
        short_done = empty_done = False
        for i in used:
            it = items[i]
            if arch == "tin":
                f.write(json.dumps({"item_id": i, "cate_id": it["cate"]}) + "\n")
                continue
            tags = it["tags"]
            # Two lines list fewer tags than num_tags (the rest is padding):
            # one without its trailing padding, one with no tags at all.
            if not any(tags) and not empty_done:
                tags, empty_done = [], True
            elif any(tags) and tags[-1] == 0 and not short_done:
                while tags[-1] == 0:
                    tags = tags[:-1]
                short_done = True
            f.write('{"item_id": %d, "item_tags": %s, "item_emb_d128": [%s]}\n'
                    % (i, json.dumps(tags), ", ".join(fnum(v) for v in it["mm"])))
    with open(os.path.join(d, "users.jsonl"), "w") as f:
        for c in cases:
            if c["stored"] is not None:
                f.write(json.dumps({"user_id": c["user_id"],
                                    "item_seq": c["stored"]}) + "\n")
        # A stored user nobody asks about.
        f.write(json.dumps({"user_id": "u_idle", "item_seq": used[:3]}) + "\n")
    with open(os.path.join(d, "requests.jsonl"), "w") as f, \
            open(os.path.join(d, "expected.jsonl"), "w") as g:
        omitted = 0
        for c in cases:
            cl = []
            for k, (i, cv) in enumerate(c["cands"]):
                cand = {"item_id": i}
                for j, (name, v) in enumerate(zip(fields, cv)):
                    # Padding context: omitted on alternate candidates.
                    if v == 0 and (k + j) % 2 == 0:
                        omitted += 1
                        continue
                    cand[name] = v
                cl.append(cand)
            req = {"user_id": c["user_id"], "candidates": cl}
            if c["override"]:
                req["item_seq"] = c["hist"]
            f.write(json.dumps(req) + "\n")
            g.write('{"user_id": %s, "scores": [%s]}\n'
                    % (json.dumps(c["user_id"]),
                       ", ".join(pnum(p) for p in c["probs"])))
        assert omitted > 0 or not fields, "no candidate omits a context field"
    with open(os.path.join(d, "cases.txt"), "w") as f:
        for k, c in enumerate(cases):
            f.write(f"{k} {c['name']} user={c['user_id']} "
                    f"hist={len(c['hist'])} cands={len(c['cands'])}\n")
    return used


def check_spread(name, probs):
    probs = np.asarray(probs, np.float64)
    mid = float(np.mean((probs > 0.05) & (probs < 0.95)))
    if probs.std() <= 0.05 or mid < 0.5:
        raise SystemExit(f"make_golden: {name}: probabilities saturated or flat "
                         f"(std {probs.std():.3f}, {mid:.0%} in 0.05..0.95)")
    return mid


def qd_items(items):
    """QIN/DIN items {id: (tags, mm)} as write_outputs takes them."""
    return {i: dict(tags=t, mm=m, cate=0) for i, (t, m) in items.items()}


def write_int8_model(d, cfg, sd, meta, tensors, seed):
    """model-int8.safetensors: the same model with the int8x2 weights that
    convert.py --calibrate writes, rounded on random probe inputs (not the
    cases'): test_golden.c holds fp32 to the same golden probabilities
    (the int8x2 weights ignored) and int8x2 to its bound with them."""
    import int8_rounding
    model = ref.QINReference(cfg)
    model.load_state_dict(sd)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x0 = torch.cat([model.input_vector(ref.random_probe_batch(cfg, gen, 256))
                        for _ in range(8)])
    extra = int8_rounding.qnn_int8_tensors(sd, cfg.num_layers, cfg.num_row, cfg.batch_norm,
                                           x0)
    t = dict(tensors)
    t.update({k: v for k, v in extra.items() if v.dtype != np.int8})
    t.update({k: v for k, v in extra.items() if v.dtype == np.int8})
    safetensors_io.write(os.path.join(d, "model-int8.safetensors"), t, meta)


def generate(name, cfg, out, seed, sizes):
    t0 = time.time()
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    salt = sum(name.encode())  # a different stream per configuration
    torch.manual_seed(seed * 1000 + salt)
    model = ref.QINReference(cfg)
    ref.random_init(model, seed * 1000 + salt)
    model.eval()
    sd = model.state_dict()
    got = {k: tuple(v.shape) for k, v in sd.items()
           if not k.endswith("num_batches_tracked")}
    assert got == dict(ref.checkpoint_shapes(cfg)), "checkpoint_shapes drifted"

    ckpt = os.path.join(d, "ckpt.model")
    torch.save(sd, ckpt)
    model_path = os.path.join(d, "model.safetensors")
    cfg2, meta, _ = convert.convert_file(
        ckpt, model_path, max_len=cfg.max_len, num_tags=cfg.num_tags,
        context_fields=cfg.context_fields, version=f"golden-{seed}", name="qin")
    assert cfg2 == cfg, (cfg2, cfg)
    # Round trip: the file holds exactly the reference's tensors.
    meta_r, tensors = safetensors_io.read(model_path)
    assert meta_r == meta and convert.config_from_metadata(meta_r) == cfg
    assert set(tensors) == set(got)
    for k, v in tensors.items():
        assert np.array_equal(v, sd[k].numpy()), k
    if name == "small":
        write_int8_model(d, cfg, sd, meta, tensors, seed * 1000 + salt)

    rng = np.random.RandomState(seed * 1000 + salt)
    items, kinds = make_items(cfg, rng, sizes["items"])
    folded = Folded(cfg, sd)
    fold_diff = 0.0
    cases = []
    for name_c, draw in make_cases(cfg, rng, items, kinds, sizes):
        for attempt in range(20):
            c = draw()
            c["probs"] = reference_probs(model, cfg, items, c["hist"],
                                         c["cands"])
            fp = folded.probs(items, c["hist"], c["cands"])
            problem = case_problem(folded, items, c, fp)
            if problem is None:
                break
        else:
            raise SystemExit(f"make_golden: {name}: case {name_c}: {problem} "
                             "in 20 draws")
        fold_diff = max(fold_diff, float(np.max(np.abs(fp - c["probs"]))))
        c["logits"] = reference_logits(model, cfg, items, c["hist"], c["cands"])
        c["explain"] = padded_explain(qin_weights(model, cfg, items, c["hist"], c["cands"]),
                                      cfg.max_len, c["hist"])
        cases.append(c)
    if fold_diff > FOLD_TOL:
        raise SystemExit(f"make_golden: {name}: folded float32 differs from the "
                         f"reference by {fold_diff:.3g} > {FOLD_TOL}")

    probs = np.concatenate([c["probs"] for c in cases]).astype(np.float64)
    logits = np.concatenate([c["logits"] for c in cases])
    mid = check_spread(name, probs)
    sch = dict(num_tags=cfg.num_tags, mm_in=cfg.mm_in, cate=False,
               context_fields=cfg.context_fields)
    used = write_outputs(d, "qin", sch, qd_items(items), cases)
    print(f"make_golden: {name}: {len(cases)} cases, {len(probs)} candidates, "
          f"{len(used)} items; logits {logits.min():.2f}..{logits.max():.2f} "
          f"(std {logits.std():.2f}), p std {probs.std():.3f}, "
          f"{mid:.0%} in 0.05..0.95; folded-vs-reference max |dp| "
          f"{fold_diff:.2g}; {time.time() - t0:.1f}s")

@torch.no_grad()
def qin_weights(model, cfg, items, hist, cands):
    """a_j = relu(m_j q . k_j / sqrt(2E)) per candidate and padded history
    position (B, max_len), from the reference's own projections."""
    b = ref.make_batch(cfg, items, hist, cands)
    t = model.item_vectors(b["item_id"], b["item_tags"], b["item_mm"])
    h = model.item_vectors(b["seq_id"], b["seq_tags"], b["seq_mm"])
    mask = (b["seq_id"] != 0).float()
    att = model.attention_layers
    score = torch.einsum("bld,bd->bl", att.W_k(h), att.W_q(t)) * att.scale
    return torch.relu(score * mask).numpy()


def padded_explain(w, L, hist):
    """Top weights per candidate of a left-padded window (QIN, DIN): window
    position p is hist[len(hist) - L + p]; padding positions take no part."""
    seq = ref.pad_history(hist, L)
    real = [p for p in range(L) if seq[p] != 0]
    hpos = [len(hist) - L + p for p in real]
    return [top_weights([row[p] for p in real], hpos) for row in w]


def save_as_from_gpu(sd, path):
    """torch.save(sd) with every storage tagged as CUDA memory, as a GPU run
    writes it (no GPU needed): loading it back without
    map_location="cpu" fails on a machine without CUDA."""
    import torch.serialization as ser
    real = ser.location_tag
    ser.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(sd, path)
    finally:
        ser.location_tag = real


def generate_din(name, cfg, gpu, out, seed, sizes):
    t0 = time.time()
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    salt = sum(name.encode())
    torch.manual_seed(seed * 1000 + salt)
    model = dref.DINReference(cfg)
    dref.random_init(model, seed * 1000 + salt)
    model.eval()
    sd = model.state_dict()
    ckpt = os.path.join(d, "ckpt.model")
    if gpu:
        save_as_from_gpu(sd, ckpt)
        try:
            torch.load(ckpt)
            if not torch.cuda.is_available():
                raise SystemExit(f"make_golden: {name}: the GPU-tagged checkpoint loads "
                                 "without map_location")
        except RuntimeError:
            pass  # as a real GPU checkpoint on a machine without CUDA
    else:
        torch.save(sd, ckpt)
    model_path = os.path.join(d, "model.safetensors")
    arch, meta, _, _ = convert.convert_any(
        ckpt, model_path, max_len=cfg.max_len, num_tags=cfg.num_tags,
        context_fields=cfg.context_fields, softmax=cfg.softmax,
        version=f"golden-{seed}", name=name)
    assert arch == "din" and meta["softmax"] == ("1" if cfg.softmax else "0")

    rng = np.random.RandomState(seed * 1000 + salt)
    items, kinds = make_items(cfg, rng, sizes["items"])
    cases = []

    @torch.no_grad()
    def probs_of(hist, cands, c=cfg):
        return model(ref.make_batch(c, items, hist, cands)).numpy().astype(np.float64)

    for name_c, draw in make_cases(cfg, rng, items, kinds, sizes):
        for attempt in range(20):
            c = draw()
            c["probs"] = probs_of(c["hist"], c["cands"])
            problem = None
            if any(c["hist"]) and np.max(np.abs(c["probs"] - probs_of([], c["cands"]))) < 1e-4:
                problem = "the attention hardly changes the scores"
            if name_c == "history-longer-than-max-len":
                wide = dataclasses.replace(cfg, max_len=len(c["hist"]))
                if np.max(np.abs(c["probs"] - probs_of(c["hist"], c["cands"], wide))) < 1e-4:
                    problem = "truncation to max_len hardly changes the scores"
            if problem is None:
                break
        else:
            raise SystemExit(f"make_golden: {name}: case {name_c}: {problem} in 20 draws")
        with torch.no_grad():
            w = model.attention_weights(ref.make_batch(cfg, items, c["hist"], c["cands"]))
        c["explain"] = padded_explain(w.numpy(), cfg.max_len, c["hist"])
        cases.append(c)
    probs = np.concatenate([c["probs"] for c in cases])
    mid = check_spread(name, probs)
    sch = dict(num_tags=cfg.num_tags, mm_in=cfg.mm_in, cate=False,
               context_fields=cfg.context_fields)
    used = write_outputs(d, "din", sch, qd_items(items), cases)
    print(f"make_golden: {name}: {len(cases)} cases, {len(probs)} candidates, "
          f"{len(used)} items; p std {probs.std():.3f}, {mid:.0%} in 0.05..0.95; "
          f"attention {meta['attention_units']}/{meta['attention_activation']}, dnn "
          f"{meta['dnn_units']}/{meta['dnn_activation']}, softmax {meta['softmax']}"
          f"{', GPU-saved checkpoint' if gpu else ''}; {time.time() - t0:.1f}s")


def tin_cases(cfg, rng, ids, sizes):
    """TIN's cases: ids from 0 (0 a real item), histories by length."""
    L = cfg.max_len

    def pick(n):
        return [int(x) for x in rng.choice(ids, size=n, replace=True)]

    unknown = [i for i in range(cfg.item_vocab) if i not in set(ids)][:3]
    builders = [
        ("empty-history-item-and-category-0",
         lambda: dict(hist=[], cands=[0] + pick(3))),
        ("short-history-with-item-0", lambda: dict(hist=[0] + pick(2), cands=pick(3) + [0])),
        ("history-exactly-max-len", lambda: dict(hist=pick(L), cands=pick(3))),
        ("history-longer-than-max-len", lambda: dict(hist=pick(L + sizes["extra"]),
                                                     cands=pick(4))),
        ("repeated-behaviours-and-candidates",
         lambda: dict(hist=[ids[3], ids[4], ids[3], ids[3], 0, 0],
                      cands=[ids[3], ids[3], 0, ids[5]])),
        ("many-candidates", lambda: dict(hist=pick(max(1, L // 2)), cands=pick(sizes["many"]))),
        ("request-item-seq-overrides-stored",
         lambda: dict(hist=pick(3), stored=pick(5), override=True, cands=pick(3))),
        ("request-empty-item-seq-overrides-stored",
         lambda: dict(hist=[], stored=pick(4), override=True, cands=pick(2))),
        ("unknown-user-with-request-item-seq",
         lambda: dict(hist=pick(3), stored=None, override=True, cands=pick(2))),
        # Ids without features are left out of a TIN history (engine.h):
        # the stored history has them, the model sees the rest.
        ("unknown-ids-left-out", lambda: (lambda h: dict(
            hist=h, stored=h[:1] + unknown[:2] + h[1:3] + unknown[2:] + h[3:],
            cands=pick(3)))(pick(min(5, L - 4)))),
    ]

    def finish(k, name, c):
        c["name"] = name
        c["user_id"] = 1000 + k if k % 3 == 2 else f"u{k}"
        c.setdefault("override", False)
        c.setdefault("stored", c["hist"])
        c["cands"] = [(i, []) for i in c["cands"]]
        return c

    return [(name, (lambda k=k, name=name, b=b: finish(k, name, b())))
            for k, (name, b) in enumerate(builders)]


def generate_tin(name, cfg, out, seed, sizes):
    t0 = time.time()
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    salt = sum(name.encode())
    model = tref.TINReference(cfg)
    tref.random_init(model, seed * 1000 + salt)
    rng = np.random.RandomState(seed * 1000 + salt)
    variables = model.tf_variables()
    variables.update(tref.adam_slots(variables, np.random.default_rng(seed)))
    ckpt = os.path.join(d, "ckpt.npz")
    np.savez(ckpt, **variables)
    model_path = os.path.join(d, "model.safetensors")
    arch, meta, _, _ = convert.convert_any(ckpt, model_path, version=f"golden-{seed}",
                                           name=name)
    assert arch == "tin" and int(meta["max_len"]) == cfg.max_len

    # Items: ids from 0, categories from 0; item 0 and category 0 both used.
    ids = {0, 1, cfg.item_vocab - 1}
    while len(ids) < sizes["items"]:
        ids.add(int(rng.randint(0, cfg.item_vocab)))
    ids = sorted(ids)
    cate = {i: int(rng.randint(0, cfg.cate_vocab)) for i in ids}
    cate[ids[1]] = 0
    cate[ids[2]] = cfg.cate_vocab - 1

    @torch.no_grad()
    def probs_of(hist, cands):
        b = tref.make_batch(cfg, cate, hist, [i for i, _ in cands])
        return model(b).numpy().astype(np.float64), model.weights(b)[0].numpy()

    cases = []
    for name_c, draw in tin_cases(cfg, rng, ids, sizes):
        for attempt in range(20):
            c = draw()
            c["probs"], w = probs_of(c["hist"], c["cands"])
            problem = None
            if c["hist"] and np.max(np.abs(c["probs"] - probs_of([], c["cands"])[0])) < 1e-4:
                problem = "the attention hardly changes the scores"
            if problem is None:
                break
        else:
            raise SystemExit(f"make_golden: {name}: case {name_c}: {problem} in 20 draws")
        l = min(len(c["hist"]), cfg.max_len)
        hpos = [len(c["hist"]) - l + k for k in range(l)]
        c["explain"] = [top_weights(row[:l], hpos) for row in w]
        cases.append(c)
    probs = np.concatenate([c["probs"] for c in cases])
    mid = check_spread(name, probs)
    sch = dict(num_tags=0, mm_in=0, cate=True, context_fields=())
    items = {i: dict(tags=[], mm=[], cate=cate[i]) for i in ids}
    used = write_outputs(d, "tin", sch, items, cases)
    print(f"make_golden: {name}: {len(cases)} cases, {len(probs)} candidates, "
          f"{len(used)} items; p std {probs.std():.3f}, {mid:.0%} in 0.05..0.95; "
          f"max_len {cfg.max_len}, checkpoint with Adam slots; {time.time() - t0:.1f}s")



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", choices=sorted(list(CONFIGS) + list(DIN_CONFIGS)
                                             + list(TIN_CONFIGS)), action="append",
                    help="generate only this configuration (repeatable)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    for name, cfg in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        generate(name, cfg, args.out, args.seed, SIZES[name])
    for name, (cfg, gpu) in DIN_CONFIGS.items():
        if not args.only or name in args.only:
            generate_din(name, cfg, gpu, args.out, args.seed, SIZES[name])
    for name, cfg in TIN_CONFIGS.items():
        if not args.only or name in args.only:
            generate_tin(name, cfg, args.out, args.seed, SIZES[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
