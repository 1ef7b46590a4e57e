/* test_arena.c - the request arena: alignment of real addresses, growth
 * past a block, reset keeping the first block, strndup. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <string.h>

#include "core/base/arena.h"

static void test_alignment_and_growth(void **state) {
    (void)state;
    arena a;
    arena_init(&a, 4096);
    char *first = arena_alloc(&a, 16, 64);
    for (int i = 0; i < 200; i++) {
        size_t align = (size_t)1 << (i % 7); /* 1..64 */
        char *p = arena_alloc(&a, (size_t)(i * 37 % 500) + 1, align);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % align, 0);
        memset(p, 0xab, (size_t)(i * 37 % 500) + 1); /* ASan: inside the block */
    }
    char *big = arena_alloc(&a, 100000, 64); /* larger than a block */
    assert_non_null(big);
    assert_int_equal((uintptr_t)big % 64, 0);
    memset(big, 1, 100000);
    arena_reset(&a);
    char *again = arena_alloc(&a, 16, 64);
    assert_non_null(again);
    assert_ptr_equal(again, first); /* the first block is kept and reused */
    char *s = arena_strndup(&a, "hello world", 5);
    assert_string_equal(s, "hello");
    arena_free(&a);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_alignment_and_growth)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
