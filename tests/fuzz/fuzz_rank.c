/*
 * fuzz_rank.c - fuzz target for the ranking request decoder
 * (proto_rank_request_decode) and everything a server does with its
 * result: order, encode the answer, encode the error.  The oracle, beyond
 * the sanitizers: a decoded request respects the schema's limits, and every
 * encoded answer or error object is valid JSON (read back with jansson),
 * since error messages quote client text that may be cut mid-UTF-8.
 *
 * `make test` builds it as a plain program and replays the committed
 * corpus (tests/fuzz/corpus/rank); `make fuzz` runs it under libFuzzer.
 * By hand, with libFuzzer (clang):
 *
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -I. -DFUZZ_LIBFUZZER \
 *       -fsanitize=fuzzer,address,undefined \
 *       tests/fuzz/fuzz_rank.c proto/[a-z]*.c core/base/arena.c core/base/status.c \
 *       $(pkg-config --cflags --libs jansson) -o build/fuzz_rank
 *   build/fuzz_rank -max_len=4096 tests/fuzz/corpus/rank
 *
 * and as a plain program that replays the files given as arguments (any
 * compiler; the same line without -DFUZZ_LIBFUZZER and without "fuzzer,"):
 *
 *   build/fuzz_rank_regress tests/fuzz/corpus/rank/[a-z]*
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/base/status.h"
#include "proto/error.h"
#include "proto/rank.h"
#include "tests/fuzz/fuzz_files.h"

#define MAX_CAND 64
#define MAX_SEQ 128

static const char *const ctx_names[] = {"likes_level", "views_level"};
static const proto_rank_schema schema = {2, ctx_names, MAX_CAND, MAX_SEQ, NULL};
/* A second model ("din") without context fields, for "model". */
static const proto_rank_schema schema2 = {0, NULL, MAX_CAND / 2, MAX_SEQ, NULL};

static const proto_rank_schema *pick(void *arg, const char *model) {
    (void)arg;
    if (!model || strcmp(model, "qin") == 0) return &schema;
    return strcmp(model, "din") == 0 ? &schema2 : NULL;
}

static void check_json(const proto_buf *b) {
    if (!proto_buf_ok(b)) abort();
    json_error_t je;
    json_t *j = json_loadb(b->data, b->len, 0, &je);
    if (!j) {
        fprintf(stderr, "encoder wrote invalid JSON (%s): %s\n", je.text,
                proto_buf_str(b));
        abort();
    }
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static arena a;
    static int ready;
    if (!ready) { arena_init(&a, 1 << 16); ready = 1; }
    proto_buf b;
    proto_buf_init(&b);
    char err[256];
    proto_rank_request r;
    int rc = proto_rank_request_decode_pick((const char *)data, size, pick, NULL, &a, &r, err,
                                            sizeof err);
    if (rc == CTR_OK) {
        const proto_rank_schema *sc = pick(NULL, r.model);
        if (!sc || r.explain < 0 || r.explain > PROTO_RANK_EXPLAIN_MAX) abort();
        if (r.num_cand < 0 || r.num_cand > sc->max_cand) abort();
        if (r.seq_len < 0 || r.seq_len > MAX_SEQ) abort();
        if (r.has_item_seq == 0 && r.seq_len != 0) abort();
        if (r.top_k < 0 || !r.user_id) abort();
        float score[MAX_CAND];
        proto_rank_item items[MAX_CAND];
        for (int i = 0; i < r.num_cand; i++)   /* ties and sign flips */
            score[i] = (float)((r.cand_id[i] % 5) + (sc->num_ctx ? r.ctx[2 * i] : 0)) / 7.0f;
        int n = proto_rank_order(r.cand_id, score, r.num_cand, r.top_k, items);
        if (n < 0 || n > r.num_cand) abort();
        for (int i = 1; i < n; i++)
            if (items[i - 1].score < items[i].score) abort();
        const char *const degraded[] = {err};
        snprintf(err, sizeof err, "%s", r.user_id);
        /* Explanations pointing into the request's item_seq (or none). */
        int32_t pos[MAX_CAND * PROTO_RANK_EXPLAIN_MAX];
        float w[MAX_CAND * PROTO_RANK_EXPLAIN_MAX];
        for (int i = 0; i < r.num_cand * r.explain; i++) {
            pos[i] = r.seq_len ? (int32_t)(i % r.seq_len) : -1;
            w[i] = (float)i / 3.0f;
        }
        proto_rank_answer ans = {
            .request_id = r.request_id, .model_name = r.model ? r.model : "qin",
            .model_version = "fuzz", .items = items, .num_items = n,
            .took_us = 1, .degraded = degraded, .num_degraded = 1,
            .unscored = r.item_seq, .num_unscored = r.seq_len,
            .explain_k = r.explain, .explain_pos = pos, .explain_weight = w,
            .hist_ids = r.item_seq};
        proto_rank_answer_encode(&ans, &b);
        check_json(&b);
        proto_buf_reset(&b);
        proto_rank_scores_encode(r.user_id, r.user_id_is_int, score,
                                 r.num_cand, &b);
        check_json(&b);
    } else {
        if (rc != CTR_EFORMAT && rc != CTR_EINVAL && rc != CTR_ETOOMANY &&
            rc != CTR_ETOOBIG && rc != CTR_ERANGE && rc != CTR_ENOTFOUND)
            abort();
        proto_error_encode(proto_error_from_status(rc), err, &b);
        check_json(&b);
    }
    proto_buf_free(&b);
    arena_reset(&a);
    return 0;
}

#ifndef FUZZ_LIBFUZZER
/* Plain program: runs each file given as an argument through the target. */
int main(int argc, char **argv) {
    return fuzz_run_files("fuzz_rank", argc, argv, LLVMFuzzerTestOneInput);
}
#endif
