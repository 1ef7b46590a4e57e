/*
 * test_item_changes.c - server/item_changes.c on a real Redis ($CTR_REDIS)
 * and a real item cache: records applied exactly (only their items'
 * vectors dropped), in order across polls and chunks; the whole cache
 * dropped when records were trimmed before they were read, when the stream
 * began again (also with ids not after the position), when the marker names changes the stream lost, and when the
 * marker comes back; the first poll positions without dropping; a Redis
 * failure leaves the position as it was.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "server/cmd/redis_functions.h"
#include "core/base/clock.h"
#include "server/item_changes.h"

#define VF 8

static char err[512];
static arena A;
static char prefix[64];
static featstore *fs;
static redisContext *admin;

static void cmd(const char *fmt, const char *key) {
    redisReply *r = redisCommand(admin, fmt, key);
    assert_non_null(r);
    freeReplyObject(r);
}

static item_cache *cache_with(int64_t lo, int64_t hi) {
    item_cache_params p = item_cache_default_params();
    p.vec_floats = VF;
    p.ttl_ms = 0;
    item_cache *c;
    assert_int_equal(item_cache_init(&p, &c, err, sizeof err), CTR_OK);
    float v[VF] = {0};
    for (int64_t id = lo; id <= hi; id++) {
        item_cache_ref ref;
        assert_non_null(item_cache_put(c, id, v, &ref));
        item_cache_release(c, &ref);
    }
    return c;
}

static int cached(item_cache *c, int64_t id) {
    item_cache_ref ref;
    const float *v = item_cache_get(c, id, &ref);
    item_cache_release(c, &ref);
    return v != NULL;
}

static uint64_t record_at(const int64_t *ids, int n, long maxlen, uint64_t floor) {
    uint64_t gen;
    assert_int_equal(featstore_record_item_changes(fs, ids, n, maxlen, floor, &gen, err,
                                                   sizeof err),
                     CTR_OK);
    return gen;
}

static uint64_t record(const int64_t *ids, int n, long maxlen) {
    return record_at(ids, n, maxlen, 0);
}

static int poll_(item_changes *st, item_cache *c, uint64_t marker_gen, int back,
                 item_changes_result *out) {
    return item_changes_poll(st, fs, c, marker_gen, back, clock_now_ns() + 2000000000LL, &A,
                             out, err, sizeof err);
}

static char key[128];

static void fresh_stream(void) {
    snprintf(key, sizeof key, "%sitem-changes", prefix);
    cmd("DEL %s", key);
}

static void test_exact(void **state) {
    fresh_stream();
    item_cache *c = cache_with(1, 100);
    item_changes st = {0};
    item_changes_result r;
    /* First poll, no stream yet: positioned before the first record; the
     * cache stays (nothing is dropped on a first poll... unless something
     * is cached: here it is, so it goes). */
    assert_int_equal(poll_(&st, NULL, 0, 0, &r), CTR_OK);
    assert_string_equal(st.last_id, "0-0");
    assert_int_equal(r.dropped_all, 0);
    const int64_t a[3] = {5, 7, 500}, b[2] = {8, 5};
    assert_int_equal(record(a, 3, 1000), 1);
    assert_int_equal(record(b, 2, 1000), 2);
    assert_int_equal(poll_(&st, c, 2, 0, &r), CTR_OK);
    assert_int_equal(r.records, 2);
    assert_int_equal(r.applied, 3);   /* 5, 7, 8 (500 was not cached) */
    assert_int_equal(r.dropped_all, 0);
    assert_true(r.lag_s >= 0 && r.lag_s < 60);
    assert_int_equal(st.last_gen, 2);
    assert_false(cached(c, 5));
    assert_false(cached(c, 7));
    assert_false(cached(c, 8));
    assert_true(cached(c, 6));
    assert_true(cached(c, 100));
    /* Nothing new: nothing happens. */
    assert_int_equal(poll_(&st, c, 2, 0, &r), CTR_OK);
    assert_int_equal(r.records, 0);
    assert_int_equal(r.applied, 0);
    assert_true(r.lag_s < 0);
    item_cache_free(c);
}

/* More records than one read: taken in chunks, in order, the rest at the
 * next poll. */
static void test_chunks(void **state) {
    fresh_stream();
    item_changes st = {0};
    item_changes_result r;
    assert_int_equal(poll_(&st, NULL, 0, 0, &r), CTR_OK);
    const int total = ITEM_CHANGES_CHUNK * ITEM_CHANGES_ROUNDS + 10;
    item_cache *c = cache_with(1, total);
    for (int64_t k = 1; k <= total; k++) record(&k, 1, 100000);
    assert_int_equal(poll_(&st, c, 0, 0, &r), CTR_OK);
    assert_int_equal(r.records, ITEM_CHANGES_CHUNK * ITEM_CHANGES_ROUNDS);
    assert_int_equal(r.more, 1);
    assert_int_equal(r.dropped_all, 0);
    assert_true(cached(c, total));
    assert_false(cached(c, ITEM_CHANGES_CHUNK * ITEM_CHANGES_ROUNDS));
    assert_int_equal(poll_(&st, c, (uint64_t)total, 0, &r), CTR_OK);
    assert_int_equal(r.records, 10);
    assert_int_equal(r.more, 0);
    assert_int_equal(r.dropped_all, 0);
    item_cache_stats cs;
    item_cache_stats_get(c, &cs);
    assert_int_equal(cs.entries, 0);
    item_cache_free(c);
}

/* Records trimmed before they were read: a jump in generation. */
static void test_trimmed(void **state) {
    fresh_stream();
    item_changes st = {0};
    item_changes_result r;
    const int64_t one = 1;
    record(&one, 1, 1000);
    assert_int_equal(poll_(&st, NULL, 1, 0, &r), CTR_OK);   /* positioned at gen 1 */
    assert_int_equal(st.last_gen, 1);
    item_cache *c = cache_with(1, 50);
    for (int k = 0; k < 10; k++) record(&one, 1, 1000);
    redisReply *x = redisCommand(admin, "XTRIM %s MAXLEN 3", key);
    freeReplyObject(x);
    assert_int_equal(poll_(&st, c, 11, 0, &r), CTR_OK);
    assert_int_equal(r.dropped_all, 1);
    assert_non_null(strstr(r.why, "trimmed"));
    assert_int_equal(st.last_gen, 11);
    item_cache_stats cs;
    item_cache_stats_get(c, &cs);
    assert_int_equal(cs.entries, 0);
    /* And on from there as usual. */
    item_cache_free(c);
    c = cache_with(1, 50);
    const int64_t two = 2;
    record(&two, 1, 1000);
    assert_int_equal(poll_(&st, c, 12, 0, &r), CTR_OK);
    assert_int_equal(r.dropped_all, 0);
    assert_int_equal(r.applied, 1);
    item_cache_free(c);
}

/* The stream deleted: the marker names a generation it no longer holds;
 * then begun again at generation 1. */
static void test_stream_lost(void **state) {
    fresh_stream();
    item_changes st = {0};
    item_changes_result r;
    const int64_t one = 1;
    record(&one, 1, 1000);
    record(&one, 1, 1000);
    assert_int_equal(poll_(&st, NULL, 2, 0, &r), CTR_OK);
    item_cache *c = cache_with(1, 10);
    cmd("DEL %s", key);
    assert_int_equal(poll_(&st, c, 2, 0, &r), CTR_OK);   /* the marker agrees: nothing lost */
    assert_int_equal(r.dropped_all, 0);
    assert_int_equal(poll_(&st, c, 3, 0, &r), CTR_OK);   /* it names one more */
    assert_int_equal(r.dropped_all, 1);
    assert_non_null(strstr(r.why, "no longer holds"));
    item_cache_free(c);
    /* ctr-load goes on from the marker's generation (the floor): applied
     * as usual. */
    c = cache_with(1, 10);
    assert_int_equal(record_at(&one, 1, 1000, 3), 4);
    assert_int_equal(poll_(&st, c, 3, 0, &r), CTR_OK);
    assert_int_equal(r.dropped_all, 0);
    assert_int_equal(r.applied, 1);
    item_cache_free(c);
    /* A writer that begins again from 1: dropped. */
    cmd("DEL %s", key);
    c = cache_with(1, 10);
    assert_int_equal(record(&one, 1, 1000), 1);
    assert_int_equal(poll_(&st, c, 4, 0, &r), CTR_OK);
    assert_int_equal(r.dropped_all, 1);
    assert_non_null(strstr(r.why, "began again"));
    item_cache_free(c);
}

/* A stream deleted and begun again with ids not after the position (the
 * same millisecond, or Redis's clock stepped back): reading after the
 * position sees nothing, the stream's last record tells. */
static void test_stream_lower_ids(void **state) {
    fresh_stream();
    item_changes st = {0};
    item_changes_result r;
    const int64_t one = 1;
    assert_int_equal(record(&one, 1, 1000), 1);
    assert_int_equal(record(&one, 1, 1000), 2);
    assert_int_equal(poll_(&st, NULL, 2, 0, &r), CTR_OK);
    char at[48];
    snprintf(at, sizeof at, "%s", st.last_id);
    /* Lower ids. */
    cmd("DEL %s", key);
    redisReply *x = redisCommand(admin, "XADD %s 1-1 gen 1 ids 1", key);
    assert_non_null(x);
    assert_int_equal(x->type, REDIS_REPLY_STRING);
    freeReplyObject(x);
    item_cache *c = cache_with(1, 10);
    assert_int_equal(poll_(&st, c, 2, 0, &r), CTR_OK);
    assert_int_equal(r.dropped_all, 1);
    assert_non_null(strstr(r.why, "began again"));
    assert_string_equal(st.last_id, "1-1");
    item_cache_free(c);
    /* Went on from there: applied as usual. */
    c = cache_with(1, 10);
    x = redisCommand(admin, "XADD %s 1-2 gen %d ids 3", key, (int)st.last_gen + 1);
    freeReplyObject(x);
    assert_int_equal(poll_(&st, c, 0, 0, &r), CTR_OK);
    assert_int_equal(r.dropped_all, 0);
    assert_int_equal(r.applied, 1);
    assert_int_equal(cached(c, 3), 0);
    assert_int_equal(cached(c, 4), 1);
    item_cache_free(c);
    /* The same id as the position's, another generation. */
    cmd("DEL %s", key);
    x = redisCommand(admin, "XADD %s 1-2 gen 1 ids 5", key);
    freeReplyObject(x);
    c = cache_with(1, 10);
    assert_int_equal(poll_(&st, c, 0, 0, &r), CTR_OK);
    assert_int_equal(r.dropped_all, 1);
    item_cache_free(c);
    /* Nothing new: nothing dropped. */
    c = cache_with(1, 10);
    assert_int_equal(poll_(&st, c, 0, 0, &r), CTR_OK);
    assert_int_equal(r.dropped_all, 0);
    assert_int_equal(r.records, 0);
    item_cache_free(c);
}

/* The marker back after missing: everything goes, and the position is
 * found again. */
static void test_marker_back(void **state) {
    fresh_stream();
    item_changes st = {0};
    item_changes_result r;
    assert_int_equal(poll_(&st, NULL, 0, 0, &r), CTR_OK);
    item_cache *c = cache_with(1, 10);
    assert_int_equal(poll_(&st, c, 0, 1, &r), CTR_OK);
    assert_int_equal(r.dropped_all, 1);
    assert_non_null(strstr(r.why, "anew"));
    item_cache_stats cs;
    item_cache_stats_get(c, &cs);
    assert_int_equal(cs.entries, 0);
    item_cache_free(c);
    /* A first poll that finds vectors cached already drops them. */
    item_changes st2 = {0};
    c = cache_with(1, 3);
    assert_int_equal(poll_(&st2, c, 0, 0, &r), CTR_OK);
    assert_int_equal(r.dropped_all, 1);
    item_cache_free(c);
}

/* Redis gone: the poll fails, the position stays, the next one goes on. */
static void test_redis_down(void **state) {
    fresh_stream();
    item_changes st = {0};
    item_changes_result r;
    assert_int_equal(poll_(&st, NULL, 0, 0, &r), CTR_OK);
    featstore_params p;
    featstore_default_params(&p);
    p.addr = "127.0.0.1:1";
    p.prefix = prefix;
    featstore *dead;
    assert_int_equal(featstore_open(&p, &dead, err, sizeof err), CTR_OK);
    item_changes before = st;
    assert_true(item_changes_poll(&st, dead, NULL, 0, 0, 0, &A, &r, err, sizeof err) < 0);
    assert_memory_equal(&st, &before, sizeof st);
    featstore_close(dead);
    const int64_t one = 1;
    record(&one, 1, 1000);
    assert_int_equal(poll_(&st, NULL, 1, 0, &r), CTR_OK);
    assert_int_equal(r.records, 1);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const char *addr = getenv("CTR_REDIS");
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    if (!colon) {
        fprintf(stderr, "test_item_changes: CTR_REDIS is not set (tests/run.sh sets it)\n");
        return 1;
    }
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    admin = redisConnect(host, atoi(colon + 1));
    if (!admin || admin->err) return 1;
    snprintf(prefix, sizeof prefix, "tic:%ld:%lld:", (long)getpid(), (long long)time(NULL));
    arena_init(&A, 1 << 16);
    featstore_params p;
    featstore_default_params(&p);
    p.addr = addr;
    p.prefix = prefix;
    p.command_timeout_ms = p.connect_timeout_ms = 2000;
    if (featstore_open(&p, &fs, err, sizeof err) < 0 ||
        featstore_load_functions(fs, redis_functions_lua, redis_functions_lua_len, err,
                                 sizeof err) < 0) {
        fprintf(stderr, "test_item_changes: %s\n", err);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact),       cmocka_unit_test(test_chunks),
        cmocka_unit_test(test_trimmed),     cmocka_unit_test(test_stream_lost),
        cmocka_unit_test(test_stream_lower_ids), cmocka_unit_test(test_marker_back),
        cmocka_unit_test(test_redis_down),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cmd("DEL %s", key);
    featstore_close(fs);
    arena_free(&A);
    redisFree(admin);
    return failed;
}
