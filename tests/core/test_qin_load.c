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
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
