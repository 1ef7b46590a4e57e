#!/usr/bin/python3
# make_demo.py - a synthetic, MicroLens-shaped data set with a planted signal,
# a small QIN trained on it with the reference module (qin_reference.py), and
# everything the service needs to run on it: the checkpoint, the converted
# model file, items/users for ctr-load, and ranking requests for load tests.
#
#   /usr/bin/python3 tools/make_demo.py [--out demo] [--seed 1] [--users 20000]
#       [--items 5000] [--epochs 4] [--threads 2] [--req-cands 16]
#       [--rows-per-user 32]
#   /usr/bin/python3 tools/make_demo.py --full     # MicroLens-size, into demo/full
#
# The planted signal (see World and World.click_logits):
#   - K topics with unit centres in a DZ-dimensional latent space; each item
#     has one topic and a latent z = normalise(centre + noise);
#   - item_emb_d128 = G z + noise (G a fixed random 128 x DZ map), and the 5
#     tags come mostly from the topic's own pool of tags (some items have
#     fewer tags, a few none);
#   - each item has a log-popularity s and a quality q: views_level is the
#     decile of s, likes_level the decile of 0.6 s + 0.8 q (both jittered by
#     one bucket now and then, per sample);
#   - users have an old and a current mixture of interests over the topics;
#     their history (oldest first, 0..100 items) drifts from the old one to
#     the current one, items within a topic drawn by popularity;
#   - an impression shows a candidate drawn from the user's current
#     interests or from the popular items, and is clicked with probability
#     sigmoid(A_SIM cos(z_cand, mean z of the last RECENT behaviours)
#             + B_Q q + B_V (views_level - 5.5) / 4.5 + item bias + c),
#     c set so that about 25% of impressions are clicks.
# The model has to find the candidate-to-history relation through its
# attention and the quadratic layers; popularity alone gives a much lower AUC.
#
# The default model: embedding_dim 16, 3 QNN layers, num_row 2, batch norm,
# W_mm 128 -> 32 (item width 64, D 160), 280,916 parameters; Adam, BCE, 4
# epochs of 18,000 users x 32 impressions, the learning rate x0.6 per epoch.
# Held out: 2,000 other users.  About 75 s on 2 cores; validation AUC about
# 0.84 against 0.56 for popularity alone (see tools/README.md).
#
# --full makes a model of the MicroLens configuration instead: embedding_dim
# 128, 4 QNN layers, num_row 4, W_mm 128 -> 128 (D 1024), 91,717 items and a
# tag table of 11,740 rows, i.e. exactly the 31,244,293 parameters of the
# challenge's QIN, trained briefly (one epoch over 8,000 users x 16
# impressions) on the same kind of synthetic world.  It is there to measure
# serving at full size (speed, and the score error of bf16 and int8 at
# D = 1024), not to be a good model: most of its 91,717 item embeddings are
# never trained.
#
# Besides the model, every run writes the validation impressions as
# requests (validation.jsonl: one line per held-out user, its impressions as
# candidates, its history from users.jsonl) and their clicks
# (validation_labels.jsonl, one array per line), which bench/quality.py
# scores in each precision, and the first 20,000 training impressions as
# training rows (calibration.jsonl, join_impressions.py's format), which
# convert.py --calibrate rounds int8x2's weights with (bench/quality.py's
# demo-calibrated); --calibration-only writes just that file for an
# existing demo (the same data, no training: seconds).
#
# Training runs the reference module's own layers (item_vectors, the
# attention's W_q/W_k/W_v/W_o, qnn) in training mode, grouped by user: the
# rows of a user share one history, so its keys and values are computed once
# (the same function as QINReference.forward, which is checked on held-out
# rows before anything is written).  Deterministic for a seed and a thread
# count.

import argparse
import json
import math
import os
import sys
import time

# OpenMP threads that spin while waiting make small training steps up to 10x
# slower when another process is busy on the same cores; sleeping ones do
# not.  Read when the OpenMP runtime loads, i.e. on `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import convert  # noqa: E402
import qin_reference as ref  # noqa: E402

# --- the synthetic world ----------------------------------------------------

K_TOPICS = 24
DZ = 16              # latent dimension
TAG_VOCAB = 500      # 0 = padding
TAGS_PER_TOPIC = 20  # topic k owns tags 1 + 20k .. 20 + 20k; the rest generic
NUM_TAGS = 5
MM = 128
MAX_LEN = 64
MAX_HIST = 100
RECENT = 20          # behaviours the planted similarity looks at
A_SIM, B_Q, B_V = 6.0, 0.35, 0.25
ITEM_BIAS_STD = 0.3
TARGET_POS = 0.25

FIELDS = ("likes_level", "views_level")


def normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def deciles(x):
    """1..10 by the decile of x among all items."""
    edges = np.quantile(x, np.linspace(0.1, 0.9, 9))
    return (np.searchsorted(edges, x) + 1).astype(np.int64)


class World:
    """Items (index 0 is padding), users and the samplers drawing from them."""

    def __init__(self, rng, n_users, n_items):
        self.n_users, self.n_items = n_users, n_items
        V = n_items + 1
        centres = normalise(rng.standard_normal((K_TOPICS, DZ)))
        topic = rng.randint(K_TOPICS, size=V)
        z = normalise(centres[topic]
                      + 0.6 * rng.standard_normal((V, DZ)) / math.sqrt(DZ))
        G = rng.standard_normal((MM, DZ))
        mm = z @ G.T + 0.35 * rng.standard_normal((V, MM))
        # What items.jsonl holds (4 decimals) is exactly what the model sees.
        mm = np.round(mm, 4)
        tags = np.zeros((V, NUM_TAGS), np.int64)
        n_tags = rng.choice([0, 1, 2, 3, 4, 5], size=V,
                            p=[0.03, 0.05, 0.07, 0.07, 0.08, 0.70])
        own = 1 + TAGS_PER_TOPIC * topic[:, None] + rng.randint(
            TAGS_PER_TOPIC, size=(V, NUM_TAGS))
        generic = rng.randint(1 + TAGS_PER_TOPIC * K_TOPICS, TAG_VOCAB,
                              size=(V, NUM_TAGS))
        pick = np.where(rng.random_sample((V, NUM_TAGS)) < 0.8, own, generic)
        slot = np.arange(NUM_TAGS)[None, :]
        tags = np.where(slot < n_tags[:, None], pick, 0)
        s = rng.standard_normal(V)           # log-popularity
        q = rng.standard_normal(V)           # quality
        self.views = deciles(s)
        self.likes = deciles(0.6 * s + 0.8 * q)
        self.bias = ITEM_BIAS_STD * rng.standard_normal(V)
        for a in (topic, z, mm, tags, s, q, self.views, self.likes, self.bias):
            a[0] = 0
        self.topic, self.z, self.mm, self.tags, self.s, self.q = \
            topic, z, mm, tags, s, q
        # Samplers: popularity-weighted, globally and within each topic.
        w = np.exp(0.8 * s)
        w[0] = 0.0
        self.global_cdf = np.cumsum(w) / w.sum()
        self.topic_items, self.topic_cdf = [], []
        for k in range(K_TOPICS):
            ids = np.nonzero((topic == k) & (np.arange(V) > 0))[0]
            self.topic_items.append(ids)
            self.topic_cdf.append(np.cumsum(w[ids]) / w[ids].sum())
        # Users: an old and a current interest mixture (mostly 1-3 topics).
        self.pi_old = rng.dirichlet(0.15 * np.ones(K_TOPICS), size=n_users)
        self.pi_now = rng.dirichlet(0.15 * np.ones(K_TOPICS), size=n_users)
        self.hist = self._histories(rng)
        self.recent = np.stack([
            self.z[h[-RECENT:]].mean(0) if len(h) else np.zeros(DZ)
            for h in self.hist])

    def popular(self, rng, n):
        return np.minimum(np.searchsorted(self.global_cdf, rng.random_sample(n),
                                          side="right"), self.n_items)

    def in_topics(self, rng, topics):
        out = np.empty(len(topics), np.int64)
        u = rng.random_sample(len(topics))
        for k in range(K_TOPICS):
            sel = np.nonzero(topics == k)[0]
            if len(sel):
                j = np.searchsorted(self.topic_cdf[k], u[sel], side="right")
                out[sel] = self.topic_items[k][np.minimum(
                    j, len(self.topic_items[k]) - 1)]
        return out

    @staticmethod
    def draw_topics(rng, pis):
        """One topic per row of the mixtures pis (n, K)."""
        u = rng.random_sample(len(pis))[:, None]
        return np.minimum((np.cumsum(pis, axis=1) < u).sum(1), K_TOPICS - 1)

    def _histories(self, rng):
        n = self.n_users
        length = np.clip(np.exp(rng.normal(math.log(22), 0.9, size=n)),
                         1, MAX_HIST).astype(np.int64)
        length[rng.random_sample(n) < 0.04] = 0
        owner = np.repeat(np.arange(n), length)
        start = np.repeat(np.cumsum(length) - length, length)
        pos = (np.arange(len(owner)) - start + 0.5) / np.repeat(
            np.maximum(length, 1), length)       # 0..1, oldest first
        now = rng.random_sample(len(owner)) < 0.3 + 0.7 * pos
        pis = np.where(now[:, None], self.pi_now[owner], self.pi_old[owner])
        items = self.in_topics(rng, self.draw_topics(rng, pis))
        explore = rng.random_sample(len(owner)) < 0.1
        items[explore] = self.popular(rng, int(explore.sum()))
        return np.split(items, np.cumsum(length)[:-1])

    def candidates(self, rng, users):
        """One impression candidate per entry of users."""
        mine = rng.random_sample(len(users)) < 0.45
        out = self.popular(rng, len(users))
        sel = np.nonzero(mine)[0]
        out[sel] = self.in_topics(rng, self.draw_topics(rng,
                                                        self.pi_now[users[sel]]))
        return out

    def levels(self, rng, items):
        """(likes_level, views_level) per sample: the item's buckets, now
        and then one bucket off."""
        out = []
        for lv in (self.likes, self.views):
            j = rng.choice([-1, 0, 1], size=len(items), p=[0.1, 0.8, 0.1])
            out.append(np.clip(lv[items] + j, 1, 10))
        return np.stack(out, axis=-1)

    def click_logits(self, users, items, ctx):
        r = self.recent[users]
        rn = np.linalg.norm(r, axis=-1)
        sim = (self.z[items] * r).sum(-1) / np.maximum(rn, 1e-9)
        sim[rn == 0] = 0.0                      # no history: no similarity
        return (A_SIM * sim + B_Q * self.q[items]
                + B_V * (ctx[..., 1] - 5.5) / 4.5 + self.bias[items])


def make_rows(world, rng, n):
    """n impressions per user: candidates (U, n), context (U, n, 2),
    clicks (U, n) and the true click probabilities."""
    U = world.n_users
    users = np.repeat(np.arange(U), n)
    cand = world.candidates(rng, users)
    ctx = world.levels(rng, cand)
    logit = world.click_logits(users, cand, ctx)
    # the offset that gives TARGET_POS positives on average
    lo, hi = -20.0, 20.0
    for _ in range(60):
        c = 0.5 * (lo + hi)
        if np.mean(1 / (1 + np.exp(-(logit + c)))) > TARGET_POS:
            hi = c
        else:
            lo = c
    p = 1 / (1 + np.exp(-(logit + c)))
    y = (rng.random_sample(len(p)) < p).astype(np.float32)
    return (cand.reshape(U, n), ctx.reshape(U, n, 2), y.reshape(U, n),
            p.reshape(U, n))


# --- AUC --------------------------------------------------------------------

def auc(y, score):
    """Rank-based ROC AUC (ties get their average rank)."""
    y = np.asarray(y).ravel() > 0.5
    score = np.asarray(score, np.float64).ravel()
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0           # 1-based average ranks
    ranks = avg_rank[inv]
    npos = int(y.sum())
    nneg = len(y) - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    return float((ranks[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


# --- the model ----------------------------------------------------------------

class Tensors:
    """The world as torch tensors the training loop indexes."""

    def __init__(self, world):
        self.tags = torch.from_numpy(world.tags)
        self.mm = torch.from_numpy(world.mm.astype(np.float32))
        hist = np.zeros((world.n_users, MAX_LEN), np.int64)
        for u, h in enumerate(world.hist):
            h = h[-MAX_LEN:]
            if len(h):
                hist[u, MAX_LEN - len(h):] = h
        self.hist = torch.from_numpy(hist)


def grouped_logits(model, T, users, cand, ctx):
    """QINReference.logits for the rows of `users` (U,), candidates cand
    (U, n) and context ctx (U, n, C), computing each user's history keys and
    values once and each distinct item's vector once.  Same function as the
    reference (checked by check_against_reference)."""
    U, n = cand.shape
    seq = T.hist[users]                                    # (U, L)
    L = seq.shape[1]
    ids, inv = torch.unique(torch.cat([seq.reshape(-1), cand.reshape(-1)]),
                            return_inverse=True)
    vec = model.item_vectors(ids, T.tags[ids], T.mm[ids])  # (N, E); id 0 -> 0
    att = model.attention_layers
    k_all, v_all = att.W_k(vec), att.W_v(vec)              # (N, 2E)
    inv_seq, inv_c = inv[:U * L].view(U, L), inv[U * L:].view(U, n)
    t = vec[inv_c]                                         # (U, n, E)
    q = att.W_q(t)                                         # (U, n, 2E)
    k, v = k_all[inv_seq], v_all[inv_seq]                  # (U, L, 2E)
    mask = (seq != 0).to(t.dtype)
    score = torch.einsum("und,uld->unl", q, k) * att.scale
    a = torch.relu(score * mask[:, None, :])
    pool = att.W_o(torch.einsum("unl,uld->und", a, v)) + t
    ctxe = [model.tables[f](ctx[..., i]) for i, f in enumerate(FIELDS)]
    x0 = torch.cat(ctxe + [t, pool], dim=-1)
    return model.qnn(x0.reshape(U * n, -1)).view(U, n)


@torch.no_grad()
def predict(model, T, users, cand, ctx, chunk=512):
    model.eval()
    out = []
    for i in range(0, len(users), chunk):
        sl = slice(i, i + chunk)
        out.append(torch.sigmoid(grouped_logits(model, T, users[sl], cand[sl],
                                                ctx[sl])))
    return torch.cat(out).numpy()


@torch.no_grad()
def check_against_reference(model, cfg, world, T, users, cand, ctx):
    """The training/evaluation path must equal QINReference.forward."""
    model.eval()
    items = {}
    fast = predict(model, T, users, cand, ctx)
    diff = 0.0
    for r, u in enumerate(users.tolist()):
        for i in set(cand[r].tolist()) | set(world.hist[u][-MAX_LEN:].tolist()):
            items.setdefault(i, (world.tags[i].tolist(),
                                 T.mm[i].tolist()))
        cands = [(int(i), [int(c) for c in cv])
                 for i, cv in zip(cand[r].tolist(), ctx[r].tolist())]
        p = model(ref.make_batch(cfg, items, world.hist[u].tolist(), cands))
        diff = max(diff, float(np.max(np.abs(p.numpy() - fast[r]))))
    return diff


def train(model, T, tr, va, args, rng_t):
    users_tr, cand_tr, ctx_tr, y_tr = tr
    users_va, cand_va, ctx_va, y_va = va
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, foreach=True)
    bce = torch.nn.BCEWithLogitsLoss()
    bu = max(1, args.batch // cand_tr.shape[1])   # users per batch
    history = []
    for ep in range(args.epochs):
        t0 = time.time()
        for group in opt.param_groups:
            group["lr"] = args.lr * args.lr_decay ** ep
        model.train()
        perm = torch.randperm(len(users_tr), generator=rng_t)
        total, nb = 0.0, 0
        steps = (len(perm) + bu - 1) // bu
        for b in range(steps):
            idx = perm[b * bu:(b + 1) * bu]
            if len(idx) < 2:
                continue  # batch norm needs more than one row
            logit = grouped_logits(model, T, users_tr[idx], cand_tr[idx],
                                   ctx_tr[idx])
            loss = bce(logit, y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss)
            nb += 1
            if (b + 1) % 100 == 0:
                print(f"  epoch {ep + 1} step {b + 1}/{steps} "
                      f"loss {total / nb:.4f}", flush=True)
        p = predict(model, T, users_va, cand_va, ctx_va)
        a = auc(y_va.numpy(), p)
        history.append({"epoch": ep + 1, "train_loss": round(total / nb, 5),
                        "val_auc": round(a, 5),
                        "seconds": round(time.time() - t0, 1)})
        print(f"epoch {ep + 1}/{args.epochs}: train loss {total / nb:.4f}, "
              f"val AUC {a:.4f} ({time.time() - t0:.1f}s)", flush=True)
    return history


@torch.no_grad()
def init_model(model, seed):
    """Small embeddings (FuxiCTR starts them near zero), padding rows zero;
    the linear layers keep PyTorch's defaults."""
    g = torch.Generator().manual_seed(seed)
    for table in model.tables.values():
        table.weight.copy_(torch.randn(*table.weight.shape, generator=g) * 0.05)
        table.weight[0].zero_()


# --- output -----------------------------------------------------------------

def write_items(path, world):
    with open(path, "w") as f:
        for i in range(1, world.n_items + 1):
            f.write('{"item_id": %d, "item_tags": [%s], "item_emb_d128": [%s]}\n'
                    % (i, ", ".join(str(int(t)) for t in world.tags[i]),
                       ", ".join("%.4f" % v for v in world.mm[i])))


def user_id(u):
    return f"u{u}"


def write_users(path, world):
    with open(path, "w") as f:
        for u, h in enumerate(world.hist):
            f.write(json.dumps({"user_id": user_id(u),
                                "item_seq": [int(i) for i in h]}) + "\n")


def write_requests(path, world, rng, lines, n_cands):
    """Ranking requests of stored users, n_cands distinct candidates each,
    drawn like the impressions (the user's interests and popular items)."""
    n_cands = min(n_cands, world.n_items)
    with open(path, "w") as f:
        for _ in range(lines):
            u = int(rng.randint(world.n_users))
            chosen, seen = [], set()
            while len(chosen) < n_cands:
                need = n_cands - len(chosen)
                draw = world.candidates(rng, np.full(2 * need + 4, u))
                if len(seen) > world.n_items // 2:      # tiny catalogues
                    draw = rng.permutation(np.arange(1, world.n_items + 1))
                for i in draw.tolist():
                    if i not in seen:
                        seen.add(i)
                        chosen.append(i)
                        if len(chosen) == n_cands:
                            break
            ids = np.asarray(chosen)
            ctx = world.levels(rng, ids)
            cands = [{"item_id": int(i), FIELDS[0]: int(c[0]),
                      FIELDS[1]: int(c[1])} for i, c in zip(ids, ctx)]
            f.write(json.dumps({"user_id": user_id(u), "candidates": cands},
                               separators=(",", ":")) + "\n")


def write_calibration(path, world, users, cand, ctx, y, limit):
    """Training impressions as training rows (join_impressions.py's format:
    user, candidate, context, history, click), the first `limit` of the
    training users in order: convert.py --calibrate rounds the int8
    weights with them (docs/PRECISION.md)."""
    n = 0
    with open(path, "w") as f:
        for u in users.tolist():
            for i, c, lab in zip(cand[u], ctx[u], y[u]):
                f.write(json.dumps({"user_id": user_id(u), "item_id": int(i),
                                    FIELDS[0]: int(c[0]), FIELDS[1]: int(c[1]),
                                    "item_seq": [int(v) for v in world.hist[u]],
                                    "label": int(lab)}, separators=(",", ":")) + "\n")
                n += 1
                if n == limit:
                    return


def write_validation(out, users, cand, ctx, y):
    """The validation impressions as ranking requests (one per held-out
    user, its impressions as candidates, history from users.jsonl) and their
    clicks, line by line."""
    with open(os.path.join(out, "validation.jsonl"), "w") as f, \
            open(os.path.join(out, "validation_labels.jsonl"), "w") as g:
        for u in users.tolist():
            cands = [{"item_id": int(i), FIELDS[0]: int(c[0]),
                      FIELDS[1]: int(c[1])} for i, c in zip(cand[u], ctx[u])]
            f.write(json.dumps({"user_id": user_id(u), "candidates": cands},
                               separators=(",", ":")) + "\n")
            g.write(json.dumps([int(v) for v in y[u]]) + "\n")


# --- main -------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Synthetic MicroLens-shaped data with a planted signal, a "
                    "small QIN trained on it, and the files to serve it.")
    ap.add_argument("--out", default="demo", help="output directory (demo)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--req-cands", type=int, default=16,
                    help="candidates per line of requests.jsonl (16)")
    ap.add_argument("--req-lines", type=int, default=2000,
                    help="lines of requests.jsonl (2000)")
    ap.add_argument("--bench-lines", type=int, default=500,
                    help="lines of requests_{16,64,256}.jsonl (500)")
    ap.add_argument("--rows-per-user", type=int, default=32,
                    help="impressions per user in the training and "
                         "validation data (32)")
    ap.add_argument("--embedding-dim", type=int, default=16)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--num-row", type=int, default=2)
    ap.add_argument("--mm-out", type=int, default=32,
                    help="W_mm output width (32; item_emb_d128 stays 128-d)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-decay", type=float, default=0.6,
                    help="learning rate factor per epoch (0.6)")
    ap.add_argument("--batch", type=int, default=2048, help="rows per step")
    ap.add_argument("--val-frac", type=float, default=0.1,
                    help="share of users held out for validation (0.1)")
    ap.add_argument("--tag-vocab", type=int, default=TAG_VOCAB,
                    help=f"rows of the model's tag table ({TAG_VOCAB}; the "
                         f"world draws tags below {TAG_VOCAB})")
    ap.add_argument("--name", default="qin-demo", help="model name (qin-demo)")
    ap.add_argument("--calibration-rows", type=int, default=20000,
                    help="training rows written to calibration.jsonl (20000)")
    ap.add_argument("--calibration-only", action="store_true",
                    help="write calibration.jsonl of an existing demo (the same data: "
                         "seed, users, items, rows per user) and nothing else; no training")
    ap.add_argument("--full", action="store_true",
                    help="the MicroLens configuration (D 1024, 4 layers, R 4, "
                         "91,717 items, tag table 11,740), trained briefly, "
                         "into demo/full: sets the defaults of --out, "
                         "--users, --items, --epochs, --rows-per-user, "
                         "--embedding-dim, --layers, --num-row, --mm-out, "
                         "--tag-vocab, --name, --bench-lines")
    full = {"out": os.path.join("demo", "full"), "users": 8000, "items": 91717,
            "epochs": 1, "rows_per_user": 16, "embedding_dim": 128, "layers": 4,
            "num_row": 4, "mm_out": 128, "tag_vocab": 11740,
            "name": "qin-microlens-synthetic", "bench_lines": 300, "lr": 1e-3}
    if "--full" in (argv if argv is not None else sys.argv[1:]):
        ap.set_defaults(**full)
    args = ap.parse_args(argv)
    if args.tag_vocab < TAG_VOCAB:
        ap.error(f"--tag-vocab must be at least {TAG_VOCAB}")
    if args.users < 20 or args.items < 50 or args.epochs < 1 \
            or args.rows_per_user < 1:
        ap.error("need --users >= 20, --items >= 50, --epochs >= 1, "
                 "--rows-per-user >= 1")

    t_start = time.time()
    torch.set_num_threads(args.threads)
    # Without it, gradients accumulated by several threads (index_put_ with
    # accumulate) come out in a varying order and runs differ in the last bits.
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    # Separate streams, so that e.g. --req-cands does not change the data.
    def stream(k):
        return np.random.RandomState([args.seed, k])

    world = World(stream(1), args.users, args.items)
    cand, ctx, y, p_true = make_rows(world, stream(2), args.rows_per_user)
    lengths = np.array([len(h) for h in world.hist])
    perm = stream(3).permutation(args.users)
    n_va = max(2, int(round(args.val_frac * args.users)))
    va_u, tr_u = np.sort(perm[:n_va]), np.sort(perm[n_va:])
    t_data = time.time() - t_start
    if args.calibration_only:
        write_calibration(os.path.join(args.out, "calibration.jsonl"), world, tr_u, cand, ctx,
                          y, args.calibration_rows)
        print(f"make_demo: {args.out}/calibration.jsonl: {args.calibration_rows} training rows")
        return 0
    print(f"data: {args.users} users ({len(tr_u)} train, {len(va_u)} "
          f"validation, users disjoint), {args.items} items, "
          f"{y.size} rows, {y.mean():.1%} positives, history length mean "
          f"{lengths.mean():.1f} max {lengths.max()} ({(lengths == 0).mean():.1%}"
          f" empty) [{t_data:.1f}s]", flush=True)

    # Baselines on the validation rows.
    y_va = y[va_u]
    cell = np.zeros((11, 11)), np.zeros((11, 11))
    np.add.at(cell[0], (ctx[tr_u][..., 0], ctx[tr_u][..., 1]), y[tr_u])
    np.add.at(cell[1], (ctx[tr_u][..., 0], ctx[tr_u][..., 1]), 1.0)
    ctr = (cell[0] + 0.25 * 20) / (cell[1] + 20)       # smoothed cell CTR
    pop_auc = auc(y_va, ctr[ctx[va_u][..., 0], ctx[va_u][..., 1]])
    oracle_auc = auc(y_va, p_true[va_u])
    print(f"validation baselines: popularity-only AUC {pop_auc:.4f} (CTR of "
          f"the (likes_level, views_level) cell), oracle AUC {oracle_auc:.4f} "
          "(true click probabilities)", flush=True)

    cfg = ref.QINConfig(
        embedding_dim=args.embedding_dim, max_len=MAX_LEN,
        num_layers=args.layers, num_row=args.num_row, batch_norm=True,
        item_vocab=args.items + 1, tag_vocab=args.tag_vocab, num_tags=NUM_TAGS,
        mm_in=MM, mm_out=args.mm_out, context_fields=FIELDS,
        context_vocab=(11, 11), dropout=0.0)
    model = ref.QINReference(cfg)
    init_model(model, args.seed)
    print(f"model: QIN embedding_dim {cfg.embedding_dim}, {cfg.num_layers} QNN "
          f"layers, num_row {cfg.num_row}, batch norm, mm {cfg.mm_in}->"
          f"{cfg.mm_out}, D {cfg.input_dim}, {ref.count_parameters(cfg):,} "
          "parameters", flush=True)

    T = Tensors(world)
    tt = torch.from_numpy

    def split(us):
        return (tt(us), tt(cand[us]), tt(ctx[us]), tt(y[us]))

    t0 = time.time()
    rng_t = torch.Generator().manual_seed(args.seed)
    history = train(model, T, split(tr_u), split(va_u), args, rng_t)
    t_train = time.time() - t0
    model.eval()
    p_va = predict(model, T, tt(va_u), tt(cand[va_u]), tt(ctx[va_u]))
    val_auc = auc(y_va, p_va)
    ck = va_u[:48]
    ref_diff = check_against_reference(model, cfg, world, T, tt(ck),
                                       tt(cand[ck]), tt(ctx[ck]))
    if ref_diff > 1e-5:
        raise SystemExit(f"make_demo: the grouped forward differs from "
                         f"QINReference.forward by {ref_diff:.3g}")
    print(f"validation AUC {val_auc:.4f} (popularity-only {pop_auc:.4f}, "
          f"oracle {oracle_auc:.4f}); grouped forward vs QINReference.forward "
          f"max |dp| {ref_diff:.2g}", flush=True)

    # Outputs.
    sd = model.state_dict()
    ckpt = os.path.join(args.out, "ckpt.model")
    torch.save(sd, ckpt)
    cfg2, meta, size = convert.convert_state_dict(
        sd, os.path.join(args.out, "model.safetensors"), max_len=MAX_LEN,
        num_tags=NUM_TAGS, context_fields=FIELDS, version=f"demo-{args.seed}",
        name=args.name)
    assert cfg2 == cfg, (cfg2, cfg)
    print(convert.summary(cfg2, meta, os.path.join(args.out,
                                                   "model.safetensors"), size))
    write_items(os.path.join(args.out, "items.jsonl"), world)
    write_users(os.path.join(args.out, "users.jsonl"), world)
    write_requests(os.path.join(args.out, "requests.jsonl"), world, stream(4),
                   args.req_lines, args.req_cands)
    for k, n in enumerate((16, 64, 256)):
        write_requests(os.path.join(args.out, f"requests_{n}.jsonl"), world,
                       stream(5 + k), args.bench_lines, n)
    write_validation(args.out, va_u, cand, ctx, y)
    write_calibration(os.path.join(args.out, "calibration.jsonl"), world, tr_u, cand, ctx, y,
                      args.calibration_rows)
    total = time.time() - t_start
    metrics = {
        "val_auc": round(val_auc, 5),
        "baseline_popularity_auc": round(pop_auc, 5),
        "oracle_auc": round(oracle_auc, 5),
        "reference_check_max_abs_diff": ref_diff,
        "epochs": history,
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in vars(cfg).items()},
        "params": ref.count_parameters(cfg),
        "model_version": meta["version"],
        "model_name": meta["name"],
        "train": {"lr": args.lr, "lr_decay_per_epoch": args.lr_decay,
                  "batch_rows": args.batch,
                  "epochs": args.epochs, "optimizer": "Adam", "loss": "BCE",
                  "threads": args.threads,
                  "rows_per_user": args.rows_per_user},
        "rows": {"train": int(y[tr_u].size), "validation": int(y_va.size),
                 "positive_rate": round(float(y.mean()), 4)},
        "users": {"total": args.users, "train": int(len(tr_u)),
                  "validation": int(len(va_u)),
                  "history_mean": round(float(lengths.mean()), 2),
                  "history_max": int(lengths.max()),
                  "history_empty": int((lengths == 0).sum())},
        "items": args.items,
        "world": {"topics": K_TOPICS, "latent_dim": DZ, "tag_vocab": TAG_VOCAB,
                  "recent": RECENT, "a_sim": A_SIM, "b_quality": B_Q,
                  "b_views": B_V, "item_bias_std": ITEM_BIAS_STD},
        "seed": args.seed,
        "seconds": {"data": round(t_data, 1), "train": round(t_train, 1),
                    "total": round(total, 1)},
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(f"make_demo: {args.out}: {args.name} demo-{args.seed} (d "
          f"{cfg.embedding_dim}, {cfg.num_layers} layers, R {cfg.num_row}, mm "
          f"{cfg.mm_in}->{cfg.mm_out}) on {args.users} users x {args.items} "
          f"items, {y.size} rows: validation AUC {val_auc:.4f} vs "
          f"popularity-only {pop_auc:.4f} (oracle {oracle_auc:.4f}); "
          f"{total:.0f}s total, {t_train:.0f}s training", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
