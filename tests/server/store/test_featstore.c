/*
 * test_featstore.c - server/store/featstore.c, the feature store's front
 * end: parameters, keys, and the decoding of histories, items and the
 * feature-set marker, against a real Redis ($CTR_REDIS, host:port, which
 * tests/run.sh always provides; the test fails without it) through the
 * one-node backend.  What the backends do with connections (timeouts,
 * breakers, resends) is tested in test_featstore_single.c and
 * test_featstore_cluster.c.
 *
 * Every key this run writes starts with a prefix of its own (pid and time),
 * so runs sharing a Redis never see each other's data; the keys are
 * deleted at the end.  Tests that count commands in Redis's INFO assume no
 * other client runs GETRANGE meanwhile (run.sh runs test binaries one at a
 * time).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "core/base/clock.h"
#include "core/base/status.h"
#include "proto/features.h"
#include "server/store/featstore.h"

#include "tests/server/store/store_fixture.h"

/* fs_params() on $CTR_REDIS. */
static featstore_params params(void) {
    featstore_params p = fs_params();
    p.addr = redis_addr;
    return p;
}

/* --- password files ----------------------------------------------------- */

static const char *write_tmp(const char *text, size_t len) {
    static char path[64];
    snprintf(path, sizeof path, "/tmp/test_featstore_pw.%ld", (long)getpid());
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
    return path;
}


static void test_password_file(void **state) {
    char buf[16];
    const char *path = write_tmp("hunter2\nsecond line\n", 20);
    assert_int_equal(featstore_password_file(path, buf, sizeof buf, err, sizeof err), CTR_OK);
    assert_string_equal(buf, "hunter2");
    path = write_tmp("hunter2\r\n", 9);
    assert_int_equal(featstore_password_file(path, buf, sizeof buf, err, sizeof err), CTR_OK);
    assert_string_equal(buf, "hunter2");
    path = write_tmp("no newline", 10);
    assert_int_equal(featstore_password_file(path, buf, sizeof buf, err, sizeof err), CTR_OK);
    assert_string_equal(buf, "no newline");
    path = write_tmp("\nhunter2\n", 9);
    assert_int_equal(featstore_password_file(path, buf, sizeof buf, err, sizeof err),
                     CTR_EINVAL);
    assert_non_null(strstr(err, "empty"));
    path = write_tmp("0123456789abcdefXYZ\n", 20);   /* 19 bytes: more than 15 */
    assert_int_equal(featstore_password_file(path, buf, sizeof buf, err, sizeof err),
                     CTR_EINVAL);
    assert_null(strstr(err, "0123"));
    assert_string_equal(buf, "");
    unlink(path);
    assert_int_equal(featstore_password_file(path, buf, sizeof buf, err, sizeof err), CTR_EIO);
    assert_non_null(strstr(err, path));
}

static void test_open_refusals(void **state) {
    featstore_params p = params();
    featstore *fs = (featstore *)1;
    const char *bad[] = {"localhost", "127.0.0.1:", "127.0.0.1:0",
                         "127.0.0.1:65536", "127.0.0.1:12x", ":6379",
                         "::1:6379", "[::1:6379", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        p.addr = bad[i];
        err[0] = '\0';
        int rc = featstore_open(&p, &fs, err, sizeof err);
        if (rc != CTR_EINVAL) fail_msg("addr \"%s\": %d", bad[i], rc);
        assert_null(fs);
        assert_true(err[0] != '\0');
    }
    p = params();
    p.command_timeout_ms = 0;
    assert_int_equal(featstore_open(&p, &fs, err, sizeof err), CTR_EINVAL);
    p = params();
    p.prefix = NULL;
    assert_int_equal(featstore_open(&p, &fs, err, sizeof err), CTR_EINVAL);
    p = params();
    p.max_tags = 256;
    assert_int_equal(featstore_open(&p, &fs, err, sizeof err), CTR_EINVAL);

    /* IPv6 in brackets and unix paths are accepted (nothing connects yet). */
    p = params();
    p.addr = "[::1]:6379";
    fs = open_fs(&p);
    featstore_close(fs);
    p.addr = "/nonexistent/redis.sock";
    fs = open_fs(&p);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND);
    featstore_close(fs);
    featstore_close(NULL);
}

static void test_users(void **state) {
    featstore_params p = params();
    featstore *fs = open_fs(&p);
    unsigned char buf[256];
    size_t len;
    int64_t seq[6] = {5, 0, 7, 8, 9, 10};
    assert_int_equal(features_user_encode(seq, 3, buf, sizeof buf, &len, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(featstore_put_user(fs, "alice", buf, len, err, sizeof err),
                     CTR_OK);
    assert_int_equal(features_user_encode(seq, 6, buf, sizeof buf, &len, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(featstore_put_user(fs, "42", buf, len, err, sizeof err),
                     CTR_OK);
    assert_int_equal(features_user_encode(NULL, 0, buf, sizeof buf, &len, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(featstore_put_user(fs, "idle", buf, len, err, sizeof err),
                     CTR_OK);
    assert_int_equal(featstore_pending(fs), 3);
    /* Reading with SETs queued would mix up the replies. */
    int64_t *ids;
    int n;
    assert_int_equal(featstore_get_user(fs, "alice", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_EINVAL);
    assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_OK);
    assert_int_equal(featstore_pending(fs), 0);

    assert_int_equal(featstore_get_user(fs, "alice", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 5);
    assert_int_equal(ids[1], 0);
    assert_int_equal(ids[2], 7);

    /* Longer than max_seq (4): the most recent four. */
    assert_int_equal(featstore_get_user(fs, "42", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_OK);
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], 7);
    assert_int_equal(ids[3], 10);

    assert_int_equal(featstore_get_user(fs, "idle", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_OK);
    assert_int_equal(n, 0);
    assert_null(ids);

    n = 99;
    assert_int_equal(featstore_get_user(fs, "nobody", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_ENOTFOUND);
    assert_int_equal(n, 0);
    assert_null(ids);

    /* Malformed values: bytes that are not a user value, an item value,
     * and a key of another type. */
    admin_do(admin, "SET %su:junk %b", prefix, "hello world", (size_t)11);
    assert_int_equal(featstore_get_user(fs, "junk", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_EFORMAT);
    assert_non_null(strstr(err, "junk"));
    assert_non_null(strstr(err, "not a user value"));
    len = make_item(3, buf, sizeof buf);
    admin_do(admin, "SET %su:item %b", prefix, buf, len);
    assert_int_equal(featstore_get_user(fs, "item", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_EFORMAT);
    admin_do(admin, "RPUSH %su:list a b", prefix);
    assert_int_equal(featstore_get_user(fs, "list", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_EFORMAT);
    assert_non_null(strstr(err, "WRONGTYPE"));
    assert_int_equal(n, 0);

    /* The connection is still good after all that. */
    assert_int_equal(featstore_get_user(fs, "alice", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_OK);
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.users_malformed, 3);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.connects, 1);
    featstore_close(fs);
}

static void test_items(void **state) {
    featstore_params p = params();
    featstore *fs = open_fs(&p);
    unsigned char buf[256];
    int64_t have[] = {1, 17, 9000000000LL, -3};
    for (int i = 0; i < 4; i++) {
        size_t len = make_item(have[i], buf, sizeof buf);
        assert_int_equal(featstore_put_item(fs, have[i], buf, len, err,
                                            sizeof err),
                         CTR_OK);
    }
    assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_OK);

    /* Malformed: wrong embedding width for this model, garbage, a hash. */
    {
        float mm[MM + 1] = {0};
        size_t len;
        assert_int_equal(features_item_encode(NULL, 0, mm, MM + 1, buf,
                                              sizeof buf, &len, err,
                                              sizeof err),
                         CTR_OK);
        admin_do(admin, "SET %si:50 %b", prefix, buf, len);
        admin_do(admin, "SET %si:51 %b", prefix, "CI", (size_t)2);
        admin_do(admin, "HSET %si:52 f v", prefix);
    }

    int64_t ask[] = {17, 2, 50, 1, 51, 52, 9000000000LL, 17, -3};
    int n = (int)(sizeof ask / sizeof *ask);
    featstore_item out[9];
    featstore_stats before, after;
    featstore_stats_get(fs, &before);
    long long mget0 = admin_calls(admin, "getrange");
    assert_int_equal(featstore_get_items(fs, ask, n, 0, &A, out, err, sizeof err),
                     CTR_OK);
    long long mget1 = admin_calls(admin, "getrange");
    featstore_stats_get(fs, &after);
    assert_int_equal(mget1 - mget0, n);                 /* one GETRANGE each, */
    assert_int_equal(after.round_trips - before.round_trips, 1);

    check_item(&out[0], 17);
    assert_int_equal(out[1].found, 0);
    assert_int_equal(out[1].status, CTR_ENOTFOUND);
    assert_int_equal(out[2].found, 0);
    assert_int_equal(out[2].status, CTR_EFORMAT);
    check_item(&out[3], 1);
    assert_int_equal(out[4].status, CTR_EFORMAT);
    assert_int_equal(out[5].status, CTR_EFORMAT);       /* not a string */
    check_item(&out[6], 9000000000LL);
    check_item(&out[7], 17);
    check_item(&out[8], -3);
    /* The first malformed value is noted, by id. */
    assert_non_null(strstr(err, "item 50"));
    assert_non_null(strstr(err, "width 13, the model needs 12"));
    assert_int_equal(after.items_requested - before.items_requested, 9);
    assert_int_equal(after.items_missing - before.items_missing, 1);
    assert_int_equal(after.items_malformed - before.items_malformed, 3);

    /* All found: no note. */
    strcpy(err, "stale");
    assert_int_equal(featstore_get_items(fs, have, 2, 0, &A, out, err, sizeof err),
                     CTR_OK);
    assert_string_equal(err, "");

    /* Nothing asked: no round trip. */
    featstore_stats_get(fs, &before);
    assert_int_equal(featstore_get_items(fs, ask, 0, 0, &A, out, err, sizeof err),
                     CTR_OK);
    assert_int_equal(featstore_get_items(fs, ask, -1, 0, &A, out, err, sizeof err),
                     CTR_EINVAL);
    featstore_stats_get(fs, &after);
    assert_int_equal(after.round_trips, before.round_trips);
    featstore_close(fs);
}

/* A model that reads a category (TIN: no tags, no embedding): values with
 * one decode with it, and a value without one is malformed for it; a
 * model without a category still reads the plain values. */
static void test_items_cate(void **state) {
    featstore_params p = params();
    p.max_tags = 0;
    p.mm_dim = 0;
    p.cate = 1;
    featstore *fs = open_fs(&p);
    unsigned char buf[64];
    size_t len;
    assert_int_equal(features_item_encode_cate(NULL, 0, NULL, 0, 6, buf, sizeof buf, &len, err,
                                               sizeof err), CTR_OK);
    admin_do(admin, "SET %si:0 %b", prefix, buf, len);
    assert_int_equal(features_item_encode_cate(NULL, 0, NULL, 0, 0, buf, sizeof buf, &len, err,
                                               sizeof err), CTR_OK);
    admin_do(admin, "SET %si:70 %b", prefix, buf, len);
    assert_int_equal(features_item_encode(NULL, 0, NULL, 0, buf, sizeof buf, &len, err,
                                          sizeof err), CTR_OK);
    admin_do(admin, "SET %si:71 %b", prefix, buf, len);      /* no category */
    int64_t ask[] = {0, 70, 71, 72};
    featstore_item out[4];
    assert_int_equal(featstore_get_items(fs, ask, 4, 0, &A, out, err, sizeof err), CTR_OK);
    assert_true(out[0].found && out[0].has_cate && out[0].cate == 6);
    assert_int_equal(out[0].num_tags, 0);
    assert_int_equal(out[0].mm_dim, 0);
    assert_true(out[1].found && out[1].has_cate && out[1].cate == 0);
    assert_int_equal(out[2].status, CTR_EFORMAT);
    assert_non_null(strstr(err, "item 71: no category"));
    assert_int_equal(out[3].status, CTR_ENOTFOUND);
    featstore_close(fs);

    /* Without cate, the plain value reads (and has no category). */
    p.cate = 0;
    fs = open_fs(&p);
    assert_int_equal(featstore_get_items(fs, ask + 2, 1, 0, &A, out, err, sizeof err), CTR_OK);
    assert_true(out[0].found && !out[0].has_cate);
    featstore_close(fs);
    admin_do(admin, "DEL %si:0 %si:70 %si:71", prefix, prefix, prefix);
}

/* A reply of several hundred kilobytes arrives in many reads, all within one
 * deadline. */
static void test_many_items(void **state) {
    enum { N = 600, BIG_MM = 128 };
    featstore_params p = params();
    p.mm_dim = BIG_MM;
    featstore *fs = open_fs(&p);
    static int64_t ids[N];
    static featstore_item out[N];
    float mm[BIG_MM];
    unsigned char buf[1024];
    for (int i = 0; i < N; i++) {
        ids[i] = 100000 + i;
        for (int j = 0; j < BIG_MM; j++) mm[j] = (float)(i * j);
        int32_t tags[2] = {i, -i};
        size_t len;
        assert_int_equal(features_item_encode(tags, 2, mm, BIG_MM, buf,
                                              sizeof buf, &len, err,
                                              sizeof err),
                         CTR_OK);
        assert_int_equal(featstore_put_item(fs, ids[i], buf, len, err,
                                            sizeof err),
                         CTR_OK);
    }
    assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_OK);
    long long mget0 = admin_calls(admin, "getrange");
    assert_int_equal(featstore_get_items(fs, ids, N, 0, &A, out, err, sizeof err),
                     CTR_OK);
    assert_int_equal(admin_calls(admin, "getrange") - mget0, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(out[i].found, 1);
        assert_int_equal(out[i].num_tags, 2);
        assert_int_equal(out[i].tags[1], -i);
        assert_true(out[i].mm[BIG_MM - 1] == (float)(i * (BIG_MM - 1)));
    }
    featstore_close(fs);
}

/* Histories are read as header + tail: a long one costs keep ids, and a
 * value whose length disagrees with its header is malformed. */
static void test_user_bounded(void **state) {
    featstore_params p = params();
    featstore *fs = open_fs(&p);
    enum { LONG = 100000 };
    static int64_t seq[LONG];
    static unsigned char buf[8 + 4 * LONG];
    for (int i = 0; i < LONG; i++) seq[i] = i + 1;
    size_t len;
    assert_int_equal(features_user_encode(seq, LONG, buf, sizeof buf, &len, err, sizeof err),
                     CTR_OK);
    admin_do(admin, "SET %su:long %b", prefix, buf, len);
    int64_t *ids;
    int n;
    assert_int_equal(featstore_get_user(fs, "long", 3, 0, &A, &ids, &n, err, sizeof err),
                     CTR_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], LONG - 2);
    assert_int_equal(ids[2], LONG);
    /* Short history, keep larger than it: all of it. */
    assert_int_equal(features_user_encode(seq, 2, buf, sizeof buf, &len, err, sizeof err),
                     CTR_OK);
    admin_do(admin, "SET %su:short %b", prefix, buf, len);
    assert_int_equal(featstore_get_user(fs, "short", 64, 0, &A, &ids, &n, err, sizeof err),
                     CTR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[1], 2);
    /* Header says 2 ids, value holds 3. */
    memcpy(buf + len, "\1\0\0\0", 4);
    admin_do(admin, "SET %su:liar %b", prefix, buf, len + 4);
    assert_int_equal(featstore_get_user(fs, "liar", 64, 0, &A, &ids, &n, err, sizeof err),
                     CTR_EFORMAT);
    assert_non_null(strstr(err, "header says 2"));
    featstore_close(fs);
}

/* An item value longer than the schema allows is refused without being
 * read whole; the feature-set marker round-trips. */
static void test_item_too_long_and_meta(void **state) {
    featstore_params p = params();
    featstore *fs = open_fs(&p);
    static char big[1 << 20];
    memset(big, 'x', sizeof big);
    memcpy(big, "CI", 2);
    admin_do(admin, "SET %si:77 %b", prefix, big, sizeof big);
    int64_t one = 77;
    featstore_item out[1];
    assert_int_equal(featstore_get_items(fs, &one, 1, 0, &A, out, err, sizeof err), CTR_OK);
    assert_int_equal(out[0].status, CTR_EFORMAT);
    assert_non_null(strstr(err, "longer than"));

    char mbuf[FEATSTORE_META_MAX + 1];
    size_t mlen;
    assert_int_equal(featstore_get_meta(fs, 0, mbuf, sizeof mbuf, &mlen, err, sizeof err),
                     CTR_ENOTFOUND);
    assert_int_equal(featstore_put_meta(fs, "{\"format\":1}", 12, err, sizeof err), CTR_OK);
    assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_OK);
    assert_int_equal(featstore_get_meta(fs, 0, mbuf, sizeof mbuf, &mlen, err, sizeof err),
                     CTR_OK);
    assert_int_equal(mlen, 12);
    assert_string_equal(mbuf, "{\"format\":1}");
    featstore_close(fs);
}

/* --- main ------------------------------------------------------------------ */

int main(void) {
    signal(SIGPIPE, SIG_IGN);   /* featstore.h: the process must ignore SIGPIPE */
    if (redis_open("test_featstore") < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_password_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_users, setup, teardown),
        cmocka_unit_test_setup_teardown(test_items, setup, teardown),
        cmocka_unit_test_setup_teardown(test_items_cate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_items, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_too_long_and_meta, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    redis_close();
    return failed;
}
