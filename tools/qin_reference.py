# qin_reference.py - the PyTorch reference of QIN as the FuxiCTR training code
# runs it (docs/MODEL_SPEC.md sections 2-3): unfolded R row blocks, batch
# norm with running statistics, W_q/W_k/W_v/W_o attention.  Its parameter and buffer
# names equal the FuxiCTR checkpoint keys, so a real checkpoint loads with
# load_state_dict(strict=True).  It is the oracle the C engine's golden data
# comes from; it is written for clarity, not speed (the C engine does the
# algebraic folds).

import dataclasses
import math
from collections import OrderedDict
from typing import Tuple

import torch
from torch import nn

PREFIX = "embedding_layer.embedding_layer."
MM_FIELD = "item_emb_d128"  # the multimodal field's name, whatever its width


class ItemConfig:
    """What QIN's and DIN's configurations derive alike from their fields:
    the widths of the item vector and of the top network's input."""

    @property
    def num_ctx(self):
        return len(self.context_fields)

    @property
    def item_dim(self):  # E
        return 2 * self.embedding_dim + self.mm_out

    @property
    def input_dim(self):  # D: [ctx embeddings | t | pooled history]
        return self.num_ctx * self.embedding_dim + 2 * self.item_dim


@dataclasses.dataclass(frozen=True)
class QINConfig(ItemConfig):
    embedding_dim: int = 128
    max_len: int = 64
    num_layers: int = 4
    num_row: int = 4
    batch_norm: bool = True
    item_vocab: int = 91718
    tag_vocab: int = 11740
    num_tags: int = 5
    mm_in: int = 128
    mm_out: int = 128
    context_fields: Tuple[str, ...] = ("likes_level", "views_level")
    context_vocab: Tuple[int, ...] = (11, 11)
    dropout: float = 0.0  # training only; inactive in eval()

    def __post_init__(self):
        if len(self.context_fields) != len(self.context_vocab):
            raise ValueError("context_fields and context_vocab differ in length")
        if len(set(self.context_fields)) != len(self.context_fields):
            raise ValueError("duplicate context field")
        for f in self.context_fields:
            if f in ("item_id", "item_tags"):
                raise ValueError(f"context field {f!r} clashes with an item field")

    @property
    def attn_dim(self):  # 2E
        return 2 * self.item_dim


def microlens_config(num_row=4):
    """The MicroLens-1M challenge configuration (docs/MODEL_SPEC.md section 3)."""
    return QINConfig(num_row=num_row)


def checkpoint_shapes(cfg):
    """OrderedDict key -> shape of every tensor of a FuxiCTR QIN checkpoint
    of configuration cfg, except the scalar `num_batches_tracked` buffers."""
    d, E, D, R = cfg.embedding_dim, cfg.item_dim, cfg.input_dim, cfg.num_row
    s = OrderedDict()
    for f, v in zip(cfg.context_fields, cfg.context_vocab):
        s[f"{PREFIX}embedding_layers.{f}.weight"] = (v, d)
    s[f"{PREFIX}embedding_layers.item_id.weight"] = (cfg.item_vocab, d)
    s[f"{PREFIX}embedding_layers.item_tags.weight"] = (cfg.tag_vocab, d)
    s[f"{PREFIX}feature_encoders.{MM_FIELD}.weight"] = (cfg.mm_out, cfg.mm_in)
    for w in ("W_q", "W_k", "W_v"):
        s[f"attention_layers.{w}.weight"] = (2 * E, E)
    s["attention_layers.W_o.weight"] = (E, 2 * E)
    for i in range(cfg.num_layers):
        s[f"qnn.layer.{i}.linear.0.weight"] = (R * D, D)
        s[f"qnn.layer.{i}.linear.0.bias"] = (R * D,)
    if cfg.batch_norm:
        for i in range(cfg.num_layers):
            for p in ("weight", "bias", "running_mean", "running_var"):
                s[f"qnn.norm.{i}.{p}"] = (D,)
    for i in range(cfg.num_layers):
        s[f"qnn.activation.{i}.weight"] = (1,)
    s["qnn.fc.weight"] = (1, D)
    s["qnn.fc.bias"] = (1,)
    return s


def is_parameter_key(key):
    """False for batch-norm running statistics (buffers, not parameters)."""
    return not key.endswith(("running_mean", "running_var",
                             "num_batches_tracked"))


def count_parameters(cfg):
    return sum(math.prod(shape) for key, shape in checkpoint_shapes(cfg).items()
               if is_parameter_key(key))


class _FeatureEmbeddingDict(nn.Module):
    """Plays FuxiCTR's embedding dict: one table per categorical field and
    the multimodal encoder."""

    def __init__(self, cfg):
        super().__init__()
        tables = OrderedDict()
        for f, v in zip(cfg.context_fields, cfg.context_vocab):
            tables[f] = nn.Embedding(v, cfg.embedding_dim, padding_idx=0)
        tables["item_id"] = nn.Embedding(cfg.item_vocab, cfg.embedding_dim,
                                         padding_idx=0)
        tables["item_tags"] = nn.Embedding(cfg.tag_vocab, cfg.embedding_dim,
                                           padding_idx=0)
        self.embedding_layers = nn.ModuleDict(tables)
        self.feature_encoders = nn.ModuleDict(
            {MM_FIELD: nn.Linear(cfg.mm_in, cfg.mm_out, bias=False)})


class _EmbeddingLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embedding_layer = _FeatureEmbeddingDict(cfg)


class _TargetAttention(nn.Module):
    """One head, no softmax: a_j = relu(m_j q.k_j / sqrt(2E))."""

    def __init__(self, cfg):
        super().__init__()
        E = cfg.item_dim
        self.W_q = nn.Linear(E, 2 * E, bias=False)  # (2E, E)
        self.W_k = nn.Linear(E, 2 * E, bias=False)  # (2E, E)
        self.W_v = nn.Linear(E, 2 * E, bias=False)  # (2E, E)
        self.W_o = nn.Linear(2 * E, E, bias=False)  # (E, 2E)
        self.scale = 1.0 / math.sqrt(2 * E)

    def forward(self, t, hist, mask):
        # t (B, E), hist (B, L, E), mask (B, L) float
        q = self.W_q(t)                                     # (B, 2E)
        k = self.W_k(hist)                                  # (B, L, 2E)
        v = self.W_v(hist)                                  # (B, L, 2E)
        score = torch.einsum("bld,bd->bl", k, q) * self.scale
        a = torch.relu(score * mask)                        # (B, L)
        pooled = torch.einsum("bl,bld->bd", a, v)           # (B, 2E)
        return self.W_o(pooled) + t                         # (B, E)


class _QuadraticLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, R = cfg.input_dim, cfg.num_row
        self.linear = nn.Sequential(nn.Linear(D, R * D),    # (R*D, D), (R*D,)
                                    nn.Dropout(cfg.dropout))


class _QNN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D = cfg.input_dim
        self.num_row = cfg.num_row
        self.layer = nn.ModuleList(_QuadraticLayer(cfg)
                                   for _ in range(cfg.num_layers))
        if cfg.batch_norm:
            self.norm = nn.ModuleList(nn.BatchNorm1d(D, eps=1e-5)
                                      for _ in range(cfg.num_layers))
        else:
            self.norm = None
        self.activation = nn.ModuleList(nn.PReLU(num_parameters=1)
                                        for _ in range(cfg.num_layers))
        self.fc = nn.Linear(D, 1)                            # (1, D), (1,)

    def block(self, i, x):
        """Layer i: x + prelu(bn(x * sum_r (W_r x + b_r)))."""
        h = self.layer[i].linear(x).view(x.shape[0], self.num_row, -1)
        z = x * h.sum(dim=1)
        if self.norm is not None:
            z = self.norm[i](z)
        z = self.activation[i](z)
        return x + z

    def forward(self, x):
        for i in range(len(self.layer)):
            x = self.block(i, x)
        return self.fc(x).squeeze(-1)                        # logits (B,)


def item_vectors(tables, mm_encoder, ids, tags, mm):
    """The item vector of docs/MODEL_SPEC.md section 2 (QIN and DIN):
    [E_item[id] | masked mean of tag rows | W_mm mm] for items of any
    leading shape: ids (...), tags (..., T), mm (..., mm_in)."""
    e_id = tables["item_id"](ids)
    rows = tables["item_tags"](tags)                         # (..., T, d)
    # n counts the tag rows that are not all zero (FuxiCTR masks by the
    # embedding's content, not by the id); padding row 0 is zero.
    n = (rows != 0).any(dim=-1).sum(dim=-1, keepdim=True).to(rows.dtype)
    e_tag = rows.sum(dim=-2) / (n + 1e-12)
    e_mm = mm_encoder(mm)
    return torch.cat([e_id, e_tag, e_mm], dim=-1)


class ItemModel:
    """What QIN's and DIN's modules share (a mixin of nn.Module subclasses
    with `cfg` and an `embedding_layer` as _EmbeddingLayer lays it out):
    the tables, the multimodal encoder, and a batch's item vectors."""

    @property
    def tables(self):
        return self.embedding_layer.embedding_layer.embedding_layers

    @property
    def mm_encoder(self):
        return self.embedding_layer.embedding_layer.feature_encoders[MM_FIELD]

    def item_vectors(self, ids, tags, mm):
        """[E_item[id] | masked mean of tag rows | W_mm mm] for items of any
        leading shape: ids (...), tags (..., T), mm (..., mm_in)."""
        return item_vectors(self.tables, self.mm_encoder, ids, tags, mm)

    def parts(self, batch):
        """The candidates' vectors t (B, E), the histories' (B, L, E) and
        their mask (B, L): 1 where a behaviour, 0 where padding."""
        t = self.item_vectors(batch["item_id"], batch["item_tags"],
                              batch["item_mm"])
        hist = self.item_vectors(batch["seq_id"], batch["seq_tags"],
                                 batch["seq_mm"])
        mask = (batch["seq_id"] != 0).to(t.dtype)
        return t, hist, mask

    def context_embeddings(self, batch):
        """The context fields' embeddings, in field order: a list of (B, e)."""
        return [self.tables[f](batch["ctx"][:, i])
                for i, f in enumerate(self.cfg.context_fields)]


class QINReference(ItemModel, nn.Module):
    """QIN (variant v9) as trained by FuxiCTR.  forward(batch) -> (B,) probs.

    batch: dict of tensors
      ctx       (B, num_ctx) long, in cfg.context_fields order (0 = padding)
      item_id   (B,) long;  item_tags (B, T) long;  item_mm (B, mm_in) float
      seq_id    (B, L) long, oldest first, left-padded with 0
      seq_tags  (B, L, T) long;  seq_mm (B, L, mm_in) float
    L may be any length; the caller truncates to max_len (see pad_history).
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embedding_layer = _EmbeddingLayer(cfg)
        self.attention_layers = _TargetAttention(cfg)
        self.qnn = _QNN(cfg)

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg)

    def input_vector(self, batch):
        """x0 = [ctx embeddings in field order | t | pool], (B, D)."""
        ctx = self.context_embeddings(batch)
        t, hist, mask = self.parts(batch)
        pool = self.attention_layers(t, hist, mask)
        return torch.cat(ctx + [t, pool], dim=-1)

    def logits(self, batch):
        return self.qnn(self.input_vector(batch))

    def forward(self, batch):
        return torch.sigmoid(self.logits(batch))


def pad_history(seq, max_len):
    """The positions the model sees: the last max_len ids of seq (oldest
    first), left-padded with 0 to max_len.  Zeros inside seq stay (they are
    padding positions and count towards max_len)."""
    seq = list(seq)[-max_len:] if max_len > 0 else []
    return [0] * (max_len - len(seq)) + seq


def make_batch(cfg, items, history, candidates):
    """Builds a batch scoring `candidates` for one user.

    items: {id: (tags list of num_tags ints, mm list of mm_in floats)};
    history: ids oldest first (any length, 0 = padding);
    candidates: list of (item id, [ctx values in field order]).
    Padding history positions get tags 0 and a zero mm vector (the mask makes
    their content irrelevant)."""
    T, M = cfg.num_tags, cfg.mm_in
    zero = ([0] * T, [0.0] * M)
    seq = pad_history(history, cfg.max_len)
    seq_tags = [items[i][0] if i else zero[0] for i in seq]
    seq_mm = [items[i][1] if i else zero[1] for i in seq]
    B = len(candidates)
    return {
        "ctx": torch.tensor([c for _, c in candidates], dtype=torch.long)
               .reshape(B, cfg.num_ctx),
        "item_id": torch.tensor([i for i, _ in candidates], dtype=torch.long),
        "item_tags": torch.tensor([items[i][0] for i, _ in candidates],
                                  dtype=torch.long).reshape(B, T),
        "item_mm": torch.tensor([items[i][1] for i, _ in candidates],
                                dtype=torch.float32).reshape(B, M),
        "seq_id": torch.tensor([seq] * B, dtype=torch.long)
                  .reshape(B, cfg.max_len),
        "seq_tags": torch.tensor([seq_tags] * B, dtype=torch.long)
                    .reshape(B, cfg.max_len, T),
        "seq_mm": torch.tensor([seq_mm] * B, dtype=torch.float32)
                  .reshape(B, cfg.max_len, M),
    }


def random_probe_batch(cfg, gen, batch=64):
    """Random inputs (random histories with padding, random tags with some
    padding slots) used to calibrate random_init."""
    T, L, M = cfg.num_tags, cfg.max_len, cfg.mm_in

    def ri(lo, hi, *shape):
        return torch.randint(lo, hi, shape, generator=gen)

    # Mostly long histories (the attention has no softmax, so the pooled
    # term grows with the number of behaviours; calibrating on short ones
    # would let long ones saturate).
    seq_id = ri(1, cfg.item_vocab, batch, L)
    keep = torch.rand(batch, L, generator=gen) < 0.9
    lengths = ri(L // 2, L + 1, batch, 1)
    left = torch.arange(L).unsqueeze(0) >= (L - lengths)
    seq_id = seq_id * (keep & left)
    tags = ri(0, cfg.tag_vocab, batch, T)
    tags = tags * (torch.rand(batch, T, generator=gen) < 0.7)
    seq_tags = ri(0, cfg.tag_vocab, batch, L, T)
    seq_tags = seq_tags * (torch.rand(batch, L, T, generator=gen) < 0.7)
    seq_tags = seq_tags * (seq_id != 0).unsqueeze(-1)
    seq_mm = torch.randn(batch, L, M, generator=gen) * (seq_id != 0).unsqueeze(-1)
    ctx = torch.stack([ri(0, v, batch) for v in cfg.context_vocab], dim=1) \
        if cfg.num_ctx else torch.zeros(batch, 0, dtype=torch.long)
    return {"ctx": ctx, "item_id": ri(1, cfg.item_vocab, batch),
            "item_tags": tags, "item_mm": torch.randn(batch, M, generator=gen),
            "seq_id": seq_id, "seq_tags": seq_tags, "seq_mm": seq_mm}


def seeded_draws(seed):
    """(gen, randn(*shape), uniform(lo, hi, *shape)): draws from one torch
    generator seeded with seed."""
    gen = torch.Generator().manual_seed(int(seed))

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    return gen, randn, uniform


@torch.no_grad()
def random_item_tables(model, randn):
    """Random embedding tables (row 0, padding, zero) and multimodal
    encoder of similar size, for an ItemModel."""
    for name, table in model.tables.items():
        std = 0.5 if name != "item_tags" else 0.7
        table.weight.copy_(randn(*table.weight.shape) * std)
        table.weight[0].zero_()
    mm = model.mm_encoder.weight
    mm.copy_(randn(*mm.shape) * (0.5 / math.sqrt(model.cfg.mm_in)))


@torch.no_grad()
def random_init(model, seed, logit_std=1.6, logit_mean=-0.4):
    """Gives `model` non-trivial random weights, deterministically from seed.

    Every part is made to matter: embeddings and the multimodal part are of
    similar size, the attention adds to t about as much as t itself, batch
    norm has random running statistics and affine terms, PReLU slopes are
    random (some negative).  The quadratic QNN can blow up, so each layer's
    weight is scaled on a random probe batch to keep sum_r (W_r x + b_r)
    near unit size, and fc is scaled so the probe's logits have roughly
    mean logit_mean and std logit_std (so probabilities are not saturated).
    Padding rows (row 0 of every table) are zero."""
    cfg = model.cfg
    gen, randn, uniform = seeded_draws(seed)
    model.eval()
    random_item_tables(model, randn)

    att = model.attention_layers
    E = cfg.item_dim
    for w in (att.W_q, att.W_k, att.W_v):
        w.weight.copy_(randn(*w.weight.shape) / math.sqrt(E))
    att.W_o.weight.copy_(randn(*att.W_o.weight.shape) / math.sqrt(2 * E))

    # A larger probe where histories are cheap (the small test configs).
    n_probe = max(128, min(2048, 4_000_000 // (cfg.max_len * cfg.item_dim)))
    probe = random_probe_batch(cfg, gen, n_probe)
    # Attention: scale the scores to about unit size, then W_o so the pooled
    # term is about as large as t.  (Projections computed once: the probe's
    # histories are the costly part of the calibration.)
    t, hist, mask = model.parts(probe)
    k, v = att.W_k(hist), att.W_v(hist)
    score = torch.einsum("bld,bd->bl", k, att.W_q(t)) * att.scale
    s = score[mask > 0].std().item()
    if s > 0:
        att.W_q.weight.mul_(1.5 / s)   # a_j ~ relu of a N(0, 1.5^2) score
    score = torch.einsum("bld,bd->bl", k, att.W_q(t)) * att.scale
    extra = att.W_o(torch.einsum("bl,bld->bd", torch.relu(score * mask), v))
    r = extra.std().item()
    if r > 0:
        att.W_o.weight.mul_(t.std().item() / r)
        extra.mul_(t.std().item() / r)
    x = torch.cat(model.context_embeddings(probe) + [t, extra + t], dim=-1)

    qnn = model.qnn
    for i in range(cfg.num_layers):
        lin = qnn.layer[i].linear[0]
        lin.weight.copy_(randn(*lin.weight.shape))
        lin.bias.copy_(randn(*lin.bias.shape))
        h = lin(x).view(x.shape[0], cfg.num_row, -1).sum(1)
        # target: the summed row blocks of size ~0.7, a bias of ~0.3
        lin.weight.mul_(0.7 / (h.std().item() + 1e-12))
        lin.bias.mul_(0.3 / math.sqrt(cfg.num_row))
        z = x * lin(x).view(x.shape[0], cfg.num_row, -1).sum(1)
        if qnn.norm is not None:
            bn = qnn.norm[i]
            # Statistics near the probe's, with a floor on the variance: a
            # unit's own variance on a small probe can be tiny, and dividing
            # by it makes heavy tails on other inputs.
            mu, var = z.mean(0), z.var(0)
            var = torch.maximum(var, 0.5 * var.mean())
            bn.running_mean.copy_(mu + randn(*mu.shape) * var.sqrt() * 0.3)
            bn.running_var.copy_(var * uniform(0.5, 2.0, *mu.shape) + 1e-3)
            bn.weight.copy_(uniform(0.15, 0.45, *bn.weight.shape)
                            * torch.sign(uniform(-0.3, 1.0, *bn.weight.shape)))
            bn.bias.copy_(randn(*bn.bias.shape) * 0.2)
            bn.num_batches_tracked.fill_(1000)
        qnn.activation[i].weight.copy_(uniform(-0.3, 0.5, 1))
        x = qnn.block(i, x)

    qnn.fc.weight.copy_(randn(*qnn.fc.weight.shape))
    qnn.fc.bias.zero_()
    logit = qnn.fc(x).squeeze(-1)
    qnn.fc.weight.mul_(logit_std / (logit.std().item() + 1e-12))
    qnn.fc.bias.fill_(logit_mean - qnn.fc(x).mean().item())
    return model
