/*
 * test_error.c - proto/error.c: the status -> HTTP mapping published in
 * openapi.yaml, and the error object read back with jansson.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/base/status.h"
#include "proto/error.h"

static void test_mapping(void **state) {
    static const struct { int status; int http; const char *code; } m[] = {
        {CTR_EFORMAT, 400, "bad_json"},
        {CTR_EINVAL, 400, "bad_request"},
        {CTR_ETOOMANY, 422, "too_many_candidates"},
        {CTR_ERANGE, 422, "out_of_range"},
        {CTR_ETOOBIG, 413, "body_too_large"},
        {CTR_ENOTFOUND, 404, "not_found"},
        {CTR_EBACKEND, 503, "unavailable"},
        {CTR_ETIMEOUT, 503, "unavailable"},
        {CTR_ENOMEM, 500, "internal"},
        {CTR_EMODEL, 500, "internal"},
        {-1000, 500, "internal"},
    };
    for (size_t i = 0; i < sizeof m / sizeof *m; i++) {
        proto_error e = proto_error_from_status(m[i].status);
        assert_int_equal(proto_error_http(e), m[i].http);
        assert_string_equal(proto_error_code(e), m[i].code);
    }
    assert_int_equal(proto_error_http(PROTO_ERROR_METHOD_NOT_ALLOWED), 405);
    assert_int_equal(proto_error_http(PROTO_ERROR_UNSUPPORTED_MEDIA_TYPE), 415);
    assert_string_equal(proto_error_code(PROTO_ERROR_NOT_READY), "not_ready");
    assert_int_equal(proto_error_http(PROTO_ERROR_NOT_READY), 503);
    assert_int_equal(proto_error_http(PROTO_ERROR_COUNT), 500);
}

static void test_encode(void **state) {
    proto_buf b;
    proto_buf_init(&b);
    const char *msg = "candidates[3].\"x\": bad\n\xe2\x82";   /* cut UTF-8 */
    assert_int_equal(proto_error_encode(PROTO_ERROR_BAD_REQUEST, msg, &b),
                     CTR_OK);
    json_error_t je;
    json_t *j = json_loads(proto_buf_str(&b), 0, &je);
    if (!j) fail_msg("not JSON: %s", proto_buf_str(&b));
    json_t *e = json_object_get(j, "error");
    assert_int_equal(json_object_size(j), 1);
    assert_string_equal(json_string_value(json_object_get(e, "code")),
                        "bad_request");
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "candidates[3].\"x\": bad\n\xef\xbf\xbd\xef\xbf\xbd");
    json_decref(j);
    proto_buf_reset(&b);
    assert_int_equal(proto_error_encode(PROTO_ERROR_NOT_READY, NULL, &b),
                     CTR_OK);
    assert_string_equal(proto_buf_str(&b),
                        "{\"error\":{\"code\":\"not_ready\","
                        "\"message\":\"not_ready\"}}");
    proto_buf_free(&b);
}

/* error.h and openapi.yaml publish the same list: every code must appear
 * in the spec's enum, with its HTTP status in the description beside it.
 * Tests run from the repository root (make test); elsewhere this skips. */
static void test_openapi_in_step(void **state) {
    FILE *f = fopen("proto/openapi.yaml", "rb");
    if (!f) skip();
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    for (int e = 0; e < PROTO_ERROR_COUNT; e++) {
        char want[96];
        snprintf(want, sizeof want, "                - %s\n",
                 proto_error_code((proto_error)e));
        if (!strstr(text, want))
            fail_msg("openapi.yaml: code %s missing from the enum",
                     proto_error_code((proto_error)e));
        snprintf(want, sizeof want, "%s (%d)", proto_error_code((proto_error)e),
                 proto_error_http((proto_error)e));
        if (!strstr(text, want))
            fail_msg("openapi.yaml: \"%s\" missing from the code list", want);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mapping),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_openapi_in_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
