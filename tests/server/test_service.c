/* test_service.c - server/service.c: models added under names (the first
 * the default), found by name, refused when a name repeats or the table is
 * full; each model's feature-store params follow its schema (TIN reads a
 * category and no tags); metrics series per model.  Needs $CTR_GOLDEN. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "svc_fixture.h"

static model_slot *load(const char *name) {
    model_slot_params sp = model_slot_default_params();
    model_slot *s;
    char err[512];
    if (model_slot_load(svc_golden(name), &sp, 1, &s, err, sizeof err) < 0) fail_msg("%s", err);
    return s;
}

static void test_models(void **state) {
    (void)state;
    static service svc;
    memset(&svc, 0, sizeof svc);
    assert_int_equal(metrics_init(&svc.metrics), CTR_OK);
    featstore_default_params(&svc.fs_params);
    model_slot_params sp = model_slot_default_params();
    char err[256];
    assert_null(service_find_model(&svc, NULL));          /* none yet */
    model_slot *q = load("small"), *t = load("tin-small");
    assert_int_equal(service_add_model(&svc, "qin", "/m/q", &sp, "a:", q, err, sizeof err), CTR_OK);
    assert_int_equal(service_add_model(&svc, "tin", "/m/t", &sp, "b:", t, err, sizeof err), CTR_OK);
    /* The default, by name, unknown. */
    assert_ptr_equal(service_find_model(&svc, NULL), &svc.models[0]);
    assert_ptr_equal(service_find_model(&svc, "tin"), &svc.models[1]);
    assert_null(service_find_model(&svc, "din"));
    /* Feature-store params per schema, prefixes per model. */
    const featstore_params *fq = &svc.models[0].fs_params, *ft = &svc.models[1].fs_params;
    assert_int_equal(fq->max_tags, 5);
    assert_int_equal(fq->mm_dim, 12);
    assert_int_equal(fq->cate, 0);
    assert_int_equal(ft->max_tags, 0);
    assert_int_equal(ft->mm_dim, 0);
    assert_int_equal(ft->cate, 1);
    assert_string_equal(fq->prefix, "a:");
    assert_string_equal(ft->prefix, "b:");
    /* Slots know their metrics series. */
    model_slot *s = model_holder_acquire(svc.models[1].holder);
    assert_int_equal(s->metrics_model, 1);
    model_slot_release(s);
    /* A name twice: refused, the caller keeps its slot. */
    model_slot *again = load("small");
    assert_int_equal(service_add_model(&svc, "tin", "/m/t2", &sp, "c:", again, err, sizeof err),
                     CTR_EINVAL);
    assert_non_null(strstr(err, "two models named \"tin\""));
    assert_int_equal(svc.num_models, 2);
    model_slot_release(again);
    service_free_models(&svc);
    assert_int_equal(svc.num_models, 0);
    metrics_free(svc.metrics);
}

static void test_full(void **state) {
    (void)state;
    static service svc;
    memset(&svc, 0, sizeof svc);
    featstore_default_params(&svc.fs_params);
    model_slot_params sp = model_slot_default_params();
    char err[256], name[16];
    for (int i = 0; i <= SERVICE_MAX_MODELS; i++) {
        model_slot *s = load("tin-small");
        snprintf(name, sizeof name, "m%d", i);
        int rc = service_add_model(&svc, name, "/m", &sp, "p:", s, err, sizeof err);
        if (i < SERVICE_MAX_MODELS) {
            assert_int_equal(rc, CTR_OK);
        } else {
            assert_int_equal(rc, CTR_EINVAL);
            assert_non_null(strstr(err, "more than 8 models"));
            model_slot_release(s);
        }
    }
    assert_ptr_equal(service_find_model(&svc, "m7"), &svc.models[7]);
    service_free_models(&svc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_models),
        cmocka_unit_test(test_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
