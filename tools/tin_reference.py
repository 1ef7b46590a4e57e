# tin_reference.py - the PyTorch reference of TIN (Temporal Interest
# Network) as the authors' TensorFlow 1 code computes it at inference,
# written from docs/MODEL_SPEC.md section 5: position rows added to the target
# (row 0) and to behaviour k of l (row l - k), softmax dot attention scaled
# by 1/sqrt(H), batch norm (eps 1e-3, moving statistics), hist_fcn_t, the
# MLP [u, t~, u * t~] -> b1 -> f1 sigmoid -> f2 sigmoid -> f3, plus the item
# bias.  Ids start at 0 and id 0 is a real item; histories are padded on the
# right and masked by length; an empty history gives o = 0.
#
# TensorFlow is not available here: the weights live under their TF
# variable names (tf_variables(): `pos:0`, `hist_fcn_t/kernel:0`, ...,
# kernels [in, out]), which is what the .npz interchange holds
# (np.savez(path, **{v.name: sess.run(v) for v in tf.global_variables()})).

import dataclasses
import math

import numpy as np
import torch
from torch import nn

BN_EPS = 1e-3


@dataclasses.dataclass(frozen=True)
class TINConfig:
    item_vocab: int = 63001
    cate_vocab: int = 801
    item_dim: int = 64
    cate_dim: int = 64
    max_len: int = 430          # the position table has max_len + 1 rows
    f1_units: int = 80
    f2_units: int = 40

    @property
    def hidden(self):  # H
        return self.item_dim + self.cate_dim


def amazon_config():
    """The authors' Amazon Electronics shapes (docs/MODEL_SPEC.md section 5)."""
    return TINConfig()


# (TF name without ":0", shape function) of every trainable variable, in
# the order the authors' graph creates them.
def variable_shapes(cfg):
    H, F1, F2 = cfg.hidden, cfg.f1_units, cfg.f2_units
    return {
        "pos": (cfg.max_len + 1, H),
        "item": (cfg.item_vocab, cfg.item_dim),
        "cate": (cfg.cate_vocab, cfg.cate_dim),
        "item_b": (cfg.item_vocab,),
        "batch_normalization/gamma": (H,),
        "batch_normalization/beta": (H,),
        "hist_fcn_t/kernel": (H, H),
        "hist_fcn_t/bias": (H,),
        "b1/gamma": (3 * H,),
        "b1/beta": (3 * H,),
        "f1/kernel": (3 * H, F1),
        "f1/bias": (F1,),
        "f2/kernel": (F1, F2),
        "f2/bias": (F2,),
        "f3/kernel": (F2, 1),
        "f3/bias": (1,),
    }


# Non-trainable variables (batch norm moving statistics).
MOVING = ("batch_normalization/moving_mean", "batch_normalization/moving_variance",
          "b1/moving_mean", "b1/moving_variance")


def all_shapes(cfg):
    s = dict(variable_shapes(cfg))
    H = cfg.hidden
    s["batch_normalization/moving_mean"] = (H,)
    s["batch_normalization/moving_variance"] = (H,)
    s["b1/moving_mean"] = (3 * H,)
    s["b1/moving_variance"] = (3 * H,)
    return s


class TINReference(nn.Module):
    """forward(batch) -> (B,) probabilities.

    batch: item_id (B,), cate (B,), seq_id (B, T) and seq_cate (B, T) with
    each row's history at positions 0..sl-1 (oldest first) and anything
    after, sl (B,) history lengths (0..max_len)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.w = nn.ParameterDict({
            name.replace("/", "__"): nn.Parameter(torch.zeros(*shape), requires_grad=False)
            for name, shape in all_shapes(cfg).items()})

    def v(self, name):
        return self.w[name.replace("/", "__")]

    def tf_variables(self):
        """{TF variable name (":0" suffixed): numpy array}."""
        return {f"{name}:0": self.v(name).detach().numpy().copy()
                for name in all_shapes(self.cfg)}

    def load_tf_variables(self, variables):
        with torch.no_grad():
            for name in all_shapes(self.cfg):
                self.v(name).copy_(torch.as_tensor(np.asarray(variables[f"{name}:0"])))

    def _bn(self, x, pre):
        mean, var = self.v(f"{pre}/moving_mean"), self.v(f"{pre}/moving_variance")
        return (x - mean) / torch.sqrt(var + BN_EPS) * self.v(f"{pre}/gamma") + self.v(f"{pre}/beta")

    def emb(self, ids, cates):
        return torch.cat([self.v("item")[ids], self.v("cate")[cates]], dim=-1)

    def weights(self, batch):
        """(B, T) softmax weights over the history positions (0 beyond sl),
        and the h~ rows."""
        P = self.v("pos")
        sl = batch["sl"]
        B, T = batch["seq_id"].shape
        t = self.emb(batch["item_id"], batch["cate"]) + P[0]
        k = torch.arange(T).unsqueeze(0)                       # (1, T)
        valid = k < sl.unsqueeze(1)                            # (B, T)
        rows = (sl.unsqueeze(1) - k).clamp(min=0)              # l - k
        h = self.emb(batch["seq_id"], batch["seq_cate"]) + P[rows]
        s = (h * t.unsqueeze(1)).sum(-1) / math.sqrt(self.cfg.hidden)
        s = s.masked_fill(~valid, float("-inf"))
        w = torch.softmax(s, dim=-1)
        w = torch.where(valid, w, torch.zeros_like(w))         # sl = 0: all 0
        return w, h, t

    def logits(self, batch):
        w, h, t = self.weights(batch)
        o = (w.unsqueeze(-1) * h).sum(1)                       # sl = 0: o = 0
        u = self._bn(o, "batch_normalization") @ self.v("hist_fcn_t/kernel") \
            + self.v("hist_fcn_t/bias")
        x = self._bn(torch.cat([u, t, u * t], dim=-1), "b1")
        z = torch.sigmoid(x @ self.v("f1/kernel") + self.v("f1/bias"))
        z = torch.sigmoid(z @ self.v("f2/kernel") + self.v("f2/bias"))
        z = (z @ self.v("f3/kernel") + self.v("f3/bias")).squeeze(-1)
        return z + self.v("item_b")[batch["item_id"]]

    def forward(self, batch):
        return torch.sigmoid(self.logits(batch))


def make_batch(cfg, items, history, candidates, width=None):
    """Scores `candidates` (item ids) for one history.  items: {id: cate};
    history: ids oldest first, any length (the most recent max_len are
    kept); every id must be in items.  The history columns are padded on the
    right with item 0 (masked by sl) to `width` (default: the history's
    length)."""
    seq = list(history)[-cfg.max_len:] if cfg.max_len > 0 else []
    T = max(1, len(seq), width or 0)
    B = len(candidates)
    row = seq + [0] * (T - len(seq))
    return {
        "item_id": torch.tensor(list(candidates), dtype=torch.long).reshape(B),
        "cate": torch.tensor([items[i] for i in candidates], dtype=torch.long).reshape(B),
        "seq_id": torch.tensor([row] * B, dtype=torch.long).reshape(B, T),
        "seq_cate": torch.tensor([[items[i] for i in row]] * B,
                                 dtype=torch.long).reshape(B, T),
        "sl": torch.full((B,), len(seq), dtype=torch.long),
    }


@torch.no_grad()
def random_init(model, seed, logit_std=1.6, logit_mean=-0.4):
    """Non-trivial random weights, deterministic for a seed: the attention
    is far from uniform, both batch norms have random moving statistics
    (the authors' stay at 0 / 1, but the engine must apply them), and the
    probe's logits have about the given spread."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(int(seed))
    H = cfg.hidden

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    def put(name, value):
        model.v(name).copy_(value)

    put("item", randn(cfg.item_vocab, cfg.item_dim) * 0.3)
    put("cate", randn(cfg.cate_vocab, cfg.cate_dim) * 0.3)
    put("pos", randn(cfg.max_len + 1, H) * 0.2)
    put("item_b", randn(cfg.item_vocab) * 0.3)
    put("hist_fcn_t/kernel", randn(H, H) / math.sqrt(H))
    put("hist_fcn_t/bias", randn(H) * 0.1)
    put("f1/kernel", randn(3 * H, cfg.f1_units) / math.sqrt(3 * H) * 2.0)
    put("f1/bias", randn(cfg.f1_units) * 0.1)
    put("f2/kernel", randn(cfg.f1_units, cfg.f2_units) / math.sqrt(cfg.f1_units) * 2.0)
    put("f2/bias", randn(cfg.f2_units) * 0.1)
    put("f3/kernel", randn(cfg.f2_units, 1) / math.sqrt(cfg.f2_units))
    put("f3/bias", torch.zeros(1))
    for pre, n in (("batch_normalization", H), ("b1", 3 * H)):
        put(f"{pre}/gamma", uniform(0.5, 1.5, n))
        put(f"{pre}/beta", randn(n) * 0.1)
        put(f"{pre}/moving_mean", torch.zeros(n))
        put(f"{pre}/moving_variance", torch.ones(n))

    # A probe: random histories of random lengths.
    B, T = 256, min(cfg.max_len, 64)
    probe = {
        "item_id": torch.randint(0, cfg.item_vocab, (B,), generator=gen),
        "cate": torch.randint(0, cfg.cate_vocab, (B,), generator=gen),
        "seq_id": torch.randint(0, cfg.item_vocab, (B, T), generator=gen),
        "seq_cate": torch.randint(0, cfg.cate_vocab, (B, T), generator=gen),
        "sl": torch.randint(1, T + 1, (B,), generator=gen),
    }
    # Scores of about unit spread: scale the tables together.
    w, h, t = model.weights(probe)
    s = (h * t.unsqueeze(1)).sum(-1) / math.sqrt(H)
    valid = torch.arange(T).unsqueeze(0) < probe["sl"].unsqueeze(1)
    f = math.sqrt(2.0 / (s[valid].std().item() + 1e-12))
    for name in ("item", "cate", "pos"):
        model.v(name).mul_(f)
    # Moving statistics near the probe's, with noise.
    w, h, t = model.weights(probe)
    o = (w.unsqueeze(-1) * h).sum(1)
    mu, var = o.mean(0), o.var(0) + 1e-3
    put("batch_normalization/moving_mean", mu + randn(H) * var.sqrt() * 0.3)
    put("batch_normalization/moving_variance", var * uniform(0.5, 2.0, H))
    u = model._bn(o, "batch_normalization") @ model.v("hist_fcn_t/kernel") \
        + model.v("hist_fcn_t/bias")
    x = torch.cat([u, t, u * t], dim=-1)
    mu, var = x.mean(0), x.var(0) + 1e-3
    put("b1/moving_mean", mu + randn(3 * H) * var.sqrt() * 0.3)
    put("b1/moving_variance", var * uniform(0.5, 2.0, 3 * H))
    logit = model.logits(probe)
    model.v("f3/kernel").mul_(logit_std / (logit.std().item() + 1e-12))
    model.v("f3/bias").fill_(logit_mean - model.logits(probe).mean().item())
    return model


def adam_slots(variables, rng):
    """The optimizer state a TF1 checkpoint holds beside the weights (what
    np.savez of tf.global_variables() writes): two Adam slots per trainable
    variable, beta powers and step counters."""
    out = {}
    for name, value in variables.items():
        base = name[:-2]
        if base in MOVING:
            continue
        out[f"{base}/Adam:0"] = rng.standard_normal(value.shape).astype(np.float32) * 1e-3
        out[f"{base}/Adam_1:0"] = np.abs(rng.standard_normal(value.shape)).astype(np.float32) * 1e-6
    out["beta1_power:0"] = np.float32(0.9 ** 1000)
    out["beta2_power:0"] = np.float32(0.999 ** 1000)
    out["global_step:0"] = np.int64(123456)
    out["global_epoch_step:0"] = np.int32(7)
    return out
