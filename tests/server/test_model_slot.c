/* test_model_slot.c - the model being served: references keep a slot alive
 * across a swap, generations count up, a bad file is refused with a
 * message and leaves nothing behind.  Needs $CTR_GOLDEN. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <pthread.h>

#include "svc_fixture.h"

static model_slot *load(void) {
    item_cache_params cp = item_cache_default_params();
    model_slot *s;
    char err[512];
    assert_int_equal(model_slot_load(svc_golden_model(), &cp, DENSE_FP32, 1, &s, err, sizeof err),
                     CTR_OK);
    return s;
}

static void test_swap(void **state) {
    (void)state;
    model_slot *first = load();
    metrics *m;
    assert_int_equal(metrics_init(&m), CTR_OK);
    first->metrics = m;
    assert_int_equal(first->cfg->num_ctx, 3);
    assert_string_equal(first->ctx_name[0], first->cfg->ctx_name[0]);
    model_holder *h = model_holder_new(first);
    model_slot *held = model_holder_acquire(h);     /* a request in flight */
    assert_ptr_equal(held, first);
    assert_int_equal(atomic_load(&first->refs), 2);

    model_slot *second = load();
    model_holder_swap(h, second);
    assert_int_equal(second->generation, 2);
    assert_ptr_equal(second->metrics, m);           /* inherited */
    /* The old slot lives until its last request lets go. */
    assert_int_equal(atomic_load(&first->refs), 1);
    assert_non_null(qin_model_config(held->model));
    model_slot *now = model_holder_acquire(h);
    assert_ptr_equal(now, second);
    model_slot_release(now);
    model_slot_release(held);                       /* frees the first */
    model_holder_free(h);
    metrics_free(m);
    model_slot_release(NULL);
}

static void test_bad_file(void **state) {
    (void)state;
    item_cache_params cp = item_cache_default_params();
    model_slot *s = (model_slot *)1;
    char err[512] = "";
    assert_true(model_slot_load("/nonexistent/model.safetensors", &cp, DENSE_FP32, 1, &s, err,
                                sizeof err) < 0);
    assert_null(s);
    assert_non_null(strstr(err, "/nonexistent/model.safetensors"));
}

static model_holder *shared;
static void *churn(void *arg) {
    (void)arg;
    for (int i = 0; i < 20000; i++) {
        model_slot *s = model_holder_acquire(shared);
        assert_true(s->generation >= 1);
        model_slot_release(s);
    }
    return NULL;
}

/* Requests acquire and release while slots are swapped under them (ASan
 * and TSan builds check the reference counting). */
static void test_concurrent(void **state) {
    (void)state;
    shared = model_holder_new(load());
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, churn, NULL);
    for (int k = 0; k < 3; k++) model_holder_swap(shared, load());
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    model_slot *s = model_holder_acquire(shared);
    assert_int_equal(s->generation, 4);
    model_slot_release(s);
    model_holder_free(shared);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swap),
        cmocka_unit_test(test_bad_file),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
