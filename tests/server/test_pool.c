/* test_pool.c - fork-join pool: every part runs exactly once, from many
 * concurrent callers, with 0, 1 and several helper threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "core/base/status.h"
#include "server/pool.h"

typedef struct work {
    atomic_int *hits;     /* nparts counters */
    int nparts;
    atomic_int bad;
} work;

static void count_part(void *arg, int part, int nparts) {
    work *w = arg;
    if (nparts != w->nparts || part < 0 || part >= nparts) atomic_fetch_add(&w->bad, 1);
    else atomic_fetch_add(&w->hits[part], 1);
    /* a little work so parts overlap */
    volatile double x = 0;
    for (int i = 0; i < 2000; i++) x += i * 0.5;
}

static void run_and_check(pool *p, int nparts) {
    work w = {calloc((size_t)nparts, sizeof(atomic_int)), nparts, 0};
    pool_run(p, count_part, &w, nparts);
    assert_int_equal(atomic_load(&w.bad), 0);
    for (int i = 0; i < nparts; i++) assert_int_equal(atomic_load(&w.hits[i]), 1);
    free(w.hits);
}

static void test_sizes(void **state) {
    (void)state;
    for (int threads = 0; threads <= 3; threads++) {
        pool *p;
        assert_int_equal(pool_init(threads, &p), CTR_OK);
        assert_int_equal(pool_threads(p), threads);
        for (int n = 1; n <= 9; n++) run_and_check(p, n);
        pool_run(p, count_part, NULL, 0); /* no parts: nothing runs */
        pool_free(p);
    }
}

/* pool_each_thread: each helper once, numbered 0..n-1, on its own thread. */
typedef struct each_rec {
    pthread_mutex_t mu;
    pthread_t who[8];
    int seen[8], calls, bad;
} each_rec;

static void each_part(void *arg, int i, int n) {
    each_rec *r = arg;
    pthread_mutex_lock(&r->mu);
    if (i < 0 || i >= n || n > 8) r->bad++;
    else {
        r->seen[i]++;
        r->who[i] = pthread_self();
    }
    r->calls++;
    pthread_mutex_unlock(&r->mu);
}

static void test_each_thread(void **state) {
    (void)state;
    for (int threads = 0; threads <= 3; threads++) {
        pool *p;
        assert_int_equal(pool_init(threads, &p), CTR_OK);
        for (int round = 0; round < 3; round++) {
            each_rec r = {PTHREAD_MUTEX_INITIALIZER, {0}, {0}, 0, 0};
            pool_each_thread(p, each_part, &r);
            assert_int_equal(r.calls, threads);
            assert_int_equal(r.bad, 0);
            for (int i = 0; i < threads; i++) {
                assert_int_equal(r.seen[i], 1);
                assert_false(pthread_equal(r.who[i], pthread_self()));
                for (int k = 0; k < i; k++) assert_false(pthread_equal(r.who[i], r.who[k]));
            }
            run_and_check(p, 3); /* jobs still run after it */
        }
        pool_free(p);
    }
}

static pool *shared;

static void *caller_main(void *arg) {
    (void)arg;
    for (int i = 0; i < 300; i++) run_and_check(shared, 1 + i % 5);
    return NULL;
}

static void test_concurrent_callers(void **state) {
    (void)state;
    assert_int_equal(pool_init(2, &shared), CTR_OK);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, caller_main, NULL);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    pool_free(shared);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_concurrent_callers),
        cmocka_unit_test(test_each_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
