/*
 * test_features.c - proto/features.c: the binary Redis values.
 *
 * Round trips, the exact bytes of the layout (little-endian whatever the
 * host, which is what lets a value written on one machine be read on
 * another), and every refusal of the strict decoders, each checked for its
 * status and for the words of its message.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/base/status.h"
#include "proto/features.h"

#include "tests/fixture.h"

#define EXPECT_ERR(call, status, sub)                                         \
    do {                                                                      \
        err[0] = '\0';                                                        \
        int rc_ = (call);                                                     \
        if (rc_ != (status) || !strstr(err, (sub)))                           \
            fail_msg("%s: got %d \"%s\", want %d with \"%s\"", #call, rc_,    \
                     err, (status), (sub));                                   \
    } while (0)

static const int32_t TAGS[5] = {3, 9, 0x01020304, -1, 0};
static const float MM[4] = {1.0f, -2.5f, 0.0f, 3.4e38f};

/* A valid item value: 5 tags, 4 floats (8 + 20 + 16 = 44 bytes). */
static size_t good_item(unsigned char *buf) {
    size_t len = 0;
    assert_int_equal(features_item_encode(TAGS, 5, MM, 4, buf, 64, &len, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(len, 44);
    return len;
}

static void test_item_bytes(void **state) {
    unsigned char buf[64];
    good_item(buf);
    static const unsigned char head[] = {'C', 'I', 1, 5, 4, 0, 0, 0};
    assert_memory_equal(buf, head, sizeof head);
    /* tags[2] = 0x01020304 little-endian; tags[3] = -1 as two's complement */
    static const unsigned char t2[] = {4, 3, 2, 1, 0xff, 0xff, 0xff, 0xff};
    assert_memory_equal(buf + 8 + 8, t2, sizeof t2);
    /* mm[0] = 1.0f = 0x3f800000, mm[1] = -2.5f = 0xc0200000 */
    static const unsigned char f[] = {0, 0, 0x80, 0x3f, 0, 0, 0x20, 0xc0};
    assert_memory_equal(buf + 8 + 20, f, sizeof f);
}

static void test_item_round_trip(void **state) {
    unsigned char buf[64];
    size_t len = good_item(buf);
    features_item it;
    assert_int_equal(features_item_decode(buf, len, 5, 4, &A, &it, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(it.num_tags, 5);
    assert_memory_equal(it.tags, TAGS, sizeof TAGS);
    assert_int_equal(it.mm_dim, 4);
    assert_memory_equal(it.mm, MM, sizeof MM);
    assert_int_equal((uintptr_t)it.mm % 64, 0);

    /* Fewer tags than the model's slots: fine, the rest is padding. */
    assert_int_equal(features_item_decode(buf, len, 8, 4, &A, &it, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(it.num_tags, 5);
}

static void test_item_empty_parts(void **state) {
    unsigned char buf[16];
    size_t len = 0;
    assert_int_equal(features_item_encode(NULL, 0, NULL, 0, buf, sizeof buf,
                                          &len, err, sizeof err),
                     CTR_OK);
    assert_int_equal(len, 8);
    features_item it;
    assert_int_equal(features_item_decode(buf, len, 5, 0, &A, &it, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(it.num_tags, 0);
    assert_null(it.tags);
    assert_int_equal(it.mm_dim, 0);
    assert_null(it.mm);

    /* No tags but an embedding. */
    assert_int_equal(features_item_encode(NULL, 0, MM, 4, buf, sizeof buf,
                                          &len, err, sizeof err),
                     CTR_EINVAL);  /* 24 bytes do not fit in 16 */
    unsigned char big[32];
    assert_int_equal(features_item_encode(NULL, 0, MM, 4, big, sizeof big,
                                          &len, err, sizeof err),
                     CTR_OK);
    assert_int_equal(features_item_decode(big, len, 5, 4, &A, &it, err,
                                          sizeof err),
                     CTR_OK);
    assert_null(it.tags);
    assert_memory_equal(it.mm, MM, sizeof MM);
}

static void test_item_sizes(void **state) {
    assert_int_equal(features_item_size(5, 128), 8 + 20 + 512);
    assert_int_equal(features_item_size(255, 65535), 8 + 1020 + 262140);
    assert_int_equal(features_item_size(-1, 4), 0);
    assert_int_equal(features_item_size(256, 4), 0);
    assert_int_equal(features_item_size(5, -1), 0);
    assert_int_equal(features_item_size(5, 65536), 0);
}

static void test_item_encode_refusals(void **state) {
    unsigned char buf[64];
    size_t len;
    float bad[4];
    memcpy(bad, MM, sizeof bad);
    EXPECT_ERR(features_item_encode(TAGS, 256, MM, 4, buf, 64, &len, err,
                                    sizeof err),
               CTR_EINVAL, "256 tags");
    EXPECT_ERR(features_item_encode(TAGS, -1, MM, 4, buf, 64, &len, err,
                                    sizeof err),
               CTR_EINVAL, "-1 tags");
    EXPECT_ERR(features_item_encode(TAGS, 5, MM, 65536, buf, 64, &len, err,
                                    sizeof err),
               CTR_EINVAL, "width 65536");
    EXPECT_ERR(features_item_encode(TAGS, 5, MM, 4, buf, 43, &len, err,
                                    sizeof err),
               CTR_EINVAL, "needs 44");
    EXPECT_ERR(features_item_encode(NULL, 5, MM, 4, buf, 64, &len, err,
                                    sizeof err),
               CTR_EINVAL, "NULL");
    bad[2] = NAN;
    EXPECT_ERR(features_item_encode(TAGS, 5, bad, 4, buf, 64, &len, err,
                                    sizeof err),
               CTR_EINVAL, "embedding[2] is not finite");
    bad[2] = 0.0f;
    bad[3] = -INFINITY;
    EXPECT_ERR(features_item_encode(TAGS, 5, bad, 4, buf, 64, &len, err,
                                    sizeof err),
               CTR_EINVAL, "embedding[3] is not finite");
}

static void test_item_decode_refusals(void **state) {
    unsigned char good[64], buf[80];
    size_t len = good_item(good);
    features_item it;
#define DECODE(b, l, tags, mm) features_item_decode(b, l, tags, mm, &A, &it, err, sizeof err)
#define RESET() memcpy(buf, good, len)

    EXPECT_ERR(DECODE(good, 7, 5, 4), CTR_EFORMAT, "shorter than its 8-byte header");
    EXPECT_ERR(DECODE(good, 0, 5, 4), CTR_EFORMAT, "0 bytes");
    RESET(); buf[0] = 'X';
    EXPECT_ERR(DECODE(buf, len, 5, 4), CTR_EFORMAT, "not an item value");
    RESET(); buf[1] = 'U';  /* a user value where an item was expected */
    EXPECT_ERR(DECODE(buf, len, 5, 4), CTR_EFORMAT, "not an item value");
    RESET(); buf[2] = 3;    /* 1 and 2 (with a category) are known */
    EXPECT_ERR(DECODE(buf, len, 5, 4), CTR_EFORMAT, "version 3");
    RESET(); buf[2] = 2;    /* version 2 needs its flag and 4 more bytes */
    EXPECT_ERR(DECODE(buf, len, 5, 4), CTR_EFORMAT, "flags");
    RESET(); buf[6] = 1;
    EXPECT_ERR(DECODE(buf, len, 5, 4), CTR_EFORMAT, "reserved");
    RESET(); buf[7] = 0x80;
    EXPECT_ERR(DECODE(buf, len, 5, 4), CTR_EFORMAT, "reserved");
    EXPECT_ERR(DECODE(good, len, 4, 4), CTR_EFORMAT, "5 tags, the model has 4");
    EXPECT_ERR(DECODE(good, len, 5, 8), CTR_EFORMAT, "width 4, the model needs 8");
    EXPECT_ERR(DECODE(good, len - 1, 5, 4), CTR_EFORMAT, "43 bytes, its header says 44");
    RESET(); buf[len] = 0;
    EXPECT_ERR(DECODE(buf, len + 1, 5, 4), CTR_EFORMAT, "45 bytes, its header says 44");
    RESET(); buf[3] = 4;  /* header claims fewer tags than are there */
    EXPECT_ERR(DECODE(buf, len, 5, 4), CTR_EFORMAT, "header says 40");

    /* Non-finite floats: a NaN (0x7fc00000) and +inf (0x7f800000). */
    static const unsigned char nan_le[] = {0, 0, 0xc0, 0x7f};
    static const unsigned char inf_le[] = {0, 0, 0x80, 0x7f};
    RESET(); memcpy(buf + 8 + 20 + 4, nan_le, 4);
    EXPECT_ERR(DECODE(buf, len, 5, 4), CTR_EFORMAT, "embedding[1] is not finite");
    RESET(); memcpy(buf + 8 + 20 + 12, inf_le, 4);
    EXPECT_ERR(DECODE(buf, len, 5, 4), CTR_EFORMAT, "embedding[3] is not finite");
#undef DECODE
#undef RESET
}

/* --- users --------------------------------------------------------------- */

static const int64_t SEQ[5] = {7, 0, 2147483647, 0x01020304, 42};

static void test_user_bytes_and_round_trip(void **state) {
    unsigned char buf[64];
    size_t len = 0;
    assert_int_equal(features_user_encode(SEQ, 5, buf, sizeof buf, &len, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(len, 28);
    assert_int_equal(features_user_size(5), 28);
    static const unsigned char head[] = {'C', 'U', 1, 0, 5, 0, 0, 0};
    assert_memory_equal(buf, head, sizeof head);
    static const unsigned char id3[] = {4, 3, 2, 1};
    assert_memory_equal(buf + 8 + 12, id3, 4);

    int64_t *ids;
    int n;
    assert_int_equal(features_user_decode(buf, len, -1, &A, &ids, &n, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(ids, SEQ, sizeof SEQ);

    /* keep: the most recent ids, still oldest first. */
    assert_int_equal(features_user_decode(buf, len, 2, &A, &ids, &n, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 0x01020304);
    assert_int_equal(ids[1], 42);
    assert_int_equal(features_user_decode(buf, len, 5, &A, &ids, &n, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(n, 5);
    assert_int_equal(features_user_decode(buf, len, 0, &A, &ids, &n, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(n, 0);
    assert_null(ids);
}

static void test_user_empty(void **state) {
    unsigned char buf[8];
    size_t len = 0;
    assert_int_equal(features_user_encode(NULL, 0, buf, sizeof buf, &len, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(len, 8);
    int64_t *ids = (int64_t *)1;
    int n = -1;
    assert_int_equal(features_user_decode(buf, len, 100, &A, &ids, &n, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(n, 0);
    assert_null(ids);
}

static void test_user_encode_refusals(void **state) {
    unsigned char buf[64];
    size_t len;
    int64_t bad[3] = {1, -1, 2};
    EXPECT_ERR(features_user_encode(bad, 3, buf, sizeof buf, &len, err,
                                    sizeof err),
               CTR_EINVAL, "item_seq[1] = -1");
    bad[1] = 2147483648LL;
    EXPECT_ERR(features_user_encode(bad, 3, buf, sizeof buf, &len, err,
                                    sizeof err),
               CTR_EINVAL, "item_seq[1] = 2147483648");
    EXPECT_ERR(features_user_encode(SEQ, 5, buf, 27, &len, err, sizeof err),
               CTR_EINVAL, "needs 28");
    EXPECT_ERR(features_user_encode(SEQ, -1, buf, 64, &len, err, sizeof err),
               CTR_EINVAL, "n = -1");
    assert_int_equal(features_user_size((size_t)UINT32_MAX + 1), 0);
}

static void test_user_decode_refusals(void **state) {
    unsigned char good[64], buf[80];
    size_t len;
    assert_int_equal(features_user_encode(SEQ, 5, good, sizeof good, &len, err,
                                          sizeof err),
                     CTR_OK);
    int64_t *ids;
    int n;
#define DECODE(b, l, keep) features_user_decode(b, l, keep, &A, &ids, &n, err, sizeof err)
#define RESET() memcpy(buf, good, len)

    EXPECT_ERR(DECODE(good, 4, -1), CTR_EFORMAT, "shorter than its 8-byte header");
    RESET(); buf[1] = 'I';
    EXPECT_ERR(DECODE(buf, len, -1), CTR_EFORMAT, "not a user value");
    RESET(); buf[0] = 'c';
    EXPECT_ERR(DECODE(buf, len, -1), CTR_EFORMAT, "not a user value");
    RESET(); buf[2] = 0;
    EXPECT_ERR(DECODE(buf, len, -1), CTR_EFORMAT, "version 0");
    RESET(); buf[3] = 1;
    EXPECT_ERR(DECODE(buf, len, -1), CTR_EFORMAT, "reserved");
    EXPECT_ERR(DECODE(good, len - 4, -1), CTR_EFORMAT, "24 bytes, its header says 5 ids");
    EXPECT_ERR(DECODE(good, len - 1, -1), CTR_EFORMAT, "27 bytes");
    RESET(); memset(buf + len, 0, 4);
    EXPECT_ERR(DECODE(buf, len + 4, -1), CTR_EFORMAT, "32 bytes, its header says 5 ids");
    /* A count near 2^32 with a short value: refused without allocating. */
    RESET(); buf[4] = buf[5] = buf[6] = buf[7] = 0xff;
    EXPECT_ERR(DECODE(buf, len, -1), CTR_EFORMAT, "4294967295 ids");
    /* A negative id, even in the part keep would drop. */
    RESET(); buf[8 + 3] = 0x80;
    EXPECT_ERR(DECODE(buf, len, -1), CTR_EFORMAT, "id [0] is negative");
    EXPECT_ERR(DECODE(buf, len, 1), CTR_EFORMAT, "id [0] is negative");
    /* An item value where a user value was expected. */
    unsigned char item[64];
    size_t ilen = good_item(item);
    EXPECT_ERR(DECODE(item, ilen, -1), CTR_EFORMAT, "not a user value");
#undef DECODE
#undef RESET
}


/* Version 2 user values: max_seq where version 1 had the count, the count
 * from the length; both versions decode alike. */
static void test_user_v2(void **state) {
    unsigned char buf[64], v1[64];
    size_t len = 0, len1 = 0;
    assert_int_equal(features_user_encode_v2(SEQ, 5, 1000, buf, sizeof buf, &len, err,
                                             sizeof err),
                     CTR_OK);
    assert_int_equal(len, 28);
    static const unsigned char head[] = {'C', 'U', 2, 0, 0xe8, 3, 0, 0};
    assert_memory_equal(buf, head, sizeof head);
    /* The ids are laid out as in version 1. */
    assert_int_equal(features_user_encode(SEQ, 5, v1, sizeof v1, &len1, err, sizeof err),
                     CTR_OK);
    assert_int_equal(len1, len);
    assert_memory_equal(buf + 8, v1 + 8, len - 8);

    int64_t *ids;
    int n;
    assert_int_equal(features_user_decode(buf, len, -1, &A, &ids, &n, err, sizeof err), CTR_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(ids, SEQ, sizeof SEQ);
    assert_int_equal(features_user_decode(buf, len, 2, &A, &ids, &n, err, sizeof err), CTR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[1], 42);

    /* The header alone, for readers that fetch it apart from the tail. */
    uint32_t count = 9, max_seq = 9;
    assert_int_equal(features_user_header(buf, len, &count, &max_seq, err, sizeof err), CTR_OK);
    assert_int_equal(count, 5);
    assert_int_equal(max_seq, 1000);
    assert_int_equal(features_user_header(v1, len1, &count, &max_seq, err, sizeof err), CTR_OK);
    assert_int_equal(count, 5);
    assert_int_equal(max_seq, 0);
    /* Appended to (more ids than max_seq included): still valid. */
    assert_int_equal(features_user_header(buf, len + 400, &count, &max_seq, err, sizeof err),
                     CTR_OK);
    assert_int_equal(count, 105);
    /* An empty history. */
    assert_int_equal(features_user_encode_v2(NULL, 0, 3, buf, sizeof buf, &len, err,
                                             sizeof err),
                     CTR_OK);
    assert_int_equal(len, 8);
    assert_int_equal(features_user_decode(buf, len, 10, &A, &ids, &n, err, sizeof err), CTR_OK);
    assert_int_equal(n, 0);
    assert_null(ids);

    /* Refusals. */
    EXPECT_ERR(features_user_encode_v2(SEQ, 5, 0, buf, sizeof buf, &len, err, sizeof err),
               CTR_EINVAL, "max_seq 0");
    assert_int_equal(features_user_encode_v2(SEQ, 5, 4, buf, sizeof buf, &len, err,
                                             sizeof err),
                     CTR_OK);
    EXPECT_ERR(features_user_decode(buf, len - 2, -1, &A, &ids, &n, err, sizeof err),
               CTR_EFORMAT, "not 8 + 4 n");
    EXPECT_ERR(features_user_header(buf, len - 1, &count, &max_seq, err, sizeof err),
               CTR_EFORMAT, "not 8 + 4 n");
    buf[4] = 0;
    EXPECT_ERR(features_user_decode(buf, len, -1, &A, &ids, &n, err, sizeof err), CTR_EFORMAT,
               "max_seq is 0");
    buf[4] = 4;
    buf[3] = 1;
    EXPECT_ERR(features_user_header(buf, len, &count, &max_seq, err, sizeof err), CTR_EFORMAT,
               "reserved");
    buf[3] = 0;
    buf[2] = 3;
    EXPECT_ERR(features_user_decode(buf, len, -1, &A, &ids, &n, err, sizeof err), CTR_EFORMAT,
               "version 3");
    buf[2] = 2;
    buf[8 + 4 * 4 + 3] = 0x80;
    EXPECT_ERR(features_user_decode(buf, len, 1, &A, &ids, &n, err, sizeof err), CTR_EFORMAT,
               "id [4] is negative");
    EXPECT_ERR(features_user_header(buf, 4, &count, &max_seq, err, sizeof err), CTR_EFORMAT,
               "shorter");

    /* The trim rule the Redis function shares. */
    assert_int_equal(features_user_trim_at(1), 2);
    assert_int_equal(features_user_trim_at(7), 8);
    assert_int_equal(features_user_trim_at(8), 10);
    assert_int_equal(features_user_trim_at(1000), 1250);
    assert_int_equal(features_user_trim_at(UINT32_MAX), (uint64_t)UINT32_MAX + UINT32_MAX / 4);
}

/* Version 2: a category after the embedding; version 1 stays byte for
 * byte what it was, and both decode. */
static void test_item_category(void **state) {
    unsigned char buf[64];
    size_t len = 0;
    assert_int_equal(features_item_cate_size(0, 0), 12);
    assert_int_equal(features_item_cate_size(5, 4), 48);
    assert_int_equal(features_item_encode_cate(NULL, 0, NULL, 0, 0x01020304, buf, sizeof buf,
                                               &len, err, sizeof err),
                     CTR_OK);
    static const unsigned char tin[] = {'C', 'I', 2, 0, 0, 0, 1, 0, 4, 3, 2, 1};
    assert_int_equal(len, sizeof tin);
    assert_memory_equal(buf, tin, sizeof tin);
    features_item it;
    assert_int_equal(features_item_decode(buf, len, 0, 0, &A, &it, err, sizeof err), CTR_OK);
    assert_int_equal(it.has_cate, 1);
    assert_int_equal(it.cate, 0x01020304);
    assert_int_equal(it.num_tags, 0);
    /* With tags and embedding too, and a negative id (two's complement). */
    assert_int_equal(features_item_encode_cate(TAGS, 5, MM, 4, -2, buf, sizeof buf, &len, err,
                                               sizeof err),
                     CTR_OK);
    assert_int_equal(len, 48);
    assert_int_equal(features_item_decode(buf, len, 5, 4, &A, &it, err, sizeof err), CTR_OK);
    assert_int_equal(it.cate, -2);
    assert_int_equal(it.tags[2], TAGS[2]);
    assert_true(it.mm[1] == MM[1]);
    /* A version 1 value decodes with no category. */
    len = good_item(buf);
    assert_int_equal(features_item_decode(buf, len, 5, 4, &A, &it, err, sizeof err), CTR_OK);
    assert_int_equal(it.has_cate, 0);
    assert_int_equal(it.cate, 0);
    /* Refusals: version 2 without its flag, an unknown flag bit, a version
     * 1 value with the flag, the category's bytes missing or extra. */
    assert_int_equal(features_item_encode_cate(NULL, 0, NULL, 0, 7, buf, sizeof buf, &len, err,
                                               sizeof err),
                     CTR_OK);
    buf[6] = 0;
    EXPECT_ERR(features_item_decode(buf, len, 0, 0, &A, &it, err, sizeof err), CTR_EFORMAT,
               "flags");
    buf[6] = 3;
    EXPECT_ERR(features_item_decode(buf, len, 0, 0, &A, &it, err, sizeof err), CTR_EFORMAT,
               "flags");
    buf[6] = 1;
    buf[2] = 1;
    EXPECT_ERR(features_item_decode(buf, len, 0, 0, &A, &it, err, sizeof err), CTR_EFORMAT,
               "reserved");
    buf[2] = 2;
    EXPECT_ERR(features_item_decode(buf, len - 1, 0, 0, &A, &it, err, sizeof err), CTR_EFORMAT,
               "header says");
    buf[2] = 3;
    EXPECT_ERR(features_item_decode(buf, len, 0, 0, &A, &it, err, sizeof err), CTR_EFORMAT,
               "version 3");
    EXPECT_ERR(features_item_encode_cate(NULL, 0, NULL, 0, 7, buf, 11, &len, err, sizeof err),
               CTR_EINVAL, "needs 12");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_item_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_empty_parts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_encode_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_decode_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_category, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_bytes_and_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_encode_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_decode_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_v2, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
