/*
 * test_endpoints.c - server/endpoints.c: the GET endpoints' answers built
 * from the service alone (no HTTP): /healthz, /readyz from the health
 * check's view of each model and the drain, /v1/models naming every model,
 * /metrics in Prometheus text, and an unknown path.  The service is
 * svc_fixture.h's (two models, "qin" the default and "tin").
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>

#include "svc_fixture.h"
#include "server/endpoints.h"

static service svc;
static proto_buf b;   /* the last answer */

static int setup(void **state) {
    (void)state;
    proto_buf_init(&b);
    return svc_init(&svc);
}

static int teardown(void **state) {
    (void)state;
    svc_free(&svc);
    proto_buf_free(&b);
    return 0;
}

/* GET path: its status, body (static, NUL-terminated) and content type. */
static int get(const char *path, const char **body, const char **ctype) {
    proto_buf_reset(&b);
    int status = endpoint_get(&svc, path, &b, ctype);
    assert_true(proto_buf_ok(&b));
    *body = proto_buf_str(&b);
    return status;
}

/* The "code" of an error body, or NULL. */
static const char *error_code(const char *body, char *buf, size_t cap) {
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    const char *c = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    snprintf(buf, cap, "%s", c ? c : "");
    json_decref(j);
    return c ? buf : NULL;
}

static void test_health_and_ready(void **state) {
    (void)state;
    const char *body, *ctype;
    char code[32];
    assert_int_equal(get("/healthz", &body, &ctype), 200);
    assert_string_equal(body, "{\"status\":\"ok\"}");
    assert_string_equal(ctype, "application/json");
    assert_int_equal(get("/readyz", &body, &ctype), 200);
    assert_string_equal(body, "{\"status\":\"ready\"}");

    /* The second model's feature set missing: 503 naming it and its prefix. */
    atomic_store(&svc.models[1].feature_set, SERVICE_FS_MISSING);
    assert_int_equal(get("/readyz", &body, &ctype), 503);
    assert_string_equal(error_code(body, code, sizeof code), "not_ready");
    assert_non_null(strstr(body, "model tin"));
    assert_non_null(strstr(body, svc_prefix_tin));
    assert_non_null(strstr(body, "run ctr-load"));
    atomic_store(&svc.models[1].feature_set, SERVICE_FS_MISMATCH);
    assert_int_equal(get("/readyz", &body, &ctype), 503);
    assert_non_null(strstr(body, "another schema"));
    atomic_store(&svc.models[0].feature_set, SERVICE_FS_UNKNOWN);   /* the first one named */
    assert_int_equal(get("/readyz", &body, &ctype), 503);
    assert_non_null(strstr(body, "model qin"));
    assert_non_null(strstr(body, "not reachable"));
    atomic_store(&svc.models[0].feature_set, SERVICE_FS_OK);
    atomic_store(&svc.models[1].feature_set, SERVICE_FS_OK);

    /* Draining: not ready whatever the feature sets say; alive still. */
    atomic_store(&svc.draining, 1);
    assert_int_equal(get("/readyz", &body, &ctype), 503);
    assert_non_null(strstr(body, "shutting down"));
    assert_int_equal(get("/healthz", &body, &ctype), 200);
    atomic_store(&svc.draining, 0);
    assert_int_equal(get("/readyz", &body, &ctype), 200);
}

static void test_models_and_metrics(void **state) {
    (void)state;
    const char *body, *ctype;
    assert_int_equal(get("/v1/models", &body, &ctype), 200);
    assert_string_equal(ctype, "application/json");
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    assert_non_null(strstr(body, "\"qin\""));
    assert_non_null(strstr(body, "\"tin\""));
    assert_non_null(strstr(body, svc_prefix));
    json_decref(j);

    metrics_scored(svc.metrics, 1, 7);
    assert_int_equal(get("/metrics", &body, &ctype), 200);
    assert_string_equal(ctype, METRICS_CONTENT_TYPE);
    assert_non_null(strstr(body, "# TYPE ctr_http_requests_total counter\n"));
    assert_non_null(strstr(body, "ctr_scored_candidates_total{model=\"tin\"} 7\n"));
    assert_non_null(strstr(body, "ctr_item_cache_entries{model=\"qin\"} "));

    char code[32];
    assert_int_equal(get("/nope", &body, &ctype), 404);
    assert_string_equal(error_code(body, code, sizeof code), "not_found");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_and_ready),
        cmocka_unit_test(test_models_and_metrics),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
