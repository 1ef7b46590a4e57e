/*
 * test_rconn.c - server/store/rconn.c, one Redis connection under a
 * deadline: connecting (refused, AUTH refused without the password in the
 * message), pipelines answered in order (error replies are answers), the
 * non-blocking pieces, and each kind of failure, after which the
 * connection refuses to be used again: a server that never answers
 * (RCONN_TIMEOUT), one that hangs up (RCONN_CLOSED), one that answers
 * bytes that are not RESP (RCONN_PROTOCOL); and replies out of step
 * (RCONN_DESYNC): a reply no command asked for after a pipeline's, in the
 * same write or later while the connection is idle, and a reply of a type
 * its command does not answer.
 *
 * Against a real Redis ($CTR_REDIS, which tests/run.sh always provides;
 * the test fails without it) and fake servers (fake_redis.h).
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

#include "core/base/status.h"
#include "server/store/rconn.h"

#include "tests/server/store/store_fixture.h"
#include "tests/server/store/fake_redis.h"

static const rconn_params plain = {2000, NULL, NULL};

static rconn *open_redis(void) {
    rconn *c;
    if (rconn_open(&plain, redis_host, redis_port, 0, &c, err, sizeof err) != CTR_OK)
        fail_msg("rconn_open: %s", err);
    assert_int_equal(rconn_error_of(c), RCONN_NONE);
    return c;
}

static rconn *open_fake(const fake *f) {
    rconn *c;
    if (rconn_open(&plain, "127.0.0.1", f->port, 0, &c, err, sizeof err) != CTR_OK)
        fail_msg("rconn_open: %s", err);
    return c;
}

/* Commands of up to 4 arguments, given as C strings. */
typedef struct cmdbuf {
    const char *argv[8][4];
    size_t lens[8][4];
    rconn_cmd cmd[8];
    int n;
} cmdbuf;

static void add(cmdbuf *b, int expect, int argc, ...) {
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++) {
        b->argv[b->n][i] = va_arg(ap, const char *);
        b->lens[b->n][i] = strlen(b->argv[b->n][i]);
    }
    va_end(ap);
    b->cmd[b->n] = (rconn_cmd){argc, b->argv[b->n], b->lens[b->n], expect};
    b->n++;
}

static void test_error_names(void **state) {
    (void)state;
    assert_string_equal(rconn_error_name(RCONN_NONE), "no error");
    assert_string_equal(rconn_error_name(RCONN_TIMEOUT), "timed out");
    assert_string_equal(rconn_error_name(RCONN_CLOSED), "connection closed");
    assert_string_equal(rconn_error_name(RCONN_ERROR_COUNT), "unknown");
    for (int e = 0; e < RCONN_ERROR_COUNT; e++)
        assert_string_not_equal(rconn_error_name((rconn_error)e), "unknown");
}

/* A pipeline's replies come back in order, error replies among them; the
 * connection stays usable after an error reply. */
static void test_pipeline(void **state) {
    (void)state;
    rconn *c = open_redis();
    char key[128];
    snprintf(key, sizeof key, "%sk", prefix);
    cmdbuf b = {.n = 0};
    add(&b, RCONN_STATUS, 3, "SET", key, "hello");
    add(&b, RCONN_INTEGER, 2, "STRLEN", key);
    add(&b, RCONN_STRING, 4, "GETRANGE", key, "1", "3");
    add(&b, RCONN_STATUS, 1, "NOSUCHCOMMAND");
    add(&b, RCONN_INTEGER, 2, "LPUSH", key);   /* wrong arity: an error reply */
    add(&b, RCONN_STATUS, 1, "PING");
    redisReply *r[6];
    assert_int_equal(rconn_exchange(c, b.n, b.cmd, ms_from_now(2000), r, err, sizeof err),
                     CTR_OK);
    assert_int_equal(r[0]->type, REDIS_REPLY_STATUS);
    assert_int_equal(r[1]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r[1]->integer, 5);
    assert_string_equal(r[2]->str, "ell");
    assert_int_equal(r[3]->type, REDIS_REPLY_ERROR);
    assert_true(rconn_reply_is(r[3], "ERR"));
    assert_false(rconn_reply_is(r[3], "WRONGTYPE"));
    assert_false(rconn_reply_is(r[2], "ell"));          /* not an error reply */
    assert_int_equal(r[4]->type, REDIS_REPLY_ERROR);
    assert_string_equal(r[5]->str, "PONG");
    for (int i = 0; i < 6; i++) freeReplyObject(r[i]);
    /* Still in step. */
    const char *argv[] = {"GET", key};
    const size_t lens[] = {3, strlen(key)};
    redisReply *one;
    assert_int_equal(rconn_command(c, 2, argv, lens, RCONN_STRING | RCONN_NIL, ms_from_now(2000),
                                   &one, err, sizeof err),
                     CTR_OK);
    assert_string_equal(one->str, "hello");
    freeReplyObject(one);
    assert_int_equal(rconn_error_of(c), RCONN_NONE);
    rconn_close(c);
}

/* The pieces a caller with its own ppoll uses. */
static void test_nonblocking_pieces(void **state) {
    (void)state;
    rconn *c = open_redis();
    cmdbuf b = {.n = 0};
    add(&b, RCONN_STRING, 2, "ECHO", "one");
    add(&b, RCONN_STRING, 2, "ECHO", "two");
    for (int i = 0; i < b.n; i++) assert_int_equal(rconn_append(c, &b.cmd[i]), CTR_OK);
    int done = 0;
    int64_t dl = ms_from_now(2000);
    while (!done && clock_now_ns() < dl) assert_int_equal(rconn_write(c, &done), CTR_OK);
    assert_true(done);
    redisReply *got[2] = {NULL, NULL};
    int n = 0;
    while (n < 2 && clock_now_ns() < dl) {
        assert_int_equal(rconn_read(c), CTR_OK);
        redisReply *r;
        while (n < 2 && rconn_take(c, RCONN_STRING, &r) == CTR_OK && r) got[n++] = r;
    }
    assert_int_equal(n, 2);
    assert_string_equal(got[0]->str, "one");
    assert_string_equal(got[1]->str, "two");
    freeReplyObject(got[0]);
    freeReplyObject(got[1]);
    assert_true(rconn_fd(c) >= 0);
    rconn_close(c);
    rconn_close(NULL);
}

/* Refused at once; AUTH refused, and the password is in no message. */
static void test_open_refused(void **state) {
    (void)state;
    rconn *c = (rconn *)1;
    double t0 = now_ms();
    assert_int_equal(rconn_open(&plain, "127.0.0.1", dead_port(), 0, &c, err, sizeof err),
                     CTR_EBACKEND);
    assert_true(now_ms() - t0 < 1000);
    assert_null(c);
    assert_non_null(strstr(err, "refused"));

    const rconn_params secret = {2000, NULL, "hunter2-secret"};
    assert_int_equal(rconn_open(&secret, redis_host, redis_port, 0, &c, err, sizeof err),
                     CTR_EBACKEND);
    assert_null(c);
    assert_non_null(strstr(err, "authentication refused"));
    assert_null(strstr(err, "hunter2"));
    const rconn_params user = {2000, "nobody-user", "hunter2-secret"};
    assert_int_equal(rconn_open(&user, redis_host, redis_port, 0, &c, err, sizeof err),
                     CTR_EBACKEND);
    assert_null(strstr(err, "hunter2"));

    /* A deadline sooner than the connect timeout bounds the connect: a
     * full listen queue never completes one. */
    int port, fill[4];
    int lfd = full_listen_queue(&port, fill);
    t0 = now_ms();
    assert_int_equal(rconn_open(&plain, "127.0.0.1", port, ms_from_now(50), &c, err, sizeof err),
                     CTR_EBACKEND);
    double dt = now_ms() - t0;
    assert_true(dt >= 49 && dt < 1000);
    assert_non_null(strstr(err, "connect timed out after 50 ms"));
    for (int i = 0; i < 4; i++) close(fill[i]);
    close(lfd);
}

/* After any failure the connection is refused for further use: the next
 * command would read a reply that is not its own. */
static void expect_failed(rconn *c, rconn_error kind) {
    assert_int_equal(rconn_error_of(c), kind);
    assert_true(rconn_why(c)[0] != '\0');
    const char *argv[] = {"PING"};
    const size_t lens[] = {4};
    redisReply *r = (redisReply *)1;
    assert_int_equal(rconn_command(c, 1, argv, lens, RCONN_STATUS, ms_from_now(100), &r, err, sizeof err),
                     CTR_EBACKEND);
    assert_null(r);
    int done;
    assert_int_equal(rconn_write(c, &done), CTR_EBACKEND);
    assert_int_equal(rconn_read(c), CTR_EBACKEND);
    assert_int_equal(rconn_take(c, RCONN_ANY, &r), CTR_EBACKEND);
}

static void test_failures(void **state) {
    (void)state;
    const char *argv[] = {"PING"};
    const size_t lens[] = {4};
    redisReply *r;

    fake silent;
    fake_start(&silent, FAKE_SILENT, NULL);
    rconn *c = open_fake(&silent);
    double t0 = now_ms();
    assert_int_equal(rconn_command(c, 1, argv, lens, RCONN_STATUS, ms_from_now(40), &r, err, sizeof err),
                     CTR_ETIMEOUT);
    double dt = now_ms() - t0;
    assert_true(dt >= 39 && dt < 5000);   /* cut at the deadline, not hung */
    assert_null(r);
    assert_string_equal(err, "no answer");
    expect_failed(c, RCONN_TIMEOUT);
    rconn_close(c);
    fake_stop(&silent);

    fake hangup;
    fake_start(&hangup, FAKE_HANGUP, NULL);
    c = open_fake(&hangup);
    assert_int_equal(rconn_command(c, 1, argv, lens, RCONN_STATUS, ms_from_now(2000), &r, err, sizeof err),
                     CTR_EBACKEND);
    expect_failed(c, RCONN_CLOSED);
    rconn_close(c);
    fake_stop(&hangup);

    fake garbage;
    fake_start(&garbage, FAKE_REPLY, "?this is not RESP\r\n");
    c = open_fake(&garbage);
    assert_int_equal(rconn_command(c, 1, argv, lens, RCONN_STATUS, ms_from_now(2000), &r, err, sizeof err),
                     CTR_EBACKEND);
    expect_failed(c, RCONN_PROTOCOL);
    rconn_close(c);
    fake_stop(&garbage);
}

/* --- Replies out of step ------------------------------------------------ */

static void gets2(cmdbuf *b) {
    b->n = 0;
    add(b, RCONN_STRING | RCONN_NIL, 2, "GET", "k1");
    add(b, RCONN_STRING | RCONN_NIL, 2, "GET", "k2");
}

/* The pipeline answered in order: "one", "two". */
static void expect_clean(rconn *c, const cmdbuf *b) {
    redisReply *r[2];
    if (rconn_exchange(c, 2, b->cmd, ms_from_now(2000), r, err, sizeof err) != CTR_OK)
        fail_msg("exchange: %s", err);
    assert_string_equal(r[0]->str, "one");
    assert_string_equal(r[1]->str, "two");
    freeReplyObject(r[0]);
    freeReplyObject(r[1]);
}

/* A fake Redis holding k1 = "one", k2 = "two", a connection to it, and
 * the pipeline GET k1, GET k2 in b. */
static fake *store_fake(rconn **c, cmdbuf *b) {
    static fake f;
    fake_start(&f, FAKE_STORE, NULL);
    fake_store_set(&f, "k1", "one", 3);
    fake_store_set(&f, "k2", "two", 3);
    *c = open_fake(&f);
    gets2(b);
    return &f;
}

/* The pipeline b fails out of step, err saying `why`, none of its replies
 * handed out; c is failed (and closed here). */
static void expect_out_of_step(rconn *c, const cmdbuf *b, const char *why) {
    redisReply *r[2] = {(redisReply *)1, (redisReply *)1};
    assert_int_equal(rconn_exchange(c, 2, b->cmd, ms_from_now(2000), r, err, sizeof err),
                     CTR_EBACKEND);
    assert_null(r[0]);
    assert_null(r[1]);
    assert_string_equal(err, why);
    expect_failed(c, RCONN_DESYNC);
    rconn_close(c);
}

/* One reply too many, in the same write as a pipeline's replies: the
 * pipeline fails out of step and hands out none of its replies (the
 * extra one would have answered the next command). */
static void test_desync_left_over(void **state) {
    (void)state;
    rconn *c;
    cmdbuf b;
    fake *f = store_fake(&c, &b);
    expect_clean(c, &b);
    fake_inject(f, "$3\r\none\r\n", 9, 0);
    expect_out_of_step(c, &b, "out of step: 9 bytes left over after the replies");
    /* A new connection is in step. */
    c = open_fake(f);
    expect_clean(c, &b);
    rconn_close(c);
    fake_stop(f);
}

/* A reply of a type its command does not answer; error replies answer
 * every command. */
static void test_desync_wrong_type(void **state) {
    (void)state;
    rconn *c;
    cmdbuf b;
    fake *f = store_fake(&c, &b);
    fake_replace(f, "-LOADING Redis is loading the dataset in memory\r\n");
    redisReply *r[2];
    assert_int_equal(rconn_exchange(c, 2, b.cmd, ms_from_now(2000), r, err, sizeof err), CTR_OK);
    assert_true(rconn_reply_is(r[0], "LOADING"));
    assert_string_equal(r[1]->str, "two");
    freeReplyObject(r[0]);
    freeReplyObject(r[1]);
    fake_replace(f, ":7\r\n");
    expect_out_of_step(c, &b, "out of step: a reply of type integer where string or nil was due");

    /* The same through the non-blocking pieces. */
    c = open_fake(f);
    fake_replace(f, "*0\r\n");
    assert_int_equal(rconn_append(c, &b.cmd[0]), CTR_OK);
    assert_int_equal(rconn_send(c, ms_from_now(2000), err, sizeof err), CTR_OK);
    redisReply *one = NULL;
    int64_t dl = ms_from_now(2000);
    int rc = CTR_OK;
    while (rc == CTR_OK && !one && clock_now_ns() < dl) {
        sleep_ms(1);
        if ((rc = rconn_read(c)) == CTR_OK) rc = rconn_take(c, b.cmd[0].expect, &one);
    }
    assert_int_equal(rc, CTR_EBACKEND);
    assert_null(one);
    expect_failed(c, RCONN_DESYNC);
    rconn_close(c);
    fake_stop(f);
}

/* One reply too many, after the pipeline's were read: seen before the
 * connection is used again. */
static void test_desync_idle(void **state) {
    (void)state;
    rconn *c;
    cmdbuf b;
    fake *f = store_fake(&c, &b);
    expect_clean(c, &b);
    sleep_ms(20);
    assert_int_equal(rconn_check_idle(c, err, sizeof err), CTR_OK);   /* nothing stray */
    fake_inject(f, "+OK\r\n", 5, FAKE_HOLD);   /* after this exchange is read */
    expect_clean(c, &b);
    fake_release(f);
    struct pollfd p = {.fd = rconn_fd(c), .events = POLLIN};
    assert_int_equal(poll(&p, 1, 2000), 1);      /* the stray reply is in */
    assert_int_equal(rconn_check_idle(c, err, sizeof err), CTR_EBACKEND);
    assert_string_equal(err, "out of step: 5 bytes arrived while no command was waiting");
    expect_failed(c, RCONN_DESYNC);
    rconn_close(c);
    fake_stop(f);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);   /* rconn.h */
    if (redis_open("test_rconn") < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_names),
        cmocka_unit_test_setup_teardown(test_pipeline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nonblocking_pieces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_desync_left_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_desync_wrong_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_desync_idle, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    redis_close();
    return failed;
}
