/*
 * test_records.c - proto/records.c: item and user lines, good and refused.
 *
 * Each refusal is checked for its status and for the field named in the
 * message, since the message is what a user fixing a file reads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/base/status.h"
#include "proto/records.h"

#define MM 4
#define TAGS 5

#include "tests/fixture.h"

static int item(const char *line, proto_item *it) {
    err[0] = '\0';
    return proto_item_decode(line, strlen(line), TAGS, MM, &A, it, err,
                             sizeof err);
}

static int user(const char *line, int max_seq, proto_user *u) {
    err[0] = '\0';
    return proto_user_decode(line, strlen(line), max_seq, &A, u, err,
                             sizeof err);
}

#define EXPECT_ERR(call, status, sub)                                         \
    do {                                                                      \
        int rc_ = (call);                                                     \
        if (rc_ != (status) || !strstr(err, (sub)))                           \
            fail_msg("%s: got %d \"%s\", want %d with \"%s\"", #call, rc_,    \
                     err, (status), (sub));                                   \
    } while (0)

static void test_item_good(void **state) {
    proto_item it;
    assert_int_equal(item("{\"item_id\": 17, \"item_tags\": [3, 9, 0, 0, 0], "
                          "\"item_emb_d128\": [0.5, -1, 2e-3, 1.5e38], "
                          "\"extra\": {\"ignored\": [1, \"x\"]}}",
                          &it),
                     CTR_OK);
    assert_int_equal(it.item_id, 17);
    assert_int_equal(it.num_tags, 5);
    assert_int_equal(it.tags[0], 3);
    assert_int_equal(it.tags[1], 9);
    assert_int_equal(it.tags[4], 0);
    assert_int_equal(it.mm_dim, MM);
    assert_true(it.mm[0] == 0.5f);
    assert_true(it.mm[1] == -1.0f);
    assert_true(it.mm[2] == 2e-3f);
    assert_true(it.mm[3] == 1.5e38f);
}

static void test_item_fewer_tags_and_extremes(void **state) {
    proto_item it;
    assert_int_equal(item("{\"item_emb_d128\": [0, 0, 0, 0], \"item_tags\": "
                          "[2147483647, -2147483648], "
                          "\"item_id\": 9223372036854775807}",
                          &it),
                     CTR_OK);
    assert_int_equal(it.num_tags, 2);
    assert_int_equal(it.tags[0], INT32_MAX);
    assert_int_equal(it.tags[1], INT32_MIN);
    assert_true(it.item_id == INT64_MAX);
    assert_int_equal(item("{\"item_emb_d128\": [0, 0, 0, 0], \"item_tags\": "
                          "[], \"item_id\": -9223372036854775808}",
                          &it),
                     CTR_OK);
    assert_int_equal(it.num_tags, 0);
    assert_true(it.item_id == INT64_MIN);
}

static void test_item_refusals(void **state) {
    proto_item it;
    const char *emb = "\"item_emb_d128\": [0, 0, 0, 0]";
    char line[512];

    EXPECT_ERR(item("{\"item_id\": 17,", &it), CTR_EFORMAT, "line 1, column");
    EXPECT_ERR(item("", &it), CTR_EFORMAT, "line 1");
    EXPECT_ERR(item("[1, 2]", &it), CTR_EINVAL, "item: expected an object");
    EXPECT_ERR(item("{\"item_id\": 1, \"item_id\": 2}", &it), CTR_EFORMAT,
               "duplicate");

    snprintf(line, sizeof line, "{\"item_tags\": [], %s}", emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL, "item_id: missing field");
    snprintf(line, sizeof line, "{\"item_id\": \"17\", \"item_tags\": [], %s}",
             emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL,
               "item_id: expected an integer, got a string");
    snprintf(line, sizeof line, "{\"item_id\": 17.0, \"item_tags\": [], %s}",
             emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL, "item_id: expected an integer");
    snprintf(line, sizeof line, "{\"item_id\": 1e3, \"item_tags\": [], %s}",
             emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL, "item_id: expected an integer");
    snprintf(line, sizeof line, "{\"item_id\": null, \"item_tags\": [], %s}",
             emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL, "item_id: expected an integer, "
                                            "got null");
    snprintf(line, sizeof line,
             "{\"item_tags\": [], \"item_id\": 9223372036854775808, %s}", emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL,
               "item_id: integer outside the int64 range");
    snprintf(line, sizeof line,
             "{\"item_tags\": [], \"item_id\": -99999999999999999999, %s}",
             emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL,
               "item_id: integer outside the int64 range");

    snprintf(line, sizeof line, "{\"item_id\": 1, %s}", emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL, "item_tags: missing field");
    snprintf(line, sizeof line, "{\"item_id\": 1, \"item_tags\": 3, %s}", emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL,
               "item_tags: expected an array of integers, got an integer");
    snprintf(line, sizeof line,
             "{\"item_id\": 1, \"item_tags\": [1,2,3,4,5,6], %s}", emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL, "item_tags: 6 tags, at most 5");
    snprintf(line, sizeof line,
             "{\"item_id\": 1, \"item_tags\": [1, \"2\"], %s}", emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL,
               "item_tags[1]: expected an integer, got a string");
    snprintf(line, sizeof line,
             "{\"item_id\": 1, \"item_tags\": [1, 2, 2147483648], %s}", emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL,
               "item_tags[2]: 2147483648 is outside the int32 range");
    snprintf(line, sizeof line,
             "{\"item_id\": 1, \"item_tags\": [1, 2.5], %s}", emb);
    EXPECT_ERR(item(line, &it), CTR_EINVAL, "item_tags[1]: expected an integer");

    EXPECT_ERR(item("{\"item_id\": 1, \"item_tags\": []}", &it), CTR_EINVAL,
               "item_emb_d128: missing field");
    EXPECT_ERR(item("{\"item_id\": 1, \"item_tags\": [], \"item_emb_d128\": "
                    "{}}", &it),
               CTR_EINVAL, "item_emb_d128: expected an array of numbers");
    EXPECT_ERR(item("{\"item_id\": 1, \"item_tags\": [], \"item_emb_d128\": "
                    "[1, 2, 3]}", &it),
               CTR_EINVAL, "item_emb_d128: 3 numbers, the model needs 4");
    EXPECT_ERR(item("{\"item_id\": 1, \"item_tags\": [], \"item_emb_d128\": "
                    "[1, 2, 3, 4, 5]}", &it),
               CTR_EINVAL, "item_emb_d128: 5 numbers, the model needs 4");
    EXPECT_ERR(item("{\"item_id\": 1, \"item_tags\": [], \"item_emb_d128\": "
                    "[1, 2, \"3\", 4]}", &it),
               CTR_EINVAL, "item_emb_d128[2]: expected a number, got a string");
    EXPECT_ERR(item("{\"item_id\": 1, \"item_tags\": [], \"item_emb_d128\": "
                    "[1, 2, 3, true]}", &it),
               CTR_EINVAL, "item_emb_d128[3]: expected a number, got a boolean");
    /* Finite as a double, infinite as a float32. */
    EXPECT_ERR(item("{\"item_id\": 1, \"item_tags\": [], \"item_emb_d128\": "
                    "[1, -1e300, 3, 4]}", &it),
               CTR_EINVAL, "item_emb_d128[1]: -1e+300 is not a finite float32");
    /* Past double: jansson refuses it, we still name the field. */
    EXPECT_ERR(item("{\"item_id\": 1, \"item_tags\": [], \"item_emb_d128\": "
                    "[1, 2, 1e999, 4]}", &it),
               CTR_EINVAL, "item_emb_d128[2]: number too large");
    /* JSON has no NaN or Infinity. */
    EXPECT_ERR(item("{\"item_id\": 1, \"item_tags\": [], \"item_emb_d128\": "
                    "[NaN, 2, 3, 4]}", &it),
               CTR_EFORMAT, "line 1, column");
}

static void test_user_good(void **state) {
    proto_user u;
    assert_int_equal(user("{\"user_id\": \"u1\", \"item_seq\": [5, 0, 7], "
                          "\"label\": 1}",
                          10, &u),
                     CTR_OK);
    assert_string_equal(u.user_id, "u1");
    assert_int_equal(u.user_id_is_int, 0);
    assert_int_equal(u.seq_len, 3);
    assert_int_equal(u.item_seq[0], 5);
    assert_int_equal(u.item_seq[1], 0);
    assert_int_equal(u.item_seq[2], 7);

    assert_int_equal(user("{\"user_id\": -42, \"item_seq\": []}", 10, &u),
                     CTR_OK);
    assert_string_equal(u.user_id, "-42");
    assert_int_equal(u.user_id_is_int, 1);
    assert_int_equal(u.seq_len, 0);

    /* Unicode and escapes survive. */
    assert_int_equal(user("{\"user_id\": \"\\u00e9\\\"q\", \"item_seq\": [1]}",
                          -1, &u),
                     CTR_OK);
    assert_string_equal(u.user_id, "\xc3\xa9\"q");
}

static void test_user_refusals(void **state) {
    proto_user u;
    char line[600];
    EXPECT_ERR(user("{\"user_id\": \"u1\", \"item_seq\": [1,2", 10, &u),
               CTR_EFORMAT, "line 1, column");
    EXPECT_ERR(user("{\"item_seq\": []}", 10, &u), CTR_EINVAL,
               "user_id: missing field");
    EXPECT_ERR(user("{\"user_id\": 1.5, \"item_seq\": []}", 10, &u),
               CTR_EINVAL, "user_id: expected a string or an integer");
    EXPECT_ERR(user("{\"user_id\": true, \"item_seq\": []}", 10, &u),
               CTR_EINVAL, "user_id: expected a string or an integer, got a "
                           "boolean");
    EXPECT_ERR(user("{\"user_id\": \"\", \"item_seq\": []}", 10, &u),
               CTR_EINVAL, "user_id: must not be empty");
    memset(line, 0, sizeof line);
    strcpy(line, "{\"user_id\": \"");
    memset(line + strlen(line), 'x', 257);
    strcat(line, "\", \"item_seq\": []}");
    EXPECT_ERR(user(line, 10, &u), CTR_EINVAL,
               "user_id: 257 bytes, at most 256");
    EXPECT_ERR(user("{\"user_id\": 1}", 10, &u), CTR_EINVAL,
               "item_seq: missing field");
    EXPECT_ERR(user("{\"user_id\": 1, \"item_seq\": \"1 2 3\"}", 10, &u),
               CTR_EINVAL, "item_seq: expected an array of integers");
    EXPECT_ERR(user("{\"user_id\": 1, \"item_seq\": [1, 2, 3]}", 2, &u),
               CTR_ETOOBIG, "item_seq: 3 ids, at most 2");
    EXPECT_ERR(user("{\"user_id\": 1, \"item_seq\": [1, 2.0, 3]}", 10, &u),
               CTR_EINVAL, "item_seq[1]: expected an integer");
    EXPECT_ERR(user("{\"user_id\": 1, \"item_seq\": [1, 2, \"3\"]}", 10, &u),
               CTR_EINVAL, "item_seq[2]: expected an integer, got a string");
    EXPECT_ERR(user("{\"user_id\": 1, \"item_seq\": [1,\n 2, "
                    "99999999999999999999]}",
                    10, &u),
               CTR_EINVAL, "item_seq[2]: integer outside the int64 range");
    EXPECT_ERR(user("{\"user_id\": 99999999999999999999, \"item_seq\": []}",
                    10, &u),
               CTR_EINVAL, "user_id: integer outside the int64 range");
    EXPECT_ERR(user("\"u1\"", 10, &u), CTR_EFORMAT, "line 1");
}

static int event(const char *line, proto_user *u) {
    err[0] = '\0';
    return proto_event_decode(line, strlen(line), 4, &A, u, err, sizeof err);
}

/* Events of ctr-load --events: one id or a sequence to append. */
static void test_event(void **state) {
    proto_user u;
    assert_int_equal(event("{\"user_id\": \"u1\", \"item_id\": 17, \"time\": 1.5}", &u),
                     CTR_OK);
    assert_string_equal(u.user_id, "u1");
    assert_int_equal(u.seq_len, 1);
    assert_int_equal(u.item_seq[0], 17);
    assert_int_equal(event("{\"user_id\": 42, \"item_seq\": [3, 0, 9]}", &u), CTR_OK);
    assert_string_equal(u.user_id, "42");
    assert_int_equal(u.user_id_is_int, 1);
    assert_int_equal(u.seq_len, 3);
    assert_int_equal(u.item_seq[2], 9);
    EXPECT_ERR(event("{\"user_id\": 42}", &u), CTR_EINVAL, "item_id: missing field (or item_seq)");
    EXPECT_ERR(event("{\"user_id\": 42, \"item_id\": 1, \"item_seq\": [1]}", &u), CTR_EINVAL,
               "not both");
    EXPECT_ERR(event("{\"user_id\": 42, \"item_seq\": []}", &u), CTR_EINVAL,
               "item_seq: empty");
    EXPECT_ERR(event("{\"user_id\": 42, \"item_seq\": [1, 2, 3, 4, 5]}", &u), CTR_ETOOBIG,
               "5 ids, at most 4");
    EXPECT_ERR(event("{\"user_id\": 42, \"item_id\": \"17\"}", &u), CTR_EINVAL,
               "item_id: expected an integer");
    EXPECT_ERR(event("{\"item_id\": 17}", &u), CTR_EINVAL, "user_id: missing field");
    EXPECT_ERR(event("[17]", &u), CTR_EINVAL, "event: expected an object");
    EXPECT_ERR(event("{\"user_id\": 4", &u), CTR_EFORMAT, "line 1");
}

/* A schema: TIN items (id and category, tags and embedding not read) and
 * the category's refusals. */
static void test_item_schema(void **state) {
    (void)state;
    proto_item it;
    const proto_item_schema tin = {-1, -1, 1};
    const char *line = "{\"item_id\": 0, \"cate_id\": 5, \"item_tags\": \"ignored\"}";
    assert_int_equal(proto_item_decode_schema(line, strlen(line), &tin, &A, &it, err, sizeof err),
                     CTR_OK);
    assert_int_equal(it.item_id, 0);
    assert_int_equal(it.has_cate, 1);
    assert_int_equal(it.cate, 5);
    assert_int_equal(it.num_tags, 0);
    assert_int_equal(it.mm_dim, 0);
    assert_null(it.tags);
    line = "{\"item_id\": 3}";
    EXPECT_ERR(proto_item_decode_schema(line, strlen(line), &tin, &A, &it, err, sizeof err),
               CTR_EINVAL, "cate_id: missing field");
    line = "{\"item_id\": 3, \"cate_id\": 2147483648}";
    EXPECT_ERR(proto_item_decode_schema(line, strlen(line), &tin, &A, &it, err, sizeof err),
               CTR_EINVAL, "cate_id");
    line = "{\"item_id\": 3, \"cate_id\": 1.5}";
    EXPECT_ERR(proto_item_decode_schema(line, strlen(line), &tin, &A, &it, err, sizeof err),
               CTR_EINVAL, "cate_id");
    /* The plain decoder reads no category, even when the line has one. */
    line = "{\"item_id\": 3, \"cate_id\": 9, \"item_tags\": [], "
           "\"item_emb_d128\": [1, 2, 3, 4]}";
    assert_int_equal(item(line, &it), CTR_OK);
    assert_int_equal(it.has_cate, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_item_good, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_fewer_tags_and_extremes,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_good, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
