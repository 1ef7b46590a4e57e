/* test_meta.c - the feature-set marker's JSON: round trip, refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "core/base/status.h"
#include "proto/meta.h"

static void test_round_trip(void **state) {
    (void)state;
    proto_meta m = {PROTO_META_FORMAT, 5, 128, 91717, 100000, 1714557600.25, "v\"1",
                    (uint64_t)1 << 40};
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_meta_encode(&m, &b), CTR_OK);
    proto_meta d;
    char err[256];
    assert_int_equal(proto_meta_decode(b.data, b.len, &d, err, sizeof err), CTR_OK);
    assert_int_equal(d.num_tags, 5);
    assert_int_equal(d.mm_dim, 128);
    assert_int_equal(d.items, 91717);
    assert_int_equal(d.users, 100000);
    assert_true(d.loaded_at == 1714557600.25);
    assert_string_equal(d.model_version, "v\"1");
    assert_true(d.item_changes == (uint64_t)1 << 40);
    proto_buf_free(&b);
}

static void test_refusals(void **state) {
    (void)state;
    proto_meta d;
    char err[256];
    const char *bad[] = {
        "", "[]", "not json",
        "{\"format\":2,\"num_tags\":5,\"mm_dim\":1,\"items\":1,\"users\":1,\"loaded_at\":1}",
        "{\"format\":1,\"mm_dim\":1,\"items\":1,\"users\":1,\"loaded_at\":1}",
        "{\"format\":1,\"num_tags\":500,\"mm_dim\":1,\"items\":1,\"users\":1,\"loaded_at\":1}",
        "{\"format\":1,\"num_tags\":5,\"mm_dim\":1,\"items\":1,\"users\":1,\"loaded_at\":\"x\"}",
        "{\"format\":1,\"num_tags\":5,\"mm_dim\":1,\"items\":1,\"users\":1,\"loaded_at\":1,"
        "\"item_changes\":-1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        assert_int_equal(proto_meta_decode(bad[i], strlen(bad[i]), &d, err, sizeof err),
                         CTR_EFORMAT);
        assert_true(strlen(err) > 0);
    }
    /* Unknown fields are fine (later loaders may add some). */
    const char *ok = "{\"format\":1,\"num_tags\":5,\"mm_dim\":1,\"items\":1,\"users\":1,"
                     "\"loaded_at\":1,\"new_field\":[1]}";
    assert_int_equal(proto_meta_decode(ok, strlen(ok), &d, err, sizeof err), CTR_OK);
    assert_true(d.item_changes == 0);   /* absent: none recorded (older loaders) */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
