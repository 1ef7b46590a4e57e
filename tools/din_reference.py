# din_reference.py - the PyTorch reference of DIN as the WWW 2025 challenge
# baseline trains it (FuxiCTR DIN with DIN_Attention), written from
# docs/MODEL_SPEC.md sections 2 and 4: the unfolded 4E-wide attention MLP per
# candidate-behaviour pair, batch norm with running statistics, optional
# Dice and softmax.  Its modules are laid out as FuxiCTR's, so its
# state_dict has the real checkpoint keys, module indices included: each
# activation, batch norm and dropout module takes an index in the
# nn.Sequential, so `attention_dropout` / `net_dropout` > 0 and Dice move
# the Linear layers' indices (docs/MODEL_SPEC.md section 4).  It is the
# oracle the C engine's DIN golden data comes from, and the source of the
# synthetic FuxiCTR-style checkpoints the tests convert.

import dataclasses
import math
from typing import Tuple

import torch
from torch import nn

import qin_reference as qref

PREFIX = qref.PREFIX
MM_FIELD = qref.MM_FIELD


@dataclasses.dataclass(frozen=True)
class DINConfig(qref.ItemConfig):
    embedding_dim: int = 64
    max_len: int = 64
    item_vocab: int = 91718
    tag_vocab: int = 11740
    num_tags: int = 5
    mm_in: int = 128
    mm_out: int = 128
    context_fields: Tuple[str, ...] = ("likes_level", "views_level")
    context_vocab: Tuple[int, ...] = (11, 11)
    attention_units: Tuple[int, ...] = (512, 256)
    attention_dice: bool = False
    dnn_units: Tuple[int, ...] = (1024, 512, 256)
    dnn_dice: bool = False
    batch_norm: bool = True
    softmax: bool = False
    # Training only (inactive in eval()), but they move module indices.
    attention_dropout: float = 0.0
    net_dropout: float = 0.0

    def __post_init__(self):
        if len(self.context_fields) != len(self.context_vocab):
            raise ValueError("context_fields and context_vocab differ in length")
        if not self.attention_units or not self.dnn_units:
            raise ValueError("DIN needs hidden layers in both networks")


def microlens_config(**kw):
    """The challenge baseline's configuration (docs/MODEL_SPEC.md section 4)."""
    return DINConfig(**kw)


class Dice(nn.Module):
    """p = sigmoid(BN(x)) with BN's running statistics (eps 1e-9, no affine
    part); out = p x + alpha (1 - p) x, one alpha per unit."""

    def __init__(self, units):
        super().__init__()
        self.bn = nn.BatchNorm1d(units, affine=False, eps=1e-9)
        self.alpha = nn.Parameter(torch.zeros(units))

    def forward(self, x):
        p = torch.sigmoid(self.bn(x))
        return p * x + self.alpha * (1 - p) * x


class _MLP(nn.Module):
    """Linear [-> BatchNorm1d] -> activation [-> Dropout] per hidden layer,
    then Linear(-> 1) [-> Sigmoid]: the module order of FuxiCTR's MLP_Block,
    so the keys are mlp.<index>.*."""

    def __init__(self, in_dim, units, dice, dropout, batch_norm, sigmoid):
        super().__init__()
        layers = []
        for u in units:
            layers.append(nn.Linear(in_dim, u))
            if batch_norm:
                layers.append(nn.BatchNorm1d(u, eps=1e-5))
            layers.append(Dice(u) if dice else nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = u
        layers.append(nn.Linear(in_dim, 1))
        if sigmoid:
            layers.append(nn.Sigmoid())
        self.mlp = nn.Sequential(*layers)

    def linears(self):
        return [m for m in self.mlp if isinstance(m, nn.Linear)]

    def forward(self, x):
        return self.mlp(x)


class _DINAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.softmax = cfg.softmax
        self.E = cfg.item_dim
        self.attention_layer = _MLP(4 * cfg.item_dim, cfg.attention_units,
                                    cfg.attention_dice, cfg.attention_dropout,
                                    False, False)

    def scores(self, t, hist, mask):
        """s_j for every behaviour (B, L): the MLP on [t, h, t - h, t * h],
        times the mask, then the softmax over the real ones when on."""
        B, L, E = hist.shape
        te = t.unsqueeze(1).expand(-1, L, -1)
        inp = torch.cat([te, hist, te - hist, te * hist], dim=-1)
        s = self.attention_layer(inp.reshape(-1, 4 * E)).view(B, L)
        s = s * mask
        if self.softmax:
            s = s + -1e9 * (1 - mask)
            s = s.softmax(dim=-1)
        return s

    def forward(self, t, hist, mask):
        s = self.scores(t, hist, mask)
        u = (s.unsqueeze(-1) * hist).sum(dim=1)
        # An all-padding window has no defined softmax (the reference
        # averages padding rows): this service defines u = 0 (README).
        if self.softmax:
            u = u * (mask.sum(dim=1, keepdim=True) > 0).to(u.dtype)
        return u


class DINReference(qref.ItemModel, nn.Module):
    """DIN as trained by FuxiCTR.  forward(batch) -> (B,) probabilities.

    batch: as qin_reference.make_batch gives it (ctx, item_id, item_tags,
    item_mm, seq_id left-padded with 0, seq_tags, seq_mm)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embedding_layer = qref._EmbeddingLayer(cfg)
        self.attention_layers = _DINAttention(cfg)
        self.dnn = _MLP(cfg.input_dim, cfg.dnn_units, cfg.dnn_dice,
                        cfg.net_dropout, cfg.batch_norm, True)

    def attention_weights(self, batch):
        """s_j per candidate and history position (B, L), as it multiplies
        h_j in u (after the softmax when on)."""
        return self.attention_layers.scores(*self.parts(batch))

    def logits(self, batch):
        t, hist, mask = self.parts(batch)
        u = self.attention_layers(t, hist, mask)
        x = torch.cat(self.context_embeddings(batch) + [t, u], dim=-1)
        return self.dnn.mlp[:-1](x).squeeze(-1)   # all but the Sigmoid

    def forward(self, batch):
        return torch.sigmoid(self.logits(batch))


def make_batch(cfg, items, history, candidates):
    """The batch for one user's history and candidates (qin_reference)."""
    return qref.make_batch(cfg, items, history, candidates)


def checkpoint_keys(model):
    """{key: shape} of the FuxiCTR checkpoint (num_batches_tracked too)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@torch.no_grad()
def random_init(model, seed, logit_std=1.6, logit_mean=-0.4):
    """Non-trivial random weights, deterministic for a seed: every part
    matters (the attention changes u noticeably, batch norm and Dice have
    random running statistics near a probe batch's), and the probe's logits
    have about the given spread.  Row 0 of every table is zero."""
    cfg = model.cfg
    gen, randn, uniform = qref.seeded_draws(seed)
    model.eval()
    qref.random_item_tables(model, randn)

    n_probe = max(64, min(512, 2_000_000 // (cfg.max_len * cfg.item_dim * 4)))
    probe = qref.random_probe_batch(cfg, gen, n_probe)
    t, hist, mask = model.parts(probe)
    B, L, E = hist.shape

    def calibrate(mlp, x, dice_scale=1.0):
        """Random Linear weights, then batch norm / Dice statistics taken
        from x as it flows through (with noise), layer by layer."""
        for m in mlp.mlp:
            if isinstance(m, nn.Linear):
                m.weight.copy_(randn(*m.weight.shape) / math.sqrt(m.in_features))
                m.bias.copy_(randn(*m.bias.shape) * 0.1)
            elif isinstance(m, nn.BatchNorm1d):
                mu, var = x.mean(0), x.var(0) + 1e-3
                m.running_mean.copy_(mu + randn(*mu.shape) * var.sqrt() * 0.3)
                m.running_var.copy_(var * uniform(0.5, 2.0, *mu.shape))
                m.weight.copy_(uniform(0.5, 1.5, *mu.shape))
                m.bias.copy_(randn(*mu.shape) * 0.2)
                m.num_batches_tracked.fill_(1000)
            elif isinstance(m, Dice):
                mu, var = x.mean(0), x.var(0) + 1e-3
                m.bn.running_mean.copy_(mu + randn(*mu.shape) * var.sqrt() * 0.3)
                m.bn.running_var.copy_(var * uniform(0.5, 2.0, *mu.shape))
                m.bn.num_batches_tracked.fill_(1000)
                m.alpha.copy_(uniform(-0.3, 0.6, *mu.shape) * dice_scale)
            if isinstance(m, nn.Sigmoid):
                break
            x = m(x)
        return x

    # Attention: the last layer scaled so u is about as large as t.
    att = model.attention_layers
    te = t.unsqueeze(1).expand(-1, L, -1)
    inp = torch.cat([te, hist, te - hist, te * hist], dim=-1).reshape(-1, 4 * E)
    calibrate(att.attention_layer, inp)
    last = att.attention_layer.linears()[-1]
    s = att.attention_layer(inp).view(B, L) * mask
    if cfg.softmax:
        last.weight.mul_(1.5 / (s[mask > 0].std().item() + 1e-12))
    else:
        u = (s.unsqueeze(-1) * hist).sum(1)
        last.weight.mul_(t.std().item() / (u.std().item() + 1e-12))
        last.bias.mul_(t.std().item() / (u.std().item() + 1e-12))
    u = att(t, hist, mask)
    x = torch.cat(model.context_embeddings(probe) + [t, u], dim=-1)
    calibrate(model.dnn, x)
    out = model.dnn.linears()[-1]
    logit = model.logits(probe)
    out.weight.mul_(logit_std / (logit.std().item() + 1e-12))
    out.bias.zero_()
    out.bias.fill_(logit_mean - model.logits(probe).mean().item())
    return model
