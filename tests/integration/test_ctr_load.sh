#!/usr/bin/env bash
# test_ctr_load.sh - integration test of ctr-load against the test Redis:
# it loads the golden small data (items and users, checked against the
# model), reports the counts, and writes exactly the bytes of
# deploy/REDIS_SCHEMA.md (checked with redis-cli), for QIN and DIN (version
# 1 item values) and TIN (item ids from 0, version 2 values with a
# category); a bad line is reported
# with its file and line number, skipped, and makes the exit status 1 while
# the good lines are still loaded; duplicates, long histories, a refused
# connection and usage errors behave as --help says.
#
# Run by `make test` (tests/run.sh) from the repo root with CTR_BUILD,
# CTR_GOLDEN, CTR_REDIS (host:port) and CTR_REDIS_PORT set.  Keys are
# written under a prefix of this run's own and deleted at the end.
set -euo pipefail

PYTHON=${PYTHON:-/usr/bin/python3}
BUILD=${CTR_BUILD:-build/release}
GOLDEN=${CTR_GOLDEN:-build/golden}
LOAD=$BUILD/ctr-load
SMALL=$GOLDEN/small
if [ -z "${CTR_REDIS:-}" ] || [ -z "${CTR_REDIS_PORT:-}" ]; then
    echo "test_ctr_load: CTR_REDIS and CTR_REDIS_PORT must be set (tests/run.sh does)"
    exit 1
fi
HOST=${CTR_REDIS%:*}
for f in "$LOAD" "$SMALL/items.jsonl" "$SMALL/users.jsonl" "$SMALL/model.safetensors"; do
    [ -e "$f" ] || { echo "test_ctr_load: missing $f"; exit 1; }
done

TMP=$(mktemp -d)
PFX="test_ctr_load:$$:$(date +%s):"
rcli() { redis-cli -h "$HOST" -p "$CTR_REDIS_PORT" "$@"; }
cleanup() {
    rcli --scan --pattern "$PFX*" | while read -r k; do rcli DEL "$k" >/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
passed=0
failed=0
ok()   { passed=$((passed + 1)); echo "  ok   $1"; }
fail() { failed=$((failed + 1)); echo "  FAIL $1"; }

# run PREFIX ARGS...: ctr-load with --redis and --prefix; exit status in $rc,
# output in $TMP/out and $TMP/err.
run() {
    local p=$1
    shift
    rc=0
    "$LOAD" --redis "$CTR_REDIS" --prefix "$PFX$p" "$@" >"$TMP/out" 2>"$TMP/err" || rc=$?
}

# hex KEY: the value's bytes in hex, no spaces (redis-cli adds a newline
# after the raw value when writing to a pipe).
hex() {
    local n
    n=$(rcli STRLEN "$1")
    rcli GET "$1" | head -c "$n" | od -An -v -tx1 | tr -d ' \n'
}

# expect_hex DESC KEY PYTHON-EXPR: the value of KEY must equal the bytes the
# expression gives (struct is imported; `line` is the JSON object $LINE).
expect_hex() {
    local desc=$1 key=$2 want got
    want=$(LINE=$LINE "$PYTHON" -c "
import json, os, struct
line = json.loads(os.environ['LINE'])
print(($3).hex())")
    got=$(hex "$key")
    if [ "$got" = "$want" ]; then ok "$desc"
    else fail "$desc: $key is $got, expected $want"; fi
}

expect_in() {   # expect_in DESC FILE WORDS...
    local desc=$1 file=$2
    shift 2
    for w in "$@"; do
        if ! grep -qF -- "$w" "$file"; then
            fail "$desc: '$w' not in $(basename "$file"):"; sed 's/^/      /' "$file"; return 1
        fi
    done
    ok "$desc"
}

echo "test_ctr_load: golden small data, with the model"
n_items=$(grep -c . "$SMALL/items.jsonl")
n_users=$(grep -c . "$SMALL/users.jsonl")
run g --items "$SMALL/items.jsonl" --users "$SMALL/users.jsonl" \
    --model "$SMALL/model.safetensors" --batch 5
if [ "$rc" -eq 0 ]; then ok "exit 0"; else fail "exit $rc"; cat "$TMP/err"; fi
expect_in "counts reported" "$TMP/out" \
    "items_loaded=$n_items users_loaded=$n_users lines_rejected=0 histories_truncated=0"
[ -s "$TMP/err" ] && fail "stderr not empty: $(cat "$TMP/err")" || ok "nothing on stderr"
keys=$(rcli --scan --pattern "${PFX}g*" | wc -l)
if [ "$keys" -eq $((n_items + n_users + 1)) ]; then ok "$keys keys under the prefix (values + marker)"
else fail "$keys keys under the prefix, expected $((n_items + n_users + 1))"; fi
meta=$(rcli GET "${PFX}gmeta")
if META=$meta "$PYTHON" -c '
import json, os, sys, time
m = json.loads(os.environ["META"])
sys.exit(0 if m["format"] == 1 and m["items"] == int(sys.argv[1]) and m["users"] == int(sys.argv[2])
         and abs(m["loaded_at"] - time.time()) < 600 and m["num_tags"] > 0 else 1)' "$n_items" "$n_users"
then ok "feature-set marker: format, counts, load time"; else fail "feature-set marker: $meta"; fi

# The first item, byte for byte: header 'C' 'I' 1 num_tags mm_dim(LE16) 0,
# then the tags as int32 LE and the embedding as float32 LE.
LINE=$(head -n 1 "$SMALL/items.jsonl")
id=$(LINE=$LINE "$PYTHON" -c 'import json,os; print(json.loads(os.environ["LINE"])["item_id"])')
expect_hex "item $id value, byte for byte" "${PFX}gi:$id" \
    'struct.pack("<2sBBHH", b"CI", 1, len(line["item_tags"]), len(line["item_emb_d128"]), 0)
     + struct.pack("<%di" % len(line["item_tags"]), *line["item_tags"])
     + struct.pack("<%df" % len(line["item_emb_d128"]), *line["item_emb_d128"])'
want_len=$(LINE=$LINE "$PYTHON" -c 'import json,os; l=json.loads(os.environ["LINE"]); print(8+4*len(l["item_tags"])+4*len(l["item_emb_d128"]))')
got_len=$(rcli STRLEN "${PFX}gi:$id")
[ "$got_len" = "$want_len" ] && ok "STRLEN item $id = $got_len" || fail "STRLEN item $id = $got_len, expected $want_len"
head8=$(rcli GETRANGE "${PFX}gi:$id" 0 1)
[ "$head8" = "CI" ] && ok "GETRANGE 0 1 of an item is CI" || fail "GETRANGE 0 1 = '$head8'"

# An item listed without tags (make_golden writes one).
LINE=$(grep -m 1 '"item_tags": \[\]' "$SMALL/items.jsonl" || true)
if [ -n "$LINE" ]; then
    id=$(LINE=$LINE "$PYTHON" -c 'import json,os; print(json.loads(os.environ["LINE"])["item_id"])')
    expect_hex "item $id without tags" "${PFX}gi:$id" \
        'struct.pack("<2sBBHH", b"CI", 1, 0, len(line["item_emb_d128"]), 0)
         + struct.pack("<%df" % len(line["item_emb_d128"]), *line["item_emb_d128"])'
else fail "golden items have no line without tags"; fi

# Users: one with an integer id and a history, one with a string id.
LINE=$(grep -m 1 -E '"user_id": [0-9]+, "item_seq": \[[0-9]' "$SMALL/users.jsonl" || true)
if [ -n "$LINE" ]; then
    uid=$(LINE=$LINE "$PYTHON" -c 'import json,os; print(json.loads(os.environ["LINE"])["user_id"])')
    expect_hex "integer user $uid, byte for byte (version 2, max_seq 1000)" "${PFX}gu:$uid" \
        'struct.pack("<2sBBI", b"CU", 2, 0, 1000)
         + struct.pack("<%di" % len(line["item_seq"]), *line["item_seq"])'
else fail "golden users have no integer id with a history"; fi
LINE=$(grep -m 1 '"user_id": "u_idle"' "$SMALL/users.jsonl")
expect_hex "string user u_idle, byte for byte" "${PFX}gu:u_idle" \
    'struct.pack("<2sBBI", b"CU", 2, 0, 1000)
     + struct.pack("<%di" % len(line["item_seq"]), *line["item_seq"])'

echo "test_ctr_load: a TIN model (ids from 0, a category per item)"
TIN=$GOLDEN/tin-small
n_tin=$(grep -c . "$TIN/items.jsonl")
run t --items "$TIN/items.jsonl" --users "$TIN/users.jsonl" --model "$TIN/model.safetensors"
[ "$rc" -eq 0 ] && ok "TIN: exit 0" || { fail "TIN: exit $rc"; cat "$TMP/err"; }
expect_in "TIN: every item loaded" "$TMP/out" "items_loaded=$n_tin "
# Item 0 is an item: version 2 value, no tags, no embedding, its category.
LINE=$(grep -m 1 '"item_id": 0,' "$TIN/items.jsonl" || true)
if [ -n "$LINE" ]; then
    expect_hex "TIN item 0: version 2 value with its category" "${PFX}ti:0" \
        'struct.pack("<2sBBHHi", b"CI", 2, 0, 0, 1, line["cate_id"])'
else fail "TIN golden items lack item 0"; fi
cat >"$TMP/tin_bad.jsonl" <<'EOF2'
{"item_id": 3, "cate_id": 7}
{"item_id": -1, "cate_id": 0}
{"item_id": 4}
{"item_id": 50, "cate_id": 1}
{"item_id": 5, "cate_id": 6, "item_tags": [1, 2]}
EOF2
run tb --items "$TMP/tin_bad.jsonl" --model "$TIN/model.safetensors"
[ "$rc" -eq 1 ] && ok "TIN bad lines: exit 1" || fail "TIN bad lines: exit $rc"
expect_in "TIN bad lines named" "$TMP/err" \
    "tin_bad.jsonl:1: cate_id: 7 is outside the model's category vocabulary (0..6)" \
    "tin_bad.jsonl:2: item_id: -1 is not an item id (ids start at 0)" \
    "tin_bad.jsonl:3: cate_id: missing field" \
    "tin_bad.jsonl:4: item_id: 50 is outside the model's item vocabulary (0..49)"
expect_in "TIN: tags ignored, the good line loaded" "$TMP/out" "items_loaded=1 "
# A DIN model reads what QIN reads: the same version 1 values.
DIN=$GOLDEN/din-small
run d --items "$DIN/items.jsonl" --model "$DIN/model.safetensors"
LINE=$(head -n 1 "$DIN/items.jsonl")
id=$(LINE=$LINE "$PYTHON" -c 'import json,os; print(json.loads(os.environ["LINE"])["item_id"])')
[ "$rc" -eq 0 ] && ok "DIN: exit 0" || fail "DIN: exit $rc"
expect_hex "DIN item $id: version 1 value, as for QIN" "${PFX}di:$id" \
    'struct.pack("<2sBBHH", b"CI", 1, len(line["item_tags"]), len(line["item_emb_d128"]), 0)
     + struct.pack("<%di" % len(line["item_tags"]), *line["item_tags"])
     + struct.pack("<%df" % len(line["item_emb_d128"]), *line["item_emb_d128"])'

echo "test_ctr_load: bad lines"
# Items: line 2 not JSON, line 4 outside the model's item vocabulary, line 5
# a tag outside the tag vocabulary, line 6 a duplicate of line 1, line 7
# blank (skipped), line 8 a wrong embedding width, line 9 good.
{
    sed -n 1p "$SMALL/items.jsonl"
    echo '{"item_id": 3, "item_tags": [1'
    sed -n 2p "$SMALL/items.jsonl"
    echo '{"item_id": 60, "item_tags": [], "item_emb_d128": [0,0,0,0,0,0,0,0,0,0,0,0]}'
    echo '{"item_id": 58, "item_tags": [25], "item_emb_d128": [0,0,0,0,0,0,0,0,0,0,0,0]}'
    sed -n 1p "$SMALL/items.jsonl"
    echo ''
    echo '{"item_id": 57, "item_tags": [], "item_emb_d128": [0,0,0]}'
    echo '{"item_id": 59, "item_tags": [24, 0], "item_emb_d128": [1,2,3,4,5,6,7,8,9,10,11,12.5]}'
} >"$TMP/bad_items.jsonl"
run b --items "$TMP/bad_items.jsonl" --model "$SMALL/model.safetensors"
[ "$rc" -eq 1 ] && ok "exit 1 with bad item lines" || fail "exit $rc with bad item lines"
expect_in "bad item lines named by file and line" "$TMP/err" \
    "bad_items.jsonl:2:" "bad_items.jsonl:4: item_id: 60 is outside the model's item vocabulary (1..59)" \
    "bad_items.jsonl:5: item_tags[0]: 25" "bad_items.jsonl:6: item_id: 1 already given on line 1" \
    "bad_items.jsonl:8:"
if grep -q "bad_items.jsonl:7:" "$TMP/err"; then fail "blank line reported"; else ok "blank line skipped"; fi
expect_in "good item lines still loaded" "$TMP/out" "items_loaded=3 users_loaded=0 lines_rejected=5"
if [ "$(rcli STRLEN "${PFX}bi:59")" = "64" ] && [ "$(rcli EXISTS "${PFX}bi:60")" = "0" ] \
    && [ "$(rcli EXISTS "${PFX}bi:3")" = "0" ]; then
    ok "the line after the bad ones is in Redis, the bad ones are not"
else fail "keys after a bad file: $(rcli --scan --pattern "${PFX}b*" | tr '\n' ' ')"; fi

# Users: a history longer than --max-seq keeps its end; an id beyond int32
# is bad; 42 and "42" are the same key.
cat >"$TMP/bad_users.jsonl" <<'EOF'
{"user_id": "long", "item_seq": [1, 2, 3, 4, 5]}
{"user_id": 42, "item_seq": [7]}
{"user_id": "42", "item_seq": [8]}
{"user_id": "big", "item_seq": [1, 2147483648]}
{"user_id": "neg", "item_seq": [-1, 3, 4, 5]}
{"user_id": "ok", "item_seq": []}
{"user_id": "x", "item_seq": "nope"}
EOF
run u --users "$TMP/bad_users.jsonl" --max-seq 3
[ "$rc" -eq 1 ] && ok "exit 1 with bad user lines" || fail "exit $rc with bad user lines"
expect_in "bad user lines named" "$TMP/err" \
    "bad_users.jsonl:3: user_id: 42 already given on line 2" \
    "bad_users.jsonl:4: item_seq[1]: 2147483648" "bad_users.jsonl:7:" \
    "2 histories were longer than --max-seq 3"
expect_in "user counts" "$TMP/out" "items_loaded=0 users_loaded=4 lines_rejected=3 histories_truncated=2"
# "neg": -1 is dropped by the truncation to 3, so the line is good.
got=$(hex "${PFX}uu:long")
[ "$got" = "4355020003000000030000000400000005000000" ] && ok "long history keeps its last 3 ids" \
    || fail "long history stored as $got"
[ "$(hex "${PFX}uu:42")" = "435502000300000007000000" ] && ok "first of 42 / \"42\" kept" \
    || fail "user 42 stored as $(hex "${PFX}uu:42")"
[ "$(hex "${PFX}uu:ok")" = "4355020003000000" ] && ok "empty history: an 8-byte value" \
    || fail "empty history stored as $(hex "${PFX}uu:ok")"

echo "test_ctr_load: without a model, and failures"
run n --items "$SMALL/items.jsonl" --max-tags 5 --mm-dim 12
[ "$rc" -eq 0 ] && grep -qF "items_loaded=$n_items " "$TMP/out" && ok "--max-tags/--mm-dim without --model" \
    || fail "without --model: exit $rc $(cat "$TMP/out" "$TMP/err")"
run w --items "$SMALL/items.jsonl"     # default --mm-dim 128: every line bad
[ "$rc" -eq 1 ] && grep -qF "items_loaded=0 users_loaded=0 lines_rejected=$n_items " "$TMP/out" \
    && ok "wrong embedding width: every line rejected" || fail "wrong width: exit $rc $(cat "$TMP/out")"
run c --items "$SMALL/items.jsonl" --model "$SMALL/model.safetensors" --mm-dim 13
[ "$rc" -eq 2 ] && grep -qF "disagree" "$TMP/err" && ok "--mm-dim against the model: exit 2" \
    || fail "--mm-dim against the model: exit $rc"

port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rc=0
"$LOAD" --redis "127.0.0.1:$port" --items "$SMALL/items.jsonl" --mm-dim 12 >"$TMP/out" 2>"$TMP/err" || rc=$?
[ "$rc" -eq 1 ] && grep -qF "127.0.0.1:$port" "$TMP/err" && ok "Redis refusing: exit 1, address named" \
    || fail "Redis refusing: exit $rc $(cat "$TMP/err")"

rc=0; "$LOAD" --help >"$TMP/out" 2>&1 || rc=$?
[ "$rc" -eq 0 ] && grep -qF -- "--max-seq" "$TMP/out" && grep -qF "Exit status" "$TMP/out" \
    && ok "--help" || fail "--help: exit $rc"
rc=0; "$LOAD" --items "$SMALL/items.jsonl" >"$TMP/out" 2>"$TMP/err" || rc=$?
[ "$rc" -eq 2 ] && ok "no --redis: exit 2" || fail "no --redis: exit $rc"
run m --items "$TMP/does_not_exist.jsonl"
[ "$rc" -eq 2 ] && grep -qF "does_not_exist.jsonl" "$TMP/err" && ok "unreadable file: exit 2" \
    || fail "unreadable file: exit $rc"
run m --items "$SMALL/items.jsonl" --batch 0
[ "$rc" -eq 2 ] && ok "--batch 0: exit 2" || fail "--batch 0: exit $rc"

echo "test_ctr_load: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
