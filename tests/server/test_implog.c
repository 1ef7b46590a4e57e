/*
 * test_implog.c - server/implog.c: records through the queue to a file and
 * to a real Redis Stream ($CTR_REDIS; a Redis Cluster's node owning the key
 * through MOVED, $CTR_CLUSTER_SEEDS), read back and compared field by field
 * (jansson); a full queue drops and counts without waiting; a stalled FIFO
 * reader loses batches, counted, and never leaves half a line; reopen
 * follows a renamed file; shutdown counts what it could not write.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "server/implog.h"

static char dir[256];

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/test_implog.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A record of n candidates whose fields all depend on k. */
typedef struct rec {
    proto_impression r;
    int64_t hist[8], cand[64];
    int32_t ctx[64 * 2], rank[64];
    float score[64];
    char uid[32], rid[32];
} rec;

static const char *const CTX[2] = {"likes_level", "views_level"};
static const char *const DEG[2] = {"history_unavailable", "item_features_missing"};

static void make(rec *x, int k, int n) {
    memset(x, 0, sizeof *x);
    snprintf(x->uid, sizeof x->uid, "%d", 1000 + k);
    snprintf(x->rid, sizeof x->rid, "req-\"%d\"\n", k);   /* escaped on output */
    for (int j = 0; j < 8; j++) x->hist[j] = k + j;
    for (int i = 0; i < n; i++) {
        x->cand[i] = 100 + k * 64 + i;
        x->ctx[2 * i] = i % 11;
        x->ctx[2 * i + 1] = (k + i) % 11;
        x->score[i] = i == 3 ? NAN : 1.0f / (float)(i + 2);
        x->rank[i] = i == 3 ? 0 : i + 1;
    }
    x->r = (proto_impression){.time = 1714557600.25 + k,
                              .request_id = k % 2 ? x->rid : NULL,
                              .user_id = x->uid,
                              .user_id_is_int = k % 3 == 0,
                              .model_name = "qin",
                              .model_version = "v7",
                              .precision = "fp32",
                              .history_from_request = k % 2,
                              .history = x->hist,
                              .nh = k % 9 > 8 ? 8 : k % 9,
                              .top_k = k % 4,
                              .num_ctx = 2,
                              .ctx_name = CTX,
                              .n = n,
                              .cand_id = x->cand,
                              .ctx = x->ctx,
                              .score = x->score,
                              .rank = x->rank,
                              .degraded = DEG,
                              .num_degraded = k % 3};
}

/* Checks one JSON record against make(k, n). */
static void check(const char *text, size_t len, int k, int n) {
    json_error_t je;
    json_t *o = json_loadb(text, len, 0, &je);
    assert_non_null(o);
    rec x;
    make(&x, k, n);
    assert_true(fabs(json_real_value(json_object_get(o, "time")) - x.r.time) < 1e-6);
    json_t *rid = json_object_get(o, "request_id");
    if (k % 2) assert_string_equal(json_string_value(rid), x.rid);
    else assert_true(json_is_null(rid));
    json_t *uid = json_object_get(o, "user_id");
    if (k % 3 == 0) assert_int_equal(json_integer_value(uid), 1000 + k);
    else assert_string_equal(json_string_value(uid), x.uid);
    json_t *m = json_object_get(o, "model");
    assert_string_equal(json_string_value(json_object_get(m, "name")), "qin");
    assert_string_equal(json_string_value(json_object_get(m, "version")), "v7");
    assert_string_equal(json_string_value(json_object_get(m, "precision")), "fp32");
    assert_string_equal(json_string_value(json_object_get(o, "history_source")),
                        k % 2 ? "request" : "store");
    json_t *h = json_object_get(o, "history");
    assert_int_equal(json_array_size(h), (size_t)x.r.nh);
    for (int j = 0; j < x.r.nh; j++)
        assert_int_equal(json_integer_value(json_array_get(h, (size_t)j)), x.hist[j]);
    assert_int_equal(json_integer_value(json_object_get(o, "top_k")), x.r.top_k);
    json_t *c = json_object_get(o, "candidates");
    assert_int_equal(json_array_size(c), (size_t)n);
    for (int i = 0; i < n; i++) {
        json_t *e = json_array_get(c, (size_t)i);
        assert_int_equal(json_object_size(e), 5);
        assert_int_equal(json_integer_value(json_object_get(e, "item_id")), x.cand[i]);
        assert_int_equal(json_integer_value(json_object_get(e, "likes_level")), x.ctx[2 * i]);
        assert_int_equal(json_integer_value(json_object_get(e, "views_level")), x.ctx[2 * i + 1]);
        json_t *sc = json_object_get(e, "score"), *rk = json_object_get(e, "rank");
        if (i == 3) {
            assert_true(json_is_null(sc));
            assert_true(json_is_null(rk));
        } else {
            assert_true((float)json_real_value(sc) == x.score[i]);
            assert_int_equal(json_integer_value(rk), i + 1);
        }
    }
    json_t *d = json_object_get(o, "degraded");
    assert_int_equal(json_array_size(d), (size_t)(k % 3));
    for (int i = 0; i < k % 3; i++)
        assert_string_equal(json_string_value(json_array_get(d, (size_t)i)), DEG[i]);
    json_decref(o);
}

static implog *open_file(const char *path, size_t queue, int timeout_ms) {
    implog_params p;
    implog_default_params(&p);
    char target[320];
    snprintf(target, sizeof target, "file:%s", path);
    p.target = target;
    p.queue_bytes = queue;
    p.timeout_ms = timeout_ms;
    p.retry_ms = 50;
    p.batch = 7;
    implog *l;
    char err[256];
    assert_int_equal(implog_open(&p, &l, err, sizeof err), CTR_OK);
    return l;
}

/* The lines of a file, each checked as record k = 0, 1, ... */
static int check_file(const char *path, int first_k, int n) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int k = first_k;
    while ((len = getline(&line, &cap, f)) > 0) {
        assert_int_equal(line[len - 1], '\n');
        check(line, (size_t)len, k++, n);
    }
    free(line);
    fclose(f);
    return k - first_k;
}

static void test_file_round_trip(void **state) {
    char path[300];
    snprintf(path, sizeof path, "%s/imp.jsonl", dir);
    implog *l = open_file(path, 1 << 20, 1000);
    rec x;
    for (int k = 0; k < 50; k++) {
        make(&x, k, k % 2 ? 64 : 5);
        assert_int_equal(implog_submit(l, &x.r), 1);
    }
    assert_true(implog_flush(l, 5000));
    implog_stats st;
    implog_stats_get(l, &st);
    assert_int_equal(st.submitted, 50);
    assert_int_equal(st.written, 50);
    assert_int_equal(st.dropped_full + st.dropped_sink + st.dropped_shutdown, 0);
    assert_int_equal(st.queue_bytes, 0);
    implog_close(l, 1000);
    /* Records of 5 and 64 candidates alternate. */
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int k = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        check(line, (size_t)len, k, k % 2 ? 64 : 5);
        k++;
    }
    free(line);
    fclose(f);
    assert_int_equal(k, 50);
}

/* The queue wraps many times over: every record still comes out whole. */
static void test_ring_wraps(void **state) {
    char path[300];
    snprintf(path, sizeof path, "%s/wrap.jsonl", dir);
    implog *l = open_file(path, 8192, 1000);
    rec x;
    int queued = 0;
    for (int k = 0; k < 400; k++) {
        make(&x, k, 17);
        while (!implog_submit(l, &x.r)) implog_flush(l, 1000);   /* full: let it drain */
        queued++;
    }
    assert_true(implog_flush(l, 5000));
    implog_stats st;
    implog_stats_get(l, &st);
    implog_close(l, 1000);
    assert_int_equal(st.written, (uint64_t)queued);
    assert_int_equal(check_file(path, 0, 17), queued);
}

/* A FIFO whose reader never reads: the writes time out and their batches
 * are dropped (sink), the queue fills and submit drops (full) at once, and
 * close within its grace counts the rest.  Nothing waits for the sink. */
static void test_stalled_fifo(void **state) {
    char path[300];
    snprintf(path, sizeof path, "%s/fifo", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    int rd = open(path, O_RDONLY | O_NONBLOCK);   /* a reader that never reads */
    assert_true(rd >= 0);
    implog *l = open_file(path, 16384, 50);
    rec x;
    int ok = 0, dropped = 0;
    for (int k = 0; k < 3000; k++) {
        make(&x, k, 64);
        if (implog_submit(l, &x.r)) ok++;
        else dropped++;
    }
    implog_stats st;
    implog_stats_get(l, &st);
    assert_true(dropped > 0);
    assert_int_equal(st.dropped_full, (uint64_t)dropped);
    assert_int_equal(st.submitted, (uint64_t)ok);
    implog_close(l, 100);
    close(rd);
}

/* Same, but counting after close: every queued record is accounted for. */
static void test_stalled_fifo_accounting(void **state) {
    char path[300];
    snprintf(path, sizeof path, "%s/fifo2", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    int rd = open(path, O_RDONLY | O_NONBLOCK);
    assert_true(rd >= 0);
    /* A one-page pipe, so that it fills at once and writes stop half way
     * through a batch. */
    assert_true(fcntl(rd, F_SETPIPE_SZ, 4096) >= 4096);
    implog *l = open_file(path, 16384, 50);
    char *buf = malloc(1 << 22);
    size_t got = 0;
    ssize_t r;
    rec x;
    int ok = 0;
    for (int k = 0; k < 300; k++) {
        make(&x, k, 64);
        ok += implog_submit(l, &x.r);
        usleep(1000);
        /* The reader wakes now and then: writes resume mid-line. */
        if (k % 60 == 59)
            while ((r = read(rd, buf + got, (1 << 22) - got)) > 0) got += (size_t)r;
    }
    for (int i = 0; i < 10; i++) {
        implog_flush(l, 50);
        while ((r = read(rd, buf + got, (1 << 22) - got)) > 0) got += (size_t)r;
    }
    implog_stats st;
    implog_stats_get(l, &st);
    assert_true(st.sink_errors >= 1);
    assert_true(st.dropped_sink >= 1);
    assert_int_equal(st.submitted, (uint64_t)ok);
    assert_true(st.written + st.dropped_sink <= st.submitted);
    /* Every line that reached the pipe is one whole record. */
    size_t start = 0;
    int lines = 0;
    for (size_t i = 0; i < got; i++)
        if (buf[i] == '\n') {
            json_error_t je;
            json_t *o = json_loadb(buf + start, i - start, 0, &je);
            assert_non_null(o);
            json_decref(o);
            start = i + 1;
            lines++;
        }
    assert_true(lines > 0);
    free(buf);
    close(rd);
    implog_close(l, 0);
}

/* A full queue refuses at once, counted; it takes records again once the
 * thread has written what it held. */
static void test_queue_full(void **state) {
    char path[300];
    snprintf(path, sizeof path, "%s/full", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    int rd = open(path, O_RDONLY | O_NONBLOCK);
    implog *l = open_file(path, 4096, 2000);
    rec x;
    make(&x, 1, 64);   /* ~1.5 KB packed: two fit */
    int ok = 0;
    for (int k = 0; k < 10; k++) ok += implog_submit(l, &x.r);
    assert_true(ok >= 2 && ok < 10);
    implog_stats st;
    implog_stats_get(l, &st);
    assert_int_equal(st.dropped_full, (uint64_t)(10 - ok));
    /* Read the pipe as it fills: the queue drains and takes more. */
    char buf[65536];
    for (int i = 0; i < 100 && !implog_flush(l, 20); i++)
        while (read(rd, buf, sizeof buf) > 0) {}
    assert_int_equal(implog_submit(l, &x.r), 1);
    assert_true(implog_flush(l, 2000) || read(rd, buf, sizeof buf) >= 0);
    close(rd);
    implog_close(l, 0);
}

/* Reopen: records after it go to a new file at the path (logrotate). */
static void test_reopen(void **state) {
    char path[300], moved[300];
    snprintf(path, sizeof path, "%s/rot.jsonl", dir);
    snprintf(moved, sizeof moved, "%s/rot.jsonl.1", dir);
    implog *l = open_file(path, 1 << 20, 1000);
    rec x;
    for (int k = 0; k < 10; k++) {
        make(&x, k, 3);
        implog_submit(l, &x.r);
    }
    assert_true(implog_flush(l, 5000));
    assert_int_equal(rename(path, moved), 0);
    implog_reopen(l);
    for (int k = 10; k < 25; k++) {
        make(&x, k, 3);
        implog_submit(l, &x.r);
    }
    assert_true(implog_flush(l, 5000));
    implog_stats st;
    implog_stats_get(l, &st);
    assert_int_equal(st.reopens, 1);
    implog_close(l, 1000);
    assert_int_equal(check_file(moved, 0, 3), 10);
    assert_int_equal(check_file(path, 10, 3), 15);
}

/* Close with no grace: what is queued is counted as dropped at shutdown,
 * and every record submitted is accounted for (the hook's counts). */
static uint64_t hook_counts[IMPLOG_QUEUE_BYTES + 1];

static void count_hook(void *arg, implog_event ev, uint64_t n) {
    (void)arg;
    if (ev != IMPLOG_QUEUE_BYTES && ev != IMPLOG_SINK_UP) hook_counts[ev] += n;
}

static void test_close_counts(void **state) {
    char path[300];
    snprintf(path, sizeof path, "%s/fifo3", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    int rd = open(path, O_RDONLY | O_NONBLOCK);
    implog_params p;
    implog_default_params(&p);
    char target[320];
    snprintf(target, sizeof target, "file:%s", path);
    p.target = target;
    p.timeout_ms = 200;
    p.hook = count_hook;
    memset(hook_counts, 0, sizeof hook_counts);
    implog *l;
    char err[256];
    assert_int_equal(implog_open(&p, &l, err, sizeof err), CTR_OK);
    rec x;
    make(&x, 2, 64);
    uint64_t ok = 0;
    for (int k = 0; k < 500; k++) ok += (uint64_t)implog_submit(l, &x.r);
    implog_close(l, 0);
    close(rd);
    assert_int_equal(hook_counts[IMPLOG_DROPPED_FULL], 500 - ok);
    assert_int_equal(hook_counts[IMPLOG_WRITTEN] + hook_counts[IMPLOG_DROPPED_SINK] +
                         hook_counts[IMPLOG_DROPPED_SHUTDOWN],
                     ok);
    assert_true(hook_counts[IMPLOG_DROPPED_SHUTDOWN] > 0);
}

static void test_params(void **state) {
    char why[200], err[256];
    assert_true(implog_target_ok("redis:imp", why, sizeof why));
    assert_true(implog_target_ok("file:/tmp/x", why, sizeof why));
    assert_false(implog_target_ok("redis:", why, sizeof why));
    assert_false(implog_target_ok("file:", why, sizeof why));
    assert_false(implog_target_ok("kafka:x", why, sizeof why));
    assert_false(implog_target_ok(NULL, why, sizeof why));
    assert_non_null(strstr(why, "redis:KEY"));
    implog_params p;
    implog_default_params(&p);
    implog *l = (implog *)1;
    p.target = "file:/nonexistent-dir/x.jsonl";
    assert_int_equal(implog_open(&p, &l, err, sizeof err), CTR_EIO);
    assert_null(l);
    assert_non_null(strstr(err, "/nonexistent-dir/x.jsonl"));
    p.target = "redis:k";
    assert_int_equal(implog_open(&p, &l, err, sizeof err), CTR_EINVAL);
    assert_non_null(strstr(err, "no Redis address"));
    p.target = "bogus";
    assert_int_equal(implog_open(&p, &l, err, sizeof err), CTR_EINVAL);
}

/* --- Redis ------------------------------------------------------------------ */

/* XRANGE key - + through hiredis: checks each entry as record k. */
static int check_stream(const char *addr, const char *key, int first_k, int n) {
    char host[256];
    const char *colon = strrchr(addr, ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    redisContext *c = redisConnect(host, atoi(colon + 1));
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    redisReply *r = redisCommand(c, "XRANGE %s - +", key);
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "MOVED ", 6) == 0) {
        /* A cluster node that does not own the key: ask the one that does. */
        const char *to = strrchr(r->str, ' ') + 1;
        char a2[256];
        snprintf(a2, sizeof a2, "%s", to);
        freeReplyObject(r);
        redisFree(c);
        return check_stream(a2, key, first_k, n);
    }
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    int k = first_k;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i]->element[1];
        assert_int_equal(e->elements, 2);
        assert_string_equal(e->element[0]->str, "impression");
        check(e->element[1]->str, e->element[1]->len, k++, n);
    }
    freeReplyObject(r);
    r = redisCommand(c, "DEL %s", key);
    freeReplyObject(r);
    redisFree(c);
    return k - first_k;
}

static void redis_round_trip(const char *addr, int cluster) {
    implog_params p;
    implog_default_params(&p);
    char target[64];
    snprintf(target, sizeof target, "redis:test_implog:%d:%d", (int)getpid(), cluster);
    p.target = target;
    p.redis_addr = addr;
    p.redis_cluster = cluster;
    p.batch = 16;
    implog *l;
    char err[256];
    assert_int_equal(implog_open(&p, &l, err, sizeof err), CTR_OK);
    rec x;
    for (int k = 0; k < 40; k++) {
        make(&x, k, 9);
        assert_int_equal(implog_submit(l, &x.r), 1);
    }
    assert_true(implog_flush(l, 5000));
    implog_stats st;
    implog_stats_get(l, &st);
    implog_close(l, 1000);
    assert_int_equal(st.written, 40);
    assert_int_equal(st.sink_errors, 0);
    assert_int_equal(check_stream(addr, target + 6, 0, 9), 40);
}

static void test_redis(void **state) {
    const char *addr = getenv("CTR_REDIS");
    if (!addr || !*addr) skip();
    redis_round_trip(addr, 0);
}

/* Every seed of the cluster in turn: most do not own the key (MOVED). */
static void test_redis_cluster(void **state) {
    const char *seeds = getenv("CTR_CLUSTER_SEEDS");
    if (!seeds || !*seeds) skip();
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", seeds);
    int n = 0;
    for (char *s = strtok(buf, ","); s && n < 3; s = strtok(NULL, ","), n++)
        redis_round_trip(s, 1);
}

/* No Redis at the address: batches are dropped and counted, submit goes
 * on, close is prompt. */
static void test_redis_down(void **state) {
    implog_params p;
    implog_default_params(&p);
    p.target = "redis:nowhere";
    p.redis_addr = "127.0.0.1:1";
    p.timeout_ms = 100;
    p.retry_ms = 20;
    p.batch = 4;
    implog *l;
    char err[256];
    assert_int_equal(implog_open(&p, &l, err, sizeof err), CTR_OK);
    rec x;
    make(&x, 0, 4);
    for (int k = 0; k < 20; k++) assert_int_equal(implog_submit(l, &x.r), 1);
    assert_true(implog_flush(l, 5000));
    implog_stats st;
    implog_stats_get(l, &st);
    assert_int_equal(st.written, 0);
    assert_int_equal(st.dropped_sink, 20);
    assert_true(st.sink_errors >= 1);
    implog_close(l, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_file_round_trip),
        cmocka_unit_test(test_ring_wraps),
        cmocka_unit_test(test_stalled_fifo),
        cmocka_unit_test(test_stalled_fifo_accounting),
        cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_reopen),
        cmocka_unit_test(test_close_counts),
        cmocka_unit_test(test_redis),
        cmocka_unit_test(test_redis_cluster),
        cmocka_unit_test(test_redis_down),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
