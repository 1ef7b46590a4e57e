/* test_safetensors.c - the container reader on hand-written headers:
 * escapes, metadata, unknown keys, and each refusal, byte for byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"
#include "core/base/status.h"

/* Builds [u64 len][header][data] from a header string and data size. */
static unsigned char *make(const char *header, size_t data_len, size_t *len) {
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    unsigned char *b = calloc(1, *len);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(((uint64_t)h >> (8 * i)) & 0xff);
    memcpy(b + 8, header, h);
    for (size_t i = 0; i < data_len; i++) b[8 + h + i] = (unsigned char)i;
    return b;
}

static int parse(const char *header, size_t data_len, st_file *f, char *err) {
    size_t len;
    unsigned char *b = make(header, data_len, &len);
    int rc = st_parse(b, len, f, err, 256);
    if (rc == CTR_OK) {
        /* data pointers must point into b; check then detach. */
        for (int i = 0; i < f->num_tensors; i++)
            assert_true(f->tensors[i].data >= b && f->tensors[i].data <= b + len);
    }
    free(b);
    return rc;
}

static void test_valid_with_escapes(void **state) {
    (void)state;
    st_file f;
    char err[256] = "";
    const char *h = "{\"__metadata__\":{\"version\":\"v\\u00e9\\n\\\"q\\\"\",\"x\":\"\"},"
                    " \"a.b\" : {\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24],"
                    "\"extra\":[1,{\"k\":null},true,-1.5e3]},"
                    "\"s\":{\"shape\":[],\"dtype\":\"F32\",\"data_offsets\":[24,28]}}   ";
    assert_int_equal(parse(h, 28, &f, err), CTR_OK);
    assert_int_equal(f.num_tensors, 2);
    assert_string_equal(st_meta_get(&f, "version"), "v\xc3\xa9\n\"q\"");
    assert_string_equal(st_meta_get(&f, "x"), "");
    const st_tensor *t = st_find(&f, "a.b");
    assert_non_null(t);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->end, 24);
    t = st_find(&f, "s");
    assert_int_equal(t->ndim, 0);
    assert_null(st_find(&f, "nope"));
    st_free(&f);
}

static void expect_bad(const char *header, size_t data_len, const char *needle) {
    st_file f;
    char err[256] = "";
    int rc = parse(header, data_len, &f, err);
    if (rc != CTR_EFORMAT || !strstr(err, needle))
        fail_msg("header %s: expected EFORMAT with \"%s\", got %d \"%s\"", header, needle, rc,
                 err);
    assert_int_equal(f.num_tensors, 0);
    assert_null(f.tensors);
}

static void test_refusals(void **state) {
    (void)state;
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8,
               "unterminated");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}x", 8,
               "trailing bytes");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
               "8 bytes for 3 elements");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
               "outside the data");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
               "outside the data");
    expect_bad("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
               "unknown dtype");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "lacks");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
               "bad tensor field");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
               "bad tensor field");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
               8, "bad tensor field");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999,99999999999,99999999999],"
               "\"data_offsets\":[0,8]}}", 8, "too large");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate");
    expect_bad("{\"__metadata__\":{\"k\":5}}", 0, "must be strings");
    expect_bad("{\"a\\ud800\":{}}", 0, "expected a tensor name");
    expect_bad("{\"a\\u0000b\":{}}", 0, "expected a tensor name");
    expect_bad("[]", 0, "not a JSON object");
    expect_bad("{\"a\":{\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}",
               0, "bad tensor field");
}

static void test_header_length(void **state) {
    (void)state;
    st_file f;
    char err[256] = "";
    unsigned char b[16] = {0};
    assert_int_equal(st_parse(b, 7, &f, err, sizeof err), CTR_EFORMAT);
    assert_non_null(strstr(err, "too short"));
    b[0] = 9; /* header of 9 bytes in a 16-byte file: past the end */
    assert_int_equal(st_parse(b, 16, &f, err, sizeof err), CTR_EFORMAT);
    assert_non_null(strstr(err, "bad header length"));
    memset(b, 0xff, 8);
    assert_int_equal(st_parse(b, 16, &f, err, sizeof err), CTR_EFORMAT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_with_escapes),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_header_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
