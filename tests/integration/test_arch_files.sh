#!/usr/bin/env bash
# test_arch_files.sh - DIN and TIN checkpoints and model files, end to end:
#   - tools/convert.py recognises the architecture from the keys (QIN, DIN,
#     TIN), converts FuxiCTR DIN state_dicts under every dropout / Dice /
#     batch-norm layout the reference writes (module indices move), one
#     saved as from a GPU run, and TIN .npz files with Adam slots; --arch
#     forces, --softmax is DIN's; a checkpoint that fits none, or a DIN /
#     TIN one with a missing, misshapen or unexpected key, is refused with
#     exit 2 and a message naming it;
#   - every converted file scores like its reference (through ctr-score);
#   - the C loader (engine.h, through ctr-score) refuses damaged DIN and TIN
#     files: truncated, a wrong dtype or shape, a missing or unexpected
#     tensor, bad metadata, each with its message and exit 2.
#
# Run by `make test` from the repo root with CTR_BUILD, CTR_GOLDEN (for
# nothing but the build's own tools) and PYTHON set.  One Python process
# does it all (importing torch costs ~1.5 s a process).
set -euo pipefail

PYTHON=${PYTHON:-/usr/bin/python3}
BUILD=${CTR_BUILD:-build/release}
[ -x "$BUILD/ctr-score" ] || { echo "test_arch_files: $BUILD/ctr-score not built"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" - "$BUILD/ctr-score" "$TMP" <<'EOF'
import json, os, subprocess, sys
sys.path.insert(0, "tools")
import numpy as np
import torch
import convert, din_reference as dref, qin_reference as qref, safetensors_io
import tin_reference as tref

score, tmp = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
passed = failed = 0


def check(what, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"  ok   {what}")
    else:
        failed += 1
        print(f"  FAIL {what} {detail}")


def refused(what, path, needle, **kw):
    """convert_any must raise ConvertError with needle in the message."""
    try:
        convert.convert_any(path, f"{tmp}/x.safetensors", version="t", **kw)
    except convert.ConvertError as e:
        check(f"refused: {what}", needle in str(e), f"(message: {e})")
        return
    check(f"refused: {what}", False, "(converted)")


SMALL = dict(embedding_dim=4, max_len=5, item_vocab=30, tag_vocab=12, num_tags=3, mm_in=6,
             mm_out=5, context_fields=("a", "b"), context_vocab=(4, 3),
             attention_units=(12, 6), dnn_units=(16, 8))
items = {i: ([i % 11, (i * 3) % 12, 0], [((i * k) % 7) / 8.0 - 0.3 for k in range(6)])
         for i in range(1, 30)}
hist = [3, 0, 7, 9, 12, 7, 21, 4]
cands = [(5, [1, 2]), (7, [0, 0]), (29, [3, 1])]


def write_score_files(d, arch, items_lines, hist, cands):
    with open(f"{d}/items.jsonl", "w") as f:
        f.write("".join(json.dumps(l) + "\n" for l in items_lines))
    with open(f"{d}/req.jsonl", "w") as f:
        c = [dict(item_id=i, **({"a": v[0], "b": v[1]} if v else {})) for i, v in cands]
        f.write(json.dumps({"user_id": "u", "item_seq": hist, "candidates": c}) + "\n")


def ctr_score(model, d):
    r = subprocess.run([score, "--model", model, "--items", f"{d}/items.jsonl"],
                       stdin=open(f"{d}/req.jsonl"), capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr
    return json.loads(r.stdout)["scores"], r.stderr


# --- DIN: every layout converts and scores like the reference ---------------
layouts = [
    ("no dropout, ReLU", dict()),
    ("dropout 0.1 in both nets", dict(attention_dropout=0.1, net_dropout=0.1)),
    ("Dice in both nets, dropout 0.2", dict(attention_dice=True, dnn_dice=True,
                                            attention_dropout=0.2, net_dropout=0.2)),
    ("Dice in the attention only, softmax", dict(attention_dice=True, softmax=True)),
    ("Dice in the DNN only, no batch norm", dict(dnn_dice=True, batch_norm=False)),
]
for k, (what, kw) in enumerate(layouts):
    cfg = dref.DINConfig(**SMALL, **kw)
    model = dref.DINReference(cfg)
    dref.random_init(model, 100 + k)
    ck = f"{tmp}/din{k}.model"
    torch.save(model.state_dict(), ck)
    out = f"{tmp}/din{k}.safetensors"
    arch, meta, _, _ = convert.convert_any(ck, out, max_len=cfg.max_len, num_tags=3,
                                           context_fields=("a", "b"), softmax=cfg.softmax,
                                           version="t")
    check(f"DIN {what}: recognised as din", arch == "din")
    with torch.no_grad():
        want = model(dref.make_batch(cfg, items, hist, cands)).numpy()
    write_score_files(tmp, "din", [{"item_id": i, "item_tags": t, "item_emb_d128": m}
                                   for i, (t, m) in items.items()], hist, cands)
    got, err = ctr_score(out, tmp)
    check(f"DIN {what}: ctr-score within 1e-5 of the reference",
          got is not None and max(abs(a - b) for a, b in zip(got, want)) <= 1e-5,
          f"(got {got}, want {want.tolist()}, {err})")

# A GPU-saved checkpoint: storages tagged cuda:0, loadable only with
# map_location="cpu".
cfg = dref.DINConfig(**SMALL)
model = dref.DINReference(cfg)
dref.random_init(model, 7)
import torch.serialization as ser
real = ser.location_tag
ser.location_tag = lambda s: "cuda:0"
torch.save(model.state_dict(), f"{tmp}/gpu.model")
ser.location_tag = real
try:
    torch.load(f"{tmp}/gpu.model")
    gpu_tagged = torch.cuda.is_available()
except RuntimeError:
    gpu_tagged = True
check("GPU-saved checkpoint does not load without map_location", gpu_tagged)
arch, _, _, _ = convert.convert_any(f"{tmp}/gpu.model", f"{tmp}/gpu.safetensors", max_len=5,
                                    num_tags=3, context_fields=("a", "b"), version="t")
check("GPU-saved checkpoint converts", arch == "din")

# --- DIN refusals ---------------------------------------------------------
sd = model.state_dict()
def variant(name, change):
    d = dict(sd)
    change(d)
    torch.save(d, f"{tmp}/{name}.model")
    return f"{tmp}/{name}.model"
A = "attention_layers.attention_layer.mlp."
kw = dict(max_len=5, num_tags=3, context_fields=("a", "b"))
refused("DIN attention layer with the wrong input width",
        variant("w", lambda d: d.__setitem__(A + "0.weight", d[A + "0.weight"][:, :-1].clone())),
        "attention_layers.attention_layer.mlp.0.weight: expected shape (units, 52)", **kw)
refused("DIN missing output layer",
        variant("m", lambda d: [d.pop(A + "4.weight"), d.pop(A + "4.bias")]),
        "must have 1 output", **kw)
refused("DIN unexpected module",
        variant("u", lambda d: d.__setitem__("dnn.mlp.3.scale", torch.ones(3))),
        "unexpected key dnn.mlp.3.scale", **kw)
refused("DIN unexpected top-level key",
        variant("t", lambda d: d.__setitem__("extra.weight", torch.ones(3))),
        "unexpected key extra.weight", **kw)
refused("DIN Dice on one hidden layer only",
        variant("dice", lambda d: [d.__setitem__(A + "1.alpha", torch.zeros(12)),
                                   d.__setitem__(A + "1.bn.running_mean", torch.zeros(12)),
                                   d.__setitem__(A + "1.bn.running_var", torch.ones(12))]),
        "must all have a Dice or none", **kw)
refused("DIN context field not in --context-fields", f"{tmp}/din0.model",
        "field 'b' is not in --context-fields a", max_len=5, num_tags=3, context_fields=("a",))

# --- TIN: converts with Adam slots and step counters, scores like the reference
tcfg = tref.TINConfig(item_vocab=40, cate_vocab=6, item_dim=4, cate_dim=4, max_len=9,
                      f1_units=7, f2_units=5)
tm = tref.TINReference(tcfg)
tref.random_init(tm, 3)
v = tm.tf_variables()
v.update(tref.adam_slots(v, np.random.default_rng(1)))
np.savez(f"{tmp}/tin.npz", **v)
arch, meta, _, _ = convert.convert_any(f"{tmp}/tin.npz", f"{tmp}/tin.safetensors", version="t")
check("TIN npz with Adam slots: recognised and converted", arch == "tin"
      and meta["max_len"] == "9")
cate = {i: i % 6 for i in range(40)}
th, tc = [0, 5, 0, 39, 12, 3, 8, 1, 2, 30, 31, 32], [0, 39, 7]
with torch.no_grad():
    want = tm(tref.make_batch(tcfg, cate, th, tc)).numpy()
write_score_files(tmp, "tin", [{"item_id": i, "cate_id": c} for i, c in cate.items()], th,
                  [(i, None) for i in tc])
got, err = ctr_score(f"{tmp}/tin.safetensors", tmp)
check("TIN: ctr-score within 1e-5 of the reference (item 0, a history over max_len)",
      got is not None and max(abs(a - b) for a, b in zip(got, want)) <= 1e-5,
      f"(got {got}, want {want.tolist()}, {err})")

def tvariant(name, change):
    d = dict(v)
    change(d)
    np.savez(f"{tmp}/{name}.npz", **d)
    return f"{tmp}/{name}.npz"
refused("TIN missing f2 bias", tvariant("m", lambda d: d.pop("f2/bias:0")),
        "missing key f2/bias:0")
refused("TIN misshapen kernel",
        tvariant("s", lambda d: d.__setitem__("hist_fcn_t/kernel:0", np.zeros((8, 7), np.float32))),
        "hist_fcn_t/kernel:0: expected shape (8, 8), got (8, 7)")
refused("TIN unexpected variable",
        tvariant("u", lambda d: d.__setitem__("f4/kernel:0", np.zeros(3, np.float32))),
        "unexpected key f4/kernel:0")
refused("TIN --max-len other than the position table", f"{tmp}/tin.npz",
        "has 10 rows", max_len=64)
refused("--softmax on a TIN checkpoint", f"{tmp}/tin.npz", "--softmax is a DIN setting",
        softmax=True)
refused("TIN forced as DIN", f"{tmp}/tin.npz", "a din checkpoint is a torch state_dict",
        arch="din")

# --- fits none; --arch forcing ------------------------------------------------
torch.save({"encoder.weight": torch.zeros(2, 2)}, f"{tmp}/none.model")
refused("a checkpoint that fits no architecture", f"{tmp}/none.model",
        "cannot tell the architecture")
refused("a DIN checkpoint forced as QIN", f"{tmp}/din0.model", "missing key qnn.layer.0",
        arch="qin", max_len=5, num_tags=3, context_fields=("a", "b"))
r = subprocess.run([sys.executable, "tools/convert.py", "--checkpoint", f"{tmp}/none.model",
                    "--out", f"{tmp}/x.safetensors"], capture_output=True, text=True)
check("CLI: exit 2 and the reason on stderr", r.returncode == 2
      and "cannot tell the architecture" in r.stderr, r.stderr)
r = subprocess.run([sys.executable, "tools/convert.py", "--checkpoint", f"{tmp}/din1.model",
                    "--out", f"{tmp}/cli.safetensors", "--context-fields", "a,b", "--max-len",
                    "5", "--num-tags", "3", "--softmax"], capture_output=True, text=True)
check("CLI: DIN with --softmax", r.returncode == 0 and "softmax=1" in r.stdout, r.stderr)

# --- the C loader refuses damaged files (through ctr-score, exit 2) ----------
def damaged(src, name, change):
    meta, t = safetensors_io.read(src)
    meta = dict(meta)
    change(meta, t)
    path = f"{tmp}/{name}.safetensors"
    safetensors_io.write(path, t, meta)
    return path

def c_refuses(what, path, needle):
    r = subprocess.run([score, "--model", path, "--items", f"{tmp}/items.jsonl"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    check(f"loader refuses {what}", r.returncode == 2 and needle in r.stderr,
          f"(exit {r.returncode}: {r.stderr.strip()})")

din_file, tin_file = f"{tmp}/din2.safetensors", f"{tmp}/tin.safetensors"
with open(din_file, "rb") as f:
    raw = f.read()
with open(f"{tmp}/trunc.safetensors", "wb") as f:
    f.write(raw[:len(raw) - 100])
c_refuses("a truncated DIN file", f"{tmp}/trunc.safetensors", "")
c_refuses("a DIN file without a tensor",
          damaged(din_file, "d1", lambda m, t: t.pop("attention.1.bias")),
          "missing tensor attention.1.bias")
c_refuses("a DIN file with an unexpected tensor",
          damaged(din_file, "d2", lambda m, t: t.__setitem__("attention.9.weight",
                                                             np.zeros(2, np.float32))),
          "unexpected tensor attention.9.weight")
c_refuses("a DIN tensor of the wrong shape",
          damaged(din_file, "d3", lambda m, t: t.__setitem__(
              "dnn.1.weight", np.zeros((8, 15), np.float32))),
          "tensor dnn.1.weight: shape [8, 15], expected [8, 16]")
c_refuses("DIN metadata naming an unknown activation",
          damaged(din_file, "d4", lambda m, t: m.__setitem__("attention_activation", "gelu")),
          "attention_activation")
c_refuses("DIN metadata whose item fields are TIN's",
          damaged(din_file, "d5", lambda m, t: m.__setitem__("item_fields", "item_id,cate_id")),
          "item_fields")
c_refuses("a DIN Dice variance below 0",
          damaged(din_file, "d6", lambda m, t: t["attention.0.dice.running_var"].__setitem__(
              0, -1.0)),
          "dice.running_var[0] < 0")
c_refuses("a TIN file without a tensor",
          damaged(tin_file, "t1", lambda m, t: t.pop("b1/moving_variance")),
          "missing tensor b1/moving_variance")
c_refuses("a TIN position table of the wrong size",
          damaged(tin_file, "t2", lambda m, t: m.__setitem__("max_len", "8")),
          "tensor pos: shape [10, 8], expected [9, 8]")
c_refuses("a TIN file with context fields",
          damaged(tin_file, "t3", lambda m, t: [m.__setitem__("context_fields", "a"),
                                                m.__setitem__("context_vocab", "3")]),
          "no context fields")
c_refuses("an unknown architecture",
          damaged(tin_file, "t4", lambda m, t: m.__setitem__("arch", "dien")),
          "metadata \"arch\" is \"dien\"")
c_refuses("an unknown format",
          damaged(tin_file, "t5", lambda m, t: m.__setitem__("format", "ctr-model-9")),
          "metadata \"format\" is \"ctr-model-9\"")
meta, t = safetensors_io.read(tin_file)
with open(tin_file, "rb") as f:
    raw = bytearray(f.read())
n = int.from_bytes(raw[:8], "little")
hdr = raw[8:8 + n].replace(b'"item_b":{"dtype":"F32"', b'"item_b":{"dtype":"I32"')
with open(f"{tmp}/t6.safetensors", "wb") as f:
    f.write(raw[:8] + hdr + raw[8 + n:])
c_refuses("a TIN tensor of another dtype", f"{tmp}/t6.safetensors",
          "tensor item_b: dtype I32, expected F32")

print(f"test_arch_files: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
EOF
