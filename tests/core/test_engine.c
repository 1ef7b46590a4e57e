/* test_engine.c - the engine interface (core/engine.h) on the golden model
 * files of each architecture ($CTR_GOLDEN, made by tools/make_golden.py):
 * the schema each file declares, the request rules and their messages,
 * the history id rule (TIN's id 0 is an item), the refusals of
 * engine_forward, explain off vs on giving the same scores, slices of a
 * request scoring like the whole, a request's layers split by columns
 * across threads scoring like one thread, and the cost counts.  The scores
 * themselves are checked against the references in test_golden.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"

static engine_model *load(const char *name) {
    const char *d = getenv("CTR_GOLDEN");
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", d && *d ? d : "build/golden", name);
    engine_model *m = NULL;
    if (engine_model_load(path, &m, err, sizeof err) < 0) fail_msg("%s", err);
    return m;
}

static void test_schemas(void **state) {
    (void)state;
    engine_model *q = load("small"), *d = load("din-dice-softmax"), *t = load("tin-small");
    const engine_schema *sq = engine_model_schema(q), *sd = engine_model_schema(d),
                        *st = engine_model_schema(t);
    assert_int_equal(sq->arch, ENGINE_ARCH_QIN);
    assert_int_equal(sd->arch, ENGINE_ARCH_DIN);
    assert_int_equal(st->arch, ENGINE_ARCH_TIN);
    assert_string_equal(engine_arch_name(st->arch), "tin");
    assert_string_equal(engine_arch_name(99), "unknown");
    /* QIN, DIN: ids from 1, tags and embedding, context fields. */
    assert_int_equal(sd->item_id_min, 1);
    assert_int_equal(sd->num_tags, 5);
    assert_int_equal(sd->mm_dim, 12);
    assert_int_equal(sd->cate_vocab, 0);
    assert_int_equal(sd->num_ctx, 3);
    assert_string_equal(sd->ctx_name[2], "c");
    assert_int_equal(sd->max_len, 6);
    /* TIN: ids from 0, a category, no tags or embedding, its position
     * table's max_len. */
    assert_int_equal(st->item_id_min, 0);
    assert_int_equal(st->cate_vocab, 7);
    assert_int_equal(st->num_tags, 0);
    assert_int_equal(st->mm_dim, 0);
    assert_int_equal(st->num_ctx, 0);
    assert_int_equal(st->max_len, 12);
    assert_true(engine_history_id_ok(t, 0) && !engine_history_id_ok(q, 0));
    assert_true(!engine_history_id_ok(t, 50) && engine_history_id_ok(t, 49));
    /* Item vectors end to end stay aligned. */
    assert_int_equal(engine_item_vec_floats(d) % 16, 0);
    assert_int_equal(engine_item_vec_floats(t) % 16, 0);
    /* Folded arithmetic is less than the unfolded, and grows with the
     * history (capped at max_len). */
    for (engine_model *m = q;; m = m == q ? d : t) {
        engine_cost c0 = engine_model_cost(m, 0), c3 = engine_model_cost(m, 3);
        engine_cost cl = engine_model_cost(m, 1000), cm = engine_model_cost(m, 1 << 20);
        assert_true(c3.folded > c0.folded && c3.folded < c3.unfolded);
        assert_true(cl.folded == cm.folded);
        if (m == t) break;
    }
    engine_model_free(q);
    engine_model_free(d);
    engine_model_free(t);
}

static void test_request_rules(void **state) {
    (void)state;
    engine_model *d = load("din-small"), *t = load("tin-small");
    char err[256];
    int64_t ids[2] = {1, 59};
    int32_t ctx[6] = {0, 6, 3, 4, 0, 0};
    assert_int_equal(engine_request_check(d, ids, ctx, 2, err, sizeof err), CTR_OK);
    ids[1] = 60;
    assert_int_equal(engine_request_check(d, ids, ctx, 2, err, sizeof err), CTR_ERANGE);
    assert_string_equal(err, "candidates[1].item_id: 60 is outside the model's items 1..59");
    ids[1] = 0;
    assert_int_equal(engine_request_check(d, ids, ctx, 2, err, sizeof err), CTR_ERANGE);
    ids[1] = 2;
    ctx[1] = 7;
    assert_int_equal(engine_request_check(d, ids, ctx, 2, err, sizeof err), CTR_ERANGE);
    assert_string_equal(err, "candidates[0].b: 7 is outside the model's vocabulary (0..6)");
    assert_int_equal(engine_request_check(d, ids, NULL, 2, err, sizeof err), CTR_OK);
    /* TIN: 0 is an item. */
    int64_t tid[2] = {0, 49};
    assert_int_equal(engine_request_check(t, tid, NULL, 2, err, sizeof err), CTR_OK);
    tid[0] = -1;
    assert_int_equal(engine_request_check(t, tid, NULL, 2, err, sizeof err), CTR_ERANGE);
    /* Items: a category outside its vocabulary, an id outside. */
    engine_item it = {3, NULL, 0, NULL, 7};
    float *v = engine_item_vecs_alloc(t, 2);
    int bad = -1;
    assert_int_equal(engine_items_compute(t, 1, &it, v, &bad, err, sizeof err), CTR_ERANGE);
    assert_non_null(strstr(err, "cate_id 7 outside 0..6"));
    engine_item two[2] = {{0, NULL, 0, NULL, 0}, {50, NULL, 0, NULL, 1}};
    assert_int_equal(engine_items_compute(t, 2, two, v, &bad, err, sizeof err), CTR_ERANGE);
    assert_int_equal(bad, 1);
    free(v);
    /* One item's ids against the schema (engine_item_check): what ctr-load
     * and ctr-score refuse a feature line for. */
    int32_t tags[2] = {3, 25};
    engine_item di = {59, tags, 1, NULL, 0};
    assert_int_equal(engine_item_check(d, &di, err, sizeof err), CTR_OK);
    di.num_tags = 2;
    assert_int_equal(engine_item_check(d, &di, err, sizeof err), CTR_ERANGE);
    assert_string_equal(err, "item_tags[1]: 25 is outside the model's tag vocabulary (0..24)");
    di.id = 60;
    assert_int_equal(engine_item_check(d, &di, err, sizeof err), CTR_ERANGE);
    assert_string_equal(err, "item_id: 60 is outside the model's item vocabulary (1..59)");
    di.id = 0;
    assert_int_equal(engine_item_check(d, &di, err, sizeof err), CTR_ERANGE);
    assert_string_equal(err, "item_id: 0 is not an item id (ids start at 1; 0 is padding)");
    engine_item ti = {0, tags, 2, NULL, 6};   /* TIN reads no tags: ignored */
    assert_int_equal(engine_item_check(t, &ti, err, sizeof err), CTR_OK);
    ti.cate = 7;
    assert_int_equal(engine_item_check(t, &ti, err, sizeof err), CTR_ERANGE);
    assert_string_equal(err, "cate_id: 7 is outside the model's category vocabulary (0..6)");
    ti.id = -1;
    assert_int_equal(engine_item_check(t, &ti, err, sizeof err), CTR_ERANGE);
    assert_string_equal(err, "item_id: -1 is not an item id (ids start at 0)");
    engine_model_free(d);
    engine_model_free(t);
}

/* Forward refusals; explain on/off; a request cut in two slices. */
static void run_forward(const char *name) {
    engine_model *m = load(name), *other = load("small");
    const engine_schema *sc = engine_model_schema(m);
    enum { N = 6, H = 9 };
    engine_item items[N + H];
    int32_t tags[N + H][5] = {{0}};
    float mm[N + H][12];
    for (int i = 0; i < N + H; i++) {
        items[i] = (engine_item){sc->item_id_min + (i * 7) % (sc->item_vocab - 1), tags[i],
                                 sc->num_tags, sc->mm_dim ? mm[i] : NULL, i % 5};
        for (int k = 0; k < sc->num_tags; k++) tags[i][k] = (i + k) % 4;
        for (int k = 0; k < 12; k++) mm[i][k] = (float)((i * 13 + k * 7) % 17) / 17.0f - 0.5f;
    }
    float *v = engine_item_vecs_alloc(m, N + H);
    char err[256];
    assert_int_equal(engine_items_compute(m, N + H, items, v, NULL, err, sizeof err), CTR_OK);
    const size_t vf = engine_item_vec_floats(m);
    const float *hist[H], *cand[N];
    for (int j = 0; j < H; j++) hist[j] = j == 2 ? NULL : v + (size_t)(N + j) * vf;
    for (int i = 0; i < N; i++) cand[i] = v + (size_t)i * vf;
    engine_scratch *s, *so;
    assert_int_equal(engine_scratch_init(m, N, &s), CTR_OK);
    assert_int_equal(engine_scratch_init(other, N, &so), CTR_OK);
    engine_scratch *none;
    assert_int_equal(engine_scratch_init(m, 0, &none), CTR_EINVAL);
    assert_null(none);
    float p[N], pe[N], p2[N];
    int32_t pos[N * 2];
    float w[N * 2];
    engine_request r = {hist, H, cand, NULL, N, NULL, NULL};
    assert_int_equal(engine_forward(m, so, &r, p, err, sizeof err), CTR_EINVAL);
    assert_string_equal(err, "scratch of another model");
    r.num_cand = N + 1;
    assert_int_equal(engine_forward(m, s, &r, p, err, sizeof err), CTR_ETOOMANY);
    r.num_cand = N;
    engine_explain bad = {0, pos, w};
    r.explain = &bad;
    assert_int_equal(engine_forward(m, s, &r, p, err, sizeof err), CTR_EINVAL);
    r.explain = NULL;
    cand[3] = NULL;
    assert_int_equal(engine_forward(m, s, &r, p, err, sizeof err), CTR_EINVAL);
    assert_string_equal(err, "candidate 3: no vector");
    cand[3] = v + 3 * vf;

    assert_int_equal(engine_forward(m, s, &r, p, err, sizeof err), CTR_OK);
    engine_explain ex = {2, pos, w};
    r.explain = &ex;
    assert_int_equal(engine_forward(m, s, &r, pe, err, sizeof err), CTR_OK);
    for (int i = 0; i < N; i++) {
        assert_true(p[i] == pe[i]);
        assert_true(p[i] > 0.0f && p[i] < 1.0f);
        /* Positions name real behaviours of the window, never the NULL. */
        for (int k = 0; k < 2; k++) {
            int q = pos[i * 2 + k];
            assert_true(q >= H - sc->max_len && q < H && q != 2);
        }
    }
    /* Two slices, as a server splitting a request across threads. */
    engine_request a = {hist, H, cand, NULL, 2, NULL, NULL}, b = {hist, H, cand + 2, NULL, N - 2, NULL, NULL};
    assert_int_equal(engine_forward(m, s, &a, p2, err, sizeof err), CTR_OK);
    assert_int_equal(engine_forward(m, s, &b, p2 + 2, err, sizeof err), CTR_OK);
    for (int i = 0; i < N; i++) assert_true(fabsf(p2[i] - p[i]) < 1e-6f);
    /* No history at all, and an empty request. */
    engine_request e = {NULL, 0, cand, NULL, N, &ex, NULL};
    assert_int_equal(engine_forward(m, s, &e, p2, err, sizeof err), CTR_OK);
    for (int i = 0; i < N; i++) assert_int_equal(pos[i * 2], -1);
    e.num_cand = 0;
    assert_int_equal(engine_forward(m, s, &e, p2, err, sizeof err), CTR_OK);
    engine_scratch_free(s);
    engine_scratch_free(so);
    free(v);
    engine_model_free(m);
    engine_model_free(other);
}

static void test_forward_qin(void **state) { (void)state; run_forward("small"); }
static void test_forward_din(void **state) { (void)state; run_forward("din-dice-softmax"); }
static void test_forward_tin(void **state) { (void)state; run_forward("tin-small"); }

/* Vectors that overflow are refused the same way for every architecture
 * (engine level): QIN and DIN from a huge embedding, naming the item and
 * its index in the batch. */
static void test_overflow(void **state) {
    (void)state;
    const char *names[] = {"small", "din-small"};
    for (int n = 0; n < 2; n++) {
        engine_model *m = load(names[n]);
        const engine_schema *sc = engine_model_schema(m);
        float mm[12], huge[12];
        for (int k = 0; k < 12; k++) {
            mm[k] = 0.25f;
            huge[k] = k % 2 ? -3e38f : 3e38f; /* finite, and W_mm x overflows */
        }
        engine_item it[3] = {{1, NULL, 0, mm, 0}, {7, NULL, 0, huge, 0}, {9, NULL, 0, mm, 0}};
        assert_int_equal(sc->mm_dim, 12);
        float *v = engine_item_vecs_alloc(m, 3);
        char err[256];
        int bad = -1;
        assert_int_equal(engine_items_compute(m, 3, it, v, &bad, err, sizeof err), CTR_EINVAL);
        assert_int_equal(bad, 1);
        assert_string_equal(err, "item 7: its vector overflows (features too large for the model)");
        it[1].mm = mm;
        if (engine_items_compute(m, 3, it, v, &bad, err, sizeof err) != CTR_OK) fail_msg("%s", err);
        free(v);
        engine_model_free(m);
    }
}

/* The warm-up runs every architecture at its spread of sizes and leaves
 * no trace: a request scores the same before and after. */
static void test_warmup(void **state) {
    (void)state;
    const char *names[] = {"small", "din-dice-softmax", "tin-small"};
    for (int n = 0; n < 3; n++) {
        engine_model *m = load(names[n]);
        const engine_schema *sc = engine_model_schema(m);
        engine_item it[4];
        for (int i = 0; i < 4; i++)
            it[i] = (engine_item){sc->item_id_min + 3 * i + 1, NULL, 0, NULL, i % 3};
        float *v = engine_item_vecs_alloc(m, 4);
        char err[256];
        assert_int_equal(engine_items_compute(m, 4, it, v, NULL, err, sizeof err), CTR_OK);
        const size_t vf = engine_item_vec_floats(m);
        const float *hist[2] = {v, v + vf}, *cand[2] = {v + 2 * vf, v + 3 * vf};
        engine_scratch *s;
        assert_int_equal(engine_scratch_init(m, 2, &s), CTR_OK);
        engine_request r = {hist, 2, cand, NULL, 2, NULL, NULL};
        float before[2], after[2];
        assert_int_equal(engine_forward(m, s, &r, before, err, sizeof err), CTR_OK);
        assert_int_equal(engine_warmup(m, 300, err, sizeof err), CTR_OK);
        assert_int_equal(engine_warmup(m, 5, err, sizeof err), CTR_OK);
        /* A thread's warm-up on its own scratch leaves it scoring alike. */
        assert_int_equal(engine_warmup_thread(m, s, err, sizeof err), CTR_OK);
        assert_int_equal(engine_forward(m, s, &r, after, err, sizeof err), CTR_OK);
        assert_true(before[0] == after[0] && before[1] == after[1]);
        /* A scratch may outlive its model (a server drops it lazily). */
        engine_model_free(m);
        engine_scratch_free(s);
        free(v);
    }
}

/* The precision API: defaults, names, the parse and its message, each
 * architecture loading in each precision and saying so, a precision
 * outside the list refused.  (What each precision computes is checked in
 * test_golden.c and test_dense.c.) */
static void test_precision_params(void **state) {
    (void)state;
    char err[256], path[1024];
    engine_params p = engine_default_params();
    assert_int_equal(p.precision, DENSE_FP32);
    dense_precision q;
    assert_int_equal(engine_precision_parse("INT8", &q, err, sizeof err), CTR_OK);
    assert_int_equal(q, DENSE_INT8);
    assert_int_equal(engine_precision_parse("bf16", &q, err, sizeof err), CTR_OK);
    assert_int_equal(q, DENSE_BF16);
    assert_int_equal(engine_precision_parse("fp16", &q, err, sizeof err), CTR_EINVAL);
    assert_non_null(strstr(err, "fp32, bf16, int8 or int8x2"));
    assert_int_equal(engine_precision_parse(NULL, &q, err, sizeof err), CTR_EINVAL);
    const char *d = getenv("CTR_GOLDEN");
    static const char *const names[] = {"small", "din-small", "tin-small"};
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/%s/model.safetensors", d && *d ? d : "build/golden",
                 names[k]);
        engine_model *m = load(names[k]);
        assert_int_equal(engine_model_precision(m), DENSE_FP32);
        assert_non_null(strstr(engine_model_describe(m), "fp32"));
        engine_model_free(m);
        for (int pr = 0; pr < DENSE_PRECISION_COUNT; pr++) {
            p.precision = (dense_precision)pr;
            if (engine_model_load_with(path, &p, &m, err, sizeof err) < 0)
                fail_msg("%s %s: %s", names[k], dense_precision_name(p.precision), err);
            assert_int_equal(engine_model_precision(m), pr);
            assert_non_null(strstr(engine_model_describe(m), dense_precision_name(p.precision)));
            engine_model_free(m);
        }
        p.precision = (dense_precision)DENSE_PRECISION_COUNT;
        assert_int_equal(engine_model_load_with(path, &p, &m, err, sizeof err), CTR_EINVAL);
        assert_null(m);
        assert_non_null(strstr(err, "precision"));
    }
}

/* --- a request's layers split by columns (engine_par) --------------------- */

/* Parts in reverse order on the caller: no part may depend on another. */
static void run_serial(void *ctx, engine_part_fn fn, void *arg, int nparts) {
    (*(int *)ctx)++;
    for (int p = nparts - 1; p >= 0; p--) fn(arg, p, nparts);
}

typedef struct part_call {
    engine_part_fn fn;
    void *arg;
    int part, nparts;
} part_call;

static void *part_thread(void *a) {
    part_call *c = a;
    c->fn(c->arg, c->part, c->nparts);
    return NULL;
}

/* Part 1.. on threads of their own, part 0 on the caller, at once. */
static void run_threads(void *ctx, engine_part_fn fn, void *arg, int nparts) {
    (*(int *)ctx)++;
    pthread_t t[8];
    part_call c[8];
    for (int p = 1; p < nparts && p < 8; p++) {
        c[p] = (part_call){fn, arg, p, nparts};
        assert_int_equal(pthread_create(&t[p], NULL, part_thread, &c[p]), 0);
    }
    fn(arg, 0, nparts);
    for (int p = 1; p < nparts && p < 8; p++) pthread_join(t[p], NULL);
}

static void test_column_split(void **state) {
    (void)state;
    const char *d = getenv("CTR_GOLDEN");
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/microlens/model.safetensors", d && *d ? d : "build/golden");
    enum { N = 24, H = 40 };
    for (int pr = 0; pr < DENSE_PRECISION_COUNT; pr++) {
        engine_params ep = engine_default_params();
        ep.precision = (dense_precision)pr;
        ep.column_parts = 2;
        engine_model *m;
        if (engine_model_load_with(path, &ep, &m, err, sizeof err) < 0) fail_msg("%s", err);
        assert_int_equal(engine_model_column_parts(m), 2);
        const engine_schema *sc = engine_model_schema(m);
        engine_item items[N + H];
        int32_t tags[N + H][5];
        float *mm = calloc((size_t)(N + H) * sc->mm_dim, sizeof *mm);
        int32_t ctx[N * 2];
        for (int i = 0; i < N + H; i++) {
            for (int k = 0; k < 5; k++) tags[i][k] = (i * 3 + k) % sc->tag_vocab;
            for (int k = 0; k < sc->mm_dim; k++)
                mm[(size_t)i * sc->mm_dim + k] = (float)((i * 31 + k * 7) % 23) / 23.0f - 0.5f;
            items[i] = (engine_item){1 + (i * 37) % (sc->item_vocab - 1), tags[i],
                                     sc->num_tags < 5 ? sc->num_tags : 5,
                                     mm + (size_t)i * sc->mm_dim, 0};
        }
        for (int i = 0; i < N * sc->num_ctx && i < N * 2; i++) ctx[i] = i % 3;
        float *v = engine_item_vecs_alloc(m, N + H);
        if (engine_items_compute(m, N + H, items, v, NULL, err, sizeof err) < 0)
            fail_msg("%s", err);
        const size_t vf = engine_item_vec_floats(m);
        const float *hist[H], *cand[N];
        for (int j = 0; j < H; j++) hist[j] = j == 5 ? NULL : v + (size_t)(N + j) * vf;
        for (int i = 0; i < N; i++) cand[i] = v + (size_t)i * vf;
        engine_scratch *s;
        assert_int_equal(engine_scratch_init(m, N, &s), CTR_OK);
        float p0[N], p1[N], p2[N], p3[N];
        int calls = 0;
        engine_request r = {hist, H, cand, sc->num_ctx <= 2 ? ctx : NULL, N, NULL, NULL};
        assert_int_equal(engine_forward(m, s, &r, p0, err, sizeof err), CTR_OK);
        engine_par serial = {run_serial, &calls, 2}, threads = {run_threads, &calls, 2},
                   too_few = {run_serial, &calls, N + 1};
        r.par = &serial;
        assert_int_equal(engine_forward(m, s, &r, p1, err, sizeof err), CTR_OK);
        assert_true(calls > 0); /* it did split */
        r.par = &threads;
        assert_int_equal(engine_forward(m, s, &r, p2, err, sizeof err), CTR_OK);
        int before = calls;
        r.par = &too_few;
        assert_int_equal(engine_forward(m, s, &r, p3, err, sizeof err), CTR_OK);
        assert_int_equal(calls, before); /* fewer rows than min_rows: not split */
        for (int i = 0; i < N; i++) {
            assert_true(p1[i] == p2[i]);   /* the same parts, in any order, on any thread */
            assert_true(p3[i] == p0[i]);
            /* The split sums in another order (products of other widths
             * and row counts): fp32 and bf16 agree to float rounding; int8
             * to its own error, a value rounded to the other side of a
             * quantisation step now and then; int8x2 balances each half's
             * columns by that half's weights, so its halves round their
             * weights otherwise than the whole (within its error of fp32,
             * test_golden.c). */
            const float tol = pr == DENSE_INT8X2 ? 5e-3f : (pr == DENSE_INT8 ? 2e-3f : 1e-5f);
            if (fabsf(p1[i] - p0[i]) > tol)
                fail_msg("%s: candidate %d split %.9g, whole %.9g",
                         dense_precision_name((dense_precision)pr), i, p1[i], p0[i]);
        }
        engine_scratch_free(s);
        free(v);
        free(mm);
        engine_model_free(m);
    }
    /* A width that does not split in 64s, or column_parts 1: no parts. */
    engine_params ep = engine_default_params();
    engine_model *m;
    if (engine_model_load_with(path, &ep, &m, err, sizeof err) < 0) fail_msg("%s", err);
    assert_int_equal(engine_model_column_parts(m), 1);
    engine_model_free(m);
    ep.column_parts = 3;
    assert_int_equal(engine_model_load_with(path, &ep, &m, err, sizeof err), CTR_EINVAL);
    assert_non_null(strstr(err, "column_parts"));
}

static void test_load_refusals(void **state) {
    (void)state;
    engine_model *m = (engine_model *)1;
    char err[256] = "";
    assert_int_equal(engine_model_load("/nonexistent/model.safetensors", &m, err, sizeof err),
                     CTR_EIO);
    assert_null(m);
    assert_non_null(strstr(err, "/nonexistent/model.safetensors"));
    static const unsigned char junk[16] = {1, 2, 3};
    assert_true(engine_model_load_buffer(junk, sizeof junk, &m, err, sizeof err) < 0);
    assert_null(m);
    assert_true(err[0] != '\0');
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schemas),      cmocka_unit_test(test_request_rules),
        cmocka_unit_test(test_forward_qin),  cmocka_unit_test(test_forward_din),
        cmocka_unit_test(test_forward_tin),  cmocka_unit_test(test_load_refusals),
        cmocka_unit_test(test_overflow),     cmocka_unit_test(test_warmup),
        cmocka_unit_test(test_precision_params),
        cmocka_unit_test(test_column_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
