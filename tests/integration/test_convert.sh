#!/usr/bin/env bash
# test_convert.sh - integration test of tools/convert.py: it refuses broken
# checkpoints (missing key, wrong shape, extra key, non-finite value, context
# fields that do not match) with exit 2 and a message naming the key, derives
# what the shapes say (num_row, batch norm), reconverts the golden checkpoint
# byte for byte, and converts a MicroLens-shaped R=4 checkpoint to a model of
# 31,244,293 parameters.
#
# Run by `make test` from the repo root with CTR_GOLDEN (make_golden.py's
# output) and PYTHON (/usr/bin/python3, with torch) set.  Importing torch
# costs ~1.5 s a process, so the broken checkpoints are made by one process
# and the conversions run two at a time.
# run.sh: release only (Python and torch only: the same in every build variant)
set -euo pipefail

PYTHON=${PYTHON:-/usr/bin/python3}
GOLDEN=${CTR_GOLDEN:-build/golden}
SMALL=$GOLDEN/small/ckpt.model
BIG=$GOLDEN/microlens/ckpt.model
for f in "$SMALL" "$BIG" "$GOLDEN/small/model.safetensors"; do
    [ -f "$f" ] || { echo "test_convert: missing $f (run make golden)"; exit 1; }
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0
ok()   { passed=$((passed + 1)); echo "  ok   $1"; }
fail() { failed=$((failed + 1)); echo "  FAIL $1"; }

# --- the checkpoints: variants of the small golden one (keys of `sd`) -------
"$PYTHON" - "$SMALL" "$TMP" <<'EOF'
import sys, torch
src, out = sys.argv[1], sys.argv[2]
P = "embedding_layer.embedding_layer."
def make(name, change):
    sd = torch.load(src, map_location="cpu")
    sd = change(sd) or sd
    torch.save(sd, f"{out}/{name}.model")
def delete(*keys):
    def f(sd):
        for k in keys:
            del sd[k]
    return f
def put(key, value):
    def f(sd):
        sd[key] = value(sd) if callable(value) else value
    return f
def nan(sd):
    sd["qnn.norm.1.running_mean"][3] = float("nan")
def two_rows(sd):
    for i in range(2):
        w, b = f"qnn.layer.{i}.linear.0.weight", f"qnn.layer.{i}.linear.0.bias"
        D = sd[w].shape[1]
        sd[w], sd[b] = sd[w][:2 * D].clone(), sd[b][:2 * D].clone()
make("same", lambda sd: None)
make("missing", delete("qnn.fc.bias"))
make("missing_layer", delete("qnn.layer.0.linear.0.bias"))
make("wrong_shape", put("attention_layers.W_o.weight",
                        lambda sd: sd["attention_layers.W_o.weight"][:, :-1].clone()))
make("wrong_width", put(P + "embedding_layers.item_tags.weight", torch.zeros(25, 9)))
make("extra", put("qnn.extra.weight", torch.zeros(3)))
make("extra_ctx", put(P + "embedding_layers.d.weight", torch.zeros(3, 8)))
make("gap_layer", put("qnn.layer.5.linear.0.weight",
                      lambda sd: sd["qnn.layer.0.linear.0.weight"].clone()))
make("nan", nan)
make("wrapped", lambda sd: {"state_dict": sd})
make("r2", two_rows)
make("nobn", lambda sd: {k: v for k, v in sd.items() if not k.startswith("qnn.norm.")})
EOF
cp "$BIG" "$TMP/big.model"
cp "$GOLDEN/din-small/ckpt.model" "$TMP/din.model"
# Calibration rows for --calibrate (join_impressions.py's format): random
# candidates, contexts and histories over the small golden catalogue, and
# the same with one row naming an item the catalogue lacks.
"$PYTHON" - "$GOLDEN/small" "$TMP" <<'EOF'
import json, random, sys
sys.path.insert(0, "tools")
import safetensors_io
src, out = sys.argv[1], sys.argv[2]
meta, _ = safetensors_io.read(f"{src}/model.safetensors")
fields = meta["context_fields"].split(",")
vocab = [int(v) for v in meta["context_vocab"].split(",")]
ids = [json.loads(l)["item_id"] for l in open(f"{src}/items.jsonl")]
rnd = random.Random(5)
rows = [dict({"user_id": f"u{i % 40}", "item_id": rnd.choice(ids),
              "item_seq": rnd.sample(ids, rnd.randint(0, 8)), "label": rnd.randint(0, 1)},
             **{f: rnd.randrange(vocab[k]) for k, f in enumerate(fields)})
        for i in range(400)]
with open(f"{out}/rows.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
rows[7]["item_id"] = 10 ** 6
with open(f"{out}/rows_unknown.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
EOF

# --- the conversions: "case model flags..." lines, run two at a time --------
SMALLF="--context-fields a,b,c --max-len 6"
cat >"$TMP/jobs" <<EOF
missing missing $SMALLF
missing_layer missing_layer $SMALLF
wrong_shape wrong_shape $SMALLF
wrong_width wrong_width $SMALLF
extra extra $SMALLF
extra_ctx extra_ctx $SMALLF
gap_layer gap_layer $SMALLF
nan nan $SMALLF
ctx_left_out same --context-fields a,b
ctx_absent same --context-fields a,b,c,zz
same same $SMALLF --version golden-1
wrapped wrapped $SMALLF
r2 r2 $SMALLF
nobn nobn $SMALLF
big big --version 7
calibrated same $SMALLF --version golden-1 --calibrate $TMP/rows.jsonl --items $GOLDEN/small/items.jsonl
cal_no_items same $SMALLF --calibrate $TMP/rows.jsonl
cal_unknown same $SMALLF --calibrate $TMP/rows_unknown.jsonl --items $GOLDEN/small/items.jsonl
cal_din din --calibrate $TMP/rows.jsonl --items $GOLDEN/small/items.jsonl
EOF
export PYTHON TMP
# shellcheck disable=SC2016
xargs -P 2 -L 1 bash -c '
    case=$1 model=$2; shift 2
    rc=0
    "$PYTHON" tools/convert.py --checkpoint "$TMP/$model.model" \
        --out "$TMP/$case.safetensors" "$@" >"$TMP/$case.out" 2>"$TMP/$case.err" || rc=$?
    echo $rc >"$TMP/$case.rc"' _ <"$TMP/jobs"

# refuse CASE DESC WORDS...: exit 2, no model file, every WORD in the message.
refuse() {
    local c=$1 desc=$2 rc
    shift 2
    rc=$(cat "$TMP/$c.rc")
    if [ "$rc" -ne 2 ]; then
        fail "$desc: exit $rc, expected 2"; cat "$TMP/$c.out" "$TMP/$c.err"; return
    fi
    if [ -e "$TMP/$c.safetensors" ]; then
        fail "$desc: wrote a model file anyway"; return
    fi
    for w in "$@"; do
        if ! grep -qF -- "$w" "$TMP/$c.err"; then
            fail "$desc: message lacks '$w'"; cat "$TMP/$c.err"; return
        fi
    done
    ok "$desc: $(sed "s|$TMP/||" "$TMP/$c.err" | head -c 160)"
}

# accepted CASE DESC: exit 0 and a summary line.
accepted() {
    local rc
    rc=$(cat "$TMP/$1.rc")
    if [ "$rc" -ne 0 ] || ! grep -q "params=" "$TMP/$1.out"; then
        fail "$2: exit $rc"; cat "$TMP/$1.out" "$TMP/$1.err"; return 1
    fi
}

echo "test_convert: refusals"
refuse missing "missing key" "missing key qnn.fc.bias"
refuse missing_layer "missing layer bias" "missing key qnn.layer.0.linear.0.bias"
refuse wrong_shape "wrong shape" "attention_layers.W_o.weight" \
    "expected shape (26, 52)" "got (26, 51)"
refuse wrong_width "wrong embedding width" \
    "embedding_layer.embedding_layer.embedding_layers.item_tags.weight" "(25, 8)" "(25, 9)"
refuse extra "extra key" "unexpected key qnn.extra.weight"
refuse extra_ctx "extra context table" \
    "unexpected key embedding_layer.embedding_layer.embedding_layers.d.weight"
refuse gap_layer "layer index gap" "missing key qnn.layer.2.linear.0.weight"
refuse nan "non-finite value" "qnn.norm.1.running_mean" "NaN"
refuse ctx_left_out "field not in --context-fields" \
    "unexpected key embedding_layer.embedding_layer.embedding_layers.c.weight"
refuse ctx_absent "field absent from the checkpoint" \
    "missing key embedding_layer.embedding_layer.embedding_layers.zz.weight"

refuse cal_no_items "--calibrate without --items" "--calibrate and --items go together"
refuse cal_unknown "calibration row naming an unknown item" "items without features" "1000000"
refuse cal_din "--calibrate on a DIN checkpoint" "rounds QIN's int8 weights" "din"

echo "test_convert: conversions"
if accepted same "small checkpoint"; then
    if cmp -s "$TMP/same.safetensors" "$GOLDEN/small/model.safetensors"; then
        ok "small checkpoint reconverts byte for byte"
    else fail "small checkpoint: output differs from the golden model file"; fi
fi
if accepted wrapped "wrapped"; then ok "{\"state_dict\": ...} wrapper accepted"; fi
if accepted r2 "num_row 2"; then
    if grep -q "num_row=2 " "$TMP/r2.out"; then ok "num_row derived from shapes (2)"
    else fail "num_row 2: $(cat "$TMP/r2.out")"; fi
fi
if accepted nobn "no batch norm"; then
    if grep -q "batch_norm=0 " "$TMP/nobn.out" && "$PYTHON" - "$TMP/nobn.safetensors" <<'EOF'
import sys; sys.path.insert(0, "tools")
import safetensors_io
meta, t = safetensors_io.read(sys.argv[1])
assert meta["batch_norm"] == "0" and not any(k.startswith("qnn.norm.") for k in t)
EOF
    then ok "no norm keys -> batch_norm 0"
    else fail "no batch norm: $(cat "$TMP/nobn.out")"; fi
fi
# --calibrate: the same tensors and metadata as without, plus every QNN
# layer's int8x2 set (I8 weights last): the balance sqrt(max_o |W|), the
# scales max |W / f| / 127, the integers near W / f / scale (within 3
# steps, 0.5 on average) but not all round to nearest's.
if accepted calibrated "calibrated"; then
    if grep -q "int8_calibration_rows=400 " "$TMP/calibrated.out" &&
        "$PYTHON" - "$TMP/calibrated.safetensors" "$GOLDEN/small/model.safetensors" <<'EOF'
import sys; sys.path.insert(0, "tools")
import numpy as np, torch
import int8_rounding, safetensors_io
meta, t = safetensors_io.read(sys.argv[1])
meta0, t0 = safetensors_io.read(sys.argv[2])
assert meta.pop("int8_calibration_rows") == "400" and meta == meta0
for k, v in t0.items():
    assert np.array_equal(t[k], v), k
L, R = int(meta["num_layers"]), int(meta["num_row"])
extra = [k for k in t if k not in t0]
assert sorted(extra) == sorted(f"qnn.layer.{l}.int8x2.{p}" for l in range(L)
                              for p in ("weight", "scale", "balance")), extra
assert all(t[k].dtype == np.int8 for k in list(t)[-L:]), list(t)[-L:]
sd = {k: torch.from_numpy(v) for k, v in t0.items()}
moved = 0
for l, (W, _, _, _) in enumerate(int8_rounding.fold_qnn(sd, L, R, True)):
    f = t[f"qnn.layer.{l}.int8x2.balance"].astype(np.float64)
    q, sc = t[f"qnn.layer.{l}.int8x2.weight"], t[f"qnn.layer.{l}.int8x2.scale"]
    assert np.allclose(f, np.sqrt(np.abs(W.numpy()).max(0)), rtol=1e-6)
    Wb = W.numpy() / f
    assert q.shape == W.shape and q.min() >= -127
    assert np.allclose(sc, np.abs(Wb).max(1) / 127, rtol=1e-6)
    v = Wb / sc[:, None]
    rtn = np.clip(np.round(v), -127, 127)
    # GPTQ's corrections move a weight a step or two now and then
    assert np.abs(q - v).max() <= 3 and np.abs(q - v).mean() <= 0.5, l
    moved += int((q != rtn).sum())
assert moved > 0
EOF
    then ok "--calibrate: int8x2 weights of every layer, the rest unchanged"
    else fail "calibrated: $(cat "$TMP/calibrated.out" "$TMP/calibrated.err")"; fi
fi
# The MicroLens-shaped R=4 checkpoint: 31,244,293 parameters, the documented
# metadata, num_batches_tracked dropped.
if accepted big "microlens"; then
    if grep -q "params=31244293 " "$TMP/big.out" && "$PYTHON" - "$TMP/big.safetensors" <<'EOF'
import sys; sys.path.insert(0, "tools")
import safetensors_io
meta, t = safetensors_io.read(sys.argv[1])
want = {"format": "ctr-model-2", "arch": "qin", "item_fields": "item_id,item_tags,item_emb_d128",
        "name": "qin", "version": "7",
        "embedding_dim": "128", "max_len": "64", "num_layers": "4",
        "num_row": "4", "batch_norm": "1", "item_vocab": "91718",
        "tag_vocab": "11740", "num_tags": "5", "mm_in": "128", "mm_out": "128",
        "context_fields": "likes_level,views_level", "context_vocab": "11,11",
        "params": "31244293"}
assert meta == want, meta
assert not any("num_batches_tracked" in k for k in t)
n = sum(v.size for k, v in t.items()
        if not k.endswith(("running_mean", "running_var")))
assert n == 31244293, n
assert t["qnn.layer.0.linear.0.weight"].shape == (4096, 1024)
EOF
    then ok "MicroLens R=4: $(sed "s|$TMP/||" "$TMP/big.out")"
    else fail "microlens: $(cat "$TMP/big.out")"; fi
fi

echo "test_convert: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
