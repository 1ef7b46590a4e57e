/* test_qin_load.c - the QIN model loader, through engine.h: a valid file
 * loads with its declared configuration; every kind of damaged file is
 * refused with its message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/engine.h"
#include "core/qin_internal.h"
#include "tests/core/testmodel.h"

static test_model tm;

static int setup(void **state) {
    (void)state;
    qin_config c = tm_small_config();
    tm_init(&tm, &c, 7);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tm_free(&tm);
    return 0;
}

/* Loads buf and expects failure with `status` and `needle` in the message. */
static void expect_refused(const unsigned char *buf, size_t len, int status, const char *needle) {
    engine_model *m = (engine_model *)1;
    char err[512] = "";
    int rc = engine_model_load_buffer(buf, len, &m, err, sizeof err);
    if (rc != status || !strstr(err, needle))
        fail_msg("expected %d with \"%s\", got %d: %s", status, needle, rc, err);
    assert_null(m);
}

static void test_valid(void **state) {
    (void)state;
    size_t len;
    unsigned char *buf = tm_serialize(&tm, NULL, &len);
    engine_model *em = NULL;
    char err[512] = "";
    int rc = engine_model_load_buffer(buf, len, &em, err, sizeof err);
    if (rc != CTR_OK) fail_msg("load failed: %s", err);
    const engine_schema *sc = engine_model_schema(em);
    assert_int_equal(sc->arch, ENGINE_ARCH_QIN);
    assert_string_equal(sc->name, "qin-test");
    assert_int_equal(sc->item_id_min, 1);
    assert_int_equal(sc->num_ctx, 2);
    qin_model *m = qin_model_of(em);
    assert_non_null(m);
    const qin_config *c = &m->cfg;
    assert_string_equal(c->name, "qin-test");
    assert_string_equal(c->version, "t1");
    assert_int_equal(c->embedding_dim, 4);
    assert_int_equal(c->item_dim, 13);
    assert_int_equal(c->attn_dim, 26);
    assert_int_equal(c->input_dim, 34);
    assert_int_equal(c->num_ctx, 2);
    assert_string_equal(c->ctx_name[1], "views_level");
    assert_int_equal(c->ctx_vocab[1], 3);
    /* Every weight buffer is 64-byte aligned. */
    assert_int_equal((uintptr_t)m->iv.item_emb % 64, 0);
    assert_int_equal((uintptr_t)m->qnn_w[1] % 64, 0);
    assert_int_equal((uintptr_t)m->attn_a % 64, 0);
    engine_model_free(em);
    free(buf);
}

static void test_truncated(void **state) {
    (void)state;
    size_t len;
    unsigned char *buf = tm_serialize(&tm, NULL, &len);
    expect_refused(buf, len - 10, CTR_EFORMAT, "outside the data");
    expect_refused(buf, 5, CTR_EFORMAT, "too short");
    expect_refused(buf, 8 + 20, CTR_EFORMAT, "bad header length");
    free(buf);
}

static void test_bad_header_length(void **state) {
    (void)state;
    size_t len;
    unsigned char *buf = tm_serialize(&tm, NULL, &len);
    unsigned char saved[8];
    memcpy(saved, buf, 8);
    memset(buf, 0xff, 8);
    expect_refused(buf, len, CTR_EFORMAT, "bad header length");
    memcpy(buf, saved, 8);
    buf[0] = (unsigned char)(buf[0] - 8); /* header cut short: JSON breaks */
    expect_refused(buf, len, CTR_EFORMAT, "safetensors header");
    free(buf);
}

static void test_corrupt_json(void **state) {
    (void)state;
    size_t len;
    unsigned char *buf = tm_serialize(&tm, NULL, &len);
    buf[8] = '[';
    expect_refused(buf, len, CTR_EFORMAT, "not a JSON object");
    free(buf);
}

static void test_offsets_past_end(void **state) {
    (void)state;
    tm_damage d = {.end_extra = 4096};
    size_t len;
    unsigned char *buf = tm_serialize(&tm, &d, &len);
    expect_refused(buf, len, CTR_EFORMAT, "outside the data");
    free(buf);
}

static void test_wrong_dtype(void **state) {
    (void)state;
    tm_damage d = {.dtype_of = "attention_layers.W_k.weight"};
    size_t len;
    unsigned char *buf = tm_serialize(&tm, &d, &len);
    expect_refused(buf, len, CTR_EMODEL, "attention_layers.W_k.weight: dtype I32, expected F32");
    free(buf);
}

static void test_wrong_shape(void **state) {
    (void)state;
    /* The byte length no longer matches the shape: a format error. */
    tm_damage d = {.shape_of = "qnn.layer.1.linear.0.weight"};
    size_t len;
    unsigned char *buf = tm_serialize(&tm, &d, &len);
    expect_refused(buf, len, CTR_EFORMAT, "qnn.layer.1.linear.0.weight");
    free(buf);
    /* A consistent file whose shape disagrees with the configuration. */
    tm_damage d2 = {.meta_key = "num_row", .meta_value = "2"};
    buf = tm_serialize(&tm, &d2, &len);
    expect_refused(buf, len, CTR_EMODEL,
                   "qnn.layer.0.linear.0.weight: shape [102, 34], expected [68, 34]");
    free(buf);
}

static void test_missing_tensor(void **state) {
    (void)state;
    tm_damage d = {.skip = "qnn.norm.0.running_var"};
    size_t len;
    unsigned char *buf = tm_serialize(&tm, &d, &len);
    expect_refused(buf, len, CTR_EMODEL, "missing tensor qnn.norm.0.running_var");
    free(buf);
}

static void test_unexpected_tensor(void **state) {
    (void)state;
    tm_damage d = {.extra = "qnn.layer.9.linear.0.weight"};
    size_t len;
    unsigned char *buf = tm_serialize(&tm, &d, &len);
    expect_refused(buf, len, CTR_EMODEL, "unexpected tensor qnn.layer.9.linear.0.weight");
    free(buf);
}

static void test_bad_metadata(void **state) {
    (void)state;
    size_t len;
    tm_damage d1 = {.meta_key = "arch", .meta_value = "din"};
    unsigned char *buf = tm_serialize(&tm, &d1, &len);
    expect_refused(buf, len, CTR_EMODEL, "this engine serves \"qin\"");
    free(buf);
    tm_damage d2 = {.meta_key = "embedding_dim", .meta_value = "-3"};
    buf = tm_serialize(&tm, &d2, &len);
    expect_refused(buf, len, CTR_EMODEL, "\"embedding_dim\" = \"-3\"");
    free(buf);
    tm_damage d3 = {.meta_key = "context_vocab", .meta_value = "4"};
    buf = tm_serialize(&tm, &d3, &len);
    expect_refused(buf, len, CTR_EMODEL, "same length");
    free(buf);
}

static void test_missing_file(void **state) {
    (void)state;
    engine_model *m;
    char err[512] = "";
    assert_int_equal(engine_model_load("/nonexistent/model.safetensors", &m, err, sizeof err),
                     CTR_EIO);
    assert_non_null(strstr(err, "/nonexistent/model.safetensors"));
}

/* int8x2 weights in the file (tools/convert.py --calibrate): each layer's
 * integers near round-to-nearest's but not the same (every weight near a
 * tie rounded the other way), balance 2 for every column. */
static void add_int8x2_set(test_model *t, const qin_model *m, signed char *q[4], float *sc[4]) {
    const int D = m->cfg.input_dim;
    char name[128];
    for (int l = 0; l < m->cfg.num_layers; l++) {
        q[l] = malloc((size_t)D * D);
        snprintf(name, sizeof name, "qnn.layer.%d.int8x2.scale", l);
        sc[l] = tm_add(t, name, D, -1, 0.0f, 0.0f);
        snprintf(name, sizeof name, "qnn.layer.%d.int8x2.balance", l);
        float *b = tm_add(t, name, D, -1, 0.0f, 0.0f);
        for (int k = 0; k < D; k++) b[k] = 2.0f;
        const float *w = m->qnn_w[l];
        for (int o = 0; o < D; o++) {
            float mx = 0.0f;
            for (int k = 0; k < D; k++) mx = fmaxf(mx, fabsf(w[o * D + k] / 2.0f));
            sc[l][o] = mx / 127.0f;
            for (int k = 0; k < D; k++) {
                float v = w[o * D + k] / 2.0f / sc[l][o], r = nearbyintf(v);
                if (fabsf(v - r) > 0.4f && fabsf(r) < 127.0f) r += v > r ? 1.0f : -1.0f;
                q[l][o * D + k] = (signed char)r;
            }
        }
    }
    for (int l = 0; l < m->cfg.num_layers; l++) { /* I8 last, as convert.py writes them */
        snprintf(name, sizeof name, "qnn.layer.%d.int8x2.weight", l);
        tm_add_i8(t, name, D, D, q[l]);
    }
}

/* Rows of integers 0..255 (the row's range exactly 0..255). */
static float *integer_rows(int n, int in, int ldx) {
    float *x = calloc((size_t)n * ldx, sizeof *x);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < in; k++)
            x[i * ldx + k] = k == 0 ? 0.0f : k == 1 ? 255.0f : (float)((i * 29 + k * 13) % 256);
    return x;
}

/* The product of an int8x2 layer (or column part) on integer rows, which
 * it quantises exactly with balance 2 (first level scale 2, the second
 * level all zero): the integers the kernel holds times 2 scale, to the
 * bit.  Returns the mismatches. */
static int layer_uses(const dense *d, const signed char *q, const float *sc, int ldx) {
    enum { N = 9 };
    const int in = dense_in(d), out = dense_out(d);
    float *x = integer_rows(N, in, ldx), *y = calloc((size_t)N * ldx, sizeof *y);
    dense_ws *ws;
    assert_int_equal(dense_ws_init(dense_ws_size(d), &ws), CTR_OK);
    assert_int_equal(dense_forward(d, ws, N, x, y), CTR_OK);
    int bad = 0;
    for (int i = 0; i < N; i++)
        for (int o = 0; o < out; o++) {
            int32_t acc = 0;
            for (int k = 0; k < in; k++) acc += q[o * in + k] * (int32_t)x[i * ldx + k];
            bad += y[i * ldx + o] != (float)acc * (2.0f * sc[o]);
        }
    dense_ws_free(ws);
    free(x);
    free(y);
    return bad;
}

/* Two layers give the same products, bit for bit. */
static void same_products(const dense *a, const dense *b, int ldx) {
    enum { N = 5 };
    float *x = integer_rows(N, dense_in(a), ldx), *ya = calloc((size_t)N * ldx, sizeof *ya),
          *yb = calloc((size_t)N * ldx, sizeof *yb);
    for (int i = 0; i < N * ldx; i++) x[i] = x[i] / 64.0f - 2.0f;
    dense_ws *ws;
    assert_int_equal(dense_ws_init(dense_ws_size(a), &ws), CTR_OK);
    assert_int_equal(dense_forward(a, ws, N, x, ya), CTR_OK);
    assert_int_equal(dense_forward(b, ws, N, x, yb), CTR_OK);
    assert_memory_equal(ya, yb, (size_t)N * ldx * sizeof(float));
    dense_ws_free(ws);
    free(x);
    free(ya);
    free(yb);
}

/* The file's int8x2 weights are loaded as written and are what the int8x2
 * layers and their column parts multiply by (not the fp32 weights rounded
 * to nearest, which the same check tells apart); fp32 and int8 ignore
 * them (the same products, bit for bit, as without them); a set with a
 * part missing, an integer of -128 and a balance of 0 are refused. */
static void test_int8x2_weights(void **state) {
    (void)state;
    qin_config c = tm_small_config();
    c.mm_out = 20; /* D = 64: two column parts of 32 */
    c.item_dim = 2 * c.embedding_dim + c.mm_out;
    c.attn_dim = 2 * c.item_dim;
    c.input_dim = c.num_ctx * c.embedding_dim + 2 * c.item_dim;
    test_model t;
    tm_init(&t, &c, 21);
    size_t len, len2;
    unsigned char *buf = tm_serialize(&t, NULL, &len);
    char err[512] = "";
    engine_model *plain;
    if (engine_model_load_buffer(buf, len, &plain, err, sizeof err) < 0) fail_msg("%s", err);
    const int D = c.input_dim, L = c.num_layers, ldx = qin_ldx(&c);
    signed char *q[4];
    float *sc[4];
    add_int8x2_set(&t, qin_model_of(plain), q, sc);
    unsigned char *buf2 = tm_serialize(&t, NULL, &len2);
    for (int pr = 0; pr < DENSE_PRECISION_COUNT; pr++) {
        engine_params p = engine_default_params();
        p.precision = (dense_precision)pr;
        p.column_parts = pr == DENSE_INT8X2 ? 2 : 1;
        engine_model *em, *rtn;
        if (engine_model_load_buffer_with(buf2, len2, &p, &em, err, sizeof err) < 0 ||
            engine_model_load_buffer_with(buf, len, &p, &rtn, err, sizeof err) < 0)
            fail_msg("%s", err);
        const qin_model *m = qin_model_of(em), *r = qin_model_of(rtn);
        assert_null(r->qnn_int8x2);
        /* /v1/models and the startup log say so */
        assert_true(!strstr(engine_model_describe(em), "int8 weights given") ==
                    (pr != DENSE_INT8X2));
        assert_null(strstr(engine_model_describe(rtn), "int8 weights given"));
        for (int l = 0; l < L; l++) {
            const qin_int8 *g = &m->qnn_int8x2[l];
            assert_memory_equal(g->q, q[l], (size_t)D * D);
            assert_memory_equal(g->scale, sc[l], (size_t)D * sizeof(float));
            assert_true(g->balance[0] == 2.0f && g->balance[D - 1] == 2.0f);
            if (pr != DENSE_INT8X2) {
                same_products(m->qnn_dense[l], r->qnn_dense[l], ldx);
                continue;
            }
            if (layer_uses(m->qnn_dense[l], q[l], sc[l], ldx))
                fail_msg("int8x2 layer %d: not the file's integers", l);
            for (int part = 0; part < 2; part++)
                if (layer_uses(m->qnn_part[l * 2 + part], q[l] + (size_t)part * 32 * D,
                               sc[l] + part * 32, ldx))
                    fail_msg("int8x2 layer %d part %d: not the file's integers", l, part);
            /* the same check fails on the weights rounded to nearest */
            assert_true(layer_uses(r->qnn_dense[l], q[l], sc[l], ldx) > 0);
        }
        engine_model_free(em);
        engine_model_free(rtn);
    }
    free(buf2);
    tm_damage dmg = {.skip = "qnn.layer.1.int8x2.balance"};
    buf2 = tm_serialize(&t, &dmg, &len2);
    expect_refused(buf2, len2, CTR_EMODEL, "together");
    free(buf2);
    tm_get(&t, "qnn.layer.0.int8x2.balance")[5] = 0.0f;
    buf2 = tm_serialize(&t, NULL, &len2);
    expect_refused(buf2, len2, CTR_EMODEL, "expected > 0");
    free(buf2);
    tm_get(&t, "qnn.layer.0.int8x2.balance")[5] = 2.0f;
    tm_get(&t, "qnn.layer.1.int8x2.weight")[3] = -128.0f;
    buf2 = tm_serialize(&t, NULL, &len2);
    expect_refused(buf2, len2, CTR_EMODEL, "-127..127");
    free(buf2);
    for (int l = 0; l < L; l++) free(q[l]);
    engine_model_free(plain);
    free(buf);
    tm_free(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_bad_header_length),
        cmocka_unit_test(test_corrupt_json),
        cmocka_unit_test(test_offsets_past_end),
        cmocka_unit_test(test_wrong_dtype),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_unexpected_tensor),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_int8x2_weights),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
