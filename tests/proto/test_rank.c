/*
 * test_rank.c - proto/rank.c: the request decoder (good input and every
 * refusal, checked by status and by the field named in the message), the
 * ordering helper, and the encoders, whose output is read back with
 * jansson so escaping and float round-trips are checked by an independent
 * parser.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/base/status.h"
#include "proto/rank.h"

static const char *const ctx_names[] = {"likes_level", "views_level"};
static const proto_rank_schema schema = {
    .num_ctx = 2, .ctx_name = ctx_names, .max_cand = 4, .max_seq = 5};

/* Two models for "model": "a" (the default, the schema above) and "b",
 * with other context fields and limits. */
static const char *const ctx_names_b[] = {"views_level", "hour"};
static const proto_rank_schema schema_b = {
    .num_ctx = 2, .ctx_name = ctx_names_b, .max_cand = 3, .max_seq = 2};
static int picks;
static const proto_rank_schema *pick2(void *arg, const char *model) {
    (void)arg;
    picks++;
    if (!model || strcmp(model, "a") == 0) return &schema;
    return strcmp(model, "b") == 0 ? &schema_b : NULL;
}

#include "tests/fixture.h"

static int dec(const char *body, proto_rank_request *r) {
    err[0] = '\0';
    return proto_rank_request_decode(body, strlen(body), &schema, &A, r, err,
                                     sizeof err);
}

#define EXPECT_ERR(body, status, sub)                                         \
    do {                                                                      \
        proto_rank_request r_;                                                \
        int rc_ = dec((body), &r_);                                           \
        if (rc_ != (status) || !strstr(err, (sub)))                           \
            fail_msg("%s\n  got %d \"%s\", want %d with \"%s\"", (body), rc_, \
                     err, (status), (sub));                                   \
    } while (0)

/* --- Decoder ------------------------------------------------------------ */

static void test_decode_full(void **state) {
    proto_rank_request r;
    assert_int_equal(
        dec("{\"user_id\": \"u1\", \"request_id\": \"req-7\", \"top_k\": 2,"
            " \"item_seq\": [4, 0, 9],"
            " \"candidates\": [{\"item_id\": 17, \"likes_level\": 3,"
            " \"views_level\": 10}, {\"views_level\": 1, \"item_id\": 18},"
            " {\"item_id\": 19}]}",
            &r),
        CTR_OK);
    assert_string_equal(r.user_id, "u1");
    assert_int_equal(r.user_id_is_int, 0);
    assert_string_equal(r.request_id, "req-7");
    assert_int_equal(r.top_k, 2);
    assert_int_equal(r.has_item_seq, 1);
    assert_int_equal(r.seq_len, 3);
    assert_int_equal(r.item_seq[0], 4);
    assert_int_equal(r.item_seq[1], 0);
    assert_int_equal(r.item_seq[2], 9);
    assert_int_equal(r.num_cand, 3);
    assert_int_equal(r.cand_id[0], 17);
    assert_int_equal(r.cand_id[1], 18);
    assert_int_equal(r.cand_id[2], 19);
    /* Row-major, model order whatever the JSON order; missing = 0. */
    const int32_t want[] = {3, 10, 0, 1, 0, 0};
    for (int i = 0; i < 6; i++) assert_int_equal(r.ctx[i], want[i]);
}

static void test_decode_minimal(void **state) {
    proto_rank_request r;
    assert_int_equal(dec("{\"user_id\": 42, \"candidates\": "
                         "[{\"item_id\": -5, \"likes_level\": -2147483648}]}",
                         &r),
                     CTR_OK);
    assert_string_equal(r.user_id, "42");
    assert_int_equal(r.user_id_is_int, 1);
    assert_null(r.request_id);
    assert_int_equal(r.top_k, 0);
    assert_int_equal(r.has_item_seq, 0);
    assert_int_equal(r.seq_len, 0);
    assert_int_equal(r.num_cand, 1);
    assert_int_equal(r.cand_id[0], -5);
    assert_int_equal(r.ctx[0], INT32_MIN);
    assert_int_equal(r.ctx[1], 0);
}

static void test_decode_empty_lists(void **state) {
    proto_rank_request r;
    assert_int_equal(dec("{\"user_id\": \"u\", \"candidates\": [], "
                         "\"item_seq\": []}",
                         &r),
                     CTR_OK);
    assert_int_equal(r.num_cand, 0);
    assert_int_equal(r.has_item_seq, 1);   /* given and empty: no history */
    assert_int_equal(r.seq_len, 0);
}

static void test_decode_limits(void **state) {
    proto_rank_request r;
    /* Exactly at the limits is fine. */
    assert_int_equal(dec("{\"user_id\": 1, \"item_seq\": [1,2,3,4,5], "
                         "\"candidates\": [{\"item_id\": 1}, {\"item_id\": 2},"
                         " {\"item_id\": 3}, {\"item_id\": 4}], "
                         "\"top_k\": 99999999999}",
                         &r),
                     CTR_OK);
    assert_int_equal(r.num_cand, 4);
    assert_int_equal(r.seq_len, 5);
    assert_int_equal(r.top_k, INT32_MAX);   /* clamped */
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"item_id\": 1}, "
               "{\"item_id\": 2}, {\"item_id\": 3}, {\"item_id\": 4}, "
               "{\"item_id\": 5}]}",
               CTR_ETOOMANY, "candidates: 5 given, at most 4 allowed");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], "
               "\"item_seq\": [1,2,3,4,5,6]}",
               CTR_ERANGE, "item_seq: 6 ids, at most 5 allowed");
    /* deadline_ms: an integer >= 1, on both decode paths. */
    assert_int_equal(dec("{\"user_id\": 1, \"candidates\": [], \"deadline_ms\": 7}", &r),
                     CTR_OK);
    assert_int_equal(r.deadline_ms, 7);
    assert_int_equal(dec("{\"user_id\": 1, \"candidates\": [], \"deadline_ms\": 7.0}", &r),
                     CTR_EINVAL);
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"deadline_ms\": 0}", CTR_EINVAL,
               "deadline_ms: must be at least 1");
}

static void test_decode_bad_json(void **state) {
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [", CTR_EFORMAT,
               "line 1, column");
    EXPECT_ERR("{\"user_id\": 1,\n \"candidates\": [}", CTR_EFORMAT,
               "line 2, column");
    EXPECT_ERR("", CTR_EFORMAT, "line 1, column 0");
    EXPECT_ERR("{} trailing", CTR_EFORMAT, "end of file expected");
    EXPECT_ERR("{\"user_id\": 1, \"user_id\": 2, \"candidates\": []}",
               CTR_EFORMAT, "duplicate object key");
    EXPECT_ERR("{\"user_id\": \"\xff\", \"candidates\": []}", CTR_EFORMAT,
               "unable to decode byte 0xff");
    EXPECT_ERR("{\"user_id\": \"a\\u0000b\", \"candidates\": []}",
               CTR_EFORMAT, "line 1");
}

static void test_decode_wrong_shapes(void **state) {
    EXPECT_ERR("[1]", CTR_EINVAL, "request: expected an object, got an array");
    EXPECT_ERR("{\"candidates\": []}", CTR_EINVAL, "user_id: missing field");
    EXPECT_ERR("{\"user_id\": 1}", CTR_EINVAL, "candidates: missing field");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"item_sequence\": [1]}",
               CTR_EINVAL, "item_sequence: unknown field");
    EXPECT_ERR("{\"user_id\": [1], \"candidates\": []}", CTR_EINVAL,
               "user_id: expected a string or an integer, got an array");
    EXPECT_ERR("{\"user_id\": 1.0, \"candidates\": []}", CTR_EINVAL,
               "user_id: expected a string or an integer");
    EXPECT_ERR("{\"user_id\": \"\", \"candidates\": []}", CTR_EINVAL,
               "user_id: must not be empty");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": {}}", CTR_EINVAL,
               "candidates: expected an array of objects, got an object");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": null}", CTR_EINVAL,
               "candidates: expected an array of objects, got null");
}

static void test_decode_candidate_fields(void **state) {
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"item_id\": 1}, 17]}",
               CTR_EINVAL, "candidates[1]: expected an object, got an integer");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"likes_level\": 1}]}",
               CTR_EINVAL, "candidates[0].item_id: missing field");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"item_id\": \"17\"}]}",
               CTR_EINVAL,
               "candidates[0].item_id: expected an integer, got a string");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"item_id\": 17.0}]}",
               CTR_EINVAL, "candidates[0].item_id: expected an integer, got "
                           "a number with a fraction or exponent");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"item_id\": 1}, "
               "{\"item_id\": 2}, {\"item_id\": 3, \"likes_level\": \"3\"}]}",
               CTR_EINVAL, "candidates[2].likes_level: expected an integer");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"item_id\": 1, "
               "\"views_level\": 2147483648}]}",
               CTR_EINVAL, "candidates[0].views_level: 2147483648 is outside "
                           "the int32 range");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"item_id\": 1, "
               "\"likes_levle\": 3}]}",
               CTR_EINVAL, "candidates[0].likes_levle: unknown field");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"item_id\": 1, "
               "\"views_level\": null}]}",
               CTR_EINVAL, "candidates[0].views_level: expected an integer, "
                           "got null");
}

static void test_decode_big_numbers_named(void **state) {
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"item_id\": 1}, "
               "{\"item_id\": 2}, {\"likes_level\": 1, \"item_id\": "
               "123456789012345678901234567890}]}",
               CTR_EINVAL, "candidates[2].item_id: integer outside the int64 "
                           "range");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [{\"item_id\": 1, "
               "\"likes_level\": 1e400}]}",
               CTR_EINVAL, "candidates[0].likes_level: number too large");
    EXPECT_ERR("{\"user_id\": \"x\\\"]}{[,\", \"item_seq\": [1, 2,"
               " -9223372036854775809], \"candidates\": []}",
               CTR_EINVAL, "item_seq[2]: integer outside the int64 range");
}

static void test_decode_optional_fields(void **state) {
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"top_k\": 0}",
               CTR_EINVAL, "top_k: must be at least 1");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"top_k\": -3}",
               CTR_EINVAL, "top_k: must be at least 1");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"top_k\": 2.5}",
               CTR_EINVAL, "top_k: expected an integer");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"top_k\": \"10\"}",
               CTR_EINVAL, "top_k: expected an integer, got a string");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"top_k\": null}",
               CTR_EINVAL, "top_k: expected an integer, got null");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"request_id\": 7}",
               CTR_EINVAL, "request_id: expected a string, got an integer");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"request_id\": \"\"}",
               CTR_EINVAL, "request_id: 0 bytes, 1 to 128 allowed");
    char body[400];
    char id[130];
    memset(id, 'r', 129);
    id[129] = '\0';
    snprintf(body, sizeof body,
             "{\"user_id\": 1, \"candidates\": [], \"request_id\": \"%s\"}",
             id);
    EXPECT_ERR(body, CTR_EINVAL, "request_id: 129 bytes, 1 to 128 allowed");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"item_seq\": {}}",
               CTR_EINVAL, "item_seq: expected an array of integers");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"item_seq\": [1, 1.5]}",
               CTR_EINVAL, "item_seq[1]: expected an integer");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"item_seq\": null}",
               CTR_EINVAL, "item_seq: expected an array of integers, got "
                           "null");
}

static void test_decode_no_ctx_model(void **state) {
    const proto_rank_schema bare = {0, NULL, 2, -1, NULL};
    proto_rank_request r;
    const char *ok = "{\"user_id\": 1, \"candidates\": [{\"item_id\": 3}]}";
    assert_int_equal(proto_rank_request_decode(ok, strlen(ok), &bare, &A, &r,
                                               err, sizeof err),
                     CTR_OK);
    assert_int_equal(r.num_cand, 1);
    const char *bad =
        "{\"user_id\": 1, \"candidates\": [{\"item_id\": 3, \"likes_level\": "
        "1}]}";
    assert_int_equal(proto_rank_request_decode(bad, strlen(bad), &bare, &A,
                                               &r, err, sizeof err),
                     CTR_EINVAL);
    assert_non_null(strstr(err, "candidates[0].likes_level: unknown field"));
}

/* A NULL error buffer is allowed everywhere. */
static void test_decode_null_err(void **state) {
    proto_rank_request r;
    const char *bad = "{\"user_id\": 1, \"candidates\": [{\"item_id\": 1.5}]}";
    assert_int_equal(proto_rank_request_decode(bad, strlen(bad), &schema, &A,
                                               &r, NULL, 0),
                     CTR_EINVAL);
    const char *big = "{\"user_id\": 1, \"candidates\": [{\"item_id\": "
                      "1111111111111111111111}]}";
    assert_int_equal(proto_rank_request_decode(big, strlen(big), &schema, &A,
                                               &r, NULL, 0),
                     CTR_EINVAL);
}

/* --- Ordering ----------------------------------------------------------- */

static void test_order(void **state) {
    const int64_t id[] = {10, 11, 12, 13, 14, 15, 16};
    const float s[] = {0.5f, 0.9f, 0.5f, NAN, 0.1f, 0.9f, 0.5f};
    proto_rank_item out[7];
    assert_int_equal(proto_rank_order(id, s, 7, 0, out), 7);
    /* Score descending, equal scores in candidate order, NaN last. */
    const int64_t want[] = {11, 15, 10, 12, 16, 14, 13};
    for (int i = 0; i < 7; i++) {
        assert_int_equal(out[i].item_id, want[i]);
        assert_int_equal(out[i].cand, want[i] - 10);
    }
    assert_int_equal(proto_rank_order(id, s, 7, 3, out), 3);
    assert_int_equal(out[2].item_id, 10);
    assert_int_equal(proto_rank_order(id, s, 7, 100, out), 7);
    assert_int_equal(proto_rank_order(id, s, 0, 3, out), 0);
}

static void test_order_many_ties(void **state) {
    enum { N = 1000 };
    static int64_t id[N];
    static float s[N];
    static proto_rank_item out[N];
    for (int i = 0; i < N; i++) {
        id[i] = 5000 + i;
        s[i] = (float)((i * 7919) % 13) / 13.0f;   /* many equal scores */
    }
    assert_int_equal(proto_rank_order(id, s, N, 0, out), N);
    for (int i = 1; i < N; i++) {
        assert_true(out[i - 1].score >= out[i].score);
        if (out[i - 1].score == out[i].score)
            assert_true(out[i - 1].cand < out[i].cand);
        assert_int_equal(out[i].item_id, 5000 + out[i].cand);
    }
}

/* --- Encoders ----------------------------------------------------------- */

static json_t *parse(const proto_buf *b) {
    json_error_t je;
    json_t *j = json_loads(proto_buf_str(b), 0, &je);
    if (!j) fail_msg("not JSON (%s): %s", je.text, proto_buf_str(b));
    return j;
}

static void test_answer_encode(void **state) {
    const char *tricky = "q\"\\\n\t\x01/\xc3\xa9\xe2\x82\xac";
    proto_rank_item items[3] = {
        {17, 0.123456789f, 0}, {-3, 1.0f / 3.0f, 2}, {9, 1e-30f, 1}};
    const char *const degraded[] = {"history \"unavailable\"", "stale"};
    proto_rank_answer ans = {
        .request_id = tricky, .model_name = "qin", .model_version = "v\"1",
        .items = items, .num_items = 3, .took_us = 1234,
        .degraded = degraded, .num_degraded = 2};
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_rank_answer_encode(&ans, &b), CTR_OK);
    json_t *j = parse(&b);
    assert_string_equal(json_string_value(json_object_get(j, "request_id")),
                        tricky);
    json_t *m = json_object_get(j, "model");
    assert_string_equal(json_string_value(json_object_get(m, "name")), "qin");
    assert_string_equal(json_string_value(json_object_get(m, "version")),
                        "v\"1");
    json_t *it = json_object_get(j, "items");
    assert_int_equal(json_array_size(it), 3);
    for (int i = 0; i < 3; i++) {
        json_t *e = json_array_get(it, i);
        assert_int_equal(json_integer_value(json_object_get(e, "item_id")),
                         items[i].item_id);
        /* %.9g reads back as the same float32. */
        float back = (float)json_number_value(json_object_get(e, "score"));
        assert_true(back == items[i].score);
        assert_int_equal(json_object_size(e), 2);
    }
    assert_int_equal(json_integer_value(json_object_get(j, "took_us")), 1234);
    json_t *d = json_object_get(j, "degraded");
    assert_int_equal(json_array_size(d), 2);
    assert_string_equal(json_string_value(json_array_get(d, 0)),
                        "history \"unavailable\"");
    json_decref(j);

    /* No request_id: no field; no reasons: an empty list; no items. */
    proto_buf_reset(&b);
    proto_rank_answer bare = {.model_name = "qin", .model_version = "1"};
    assert_int_equal(proto_rank_answer_encode(&bare, &b), CTR_OK);
    assert_string_equal(proto_buf_str(&b),
                        "{\"model\":{\"name\":\"qin\",\"version\":\"1\"},"
                        "\"items\":[],\"took_us\":0,\"degraded\":[]}");
    proto_buf_free(&b);
}

static void test_answer_unscored(void **state) {
    proto_rank_item items[1] = {{5, 0.5f, 1}};
    const int64_t unscored[] = {7, -2};
    proto_rank_answer ans = {.model_name = "m", .model_version = "v",
                             .items = items, .num_items = 1,
                             .unscored = unscored, .num_unscored = 2};
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_rank_answer_encode(&ans, &b), CTR_OK);
    json_t *j = parse(&b);
    json_t *u = json_object_get(j, "unscored");
    assert_int_equal(json_array_size(u), 2);
    assert_int_equal(json_integer_value(json_array_get(u, 0)), 7);
    assert_int_equal(json_integer_value(json_array_get(u, 1)), -2);
    json_decref(j);
    proto_buf_free(&b);
}

static void test_answer_float_roundtrip(void **state) {
    /* Every float32 printed with %.9g must come back bit-identical. */
    enum { N = 200 };
    proto_rank_item items[N];
    uint32_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 1664525u + 1013904223u;
        float f;
        uint32_t bits = (x >> 9) | 0x3f000000u;    /* [0.5, 1) */
        memcpy(&f, &bits, sizeof f);
        items[i] = (proto_rank_item){i, f * (float)(i % 7 + 1) / 7.0f, i};
    }
    items[0].score = 1.17549435e-38f;              /* FLT_MIN */
    items[1].score = 0.0f;
    items[2].score = 1.0f;
    items[3].score = 1.401298464e-45f;             /* smallest subnormal */
    proto_rank_answer ans = {.model_name = "m", .model_version = "v",
                             .items = items, .num_items = N};
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_rank_answer_encode(&ans, &b), CTR_OK);
    json_t *j = parse(&b);
    json_t *it = json_object_get(j, "items");
    for (int i = 0; i < N; i++) {
        float back = (float)json_number_value(
            json_object_get(json_array_get(it, i), "score"));
        assert_memory_equal(&back, &items[i].score, sizeof back);
    }
    json_decref(j);
    proto_buf_free(&b);
}

static void test_answer_nonfinite(void **state) {
    proto_rank_item items[2] = {{1, NAN, 0}, {2, INFINITY, 1}};
    proto_rank_answer ans = {.model_name = "m", .model_version = "v",
                             .items = items, .num_items = 2};
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_rank_answer_encode(&ans, &b), CTR_OK);
    json_t *j = parse(&b);
    json_t *it = json_object_get(j, "items");
    assert_true(json_is_null(json_object_get(json_array_get(it, 0), "score")));
    assert_true(json_is_null(json_object_get(json_array_get(it, 1), "score")));
    json_decref(j);
    proto_buf_free(&b);
}

static void test_scores_encode(void **state) {
    const float s[] = {0.25f, 0.987654321f, 3e-8f};
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_rank_scores_encode("-42", 1, s, 3, &b), CTR_OK);
    json_t *j = parse(&b);
    assert_true(json_is_integer(json_object_get(j, "user_id")));
    assert_int_equal(json_integer_value(json_object_get(j, "user_id")), -42);
    json_t *a = json_object_get(j, "scores");
    assert_int_equal(json_array_size(a), 3);
    for (int i = 0; i < 3; i++)
        assert_true((float)json_number_value(json_array_get(a, i)) == s[i]);
    json_decref(j);

    /* A string id that looks like a number stays a string; escapes hold. */
    proto_buf_reset(&b);
    assert_int_equal(proto_rank_scores_encode("42", 0, s, 0, &b), CTR_OK);
    assert_string_equal(proto_buf_str(&b), "{\"user_id\":\"42\",\"scores\":[]}");
    proto_buf_reset(&b);
    const char *uid = "u\"1\\\x1f";
    assert_int_equal(proto_rank_scores_encode(uid, 0, s, 1, &b), CTR_OK);
    j = parse(&b);
    assert_string_equal(json_string_value(json_object_get(j, "user_id")), uid);
    json_decref(j);
    /* Claimed integer that is not one: printed as a string, still JSON. */
    proto_buf_reset(&b);
    assert_int_equal(proto_rank_scores_encode("1,2", 1, s, 1, &b), CTR_OK);
    j = parse(&b);
    assert_string_equal(json_string_value(json_object_get(j, "user_id")),
                        "1,2");
    json_decref(j);
    proto_buf_free(&b);
}

/* Decode, score, order, encode: what the server does, end to end. */
static void test_decode_order_encode(void **state) {
    proto_rank_request r;
    assert_int_equal(dec("{\"user_id\": 7, \"request_id\": \"r\\u00e9\", "
                         "\"top_k\": 2, \"candidates\": [{\"item_id\": 1}, "
                         "{\"item_id\": 2}, {\"item_id\": 3}]}",
                         &r),
                     CTR_OK);
    const float score[] = {0.2f, 0.7f, 0.7f};
    proto_rank_item items[3];
    int n = proto_rank_order(r.cand_id, score, r.num_cand, r.top_k, items);
    proto_rank_answer ans = {.request_id = r.request_id, .model_name = "qin",
                             .model_version = "1", .items = items,
                             .num_items = n, .took_us = 5};
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_rank_answer_encode(&ans, &b), CTR_OK);
    assert_string_equal(
        proto_buf_str(&b),
        "{\"request_id\":\"r\xc3\xa9\",\"model\":{\"name\":\"qin\","
        "\"version\":\"1\"},\"items\":[{\"item_id\":2,\"score\":0.699999988},"
        "{\"item_id\":3,\"score\":0.699999988}],\"took_us\":5,"
        "\"degraded\":[]}");
    proto_buf_free(&b);
}


/* --- Fast path against the tree path ------------------------------------ */

static uint64_t rng_state = 88172645463325252ull;
static unsigned rnd(unsigned n) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state % n);
}

static void same_request(const proto_rank_request *x, const proto_rank_request *y,
                         const char *body) {
    const proto_rank_schema *sc = pick2(NULL, x->model);
    int ok = (!x->model) == (!y->model) && (!x->model || strcmp(x->model, y->model) == 0) &&
             x->explain == y->explain && sc &&
             x->num_cand == y->num_cand && x->user_id_is_int == y->user_id_is_int &&
             strcmp(x->user_id, y->user_id) == 0 && x->has_item_seq == y->has_item_seq &&
             x->seq_len == y->seq_len && x->top_k == y->top_k &&
             (!x->request_id) == (!y->request_id) &&
             (!x->request_id || strcmp(x->request_id, y->request_id) == 0);
    for (int i = 0; ok && i < x->num_cand; i++) {
        ok = x->cand_id[i] == y->cand_id[i];
        for (int k = 0; ok && k < sc->num_ctx; k++)
            ok = x->ctx[i * sc->num_ctx + k] == y->ctx[i * sc->num_ctx + k];
    }
    for (int j = 0; ok && j < x->seq_len; j++) ok = x->item_seq[j] == y->item_seq[j];
    if (!ok) fail_msg("fast and tree paths disagree on %s", body);
}

/* A random request: valid most of the time, in varied layouts; then
 * mutated by a byte change now and then. */
static size_t random_request(char *b, size_t cap) {
    static const char *ws[] = {"", " ", "\n", "  \t", "\r\n"};
    size_t w = 0;
#define OUT(...) (w += (size_t)snprintf(b + w, cap - w, __VA_ARGS__))
#define WS() OUT("%s", ws[rnd(5)])
    OUT("{");
    int fields[7] = {0, 1, 2, 3, 4, 5, 6}, nf = 2 + (int)rnd(6);
    for (int i = 6; i > 0; i--) {
        int j = (int)rnd((unsigned)i + 1), t = fields[i];
        fields[i] = fields[j];
        fields[j] = t;
    }
    int have_user = 0, have_cand = 0;
    for (int f = 0; f < nf || !have_user || !have_cand; f++) {
        int which = f < nf ? fields[f] : !have_user ? 0 : 1;
        if (f) OUT(",");
        WS();
        switch (which) {
        case 0:
            have_user = 1;
            if (rnd(2)) OUT("\"user_id\":%s\"u%u\"", ws[rnd(5)], rnd(1000));
            else OUT("\"user_id\":%s%u", ws[rnd(5)], rnd(100000));
            break;
        case 1: {
            have_cand = 1;
            OUT("\"candidates\":[");
            int n = (int)rnd(6);
            for (int i = 0; i < n; i++) {
                OUT("%s{", i ? "," : "");
                int order = (int)rnd(3), nk = 0;
                const char *keys[3] = {"item_id", rnd(4) ? "likes_level" : "hour",
                                       "views_level"};
                for (int k = 0; k < 3; k++) {
                    int kk = (k + order) % 3;
                    if (kk && rnd(3) == 0) continue;
                    OUT("%s\"%s\":%s%u", nk++ ? "," : "", keys[kk], ws[rnd(5)],
                        kk ? rnd(12) : 1 + rnd(90000));
                }
                OUT("}");
            }
            OUT("%s]", ws[rnd(5)]);
            break;
        }
        case 2: {
            OUT("\"item_seq\":[");
            int n = (int)rnd(7);
            for (int i = 0; i < n; i++) OUT("%s%s%u", i ? "," : "", ws[rnd(5)], rnd(100));
            OUT("]");
            break;
        }
        case 3:
            OUT("\"top_k\":%u", rnd(4));
            break;
        case 4:
            OUT("\"request_id\":\"r-%u\"", rnd(100));
            break;
        case 5: {
            static const char *names[] = {"a", "b", "zz", ""};
            OUT("\"model\":%s\"%s\"", ws[rnd(5)], names[rnd(4)]);
            break;
        }
        case 6:
            OUT("\"explain\":%u", rnd(20));
            break;
        }
        WS();
    }
    OUT("}");
    WS();
#undef OUT
#undef WS
    if (rnd(3) == 0 && w > 0) { /* a mutation */
        static const char bytes[] = "{}[],:\"0-9.e \\a\x01\xc3";
        b[rnd((unsigned)w)] = bytes[rnd(sizeof bytes - 1)];
    }
    return w;
}

static void test_fast_path_agrees(void **state) {
    char body[4096], err2[256];
    int fast_taken = 0, valid = 0;
    for (int t = 0; t < 20000; t++) {
        size_t len = random_request(body, sizeof body);
        proto_rank_request f, tr;
        arena_reset(&A);
        int fast_ok = proto_rank_request_decode_fast(body, len, pick2, NULL, &A, &f);
        int rc = proto_rank_request_decode_tree(body, len, pick2, NULL, &A, &tr, err2, sizeof err2);
        valid += rc == CTR_OK;
        if (!fast_ok) continue;
        fast_taken++;
        body[len] = '\0';
        if (rc != CTR_OK) fail_msg("fast path accepted what the tree path refuses: %s (%s)", body, err2);
        same_request(&f, &tr, body);
    }
    /* The fast path must carry the plain requests, or it is dead code. */
    printf("fast path: %d of %d valid random requests\n", fast_taken, valid);
    assert_true(fast_taken > valid / 2);
}

static void test_fast_path_declines(void **state) {
    /* Each is valid for the tree path (or refused by it) but outside the
     * plain subset: the public decoder must still give the tree's answer. */
    static const char *odd[] = {
        "{\"user_id\": \"\\u0075\", \"candidates\": []}",          /* escape */
        "{\"user_id\": -5, \"candidates\": []}",                   /* negative */
        "{\"user_id\": \"u\", \"candidates\": [{\"item_id\": 1, \"likes_level\": -1}]}",
        "{\"user_id\": \"u\", \"candidates\": [], \"candidates\": []}", /* twice */
        "{\"user_id\": \"u\", \"candidates\": [{\"item_id\": 1.0}]}",
        "{\"user_id\": \"u\", \"candidates\": [{\"item_id\": 01}]}",
        "{\"user_id\": \"u\", \"candidates\": [{\"item_id\": 1}, {\"item_id\": 2}, "
        "{\"item_id\": 3}, {\"item_id\": 4}, {\"item_id\": 5}]}",     /* > max_cand */
        "{\"user_id\": \"u\", \"candidates\": [], \"top_k\": 0}",
        "{\"user_id\": \"u\", \"candidates\": [{\"likes_level\": 1}]}", /* no item_id */
        "{\"user_id\": \"u\", \"candidates\": [{\"item_id\": 1, \"x\": 1}]}",
        /* "model" after the default's candidates, naming another model. */
        "{\"user_id\": \"u\", \"candidates\": [{\"item_id\": 1, \"hour\": 2}], \"model\": \"b\"}",
        "{\"user_id\": \"u\", \"candidates\": [], \"model\": \"nope\"}",
        "{\"user_id\": \"u\", \"candidates\": [], \"explain\": 17}",
    };
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        proto_rank_request f, a, b;
        char e1[256] = "", e2[256] = "";
        size_t len = strlen(odd[i]);
        arena_reset(&A);
        assert_int_equal(proto_rank_request_decode_fast(odd[i], len, pick2, NULL, &A, &f), 0);
        int r1 = proto_rank_request_decode_pick(odd[i], len, pick2, NULL, &A, &a, e1, sizeof e1);
        int r2 = proto_rank_request_decode_tree(odd[i], len, pick2, NULL, &A, &b, e2, sizeof e2);
        assert_int_equal(r1, r2);
        assert_string_equal(e1, e2);
    }
}

/* "model" picks the schema the candidates and item_seq are decoded with,
 * wherever it stands in the body. */
static void test_decode_model(void **state) {
    proto_rank_request r;
    char e[256];
    static const char *bodies[] = {
        "{\"model\": \"b\", \"user_id\": \"u\", \"candidates\": [{\"item_id\": 3, \"hour\": 5}]}",
        "{\"user_id\": \"u\", \"candidates\": [{\"item_id\": 3, \"hour\": 5}], \"model\": \"b\"}",
        "{\"user_id\": \"u\", \"candidates\": [{\"item_id\": 3, \"hour\": 5}], \"model\": \"b\", "
        "\"request_id\": \"\\u0072\"}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        arena_reset(&A);
        int rc = proto_rank_request_decode_pick(bodies[i], strlen(bodies[i]), pick2, NULL, &A, &r,
                                                e, sizeof e);
        if (rc != CTR_OK) fail_msg("%s: %s", bodies[i], e);
        assert_string_equal(r.model, "b");
        assert_int_equal(r.num_cand, 1);
        assert_int_equal(r.ctx[0], 0);   /* views_level absent */
        assert_int_equal(r.ctx[1], 5);   /* hour */
    }
    /* The first is the plain subset: decoded in one pass, one pick. */
    picks = 0;
    assert_int_equal(proto_rank_request_decode_fast(bodies[0], strlen(bodies[0]), pick2, NULL,
                                                    &A, &r), 1);
    assert_int_equal(picks, 1);
    /* Absent: the default ("hour" is not its field). */
    const char *def = "{\"user_id\": \"u\", \"candidates\": [{\"item_id\": 3, \"likes_level\": 2}]}";
    assert_int_equal(proto_rank_request_decode_pick(def, strlen(def), pick2, NULL, &A, &r, e,
                                                    sizeof e), CTR_OK);
    assert_null(r.model);
    assert_int_equal(r.ctx[0], 2);
    /* Each model's limits: b takes 3 candidates and a history of 2. */
    const char *many = "{\"model\": \"b\", \"user_id\": 1, \"item_seq\": [1, 2, 3], "
                       "\"candidates\": []}";
    assert_int_equal(proto_rank_request_decode_pick(many, strlen(many), pick2, NULL, &A, &r, e,
                                                    sizeof e), CTR_ERANGE);
    assert_non_null(strstr(e, "item_seq"));
    /* Unknown, wrong type, empty, too long. */
    struct { const char *body; int rc; const char *msg; } bad[] = {
        {"{\"user_id\": 1, \"candidates\": [], \"model\": \"c\"}", CTR_ENOTFOUND,
         "model: no model named \"c\" here"},
        {"{\"user_id\": 1, \"candidates\": [], \"model\": 2}", CTR_EINVAL,
         "model: expected a string, got an integer"},
        {"{\"user_id\": 1, \"candidates\": [], \"model\": \"\"}", CTR_EINVAL, "model: 0 bytes"},
        {"{\"user_id\": 1, \"candidates\": [], \"model\": "
         "\"0123456789012345678901234567890123456789012345678901234567890123\"}",
         CTR_EINVAL, "model: 64 bytes, 1 to 63"},
        {"{\"user_id\": 1, \"candidates\": [], \"model\": null}", CTR_EINVAL, "model"},
        /* b's candidates with a's field: b's schema refuses it. */
        {"{\"model\": \"b\", \"user_id\": 1, \"candidates\": [{\"item_id\": 1, "
         "\"likes_level\": 1}]}", CTR_EINVAL, "candidates[0].likes_level: unknown field"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        e[0] = '\0';
        int rc = proto_rank_request_decode_pick(bad[i].body, strlen(bad[i].body), pick2, NULL, &A,
                                                &r, e, sizeof e);
        if (rc != bad[i].rc || !strstr(e, bad[i].msg))
            fail_msg("%s: got %d \"%s\", want %d \"%s\"", bad[i].body, rc, e, bad[i].rc,
                     bad[i].msg);
    }
    /* The single-schema decoder: any name, or only its own when named. */
    const char *named = "{\"user_id\": 1, \"candidates\": [], \"model\": \"x\"}";
    assert_int_equal(dec(named, &r), CTR_OK);
    proto_rank_schema own = schema;
    own.name = "qin";
    assert_int_equal(proto_rank_request_decode(named, strlen(named), &own, &A, &r, e, sizeof e),
                     CTR_ENOTFOUND);
}

static void test_decode_explain(void **state) {
    proto_rank_request r;
    assert_int_equal(dec("{\"user_id\": 1, \"candidates\": [], \"explain\": 3}", &r), CTR_OK);
    assert_int_equal(r.explain, 3);
    assert_int_equal(dec("{\"user_id\": 1, \"candidates\": [], \"explain\": 0}", &r), CTR_OK);
    assert_int_equal(r.explain, 0);
    assert_int_equal(dec("{\"user_id\": 1, \"candidates\": []}", &r), CTR_OK);
    assert_int_equal(r.explain, 0);
    assert_int_equal(dec("{\"user_id\": 1, \"candidates\": [], \"explain\": 16}", &r), CTR_OK);
    assert_int_equal(r.explain, 16);
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"explain\": 17}", CTR_ERANGE,
               "explain: 17 asked, at most 16");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"explain\": -1}", CTR_EINVAL,
               "explain: must be 0 or more");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"explain\": \"3\"}", CTR_EINVAL,
               "explain: expected an integer");
    EXPECT_ERR("{\"user_id\": 1, \"candidates\": [], \"explain\": true}", CTR_EINVAL,
               "explain");
}

/* Each item's explanation: its candidate's rows, -1 rows left out, ids
 * from the history the positions index. */
static void test_answer_explain(void **state) {
    proto_rank_item items[2] = {{7, 0.75f, 1}, {5, 0.25f, 0}};
    int64_t hist[4] = {40, 41, 42, 43};
    int32_t pos[2 * 3] = {3, -1, -1, /* candidate 1: */ 0, 2, 1};
    float w[2 * 3] = {0.5f, 0, 0, 1.0f / 3.0f, -0.125f, 1e-20f};
    proto_rank_answer ans = {.model_name = "din", .model_version = "1", .items = items,
                             .num_items = 2, .explain_k = 3, .explain_pos = pos,
                             .explain_weight = w, .hist_ids = hist};
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_rank_answer_encode(&ans, &b), CTR_OK);
    json_t *j = parse(&b);
    json_t *it = json_object_get(j, "items");
    json_t *x0 = json_object_get(json_array_get(it, 0), "explain");
    json_t *x1 = json_object_get(json_array_get(it, 1), "explain");
    assert_int_equal(json_array_size(x0), 3);
    assert_int_equal(json_array_size(x1), 1);
    int64_t want_id[3] = {40, 42, 41};
    for (int k = 0; k < 3; k++) {
        json_t *e = json_array_get(x0, k);
        assert_int_equal(json_object_size(e), 3);
        assert_int_equal(json_integer_value(json_object_get(e, "item_id")), want_id[k]);
        assert_int_equal(json_integer_value(json_object_get(e, "position")), pos[3 + k]);
        assert_true((float)json_number_value(json_object_get(e, "weight")) == w[3 + k]);
    }
    json_t *e = json_array_get(x1, 0);
    assert_int_equal(json_integer_value(json_object_get(e, "item_id")), 43);
    assert_int_equal(json_integer_value(json_object_get(e, "position")), 3);
    json_decref(j);
    /* Off: no field at all. */
    proto_buf_reset(&b);
    ans.explain_k = 0;
    assert_int_equal(proto_rank_answer_encode(&ans, &b), CTR_OK);
    j = parse(&b);
    assert_null(json_object_get(json_array_get(json_object_get(j, "items"), 0), "explain"));
    json_decref(j);
    proto_buf_free(&b);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_fast_path_agrees),
        T(test_fast_path_declines),
        T(test_decode_full),
        T(test_decode_minimal),
        T(test_decode_empty_lists),
        T(test_decode_limits),
        T(test_decode_bad_json),
        T(test_decode_wrong_shapes),
        T(test_decode_candidate_fields),
        T(test_decode_big_numbers_named),
        T(test_decode_optional_fields),
        T(test_decode_no_ctx_model),
        T(test_decode_null_err),
        T(test_decode_model),
        T(test_decode_explain),
        T(test_answer_explain),
        T(test_order),
        T(test_order_many_ties),
        T(test_answer_encode),
        T(test_answer_unscored),
        T(test_answer_float_roundtrip),
        T(test_answer_nonfinite),
        T(test_scores_encode),
        T(test_decode_order_encode),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
