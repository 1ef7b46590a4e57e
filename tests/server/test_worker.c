/* test_worker.c - server/worker.c: the thread key's set-up and tear-down
 * (a tear-down after a start-up that failed before the key existed leaves
 * other keys alone), one worker per thread, made on first use and freed
 * with its thread or by worker_global_free (LeakSanitizer checks the
 * frees in the address build).  A service without models: no Redis. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <pthread.h>
#include <string.h>

#include "server/worker.h"

static service svc;

/* Before any worker_global_init: worker_global_free must not touch the
 * key its static zero names, which may be another library's (here: a key
 * of this test, holding a value that is no worker).  Freeing that value
 * as a worker crashes (AddressSanitizer reports it at once). */
static void test_free_before_init(void **state) {
    (void)state;
    static char not_a_worker[64] = "not a worker";
    pthread_key_t k;
    assert_int_equal(pthread_key_create(&k, NULL), 0);
    assert_int_equal(pthread_setspecific(k, not_a_worker), 0);
    worker_global_free();
    assert_ptr_equal(pthread_getspecific(k), not_a_worker);
    assert_int_equal(pthread_setspecific(k, NULL), 0);   /* the key still exists */
    assert_int_equal(pthread_key_delete(k), 0);
}

static void *other_thread(void *arg) {
    worker *mine = worker_self(&svc);
    return mine != arg ? mine : NULL;   /* freed as this thread exits */
}

static void test_one_per_thread(void **state) {
    (void)state;
    memset(&svc, 0, sizeof svc);
    assert_int_equal(worker_global_init(), 0);
    worker *w = worker_self(&svc);
    assert_non_null(w);
    assert_ptr_equal(w->svc, &svc);
    assert_ptr_equal(worker_self(&svc), w);             /* made once */
    pthread_t t;
    void *theirs = NULL;
    assert_int_equal(pthread_create(&t, NULL, other_thread, w), 0);
    assert_int_equal(pthread_join(t, &theirs), 0);
    assert_non_null(theirs);                             /* a worker of its own */
    worker_global_free();                                /* frees the main thread's */
    worker_global_free();                                /* twice: nothing more */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_free_before_init),
        cmocka_unit_test(test_one_per_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
