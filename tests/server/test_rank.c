/* test_rank.c - the stages of POST /v1/rank (server/rank.h), each called on
 * its own: decode errors and the deadline, history from the request or the
 * store, a store that is down, deadlines that run short, and scores that
 * are not finite.  Needs $CTR_REDIS and $CTR_GOLDEN (tests/run.sh). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>

#include "svc_fixture.h"
#include "server/rank.h"

static service svc;
static worker *w;

static int setup(void **state) {
    (void)state;
    if (svc_init(&svc) < 0) return -1;
    if (worker_global_init() < 0) return -1;
    w = worker_self(&svc);
    return w ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    worker_global_free();
    svc_free(&svc);
    return 0;
}

static rank_input input(const char *body) {
    return (rank_input){body, strlen(body), clock_now_ns(), 0};
}

static json_t *answer(void) {
    json_error_t e;
    json_t *j = json_loadb(w->out.data, w->out.len, 0, &e);
    assert_non_null(j);
    return j;
}

static int degraded(json_t *j, const char *reason) {
    json_t *d = json_object_get(j, "degraded"), *v;
    size_t i;
    json_array_foreach(d, i, v) if (strcmp(json_string_value(v), reason) == 0) return 1;
    return 0;
}

static const char *code(void) {
    static char c[64];
    json_t *j = answer();
    snprintf(c, sizeof c, "%s", json_string_value(json_object_get(json_object_get(j, "error"),
                                                                   "code")));
    json_decref(j);
    return c;
}

static void test_decode(void **state) {
    (void)state;
    rank_ctx x;
    rank_input in = input("{\"user_id\": 1, ");
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 400);
    assert_string_equal(code(), "bad_json");
    rank_end(&x);

    in = input("{\"user_id\": 1, \"candidates\": [{\"item_id\": 99999}]}");
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 422);
    assert_string_equal(code(), "out_of_range");
    rank_end(&x);

    /* Waited past its deadline before a worker took it: shed. */
    in = input("{\"user_id\": 1, \"candidates\": [{\"item_id\": 1}], \"deadline_ms\": 5}");
    in.arrival_ns -= 10 * 1000000LL;
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 503);
    assert_string_equal(code(), "overloaded");
    rank_end(&x);

    /* The body's deadline beats the header's, the cap beats both. */
    in = input("{\"user_id\": 1, \"candidates\": [], \"deadline_ms\": 7}");
    in.header_deadline_ms = 9;
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(x.deadline_ms, 7);
    rank_end(&x);
    in = input("{\"user_id\": 1, \"candidates\": []}");
    in.header_deadline_ms = 999999;
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(x.deadline_ms, svc.max_deadline_ms);
    rank_end(&x);
}

static void test_full(void **state) {
    (void)state;
    rank_input in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 7}, "
                          "{\"item_id\": 8}, {\"item_id\": 50}], \"request_id\": \"r\"}");
    assert_int_equal(rank_handle(w, &in), 200);
    json_t *j = answer();
    json_t *items = json_object_get(j, "items");
    assert_int_equal(json_array_size(items), 2);          /* 50 has no features */
    assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "unscored"), 0)), 50);
    assert_true(degraded(j, "item_features_missing"));
    assert_false(degraded(j, "history_unavailable"));
    double s = json_real_value(json_object_get(json_array_get(items, 0), "score"));
    assert_true(s > 0 && s < 1);
    assert_non_null(json_object_get(json_object_get(j, "stage_us"), "score"));
    json_decref(j);

    /* History from the store: the same as giving it in the request. */
    rank_ctx x;
    in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 7}]}");
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(rank_history(&x), 0);
    assert_int_equal(x.nh, 5);
    assert_int_equal(x.hist_ids[4], 5);
    rank_end(&x);
}

static void test_deadline_short(void **state) {
    (void)state;
    rank_ctx x;
    rank_input in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 9}]}");
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    /* Nothing left after the model's share: the history is skipped. */
    x.deadline_ns = clock_now_ns() + 1000;
    assert_int_equal(rank_history(&x), 0);
    assert_int_equal(x.nh, 0);
    assert_string_equal(x.degraded[0], "history_deadline");
    /* ...and so is the item read: no candidate can be scored. */
    assert_int_equal(rank_items(&x), 503);
    assert_string_equal(code(), "deadline_exceeded");
    rank_end(&x);

    /* Scoring that would not fit: as many as fit (here none: 503). */
    in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 9}, {\"item_id\": 10}]}");
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(rank_history(&x), 0);
    assert_int_equal(rank_items(&x), 0);
    long long saved = atomic_load(&svc.score_ns_per_mflop);
    atomic_store(&svc.score_ns_per_mflop, 1000000000000LL);
    assert_int_equal(rank_score(&x), 503);
    assert_string_equal(code(), "deadline_exceeded");
    atomic_store(&svc.score_ns_per_mflop, saved);
    rank_end(&x);
}

static void test_store_down(void **state) {
    (void)state;
    featstore *good = w->fs;
    featstore_params p = svc.fs_params;
    p.addr = "127.0.0.1:1";
    char err[256];
    assert_int_equal(featstore_open(&p, &w->fs, err, sizeof err), CTR_OK);
    rank_ctx x;
    rank_input in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 11}]}");
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(rank_history(&x), 0);
    assert_string_equal(x.degraded[0], "history_unavailable");
    assert_int_equal(rank_items(&x), 503);            /* item 11 not cached */
    assert_string_equal(code(), "unavailable");
    rank_end(&x);
    featstore_close(w->fs);
    w->fs = good;
}

/* A history item whose (finite) vector overflows the attention: found,
 * dropped, everything scored; a candidate whose score is not finite is
 * unscored, never null. */
static void test_non_finite(void **state) {
    (void)state;
    rank_ctx x;
    rank_input in = input("{\"user_id\": \"x\", \"item_seq\": [1, 2, 3], "
                          "\"candidates\": [{\"item_id\": 4}, {\"item_id\": 5}]}");
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(rank_history(&x), 0);
    assert_int_equal(rank_items(&x), 0);
    const size_t vf = qin_item_vec_floats(x.slot->model);
    float *huge = qin_item_vec_alloc(x.slot->model);
    for (size_t k = 0; k < vf; k++) huge[k] = 1e30f;
    x.uvec[x.hist_u[1]] = huge;
    assert_int_equal(rank_score(&x), 0);
    assert_true(x.scored[0] && x.scored[1]);
    assert_true(isfinite(x.prob[0]) && isfinite(x.prob[1]));
    assert_string_equal(x.degraded[x.ndeg - 1], "history_item_invalid");
    rank_end(&x);

    in = input("{\"user_id\": \"x\", \"item_seq\": [], "
                "\"candidates\": [{\"item_id\": 4}, {\"item_id\": 5}]}");
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(rank_history(&x), 0);
    assert_int_equal(rank_items(&x), 0);
    x.uvec[x.cand_u[0]] = huge;
    assert_int_equal(rank_score(&x), 0);
    assert_false(x.scored[0]);
    assert_true(x.scored[1]);
    assert_int_equal(rank_answer(&x), 200);
    json_t *j = answer();
    assert_true(degraded(j, "non_finite"));
    assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "unscored"), 0)), 4);
    assert_int_equal(json_array_size(json_object_get(j, "items")), 1);
    json_decref(j);
    rank_end(&x);
    free(huge);
}

static void test_feature_set_missing(void **state) {
    (void)state;
    atomic_store(&svc.feature_set, SERVICE_FS_MISSING);
    rank_input in = input("{\"user_id\": \"new\", \"candidates\": [{\"item_id\": 7}]}");
    assert_int_equal(rank_handle(w, &in), 200);
    json_t *j = answer();
    assert_true(degraded(j, "feature_set_missing"));
    json_decref(j);
    atomic_store(&svc.feature_set, SERVICE_FS_OK);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_deadline_short),
        cmocka_unit_test(test_store_down),
        cmocka_unit_test(test_non_finite),
        cmocka_unit_test(test_feature_set_missing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
