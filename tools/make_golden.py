#!/usr/bin/python3
# make_golden.py - golden data for the C engine's parity tests and the
# ctr-score end-to-end test, produced by the PyTorch reference
# (qin_reference.py) with random but non-trivial weights.
#
# For each configuration ("small" and "microlens") it writes DIR/<config>/:
#   ckpt.model        torch.save of the reference's state_dict (FuxiCTR keys)
#   model.safetensors that checkpoint converted by convert.py's code path
#   golden.txt        items, cases and expected probabilities (for fscanf)
#   items.jsonl users.jsonl requests.jsonl expected.jsonl   (for ctr-score)
#   cases.txt         the case names, in order (for humans)
# Deterministic for a given --seed.  Before writing it checks that the
# probabilities are not saturated, that a float32 folded computation (the
# C engine's algebra) agrees with the reference, and that the edge cases
# (truncation, tag masking, attention) really change the scores.
#
#   /usr/bin/python3 tools/make_golden.py --out build/golden [--seed 1]

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import convert  # noqa: E402
import qin_reference as ref  # noqa: E402
import safetensors_io  # noqa: E402

CONFIGS = {
    "small": ref.QINConfig(
        embedding_dim=8, max_len=6, num_layers=2, num_row=3, batch_norm=True,
        item_vocab=60, tag_vocab=25, num_tags=5, mm_in=12, mm_out=10,
        context_fields=("a", "b", "c"), context_vocab=(5, 7, 4)),
    "microlens": ref.microlens_config(num_row=4),
}
# Per configuration: items given features, candidates of the large case,
# extra behaviours beyond max_len in the long-history case.
SIZES = {"small": dict(items=45, many=12, extra=4),
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
    """The C engine's algebra in float32 numpy (MODEL_SPEC section 3 folds):
    summed row blocks, batch norm folded into the QNN, A = W_q^T W_k,
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


def write_outputs(d, cfg, items, cases):
    T, M = cfg.num_tags, cfg.mm_in
    used = sorted({i for c in cases for i in c["hist"] if i}
                  | {i for c in cases for i, _ in c["cands"]}
                  | {i for c in cases if c["stored"] for i in c["stored"] if i})
    with open(os.path.join(d, "golden.txt"), "w") as f:
        f.write("qin-golden 1\n")
        f.write(f"items {len(used)} {T} {M}\n")
        for i in used:
            tags, mm = items[i]
            f.write(" ".join([str(i)] + [str(t) for t in tags]
                             + [fnum(v) for v in mm]) + "\n")
        f.write(f"cases {len(cases)}\n")
        for c in cases:
            f.write(f"case {len(c['hist'])} {len(c['cands'])} {cfg.num_ctx}\n")
            f.write(" ".join(str(i) for i in c["hist"]) + "\n")
            for (i, cv), p in zip(c["cands"], c["probs"]):
                f.write(" ".join([str(i)] + [str(v) for v in cv] + [pnum(p)])
                        + "\n")
    with open(os.path.join(d, "items.jsonl"), "w") as f:
        short_done = empty_done = False
        for i in used:
            tags, mm = items[i]
            # Two lines list fewer tags than num_tags (the rest is padding):
            # one without its trailing padding, one with no tags at all.
            if not any(tags) and not empty_done:
                tags, empty_done = [], True
            elif any(tags) and tags[-1] == 0 and not short_done:
                while tags[-1] == 0:
                    tags = tags[:-1]
                short_done = True
            f.write('{"item_id": %d, "item_tags": %s, "item_emb_d128": [%s]}\n'
                    % (i, json.dumps(tags), ", ".join(fnum(v) for v in mm)))
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
                for j, (name, v) in enumerate(zip(cfg.context_fields, cv)):
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
        assert omitted > 0, "no candidate omits a context field"
    with open(os.path.join(d, "cases.txt"), "w") as f:
        for k, c in enumerate(cases):
            f.write(f"{k} {c['name']} user={c['user_id']} "
                    f"hist={len(c['hist'])} cands={len(c['cands'])}\n")
    return used


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
        cases.append(c)
    if fold_diff > FOLD_TOL:
        raise SystemExit(f"make_golden: {name}: folded float32 differs from the "
                         f"reference by {fold_diff:.3g} > {FOLD_TOL}")

    probs = np.concatenate([c["probs"] for c in cases]).astype(np.float64)
    logits = np.concatenate([c["logits"] for c in cases])
    mid = float(np.mean((probs > 0.05) & (probs < 0.95)))
    if probs.std() <= 0.05 or mid < 0.5:
        raise SystemExit(f"make_golden: {name}: probabilities saturated or flat "
                         f"(std {probs.std():.3f}, {mid:.0%} in 0.05..0.95)")
    used = write_outputs(d, cfg, items, cases)
    print(f"make_golden: {name}: {len(cases)} cases, {len(probs)} candidates, "
          f"{len(used)} items; logits {logits.min():.2f}..{logits.max():.2f} "
          f"(std {logits.std():.2f}), p std {probs.std():.3f}, "
          f"{mid:.0%} in 0.05..0.95; folded-vs-reference max |dp| "
          f"{fold_diff:.2g}; {time.time() - t0:.1f}s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", choices=sorted(CONFIGS), action="append",
                    help="generate only this configuration (repeatable)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    for name, cfg in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        generate(name, cfg, args.out, args.seed, SIZES[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
