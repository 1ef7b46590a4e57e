#!/usr/bin/python3
# convert.py - turns a trained checkpoint into the service's model file
# (safetensors, F32, format ctr-model-2 with the architecture and the feature
# schema in __metadata__; see tools/README.md "Model file"):
#   - QIN: a FuxiCTR state_dict (torch.save'd, a `.model` file);
#   - DIN: a FuxiCTR DIN state_dict (the challenge baseline), whatever its
#     dropout and Dice settings (the layers are found by shape and order,
#     not by module index), also one saved from a GPU run;
#   - TIN: a `.npz` of the TensorFlow variables (optimizer slots and step
#     counters ignored).
# The architecture is recognised from the keys (--arch forces it).  The
# configuration is derived from the tensor shapes; every key and shape is
# then checked against it, and a checkpoint that does not fit (missing key,
# wrong shape, unexpected extra key, non-finite value) is refused with exit
# status 2 and a message naming the key.  What shapes cannot tell (max_len,
# num_tags, the order of the context fields, DIN's softmax flag, name,
# version) comes from flags.  For QIN, --calibrate ROWS --items ITEMS also
# writes each QNN layer's int8x2 weights rounded with training rows as
# calibration data (int8_rounding.py; I8 tensors, after the F32 ones),
# which the server uses in place of rounding to nearest.
#
#   /usr/bin/python3 tools/convert.py --checkpoint X.model --out model.safetensors
#       [--calibrate rows.jsonl --items items.jsonl]

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import qin_reference as ref  # noqa: E402
import safetensors_io  # noqa: E402

FORMAT = "ctr-model-2"
QIN_ITEM_FIELDS = "item_id,item_tags,item_emb_d128"
P = ref.PREFIX
EMB_RE = re.compile(re.escape(P) + r"embedding_layers\.([^.]+)\.weight$")
LAYER_RE = re.compile(r"qnn\.layer\.(\d+)\.linear\.0\.weight$")
NAME_MAX = 63          # ENGINE_NAME_MAX - 1 in core/engine.h
MAX_CTX = 16           # ENGINE_MAX_CTX in core/engine.h
DEFAULT_CONTEXT = ("likes_level", "views_level")
CALIBRATE_ROWS = 20000  # training rows --calibrate reads at most


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
        "item_fields": QIN_ITEM_FIELDS,
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


def calibration_inputs(sd, cfg, rows_path, items_path, max_rows=CALIBRATE_ROWS):
    """The QNN's inputs x_0 (rows x D) of the model in sd on up to max_rows
    training rows of rows_path ({"user_id", "item_id", <context fields>,
    "item_seq", ...} a line, as join_impressions.py writes them), their items'
    features from items_path (ctr-load's items.jsonl)."""
    import json
    import torch
    import train_rows
    rows = []
    try:
        with open(rows_path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                r = json.loads(line)
                if not isinstance(r, dict) or "item_id" not in r or not isinstance(
                        r.get("item_seq"), list):
                    raise ConvertError(f"{rows_path}:{n}: a row needs item_id and item_seq")
                rows.append(r)
                if len(rows) == max_rows:
                    break
        items = train_rows.load_items(items_path, cfg)
    except json.JSONDecodeError as e:
        raise ConvertError(f"calibration: not JSON lines: {e}") from None
    except train_rows.TrainError as e:
        raise ConvertError(f"calibration: {e}") from None
    if not rows:
        raise ConvertError(f"{rows_path}: no calibration rows")
    model = ref.QINReference(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(rows), 1024):
            try:
                batch, _ = train_rows.tensors_of(
                    [dict(r, label=r.get("label", 0)) for r in rows[s:s + 1024]], items, cfg)
            except train_rows.TrainError as e:
                raise ConvertError(f"calibration: {e}") from None
            out.append(model.input_vector(batch))
    return torch.cat(out)


def convert_state_dict(sd, out, max_len=64, num_tags=5,
                       context_fields=DEFAULT_CONTEXT, version="1", name="qin",
                       calibrate=None):
    """Checks state_dict sd and writes the model file `out`; calibrate
    (rows path, items path), or None: with it, the QNN layers' int8x2
    weights rounded with those rows as calibration data (int8_rounding.py)
    are written too.  Returns (config, metadata dict, bytes written); raises
    ConvertError."""
    _check_name("--name", name)
    _check_name("--version", version)
    cfg = derive_config(sd, max_len, num_tags, context_fields)
    check(sd, cfg)
    # The checkpoint's keys verbatim, in its order, as float32.
    tensors = {k: v.detach().float().contiguous() for k, v in sd.items()
               if not k.endswith(".num_batches_tracked")}
    if calibrate:
        import int8_rounding
        x0 = calibration_inputs(sd, cfg, *calibrate)
        extra = int8_rounding.qnn_int8_tensors(sd, cfg.num_layers, cfg.num_row,
                                               cfg.batch_norm, x0)
        # F32 scales first, the I8 weights last (every F32 tensor 4-aligned).
        tensors.update({k: v for k, v in extra.items() if v.dtype != "int8"})
        tensors.update({k: v for k, v in extra.items() if v.dtype == "int8"})
    meta = metadata(cfg, name, version)
    if calibrate:
        meta["int8_calibration_rows"] = str(int(x0.shape[0]))
    size = safetensors_io.write(out, tensors, meta)
    return cfg, meta, size


def convert_file(checkpoint, out, max_len=64, num_tags=5,
                 context_fields=DEFAULT_CONTEXT, version=None, name="qin", calibrate=None):
    """convert_state_dict() on a checkpoint file (what the CLI runs)."""
    sd = load_checkpoint(checkpoint)
    if version is None:
        version = default_version(checkpoint)
    return convert_state_dict(sd, out, max_len, num_tags, context_fields,
                              version, name, calibrate)


# --- DIN ---------------------------------------------------------------------

ATT_RE = re.compile(r"attention_layers\.attention_layer\.mlp\.(\d+)\.(.+)$")
DNN_RE = re.compile(r"dnn\.mlp\.(\d+)\.(.+)$")
BN_PARAMS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
DICE_PARAMS = {"alpha", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}


def _mlp_layers(sd, regex, net):
    """The Linear layers of one FuxiCTR MLP_Block, in module order, each with
    the BatchNorm1d and Dice that follow it: [{"w", "b", "bn", "dice"}].
    Module indices are not fixed (dropout and activations take indices too):
    a module is recognised by its parameters and shapes."""
    mods = {}
    for k, v in sd.items():
        m = regex.match(k)
        if m:
            mods.setdefault(int(m.group(1)), {})[m.group(2)] = (k, v)
    layers = []
    for i in sorted(mods):
        p = mods[i]
        names = set(p)
        odd = sorted(names - BN_PARAMS - DICE_PARAMS)
        first = p[odd[0] if odd else sorted(names)[0]][0]
        if names == {"weight", "bias"} and len(_shape(p["weight"][1])) == 2:
            layers.append({"w": p["weight"], "b": p["bias"], "bn": None, "dice": None,
                           "index": i})
            continue
        if not layers:
            raise ConvertError(f"unexpected key {first}: {net} module {i} comes before "
                               "any Linear layer")
        last = layers[-1]
        if names <= BN_PARAMS and {"weight", "bias", "running_mean", "running_var"} <= names:
            if last["bn"] or last["dice"]:
                raise ConvertError(f"unexpected key {first}: a second batch norm, or one after "
                                   f"the Dice of {net} module {last['index']}")
            last["bn"] = p
        elif names <= DICE_PARAMS and {"alpha", "bn.running_mean", "bn.running_var"} <= names:
            if last["dice"]:
                raise ConvertError(f"unexpected key {first}: a second Dice after {net} module "
                                   f"{last['index']}")
            last["dice"] = p
        else:
            raise ConvertError(f"unexpected key {first} (shape {_fmt(_shape(p[sorted(names)[0]][1]))})"
                               f": not a Linear, BatchNorm1d or Dice module of the {net}")
    return layers


def _check_chain(layers, in_dim, net, allow_bn):
    """Shapes chain from in_dim to 1; hidden layers all with or all without
    Dice (and batch norm); the output layer with neither."""
    if len(layers) < 2:
        raise ConvertError(f"the {net} needs at least one hidden Linear layer and the output "
                           f"layer; found {len(layers)} Linear layer(s)")
    dim = in_dim
    for n, l in enumerate(layers):
        kw, w = l["w"]
        kb, b = l["b"]
        out, got_in = _shape(w)
        if got_in != dim:
            raise ConvertError(f"{kw}: expected shape (units, {dim}), got {_fmt(_shape(w))}")
        if _shape(b) != (out,):
            raise ConvertError(f"{kb}: expected shape ({out},), got {_fmt(_shape(b))}")
        for part in ("bn", "dice"):
            for name, (key, t) in (l[part] or {}).items():
                if not name.endswith("num_batches_tracked") and _shape(t) != (out,):
                    raise ConvertError(f"{key}: expected shape ({out},), got {_fmt(_shape(t))}")
        dim = out
    if dim != 1:
        kw = layers[-1]["w"][0]
        raise ConvertError(f"{kw}: the {net}'s last Linear must have 1 output, got {dim}")
    hidden, last = layers[:-1], layers[-1]
    if last["bn"] or last["dice"]:
        raise ConvertError(f"{last['w'][0]}: batch norm or Dice after the {net}'s output layer")
    for part in ("dice", "bn"):
        have = [bool(l[part]) for l in hidden]
        if any(have) and not all(have):
            k = hidden[have.index(False)]["w"][0]
            raise ConvertError(f"{k}: the {net}'s hidden layers must all have a "
                               f"{'Dice' if part == 'dice' else 'batch norm'} or none")
    if hidden[0]["bn"] and not allow_bn:
        raise ConvertError(f"{next(iter(hidden[0]['bn'].values()))[0]}: batch norm in the "
                           f"{net} is not part of DIN_Attention as the challenge trains it")
    return bool(hidden[0]["dice"]), bool(hidden[0]["bn"])


def din_convert_state_dict(sd, out, max_len=64, num_tags=5, context_fields=DEFAULT_CONTEXT,
                           softmax=False, version="1", name="din"):
    """Checks a FuxiCTR DIN state_dict and writes the model file with the
    layers under canonical names (attention.<k>.*, dnn.<k>.*, <k> counting
    Linear layers).  Returns (summary dict, metadata, bytes)."""
    import torch
    _check_name("--name", name)
    _check_name("--version", version)
    if max_len < 1 or num_tags < 1:
        raise ConvertError("--max-len and --num-tags must be >= 1")
    context_fields = tuple(context_fields)
    for f in context_fields:
        _check_name("context field", f)
    if len(set(context_fields)) != len(context_fields) or len(context_fields) > MAX_CTX:
        raise ConvertError(f"--context-fields {','.join(context_fields)}: a field twice, "
                           f"or more than {MAX_CTX}")
    used = set()

    def need(key, ndim):
        if key not in sd:
            raise ConvertError(f"missing key {key}")
        shape = _shape(sd[key])
        if len(shape) != ndim:
            raise ConvertError(f"{key}: expected a {ndim}-d tensor, got shape {_fmt(shape)}")
        used.add(key)
        return shape

    for key in sd:
        m = EMB_RE.match(key)
        if m and m.group(1) not in context_fields + ("item_id", "item_tags"):
            raise ConvertError(f"unexpected key {key}: field {m.group(1)!r} is not in "
                               f"--context-fields {','.join(context_fields) or '(none)'}")
    item_vocab, d = need(P + "embedding_layers.item_id.weight", 2)
    tag_vocab, d2 = need(P + "embedding_layers.item_tags.weight", 2)
    mm_out, mm_in = need(P + f"feature_encoders.{ref.MM_FIELD}.weight", 2)
    if d2 != d:
        raise ConvertError(f"{P}embedding_layers.item_tags.weight: expected shape "
                           f"({tag_vocab}, {d}), got {_fmt((tag_vocab, d2))}")
    vocab = []
    for f in context_fields:
        v, dc = need(P + f"embedding_layers.{f}.weight", 2)
        if dc != d:
            raise ConvertError(f"{P}embedding_layers.{f}.weight: expected shape ({v}, {d}), "
                               f"got {_fmt((v, dc))}")
        vocab.append(v)
    E = 2 * d + mm_out
    att = _mlp_layers(sd, ATT_RE, "attention MLP")
    dnn = _mlp_layers(sd, DNN_RE, "DNN")
    if not att:
        raise ConvertError("missing key attention_layers.attention_layer.mlp.0.weight")
    if not dnn:
        raise ConvertError("missing key dnn.mlp.0.weight")
    att_dice, _ = _check_chain(att, 4 * E, "attention MLP", False)
    dnn_dice, dnn_bn = _check_chain(dnn, len(context_fields) * d + 2 * E, "DNN", True)
    for net in (att, dnn):
        for l in net:
            used.update((l["w"][0], l["b"][0]))
            for part in ("bn", "dice"):
                used.update(k for k, _ in (l[part] or {}).values())
    for key in sd:
        if key not in used:
            raise ConvertError(f"unexpected key {key} (shape {_fmt(_shape(sd[key]))}) in a "
                               "DIN checkpoint")
    if item_vocab < 2 or tag_vocab < 1 or min(vocab, default=1) < 1:
        raise ConvertError("a vocabulary is empty")

    tensors = {}

    def put(key, src_key):
        t = sd[src_key]
        if not t.is_floating_point():
            raise ConvertError(f"{src_key}: dtype {t.dtype} is not a float type")
        t = t.detach().float().contiguous()
        if not bool(torch.isfinite(t).all()):
            raise ConvertError(f"{src_key}: holds NaN or infinite values")
        if "running_var" in src_key and bool((t < 0).any()):
            raise ConvertError(f"{src_key}: negative running variance")
        tensors[key] = t

    for f in context_fields:
        put(P + f"embedding_layers.{f}.weight", P + f"embedding_layers.{f}.weight")
    for k in (P + "embedding_layers.item_id.weight", P + "embedding_layers.item_tags.weight",
              P + f"feature_encoders.{ref.MM_FIELD}.weight"):
        put(k, k)
    params = 0
    for pre, net in (("attention", att), ("dnn", dnn)):
        for k, l in enumerate(net):
            put(f"{pre}.{k}.weight", l["w"][0])
            put(f"{pre}.{k}.bias", l["b"][0])
            if l["bn"]:
                for p in ("weight", "bias", "running_mean", "running_var"):
                    put(f"{pre}.{k}.bn.{p}", l["bn"][p][0])
            if l["dice"]:
                for p in ("alpha", "running_mean", "running_var"):
                    put(f"{pre}.{k}.dice.{p}", l["dice"][p if p == "alpha" else "bn." + p][0])
    for key, t in tensors.items():
        if not key.endswith(("running_mean", "running_var")):
            params += t.numel()
    units = lambda net: ",".join(str(_shape(l["w"][1])[0]) for l in net[:-1])  # noqa: E731
    meta = {
        "format": FORMAT, "arch": "din", "item_fields": QIN_ITEM_FIELDS,
        "name": name, "version": version,
        "embedding_dim": str(d), "max_len": str(max_len),
        "item_vocab": str(item_vocab), "tag_vocab": str(tag_vocab),
        "num_tags": str(num_tags), "mm_in": str(mm_in), "mm_out": str(mm_out),
        "context_fields": ",".join(context_fields),
        "context_vocab": ",".join(str(v) for v in vocab),
        "attention_units": units(att), "attention_activation": "dice" if att_dice else "relu",
        "dnn_units": units(dnn), "dnn_activation": "dice" if dnn_dice else "relu",
        "dnn_batch_norm": "1" if dnn_bn else "0", "softmax": "1" if softmax else "0",
        "params": str(params),
    }
    size = safetensors_io.write(out, tensors, meta)
    return meta, size


# --- TIN ---------------------------------------------------------------------

TIN_IGNORED = re.compile(r"(/Adam(_1)?:0$)|(^beta[12]_power(_\d+)?:0$)|"
                         r"(^global_(epoch_)?step:0$)")


def tin_convert_variables(v, out, max_len=None, version="1", name="tin"):
    """Checks the TF variables of a TIN checkpoint ({name: array}, names
    with ":0") and writes the model file (names without ":0", kernels
    [in, out] as TF keeps them).  Returns (metadata, bytes)."""
    import numpy as np
    import tin_reference as tref
    _check_name("--name", name)
    _check_name("--version", version)

    def need(key, ndim):
        if key not in v:
            raise ConvertError(f"missing key {key}")
        shape = tuple(int(s) for s in np.shape(v[key]))
        if len(shape) != ndim:
            raise ConvertError(f"{key}: expected a {ndim}-d array, got shape {_fmt(shape)}")
        return shape

    npos, H = need("pos:0", 2)
    item_vocab, di = need("item:0", 2)
    cate_vocab, dc = need("cate:0", 2)
    if di + dc != H:
        raise ConvertError(f"pos:0: width {H}, but item:0 ({di}) + cate:0 ({dc}) is {di + dc}")
    _, f1 = need("f1/kernel:0", 2)
    _, f2 = need("f2/kernel:0", 2)
    if npos < 2:
        raise ConvertError(f"pos:0: {npos} rows, at least 2 needed")
    if max_len is not None and max_len != npos - 1:
        raise ConvertError(f"--max-len {max_len}: this TIN's position table pos:0 has {npos} "
                           f"rows, so it reads at most {npos - 1} behaviours")
    cfg = tref.TINConfig(item_vocab=item_vocab, cate_vocab=cate_vocab, item_dim=di,
                         cate_dim=dc, max_len=npos - 1, f1_units=f1, f2_units=f2)
    want = tref.all_shapes(cfg)
    tensors = {}
    for base, shape in want.items():
        key = base + ":0"
        if key not in v:
            raise ConvertError(f"missing key {key} (expected shape {_fmt(shape)})")
        a = np.asarray(v[key])
        if tuple(a.shape) != shape:
            raise ConvertError(f"{key}: expected shape {_fmt(shape)}, got {_fmt(a.shape)}")
        if a.dtype.kind != "f":
            raise ConvertError(f"{key}: dtype {a.dtype} is not a float type")
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ConvertError(f"{key}: holds NaN or infinite values")
        if base.endswith("moving_variance") and (a < 0).any():
            raise ConvertError(f"{key}: negative moving variance")
        tensors[base] = a
    for key in v:
        if key.endswith(":0") and key[:-2] in want:
            continue
        if TIN_IGNORED.search(key):
            continue
        raise ConvertError(f"unexpected key {key} (shape {_fmt(np.shape(v[key]))}) in a TIN "
                           "checkpoint")
    params = sum(int(np.prod(s)) for k, s in want.items() if k not in tref.MOVING)
    meta = {
        "format": FORMAT, "arch": "tin", "item_fields": "item_id,cate_id",
        "name": name, "version": version,
        "max_len": str(npos - 1), "item_vocab": str(item_vocab), "cate_vocab": str(cate_vocab),
        "item_dim": str(di), "cate_dim": str(dc), "f1_units": str(f1), "f2_units": str(f2),
        "context_fields": "", "context_vocab": "", "params": str(params),
    }
    size = safetensors_io.write(out, tensors, meta)
    return meta, size


# --- any architecture ---------------------------------------------------------

ARCHS = ("qin", "din", "tin")


def is_npz(path):
    """True for a NumPy .npz archive (a zip of .npy members; a torch
    checkpoint is a zip too, of other members)."""
    import zipfile
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def load_npz(path):
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise ConvertError(f"cannot load .npz: {e}") from None


def detect_arch(keys):
    """The architecture a checkpoint's keys show, or ConvertError."""
    keys = list(keys)
    if any(k.startswith("qnn.layer.") for k in keys):
        return "qin"
    if any(ATT_RE.match(k) for k in keys) or any(DNN_RE.match(k) for k in keys):
        return "din"
    if "pos:0" in keys or "hist_fcn_t/kernel:0" in keys:
        return "tin"
    shown = ", ".join(sorted(keys)[:6]) + (", ..." if len(keys) > 6 else "")
    raise ConvertError("cannot tell the architecture: no qnn.layer.* key (QIN), no "
                       "attention_layers.attention_layer.mlp.* or dnn.mlp.* key (DIN), no "
                       f"pos:0 (TIN); keys: {shown or '(none)'}")


def convert_any(checkpoint, out, arch=None, max_len=None, num_tags=5, context_fields=None,
                softmax=False, version=None, name=None, calibrate=None):
    """Converts a checkpoint of any architecture (what the CLI runs);
    calibrate: (rows, items) for QIN's int8 weights (convert_state_dict).
    Returns (arch, metadata, bytes, summary line)."""
    if version is None:
        version = default_version(checkpoint)
    if is_npz(checkpoint):
        obj = load_npz(checkpoint)
    else:
        obj = load_checkpoint(checkpoint)
    arch = arch or detect_arch(obj.keys())
    if softmax and arch != "din":
        raise ConvertError(f"--softmax is a DIN setting; this is a {arch} checkpoint")
    if calibrate and arch != "qin":
        raise ConvertError(f"--calibrate rounds QIN's int8 weights; this is a {arch} "
                           "checkpoint")
    if arch == "tin":
        if not isinstance(next(iter(obj.values()), None), __import__("numpy").ndarray):
            raise ConvertError("a TIN checkpoint is a .npz of TensorFlow variables")
        if context_fields:
            raise ConvertError("a TIN model has no context fields")
        meta, size = tin_convert_variables(obj, out, max_len, version, name or "tin")
        line = (f"converted tin {meta['name']} version {meta['version']}: "
                f"item_vocab={meta['item_vocab']} cate_vocab={meta['cate_vocab']} "
                f"H={int(meta['item_dim']) + int(meta['cate_dim'])} max_len={meta['max_len']} "
                f"f={meta['f1_units']},{meta['f2_units']} params={meta['params']} -> {out} "
                f"({size} bytes)")
        return arch, meta, size, line
    if not all(hasattr(t, "shape") and hasattr(t, "is_floating_point") for t in obj.values()):
        raise ConvertError(f"a {arch} checkpoint is a torch state_dict")
    fields = DEFAULT_CONTEXT if context_fields is None else tuple(context_fields)
    if arch == "din":
        meta, size = din_convert_state_dict(obj, out, max_len or 64, num_tags, fields, softmax,
                                            version, name or "din")
        line = (f"converted din {meta['name']} version {meta['version']}: "
                f"embedding_dim={meta['embedding_dim']} max_len={meta['max_len']} "
                f"attention={meta['attention_units']}/{meta['attention_activation']} "
                f"dnn={meta['dnn_units']}/{meta['dnn_activation']} "
                f"batch_norm={meta['dnn_batch_norm']} softmax={meta['softmax']} "
                f"item_vocab={meta['item_vocab']} tag_vocab={meta['tag_vocab']} "
                f"params={meta['params']} -> {out} ({size} bytes)")
        return arch, meta, size, line
    cfg, meta, size = convert_state_dict(obj, out, max_len or 64, num_tags, fields, version,
                                         name or "qin", calibrate)
    return arch, meta, size, summary(cfg, meta, out, size)


def summary(cfg, meta, out, size):
    ctx = ",".join(f"{f}:{v}" for f, v in zip(cfg.context_fields,
                                              cfg.context_vocab))
    return (f"converted {meta['name']} version {meta['version']}: "
            f"embedding_dim={cfg.embedding_dim} max_len={cfg.max_len} "
            f"num_layers={cfg.num_layers} num_row={cfg.num_row} "
            f"batch_norm={meta['batch_norm']} item_vocab={cfg.item_vocab} "
            f"tag_vocab={cfg.tag_vocab} num_tags={cfg.num_tags} "
            f"mm={cfg.mm_in}->{cfg.mm_out} context={ctx or '-'} "
            f"params={meta['params']}"
            + (f" int8_calibration_rows={meta['int8_calibration_rows']}"
               if "int8_calibration_rows" in meta else "")
            + f" -> {out} ({size} bytes)")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Convert a QIN or DIN checkpoint (FuxiCTR state_dict) or a TIN .npz of "
                    "TensorFlow variables to the service's safetensors model file.")
    ap.add_argument("--checkpoint", required=True,
                    help="torch.save'd state_dict (.model) or TIN variables (.npz)")
    ap.add_argument("--out", required=True, help="model file to write")
    ap.add_argument("--arch", choices=ARCHS, default=None,
                    help="architecture (default: recognised from the keys)")
    ap.add_argument("--max-len", type=int, default=None,
                    help="behaviours the model keeps (QIN, DIN: default 64; TIN: its "
                         "position table decides)")
    ap.add_argument("--num-tags", type=int, default=5,
                    help="tag slots per item (QIN, DIN; default 5)")
    ap.add_argument("--context-fields", default=None,
                    help="context fields in model order, comma-separated (QIN, DIN; "
                         "default likes_level,views_level; '' for none)")
    ap.add_argument("--softmax", action="store_true",
                    help="DIN trained with din_use_softmax: True (no weight records it)")
    ap.add_argument("--version", default=None,
                    help="model version (default: checkpoint mtime, UTC)")
    ap.add_argument("--name", default=None, help="model name (default: the architecture)")
    ap.add_argument("--calibrate", default=None, metavar="ROWS",
                    help="QIN: training rows (JSON lines, as join_impressions.py writes "
                         f"them; the first {CALIBRATE_ROWS}) to round the int8x2 weights "
                         "with, written into the model file (docs/PRECISION.md); needs "
                         "--items")
    ap.add_argument("--items", default=None,
                    help="item features of the calibration rows (ctr-load's items.jsonl)")
    args = ap.parse_args(argv)
    if (args.calibrate is None) != (args.items is None):
        ap.error("--calibrate and --items go together")
    fields = None
    if args.context_fields is not None:
        fields = tuple(f.strip() for f in args.context_fields.split(",") if f.strip())
    try:
        _, _, _, line = convert_any(args.checkpoint, args.out, args.arch, args.max_len,
                                    args.num_tags, fields, args.softmax, args.version,
                                    args.name,
                                    (args.calibrate, args.items) if args.calibrate else None)
    except ConvertError as e:
        print(f"convert: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"convert: {e}", file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
