#!/usr/bin/python3
"""Trains a served QIN model further on training rows (join_impressions.py)
and writes the next model file: the "train" and "convert" steps of the loop
serve -> log -> join -> train -> convert -> reload (tools/README.md).

    /usr/bin/python3 tools/train_rows.py --model model.safetensors \\
        --items items.jsonl --rows rows.jsonl --out next.safetensors \\
        --version V [--checkpoint ckpt.model] [--epochs 1] [--lr 1e-3]
        [--batch 512] [--seed 1]

--model is the model file being served (convert.py's output: its tensors
are the FuxiCTR state_dict, keys verbatim, and its metadata the
configuration), so training starts from exactly the weights that produced
the logged scores.  --items gives each item's tags and embedding
(ctr-load's items.jsonl), looked up by item_id for the rows' candidates and
histories, as FuxiCTR joins its item table.  Rows are
{"user_id", "item_id", <context fields>, "item_seq", "label"}; fields the
model does not read are ignored, a context field a row lacks is 0
(padding), as in serving.

Writes the new state_dict (--checkpoint, optional: torch.save, what
convert.py reads) and the model file --out through convert.py with the
served file's name, max_len, tags and context fields and the new --version,
written to a temporary file and renamed (a server reloading on SIGHUP never
sees half of it).  Prints the rows' log loss before and after.  QIN only
(DIN and TIN files are refused with a message); larger runs belong in
FuxiCTR, whose checkpoints convert.py reads the same way.

Exit status 0; 2 for bad arguments, an unreadable input or a row naming an
item without features.
"""
import argparse
import json
import math
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert  # noqa: E402
import qin_reference as ref  # noqa: E402
import safetensors_io  # noqa: E402


class TrainError(Exception):
    pass


def load_model(path):
    meta, tensors = safetensors_io.read(path)
    if meta.get("arch", "qin") != "qin":
        raise TrainError(f"{path}: a {meta.get('arch')} model; this tool trains QIN")
    cfg = convert.config_from_metadata(meta)
    model = ref.QINReference(cfg)
    # The int8 weights convert.py --calibrate adds are not training state
    # (the next file gets its own with --calibrate).
    sd = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()
          if not re.match(r"qnn\.layer\.\d+\.int8(x2)?\.", k)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # num_batches_tracked is dropped by the converter; nothing else may differ.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise TrainError(f"{path}: keys do not match the QIN reference: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    return meta, cfg, model


def load_items(path, cfg):
    items = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            it = json.loads(line)
            tags = list(it.get("item_tags", []))[:cfg.num_tags]
            mm = it.get(ref.MM_FIELD, [0.0] * cfg.mm_in)
            if len(mm) != cfg.mm_in:
                raise TrainError(f"{path}:{n}: {len(mm)}-d embedding, the model reads "
                                 f"{cfg.mm_in}")
            items[int(it["item_id"])] = (tags + [0] * (cfg.num_tags - len(tags)), mm)
    return items


def tensors_of(rows, items, cfg):
    """The rows as one batch (all of them): ctx, item and padded history."""
    T, M, L = cfg.num_tags, cfg.mm_in, cfg.max_len
    zero = ([0] * T, [0.0] * M)
    ids = sorted({r["item_id"] for r in rows} |
                 {i for r in rows for i in r["item_seq"][-L:] if i})
    missing = [i for i in ids if i not in items]
    if missing:
        raise TrainError(f"items without features in --items: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}")
    ctx = torch.tensor([[int(r.get(f, 0)) for f in cfg.context_fields] for r in rows],
                       dtype=torch.long).reshape(len(rows), cfg.num_ctx)
    seq = torch.tensor([ref.pad_history(r["item_seq"], L) for r in rows], dtype=torch.long)
    table_tags = {i: items[i][0] for i in ids}
    table_mm = {i: items[i][1] for i in ids}
    item = torch.tensor([r["item_id"] for r in rows], dtype=torch.long)
    return {
        "ctx": ctx,
        "item_id": item,
        "item_tags": torch.tensor([table_tags[i] for i in item.tolist()], dtype=torch.long),
        "item_mm": torch.tensor([table_mm[i] for i in item.tolist()], dtype=torch.float32),
        "seq_id": seq,
        "seq_tags": torch.tensor([[table_tags[i] if i else zero[0] for i in s]
                                  for s in seq.tolist()], dtype=torch.long).reshape(-1, L, T),
        "seq_mm": torch.tensor([[table_mm[i] if i else zero[1] for i in s]
                                for s in seq.tolist()], dtype=torch.float32).reshape(-1, L, M),
    }, torch.tensor([float(r["label"]) for r in rows])


def log_loss(model, batch, y):
    model.eval()
    with torch.no_grad():
        p = model(batch).clamp(1e-7, 1 - 1e-7)
    return float(-(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean())


def train(model, batch, y, epochs, lr, bs, seed):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    bce = torch.nn.BCEWithLogitsLoss()
    n = len(y)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            if len(idx) < 2:
                continue   # batch norm needs two rows
            logit = model.logits({k: v[idx] for k, v in batch.items()})
            loss = bce(logit, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train a served QIN model on joined rows.")
    ap.add_argument("--model", required=True, help="the served model file")
    ap.add_argument("--items", required=True, help="item features (items.jsonl)")
    ap.add_argument("--rows", required=True, help="training rows (join_impressions.py)")
    ap.add_argument("--out", required=True, help="the next model file")
    ap.add_argument("--version", required=True, help="its version")
    ap.add_argument("--checkpoint", help="also write the state_dict here")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if a.epochs < 0 or a.batch < 2 or not a.lr > 0:
        ap.error("--epochs >= 0, --batch >= 2, --lr > 0")
    torch.manual_seed(a.seed)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:
        meta, cfg, model = load_model(a.model)
        items = load_items(a.items, cfg)
        with open(a.rows) as f:
            rows = [json.loads(l) for l in f if l.strip()]
        if not rows:
            raise TrainError(f"{a.rows}: no rows")
        batch, y = tensors_of(rows, items, cfg)
        before = log_loss(model, batch, y)
        train(model, batch, y, a.epochs, a.lr, a.batch, a.seed)
        after = log_loss(model, batch, y)
        sd = model.state_dict()
        if a.checkpoint:
            torch.save(sd, a.checkpoint)
        tmp = a.out + ".tmp"
        cfg2, meta2, size = convert.convert_state_dict(
            sd, tmp, max_len=cfg.max_len, num_tags=cfg.num_tags,
            context_fields=tuple(cfg.context_fields), version=a.version,
            name=meta.get("name", "qin"))
        os.replace(tmp, a.out)
    except (OSError, ValueError, KeyError, TrainError, convert.ConvertError) as e:
        print(f"train_rows: {e}", file=sys.stderr)
        return 2
    pos = float(y.mean())
    print(f"train_rows: {len(rows)} rows ({pos:.1%} positive), {a.epochs} epoch(s): "
          f"log loss {before:.4f} -> {after:.4f}; wrote {a.out} "
          f"({meta2['name']} version {a.version}, {size} bytes)")
    if not math.isfinite(after):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
