/*
 * test_buf.c - proto/buf.c: growth, printf past the current capacity, room
 * written directly, and
 * JSON string escaping checked by reading the output back with jansson.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "proto/buf.h"

/* Quotes s, parses the result with jansson and returns the decoded string
 * (a new reference). */
static json_t *roundtrip(proto_buf *b, const char *s, size_t len) {
    proto_buf_reset(b);
    proto_buf_putc(b, '[');
    proto_buf_json_string(b, s, len);
    proto_buf_putc(b, ']');
    assert_true(proto_buf_ok(b));
    json_error_t je;
    json_t *j = json_loadb(proto_buf_str(b), b->len, 0, &je);
    if (!j) fail_msg("not JSON (%s): %s", je.text, proto_buf_str(b));
    json_t *v = json_incref(json_array_get(j, 0));
    json_decref(j);
    assert_true(json_is_string(v));
    return v;
}

static void test_growth(void **state) {
    proto_buf b;
    proto_buf_init(&b);
    assert_string_equal(proto_buf_str(&b), "");
    for (int i = 0; i < 10000; i++) proto_buf_printf(&b, "%d,", i % 10);
    assert_int_equal(b.len, 20000);
    assert_int_equal(strlen(proto_buf_str(&b)), 20000);
    assert_memory_equal(b.data, "0,1,2,", 6);
    /* One printf longer than the whole buffer. */
    char big[5000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    proto_buf_reset(&b);
    proto_buf_puts(&b, "ab");
    proto_buf_printf(&b, "<%s>", big);
    assert_int_equal(b.len, 2 + 5001);
    assert_int_equal(b.data[b.len - 1], '>');
    assert_int_equal(b.data[b.len], '\0');
    size_t cap = b.cap;
    proto_buf_reset(&b);
    assert_int_equal(b.cap, cap);   /* reset keeps the memory */
    assert_int_equal(b.len, 0);
    proto_buf_free(&b);
    assert_null(b.data);
}

static void test_escapes(void **state) {
    proto_buf b;
    proto_buf_init(&b);
    const char *cases[] = {
        "", "plain", "q\"uote", "back\\slash", "\b\f\n\r\t", "\x01\x1f\x7f",
        "/slash", "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *v = roundtrip(&b, cases[i], strlen(cases[i]));
        assert_string_equal(json_string_value(v), cases[i]);
        json_decref(v);
    }
    /* Control characters are escaped, never raw. */
    json_decref(roundtrip(&b, "\x01", 1));
    assert_string_equal(proto_buf_str(&b), "[\"\\u0001\"]");
    json_decref(roundtrip(&b, "a\nb", 3));
    assert_string_equal(proto_buf_str(&b), "[\"a\\nb\"]");
    proto_buf_free(&b);
}

static void test_nul_byte(void **state) {
    proto_buf b;
    proto_buf_init(&b);
    proto_buf_json_string(&b, "a\0b", 3);
    assert_string_equal(proto_buf_str(&b), "\"a\\u0000b\"");
    proto_buf_free(&b);
}

static void test_invalid_utf8(void **state) {
    proto_buf b;
    proto_buf_init(&b);
    static const struct { const char *in; const char *out; } cases[] = {
        {"\xff", "\xef\xbf\xbd"},                  /* never valid */
        {"a\xc3", "a\xef\xbf\xbd"},                /* cut sequence */
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},  /* overlong '/' */
        {"\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {"\xf4\x90\x80\x80",                       /* past U+10FFFF */
         "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe2\x82", "\xef\xbf\xbd\xef\xbf\xbd"},  /* euro sign, cut */
        {"x\x80y", "x\xef\xbf\xbdy"},              /* lone continuation */
        {"\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf"},  /* U+10FFFF is fine */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *v = roundtrip(&b, cases[i].in, strlen(cases[i].in));
        assert_string_equal(json_string_value(v), cases[i].out);
        json_decref(v);
    }
    proto_buf_free(&b);
}

static void test_values(void **state) {
    proto_buf b;
    proto_buf_init(&b);
    proto_buf_json_int(&b, INT64_MIN);
    proto_buf_putc(&b, ' ');
    proto_buf_json_float(&b, 0.1f);
    proto_buf_putc(&b, ' ');
    proto_buf_json_float(&b, -0.0f / 0.0f);
    proto_buf_putc(&b, ' ');
    proto_buf_json_cstr(&b, NULL);
    assert_string_equal(proto_buf_str(&b),
                        "-9223372036854775808 0.100000001 null null");
    proto_buf_free(&b);
}

/* json_float and json_int print without printf; they must print exactly
 * what "%.9g" and "%lld" print.  Floats: a stride through [1e-5, 1.5] and
 * every float within 3000 ulps of each decade boundary, where the decimal
 * exponent and the rounding carry change. */
static void check_float(proto_buf *b, float v) {
    char want[64];
    snprintf(want, sizeof want, "%.9g", (double)v);
    proto_buf_reset(b);
    proto_buf_json_float(b, v);
    if (strcmp(want, proto_buf_str(b)) != 0)
        fail_msg("%a: printf %s, ours %s", (double)v, want, proto_buf_str(b));
}

/* Room written directly, then committed: the text as appended, NUL after;
 * proto_fmt_* as the proto_buf_json_* they back. */
static void test_room(void **state) {
    proto_buf b;
    proto_buf_init(&b);
    proto_buf_puts(&b, "x");
    for (int i = 0; i < 1000; i++) {
        char *p = proto_buf_room(&b, 2 * PROTO_NUM_MAX);
        assert_non_null(p);
        size_t n = proto_fmt_int(p, -i);
        p[n++] = ',';
        n += proto_fmt_float(p + n, (float)i / 1000.0f);
        proto_buf_commit(&b, n);
        assert_int_equal(b.data[b.len], '\0');
    }
    proto_buf c;
    proto_buf_init(&c);
    proto_buf_puts(&c, "x");
    for (int i = 0; i < 1000; i++) {
        proto_buf_json_int(&c, -i);
        proto_buf_putc(&c, ',');
        proto_buf_json_float(&c, (float)i / 1000.0f);
    }
    assert_string_equal(proto_buf_str(&b), proto_buf_str(&c));
    char t[PROTO_NUM_MAX];
    assert_int_equal(proto_fmt_float(t, 1.0f / 0.0f), 4);
    assert_memory_equal(t, "null", 4);
    assert_int_equal(proto_fmt_float(t, -3.4028235e38f), 15);   /* the longest %.9g */
    assert_memory_equal(t, "-3.40282347e+38", 15);
    proto_buf_free(&b);
    proto_buf_free(&c);
}

static void test_number_formats(void **state) {
    proto_buf b;
    proto_buf_init(&b);
    float lo = 1e-5f, hi = 1.5f;
    uint32_t u, end;
    memcpy(&u, &lo, 4);
    memcpy(&end, &hi, 4);
    for (; u < end; u += 101) {
        float v;
        memcpy(&v, &u, 4);
        check_float(&b, v);
    }
    const float edges[] = {1e-4f, 1e-3f, 1e-2f, 1e-1f, 1.0f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        memcpy(&u, &edges[i], 4);
        for (uint32_t k = u - 3000; k < u + 3000; k++) {
            float v;
            memcpy(&v, &k, 4);
            check_float(&b, v);
        }
    }
    const int64_t ints[] = {0, 1, -1, 9, 10, 1234567890123LL, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        char want[32];
        snprintf(want, sizeof want, "%lld", (long long)ints[i]);
        proto_buf_reset(&b);
        proto_buf_json_int(&b, ints[i]);
        assert_string_equal(proto_buf_str(&b), want);
    }
    proto_buf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_number_formats),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_room),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
