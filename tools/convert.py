#!/usr/bin/python3
# convert.py - turns a FuxiCTR QIN checkpoint (torch.save'd state_dict, a
# `.model` file) into the service's model file (safetensors, F32, with the
# configuration in __metadata__; see tools/README.md "Model file").
#
# The configuration is derived from the tensor shapes; every key and shape is
# then checked against it, and a checkpoint that does not fit (missing key,
# wrong shape, unexpected extra key, non-finite value) is refused with exit
# status 2 and a message naming the key.  What shapes cannot tell (max_len,
# num_tags, the order of the context fields, name, version) comes from flags.
#
#   /usr/bin/python3 tools/convert.py --checkpoint X.model --out model.safetensors

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import qin_reference as ref  # noqa: E402
import safetensors_io  # noqa: E402

FORMAT = "ctr-qin-1"
P = ref.PREFIX
EMB_RE = re.compile(re.escape(P) + r"embedding_layers\.([^.]+)\.weight$")
LAYER_RE = re.compile(r"qnn\.layer\.(\d+)\.linear\.0\.weight$")
NAME_MAX = 63          # QIN_NAME_MAX - 1 in core/qin.h
MAX_CTX = 16           # QIN_MAX_CTX in core/qin.h
DEFAULT_CONTEXT = ("likes_level", "views_level")


class ConvertError(Exception):
    """A checkpoint or flag that cannot become a model file."""


def _shape(t):
    return tuple(int(s) for s in t.shape)


def _fmt(shape):
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def load_checkpoint(path):
    """The checkpoint's state_dict (a bare one, or one wrapped in
    {"state_dict": ...})."""
    import torch
    try:
        # weights_only: unpickle tensors and containers only, never code
        # (a checkpoint is untrusted input); torch >= 1.13.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        raise ConvertError(f"cannot load checkpoint: {e}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(
            obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items()):
        raise ConvertError("not a state_dict of named tensors")
    return obj


def _check_name(what, s):
    if not s or len(s) > NAME_MAX or not all(32 < ord(c) < 127 for c in s) \
            or "," in s:
        raise ConvertError(
            f"{what} {s!r}: expected 1..{NAME_MAX} printable ASCII characters "
            "without spaces or commas")


def derive_config(sd, max_len=64, num_tags=5, context_fields=DEFAULT_CONTEXT):
    """The QINConfig the shapes of state_dict sd imply, with the flags for
    what shapes cannot tell.  Only reads the keys it needs; check() then
    compares every key."""
    def need(key, ndim):
        if key not in sd:
            raise ConvertError(f"missing key {key}")
        shape = _shape(sd[key])
        if len(shape) != ndim:
            raise ConvertError(
                f"{key}: expected a {ndim}-d tensor, got shape {_fmt(shape)}")
        return shape

    if max_len < 1 or num_tags < 1:
        raise ConvertError("--max-len and --num-tags must be >= 1")
    context_fields = tuple(context_fields)
    if len(context_fields) > MAX_CTX:
        raise ConvertError(f"at most {MAX_CTX} context fields")
    for f in context_fields:
        _check_name("context field", f)
    if len(set(context_fields)) != len(context_fields):
        raise ConvertError(f"--context-fields {','.join(context_fields)}: "
                           "a field is named twice")

    # Which tables are context fields is the flag's to say; tables the flag
    # does not name are reported here, before their width confuses the
    # derivation of D below.
    for key in sd:
        m = EMB_RE.match(key)
        if m and m.group(1) not in context_fields + ("item_id", "item_tags"):
            raise ConvertError(
                f"unexpected key {key}: field {m.group(1)!r} is not in "
                f"--context-fields {','.join(context_fields) or '(none)'}")
    item_vocab, d = need(P + "embedding_layers.item_id.weight", 2)
    tag_vocab, _ = need(P + "embedding_layers.item_tags.weight", 2)
    mm_out, mm_in = need(P + f"feature_encoders.{ref.MM_FIELD}.weight", 2)
    vocab = []
    for f in context_fields:
        if f in ("item_id", "item_tags"):
            raise ConvertError(f"context field {f!r} clashes with an item field")
        vocab.append(need(P + f"embedding_layers.{f}.weight", 2)[0])
    layers = sorted(int(m.group(1)) for m in map(LAYER_RE.match, sd) if m)
    if not layers:
        raise ConvertError("missing key qnn.layer.0.linear.0.weight")
    num_layers = layers[-1] + 1  # a gap shows up as a missing key in check()
    D = len(context_fields) * d + 2 * (2 * d + mm_out)
    rows, cols = need("qnn.layer.0.linear.0.weight", 2)
    if cols != D or rows % D or rows == 0:
        raise ConvertError(
            f"qnn.layer.0.linear.0.weight: expected shape (R*{D}, {D}) for "
            f"embedding_dim {d}, mm_out {mm_out} and {len(context_fields)} "
            f"context fields, got {_fmt((rows, cols))}")
    batch_norm = any(k.startswith("qnn.norm.") for k in sd)
    try:
        return ref.QINConfig(
            embedding_dim=d, max_len=max_len, num_layers=num_layers,
            num_row=rows // D, batch_norm=batch_norm, item_vocab=item_vocab,
            tag_vocab=tag_vocab, num_tags=num_tags, mm_in=mm_in,
            mm_out=mm_out, context_fields=context_fields,
            context_vocab=tuple(vocab))
    except ValueError as e:
        raise ConvertError(str(e)) from None


def check(sd, cfg):
    """Refuses a state_dict whose keys or shapes differ from cfg's, or whose
    values are not finite floats."""
    import torch
    want = ref.checkpoint_shapes(cfg)
    for key, shape in want.items():
        if key not in sd:
            raise ConvertError(f"missing key {key} (expected shape {_fmt(shape)})")
        got = _shape(sd[key])
        if got != shape:
            raise ConvertError(
                f"{key}: expected shape {_fmt(shape)}, got {_fmt(got)}")
    for key in sd:
        if key in want:
            continue
        if (cfg.batch_norm and key.endswith(".num_batches_tracked")
                and key[:-len(".num_batches_tracked")] + ".running_mean" in want):
            continue
        raise ConvertError(f"unexpected key {key} (shape {_fmt(_shape(sd[key]))})"
                           " in a QIN checkpoint")
    if cfg.item_vocab < 2 or cfg.tag_vocab < 1 or min(cfg.context_vocab,
                                                         default=1) < 1:
        raise ConvertError("a vocabulary is empty")
    for key in want:
        t = sd[key]
        if not t.is_floating_point():
            raise ConvertError(f"{key}: dtype {t.dtype} is not a float type")
        if not bool(torch.isfinite(t).all()):
            raise ConvertError(f"{key}: holds NaN or infinite values")
        if key.endswith("running_var") and bool((t < 0).any()):
            raise ConvertError(f"{key}: negative running variance")


def metadata(cfg, name, version):
    return {
        "format": FORMAT,
        "arch": "qin",
        "name": name,
        "version": version,
        "embedding_dim": str(cfg.embedding_dim),
        "max_len": str(cfg.max_len),
        "num_layers": str(cfg.num_layers),
        "num_row": str(cfg.num_row),
        "batch_norm": "1" if cfg.batch_norm else "0",
        "item_vocab": str(cfg.item_vocab),
        "tag_vocab": str(cfg.tag_vocab),
        "num_tags": str(cfg.num_tags),
        "mm_in": str(cfg.mm_in),
        "mm_out": str(cfg.mm_out),
        "context_fields": ",".join(cfg.context_fields),
        "context_vocab": ",".join(str(v) for v in cfg.context_vocab),
        "params": str(ref.count_parameters(cfg)),
    }


def config_from_metadata(meta):
    """The QINConfig a model file's metadata declares (for round trips)."""
    fields = tuple(f for f in meta["context_fields"].split(",") if f)
    vocab = tuple(int(v) for v in meta["context_vocab"].split(",") if v)
    return ref.QINConfig(
        embedding_dim=int(meta["embedding_dim"]), max_len=int(meta["max_len"]),
        num_layers=int(meta["num_layers"]), num_row=int(meta["num_row"]),
        batch_norm=meta["batch_norm"] == "1",
        item_vocab=int(meta["item_vocab"]), tag_vocab=int(meta["tag_vocab"]),
        num_tags=int(meta["num_tags"]), mm_in=int(meta["mm_in"]),
        mm_out=int(meta["mm_out"]), context_fields=fields, context_vocab=vocab)


def default_version(path):
    """The checkpoint file's modification time, UTC, e.g. 20250301T120000Z."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(os.path.getmtime(path)))


def convert_state_dict(sd, out, max_len=64, num_tags=5,
                       context_fields=DEFAULT_CONTEXT, version="1", name="qin"):
    """Checks state_dict sd and writes the model file `out`.
    Returns (config, metadata dict, bytes written); raises ConvertError."""
    _check_name("--name", name)
    _check_name("--version", version)
    cfg = derive_config(sd, max_len, num_tags, context_fields)
    check(sd, cfg)
    # The checkpoint's keys verbatim, in its order, as float32.
    tensors = {k: v.detach().float().contiguous() for k, v in sd.items()
               if not k.endswith(".num_batches_tracked")}
    meta = metadata(cfg, name, version)
    size = safetensors_io.write(out, tensors, meta)
    return cfg, meta, size


def convert_file(checkpoint, out, max_len=64, num_tags=5,
                 context_fields=DEFAULT_CONTEXT, version=None, name="qin"):
    """convert_state_dict() on a checkpoint file (what the CLI runs)."""
    sd = load_checkpoint(checkpoint)
    if version is None:
        version = default_version(checkpoint)
    return convert_state_dict(sd, out, max_len, num_tags, context_fields,
                              version, name)


def summary(cfg, meta, out, size):
    ctx = ",".join(f"{f}:{v}" for f, v in zip(cfg.context_fields,
                                              cfg.context_vocab))
    return (f"converted {meta['name']} version {meta['version']}: "
            f"embedding_dim={cfg.embedding_dim} max_len={cfg.max_len} "
            f"num_layers={cfg.num_layers} num_row={cfg.num_row} "
            f"batch_norm={meta['batch_norm']} item_vocab={cfg.item_vocab} "
            f"tag_vocab={cfg.tag_vocab} num_tags={cfg.num_tags} "
            f"mm={cfg.mm_in}->{cfg.mm_out} context={ctx or '-'} "
            f"params={meta['params']} -> {out} ({size} bytes)")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Convert a FuxiCTR QIN checkpoint to the service's "
                    "safetensors model file.")
    ap.add_argument("--checkpoint", required=True,
                    help="torch.save'd state_dict (.model)")
    ap.add_argument("--out", required=True, help="model file to write")
    ap.add_argument("--max-len", type=int, default=64,
                    help="behaviours the model keeps (default 64)")
    ap.add_argument("--num-tags", type=int, default=5,
                    help="tag slots per item (default 5)")
    ap.add_argument("--context-fields", default=",".join(DEFAULT_CONTEXT),
                    help="context fields in model order, comma-separated "
                         "(default likes_level,views_level; '' for none)")
    ap.add_argument("--version", default=None,
                    help="model version (default: checkpoint mtime, UTC)")
    ap.add_argument("--name", default="qin", help="model name (default qin)")
    args = ap.parse_args(argv)
    fields = tuple(f.strip() for f in args.context_fields.split(",") if f.strip())
    try:
        cfg, meta, size = convert_file(args.checkpoint, args.out, args.max_len,
                                       args.num_tags, fields, args.version,
                                       args.name)
    except ConvertError as e:
        print(f"convert: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"convert: {e}", file=sys.stderr)
        return 1
    print(summary(cfg, meta, args.out, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
