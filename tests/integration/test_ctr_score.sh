#!/usr/bin/env bash
# test_ctr_score.sh - ctr-score end to end against the PyTorch reference's
# golden scores, its behaviour on bad input (bad lines are reported with
# their line number and skipped, the good ones still scored, exit status 1),
# and the user-id rule it shares with ctr-load and ctr-server (42 and "42"
# are one user).
#
# Run from the repository root by `make test`, with
#   CTR_BUILD=build/<variant>  CTR_GOLDEN=build/golden  PYTHON=/usr/bin/python3
set -euo pipefail

: "${CTR_BUILD:=build/release}"
: "${CTR_GOLDEN:=build/golden}"
: "${PYTHON:=/usr/bin/python3}"
SCORE="$CTR_BUILD/ctr-score"
COMPARE=(tools/compare_scores.py)
TOL=1e-5

passed=0
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ok()   { passed=$((passed + 1)); echo "  ok   $1"; }
bad()  { failed=$((failed + 1)); echo "  FAIL $1" >&2; }
# check NAME COMMAND...: COMMAND's status decides (set -e does not apply
# inside a condition, so each check tests what it needs explicitly).
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }

# run DIR [ARGS...] < stdin: ctr-score on DIR's model/items/users; leaves
# stdout, stderr and the exit status in $tmp/out, $tmp/err, $tmp/rc.
run() {
    local d=$1; shift
    local rc=0
    "$SCORE" --model "$d/model.safetensors" --items "$d/items.jsonl" \
        --users "$d/users.jsonl" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    echo "$rc" >"$tmp/rc"
}
rc()        { cat "$tmp/rc"; }
err_has()   { grep -qF -- "$1" "$tmp/err" || { echo "    stderr lacks: $1" >&2; sed 's/^/    | /' "$tmp/err" >&2; return 1; }; }
status_is() { [ "$(rc)" = "$1" ] || { echo "    exit status $(rc), expected $1" >&2; sed 's/^/    | /' "$tmp/err" >&2; return 1; }; }
out_lines() { [ "$(wc -l <"$tmp/out")" -eq "$1" ] || { echo "    $(wc -l <"$tmp/out") output lines, expected $1" >&2; return 1; }; }
matches()   { "$PYTHON" "${COMPARE[@]}" "$1" "$tmp/out" --tol "${2:-$TOL}" >"$tmp/cmp" 2>&1 || { sed 's/^/    | /' "$tmp/cmp" >&2; return 1; }; }

[ -x "$SCORE" ] || { echo "test_ctr_score: $SCORE not built" >&2; exit 1; }

# --- Parity with the reference --------------------------------------------
for cfg in small microlens din-small din-dice-softmax din-microlens tin-small tin-amazon; do
    d="$CTR_GOLDEN/$cfg"
    if [ ! -f "$d/expected.jsonl" ]; then
        bad "$cfg: golden data missing in $d (make golden)"
        continue
    fi
    run "$d" <"$d/requests.jsonl"
    check "$cfg: exit status 0" status_is 0
    check "$cfg: scores match the reference within $TOL" matches "$d/expected.jsonl"
    check "$cfg: nothing on stderr" test ! -s "$tmp/err"
done

# --- Other precisions: within their bounds (tests/core/test_golden.c), and
# said on stderr.  The bounds are against fp32; the reference is within
# 1e-5 of fp32, so they hold against it too.
for spec in small:bf16:2e-3 small:int8:8e-3 microlens:bf16:4e-3 microlens:int8:4e-2; do
    IFS=: read -r cfg prec tol <<<"$spec"
    d="$CTR_GOLDEN/$cfg"
    [ -f "$d/expected.jsonl" ] || continue
    run "$d" --precision "$prec" <"$d/requests.jsonl"
    check "$cfg $prec: exit status 0" status_is 0
    check "$cfg $prec: scores within $tol of the reference" matches "$d/expected.jsonl" "$tol"
    check "$cfg $prec: stderr says it is not exact" err_has "precision $prec is not exact"
done
run "$CTR_GOLDEN/small" --precision fp16 </dev/null
check "--precision fp16: exit status 2" status_is 2
check "--precision fp16: stderr names the choices" err_has "not one of fp32, bf16, int8"

d="$CTR_GOLDEN/small"
if [ -f "$d/requests.jsonl" ]; then
    n=$(grep -c . "$d/requests.jsonl")
    item=$(head -n 1 "$d/items.jsonl" | sed 's/.*"item_id": *\([0-9]*\).*/\1/')

    # --- A malformed request among good ones -------------------------------
    { head -n 2 "$d/requests.jsonl"
      echo '{"user_id": "broken", "candidates": [{"item_id": 1'
      tail -n +3 "$d/requests.jsonl"; } >"$tmp/req_bad.jsonl"
    run "$d" <"$tmp/req_bad.jsonl"
    check "malformed line: exit status 1" status_is 1
    check "malformed line: the $n good ones still scored" matches "$d/expected.jsonl"
    check "malformed line: stderr names line 3" err_has "<stdin>:3: line 1, column"

    # --- Refused requests: each names its line and its field ----------------
    { echo "{\"user_id\": \"a\", \"candidates\": [{\"item_id\": $item}]}"
      echo '{"user_id": "b", "candidates": [{"item_id": 999999999}]}'
      echo "{\"user_id\": \"c\", \"candidates\": [{\"item_id\": $item, \"zzz\": 1}]}"
      echo "{\"user_id\": \"d\", \"candidates\": [{\"item_id\": \"$item\"}]}"
      echo "{\"user_id\": \"e\", \"candidates\": [{\"item_id\": $item, \"a\": 999}]}"
      echo "{\"user_id\": \"f\", \"candidates\": [{\"item_id\": $item}, {\"item_id\": $item}, {\"item_id\": $item}]}"
      echo ""
      echo "{\"user_id\": 7, \"candidates\": []}"; } >"$tmp/req_refused.jsonl"
    run "$d" --max-cand 2 <"$tmp/req_refused.jsonl"
    check "refusals: exit status 1" status_is 1
    check "refusals: the 2 good lines scored" out_lines 2
    check "refusals: empty candidate list answered" grep -qx '{"user_id":7,"scores":\[\]}' "$tmp/out"
    check "refusals: item outside the vocabulary" err_has "<stdin>:2: candidates[0].item_id: 999999999 is outside the model's item vocabulary"
    check "refusals: unknown candidate field" err_has "<stdin>:3: candidates[0].zzz: unknown field"
    check "refusals: id given as a string" err_has "<stdin>:4: candidates[0].item_id: expected an integer, got a string"
    check "refusals: context value outside its vocabulary" err_has "<stdin>:5: candidates[0].a: 999 is outside the model's vocabulary (0..4)"
    check "refusals: more than --max-cand" err_has "<stdin>:6: candidates: 3 given, at most 2 allowed"
    check "refusals: summary counts the bad lines" err_has "5 bad lines"

    # --- Unknown user: empty history, noted once, same as item_seq: [] -----
    { echo "{\"user_id\": \"nobody\", \"candidates\": [{\"item_id\": $item}]}"
      echo "{\"user_id\": \"nobody\", \"item_seq\": [], \"candidates\": [{\"item_id\": $item}]}"
      echo "{\"user_id\": \"nobody2\", \"candidates\": [{\"item_id\": $item}]}"; } >"$tmp/req_unknown.jsonl"
    run "$d" <"$tmp/req_unknown.jsonl"
    check "unknown user: exit status 0" status_is 0
    check "unknown user: noted once on stderr" err_has "2 requests named a user not in"
    same_scores() { [ "$(sed -n 1p "$tmp/out" | sed 's/.*"scores"//')" = "$(sed -n 2p "$tmp/out" | sed 's/.*"scores"//')" ]; }
    check "unknown user: scored as an empty history" same_scores

    # --- 42 and "42" are one user, as in the feature store (ctr-load, -------
    # --- ctr-server); the output echoes user_id as given --------------------
    { echo "{\"user_id\": 42, \"item_seq\": [$item]}"
      echo '{"user_id": "42", "item_seq": []}'; } >"$tmp/users42.jsonl"
    # The first request's candidates, whose scores depend on the history.
    cands=$("$PYTHON" -c 'import json, sys; print(json.dumps(json.loads(sys.stdin.readline())["candidates"]))' <"$d/requests.jsonl")
    { echo "{\"user_id\": \"42\", \"candidates\": $cands}"
      echo "{\"user_id\": 42, \"candidates\": $cands}"
      echo "{\"user_id\": \"x\", \"item_seq\": [$item], \"candidates\": $cands}"
      echo "{\"user_id\": \"y\", \"item_seq\": [], \"candidates\": $cands}"; } >"$tmp/req42.jsonl"
    rc=0
    "$SCORE" --model "$d/model.safetensors" --items "$d/items.jsonl" \
        --users "$tmp/users42.jsonl" <"$tmp/req42.jsonl" >"$tmp/out" 2>"$tmp/err" || rc=$?
    echo "$rc" >"$tmp/rc"
    scores_of() { sed -n "$1p" "$tmp/out" | sed 's/.*"scores"//'; }
    check "42 and \"42\": exit status 1 (the second user line is bad)" status_is 1
    check "42 and \"42\": the second user line is a duplicate" err_has "users42.jsonl:2: user_id: 42 already given on line 1 (integer and string ids share a key)"
    check "42 and \"42\": all 4 requests scored" out_lines 4
    check "42 and \"42\": a string id echoed as a string" grep -q '^{"user_id":"42",' "$tmp/out"
    check "42 and \"42\": an integer id echoed as an integer" grep -q '^{"user_id":42,' "$tmp/out"
    check "42 and \"42\": no unknown user" test "$(grep -c 'named a user not in' "$tmp/err")" -eq 0
    check "42 and \"42\": \"42\" gets 42's stored history" test "$(scores_of 1)" = "$(scores_of 3)"
    check "42 and \"42\": 42 gets the same history" test "$(scores_of 2)" = "$(scores_of 3)"
    check "42 and \"42\": (the history changes the score)" test "$(scores_of 3)" != "$(scores_of 4)"

    # --- Bad item and user lines: reported, the rest still used -------------
    cp "$d/items.jsonl" "$tmp/items.jsonl"
    { head -n 1 "$d/items.jsonl" | sed 's/"item_id": *[0-9]*/"item_id": 999999/'
      echo 'not json'
      head -n 1 "$d/items.jsonl"; } >>"$tmp/items.jsonl"
    cp "$d/users.jsonl" "$tmp/users.jsonl"
    echo '{"user_id": 5, "item_seq": [1, 2.5]}' >>"$tmp/users.jsonl"
    ni=$(wc -l <"$d/items.jsonl")
    nu=$(wc -l <"$d/users.jsonl")
    rc=0
    "$SCORE" --model "$d/model.safetensors" --items "$tmp/items.jsonl" \
        --users "$tmp/users.jsonl" <"$d/requests.jsonl" >"$tmp/out" 2>"$tmp/err" || rc=$?
    echo "$rc" >"$tmp/rc"
    check "bad item/user lines: exit status 1" status_is 1
    check "bad item/user lines: requests still scored" matches "$d/expected.jsonl"
    check "bad item line: outside the vocabulary" err_has "items.jsonl:$((ni + 1)): item_id: 999999 is outside the model's item vocabulary"
    check "bad item line: not JSON" err_has "items.jsonl:$((ni + 2)): line 1, column"
    check "bad item line: given twice" err_has "items.jsonl:$((ni + 3)): item_id: $item already given on line 1"
    check "bad user line: names the element" err_has "users.jsonl:$((nu + 1)): item_seq[1]: expected an integer"

    # --- Usage ---------------------------------------------------------------
    rc=0; "$SCORE" --help >"$tmp/out" 2>&1 || rc=$?
    check "--help: exit status 0" test "$rc" -eq 0
    check "--help: documents --max-cand" grep -q -- "--max-cand" "$tmp/out"
    rc=0; "$SCORE" --items "$d/items.jsonl" </dev/null >"$tmp/out" 2>"$tmp/err" || rc=$?
    check "no --model: exit status 2" test "$rc" -eq 2
    rc=0; "$SCORE" --model "$tmp/none.safetensors" --items "$d/items.jsonl" </dev/null >"$tmp/out" 2>"$tmp/err" || rc=$?
    check "missing model file: exit status 2" test "$rc" -eq 2
    rc=0; "$SCORE" --model "$d/model.safetensors" --items "$d/items.jsonl" --max-cand 0 </dev/null >"$tmp/out" 2>"$tmp/err" || rc=$?
    check "--max-cand 0: exit status 2" test "$rc" -eq 2
fi

echo "test_ctr_score: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
