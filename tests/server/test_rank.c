/* test_rank.c - the stages of POST /v1/rank (server/rank.h), each called on
 * its own: decode errors and the deadline, history from the request or the
 * store, a store that is down, deadlines that run short, scores that are
 * not finite (QIN and TIN), routing by "model" (QIN by default, TIN with
 * its item 0), the history read beside the candidates' cache lookups,
 * explanations (positions in the window the model used), and
 * --split auto's planner (what it times, what it keeps).
 * Needs $CTR_REDIS and $CTR_GOLDEN (tests/run.sh). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>

#include "svc_fixture.h"
#include "server/rank.h"
#include "server/rank_split.h"

static service svc;
static worker *w;

static int setup(void **state) {
    (void)state;
    if (svc_init(&svc) < 0 || svc_workers_init() < 0) return -1;
    w = worker_self(&svc);
    return w ? 0 : -1;
}

/* Also after a failed setup (cmocka runs the group teardown then too). */
static int teardown(void **state) {
    (void)state;
    svc_workers_free();
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

/* Each reason once, in the order first met; a value outside the map
 * ignored. */
static void test_degrade(void **state) {
    (void)state;
    rank_ctx x = {0};
    rank_degrade(&x, PROTO_DEGRADED_NON_FINITE);
    rank_degrade(&x, PROTO_DEGRADED_HISTORY_DEADLINE);
    rank_degrade(&x, PROTO_DEGRADED_NON_FINITE);
    rank_degrade(&x, PROTO_DEGRADED_COUNT);
    assert_int_equal(x.ndeg, 2);
    assert_int_equal(x.degraded[0], PROTO_DEGRADED_NON_FINITE);
    assert_int_equal(x.degraded[1], PROTO_DEGRADED_HISTORY_DEADLINE);
    for (int d = 0; d < PROTO_DEGRADED_COUNT; d++) rank_degrade(&x, (proto_degraded)d);
    assert_int_equal(x.ndeg, PROTO_DEGRADED_COUNT);
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

    /* The body's deadline beats the header's, the cap beats both.  (Whole
     * seconds: a few ms may pass before rank_begin looks at the clock, and
     * a request already past its deadline would be shed.) */
    in = input("{\"user_id\": 1, \"candidates\": [], \"deadline_ms\": 7000}");
    in.header_deadline_ms = 9000;
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(x.deadline_ms, 7000);
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
    assert_int_equal(x.degraded[0], PROTO_DEGRADED_HISTORY_DEADLINE);
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
    long long saved = atomic_load(&svc.models[0].score_ns_per_mflop);
    atomic_store(&svc.models[0].score_ns_per_mflop, 1000000000000LL);
    assert_int_equal(rank_score(&x), 503);
    assert_string_equal(code(), "deadline_exceeded");
    atomic_store(&svc.models[0].score_ns_per_mflop, saved);
    rank_end(&x);
}

static void test_store_down(void **state) {
    (void)state;
    featstore *good = w->m[0].fs;
    featstore_params p = svc.models[0].fs_params;
    p.addr = "127.0.0.1:1";
    char err[256];
    assert_int_equal(featstore_open(&p, &w->m[0].fs, err, sizeof err), CTR_OK);
    rank_ctx x;
    rank_input in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 11}]}");
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(rank_history(&x), 0);
    assert_int_equal(x.degraded[0], PROTO_DEGRADED_HISTORY_UNAVAILABLE);
    assert_int_equal(rank_items(&x), 503);            /* item 11 not cached */
    assert_string_equal(code(), "unavailable");
    rank_end(&x);
    featstore_close(w->m[0].fs);
    w->m[0].fs = good;
}

/* The scores of body's candidates (item id -> score) from rank_handle,
 * in out[0..n) by position in ids; -1 for an unscored one. */
static void scores_of(const char *body, const int64_t *ids, int n, double *out) {
    rank_input in = input(body);
    assert_int_equal(rank_handle(w, &in), 200);
    json_t *j = answer(), *it;
    size_t k;
    for (int i = 0; i < n; i++) out[i] = -1;
    json_array_foreach(json_object_get(j, "items"), k, it) {
        int64_t id = json_integer_value(json_object_get(it, "item_id"));
        for (int i = 0; i < n; i++)
            if (ids[i] == id) out[i] = json_real_value(json_object_get(it, "score"));
    }
    json_decref(j);
}

/* With a scoring helper, the history read runs beside the candidates'
 * cache lookups (either on either thread): the answer is the one with the
 * history given in the request, a candidate that is also in the history
 * is one item, and a store that is down still degrades to an empty
 * history, many times over (so that both orders happen; TSan sees the
 * hand-offs). */
static void test_history_beside_lookups(void **state) {
    (void)state;
    pool *none = svc.scorers;
    assert_int_equal(pool_init(1, &svc.scorers), CTR_OK);
    const int64_t ids[] = {7, 8, 3, 50};
    double from_store[4], given[4];
    scores_of("{\"user_id\": \"u1\", \"item_seq\": [1, 2, 3, 4, 5], \"candidates\": "
              "[{\"item_id\": 7}, {\"item_id\": 8}, {\"item_id\": 3}, {\"item_id\": 50}]}",
              ids, 4, given);
    assert_true(given[0] > 0 && given[1] > 0 && given[2] > 0);
    assert_true(given[3] == -1);                     /* no features */
    for (int rep = 0; rep < 200; rep++) {
        scores_of("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 7}, {\"item_id\": 8}, "
                  "{\"item_id\": 3}, {\"item_id\": 50}]}", ids, 4, from_store);
        for (int i = 0; i < 4; i++) assert_true(from_store[i] == given[i]);
    }
    rank_ctx x;
    rank_input in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 3}, "
                          "{\"item_id\": 7}]}");
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(rank_history(&x), 0);
    assert_int_equal(x.nh, 5);
    assert_int_equal(x.ncu, 2);
    assert_non_null(x.uvec[x.cand_u[0]]);            /* cached, looked up */
    assert_int_equal(rank_items(&x), 0);
    assert_int_equal(x.nu, 6);                       /* 3, 7, then 1, 2, 4, 5 */
    assert_int_equal(x.hist_u[2], x.cand_u[0]);
    assert_ptr_equal(x.uvec[x.hist_u[2]], x.uvec[x.cand_u[0]]);
    rank_end(&x);

    featstore *good = w->m[0].fs;
    featstore_params p = svc.models[0].fs_params;
    p.addr = "127.0.0.1:1";
    char err[256];
    assert_int_equal(featstore_open(&p, &w->m[0].fs, err, sizeof err), CTR_OK);
    for (int rep = 0; rep < 20; rep++) {
        in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 7}, {\"item_id\": 8}]}");
        assert_int_equal(rank_handle(w, &in), 200);
        json_t *j = answer();
        assert_true(degraded(j, "history_unavailable"));
        assert_int_equal(json_array_size(json_object_get(j, "items")), 2);
        json_decref(j);
    }
    featstore_close(w->m[0].fs);
    w->m[0].fs = good;
    pool_free(svc.scorers);
    svc.scorers = none;
}

/* A history item whose (finite) vector overflows the attention: found,
 * dropped, everything scored; a candidate whose score is not finite is
 * unscored, never null.  For each architecture served (QIN, TIN). */
static void run_non_finite(const char *model) {
    rank_ctx x;
    char body[512];
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"user_id\": \"x\", \"item_seq\": [1, 2, 3], "
             "\"candidates\": [{\"item_id\": 4}, {\"item_id\": 5}], \"explain\": 2}", model);
    rank_input in = input(body);
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_string_equal(x.m->name, model);
    assert_int_equal(rank_history(&x), 0);
    assert_int_equal(rank_items(&x), 0);
    const size_t vf = engine_item_vec_floats(x.slot->model);
    float *huge = engine_item_vecs_alloc(x.slot->model, 1);
    for (size_t k = 0; k < vf; k++) huge[k] = 3e38f; /* finite; poisons QIN and TIN */
    x.uvec[x.hist_u[1]] = huge;
    assert_int_equal(rank_score(&x), 0);
    assert_true(x.scored[0] && x.scored[1]);
    assert_true(isfinite(x.prob[0]) && isfinite(x.prob[1]));
    assert_int_equal(x.degraded[x.ndeg - 1], PROTO_DEGRADED_HISTORY_ITEM_INVALID);
    /* The explanations come from the pass after the drop: never the
     * dropped behaviour (position 1). */
    for (int i = 0; i < 2 * 2; i++) assert_true(x.xpos[i] != 1);
    rank_end(&x);

    snprintf(body, sizeof body, "{\"model\": \"%s\", \"user_id\": \"x\", \"item_seq\": [], "
             "\"candidates\": [{\"item_id\": 4}, {\"item_id\": 5}]}", model);
    in = input(body);
    rank_begin(&x, w, &in);
    assert_int_equal(rank_decode(&x, &in), 0);
    assert_int_equal(rank_history(&x), 0);
    assert_int_equal(rank_items(&x), 0);
    for (size_t k = 0; k < vf; k++) huge[k] = NAN; /* a score that cannot be finite */
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

static void test_non_finite(void **state) {
    (void)state;
    run_non_finite("qin");
    run_non_finite("tin");
}

/* "model" routes: TIN reads its own prefix, where item 0 is real (in the
 * history and as a candidate); QIN is the default, where 0 is padding. */
static void test_routing(void **state) {
    (void)state;
    rank_input in = input("{\"model\": \"tin\", \"user_id\": \"u1\", \"item_seq\": [0, 3], "
                          "\"candidates\": [{\"item_id\": 0}, {\"item_id\": 7}], \"explain\": 2}");
    assert_int_equal(rank_handle(w, &in), 200);
    json_t *j = answer();
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "model"), "name")),
                        "tin");
    json_t *items = json_object_get(j, "items");
    assert_int_equal(json_array_size(items), 2);
    assert_int_equal(json_array_size(json_object_get(j, "degraded")), 0);
    /* TIN's softmax weights: both behaviours, item 0 among them. */
    json_t *ex = json_object_get(json_array_get(items, 0), "explain");
    assert_int_equal(json_array_size(ex), 2);
    double sum = 0;
    int saw0 = 0;
    for (size_t k = 0; k < 2; k++) {
        json_t *e = json_array_get(ex, k);
        int64_t id = json_integer_value(json_object_get(e, "item_id"));
        int64_t pos = json_integer_value(json_object_get(e, "position"));
        assert_int_equal(id, pos == 0 ? 0 : 3);
        saw0 |= id == 0;
        sum += json_number_value(json_object_get(e, "weight"));
    }
    assert_true(saw0);
    assert_true(fabs(sum - 1.0) < 1e-5);
    json_decref(j);

    /* Item 0 is no QIN item: 422 from the default model. */
    in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 0}]}");
    assert_int_equal(rank_handle(w, &in), 422);
    assert_string_equal(code(), "out_of_range");
    /* QIN's context field on TIN: TIN's schema refuses it. */
    in = input("{\"model\": \"tin\", \"user_id\": \"u1\", \"candidates\": [{\"item_id\": 1, \"a\": 1}]}");
    assert_int_equal(rank_handle(w, &in), 400);
    in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 1, \"a\": 1}], \"model\": \"qin\"}");
    assert_int_equal(rank_handle(w, &in), 200);
    in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 1}], \"model\": \"din\"}");
    assert_int_equal(rank_handle(w, &in), 404);
    assert_string_equal(code(), "not_found");
}

/* Explanations index the window the model used: of a history longer than
 * max_len (6 for the small QIN), position 0 is the oldest kept entry, and
 * item_id is the id at that position. */
static void test_explain_window(void **state) {
    (void)state;
    rank_input in = input("{\"user_id\": \"x\", \"item_seq\": [11, 12, 13, 14, 15, 16, 17, 18], "
                          "\"candidates\": [{\"item_id\": 4}, {\"item_id\": 5}], \"explain\": 16}");
    assert_int_equal(rank_handle(w, &in), 200);
    json_t *j = answer();
    json_t *items = json_object_get(j, "items");
    for (size_t i = 0; i < 2; i++) {
        json_t *ex = json_object_get(json_array_get(items, i), "explain");
        assert_int_equal(json_array_size(ex), 6);      /* fewer behaviours than k */
        double last = INFINITY;
        for (size_t k = 0; k < 6; k++) {
            json_t *e = json_array_get(ex, k);
            int64_t pos = json_integer_value(json_object_get(e, "position"));
            assert_true(pos >= 0 && pos < 6);
            assert_int_equal(json_integer_value(json_object_get(e, "item_id")), 13 + pos);
            double wgt = fabs(json_number_value(json_object_get(e, "weight")));
            assert_true(wgt <= last);                  /* largest first */
            last = wgt;
        }
    }
    json_decref(j);
    /* Off: no field. */
    in = input("{\"user_id\": \"x\", \"item_seq\": [11], \"candidates\": [{\"item_id\": 4}]}");
    assert_int_equal(rank_handle(w, &in), 200);
    assert_null(strstr(w->out.data, "explain"));
    in = input("{\"user_id\": \"x\", \"candidates\": [{\"item_id\": 4}], \"explain\": 17}");
    assert_int_equal(rank_handle(w, &in), 422);
    assert_string_equal(code(), "out_of_range");
}

static void test_feature_set_missing(void **state) {
    (void)state;
    /* Per model: TIN's prefix lacks its marker, QIN's does not. */
    atomic_store(&svc.models[1].feature_set, SERVICE_FS_MISSING);
    rank_input in = input("{\"user_id\": \"new\", \"candidates\": [{\"item_id\": 7}]}");
    assert_int_equal(rank_handle(w, &in), 200);
    json_t *j = answer();
    assert_false(degraded(j, "feature_set_missing"));
    json_decref(j);
    in = input("{\"user_id\": \"new\", \"candidates\": [{\"item_id\": 7}], \"model\": \"tin\"}");
    assert_int_equal(rank_handle(w, &in), 200);
    j = answer();
    assert_true(degraded(j, "feature_set_missing"));
    json_decref(j);
    atomic_store(&svc.models[1].feature_set, SERVICE_FS_OK);
}

/* --split auto: the pick keeps candidates unless another mode is more
 * than 5% faster; the planner times every mode the model allows at each
 * size class within max_candidates, and requests are scored as planned. */
static void test_split_plan(void **state) {
    (void)state;
    double a[] = {100, 100, 96};  /* 4% faster: candidates stays */
    assert_int_equal(rank_split_pick(a, 3), SERVICE_SPLIT_CANDIDATES);
    double b[] = {90, 100, 96};
    assert_int_equal(rank_split_pick(b, 3), SERVICE_SPLIT_ONE);
    double c[] = {94, 100, 80};
    assert_int_equal(rank_split_pick(c, 3), SERVICE_SPLIT_COLUMNS);
    double d[] = {-1, 100, -1};   /* not timed */
    assert_int_equal(rank_split_pick(d, 3), SERVICE_SPLIT_CANDIDATES);
    assert_int_equal(rank_split_pick(b, 2), SERVICE_SPLIT_ONE);
    assert_int_equal(service_split_class(1), 0);
    assert_int_equal(service_split_class(32), 0);
    assert_int_equal(service_split_class(33), 1);
    assert_int_equal(service_split_class(128), 1);
    assert_int_equal(service_split_class(129), 2);

    /* The planner on the fixture's QIN (no column parts: two modes), with
     * one scoring helper, max_candidates 64: classes 16 and 64 timed. */
    pool *one = svc.scorers;
    assert_int_equal(pool_init(1, &svc.scorers), 0);
    svc.score_parts = 2;
    service_model *m = &svc.models[0];
    char err[256];
    assert_int_equal(rank_split_plan(&svc, m, err, sizeof err), CTR_OK);
    for (int k = 0; k < 2; k++) {
        print_message("split %s: %.0f / %.0f us\n", service_split_name((service_split)k),
                      m->split_us[0][k], m->split_us[1][k]);
        assert_true(m->split_us[0][k] > 0 && m->split_us[1][k] > 0);
        assert_true(m->split_us[2][k] < 0);
    }
    assert_true(m->split_us[0][SERVICE_SPLIT_COLUMNS] < 0);
    assert_true(m->split[0] != SERVICE_SPLIT_COLUMNS && m->split[1] != SERVICE_SPLIT_COLUMNS);
    assert_int_equal(m->split[2], m->split[1]);
    rank_input in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 7}, "
                          "{\"item_id\": 8}, {\"item_id\": 9}]}");
    assert_int_equal(rank_handle(w, &in), 200);
    pool_free(svc.scorers);
    svc.scorers = one;
    svc.score_parts = 1;
    for (int k = 0; k < SERVICE_SPLIT_CLASSES; k++) m->split[k] = SERVICE_SPLIT_CANDIDATES;
}

/* The cut follows the other requests in hand: with two score threads, a
 * request alone splits (by candidates, or by columns where the model has
 * two column parts); with another request in hand it runs on its own
 * thread; the planner (no request counted) splits as a lone request. */
static void test_split_busy(void **state) {
    (void)state;
    const int parts = svc.score_parts;
    svc.score_parts = 2;
    const double per_cand = 8.5e6; /* the MicroLens QIN's flops a candidate */
    rank_split_way way;
    atomic_store(&svc.ranking, 1); /* this request alone */
    way = rank_split_choose(&svc, 1, SERVICE_SPLIT_CANDIDATES, 64, per_cand);
    assert_int_equal(way.cols, 1);
    assert_int_equal(way.parts, 2);
    way = rank_split_choose(&svc, 2, SERVICE_SPLIT_COLUMNS, 64, per_cand);
    assert_int_equal(way.cols, 2);
    way = rank_split_choose(&svc, 1, SERVICE_SPLIT_COLUMNS, 64, per_cand); /* no column parts */
    assert_int_equal(way.cols, 1);
    assert_int_equal(way.parts, 2);
    way = rank_split_choose(&svc, 2, SERVICE_SPLIT_ONE, 64, per_cand);
    assert_int_equal(way.cols * way.parts, 1);
    way = rank_split_choose(&svc, 2, SERVICE_SPLIT_CANDIDATES, 4, per_cand); /* too small */
    assert_int_equal(way.cols * way.parts, 1);
    for (int others = 1; others <= 3; others++) {
        atomic_store(&svc.ranking, 1 + others);
        way = rank_split_choose(&svc, 1, SERVICE_SPLIT_CANDIDATES, 64, per_cand);
        assert_int_equal(way.cols * way.parts, 1);
        way = rank_split_choose(&svc, 2, SERVICE_SPLIT_COLUMNS, 256, per_cand);
        assert_int_equal(way.cols * way.parts, 1);
    }
    svc.score_parts = 4; /* one other request leaves three threads */
    atomic_store(&svc.ranking, 2);
    way = rank_split_choose(&svc, 1, SERVICE_SPLIT_CANDIDATES, 256, per_cand);
    assert_int_equal(way.parts, 3);
    way = rank_split_choose(&svc, 4, SERVICE_SPLIT_COLUMNS, 256, per_cand);
    assert_int_equal(way.cols, 1);                 /* four column parts, three threads */
    assert_int_equal(way.parts, 3);
    atomic_store(&svc.ranking, 0);                 /* the planner */
    svc.score_parts = 2;
    way = rank_split_choose(&svc, 1, SERVICE_SPLIT_CANDIDATES, 64, per_cand);
    assert_int_equal(way.parts, 2);
    svc.score_parts = parts;

    /* rank_handle counts itself while it runs, and only then. */
    rank_input in = input("{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 7}]}");
    assert_int_equal(rank_handle(w, &in), 200);
    assert_int_equal(atomic_load(&svc.ranking), 0);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_degrade),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_deadline_short),
        cmocka_unit_test(test_store_down),
        cmocka_unit_test(test_history_beside_lookups),
        cmocka_unit_test(test_non_finite),
        cmocka_unit_test(test_feature_set_missing),
        cmocka_unit_test(test_routing),
        cmocka_unit_test(test_explain_window),
        cmocka_unit_test(test_split_plan),
        cmocka_unit_test(test_split_busy),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
