/*
 * test_featstore_single.c - server/store/featstore_single.c, the feature
 * store's backend for one Redis, through featstore.h: connections made
 * when first needed and reused, a read resent once on a new connection
 * when its reused one turns out closed (a write batch never), the circuit
 * breaker, and deadlines (the request's, the command's and the
 * connect's).  Against a real Redis ($CTR_REDIS, which tests/run.sh always
 * provides; the test fails without it) and against fake servers made
 * here: a port where nothing listens, a listening socket that never
 * answers, one whose listen queue is full; and a fake Redis (fake_redis.h)
 * that sends replies out of step: a reply no command asked for after a
 * pipeline's (with them, or later while the connection is idle), and a
 * reply of the wrong type.
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
#include "tests/server/store/fake_redis.h"

/* fs_params() on $CTR_REDIS. */
static featstore_params params(void) {
    featstore_params p = fs_params();
    p.addr = redis_addr;
    return p;
}

/* A featstore with params p on a loopback port of the test's own (a fake
 * server); addr gets "127.0.0.1:port". */
static featstore *open_at(featstore_params p, int port, char addr[64]) {
    snprintf(addr, 64, "127.0.0.1:%d", port);
    p.addr = addr;
    return open_fs(&p);
}

static void kill_normal_clients(void) {
    redisReply *r = admin_cmd(admin, "CLIENT KILL TYPE normal SKIPME yes");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer >= 1);
    freeReplyObject(r);
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

/* Nothing listens: refused at once, and within the reconnect interval the
 * next calls fail without trying.  (The breaker's period, 300..500 ms, is
 * long enough that a loaded machine makes the next calls within it.) */
static void test_refused(void **state) {
    int port;
    int fd = loopback_socket(0, 0, &port);   /* bound, never listening */
    char addr[64];
    featstore_params p = params();
    p.connect_timeout_ms = 10000;
    p.breaker_base_ms = 400;
    p.breaker_max_ms = 400;
    featstore *fs = open_at(p, port, addr);

    double t0 = now_ms();
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND);
    double t1 = now_ms();
    assert_true(t1 - t0 < 5000);               /* not the connect timeout */
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

    sleep_ms(520);   /* past 1.25 x 400 ms: the next call probes */
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND);
    featstore_stats_get(fs, &st);
    assert_int_equal(st.connect_attempts, 2);
    assert_int_equal(st.breaker_opens, 1);     /* a failed probe re-opens */
    featstore_close(fs);
    close(fd);
}

/* Accepted (by the kernel: nobody calls accept) but never answered: the
 * call gives up at its deadline, and drops the connection.  Upper bounds
 * on times only catch a hang (a loaded machine may add a lot); whether a
 * call waited or failed at once is read from the counters. */
static void test_command_timeout(void **state) {
    int port;
    int fd = loopback_socket(1, 16, &port);
    char addr[64];
    featstore_params p = params();
    p.command_timeout_ms = 40;
    p.breaker_base_ms = 400;   /* open 300..500 ms: the next call comes within */
    p.breaker_max_ms = 400;
    featstore *fs = open_at(p, port, addr);

    double t0 = now_ms();
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_ETIMEOUT);
    double dt = now_ms() - t0;
    assert_true(dt >= 39);
    assert_true(dt < 5000);
    assert_non_null(strstr(err, "40 ms"));

    /* The breaker is open now: the next call fails at once (no attempt,
     * no timeout: a short circuit). */
    int64_t ids[3] = {1, 2, 3};
    featstore_item out[3];
    featstore_stats st;
    assert_int_equal(featstore_get_items(fs, ids, 3, 0, &A, out, err, sizeof err),
                     CTR_EBACKEND);
    featstore_stats_get(fs, &st);
    assert_int_equal(st.fast_failures, 1);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.connect_attempts, 1);
    /* After the open period the next call probes: it times out too. */
    sleep_ms(520);
    t0 = now_ms();
    assert_int_equal(featstore_get_items(fs, ids, 3, 0, &A, out, err, sizeof err),
                     CTR_ETIMEOUT);
    dt = now_ms() - t0;
    assert_true(dt >= 39 && dt < 5000);

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
    int fill[4];
    int lfd = full_listen_queue(&port, fill);
    char addr[64];
    featstore_params p = params();
    p.connect_timeout_ms = 60;
    featstore *fs = open_at(p, port, addr);
    double t0 = now_ms();
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND);
    double dt = now_ms() - t0;
    assert_non_null(strstr(err, "connect timed out after 60 ms"));
    assert_true(dt >= 59 && dt < 5000);
    featstore_close(fs);
    for (int i = 0; i < 4; i++) close(fill[i]);
    close(lfd);
}

/* The breaker closes on the first successful probe: a Redis that comes back
 * is used again within the recovery bound.  The Redis is a fake that hangs
 * (muted) until the test says, so a loaded machine cannot see it answer
 * early; the breaker's first period (300..500 ms) outlasts the checks made
 * while it is open.  (Its doubling and cap: test_breaker.c, on a clock of
 * its own.) */
static void test_breaker_recovers(void **state) {
    fake f;
    fake_start(&f, FAKE_STORE, NULL);
    char addr[64];
    featstore_params p = params();
    p.command_timeout_ms = 1600;  /* the fake's answers, however busy the machine */
    p.breaker_base_ms = 400;
    p.breaker_max_ms = 400;
    featstore *fs = open_at(p, f.port, addr);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);
    fake_mute(&f, 1);
    /* A deadline of 500 ms: over a quarter of the command timeout, so its
     * timeout counts against Redis and opens the breaker. */
    assert_int_equal(featstore_ping(fs, ms_from_now(500), err, sizeof err), CTR_ETIMEOUT);
    assert_int_equal(featstore_breaker_state(fs), BREAKER_OPEN);
    featstore_stats st;
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND); /* at once: */
    featstore_stats_get(fs, &st);
    assert_int_equal(st.fast_failures, 1);                                   /* no try */
    assert_int_equal(st.timeouts, 1);
    /* Redis answers again; within the bound (1.25 x 400 ms) plus a margin
     * for a loaded machine (where a probe may time out once more), a call
     * probes and succeeds. */
    fake_mute(&f, 0);
    double t0 = now_ms();
    int ok = 0;
    while (!ok && now_ms() - t0 < 5000) {
        ok = featstore_ping(fs, 0, err, sizeof err) == CTR_OK;
        if (!ok) sleep_ms(10);
    }
    double took = now_ms() - t0;
    assert_true(ok);
    assert_true(took < 500 + 1000);
    assert_int_equal(featstore_breaker_state(fs), BREAKER_CLOSED);
    featstore_close(fs);
    fake_stop(&f);
}

/* A deadline already past fails at once and leaves the breaker closed; a
 * deadline sooner than command_timeout_ms cuts the call there. */
static void test_deadline(void **state) {
    int port;
    int fd = loopback_socket(1, 16, &port);
    char addr[64];
    featstore_params p = params();
    p.command_timeout_ms = 10000;
    featstore *fs = open_at(p, port, addr);
    assert_int_equal(featstore_ping(fs, clock_now_ns() - 1, err, sizeof err), CTR_ETIMEOUT);
    assert_int_equal(featstore_breaker_state(fs), BREAKER_CLOSED);
    double t0 = now_ms();
    assert_int_equal(featstore_ping(fs, clock_now_ns() + 30000000, err, sizeof err),
                     CTR_ETIMEOUT);
    double dt = now_ms() - t0;
    assert_true(dt >= 29 && dt < 5000);        /* cut at 30 ms, not 10 s */
    /* 30 ms of a 10 s command timeout: the request's budget ran out, not
     * Redis's, so the breaker stays closed. */
    assert_int_equal(featstore_breaker_state(fs), BREAKER_CLOSED);
    featstore_close(fs);
    close(fd);
}

/* --- Replies out of step ------------------------------------------------- */

/* The RESP bulk string of item id's value (make_item), in buf. */
static size_t item_bulk(int64_t id, char *buf, size_t cap) {
    unsigned char v[256];
    size_t len = make_item(id, v, sizeof v);
    size_t k = (size_t)snprintf(buf, cap, "$%zu\r\n", len);
    assert_true(k + len + 2 <= cap);
    memcpy(buf + k, v, len);
    memcpy(buf + k + len, "\r\n", 2);
    return k + len + 2;
}

/* Items 1..3 of the fake, read: CTR_OK with each one right, or a failure
 * (never a wrong value); the status. */
static int read_items(featstore *fs) {
    static const int64_t ids[3] = {1, 2, 3};
    featstore_item out[3];
    arena_reset(&A);
    int rc = featstore_get_items(fs, ids, 3, 0, &A, out, err, sizeof err);
    if (rc == CTR_OK)
        for (int i = 0; i < 3; i++) check_item(&out[i], ids[i]);
    return rc;
}

/* A Redis (or a proxy in front of it) that sends one reply no command
 * asked for.  Without the checks, every later command on the connection
 * would read the reply of the one before: here item 1 would get item 4's
 * value, item 2 item 1's... and nothing would say so.  With them, the
 * pipeline that has one reply too many fails (CTR_EBACKEND, nothing
 * decoded), the connection is dropped and counted, and the next call
 * reads the right values on a new connection. */
static void test_desync_extra_reply(void **state) {
    fake f;
    fake_start(&f, FAKE_STORE, NULL);
    unsigned char v[256];
    char key[128];
    for (int64_t id = 1; id <= 4; id++) {
        snprintf(key, sizeof key, "%si:%lld", prefix, (long long)id);
        fake_store_set(&f, key, v, make_item(id, v, sizeof v));
    }
    char addr[64];
    featstore_params p = params();
    p.breaker_base_ms = p.breaker_max_ms = 10;   /* a failed call opens it */
    featstore *fs = open_at(p, f.port, addr);
    assert_int_equal(read_items(fs), CTR_OK);

    /* With the pipeline's replies, in one write: that call fails, the
     * others read the right values. */
    char extra[512];
    size_t n = item_bulk(4, extra, sizeof extra);
    fake_inject(&f, extra, n, 0);
    int failed = 0;
    for (int k = 0; k < 4; k++) {
        int rc = read_items(fs);
        if (rc == CTR_OK) continue;
        assert_int_equal(rc, CTR_EBACKEND);
        assert_non_null(strstr(err, "out of step"));
        failed++;
        sleep_ms(20);                            /* past the breaker */
    }
    assert_int_equal(failed, 1);
    featstore_stats st;
    featstore_stats_get(fs, &st);
    assert_int_equal(st.desyncs, 1);

    /* After the replies, once the call has its values (held until then,
     * not a fixed delay a slow machine could outlast): the stray reply is
     * found before the next call sends anything, which then goes out on a
     * new connection. */
    fake_inject(&f, extra, n, FAKE_HOLD);
    assert_int_equal(read_items(fs), CTR_OK);
    fake_release(&f);
    sleep_ms(20);                                /* on loopback: arrived */
    featstore_stats_get(fs, &st);
    uint64_t failures = st.failures, connects = st.connects;
    assert_int_equal(read_items(fs), CTR_OK);
    featstore_stats_get(fs, &st);
    assert_int_equal(st.desyncs, 2);
    assert_int_equal(st.failures, failures);
    assert_int_equal(st.connects, connects + 1);

    /* A reply of a type the command does not answer (before the checks: an
     * item counted malformed, the connection kept). */
    fake_replace(&f, ":7\r\n");
    assert_int_equal(read_items(fs), CTR_EBACKEND);
    featstore_stats_get(fs, &st);
    assert_int_equal(st.desyncs, 3);
    assert_int_equal(st.items_malformed, 0);
    sleep_ms(20);
    assert_int_equal(read_items(fs), CTR_OK);

    /* A history read, and PING answered by another command's +OK. */
    int64_t *ids;
    int nh;
    fake_inject(&f, ":5\r\n", 4, 0);
    assert_int_equal(featstore_get_user(fs, "nobody", 0, 0, &A, &ids, &nh, err, sizeof err),
                     CTR_EBACKEND);
    sleep_ms(20);
    assert_int_equal(featstore_get_user(fs, "nobody", 0, 0, &A, &ids, &nh, err, sizeof err),
                     CTR_ENOTFOUND);
    fake_replace(&f, "+OK\r\n");
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_EBACKEND);
    assert_non_null(strstr(err, "+OK answered PING"));
    sleep_ms(20);
    assert_int_equal(featstore_ping(fs, 0, err, sizeof err), CTR_OK);
    featstore_stats_get(fs, &st);
    assert_int_equal(st.desyncs, 5);

    /* ctr-load's batches: an extra reply after the SETs' fails the flush. */
    assert_int_equal(featstore_put_item(fs, 9, v, make_item(9, v, sizeof v), err, sizeof err),
                     CTR_OK);
    fake_inject(&f, "+OK\r\n", 5, 0);
    assert_int_equal(featstore_flush(fs, err, sizeof err), CTR_EBACKEND);
    featstore_stats_get(fs, &st);
    assert_int_equal(st.desyncs, 6);
    featstore_close(fs);
    fake_stop(&f);
}

/* --- main ------------------------------------------------------------------ */

int main(void) {
    signal(SIGPIPE, SIG_IGN);   /* featstore.h: the process must ignore SIGPIPE */
    if (redis_open("test_featstore_single") < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_after_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_after_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_breaker_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_desync_extra_reply, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    redis_close();
    return failed;
}
