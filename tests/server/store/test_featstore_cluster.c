/*
 * test_featstore_cluster.c - server/store/featstore_cluster.c: the feature store
 * (featstore.h) in Redis Cluster mode, against the real cluster of
 * $CTR_CLUSTER_SEEDS (3 masters, 3 replicas; tests/run.sh starts one with
 * tests/integration/lib/redis_cluster.sh) and $CTR_REDIS (one node, for
 * parity).  The test fails when either is missing.
 *
 * What it shows: values written through the cluster (one pipeline per
 * master) land on every master and read back equal to the same values
 * through one node; a call's keys go out as one pipeline per node; reads
 * from replicas; a cluster that cannot be reached fails whole, with a
 * message; WRONGTYPE stays malformed data; the feature-set marker; and, on
 * clusters of two fake nodes (fake_redis.h), a node that does not answer
 * costs only its own keys (the others are decoded, the call answers
 * CTR_OK) and its breaker, not the call, and a node whose replies are out
 * of step costs its own items, its connection, and nothing else.
 *
 * Keys carry a prefix of this run (pid, time) and are deleted at the end.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "core/base/clock.h"
#include "core/base/status.h"
#include "proto/features.h"
#include "server/store/featstore.h"
#include "server/store/rcluster.h"

#include "tests/server/store/store_fixture.h"
#include "tests/server/store/fake_redis.h"

static char seeds[1024];
static rcluster_map *map;       /* the cluster's map at start */

/* The port of key's master in the map at start. */
static int master_port(const char *key) {
    int m = rcluster_map_master(map, rcluster_keyslot(key, strlen(key)));
    assert_true(m >= 0);
    return rcluster_map_node(map, m)->port;
}

/* fs_params() on the cluster. */
static featstore_params params(void) {
    featstore_params p = fs_params();
    p.cluster = seeds;
    return p;
}

/* Items 1..n through fs, flushed every `batch`. */
static void put_items(featstore *fs, int n, int batch) {
    unsigned char buf[512];
    for (int64_t id = 1; id <= n; id++) {
        size_t len = make_item(id, buf, sizeof buf);
        assert_int_equal(featstore_put_item(fs, id, buf, len, err, sizeof err), CTR_OK);
        if (featstore_pending(fs) >= batch)
            assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_OK);
    }
    assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_OK);
    assert_int_equal(featstore_pending(fs), 0);
}

#define NITEMS 300

/* --- tests --------------------------------------------------------------- */

static void test_open_refusals(void **state) {
    featstore_params p = params();
    featstore *fs = (featstore *)1;
    const char *bad[] = {"localhost", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
                         "h:12x", ":6379", "::1:6379", "a:1,,b:2", "a:1,", " , "};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        p.cluster = bad[i];
        err[0] = '\0';
        int rc = featstore_open(&p, &fs, err, sizeof err);
        if (rc != CTR_EINVAL) fail_msg("seeds \"%s\": %d", bad[i], rc);
        assert_null(fs);
        assert_non_null(strstr(err, "seed"));
    }
    p = params();
    p.cluster_refresh_ms = 0;
    assert_int_equal(featstore_open(&p, &fs, err, sizeof err), CTR_EINVAL);
    /* Accepted: IPv6 in brackets, blanks around seeds; open does not
     * connect. */
    p = params();
    p.cluster = "[::1]:7000, 127.0.0.1:7001";
    fs = open_fs(&p);
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.connect_attempts, 0);
    featstore_close(fs);
}

/* Written through the cluster: on every master, read back whole. */
static void test_write_read(void **state) {
    featstore_params p = params();
    featstore *fs = open_fs(&p);
    put_items(fs, NITEMS, 64);
    unsigned char buf[256];
    size_t len;
    int64_t seq[3] = {5, 0, 7};
    assert_int_equal(features_user_encode(seq, 3, buf, sizeof buf, &len, err, sizeof err),
                     CTR_OK);
    assert_int_equal(featstore_put_user(fs, "u1", buf, len, err, sizeof err), CTR_OK);
    assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_OK);

    /* Each master holds some of the keys (CRC16 spreads them). */
    int masters = 0;
    long total = 0;
    for (int i = 0; i < nnodes; i++) {
        if (!node_is_master(node_admin[i])) continue;
        masters++;
        long n = admin_count_keys(node_admin[i]);
        assert_true(n > 0);
        total += n;
    }
    assert_int_equal(masters, 3);
    assert_int_equal(total, NITEMS + 1);

    int64_t ids[NITEMS + 1];
    for (int i = 0; i < NITEMS; i++) ids[i] = i + 1;
    ids[NITEMS] = 999999;   /* absent */
    featstore_item out[NITEMS + 1];
    featstore_stats s0, s1;
    featstore_stats_get(fs, &s0);
    assert_int_equal(featstore_get_items(fs, ids, NITEMS + 1, 0, &A, out, err, sizeof err),
                     CTR_OK);
    featstore_stats_get(fs, &s1);
    for (int i = 0; i < NITEMS; i++) check_item(&out[i], ids[i]);
    assert_int_equal(out[NITEMS].found, 0);
    assert_int_equal(out[NITEMS].status, CTR_ENOTFOUND);
    /* One pipeline per master for the whole call. */
    assert_int_equal(s1.round_trips - s0.round_trips, 3);
    assert_int_equal(s1.failures, 0);
    assert_true(s1.map_refreshes >= 1);

    int64_t *h;
    int n;
    assert_int_equal(featstore_get_user(fs, "u1", 4, 0, &A, &h, &n, err, sizeof err), CTR_OK);
    assert_int_equal(n, 3);
    assert_int_equal(h[0], 5);
    assert_int_equal(h[2], 7);
    assert_int_equal(featstore_get_user(fs, "nobody", 4, 0, &A, &h, &n, err, sizeof err),
                     CTR_ENOTFOUND);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);
    featstore_close(fs);
}

/* The same values through one node read back the same. */
static void test_parity_with_one_node(void **state) {
    featstore_params p = params();
    featstore *cl = open_fs(&p);
    p.cluster = NULL;
    p.addr = redis_addr;
    featstore *one = open_fs(&p);
    put_items(one, NITEMS, 100);
    int64_t ids[NITEMS];
    for (int i = 0; i < NITEMS; i++) ids[i] = NITEMS - i;   /* another order */
    featstore_item a[NITEMS], b[NITEMS];
    assert_int_equal(featstore_get_items(cl, ids, NITEMS, 0, &A, a, err, sizeof err), CTR_OK);
    assert_int_equal(featstore_get_items(one, ids, NITEMS, 0, &A, b, err, sizeof err), CTR_OK);
    for (int i = 0; i < NITEMS; i++) {
        assert_int_equal(a[i].found, b[i].found);
        assert_int_equal(a[i].num_tags, b[i].num_tags);
        assert_memory_equal(a[i].tags, b[i].tags, (size_t)a[i].num_tags * sizeof(int32_t));
        assert_memory_equal(a[i].mm, b[i].mm, MM * sizeof(float));
    }
    featstore_close(cl);
    featstore_close(one);
}

/* read_replicas: the replicas answer (their GETRANGE counts grow, the
 * masters' do not), with the same values. */
static void test_read_replicas(void **state) {
    featstore_params p = params();
    p.read_replicas = 1;
    featstore *fs = open_fs(&p);
    int64_t ids[NITEMS];
    for (int i = 0; i < NITEMS; i++) ids[i] = i + 1;
    featstore_item out[NITEMS];
    /* Replication is asynchronous: give the replicas a moment. */
    int ok = 0;
    for (int tries = 0; tries < 100 && !ok; tries++) {
        arena_reset(&A);
        assert_int_equal(featstore_get_items(fs, ids, NITEMS, 0, &A, out, err, sizeof err),
                         CTR_OK);
        ok = 1;
        for (int i = 0; i < NITEMS; i++) ok &= out[i].found;
        if (!ok) sleep_ms(20);
    }
    assert_true(ok);
    long long before[CLUSTER_MAX_NODES];
    for (int i = 0; i < nnodes; i++) before[i] = admin_calls(node_admin[i], "getrange");
    arena_reset(&A);
    assert_int_equal(featstore_get_items(fs, ids, NITEMS, 0, &A, out, err, sizeof err), CTR_OK);
    for (int i = 0; i < NITEMS; i++) check_item(&out[i], ids[i]);
    int replicas_read = 0;
    for (int i = 0; i < nnodes; i++) {
        long long d = admin_calls(node_admin[i], "getrange") - before[i];
        if (node_is_master(node_admin[i])) assert_int_equal(d, 0);
        else replicas_read += d > 0;
    }
    assert_int_equal(replicas_read, 3);
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.replica_reroutes, 0);
    featstore_close(fs);
}

/* A cluster of two fake nodes (slots 0..8191 on f[0], the rest on f[1])
 * holding items 1..n (ids[i] = i + 1, on node on[i]), and p's seed f[0]
 * (written into seed[64], which must outlive p).  Returns how many items
 * are on f[1]: both nodes hold some. */
static int two_fakes(fake f[2], int64_t *ids, int *on, int n, char *seed, featstore_params *p) {
    for (int i = 0; i < 2; i++) fake_start(&f[i], FAKE_STORE, NULL);
    for (int i = 0; i < 2; i++) fake_set_slots(&f[i], f, 2);
    unsigned char v[256];
    char key[128];
    int n1 = 0;
    for (int i = 0; i < n; i++) {
        ids[i] = i + 1;
        snprintf(key, sizeof key, "%si:%d", prefix, i + 1);
        on[i] = rcluster_keyslot(key, strlen(key)) < 8192 ? 0 : 1;
        n1 += on[i];
        fake_store_set(&f[on[i]], key, v, make_item(ids[i], v, sizeof v));
    }
    assert_true(n1 > 0 && n1 < n);
    snprintf(seed, 64, "127.0.0.1:%d", f[0].port);
    p->cluster = seed;
    return n1;
}

/* A master that does not answer within the deadline costs its own keys:
 * the others are read, the call answers CTR_OK, its items say
 * CTR_ETIMEOUT.  Its breaker opens (later calls fail its keys at once,
 * again without failing the call), and closes once it answers.  On a
 * cluster of two fake nodes, one of them hung (muted) for as long as the
 * test says: a paused real node would answer again after a fixed time,
 * which a loaded machine can outlast.  The breaker's period (300..500 ms)
 * outlasts the checks made while it is open. */
static void test_node_down_costs_its_keys(void **state) {
    enum { N = 24 };
    fake f[2];
    int64_t ids[N];
    int on[N];
    char seed[64];
    featstore_params p = params();
    const int on_hung = two_fakes(f, ids, on, N, seed, &p);
    /* Time enough for the fakes' answers on a busy machine; the 500 ms
     * deadline below is over a quarter of it, so its timeout counts
     * against the node. */
    p.command_timeout_ms = 1600;
    p.breaker_base_ms = 400;
    p.breaker_max_ms = 400;
    featstore *fs = open_fs(&p);
    featstore_item out[N];
    assert_int_equal(featstore_get_items(fs, ids, N, 0, &A, out, err, sizeof err), CTR_OK);
    for (int i = 0; i < N; i++) check_item(&out[i], ids[i]);

    fake_mute(&f[1], 1);
    arena_reset(&A);
    double t0 = (double)clock_now_ns();
    int rc = featstore_get_items(fs, ids, N, ms_from_now(500), &A, out, err, sizeof err);
    double took_ms = ((double)clock_now_ns() - t0) / 1e6;
    assert_int_equal(rc, CTR_OK);
    assert_true(took_ms >= 499 && took_ms < 5000);  /* cut, not hung (a loaded machine) */
    assert_non_null(strstr(err, "deadline"));
    for (int i = 0; i < N; i++) {
        if (on[i] == 1) {
            assert_int_equal(out[i].found, 0);
            assert_int_equal(out[i].status, CTR_ETIMEOUT);
        } else {
            check_item(&out[i], ids[i]);
        }
    }
    assert_int_equal(featstore_breaker_state(fs), BREAKER_OPEN);
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.items_unavailable, (uint64_t)on_hung);
    assert_int_equal(st.breaker_opens, 1);
    uint64_t timeouts = st.timeouts;

    /* While its breaker is open: its keys fail at once (no try, so no
     * timeout), the others are read. */
    arena_reset(&A);
    assert_int_equal(featstore_get_items(fs, ids, N, 0, &A, out, err, sizeof err), CTR_OK);
    assert_non_null(strstr(err, "circuit open"));
    for (int i = 0; i < N; i++)
        if (on[i] == 0) check_item(&out[i], ids[i]);
        else assert_int_equal(out[i].found, 0);
    featstore_stats_get(fs, &st);
    assert_true(st.fast_failures >= 1);
    assert_int_equal(st.timeouts, timeouts);

    /* All keys on the hung node: the call fails whole. */
    int64_t one = 0;
    for (int i = 0; i < N && !one; i++)
        if (on[i] == 1) one = ids[i];
    arena_reset(&A);
    assert_int_equal(featstore_get_items(fs, &one, 1, 0, &A, out, err, sizeof err),
                     CTR_EBACKEND);

    /* It answers again; once the breaker's period is over: every item. */
    fake_mute(&f[1], 0);
    int all = 0;
    int64_t dl = ms_from_now(5000);
    while (!all && clock_now_ns() < dl) {
        sleep_ms(20);
        arena_reset(&A);
        assert_int_equal(featstore_get_items(fs, ids, N, 0, &A, out, err, sizeof err),
                         CTR_OK);
        all = 1;
        for (int i = 0; i < N; i++) all &= out[i].found;
    }
    assert_true(all);
    for (int i = 0; i < N; i++) check_item(&out[i], ids[i]);
    assert_int_equal(featstore_breaker_state(fs), BREAKER_CLOSED);
    featstore_close(fs);
    for (int i = 0; i < 2; i++) fake_stop(&f[i]);
}

/* No node reachable: calls fail whole and say why. */
static void test_unreachable(void **state) {
    featstore_params p = params();
    p.cluster = "127.0.0.1:1,127.0.0.1:2";
    p.connect_timeout_ms = 200;
    featstore *fs = open_fs(&p);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND);
    assert_non_null(strstr(err, "CLUSTER SLOTS"));
    int64_t ids[3] = {1, 2, 3};
    featstore_item out[3];
    assert_int_equal(featstore_get_items(fs, ids, 3, 0, &A, out, err, sizeof err),
                     CTR_EBACKEND);
    int64_t *h;
    int n;
    assert_int_equal(featstore_get_user(fs, "u1", 4, 0, &A, &h, &n, err, sizeof err),
                     CTR_EBACKEND);
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_true(st.map_refresh_failures >= 1);
    assert_int_equal(st.map_refreshes, 0);
    featstore_close(fs);

    /* A dead seed before live ones: the live ones give the map. */
    char list[1100];
    snprintf(list, sizeof list, "127.0.0.1:1,%s", seeds);
    p.cluster = list;
    fs = open_fs(&p);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);
    featstore_close(fs);

    /* A plain Redis is not a cluster. */
    p.cluster = redis_addr;
    fs = open_fs(&p);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND);
    assert_non_null(strstr(err, "cluster support disabled"));
    featstore_close(fs);
}

/* A key of another type is malformed data, not a node failure. */
static void test_wrongtype_and_meta(void **state) {
    featstore_params p = params();
    featstore *fs = open_fs(&p);
    char key[128];
    snprintf(key, sizeof key, "%si:777", prefix);
    admin_do(admin_of(master_port(key)), "LPUSH %s x", key);
    int64_t ids[2] = {777, 1};
    featstore_item out[2];
    assert_int_equal(featstore_get_items(fs, ids, 2, 0, &A, out, err, sizeof err), CTR_OK);
    assert_int_equal(out[0].found, 0);
    assert_int_equal(out[0].status, CTR_EFORMAT);
    check_item(&out[1], 1);
    assert_int_equal(featstore_breaker_state(fs), BREAKER_CLOSED);

    char buf[FEATSTORE_META_MAX + 1];
    size_t len;
    assert_int_equal(featstore_get_meta(fs, 0, buf, sizeof buf, &len, err, sizeof err),
                     CTR_ENOTFOUND);
    const char meta[] = "{\"format\":1}";
    assert_int_equal(featstore_put_meta(fs, meta, sizeof meta - 1, err, sizeof err), CTR_OK);
    assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_OK);
    assert_int_equal(featstore_get_meta(fs, 0, buf, sizeof buf, &len, err, sizeof err), CTR_OK);
    assert_string_equal(buf, meta);
    /* The marker lives on the master of its slot. */
    snprintf(key, sizeof key, "%smeta", prefix);
    redisReply *r = redisCommand(admin_of(master_port(key)), "GET %s", key);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, meta);
    freeReplyObject(r);
    featstore_close(fs);
}

/* A node that sends a reply no command asked for: its items fail (not
 * decoded), the other node's are read, the call answers; bytes that
 * arrive on a kept connection while it is idle cost a new connection. */
static void test_desync_costs_its_node(void **state) {
    enum { N = 24 };
    fake f[2];
    int64_t ids[N];
    int on[N];
    char seed[64];
    featstore_params p = params();
    const int n0 = N - two_fakes(f, ids, on, N, seed, &p);
    featstore *fs = open_fs(&p);
    featstore_item out[N];
    assert_int_equal(featstore_get_items(fs, ids, N, 0, &A, out, err, sizeof err), CTR_OK);
    for (int i = 0; i < N; i++) check_item(&out[i], ids[i]);

    fake_inject(&f[0], "$2\r\nv0\r\n", 8, 0);
    arena_reset(&A);
    assert_int_equal(featstore_get_items(fs, ids, N, 0, &A, out, err, sizeof err), CTR_OK);
    assert_non_null(strstr(err, "out of step"));
    for (int i = 0; i < N; i++) {
        if (on[i] == 0) {
            assert_int_equal(out[i].found, 0);
            assert_int_equal(out[i].status, CTR_EBACKEND);
        } else {
            check_item(&out[i], ids[i]);
        }
    }
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.desyncs, 1);
    assert_int_equal(st.items_unavailable, (uint64_t)n0);

    /* Stray bytes on node 1 while idle (held until this call has read its
     * replies); node 0's breaker (opened by the failure above) is let
     * past. */
    fake_inject(&f[1], "+OK\r\n", 5, FAKE_HOLD);
    sleep_ms(200);
    arena_reset(&A);
    assert_int_equal(featstore_get_items(fs, ids, N, 0, &A, out, err, sizeof err), CTR_OK);
    for (int i = 0; i < N; i++) check_item(&out[i], ids[i]);
    fake_release(&f[1]);
    sleep_ms(20);                                /* on loopback: arrived */
    featstore_stats_get(fs, &st);
    uint64_t connects = st.connects;
    arena_reset(&A);
    assert_int_equal(featstore_get_items(fs, ids, N, 0, &A, out, err, sizeof err), CTR_OK);
    for (int i = 0; i < N; i++) check_item(&out[i], ids[i]);
    featstore_stats_get(fs, &st);
    assert_int_equal(st.desyncs, 2);
    assert_int_equal(st.connects, connects + 1);
    featstore_close(fs);
    for (int i = 0; i < 2; i++) fake_stop(&f[i]);
}

/* --- main ---------------------------------------------------------------- */

int main(void) {
    signal(SIGPIPE, SIG_IGN);   /* featstore.h */
    /* The cluster, and the one Redis too (for parity). */
    if (cluster_open("test_featstore_cluster") < 0 || redis_open("test_fsc") < 0) return 1;
    snprintf(seeds, sizeof seeds, "%s", getenv("CTR_CLUSTER_SEEDS"));
    redisReply *r = redisCommand(node_admin[0], "CLUSTER SLOTS");
    if (!r || rcluster_map_parse(r, "127.0.0.1", &map, err, sizeof err) < 0)
        return fprintf(stderr, "CLUSTER SLOTS: %s\n", err), 1;
    freeReplyObject(r);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parity_with_one_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_replicas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_down_costs_its_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unreachable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrongtype_and_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_desync_costs_its_node, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cluster_close();
    redis_close();
    rcluster_map_free(map);
    return failed;
}
