/*
 * test_featstore.c - server/store/featstore.c against a real Redis ($CTR_REDIS,
 * host:port, which tests/run.sh always provides; the test fails without it)
 * and against fake servers made here: a port where nothing listens, and a
 * listening socket that never answers.
 *
 * Every key this run writes starts with a prefix of its own (pid and time),
 * so runs sharing a Redis never see each other's data; the keys are
 * deleted at the end.  Tests that count commands in Redis's INFO assume no
 * other client runs MGET meanwhile (run.sh runs test binaries one at a
 * time).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "core/base/status.h"
#include "proto/features.h"
#include "core/base/clock.h"
#include "server/store/featstore.h"

#define MM 12
#define TAGS 5

static char redis_addr[256];
static char prefix[64];
static redisContext *admin;    /* a plain hiredis connection for setup */
static char err[256];
static arena A;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static redisReply *admin_cmd(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(admin, fmt, ap);
    va_end(ap);
    if (!r) fail_msg("admin command %s: %s", fmt, admin->errstr);
    return r;
}

static void admin_do(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(admin, fmt, ap);
    va_end(ap);
    if (!r) fail_msg("admin command %s: %s", fmt, admin->errstr);
    if (r->type == REDIS_REPLY_ERROR) fail_msg("admin %s: %s", fmt, r->str);
    freeReplyObject(r);
}

/* calls=N of cmdstat_<cmd> in INFO commandstats (0 if never called). */
static long long redis_calls(const char *cmd) {
    redisReply *r = admin_cmd("INFO commandstats");
    char pat[64];
    snprintf(pat, sizeof pat, "cmdstat_%s:calls=", cmd);
    const char *p = r->str ? strstr(r->str, pat) : NULL;
    long long n = p ? atoll(p + strlen(pat)) : 0;
    freeReplyObject(r);
    return n;
}

static featstore_params params(void) {
    featstore_params p;
    featstore_default_params(&p);
    p.addr = redis_addr;
    p.prefix = prefix;
    p.max_tags = TAGS;
    p.mm_dim = MM;
    p.max_seq = 4;
    /* Sanitizer builds are slower; the deadline is not what is tested here. */
    p.command_timeout_ms = 2000;
    p.connect_timeout_ms = 2000;
    return p;
}

static featstore *open_fs(const featstore_params *p) {
    featstore *fs;
    int rc = featstore_open(p, &fs, err, sizeof err);
    if (rc != CTR_OK) fail_msg("featstore_open: %d %s", rc, err);
    return fs;
}

/* An encoded item whose tags and floats derive from id. */
static size_t make_item(int64_t id, unsigned char *buf, size_t cap) {
    int32_t tags[TAGS];
    float mm[MM];
    for (int i = 0; i < TAGS; i++) tags[i] = (int32_t)(id % 1000 * 10 + i);
    for (int i = 0; i < MM; i++) mm[i] = (float)id + (float)i / 8;
    size_t len = 0;
    assert_int_equal(features_item_encode(tags, TAGS, mm, MM, buf, cap, &len,
                                          err, sizeof err),
                     CTR_OK);
    return len;
}

static void check_item(const featstore_item *it, int64_t id) {
    assert_int_equal(it->found, 1);
    assert_int_equal(it->status, CTR_OK);
    assert_int_equal(it->num_tags, TAGS);
    assert_int_equal(it->mm_dim, MM);
    for (int i = 0; i < TAGS; i++) assert_int_equal(it->tags[i], id % 1000 * 10 + i);
    for (int i = 0; i < MM; i++)
        assert_true(it->mm[i] == (float)id + (float)i / 8);
}

static int setup(void **state) {
    arena_init(&A, 1 << 16);
    err[0] = '\0';
    return 0;
}

static int teardown(void **state) {
    arena_free(&A);
    return 0;
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

/* --- against Redis ------------------------------------------------------ */

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

static void test_ping(void **state) {
    featstore_params p = params();
    featstore *fs = open_fs(&p);
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.connect_attempts, 0);   /* open does not connect */
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);
    featstore_stats_get(fs, &st);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.round_trips, 2);
    assert_int_equal(st.failures, 0);
    featstore_close(fs);
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
    admin_do("SET %su:junk %b", prefix, "hello world", (size_t)11);
    assert_int_equal(featstore_get_user(fs, "junk", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_EFORMAT);
    assert_non_null(strstr(err, "junk"));
    assert_non_null(strstr(err, "not a user value"));
    len = make_item(3, buf, sizeof buf);
    admin_do("SET %su:item %b", prefix, buf, len);
    assert_int_equal(featstore_get_user(fs, "item", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_EFORMAT);
    admin_do("RPUSH %su:list a b", prefix);
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
        admin_do("SET %si:50 %b", prefix, buf, len);
        admin_do("SET %si:51 %b", prefix, "CI", (size_t)2);
        admin_do("HSET %si:52 f v", prefix);
    }

    int64_t ask[] = {17, 2, 50, 1, 51, 52, 9000000000LL, 17, -3};
    int n = (int)(sizeof ask / sizeof *ask);
    featstore_item out[9];
    featstore_stats before, after;
    featstore_stats_get(fs, &before);
    long long mget0 = redis_calls("getrange");
    assert_int_equal(featstore_get_items(fs, ask, n, 0, &A, out, err, sizeof err),
                     CTR_OK);
    long long mget1 = redis_calls("getrange");
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
    admin_do("SET %si:0 %b", prefix, buf, len);
    assert_int_equal(features_item_encode_cate(NULL, 0, NULL, 0, 0, buf, sizeof buf, &len, err,
                                               sizeof err), CTR_OK);
    admin_do("SET %si:70 %b", prefix, buf, len);
    assert_int_equal(features_item_encode(NULL, 0, NULL, 0, buf, sizeof buf, &len, err,
                                          sizeof err), CTR_OK);
    admin_do("SET %si:71 %b", prefix, buf, len);      /* no category */
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
    admin_do("DEL %si:0 %si:70 %si:71", prefix, prefix, prefix);
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
    long long mget0 = redis_calls("getrange");
    assert_int_equal(featstore_get_items(fs, ids, N, 0, &A, out, err, sizeof err),
                     CTR_OK);
    assert_int_equal(redis_calls("getrange") - mget0, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(out[i].found, 1);
        assert_int_equal(out[i].num_tags, 2);
        assert_int_equal(out[i].tags[1], -i);
        assert_true(out[i].mm[BIG_MM - 1] == (float)(i * (BIG_MM - 1)));
    }
    featstore_close(fs);
}

static void kill_normal_clients(void) {
    redisReply *r = admin_cmd("CLIENT KILL TYPE normal SKIPME yes");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer >= 1);
    freeReplyObject(r);
}

/* The connection is killed under the featstore: the next read notices,
 * reconnects and sends its command again, so it still succeeds; each kind
 * of read does. */
static void test_reconnect_after_kill(void **state) {
    featstore_params p = params();
    featstore *fs = open_fs(&p);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);
    kill_normal_clients();
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);

    int64_t *ids;
    int n;
    kill_normal_clients();
    assert_int_equal(featstore_get_user(fs, "nobody", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_ENOTFOUND);
    int64_t one = 1;
    featstore_item out[1];
    kill_normal_clients();
    assert_int_equal(featstore_get_items(fs, &one, 1, 0, &A, out, err,
                                         sizeof err),
                     CTR_OK);
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.connects, 4);
    assert_int_equal(st.retries, 3);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.fast_failures, 0);
    /* And the next call simply uses the new connection. */
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);
    featstore_stats_get(fs, &st);
    assert_int_equal(st.connects, 4);
    featstore_close(fs);
}

/* A write pipeline is not retried: the loader must know its batch failed. */
static void test_flush_after_kill(void **state) {
    featstore_params p = params();
    featstore *fs = open_fs(&p);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);
    kill_normal_clients();
    unsigned char buf[8];
    size_t len;
    assert_int_equal(features_user_encode(NULL, 0, buf, sizeof buf, &len, err,
                                          sizeof err),
                     CTR_OK);
    assert_int_equal(featstore_put_user(fs, "k", buf, len, err, sizeof err),
                     CTR_OK);
    assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_EBACKEND);
    assert_int_equal(featstore_pending(fs), 0);
    /* The next batch goes through on a new connection. */
    assert_int_equal(featstore_put_user(fs, "k", buf, len, err, sizeof err),
                     CTR_OK);
    assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_OK);
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.failures, 1);
    assert_int_equal(st.retries, 0);
    assert_int_equal(st.connects, 2);
    featstore_close(fs);
}

/* --- against fake servers ----------------------------------------------- */

/* A loopback TCP socket bound to a free port; listening if `listening`. */
static int loopback_socket(int listening, int backlog, int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    if (listening) assert_int_equal(listen(fd, backlog), 0);
    return fd;
}

/* Nothing listens: refused at once, and within the reconnect interval the
 * next calls fail without trying. */
static void test_refused(void **state) {
    int port;
    int fd = loopback_socket(0, 0, &port);   /* bound, never listening */
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    featstore_params p = params();
    p.addr = addr;
    p.connect_timeout_ms = 1000;
    p.breaker_base_ms = 150;
    p.breaker_max_ms = 150;
    featstore *fs = open_fs(&p);

    double t0 = now_ms();
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND);
    double t1 = now_ms();
    assert_true(t1 - t0 < 100);                /* not the connect timeout */
    assert_non_null(strstr(err, addr));

    int64_t *ids;
    int n;
    featstore_item out[1];
    int64_t one = 1;
    assert_int_equal(featstore_get_user(fs, "u", 0, 0, &A, &ids, &n, err,
                                        sizeof err),
                     CTR_EBACKEND);
    assert_int_equal(featstore_get_items(fs, &one, 1, 0, &A, out, err,
                                         sizeof err),
                     CTR_EBACKEND);
    assert_non_null(strstr(err, "next probe"));
    assert_int_equal(featstore_breaker_state(fs), BREAKER_OPEN);
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.connect_attempts, 1);
    assert_int_equal(st.fast_failures, 2);
    assert_int_equal(st.failures, 3);
    assert_int_equal(st.round_trips, 0);

    sleep_ms(200);   /* past 1.25 x 150 ms: the next call probes */
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND);
    featstore_stats_get(fs, &st);
    assert_int_equal(st.connect_attempts, 2);
    assert_int_equal(st.breaker_opens, 1);     /* a failed probe re-opens */
    featstore_close(fs);
    close(fd);
}

/* The breaker closes on the first successful probe: a Redis that comes back
 * is used again within the recovery bound. */
static void test_breaker_recovers(void **state) {
    featstore_params p = params();
    p.command_timeout_ms = 30;
    p.breaker_base_ms = 50;
    p.breaker_max_ms = 100;
    featstore *fs = open_fs(&p);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);
    admin_do("CLIENT PAUSE 300");
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_ETIMEOUT);
    assert_int_equal(featstore_breaker_state(fs), BREAKER_OPEN);
    double t0 = now_ms();
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND); /* fast */
    assert_true(now_ms() - t0 < 5);
    /* Redis answers again after the pause; within pause + the bound
     * (1.25 x 100 ms) plus a margin, a call probes and succeeds. */
    int ok = 0;
    for (int i = 0; i < 100 && !ok; i++) {
        ok = featstore_ping(fs, 0, err, sizeof err) == CTR_OK;
        if (!ok) sleep_ms(10);
    }
    double took = now_ms() - t0;
    assert_true(ok);
    assert_true(took < 300 + 125 + 200);
    assert_int_equal(featstore_breaker_state(fs), BREAKER_CLOSED);
    featstore_close(fs);
}

/* A deadline already past fails at once and leaves the breaker closed; a
 * deadline sooner than command_timeout_ms cuts the call there. */
static void test_deadline(void **state) {
    int port;
    int fd = loopback_socket(1, 16, &port);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    featstore_params p = params();
    p.addr = addr;
    p.command_timeout_ms = 1000;
    featstore *fs = open_fs(&p);
    assert_int_equal(featstore_ping(fs, clock_now_ns() - 1, err, sizeof err), CTR_ETIMEOUT);
    assert_int_equal(featstore_breaker_state(fs), BREAKER_CLOSED);
    double t0 = now_ms();
    assert_int_equal(featstore_ping(fs, clock_now_ns() + 30000000, err, sizeof err),
                     CTR_ETIMEOUT);
    double dt = now_ms() - t0;
    assert_true(dt >= 29 && dt < 500);
    /* 30 ms of a 1000 ms command timeout: the request's budget ran out, not
     * Redis's, so the breaker stays closed. */
    assert_int_equal(featstore_breaker_state(fs), BREAKER_CLOSED);
    featstore_close(fs);
    close(fd);
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
    admin_do("SET %su:long %b", prefix, buf, len);
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
    admin_do("SET %su:short %b", prefix, buf, len);
    assert_int_equal(featstore_get_user(fs, "short", 64, 0, &A, &ids, &n, err, sizeof err),
                     CTR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[1], 2);
    /* Header says 2 ids, value holds 3. */
    memcpy(buf + len, "\1\0\0\0", 4);
    admin_do("SET %su:liar %b", prefix, buf, len + 4);
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
    admin_do("SET %si:77 %b", prefix, big, sizeof big);
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

/* Accepted (by the kernel: nobody calls accept) but never answered: the
 * call gives up at its deadline, and drops the connection. */
static void test_command_timeout(void **state) {
    int port;
    int fd = loopback_socket(1, 16, &port);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    featstore_params p = params();
    p.addr = addr;
    p.command_timeout_ms = 40;
    featstore *fs = open_fs(&p);

    double t0 = now_ms();
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_ETIMEOUT);
    double dt = now_ms() - t0;
    assert_true(dt >= 39);
    assert_true(dt < 1000);
    assert_non_null(strstr(err, "40 ms"));

    /* The breaker is open now: the next call fails at once. */
    int64_t ids[3] = {1, 2, 3};
    featstore_item out[3];
    t0 = now_ms();
    assert_int_equal(featstore_get_items(fs, ids, 3, 0, &A, out, err, sizeof err),
                     CTR_EBACKEND);
    dt = now_ms() - t0;
    assert_true(dt < 20);
    /* After the open period the next call probes: it times out too. */
    sleep_ms(130);
    t0 = now_ms();
    assert_int_equal(featstore_get_items(fs, ids, 3, 0, &A, out, err, sizeof err),
                     CTR_ETIMEOUT);
    dt = now_ms() - t0;
    assert_true(dt >= 39 && dt < 1000);

    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.timeouts, 2);
    assert_int_equal(st.failures, 3);
    assert_int_equal(st.fast_failures, 1);
    assert_int_equal(st.connects, 2);     /* a timed-out connection is dropped */
    featstore_close(fs);
    close(fd);
}

/* A connect that the server never completes: the listen queue is full, so
 * the kernel drops the SYN.  The connect gives up at connect_timeout_ms. */
static void test_connect_timeout(void **state) {
    int port;
    int lfd = loopback_socket(1, 0, &port);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    /* Fill the queue (backlog 0 still admits one or two). */
    int fill[4];
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&sa, sizeof sa);
    }
    sleep_ms(20);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    featstore_params p = params();
    p.addr = addr;
    p.connect_timeout_ms = 60;
    featstore *fs = open_fs(&p);
    double t0 = now_ms();
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND);
    double dt = now_ms() - t0;
    assert_non_null(strstr(err, "connect timed out after 60 ms"));
    assert_true(dt >= 59 && dt < 1000);
    featstore_close(fs);
    for (int i = 0; i < 4; i++) close(fill[i]);
    close(lfd);
}

/* --- main ------------------------------------------------------------------ */

static void delete_test_keys(void) {
    char pat[80];
    snprintf(pat, sizeof pat, "%s*", prefix);
    unsigned long long cursor = 0;
    do {
        redisReply *r = redisCommand(admin, "SCAN %llu MATCH %s COUNT 1000",
                                     cursor, pat);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            if (r) freeReplyObject(r);
            return;
        }
        cursor = strtoull(r->element[0]->str, NULL, 10);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *d = redisCommand(admin, "DEL %b", keys->element[i]->str,
                                         keys->element[i]->len);
            if (d) freeReplyObject(d);
        }
        freeReplyObject(r);
    } while (cursor != 0);
}

int main(void) {
    /* featstore.h: the process must ignore SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    const char *env = getenv("CTR_REDIS");
    if (!env || !*env) {
        fprintf(stderr, "test_featstore: CTR_REDIS is not set (host:port of a "
                        "Redis to use; tests/run.sh provides one)\n");
        return 1;
    }
    snprintf(redis_addr, sizeof redis_addr, "%s", env);
    const char *colon = strrchr(redis_addr, ':');
    if (!colon) {
        fprintf(stderr, "test_featstore: CTR_REDIS=%s is not host:port\n", env);
        return 1;
    }
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)(colon - redis_addr), redis_addr);
    struct timeval tv = {2, 0};
    admin = redisConnectWithTimeout(host, atoi(colon + 1), tv);
    if (!admin || admin->err) {
        fprintf(stderr, "test_featstore: cannot reach Redis at %s: %s\n", env,
                admin ? admin->errstr : "out of memory");
        if (admin) redisFree(admin);
        return 1;
    }
    redisSetTimeout(admin, tv);
    snprintf(prefix, sizeof prefix, "test_featstore:%ld:%lld:", (long)getpid(),
             (long long)time(NULL));

    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_password_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_users, setup, teardown),
        cmocka_unit_test_setup_teardown(test_items, setup, teardown),
        cmocka_unit_test_setup_teardown(test_items_cate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_items, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_after_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_after_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_breaker_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_too_long_and_meta, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    delete_test_keys();
    redisFree(admin);
    return failed;
}
